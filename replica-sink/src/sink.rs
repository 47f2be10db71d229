//! The consume loop, in two parts. One task **receives**: it decodes each record as it comes (a
//! record that can never be applied — poison — is logged and counted there) and hands it to its
//! partition's **lane**. Each lane is a task of its own that applies its partition's records in
//! their order, over and over:
//!
//! 1. take the records waiting in the lane (up to [`LANE_BATCH`]);
//! 2. copy the poison among them to the dead-letter topic, and apply the others in one DB2
//!    transaction, retrying with capped backoff while DB2 is unavailable, without moving on;
//! 3. if DB2 refuses one event's data, apply them again event by event, so that only the refused
//!    event goes to the dead-letter topic;
//! 4. store their offsets, for the next auto-commit.
//!
//! Why lanes: one fetch answer holds a run of records per partition, so a batch taken from the
//! consumer's queue spans only two or three of the six partitions; applied batch after batch,
//! each waited for the slowest of its transactions, and DB2 idled while the sink decoded. Lanes
//! run side by side (as many at once as the DB2 pool has connections), a partition's transaction
//! never waits for another partition's, and receiving goes on while DB2 applies.
//!
//! The receiving task alone stores positions past the last record (see `store_positions`), and
//! only for a partition none of whose records is still in its lane: a lane's count of records in
//! hand is raised before a record is handed over and lowered only once its offset is stored.
//!
//! How many records are in hand at once, across lanes, is bounded by their estimated memory
//! (`SINK_IN_HAND_MIB`, see `in_hand`): receiving waits when it is spent.
//!
//! Poison never stops the pipeline, and no offset moves before its event's effect is committed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::message::{BorrowedMessage, Message as _, OwnedMessage};
use service_kit::backoff::Backoff;
use service_kit::db::{error_chain, is_transient};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use crate::apply::{ApplyOutcome, apply_all};
use crate::dead_letter::{DeadLetters, Handled};
use crate::group::SinkConsumer;
use crate::in_hand::InHandBudget;
use crate::metrics::SinkMetrics;
use events::decode::{DecodedEvent, Poison, decode};

/// Most records a lane applies in one DB2 transaction.
pub const LANE_BATCH: usize = 1000;
/// Most records waiting in one lane; when a lane is full, receiving waits (the consumer's own
/// queue is bounded too, see `kafka_kit::consumer_config`).
const LANE_QUEUE: usize = 1000;
/// How often the receiving task stores the positions of partitions with nothing in hand.
const POSITION_STORE_INTERVAL: Duration = Duration::from_millis(500);

/// A record as received: detached from the consumer's buffer, decoded with its consumer span, or
/// poison, with its share of the in-hand budget (given back when the record is dropped, after its
/// offset is stored).
struct Received {
    message: OwnedMessage,
    opened: Result<(DecodedEvent, tracing::Span), Poison>,
    _budget: OwnedSemaphorePermit,
}

/// A decoded record on its way to DB2, with its consumer span.
struct Pending<'m> {
    message: &'m OwnedMessage,
    decoded: &'m DecodedEvent,
    span: &'m tracing::Span,
}

