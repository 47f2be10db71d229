//! Command line and environment of the `replica-sink` binary.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use service_kit::config::{DatabaseUrl, DatabaseUrlParser};

/// Consumes the `articles` topic and applies each event to DB2 (the replica) exactly once.
#[derive(Debug, Parser)]
#[command(name = "replica-sink", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: SinkConfig,
}

// Parsed once per process; boxing the URL would fight clap's typed value parser.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply DB2's migrations and exit (the sink also applies them at start-up).
    Migrate,
    /// Compare DB1 and DB2 article by article (SHA-256 of every column); exit 1 on any drift.
    Verify {
        /// DB1 (primary) connection string.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = DatabaseUrlParser)]
        primary_database_url: DatabaseUrl,
    },
}

#[derive(Debug, Clone, Args)]
pub struct SinkConfig {
    /// DB2 (replica) connection string, e.g. postgres://bloguser:blogpass@localhost:5433/blogdb_replica.
    #[arg(long, env = "REPLICA_DATABASE_URL", hide_env_values = true, value_parser = DatabaseUrlParser)]
    pub replica_database_url: DatabaseUrl,
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = "localhost:9092")]
    pub kafka_bootstrap_servers: String,
    /// Topic to consume.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "articles")]
    pub kafka_topic: String,
    /// Topic for records that can never be applied (default: `<KAFKA_TOPIC>.dlq`).
    #[arg(long, env = "KAFKA_DLQ_TOPIC")]
    pub kafka_dlq_topic: Option<String>,
    /// Consumer group.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "blog-sync-group")]
    pub kafka_group_id: String,
    /// Which records the sink reads (`read_committed` skips aborted transactions, as the relay's
    /// read-back does; `read_uncommitted` only for brokers whose transactions are incomplete, such
    /// as nisshi). Must match the relay's.
    #[arg(long, env = "KAFKA_ISOLATION_LEVEL", default_value_t = kafka_kit::Isolation::default())]
    pub kafka_isolation_level: kafka_kit::Isolation,
    /// Address to serve /health, /ready and /metrics on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:9102")]
    pub listen_addr: SocketAddr,
    /// Maximum DB2 connections.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 4)]
    pub db_pool_size: usize,
    /// Longest the broker may hold a fetch that found no new record (librdkafka's
    /// `fetch.wait.max.ms`). Apache Kafka answers a waiting fetch as soon as data arrives, so any
    /// value has the same latency there; a broker that does not (nisshi) needs a low one
    /// (docs/performance.md measures both).
    #[arg(long, env = "KAFKA_FETCH_WAIT_MAX_MS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=30_000))]
    pub kafka_fetch_wait_max_ms: u32,
    /// How long a `processed_events` row is kept: `7d`, `12h`, `30m`, `90s`. Older rows are
    /// pruned in small batches; a replay of a pruned event still changes nothing (versions and
    /// tombstones decide, see docs/guarantees.md).
    #[arg(long, env = "SINK_PROCESSED_RETENTION", default_value = "7d", value_parser = parse_retention)]
    pub processed_retention: std::time::Duration,
    /// Most memory, in MiB, the records received but not yet applied may hold (an estimate: each
    /// record's payload twice, its key and 1 KiB for its span and bookkeeping). When it is spent,
    /// receiving waits for a lane to apply its batch; a record larger than the whole budget still
    /// goes through, alone.
    #[arg(long, env = "SINK_IN_HAND_MIB", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub in_hand_mib: u32,
    /// Rows per pruning transaction.
    #[arg(long, env = "SINK_PRUNE_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub prune_batch: i64,
}

/// A retention: a positive whole number with a unit, `d`, `h`, `m` or `s`.
fn parse_retention(value: &str) -> Result<std::time::Duration, String> {
    let invalid = || format!("{value:?} is not a retention like 7d, 12h, 30m or 90s");
    let split = value.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let seconds = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(invalid()),
    };
    if number == 0 {
        return Err(invalid());
    }
    number.checked_mul(seconds).map(std::time::Duration::from_secs).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::parse_retention;
    use std::time::Duration;

    #[test]
    fn retentions_have_a_unit_and_are_positive() {
        assert_eq!(parse_retention("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_retention("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_retention("90s"), Ok(Duration::from_secs(90)));
        for bad in ["", "7", "d", "0d", "-1d", "7w", "1.5h", "99999999999999999999d"] {
            assert!(parse_retention(bad).is_err(), "{bad}");
        }
    }
}
