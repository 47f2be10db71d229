//! The consume loop. Records already waiting (up to [`MAX_BATCH`]) are handled together:
//!
//! 1. decode each one; a record that can never be applied (poison) is logged, counted and copied
//!    to the dead-letter topic at once;
//! 2. apply the others, one DB2 transaction per partition, the partitions side by side (each
//!    keeps its order), retrying with capped backoff while DB2 is unavailable, without moving on;
//! 3. if DB2 refuses one event's data, apply that partition's events again event by event, so
//!    that only the refused event goes to the dead-letter topic;
//! 4. store the offsets, for the next auto-commit.
//!
//! Poison never stops the pipeline, and no offset moves before its event's effect is committed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::message::{BorrowedMessage, Message as _};
use service_kit::backoff::Backoff;
use service_kit::db::{error_chain, is_transient};
use tokio_util::sync::CancellationToken;

use crate::apply::{ApplyOutcome, apply_all};
use crate::dead_letter::{DeadLetters, Handled};
use crate::group::SinkConsumer;
use crate::metrics::SinkMetrics;
use events::decode::{DecodedEvent, Poison, decode};

/// Most records handled together; each partition's share is one DB2 transaction, so with 6
/// partitions a full batch is ~330 events per transaction.
const MAX_BATCH: usize = 2000;
/// How long the loop waits for a record before storing its position anyway (see `store_position`).
const IDLE_POSITION_STORE: Duration = Duration::from_millis(500);

/// A decoded record on its way to DB2, with its consumer span.
struct Pending<'m> {
    message: &'m BorrowedMessage<'m>,
    decoded: DecodedEvent,
    span: tracing::Span,
}

