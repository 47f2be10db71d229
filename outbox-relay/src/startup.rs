//! Builds and runs the relay: the ops endpoints start at once; the relay loop starts once DB1's
//! schema is in (waiting and retrying while DB1 is unreachable).

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::producer::Producer as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::metrics::RelayMetrics;
use crate::publish::{ProducerSettings, create_producer};
use crate::relay::{Relay, RelaySettings};

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    config: RelayConfig,
    relay: Relay,
    readiness: service_kit::ops::ReadinessCheck,
    metrics: RelayMetrics,
}

impl Application {
    pub async fn build(config: RelayConfig) -> anyhow::Result<Self> {
        let listener = service_kit::ops::bind(config.listen_addr).await?;
        let pool =
            service_kit::db::pool(&config.database_url, config.db_pool_size).context("cannot create the DB1 pool")?;
        let settings = RelaySettings {
            producer: ProducerSettings {
                bootstrap_servers: config.kafka_bootstrap_servers.clone(),
                delivery_timeout: Duration::from_millis(config.delivery_timeout_ms),
                linger: Duration::from_millis(config.linger_ms.into()),
            },
            topic: config.kafka_topic.clone(),
            batch_size: config.batch_size,
            poll_interval: Duration::from_millis(config.poll_interval_ms),
            instance: config.instance_id.clone().unwrap_or_else(default_instance_id),
        };
        let producer = create_producer(&settings.producer).context("cannot create the Kafka producer")?;
        let metrics = RelayMetrics::new().context("cannot register metrics")?;
        let readiness = {
            let (producer, topic) = (producer.clone(), settings.topic.clone());
            service_kit::ops::database_and_broker(pool.clone(), move || {
                kafka_kit::topic_reachable(producer.client(), &topic)
            })
        };
        let relay = Relay::new(pool, config.database_url.clone(), producer, settings, metrics.clone());
        Ok(Self { listener, config, relay, readiness, metrics })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|addr| addr.port()).unwrap_or(0)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { listener, config, relay, readiness, metrics } = self;
        tracing::info!(
            listen_addr = %listener.local_addr()?,
            database = %config.database_url,
            bootstrap_servers = %config.kafka_bootstrap_servers,
            topic = %config.kafka_topic,
            "outbox relay starting"
        );
        let ops = tokio::spawn(service_kit::ops::serve(
            listener,
            service_kit::ops::router(metrics.registry.clone(), readiness),
            shutdown.clone(),
        ));
        if service_kit::db::migrate_when_available(&config.database_url, crate::MIGRATIONS, &shutdown).await {
            let listener =
                tokio::spawn(crate::listener::listen(config.database_url.clone(), relay.wake(), shutdown.clone()));
            relay.run(shutdown.clone()).await;
            listener.abort();
        }
        shutdown.cancel();
        ops.await.context("the ops server panicked")?.context("the ops server failed")?;
        Ok(())
    }
}

/// `<host name>-<process id>`.
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}
