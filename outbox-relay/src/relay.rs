//! The relay loop: read the oldest outbox rows, publish them all (pipelined), wait for every
//! acknowledgement, delete the acknowledged rows; sleep until NOTIFY or the polling interval
//! when the outbox is empty; back off (capped) on errors.
//!
//! Ordering: rows are read in id order and handed to librdkafka in that order; the idempotent
//! producer (`enable.idempotence`, `acks=all`) keeps per-partition order and removes duplicates
//! caused by its own retries. Rows are keyed by article id, so all events of an article share a
//! partition. A row is only deleted after the broker acknowledged it: a crash or an outage can
//! cause a row to be sent again (at-least-once), never lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use deadpool_postgres::Pool;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use shared::backoff::Backoff;
use shared::db::error_chain;
use shared::kafka::{EVENT_ID_HEADER, EVENT_TYPE_HEADER};
use shared::outbox::{self, OutboxRow};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::RelayMetrics;

/// How long a batch still in flight may take to finish once shutdown is requested; after that
/// it is abandoned (its rows stay in the outbox and are published again by the next relay).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the backlog gauges are refreshed.
const BACKLOG_REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("DB1 unavailable")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("DB1 query failed")]
    Database(#[from] tokio_postgres::Error),
    #[error("cannot hand a record to the producer")]
    Enqueue(#[source] KafkaError),
    #[error("{failed} of {attempted} records were not acknowledged by the broker")]
    Delivery {
        failed: usize,
        attempted: usize,
        #[source]
        first: KafkaError,
    },
    #[error("cannot create the Kafka producer")]
    Producer(#[source] KafkaError),
}

/// What one round achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This many rows were acknowledged and removed.
    Published(usize),
    /// The outbox was empty.
    Empty,
}

/// Settings of the relay loop.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub bootstrap_servers: String,
    pub topic: String,
    pub batch_size: i64,
    pub poll_interval: Duration,
    pub delivery_timeout: Duration,
}

/// Creates the idempotent producer the relay publishes with.
pub fn create_producer(settings: &RelaySettings) -> Result<FutureProducer, RelayError> {
    shared::kafka::client_config(&settings.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            settings.delivery_timeout.as_millis().to_string(),
        )
        .set("queue.buffering.max.messages", "200000")
        .create()
        .map_err(RelayError::Producer)
}

pub struct Relay {
    pool: Pool,
    producer: FutureProducer,
    settings: RelaySettings,
    metrics: RelayMetrics,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Relay {
    pub fn new(
        pool: Pool,
        producer: FutureProducer,
        settings: RelaySettings,
        metrics: RelayMetrics,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            pool,
            producer,
            settings,
            metrics,
            wake,
        }
    }

    /// The handle the NOTIFY listener wakes the relay through.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Relays until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut backlog_refreshed = Instant::now() - BACKLOG_REFRESH;
        while !shutdown.is_cancelled() {
            let grace = async {
                shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            let result = tokio::select! {
                result = self.publish_batch() => result,
                () = grace => {
                    tracing::warn!("shutdown grace period over; abandoning the batch in flight (its rows stay in the outbox)");
                    break;
                }
            };
            if backlog_refreshed.elapsed() >= BACKLOG_REFRESH {
                self.refresh_backlog().await;
                backlog_refreshed = Instant::now();
            }
            match result {
                Ok(Outcome::Published(_)) => backoff.reset(),
                Ok(Outcome::Empty) => {
                    backoff.reset();
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(self.settings.poll_interval) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %error_chain(&error), ?delay, "relay round failed; rows stay in the outbox, retrying");
                    if self.session_ended(&error) {
                        self.replace_producer();
                    }
                    shared::shutdown::sleep_unless_cancelled(&shutdown, delay).await;
                }
            }
        }
        if let Err(error) = self.producer.flush(Duration::from_secs(1)) {
            tracing::debug!(%error, "producer flush at shutdown");
        }
        tracing::info!("relay stopped");
    }

    /// One round: publish up to `batch_size` of the oldest rows and delete those acknowledged.
    pub async fn publish_batch(&self) -> Result<Outcome, RelayError> {
        let client = self.pool.get().await?;
        let rows = outbox::fetch_pending(&client, self.settings.batch_size).await?;
        if rows.is_empty() {
            return Ok(Outcome::Empty);
        }
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in &rows {
            tracing::info!(
                article_id = row.article_id,
                event_id = %row.event_id,
                "Publishing to Kafka: topic={}, event_type={}",
                self.settings.topic,
                row.event_type
            );
            deliveries.push(self.send(row).await?);
        }
        let results = futures_util::future::join_all(deliveries).await;
        let mut acknowledged = Vec::with_capacity(rows.len());
        let mut first_failure = None;
        let mut failed = 0;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(Ok(_delivery)) => {
                    acknowledged.push(row.id);
                    self.metrics
                        .messages_sent
                        .with_label_values(&[&row.event_type])
                        .inc();
                    let age = (Utc::now() - row.created_at).to_std().unwrap_or_default();
                    self.metrics.commit_to_ack.observe(age.as_secs_f64());
                }
                Ok(Err((error, _message))) => {
                    failed += 1;
                    first_failure.get_or_insert(error);
                }
                Err(_canceled) => {
                    failed += 1;
                    first_failure.get_or_insert(KafkaError::Canceled);
                }
            }
        }
        outbox::delete_published(&client, &acknowledged).await?;
        self.metrics.publish_errors.inc_by(failed as u64);
        if let Some(first) = first_failure {
            return Err(RelayError::Delivery {
                failed,
                attempted: rows.len(),
                first,
            });
        }
        tracing::debug!(published = acknowledged.len(), "batch acknowledged");
        Ok(Outcome::Published(acknowledged.len()))
    }

    /// Hands one row to the producer, waiting while its queue is full (back-pressure, not failure).
    async fn send(&self, row: &OutboxRow) -> Result<DeliveryFuture, RelayError> {
        let key = row.article_id.to_string();
        let event_id = row.event_id.to_string();
        loop {
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: EVENT_ID_HEADER,
                    value: Some(event_id.as_str()),
                })
                .insert(Header {
                    key: EVENT_TYPE_HEADER,
                    value: Some(row.event_type.as_str()),
                });
            let record = FutureRecord::to(&self.settings.topic)
                .key(&key)
                .payload(&row.payload)
                .headers(headers);
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(RelayError::Enqueue(error)),
            }
        }
    }

    /// Whether `error` ends the idempotent producer session. A fatal error does; so does any
    /// failed delivery: librdkafka bumps the producer epoch on timeouts, and a broker that lost
    /// or never stored that epoch (nisshi after a crash) then refuses every later record of the
    /// session. A new producer starts a clean session; the unacknowledged rows are sent again.
    fn session_ended(&self, error: &RelayError) -> bool {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            tracing::error!(?code, %reason, "fatal producer error");
            return true;
        }
        matches!(error, RelayError::Delivery { .. })
    }

    fn replace_producer(&mut self) {
        tracing::info!("starting a new producer session");
        match create_producer(&self.settings) {
            Ok(producer) => self.producer = producer,
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "cannot create a new producer")
            }
        }
    }

    async fn refresh_backlog(&self) {
        let Ok(client) = self.pool.get().await else {
            return;
        };
        match outbox::backlog(&client).await {
            Ok((rows, oldest_age)) => {
                self.metrics.backlog.set(rows);
                self.metrics.oldest_age.set(oldest_age);
            }
            Err(error) => tracing::debug!(%error, "cannot measure the outbox backlog"),
        }
    }
}
