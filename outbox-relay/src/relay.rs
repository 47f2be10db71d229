//! The relay loop, publishing each outbox row to the topic exactly once.
//!
//! Only the leader publishes (see [`crate::leadership`]). A leader, before publishing anything and
//! again after any error, **reconciles**: it reads every partition back from its checkpoint to the
//! high watermark and settles the outbox rows whose `event_id` it finds there, without
//! republishing them. Then it loops: read the oldest rows in id order, hand them all to the
//! idempotent producer (no duplicates from its own retries; order kept per partition; records keyed
//! by article id), wait for every acknowledgement, and **settle** — delete the acknowledged rows and
//! move each partition's checkpoint past them, in one DB1 transaction fenced by the leader epoch.
//!
//! A row is therefore published again only if reconciliation did not find it on the topic, after
//! the previous session's deliveries can no longer land: a new leader first waits out the previous
//! leader's delivery timeout, and after an error in its own session a leader drops that producer
//! and waits [`SESSION_END_GRACE`]. The assumptions are spelled out in docs/guarantees.md.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use deadpool_postgres::Pool;
use kafka_kit::{EVENT_ID_HEADER, EVENT_TYPE_HEADER, ReadBackError};
use outbox::{self, OutboxRow};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _, PurgeConfig};
use service_kit::backoff::Backoff;
use service_kit::config::DatabaseUrl;
use service_kit::db::error_chain;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::checkpoint::{self, Published, SettleError};
use crate::leadership::Leadership;
use crate::metrics::RelayMetrics;

