//! `fixtures`: the servers a whole test run shares — one broker and one PostgreSQL cluster.
//! `scripts/test.sh` starts it before the tests and hands the addresses to every test
//! (`E2E_SHARED_BROKER`, `E2E_SHARED_POSTGRES`), so tests that kill neither share one JVM and one
//! cluster instead of starting their own; each test uses its own topics, group and databases.
//! Runs until SIGINT or SIGTERM, then stops both and removes their data.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use e2e::broker::{BROKER_ENV, Broker, BrokerKind, BrokerOptions};
use e2e::postgres::{PgCluster, PgOptions};
use e2e::process::Server as _;

/// Runs one broker (Apache Kafka, or nisshi) and one PostgreSQL cluster on free ports until stopped.
#[derive(Debug, Parser)]
#[command(name = "fixtures", version)]
struct Cli {
    /// Which broker: `kafka` or `nisshi`.
    #[arg(long, env = BROKER_ENV, default_value = "kafka")]
    broker: BrokerKind,
    /// Written once both answer, one `NAME=VALUE` line each: `E2E_SHARED_BROKER=127.0.0.1:PORT`
    /// and `E2E_SHARED_POSTGRES=postgres://postgres@127.0.0.1:PORT/postgres`.
    #[arg(long)]
    ready_file: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let dir = tempfile::Builder::new().prefix("blog-test-fixtures-").tempdir()?;
    let broker_options = BrokerOptions::plain(cli.broker, e2e::free_port());
    let (broker_dir, postgres_dir) = (dir.path().join("broker"), dir.path().join("postgres"));
    let postgres_options = PgOptions { durable: false, tls: None };
    let (broker, cluster) = tokio::join!(
        Broker::start(&broker_dir, broker_options),
        PgCluster::start("shared-postgres", &postgres_dir, e2e::free_port(), postgres_options),
    );
    let (mut broker, mut cluster) = (broker?, cluster?);
    let postgres = cluster.url("postgres", "postgres");
    eprintln!(
        "[fixtures] {} at {}, PostgreSQL at {} (data in {})",
        broker.description(),
        broker.bootstrap_servers(),
        postgres,
        dir.path().display()
    );
    let lines = format!(
        "{}={}\n{}={}\n",
        e2e::stack::SHARED_BROKER_ENV,
        broker.bootstrap_servers(),
        e2e::component::SHARED_POSTGRES_ENV,
        postgres.expose()
    );
    let ready = cli.ready_file.with_extension("tmp");
    std::fs::write(&ready, lines)?;
    std::fs::rename(&ready, &cli.ready_file).with_context(|| format!("cannot write {}", cli.ready_file.display()))?;
    service_kit::shutdown::signal().await;
    tokio::join!(broker.stop(), cluster.stop());
    Ok(())
}
