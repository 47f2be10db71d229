//! What a stack is made of and where it listens: the seed's names, ports and options.

use std::path::PathBuf;
use std::time::Duration;

use crate::broker::BrokerKind;

pub const DB1_NAME: &str = "blogdb";
pub const DB2_NAME: &str = "blogdb_replica";
pub const DB_USER: &str = "bloguser";
pub const DB_PASSWORD: &str = "blogpass";
pub const TOPIC: &str = "articles";
pub const GROUP: &str = "blog-sync-group";
/// The chain's second hop: the notifier's database (on DB2's cluster), group and topic.
pub const NOTIFIER_DB_NAME: &str = "notifier";
pub const NOTIFIER_GROUP: &str = "notifier";
pub const NOTIFICATIONS_TOPIC: &str = "notifications";

/// The environment variable through which `scripts/test.sh` hands every test the address of the
/// broker it started for the whole run (see [`StackOptions::shared_broker`]).
pub const SHARED_BROKER_ENV: &str = "E2E_SHARED_BROKER";

/// The relay's delivery timeout where a test, the chaos script or the benchmark kills relays or
/// the broker: a relay taking over after a crash waits the bound its predecessor declared (3 s
/// lease + delivery timeout + 2 s, then 1 s) before reading back, so 3 s rather than the default
/// 10 keeps each takeover short (9 s instead of 16).
pub const FAST_TAKEOVER: Duration = Duration::from_secs(3);

/// The relay built with fail points (`scripts/test.sh` builds it; see outbox-relay/src/failpoint.rs).
pub const FAILPOINT_RELAY: &str = "outbox-relay-failpoints";

/// Where each part listens.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub db1: u16,
    pub db2: u16,
    pub broker: u16,
    pub api: u16,
    pub relay: u16,
    pub sink: u16,
    pub notifier: u16,
    pub notifier_relay: u16,
}

impl Ports {
    /// The ops/API port of `service`.
    pub fn of(&self, service: Service) -> u16 {
        match service {
            Service::Api => self.api,
            Service::Relay => self.relay,
            Service::Sink => self.sink,
            Service::Notifier => self.notifier,
            Service::NotifierRelay => self.notifier_relay,
        }
    }

    /// Free ports, for tests running side by side.
    pub fn free() -> Self {
        let free = crate::free_port;
        Self {
            db1: free(),
            db2: free(),
            broker: free(),
            api: free(),
            relay: free(),
            sink: free(),
            notifier: free(),
            notifier_relay: free(),
        }
    }

    /// The seed's ports: API 5000, Kafka 9092; DB1 5432 and DB2 5433; the ops ports after them.
    pub fn seed() -> Self {
        Self {
            db1: 5432,
            db2: 5433,
            broker: 9092,
            api: 5000,
            relay: 9101,
            sink: 9102,
            notifier: 9103,
            notifier_relay: 9104,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StackOptions {
    pub root: PathBuf,
    pub ports: Ports,
    /// PostgreSQL with fsync (the local stack, the benchmark); tests run without.
    pub durable: bool,
    /// Which broker implementation to run (`BROKER`).
    pub broker: BrokerKind,
    /// The bootstrap address of a broker shared by the whole test run, started by
    /// `scripts/test.sh` (`E2E_SHARED_BROKER`): a JVM costs seconds to start, so tests that do
    /// not kill or pause the broker share one, each with topics and a group of its own. `None`:
    /// the stack starts a broker of its own (tests that kill it, the local stack, chaos, bench).
    pub shared_broker: Option<String>,
    /// The topic the relay publishes to and the sink reads.
    pub topic: String,
    /// The sink's consumer group.
    pub group: String,
    /// Also run the chain's second hop: the notifier (its database on DB2's cluster) and the
    /// relay beside it, publishing to `notifications_topic`.
    pub chain: bool,
    pub notifications_topic: String,
    pub notifier_group: String,
    pub rust_log: String,
    /// The relay's `KAFKA_DELIVERY_TIMEOUT_MS` (`None`: its default), e.g. [`FAST_TAKEOVER`].
    pub relay_delivery_timeout: Option<Duration>,
    /// Extra environment for every service (e.g. `OTEL_*`), then per service.
    pub service_env: Vec<(String, String)>,
    pub service_env_by_name: Vec<(Service, String, String)>,
    /// Print every process's log tail when the stack is dropped (tests: shown on failure only).
    pub print_logs_on_drop: bool,
    /// Both PostgreSQL clusters require TLS (a CA of the stack's own, `pg_hba.conf` refusing
    /// plain TCP); every service then connects with `sslmode=verify-full`.
    pub postgres_tls: bool,
    /// The stack's own Apache Kafka also listens with SASL_SSL (SCRAM credentials and a CA of
    /// the stack's own), and every service connects there ([`super::Stack::kafka_client_env`]);
    /// the harness reads through the plain listener.
    pub kafka_sasl: bool,
}

/// One of the services: the pipeline's three, and the chain's two (with `StackOptions::chain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Api,
    Relay,
    Sink,
    Notifier,
    /// The second `outbox-relay`, beside the notifier.
    NotifierRelay,
}

impl Service {
    /// The pipeline's services, which every stack runs.
    pub const PIPELINE: [Service; 3] = [Self::Api, Self::Relay, Self::Sink];
    /// The chain's, which a stack with `StackOptions::chain` runs too.
    pub const CHAIN: [Service; 2] = [Self::Notifier, Self::NotifierRelay];

    pub fn binary_name(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Relay | Self::NotifierRelay => "outbox-relay",
            Self::Sink => "replica-sink",
            Self::Notifier => "notifier",
        }
    }

    /// Its process's name (in logs, `logs/<name>.log`, `pids/<name>.pid`).
    pub fn name(self) -> &'static str {
        match self {
            Self::NotifierRelay => "notifier-relay",
            other => other.binary_name(),
        }
    }
}
