//! `api`: parse the configuration, start logging, serve until SIGINT/SIGTERM.

use api::config::{Cli, Command};
use api::startup::Application;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = service_kit::telemetry::init("api");
    match cli.command {
        Some(Command::Migrate) => Ok(service_kit::db::migrate(&cli.config.database_url, api::MIGRATIONS).await?),
        None => {
            let application = Application::build(cli.config).await?;
            application.run_until_stopped(service_kit::shutdown::token_cancelled_on_signal()).await
        }
    }
}
