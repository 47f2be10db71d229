//! Command line and environment of the `outbox-relay` binary.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use service_kit::config::{DatabaseUrl, DatabaseUrlParser};

/// Publishes an outbox's rows to Kafka exactly once, in order per aggregate (the record key),
/// each to its row's topic or to KAFKA_TOPIC.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: RelayConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply DB1's migrations and exit (the relay also applies them at start-up).
    Migrate,
}

#[derive(Debug, Clone, Args)]
pub struct RelayConfig {
    /// The outbox's database (DB1 for the articles API), e.g.
    /// postgres://bloguser:blogpass@localhost:5432/blogdb. The relay creates only the outbox's
    /// and its own tables there.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = DatabaseUrlParser)]
    pub database_url: DatabaseUrl,
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = "localhost:9092")]
    pub kafka_bootstrap_servers: String,
    /// Topic of the rows that name none (a row's `topic` column decides).
    #[arg(long, env = "KAFKA_TOPIC", default_value = "articles")]
    pub kafka_topic: String,
    /// `binary`: every record also carries CloudEvents attributes as headers (Kafka protocol
    /// binding, binary mode: ce_specversion, ce_id, ce_type, ce_source, ce_time, content-type).
    #[arg(long, env = "RELAY_CLOUDEVENTS", value_enum, default_value_t = crate::cloudevents::Mode::Off)]
    pub cloudevents: crate::cloudevents::Mode,
    /// `ce_source` of the records, a URI-reference (default: /outbox/<database name>).
    #[arg(long, env = "RELAY_CLOUDEVENTS_SOURCE", value_parser = crate::cloudevents::parse_source)]
    pub cloudevents_source: Option<String>,
    /// Which records the read-back sees (`read_committed` skips aborted transactions, as the
    /// sink does; `read_uncommitted` only for brokers whose transactions are incomplete, such as
    /// nisshi). Must match the consumers'.
    #[arg(long, env = "KAFKA_ISOLATION_LEVEL", default_value_t = kafka_kit::Isolation::default())]
    pub kafka_isolation_level: kafka_kit::Isolation,
    /// Address to serve /health, /ready and /metrics on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:9101")]
    pub listen_addr: SocketAddr,
    /// Outbox rows read and published per round (one Kafka transaction): its fixed cost, about
    /// two broker round trips and a commit, is shared by up to this many rows.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 5000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub batch_size: i64,
    /// Milliseconds between checks of the outbox when no NOTIFY arrives (the fallback for lost
    /// notifications).
    #[arg(long, env = "RELAY_POLL_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub poll_interval_ms: u64,
    /// Milliseconds the producer keeps retrying one record before reporting it failed (Kafka's
    /// `message.timeout.ms`); failed rows stay in the outbox. This relay declares it (plus its 3 s
    /// lease and 2 s) as its bound: a relay taking over after it crashed waits that long before
    /// reading the topic back; after a clean stop it does not wait.
    #[arg(long, env = "KAFKA_DELIVERY_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1000..))]
    pub delivery_timeout_ms: u64,
    /// Milliseconds the producer waits to fill a request before sending it (Kafka's `linger.ms`):
    /// lower answers sooner, higher sends fewer, larger requests to the broker.
    #[arg(long, env = "KAFKA_LINGER_MS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub linger_ms: u32,
    /// The largest record the relay sends, in bytes (Kafka's `message.max.bytes`); larger rows are
    /// moved to `outbox_dead_letters`. The relay warns at start when the topic's
    /// `max.message.bytes` is lower.
    #[arg(long, env = "KAFKA_MESSAGE_MAX_BYTES", default_value_t = outbox::DEFAULT_MAX_RECORD_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1000..=1_000_000_000))]
    pub message_max_bytes: usize,
    /// Partitions of the topic when the relay creates it (it does, if missing, before its first
    /// record; default: the broker's `num.partitions`). An existing topic is left as it is.
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", value_parser = clap::value_parser!(i32).range(1..=100_000))]
    pub topic_partitions: Option<i32>,
    /// Replication factor of the topic when the relay creates it (default: the broker's
    /// `default.replication.factor`; 3 on a production cluster).
    #[arg(long, env = "KAFKA_TOPIC_REPLICATION_FACTOR", value_parser = clap::value_parser!(i32).range(1..=32))]
    pub topic_replication_factor: Option<i32>,
    /// Name of this relay in `relay_leader.holder` and the logs (default: host name and process id).
    #[arg(long, env = "RELAY_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Maximum DB1 connections.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 4)]
    pub db_pool_size: usize,
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::Cli;

    const URL: &str = "postgres://relay:s3cret@db1.example:5432/blogdb";

    fn parse(extra: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["outbox-relay", "--database-url", URL].iter().chain(extra))
    }

    #[test]
    fn flags_set_every_tuning_value() -> Result<(), clap::Error> {
        let cli = parse(&[
            "--kafka-topic",
            "orders",
            "--batch-size",
            "500",
            "--delivery-timeout-ms",
            "3000",
            "--linger-ms",
            "0",
            "--instance-id",
            "relay-a",
        ])?;
        let config = cli.config;
        assert_eq!(config.kafka_topic, "orders");
        assert_eq!(config.batch_size, 500);
        assert_eq!(config.delivery_timeout_ms, 3000);
        assert_eq!(config.linger_ms, 0);
        assert_eq!(config.instance_id.as_deref(), Some("relay-a"));
        assert!(cli.command.is_none());
        Ok(())
    }

    #[test]
    fn out_of_range_values_are_refused_naming_the_flag_and_the_value() {
        for (flag, value) in [
            ("--batch-size", "0"),
            ("--batch-size", "100001"),
            ("--delivery-timeout-ms", "999"),
            ("--poll-interval-ms", "5"),
        ] {
            let error = parse(&[flag, value]).err().map(|error| error.to_string()).unwrap_or_default();
            assert!(error.contains(flag) && error.contains(value), "{flag} {value}: {error:?}");
        }
    }

    #[test]
    fn cloudevents_are_off_unless_asked_and_their_source_is_checked() -> Result<(), clap::Error> {
        use crate::cloudevents::Mode;
        assert_eq!(parse(&[])?.config.cloudevents, Mode::Off);
        let cli = parse(&["--cloudevents", "binary", "--cloudevents-source", "urn:blog"])?;
        assert_eq!(cli.config.cloudevents, Mode::Binary);
        assert_eq!(cli.config.cloudevents_source.as_deref(), Some("urn:blog"));
        let error = parse(&["--cloudevents", "structured"]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("structured") && error.contains("binary"), "{error}");
        let error = parse(&["--cloudevents-source", "not a uri"]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("not a uri") && error.contains("URI-reference"), "{error}");
        Ok(())
    }

    #[test]
    fn the_password_never_shows_in_the_parsed_configuration() -> Result<(), clap::Error> {
        let cli = parse(&[])?;
        assert!(!format!("{cli:?}").contains("s3cret"), "{cli:?}");
        Ok(())
    }

    #[test]
    fn migrate_is_a_subcommand() -> Result<(), clap::Error> {
        let cli = Cli::try_parse_from(["outbox-relay", "--database-url", URL, "migrate"])?;
        assert!(matches!(cli.command, Some(super::Command::Migrate)));
        Ok(())
    }
}
