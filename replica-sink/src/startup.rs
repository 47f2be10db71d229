//! Builds and runs the sink: the ops endpoints start at once; consuming starts once DB2's schema
//! is in (waiting and retrying while DB2 is unreachable), so no offset moves before DB2 can
//! take the events.

use std::sync::Arc;

use anyhow::Context as _;
use kafka_kit::Role;
use rdkafka::consumer::Consumer as _;
use service_kit::ops::OpsServer;
use tokio_util::sync::CancellationToken;

use crate::config::SinkConfig;
use crate::dead_letter::DeadLetters;
use crate::group::{ASSIGNMENT_STRATEGY, GroupLog, SinkConsumer};
use crate::in_hand::InHandBudget;
use crate::metrics::SinkMetrics;
use crate::sink::Sink;

pub struct Application {
    ops: OpsServer,
    config: SinkConfig,
    sink: Sink,
    consumer: Arc<SinkConsumer>,
    metrics: SinkMetrics,
    /// DB2, for pruning `processed_events` beside the sink.
    pool: deadpool_postgres::Pool,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Application {
    pub async fn build(config: SinkConfig) -> anyhow::Result<Self> {
        // A sink stopped mid-transaction must not hold up its partitions' next owner.
        let sessions = config.replica_database_url.with_session_settings(service_kit::db::BOUNDED_SESSIONS);
        let pool = service_kit::db::pool(&sessions, config.db_pool_size).context("cannot create the DB2 pool")?;
        let kafka_settings = kafka_kit::settings::settings().context("invalid Kafka settings")?;
        tracing::info!(kafka_security = %kafka_settings.describe(), "Kafka client settings");
        let mut consumer_config = kafka_kit::consumer_config(
            &config.kafka_bootstrap_servers,
            &config.kafka_group_id,
            config.kafka_isolation_level,
        );
        consumer_config
            .set("fetch.wait.max.ms", config.kafka_fetch_wait_max_ms.to_string())
            .set("partition.assignment.strategy", ASSIGNMENT_STRATEGY);
        let consumer: Arc<SinkConsumer> = Arc::new(
            kafka_kit::configured(&consumer_config, Role::Consumer)?
                .create_with_context(GroupLog)
                .context("cannot create the Kafka consumer")?,
        );
        let metrics = SinkMetrics::new().context("cannot register metrics")?;
        let readiness = {
            let probe = kafka_kit::probe::BrokerProbe::new(&config.kafka_bootstrap_servers)
                .context("cannot create the Kafka client")?;
            let topic = config.kafka_topic.clone();
            service_kit::ops::database_and_broker(pool.clone(), move || probe.topic_reachable(&topic))
        };
        let mut dlq_config = kafka_kit::client_config(&config.kafka_bootstrap_servers);
        dlq_config.set("acks", "all").set("enable.idempotence", "true");
        let dlq = kafka_kit::configured(&dlq_config, Role::Producer)?
            .create()
            .context("cannot create the dead-letter producer")?;
        let dlq_topic = config.kafka_dlq_topic.clone().unwrap_or_else(|| format!("{}.dlq", config.kafka_topic));
        let sink = Sink::new(
            pool.clone(),
            consumer.clone(),
            metrics.clone(),
            DeadLetters::new(dlq, dlq_topic),
            InHandBudget::new(config.in_hand_mib),
        );
        let ops = OpsServer::bind(config.listen_addr, metrics.registry.clone(), readiness).await?;
        Ok(Self { ops, config, sink, consumer, metrics, pool })
    }

    pub fn port(&self) -> u16 {
        self.ops.port()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { ops, config, sink, consumer, metrics, pool } = self;
        tracing::info!(
            port = ops.port(),
            database = %config.replica_database_url, database_security = %config.replica_database_url.security(),
            bootstrap_servers = %config.kafka_bootstrap_servers,
            topic = %config.kafka_topic,
            group = %config.kafka_group_id,
            "replica sink starting"
        );
        let mut subscribed = Ok(());
        let work = async {
            if service_kit::db::migrate_when_available(&config.replica_database_url, crate::MIGRATIONS, &shutdown).await
            {
                subscribed = consumer.subscribe(&[&config.kafka_topic]);
                if subscribed.is_ok() {
                    let lag = tokio::spawn(crate::lag::report_lag(consumer.clone(), metrics.clone(), shutdown.clone()));
                    let prune = tokio::spawn(crate::prune::prune_processed_events(
                        pool.clone(),
                        config.processed_retention,
                        config.prune_batch,
                        metrics,
                        shutdown.clone(),
                    ));
                    sink.run(shutdown.clone()).await;
                    lag.abort();
                    prune.abort();
                }
            }
        };
        ops.serve_while(shutdown.clone(), work).await?;
        subscribed.context("cannot subscribe")
    }
}
