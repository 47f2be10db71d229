//! `replica-sink`: parse the configuration, start logging, consume until SIGINT/SIGTERM.

use clap::Parser;
use replica_sink::config::{Cli, Command};
use replica_sink::startup::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = service_kit::telemetry::init("replica-sink");
    match cli.command {
        Some(Command::Migrate) => {
            Ok(service_kit::db::migrate(&cli.config.replica_database_url, replica_sink::MIGRATIONS).await?)
        }
        Some(Command::Verify { primary_database_url }) => {
            let drift = replica_sink::verify::compare(&primary_database_url, &cli.config.replica_database_url).await?;
            println!("{drift}");
            if !drift.is_identical() {
                std::process::exit(1);
            }
            Ok(())
        }
        None => {
            let application = Application::build(cli.config).await?;
            application.run_until_stopped(service_kit::shutdown::token_cancelled_on_signal()).await
        }
    }
}
