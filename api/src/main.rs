//! `api`: parse the configuration, start logging, serve until SIGINT/SIGTERM.

use api::config::{Cli, Command};
use api::startup::Application;

fn main() -> anyhow::Result<()> {
    service_kit::shutdown::run_binary("api", async |cli: Cli, shutdown| match cli.command {
        Some(Command::Migrate) => Ok(service_kit::db::migrate(&cli.config.database_url, api::MIGRATIONS).await?),
        None => Application::build(cli.config).await?.run_until_stopped(shutdown).await,
    })
}
