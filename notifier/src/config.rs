//! Command line and environment of the `notifier` binary.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use service_kit::config::{DatabaseUrl, DatabaseUrlParser};

/// Consumes the `articles` topic and, for each published article, writes a notification and its
/// `notification.requested` outbox event in one transaction of its own database.
#[derive(Debug, Parser)]
#[command(name = "notifier", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: NotifierConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the notifier's migrations and exit (it also applies them at start-up).
    Migrate,
}

#[derive(Debug, Clone, Args)]
pub struct NotifierConfig {
    /// The notifier's own database, e.g. postgres://bloguser:blogpass@localhost:5433/notifier.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = DatabaseUrlParser)]
    pub database_url: DatabaseUrl,
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = "localhost:9092")]
    pub kafka_bootstrap_servers: String,
    /// Topic to consume.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "articles")]
    pub kafka_topic: String,
    /// Consumer group.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "notifier")]
    pub kafka_group_id: String,
    /// Topic the `notification.requested` events are written for (the outbox row's topic).
    #[arg(long, env = "NOTIFICATIONS_TOPIC", default_value = "notifications")]
    pub notifications_topic: String,
    /// Which records the notifier reads (as the sink does).
    #[arg(long, env = "KAFKA_ISOLATION_LEVEL", default_value_t = kafka_kit::Isolation::default())]
    pub kafka_isolation_level: kafka_kit::Isolation,
    /// Address to serve /health, /ready and /metrics on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:9103")]
    pub listen_addr: SocketAddr,
    /// Maximum database connections.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 2)]
    pub db_pool_size: usize,
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::Cli;

    const URL: &str = "postgres://notifier:s3cret@db.example:5433/notifier";

    #[test]
    fn defaults_follow_the_env_contract() -> Result<(), clap::Error> {
        let config = Cli::try_parse_from(["notifier", "--database-url", URL])?.config;
        assert_eq!(config.kafka_topic, "articles");
        assert_eq!(config.kafka_group_id, "notifier");
        assert_eq!(config.notifications_topic, "notifications");
        assert_eq!(config.listen_addr.to_string(), "0.0.0.0:9103");
        assert!(!format!("{config:?}").contains("s3cret"), "the password never shows");
        Ok(())
    }

    #[test]
    fn a_bad_address_is_refused_naming_it() {
        let error = Cli::try_parse_from(["notifier", "--database-url", URL, "--listen-addr", "nowhere"])
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("nowhere") && error.contains("--listen-addr"), "{error}");
    }
}