/// How long a batch still in flight may take to finish once shutdown is requested; after that
/// it is abandoned (its rows stay in the outbox and the next leader reconciles them).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Added to the delivery timeout before a new leader reads back.
const TAKEOVER_MARGIN: Duration = Duration::from_secs(2);
/// After this relay's own producer session ended, how long to wait before reading back, so that
/// produce requests already on the wire are processed (or not) by the broker first.
pub const SESSION_END_GRACE: Duration = Duration::from_secs(2);
/// How long a read-back may take.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(120);
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
    #[error("cannot settle published rows")]
    Settle(#[from] SettleError),
    #[error("cannot read the topic back")]
    ReadBack(#[from] ReadBackError),
    #[error("the read-back task failed")]
    ReadBackTask(#[from] tokio::task::JoinError),
}

impl RelayError {
    fn is_fenced(&self) -> bool {
        matches!(self, Self::Settle(SettleError::Fenced { .. }))
    }
}

/// What one round achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This many rows were acknowledged and settled.
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
    pub linger: Duration,
    /// Names this relay in `relay_leader.holder` and the logs.
    pub instance: String,
}

/// Creates an idempotent producer: a new producer session.
pub fn create_producer(settings: &RelaySettings) -> Result<FutureProducer, RelayError> {
    kafka_kit::client_config(&settings.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", settings.linger.as_millis().to_string())
        .set("message.timeout.ms", settings.delivery_timeout.as_millis().to_string())
        .set("queue.buffering.max.messages", "200000")
        .create()
        .map_err(RelayError::Producer)
}

pub struct Relay {
    pool: Pool,
    database_url: DatabaseUrl,
    producer: FutureProducer,
    settings: RelaySettings,
    metrics: RelayMetrics,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Relay {
    pub fn new(
        pool: Pool,
        database_url: DatabaseUrl,
        producer: FutureProducer,
        settings: RelaySettings,
        metrics: RelayMetrics,
    ) -> Self {
        Self { pool, database_url, producer, settings, metrics, wake: Arc::new(Notify::new()) }
    }

    /// The handle the NOTIFY listener wakes the relay through.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Stands by, leads while holding the lock, stands by again after losing it; until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            self.metrics.leader.set(0);
            let Some(leadership) = Leadership::acquire(&self.database_url, &self.settings.instance, &shutdown).await
            else {
                break;
            };
            self.metrics.leader.set(1);
            self.metrics.epoch.set(leadership.epoch);
            self.lead(&leadership, &shutdown).await;
            // Whatever is still queued or in flight must not go out once we stop leading.
            self.producer.purge(PurgeConfig::default().queue().inflight());
            self.replace_producer();
            if !shutdown.is_cancelled() {
                tracing::warn!(epoch = leadership.epoch, "stepped down as leader; standing by");
            }
        }
        self.metrics.leader.set(0);
        tracing::info!("relay stopped");
    }

    /// Publishes while `leadership` holds; returns when it is lost, fenced, or on shutdown.
    async fn lead(&mut self, leadership: &Leadership, shutdown: &CancellationToken) {
        let epoch = leadership.epoch;
        let lost = leadership.lost();
        if epoch > 1 {
            let wait = self.settings.delivery_timeout + TAKEOVER_MARGIN;
            tracing::info!(epoch, ?wait, "waiting out the previous leader's delivery timeout before reading back");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = lost.cancelled() => return,
                () = shutdown.cancelled() => return,
            }
        }
        let mut reconciled = false;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut backlog_refreshed = Instant::now() - BACKLOG_REFRESH;
        while !shutdown.is_cancelled() && !lost.is_cancelled() {
            let shutdown_grace = async {
                shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            let result = tokio::select! {
                result = self.round(epoch, reconciled) => result,
                () = lost.cancelled() => {
                    tracing::error!(epoch, "leader lock lost; stopping production at once");
                    return;
                }
                () = shutdown_grace => {
                    tracing::warn!("shutdown grace period over; abandoning the batch in flight (the next leader reconciles it)");
                    return;
                }
            };
            if backlog_refreshed.elapsed() >= BACKLOG_REFRESH {
                self.refresh_backlog().await;
                backlog_refreshed = Instant::now();
            }
            match result {
                Ok(outcome) => {
                    reconciled = true;
                    backoff.reset();
                    if outcome == Outcome::Empty {
                        tokio::select! {
                            () = self.wake.notified() => {}
                            () = tokio::time::sleep(self.settings.poll_interval) => {}
                            () = lost.cancelled() => {}
                            () = shutdown.cancelled() => {}
                        }
                    }
                }
                Err(error) if error.is_fenced() => {
                    tracing::error!(error = %error_chain(&error), "a newer leader took over");
                    return;
                }
                Err(error) => {
                    reconciled = false;
                    let mut delay = backoff.next_delay();
                    tracing::warn!(error = %error_chain(&error), ?delay, "relay round failed; rows stay in the outbox, reconciling before the next round");
                    if self.session_ended(&error) {
                        self.replace_producer();
                        delay = delay.max(SESSION_END_GRACE);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = lost.cancelled() => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            }
        }
    }

    /// Reconciles first if needed, then publishes one batch.
    async fn round(&self, epoch: i64, reconciled: bool) -> Result<Outcome, RelayError> {
        if !reconciled {
            self.reconcile(epoch).await?;
        }
        self.publish_batch(epoch).await
    }

    /// Reads the topic back from the checkpoints and settles the rows found there.
    pub async fn reconcile(&self, epoch: i64) -> Result<u64, RelayError> {
        let started = Instant::now();
        let checkpoints = checkpoint::load(&self.pool.get().await?, &self.settings.topic).await?;
        let (bootstrap, topic, from) =
            (self.settings.bootstrap_servers.clone(), self.settings.topic.clone(), checkpoints.clone());
        let (found, ends, records) = tokio::task::spawn_blocking(move || {
            let (mut found, mut records) = (Vec::new(), 0_u64);
            let ends = kafka_kit::read_to_end(
                &bootstrap,
                &topic,
                |partition| from.get(&partition).copied(),
                Instant::now() + READ_BACK_TIMEOUT,
                |message| {
                    records += 1;
                    // Records without our header (produced by hand) are not ours: ignored.
                    if let Some(event_id) =
                        kafka_kit::header_str(message, EVENT_ID_HEADER).and_then(|value| Uuid::parse_str(value).ok())
                    {
                        found.push(event_id);
                    }
                },
            )?;
            Ok::<_, ReadBackError>((found, ends, records))
        })
        .await??;
        let settled = checkpoint::settle(
            &mut self.pool.get().await?,
            epoch,
            &self.settings.topic,
            Published::Events(&found),
            &ends,
        )
        .await?;
        self.metrics.reconciled.inc_by(settled);
        tracing::info!(
            epoch,
            records_read = records,
            rows_settled = settled,
            from = ?checkpoints,
            to = ?ends,
            elapsed = ?started.elapsed(),
            "reconciled with the topic; rows found there are settled without being published again"
        );
        Ok(settled)
    }

    /// Publishes up to `batch_size` of the oldest rows and settles those acknowledged.
    pub async fn publish_batch(&self, epoch: i64) -> Result<Outcome, RelayError> {
        let mut client = self.pool.get().await?;
        let rows = outbox::fetch_pending(&client, self.settings.batch_size).await?;
        if rows.is_empty() {
            return Ok(Outcome::Empty);
        }
        let mut deliveries = Vec::with_capacity(rows.len());
        let mut spans = Vec::with_capacity(rows.len());
        for row in &rows {
            let span = publish_span(&self.settings.topic, row);
            span.in_scope(|| {
                tracing::info!(
                    article_id = row.article_id,
                    event_id = %row.event_id,
                    "Publishing to Kafka: topic={}, event_type={}",
                    self.settings.topic,
                    row.event_type
                );
            });
            // The record carries the publish span's context; when this relay does not trace, the
            // request's context passes through unchanged.
            let mut trace_headers = service_kit::telemetry::context_of(&span);
            if trace_headers.is_empty() {
                trace_headers.clone_from(&row.trace_context);
            }
            deliveries.push(self.send(row, &trace_headers).await?);
            spans.push(span);
        }
        let results = futures_util::future::join_all(deliveries).await;
        let mut acknowledged = Vec::with_capacity(rows.len());
        let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
        let mut first_failure = None;
        let mut failed = 0;
        for ((row, result), span) in rows.iter().zip(results).zip(&spans) {
            match result {
                Ok(Ok(delivery)) => {
                    span.record("messaging.destination.partition.id", delivery.partition);
                    span.record("messaging.kafka.offset", delivery.offset);
                    acknowledged.push(row.id);
                    let next = next_offsets.entry(delivery.partition).or_insert(0);
                    *next = (*next).max(delivery.offset + 1);
                    self.metrics.messages_sent.with_label_values(&[&row.event_type]).inc();
                    let age = (Utc::now() - row.created_at).to_std().unwrap_or_default();
                    self.metrics.commit_to_ack.observe(age.as_secs_f64());
                }
                Ok(Err((error, _message))) => {
                    span.record("otel.status_code", "error");
                    failed += 1;
                    first_failure.get_or_insert(error);
                }
                Err(_canceled) => {
                    span.record("otel.status_code", "error");
                    failed += 1;
                    first_failure.get_or_insert(KafkaError::Canceled);
                }
            }
        }
        self.metrics.publish_errors.inc_by(failed as u64);
        // A checkpoint may only pass records that are all settled: after a failure (a record that
        // timed out may still have been written) checkpoints stay, and reconciliation reads the
        // whole batch back.
        if first_failure.is_some() {
            next_offsets.clear();
        }
        checkpoint::settle(&mut client, epoch, &self.settings.topic, Published::Rows(&acknowledged), &next_offsets)
            .await?;
        if let Some(first) = first_failure {
            return Err(RelayError::Delivery { failed, attempted: rows.len(), first });
        }
        tracing::debug!(published = acknowledged.len(), "batch acknowledged and settled");
        Ok(Outcome::Published(acknowledged.len()))
    }

    /// Hands one row to the producer, waiting while its queue is full (back-pressure, not failure).
    async fn send(
        &self,
        row: &OutboxRow,
        trace_headers: &HashMap<String, String>,
    ) -> Result<DeliveryFuture, RelayError> {
        let key = row.article_id.to_string();
        let event_id = row.event_id.to_string();
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(2 + trace_headers.len())
                .insert(Header { key: EVENT_ID_HEADER, value: Some(event_id.as_str()) })
                .insert(Header { key: EVENT_TYPE_HEADER, value: Some(row.event_type.as_str()) });
            for (name, value) in trace_headers {
                headers = headers.insert(Header { key: name, value: Some(value.as_str()) });
            }
            let record = FutureRecord::to(&self.settings.topic).key(&key).payload(&row.payload).headers(headers);
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
    /// session. A new producer starts a clean session.
    fn session_ended(&self, error: &RelayError) -> bool {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            tracing::error!(?code, %reason, "fatal producer error");
            return true;
        }
        matches!(error, RelayError::Delivery { .. } | RelayError::Enqueue(_))
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

/// The producer span of one row: a child of the request that wrote it (`SpanKind::Producer`).
fn publish_span(topic: &str, row: &OutboxRow) -> tracing::Span {
    let span = tracing::info_span!(
        "outbox.publish",
        otel.name = %format!("outbox.publish {topic}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.destination.name = %topic,
        messaging.message.id = %row.event_id,
        messaging.kafka.message.key = %row.article_id,
        messaging.destination.partition.id = tracing::field::Empty,
        messaging.kafka.offset = tracing::field::Empty,
        event_type = %row.event_type,
        article.id = row.article_id,
        trace_id = tracing::field::Empty,
    );
    service_kit::telemetry::continue_trace(&span, &service_kit::telemetry::MapCarrier(&row.trace_context));
    span
}