/// Why a DB2 transaction of the sink (applying events, pruning) failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Db2Error {
    #[error("DB2 unavailable")]
    Unavailable(#[from] deadpool_postgres::PoolError),
    #[error("DB2 query failed")]
    Query(#[from] tokio_postgres::Error),
}

/// Why [`Applier::apply_retrying`] gave up.
enum Stop {
    /// DB2 refuses the data: the same statement would fail again.
    Refused(tokio_postgres::Error),
    Interrupted,
}

pub(crate) struct Sink {
    applier: Arc<Applier>,
    /// The relay epochs seen per partition: a record of a deposed relay leader that landed after
    /// its successor's is said and counted (the version guard keeps it from changing DB2).
    epochs: std::sync::Mutex<kafka_kit::EpochWatch>,
    budget: InHandBudget,
}

/// What the lanes share: applies records to DB2 and stores their offsets.
struct Applier {
    pool: Pool,
    consumer: Arc<SinkConsumer>,
    metrics: SinkMetrics,
    dead_letters: DeadLetters,
}

/// One partition's lane: its queue, and how many of its records are handed over but not yet
/// done with (applied or dead-lettered, and their offsets stored).
struct Lane {
    queue: mpsc::Sender<Received>,
    in_hand: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Lane {
    fn start(applier: Arc<Applier>, shutdown: CancellationToken) -> Self {
        let (queue, records) = mpsc::channel(LANE_QUEUE);
        let in_hand = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(applier.run_lane(records, in_hand.clone(), shutdown));
        Self { queue, in_hand, task }
    }
}

impl Sink {
    pub(crate) fn new(
        pool: Pool,
        consumer: Arc<SinkConsumer>,
        metrics: SinkMetrics,
        dead_letters: DeadLetters,
        budget: InHandBudget,
    ) -> Self {
        let applier = Arc::new(Applier { pool, consumer, metrics, dead_letters });
        Self { applier, epochs: std::sync::Mutex::default(), budget }
    }

    fn consumer(&self) -> &SinkConsumer {
        &self.applier.consumer
    }

    /// Receives until `shutdown`, handing each record to its partition's lane; then lets every
    /// lane finish the transaction it is in, commits the stored offsets and leaves the group.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut lanes: BTreeMap<i32, Lane> = BTreeMap::new();
        let mut position_store = tokio::time::interval(POSITION_STORE_INTERVAL);
        position_store.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let received = tokio::select! {
                received = self.consumer().recv() => received,
                _ = position_store.tick() => {
                    self.store_positions(&lanes);
                    self.applier.metrics.in_hand_bytes.set(i64::from(self.budget.held_kib()) * 1024);
                    continue;
                }
                () = shutdown.cancelled() => break,
            };
            let borrowed = match received {
                Ok(borrowed) => borrowed,
                Err(error) => {
                    tracing::warn!(%error, "consumer error");
                    if !service_kit::shutdown::sleep_unless_cancelled(&shutdown, Duration::from_millis(200)).await {
                        break;
                    }
                    continue;
                }
            };
            let partition = borrowed.partition();
            let (opened, message) = (self.decode(&borrowed), borrowed.detach());
            drop(borrowed);
            let reserved = tokio::select! {
                permit = self.budget.reserve(&message) => Some(permit),
                () = shutdown.cancelled() => None,
            };
            let Some(budget) = reserved else {
                break;
            };
            let received = Received { message, opened, _budget: budget };
            let lane = lanes.entry(partition).or_insert_with(|| Lane::start(self.applier.clone(), shutdown.clone()));
            lane.in_hand.fetch_add(1, Ordering::AcqRel);
            let handed = tokio::select! {
                sent = lane.queue.send(received) => sent.is_ok(),
                () = shutdown.cancelled() => false,
            };
            if !handed {
                break;
            }
        }
        // Every lane stops after the transaction it is in; what is still queued is not stored,
        // so it is received again (by this group's next owner of the partition).
        for lane in lanes.into_values() {
            drop(lane.queue);
            if let Err(error) = lane.task.await {
                tracing::error!(%error, "a lane of the sink failed");
            }
        }
        match self.consumer().commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("offsets committed"),
            Err(error) => tracing::debug!(%error, "no offsets committed at shutdown"),
        }
        self.consumer().unsubscribe();
        tracing::info!("sink stopped");
    }

    /// Stores the position of each partition with nothing in hand as its offset to commit. Every
    /// record of it before the position was received and is done with; what else lies below it are
    /// transaction markers and aborted records, which are never handed out. Without this, the
    /// offset stored after the last record would stay below the relay's commit marker and the
    /// group would show a lag of one for good.
    fn store_positions(&self, lanes: &BTreeMap<i32, Lane>) {
        let Ok(positions) = self.consumer().position() else {
            return;
        };
        let mut handled = rdkafka::TopicPartitionList::new();
        for element in positions.elements() {
            let idle = lanes.get(&element.partition()).is_none_or(|lane| lane.in_hand.load(Ordering::Acquire) == 0);
            if idle && let rdkafka::Offset::Offset(offset) = element.offset() {
                let _ =
                    handled.add_partition_offset(element.topic(), element.partition(), rdkafka::Offset::Offset(offset));
            }
        }
        if handled.count() > 0
            && let Err(error) = self.consumer().store_offsets(&handled)
        {
            tracing::debug!(%error, "cannot store the positions (a partition was revoked meanwhile)");
        }
    }

    /// Decodes a record and opens its consumer span, continuing the producer's trace. Poison is
    /// counted and logged here.
    fn decode(&self, message: &BorrowedMessage<'_>) -> Result<(DecodedEvent, tracing::Span), Poison> {
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
                Ok((decoded, span))
            }
            Err(poison) => {
                span.record("otel.status_code", "error");
                span.in_scope(|| {
                    self.applier.metrics.poison.with_label_values(&[poison.reason()]).inc();
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
            self.applier.metrics.stale_leader_records.inc();
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
}

impl Applier {
    /// A lane's loop (see the module documentation): until `shutdown`, or until the receiving
    /// task closes the queue.
    async fn run_lane(
        self: Arc<Self>,
        mut records: mpsc::Receiver<Received>,
        in_hand: Arc<AtomicUsize>,
        shutdown: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(LANE_BATCH);
        loop {
            let taken = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                taken = records.recv_many(&mut batch, LANE_BATCH) => taken,
            };
            if taken == 0 || self.handle_batch(&batch, &shutdown).await == Handled::Interrupted {
                return;
            }
            // The batch is one partition's records in their order, all done with: the last one's
            // offset covers them all.
            if let Some(Received { message, .. }) = batch.last() {
                tracing::debug!(partition = message.partition(), offset = message.offset(), "Committing offset...");
                if let Err(error) = self.consumer.store_offset(message.topic(), message.partition(), message.offset()) {
                    // The partition was revoked meanwhile; its new owner skips the event by its id.
                    tracing::warn!(%error, "cannot store the offset");
                }
            }
            in_hand.fetch_sub(batch.len(), Ordering::AcqRel);
            batch.clear();
        }
    }

    /// Steps 2 and 3 of the module documentation, for one lane's batch.
    async fn handle_batch(&self, batch: &[Received], shutdown: &CancellationToken) -> Handled {
        let mut events = Vec::with_capacity(batch.len());
        for Received { message, opened, .. } in batch {
            match opened {
                Ok((decoded, span)) => events.push(Pending { message, decoded, span }),
                Err(poison) => {
                    let error = poison.to_string();
                    if self.dead_letters.send(message, poison.reason(), &error, shutdown).await == Handled::Interrupted
                    {
                        return Handled::Interrupted;
                    }
                }
            }
        }
        if events.is_empty() { Handled::Done } else { self.apply_group(&events, shutdown).await }
    }

    /// Applies a lane's events in one transaction; if DB2 refuses one of them, event by
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

    /// Applies `events` in one DB2 transaction and reports each outcome, retrying with capped
    /// backoff while DB2 is unavailable.
    async fn apply_retrying(&self, events: &[Pending<'_>], shutdown: &CancellationToken) -> Result<(), Stop> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.apply(events).await {
                Ok(outcomes) => {
                    for (event, outcome) in events.iter().zip(outcomes) {
                        event.span.in_scope(|| self.report(event.decoded, outcome));
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
        let (form, outcomes) = apply_all(&mut client, events.iter().map(|event| (event.decoded, event.span))).await?;
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
