//! The database's ceiling: pgbench running a script of the statements a service runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use e2e::stack::DB_USER;

fn pg_bin(name: &str) -> anyhow::Result<PathBuf> {
    let output = Command::new("pg_config").arg("--bindir").output()?;
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()).join(name))
}

/// Runs pgbench with `script` and returns its tps.
pub(crate) fn pgbench(port: u16, database: &str, clients: u32, seconds: u64, script: &Path) -> anyhow::Result<f64> {
    let output = Command::new(pg_bin("pgbench")?)
        .args(["-n", "-M", "prepared", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", DB_USER])
        .args(["-c", &clients.to_string(), "-j", &clients.min(2).to_string(), "-T", &seconds.to_string()])
        .arg("-f")
        .arg(script)
        .arg(database)
        .output()
        .context("cannot run pgbench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("pgbench failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    }
    stdout
        .lines()
        .find(|line| line.starts_with("tps = "))
        .and_then(|line| line.split_whitespace().nth(2))
        .and_then(|tps| tps.parse().ok())
        .with_context(|| format!("no tps in pgbench output: {stdout}"))
}