/// Why a DB2 transaction of the sink (applying events, pruning) failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Db2Error {
    #[error("DB2 unavailable")]
    Unavailable(#[from] deadpool_postgres::PoolError),
    #[error("DB2 query failed")]
    Query(#[from] tokio_postgres::Error),
}

/// Why [`Sink::apply_retrying`] gave up.
enum Stop {
    /// DB2 refuses the data: the same statement would fail again.
    Refused(tokio_postgres::Error),
    Interrupted,
}

pub(crate) struct Sink {
    pool: Pool,
    consumer: Arc<SinkConsumer>,
    metrics: SinkMetrics,
    dead_letters: DeadLetters,
    /// The relay epochs seen per partition: a record of a deposed relay leader that landed after
    /// its successor's is said and counted (the version guard keeps it from changing DB2).
    epochs: std::sync::Mutex<kafka_kit::EpochWatch>,
}

impl Sink {
    pub(crate) fn new(
        pool: Pool,
        consumer: Arc<SinkConsumer>,
        metrics: SinkMetrics,
        dead_letters: DeadLetters,
    ) -> Self {
        Self { pool, consumer, metrics, dead_letters, epochs: std::sync::Mutex::default() }
    }

    /// Consumes until `shutdown`, then commits the stored offsets and leaves the group.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        while let Some(batch) = self.next_batch(&shutdown).await {
            if self.handle_batch(&batch, &shutdown).await == Handled::Interrupted {
                break;
            }
            for message in &batch {
                tracing::debug!(partition = message.partition(), offset = message.offset(), "Committing offset...");
                if let Err(error) = self.consumer.store_offset_from_message(message) {
                    // The partition was revoked meanwhile; its new owner skips the event by its id.
                    tracing::warn!(%error, "cannot store the offset");
                }
            }
            drop(batch);
            self.store_position();
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("offsets committed"),
            Err(error) => tracing::debug!(%error, "no offsets committed at shutdown"),
        }
        self.consumer.unsubscribe();
        tracing::info!("sink stopped");
    }

    /// Stores each partition's position as its offset to commit. Every record before the
    /// position was handed to this loop and handled; what else lies below it are transaction
    /// markers and aborted records, which are never handed out. Without this, the offset stored
    /// after the last record would stay below the relay's commit marker and the group would show
    /// a lag of one for good.
    fn store_position(&self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        let mut handled = rdkafka::TopicPartitionList::new();
        for element in positions.elements() {
            if let rdkafka::Offset::Offset(offset) = element.offset() {
                let _ =
                    handled.add_partition_offset(element.topic(), element.partition(), rdkafka::Offset::Offset(offset));
            }
        }
        if handled.count() > 0
            && let Err(error) = self.consumer.store_offsets(&handled)
        {
            tracing::debug!(%error, "cannot store the positions (a partition was revoked meanwhile)");
        }
    }

    /// Waits for a record, then takes those already waiting behind it; `None` on shutdown.
    async fn next_batch(&self, shutdown: &CancellationToken) -> Option<Vec<BorrowedMessage<'_>>> {
        let first = loop {
            let received = tokio::select! {
                received = self.consumer.recv() => received,
                () = tokio::time::sleep(IDLE_POSITION_STORE) => {
                    // Idle: the position may have moved past a commit marker since the last batch.
                    self.store_position();
                    continue;
                }
                () = shutdown.cancelled() => return None,
            };
            match received {
                Ok(message) => break message,
                Err(error) => {
                    tracing::warn!(%error, "consumer error");
                    service_kit::shutdown::sleep_unless_cancelled(shutdown, Duration::from_millis(200)).await;
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                Ok(Ok(message)) => batch.push(message),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "consumer error");
                    break;
                }
                Err(_nothing_waiting) => break,
            }
        }
        Some(batch)
    }

    /// Steps 1 to 3 of the module documentation.
    async fn handle_batch<'m>(&self, messages: &'m [BorrowedMessage<'m>], shutdown: &CancellationToken) -> Handled {
        let mut events = Vec::with_capacity(messages.len());
        for message in messages {
            match self.open(message) {
                Ok(pending) => events.push(pending),
                Err(poison) => {
                    let error = poison.to_string();
                    if self.dead_letters.send(message, poison.reason(), &error, shutdown).await == Handled::Interrupted
                    {
                        return Handled::Interrupted;
                    }
                }
            }
        }
        // Each partition's events in their own DB2 transaction, side by side: one instance scales
        // with the partitions it owns, and each partition's events stay in their order.
        let groups = by_partition(events);
        let handled =
            futures_util::future::join_all(groups.iter().map(|group| self.apply_group(group, shutdown))).await;
        if handled.contains(&Handled::Interrupted) { Handled::Interrupted } else { Handled::Done }
    }

    /// Applies one partition's events in one transaction; if DB2 refuses one of them, event by
    /// event, so that only the refused one goes to the dead-letter topic.
    async fn apply_group(&self, events: &[Pending<'_>], shutdown: &CancellationToken) -> Handled {
        match self.apply_retrying(events, shutdown).await {
            Ok(()) => Handled::Done,
            Err(Stop::Interrupted) => Handled::Interrupted,
            Err(Stop::Refused(error)) if events.len() == 1 => self.reject(&events[0], &error, shutdown).await,
            Err(Stop::Refused(error)) => {
                tracing::warn!(error = %error_chain(&error), "DB2 refused an event of the batch; applying it event by event");
                for event in events.chunks(1) {
                    let handled = match self.apply_retrying(event, shutdown).await {
                        Ok(()) => Handled::Done,
                        Err(Stop::Interrupted) => Handled::Interrupted,
                        Err(Stop::Refused(error)) => self.reject(&event[0], &error, shutdown).await,
                    };
                    if handled == Handled::Interrupted {
                        return Handled::Interrupted;
                    }
                }
                Handled::Done
            }
        }
    }

    /// Decodes a record and opens its consumer span, continuing the producer's trace. Poison is
    /// counted and logged here.
    fn open<'m>(&self, message: &'m BorrowedMessage<'m>) -> Result<Pending<'m>, Poison> {
        let header_event_id = kafka_kit::header_str(message, kafka_kit::EVENT_ID_HEADER);
        let decoded = decode(message.payload(), header_event_id);
        let event_type = decoded.as_ref().map_or("poison", |decoded| decoded.event.event_type.as_str());
        let headers = kafka_kit::headers_map(message);
        let span = service_kit::consumer_span!(
            "sink.apply",
            event_type,
            message.topic(),
            message.partition(),
            message.offset(),
            &headers
        );
        match decoded {
            Ok(decoded) => {
                span.record("messaging.message.id", decoded.event_id.as_str());
                span.record("article.id", decoded.event.data.id);
                span.in_scope(|| {
                    let (event_type, article_id) = (decoded.event.event_type, decoded.event.data.id);
                    tracing::info!("Received event: {event_type} for article ID: {article_id}");
                    tracing::info!(
                        partition = message.partition(),
                        offset = message.offset(),
                        "Event ID: {}",
                        decoded.event_id
                    );
                    tracing::debug!("Checking idempotency for event ID: {}", decoded.event_id);
                });
                self.watch_epoch(message, &decoded.event_id);
                Ok(Pending { message, decoded, span })
            }
            Err(poison) => {
                span.record("otel.status_code", "error");
                span.in_scope(|| {
                    self.metrics.poison.with_label_values(&[poison.reason()]).inc();
                    tracing::error!(
                        partition = message.partition(),
                        offset = message.offset(),
                        reason = poison.reason(),
                        error = %poison,
                        "poison record skipped"
                    );
                });
                Err(poison)
            }
        }
    }

    /// Counts and logs a record whose relay epoch is older than one already seen in its partition.
    fn watch_epoch(&self, message: &BorrowedMessage<'_>, event_id: &str) {
        let Some(epoch) = kafka_kit::relay_epoch(message) else {
            return;
        };
        let newer = self.epochs.lock().map(|mut epochs| epochs.see(message.partition(), epoch)).unwrap_or_default();
        if let Some(newer_epoch) = newer {
            self.metrics.stale_leader_records.inc();
            tracing::error!(
                partition = message.partition(),
                offset = message.offset(),
                event_id,
                epoch,
                newer_epoch,
                "a record of a deposed relay leader landed after its successor's: a possible duplicate (applied at most once)"
            );
        }
    }

    /// Applies `events` in one DB2 transaction and reports each outcome, retrying with capped
    /// backoff while DB2 is unavailable.
    async fn apply_retrying(&self, events: &[Pending<'_>], shutdown: &CancellationToken) -> Result<(), Stop> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.apply(events).await {
                Ok(outcomes) => {
                    for (event, outcome) in events.iter().zip(outcomes) {
                        event.span.in_scope(|| self.report(&event.decoded, outcome));
                    }
                    return Ok(());
                }
                Err(Db2Error::Query(error)) if !is_transient(&error) => return Err(Stop::Refused(error)),
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %error_chain(&error), ?delay, events = events.len(), "DB2 unavailable; retrying");
                    if !service_kit::shutdown::sleep_unless_cancelled(shutdown, delay).await {
                        return Err(Stop::Interrupted);
                    }
                }
            }
        }
    }

    async fn apply(&self, events: &[Pending<'_>]) -> Result<Vec<ApplyOutcome>, Db2Error> {
        let started = Instant::now();
        let mut client = self.pool.get().await?;
        let (form, outcomes) = apply_all(&mut client, events.iter().map(|event| (&event.decoded, &event.span))).await?;
        self.metrics.apply_transactions.with_label_values(&[form.as_str()]).inc();
        let per_event = started.elapsed().as_secs_f64() / events.len() as f64;
        for event in events {
            self.metrics
                .apply_duration
                .with_label_values(&[event.decoded.event.event_type.as_str()])
                .observe(per_event);
        }
        Ok(outcomes)
    }

    /// An event DB2 refuses for good: logged, counted, and copied to the dead-letter topic.
    async fn reject(
        &self,
        event: &Pending<'_>,
        error: &tokio_postgres::Error,
        shutdown: &CancellationToken,
    ) -> Handled {
        event.span.record("otel.status_code", "error");
        event.span.in_scope(|| {
            tracing::error!(event_id = %event.decoded.event_id, error = %error_chain(error), "DB2 refuses this event; skipping it");
        });
        self.metrics.poison.with_label_values(&["rejected_by_db"]).inc();
        self.dead_letters.send(event.message, "rejected_by_db", &error_chain(error), shutdown).await
    }

    fn report(&self, decoded: &DecodedEvent, outcome: ApplyOutcome) {
        let (event_type, article_id, event_id) = (decoded.event.event_type, decoded.event.data.id, &decoded.event_id);
        match outcome {
            ApplyOutcome::Applied => {
                self.metrics.applied.with_label_values(&[event_type.as_str()]).inc();
                let latency = (chrono::Utc::now() - decoded.event.timestamp).to_std().unwrap_or_default();
                self.metrics.end_to_end_latency.observe(latency.as_secs_f64());
                tracing::info!("Successfully processed event: {event_type} for article {article_id}");
            }
            ApplyOutcome::AlreadyProcessed => {
                self.metrics.duplicates.inc();
                tracing::warn!("Event already processed: {event_id}. Skipping...");
                tracing::info!("Successfully processed event (already done): {event_type} for article {article_id}");
            }
            ApplyOutcome::Stale => {
                self.metrics.stale.inc();
                tracing::info!(
                    version = decoded.event.data.version,
                    "Event {event_id} is older than the replica's state for article {article_id}; recorded, no change"
                );
            }
        }
    }
}

/// Splits `events` by partition, keeping each partition's order.
fn by_partition(events: Vec<Pending<'_>>) -> Vec<Vec<Pending<'_>>> {
    let mut groups: std::collections::BTreeMap<i32, Vec<Pending<'_>>> = Default::default();
    for event in events {
        groups.entry(event.message.partition()).or_default().push(event);
    }
    groups.into_values().collect()
}
