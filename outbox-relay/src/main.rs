//! `outbox-relay`: parse the configuration, start logging, relay until SIGINT/SIGTERM.

use outbox_relay::config::{Cli, Command};
use outbox_relay::startup::Application;

fn main() -> anyhow::Result<()> {
    service_kit::shutdown::run_binary("outbox-relay", async |cli: Cli, shutdown| {
        let Some(Command::Migrate) = cli.command else {
            return Application::build(cli.config).await?.run_until_stopped(shutdown).await;
        };
        Ok(service_kit::db::migrate(&cli.config.database_url, outbox_relay::MIGRATIONS).await?)
    })
}
