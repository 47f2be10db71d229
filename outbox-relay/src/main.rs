//! `outbox-relay`: parse the configuration, start logging, relay until SIGINT/SIGTERM.

use clap::Parser;
use outbox_relay::config::{Cli, Command};
use outbox_relay::startup::Application;
use shared::db::Schema;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = shared::telemetry::init("outbox-relay");
    match cli.command {
        Some(Command::Migrate) => Ok(shared::db::migrate(&cli.config.database_url, Schema::Primary).await?),
        None => {
            let application = Application::build(cli.config).await?;
            application.run_until_stopped(shared::shutdown::token_cancelled_on_signal()).await
        }
    }
}
