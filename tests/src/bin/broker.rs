//! `broker`: one broker for a whole test run. `scripts/test.sh` starts it before the tests and
//! hands its address to every test through `E2E_SHARED_BROKER`, so that tests which do not kill
//! the broker share one JVM instead of starting one each. Runs until SIGINT or SIGTERM, then
//! stops the broker and removes its data.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use e2e::broker::{BROKER_ENV, Broker, BrokerKind, BrokerOptions};

/// Runs one broker (Apache Kafka, or nisshi) on a free port until stopped.
#[derive(Debug, Parser)]
#[command(name = "broker", version)]
struct Cli {
    /// Which broker: `kafka` or `nisshi`.
    #[arg(long, env = BROKER_ENV, default_value = "kafka")]
    broker: BrokerKind,
    /// Written with the bootstrap address (`127.0.0.1:PORT`) once the broker answers.
    #[arg(long)]
    ready_file: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let dir = tempfile::Builder::new().prefix("blog-shared-broker-").tempdir()?;
    let options = BrokerOptions { kind: cli.broker, port: e2e::free_port() };
    let mut broker = Broker::start(dir.path(), options).await?;
    eprintln!("[broker] {} at {} (data in {})", broker.description(), broker.bootstrap_servers(), dir.path().display());
    let ready = cli.ready_file.with_extension("tmp");
    std::fs::write(&ready, broker.bootstrap_servers())?;
    std::fs::rename(&ready, &cli.ready_file).with_context(|| format!("cannot write {}", cli.ready_file.display()))?;
    service_kit::shutdown::signal().await;
    broker.stop().await;
    Ok(())
}
