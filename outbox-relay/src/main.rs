//! `outbox-relay`: parse the configuration, start logging, relay until SIGINT/SIGTERM.

use clap::Parser;
use outbox_relay::config::{Cli, Command};
use outbox_relay::startup::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = service_kit::telemetry::init("outbox-relay");
    match cli.command {
        Some(Command::Migrate) => {
            Ok(service_kit::db::migrate(&cli.config.database_url, outbox_relay::MIGRATIONS).await?)
        }
        None => {
            let application = Application::build(cli.config).await?;
            application.run_until_stopped(service_kit::shutdown::token_cancelled_on_signal()).await
        }
    }
}
