//! The command-line tools as an operator runs them, for the tests that check what they print and
//! how they exit: `blogctl` and `replica-sink verify`.

use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

/// Runs `blogctl args…` with `envs` on top of a clean start (no database URL from the test's
/// environment, the run's broker's isolation level, no backtraces), `stdin` as its standard input.
pub async fn blogctl<K: AsRef<str>, V: AsRef<str>>(
    args: &[&str],
    envs: &[(K, V)],
    stdin: &str,
) -> anyhow::Result<Output> {
    let mut child = tokio::process::Command::new(crate::process::binary("blogctl")?)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("REPLICA_DATABASE_URL")
        .env("KAFKA_ISOLATION_LEVEL", crate::broker::BrokerKind::from_env()?.isolation().as_str())
        .env("RUST_BACKTRACE", "0")
        .envs(envs.iter().map(|(name, value)| (name.as_ref(), value.as_ref())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut input = child.stdin.take().expect("piped");
    input.write_all(stdin.as_bytes()).await?;
    drop(input);
    Ok(tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await??)
}

/// Runs `replica-sink verify` comparing DB1 `db1` with DB2 `db2`.
pub async fn verify_replica(db1: &str, db2: &str) -> anyhow::Result<Output> {
    Ok(tokio::process::Command::new(crate::process::binary("replica-sink")?)
        .arg("verify")
        .env("DATABASE_URL", db1)
        .env("REPLICA_DATABASE_URL", db2)
        .env("RUST_BACKTRACE", "0")
        .output()
        .await?)
}
