//! Builds and runs the notifier: the ops endpoints start at once; consuming starts once its
//! database's schema is in (waiting and retrying while it is unreachable), so no offset moves
//! before the database can take the notifications.

use std::sync::Arc;

use anyhow::Context as _;
use kafka_kit::Role;
use rdkafka::consumer::Consumer as _;
use service_kit::ops::OpsServer;
use tokio_util::sync::CancellationToken;

use crate::config::NotifierConfig;
use crate::handle::Notifier;
use crate::metrics::NotifierMetrics;

pub struct Application {
    ops: OpsServer,
    config: NotifierConfig,
    notifier: Notifier,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Application {
    pub async fn build(config: NotifierConfig) -> anyhow::Result<Self> {
        // A notifier stopped mid-transaction must not hold up its partitions' next owner.
        let sessions = config.database_url.with_session_settings(service_kit::db::BOUNDED_SESSIONS);
        let pool = service_kit::db::pool(&sessions, config.db_pool_size).context("cannot create the database pool")?;
        let kafka_settings = kafka_kit::settings::settings().context("invalid Kafka settings")?;
        tracing::info!(kafka_security = %kafka_settings.describe(), "Kafka client settings");
        let consumer_config = kafka_kit::consumer_config(
            &config.kafka_bootstrap_servers,
            &config.kafka_group_id,
            config.kafka_isolation_level,
        );
        let consumer = Arc::new(
            kafka_kit::configured(&consumer_config, Role::Consumer)?
                .create()
                .context("cannot create the Kafka consumer")?,
        );
        let metrics = NotifierMetrics::new().context("cannot register metrics")?;
        let readiness = {
            let probe = kafka_kit::probe::BrokerProbe::new(&config.kafka_bootstrap_servers)
                .context("cannot create the Kafka client")?;
            let topic = config.kafka_topic.clone();
            service_kit::ops::database_and_broker(pool.clone(), move || probe.topic_reachable(&topic))
        };
        let ops = OpsServer::bind(config.listen_addr, metrics.registry.clone(), readiness).await?;
        let notifier = Notifier { pool, consumer, metrics, notifications_topic: config.notifications_topic.clone() };
        Ok(Self { ops, config, notifier })
    }

    pub fn port(&self) -> u16 {
        self.ops.port()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { ops, config, notifier } = self;
        tracing::info!(
            port = ops.port(),
            database = %config.database_url, database_security = %config.database_url.security(),
            bootstrap_servers = %config.kafka_bootstrap_servers,
            topic = %config.kafka_topic,
            group = %config.kafka_group_id,
            notifications_topic = %config.notifications_topic,
            "notifier starting"
        );
        let mut subscribed = Ok(());
        let work = async {
            if service_kit::db::migrate_when_available(&config.database_url, crate::MIGRATIONS, &shutdown).await {
                subscribed = notifier.consumer.subscribe(&[&config.kafka_topic]);
                if subscribed.is_ok() {
                    notifier.run(shutdown.clone()).await;
                }
            }
        };
        ops.serve_while(shutdown.clone(), work).await?;
        subscribed.context("cannot subscribe")
    }
}
