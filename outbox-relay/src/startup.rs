//! Builds and runs the relay: the ops endpoints start at once; the relay loop starts once DB1's
//! schema is in (waiting and retrying while DB1 is unreachable).

use std::time::Duration;

use anyhow::Context as _;
use service_kit::config::DatabaseUrl;
use service_kit::ops::OpsServer;
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::metrics::RelayMetrics;
use crate::publish::ProducerSettings;
use crate::relay::{Relay, RelaySettings};

/// Keeps the relay's planner off sequential scans. The outbox is a queue: its table keeps the
/// pages of a past backlog (VACUUM frees them, but cannot give them back while newer rows sit
/// behind them), and once ANALYZE has counted few live rows in many pages, the planner reads the
/// whole table for every batch instead of the primary key's first entries: 7.3 ms against 0.5 ms
/// per fetch after a 50,000-row backlog, and growing with the backlog (docs/performance.md). Every
/// query of the relay has an index to use; one without would still run, as a sequential scan.
const QUEUE_PLANNER: &[(&str, &str)] = &[("enable_seqscan", "off")];

/// DB1 as the relay's sessions use it: a relay stopped mid-transaction cannot hold up its
/// successor, and its fetches read the outbox by its primary key however bloated the table is
/// (migrations use the plain URL: they may wait longer).
pub fn relay_sessions(url: &DatabaseUrl) -> DatabaseUrl {
    url.with_session_settings(service_kit::db::BOUNDED_SESSIONS).with_session_settings(QUEUE_PLANNER)
}

pub struct Application {
    ops: OpsServer,
    config: RelayConfig,
    relay: Relay,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("ops", &self.ops).field("config", &self.config).finish_non_exhaustive()
    }
}

impl Application {
    pub async fn build(config: RelayConfig) -> anyhow::Result<Self> {
        let sessions = relay_sessions(&config.database_url);
        let pool = service_kit::db::pool(&sessions, config.db_pool_size).context("cannot create the DB1 pool")?;
        // The relay places each record on its partition itself, as the operator's partitioner would.
        let producer_properties = kafka_kit::configured(&rdkafka::ClientConfig::new(), kafka_kit::Role::Producer)
            .context("invalid Kafka settings")?;
        let partitioner = kafka_kit::Partitioner::of(&producer_properties).context("invalid Kafka settings")?;
        let settings = RelaySettings {
            producer: ProducerSettings {
                bootstrap_servers: config.kafka_bootstrap_servers.clone(),
                delivery_timeout: Duration::from_millis(config.delivery_timeout_ms),
                linger: Duration::from_millis(config.linger_ms.into()),
                max_record_bytes: config.message_max_bytes,
                partitioner,
            },
            topic: config.kafka_topic.clone(),
            cloudevents: (config.cloudevents == crate::cloudevents::Mode::Binary).then(|| {
                crate::cloudevents::CloudEvents {
                    source: config.cloudevents_source.clone().unwrap_or_else(|| default_source(&config.database_url)),
                }
            }),
            topic_spec: crate::topic::TopicSpec {
                partitions: config.topic_partitions,
                replication_factor: config.topic_replication_factor,
            },
            isolation: config.kafka_isolation_level,
            batch_size: config.batch_size,
            poll_interval: Duration::from_millis(config.poll_interval_ms),
            instance: config.instance_id.clone().unwrap_or_else(default_instance_id),
        };
        // Readiness asks the broker through a client of its own: the publishing producer exists
        // only while this relay leads.
        let kafka_settings = kafka_kit::settings::settings().context("invalid Kafka settings")?;
        tracing::info!(kafka_security = %kafka_settings.describe(), "Kafka client settings");
        let probe = kafka_kit::probe::BrokerProbe::new(&config.kafka_bootstrap_servers)
            .context("cannot create the Kafka client")?;
        let metrics = RelayMetrics::new().context("cannot register metrics")?;
        let readiness = {
            let (producer, topic) = (probe.clone(), settings.topic.clone());
            service_kit::ops::database_and_broker(pool.clone(), move || producer.topic_reachable(&topic))
        };
        let ops = OpsServer::bind(config.listen_addr, metrics.registry.clone(), readiness).await?;
        let relay = Relay::new(pool, sessions, settings, metrics, probe);
        Ok(Self { ops, config, relay })
    }

    pub fn port(&self) -> u16 {
        self.ops.port()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { ops, config, relay } = self;
        tracing::info!(
            port = ops.port(),
            database = %config.database_url, database_security = %config.database_url.security(),
            bootstrap_servers = %config.kafka_bootstrap_servers,
            default_topic = %config.kafka_topic,
            cloudevents = ?config.cloudevents,
            "outbox relay starting"
        );
        let work = async {
            if service_kit::db::migrate_when_available(&config.database_url, crate::MIGRATIONS, &shutdown).await {
                let wake = relay.wake();
                let listener =
                    tokio::spawn(crate::listener::listen(relay_sessions(&config.database_url), wake, shutdown.clone()));
                relay.run(shutdown.clone()).await;
                listener.abort();
            }
        };
        ops.serve_while(shutdown.clone(), work).await
    }
}

/// `ce_source` when none is set: the outbox's database (`/outbox` if its name needs escaping).
fn default_source(url: &DatabaseUrl) -> String {
    let database = url.config().get_dbname().unwrap_or_default();
    crate::cloudevents::parse_source(&crate::cloudevents::default_source(database))
        .unwrap_or_else(|_| "/outbox".to_owned())
}

/// `<host name>-<process id>`.
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}
