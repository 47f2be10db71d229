//! The relay loop, publishing each outbox row to the topic exactly once. Each job has its own
//! module — [`crate::leadership`], [`crate::readback`], [`crate::publish`], [`crate::settle`]; this
//! one puts them in order and decides what an error means.
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use deadpool_postgres::Pool;
use rdkafka::producer::{FutureProducer, Producer as _, PurgeConfig};
use service_kit::backoff::Backoff;
use service_kit::config::DatabaseUrl;
use service_kit::db::error_chain;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::RelayError;
use crate::leadership::Leadership;
use crate::metrics::RelayMetrics;
use crate::publish::{Acknowledgements, ProducerSettings, create_producer};
use crate::settle::{self, Published};

/// How long a batch still in flight may take to finish once shutdown is requested; after that
/// it is abandoned (its rows stay in the outbox and the next leader reconciles them).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// After this relay's own producer session ended, how long to wait before reading back, so that
/// produce requests already on the wire are processed (or not) by the broker first.
const SESSION_END_GRACE: Duration = Duration::from_secs(2);
/// How often the backlog gauges are refreshed.
const BACKLOG_REFRESH: Duration = Duration::from_secs(1);

/// What one round achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// This many rows were acknowledged and settled.
    Published(usize),
    /// The outbox was empty.
    Empty,
}

/// Settings of the relay loop.
#[derive(Debug, Clone)]
pub(crate) struct RelaySettings {
    pub(crate) producer: ProducerSettings,
    pub(crate) topic: String,
    pub(crate) batch_size: i64,
    pub(crate) poll_interval: Duration,
    /// Names this relay in `relay_leader.holder` and the logs.
    pub(crate) instance: String,
}

pub(crate) struct Relay {
    pool: Pool,
    database_url: DatabaseUrl,
    producer: FutureProducer,
    settings: RelaySettings,
    metrics: RelayMetrics,
    wake: Arc<Notify>,
}

impl Relay {
    pub(crate) fn new(
        pool: Pool,
        database_url: DatabaseUrl,
        producer: FutureProducer,
        settings: RelaySettings,
        metrics: RelayMetrics,
    ) -> Self {
        Self { pool, database_url, producer, settings, metrics, wake: Arc::new(Notify::new()) }
    }

    /// The handle the NOTIFY listener wakes the relay through.
    pub(crate) fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Stands by, leads while holding the lock, stands by again after losing it; until `shutdown`.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
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
        if let Some(wait) = crate::leadership::takeover_wait(epoch, self.settings.producer.delivery_timeout) {
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
    async fn reconcile(&self, epoch: i64) -> Result<u64, RelayError> {
        let started = Instant::now();
        let checkpoints = settle::load(&self.pool.get().await?, &self.settings.topic).await?;
        let read_back = crate::readback::read_back(
            self.settings.producer.bootstrap_servers.clone(),
            self.settings.topic.clone(),
            checkpoints.clone(),
        )
        .await?;
        let settled = settle::settle(
            &mut self.pool.get().await?,
            epoch,
            &self.settings.topic,
            Published::Events(&read_back.found),
            &read_back.ends,
        )
        .await?;
        self.metrics.reconciled.inc_by(settled);
        tracing::info!(
            epoch,
            records_read = read_back.records,
            rows_settled = settled,
            from = ?checkpoints,
            to = ?read_back.ends,
            elapsed = ?started.elapsed(),
            "reconciled with the topic; rows found there are settled without being published again"
        );
        Ok(settled)
    }

    /// Publishes up to `batch_size` of the oldest rows and settles those acknowledged.
    async fn publish_batch(&self, epoch: i64) -> Result<Outcome, RelayError> {
        let mut client = self.pool.get().await?;
        let rows = outbox::fetch_pending(&client, self.settings.batch_size).await?;
        if rows.is_empty() {
            return Ok(Outcome::Empty);
        }
        let topic = &self.settings.topic;
        let mut deliveries = Vec::with_capacity(rows.len());
        let mut spans = Vec::with_capacity(rows.len());
        for row in &rows {
            let span = crate::publish::publish_span(topic, row);
            span.in_scope(|| {
                tracing::info!(
                    article_id = row.article_id,
                    event_id = %row.event_id,
                    "Publishing to Kafka: topic={topic}, event_type={}",
                    row.event_type
                );
            });
            // The record carries the publish span's context; when this relay does not trace, the
            // request's context passes through unchanged.
            let mut trace_headers = service_kit::telemetry::context_of(&span);
            if trace_headers.is_empty() {
                trace_headers.clone_from(&row.trace_context);
            }
            let delivery = crate::publish::send(&self.producer, topic, row, &trace_headers).await;
            deliveries.push(delivery.map_err(RelayError::Enqueue)?);
            spans.push(span);
        }
        let results = futures_util::future::join_all(deliveries).await;
        let mut acks = Acknowledgements::default();
        for ((row, result), span) in rows.iter().zip(results).zip(&spans) {
            let answer = match result {
                Ok(Ok(delivery)) => {
                    span.record("messaging.destination.partition.id", delivery.partition);
                    span.record("messaging.kafka.offset", delivery.offset);
                    self.metrics.messages_sent.with_label_values(&[&row.event_type]).inc();
                    let age = (Utc::now() - row.created_at).to_std().unwrap_or_default();
                    self.metrics.commit_to_ack.observe(age.as_secs_f64());
                    Ok((delivery.partition, delivery.offset))
                }
                Ok(Err((error, _message))) => Err(error),
                Err(_canceled) => Err(rdkafka::error::KafkaError::Canceled),
            };
            if answer.is_err() {
                span.record("otel.status_code", "error");
            }
            acks.record(row.id, answer);
        }
        self.metrics.publish_errors.inc_by(acks.failed as u64);
        settle::settle(&mut client, epoch, topic, Published::Rows(&acks.acknowledged), &acks.checkpoints()).await?;
        if let Some(first) = acks.first_failure {
            return Err(RelayError::Delivery { failed: acks.failed, attempted: rows.len(), first });
        }
        tracing::debug!(published = acks.acknowledged.len(), "batch acknowledged and settled");
        Ok(Outcome::Published(acks.acknowledged.len()))
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
        match create_producer(&self.settings.producer) {
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
