//! `notifier`: parse the configuration, start logging, consume until SIGINT/SIGTERM.

use notifier::config::{Cli, Command};
use notifier::startup::Application;

fn main() -> anyhow::Result<()> {
    service_kit::shutdown::run_binary("notifier", async |cli: Cli, shutdown| match cli.command {
        Some(Command::Migrate) => Ok(service_kit::db::migrate(&cli.config.database_url, notifier::MIGRATIONS).await?),
        None => Application::build(cli.config).await?.run_until_stopped(shutdown).await,
    })
}
