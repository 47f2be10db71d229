//! `api`: parse the configuration, start logging, serve until SIGINT/SIGTERM.

use api::config::{Cli, Command};
use api::startup::Application;
use clap::Parser;
use shared::db::Schema;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = shared::telemetry::init("api");
    match cli.command {
        Some(Command::Migrate) => Ok(shared::db::migrate(&cli.config.database_url, Schema::Primary).await?),
        None => {
            let application = Application::build(cli.config).await?;
            application.run_until_stopped(shared::shutdown::token_cancelled_on_signal()).await
        }
    }
}
