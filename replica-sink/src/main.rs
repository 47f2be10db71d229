//! `replica-sink`: parse the configuration, start logging, consume until SIGINT/SIGTERM; or
//! compare DB2 with DB1 (`verify`).

use replica_sink::config::{Cli, Command};
use replica_sink::startup::Application;

fn main() -> anyhow::Result<()> {
    service_kit::shutdown::run_binary("replica-sink", async |cli: Cli, shutdown| {
        let replica = &cli.config.replica_database_url;
        match cli.command {
            Some(Command::Migrate) => Ok(service_kit::db::migrate(replica, replica_sink::MIGRATIONS).await?),
            Some(Command::Verify { primary_database_url }) => {
                let drift = replica_sink::verify::compare(&primary_database_url, replica).await?;
                println!("{drift}");
                if !drift.is_identical() {
                    std::process::exit(1);
                }
                Ok(())
            }
            None => Application::build(cli.config.clone()).await?.run_until_stopped(shutdown).await,
        }
    })
}
