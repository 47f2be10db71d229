//! The relay loop, publishing each outbox row to the topic exactly once. Each job has its own
//! module — [`crate::leadership`], [`crate::readback`], [`crate::publish`], [`crate::settle`]; this
//! one puts them in order and decides what an error means.
//!
//! Only the leader publishes (see [`crate::leadership`]). A new leader first starts a producer
//! session under this outbox's `transactional.id`, which makes the broker fence the previous
//! leader's producer; then, before publishing anything and again after any error, it
//! **reconciles**: it reads every partition back from its checkpoint to its end and settles the
//! outbox rows whose `event_id` it finds there, without republishing them. Then it loops: read the
//! oldest rows in id order, send them (each to its row's topic, keyed by the row's aggregate id)
//! in one Kafka transaction per shard of partitions the batch touches (see [`SHARDS`]), wait for
//! every acknowledgement, commit those transactions, and **settle** — delete the acknowledged rows and move
//! each partition's checkpoint past them, in one DB1 transaction fenced by the leader epoch. The
//! rounds overlap (see `Relay::publish_batch`): the next batch is read while one commits, and a
//! committed batch is settled while the next is produced; the transactions themselves never do.
//!
//! A row is therefore published again only if reconciliation did not find it on the topic, after
//! the previous session's records can no longer become visible: the broker refuses a fenced
//! producer, and where it might not (a broker without transactional fencing), a new leader first
//! waits out the bound its predecessor declared — unless that one stopped cleanly. Rows the broker
//! refuses for what they are go to the dead letters instead of blocking the outbox. The
//! assumptions are spelled out in docs/guarantees.md.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use deadpool_postgres::Pool;
use outbox::OutboxRow;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer as _, PurgeConfig};
use service_kit::backoff::Backoff;
use service_kit::config::DatabaseUrl;
use service_kit::db::error_chain;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::RelayError;
use crate::leadership::{LEASE, Leadership, Lease};
use crate::metrics::RelayMetrics;
use crate::publish::{Acknowledgements, ProducerSettings, refuses_record};
use crate::readback::{Finding, ReadBack, Reader};
use crate::settle::{self, Published, Settled};

/// How long a batch still in flight may take to finish once shutdown is requested; after that
/// it is abandoned (its transaction never commits, its rows stay in the outbox).
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

/// Why a leader stopped leading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Shutdown with nothing in flight: the successor may publish at once.
    Clean,
    /// Anything else (lock or lease lost, fenced, a batch abandoned): the successor waits.
    Unclean,
}

/// Settings of the relay loop.
#[derive(Debug, Clone)]
pub(crate) struct RelaySettings {
    pub(crate) producer: ProducerSettings,
    /// The topic of rows that name none.
    pub(crate) topic: String,
    /// CloudEvents attributes to stamp on every record, when on.
    pub(crate) cloudevents: Option<crate::cloudevents::CloudEvents>,
    /// How the relay creates a topic that is missing.
    pub(crate) topic_spec: crate::topic::TopicSpec,
    /// How the read-back reads the topic (as its consumers do).
    pub(crate) isolation: kafka_kit::Isolation,
    pub(crate) batch_size: i64,
    pub(crate) poll_interval: Duration,
    /// Names this relay in `relay_leader.holder` and the logs.
    pub(crate) instance: String,
}

impl RelaySettings {
    /// The bound this relay declares as leader: once its lease lapsed, nothing it handed to its
    /// producer can land later than this (the lease, then librdkafka's delivery timeout, then
    /// the time for requests already on the wire).
    fn delivery_bound(&self) -> Duration {
        LEASE + self.producer.delivery_timeout + SESSION_END_GRACE
    }
}

/// How many transactions one round runs side by side. Partition `p` belongs to shard
/// `p % SHARDS`, and each shard has producers of its own: a round opens one transaction per shard
/// its batch touches, on that shard's partitions only, and commits them all before the next round
/// sends anything. librdkafka sends one produce request per partition, and a broker answers the
/// requests of one connection one at a time, each transaction's first request to a partition
/// verified with the transaction coordinator first (Apache Kafka's defence against hanging
/// transactions, for clients of transactions V1 such as librdkafka): a single transaction over
/// six partitions queues six verified round trips, three transactions on their own connections
/// queue two each, side by side (docs/performance.md). Each partition still has one writer at a
/// time and its records are committed in the order of the rounds, so per-aggregate order and the
/// checkpoints hold exactly as with one transaction per round.
///
/// Fixed, not configured: every relay of an outbox must register the same transactional ids, so
/// that a new leader fences each of its predecessor's producers.
pub const SHARDS: usize = 3;

/// How many transactional producers each shard alternates between. The broker answers a producer
/// that starts its next transaction while its last commit is still being completed (the markers
/// written) with `CONCURRENT_TRANSACTIONS`, and librdkafka retries after a fixed 20 ms; rounds
/// following one another back to back hit that every other time (docs/performance.md). With two
/// lanes, a round's producer last committed a whole round earlier.
pub const LANES: usize = 2;

/// The transactional id of producer `index` (shard × [`LANES`] + lane): the outbox's own for
/// producer 0, then `<id>.<index>`, so that a relay of an older version (one shard of one or two
/// lanes) and this one fence each other.
fn producer_transactional_id(transactional_id: &str, index: usize) -> String {
    if index == 0 { transactional_id.to_owned() } else { format!("{transactional_id}.{index}") }
}

/// The shard of `partition`.
fn shard_of(partition: i32) -> usize {
    usize::try_from(partition).unwrap_or(0) % SHARDS
}

/// The producers of one shard, and the lane of its next transaction.
struct Shard {
    producers: Vec<FutureProducer>,
    next: usize,
}

impl Shard {
    /// The producer of the shard's next transaction.
    fn producer(&self) -> &FutureProducer {
        &self.producers[self.next]
    }
}

/// The producer session of one leadership: its shards' producers and the outbox's transactional id.
struct Session {
    shards: Vec<Shard>,
    transactional_id: String,
}

impl Session {
    fn producers(&self) -> impl Iterator<Item = &FutureProducer> {
        self.shards.iter().flat_map(|shard| &shard.producers)
    }
}

/// The producers of a session to come, connected to the broker but not registered: holding them
/// fences nobody (see [`crate::publish::connect_producer`]); and what the default topic was found
/// to be (see `Relay::prepare_topic`).
struct Connected {
    transactional_id: String,
    producers: Vec<FutureProducer>,
    default_topic: Option<crate::topic::Ensured>,
    /// The consumer of the takeover's read-back.
    reader: Reader,
}

/// Connected in the background while this relay stands by, so that taking over costs only the
/// registration.
type ConnectingAhead = tokio::task::JoinHandle<Result<Connected, RelayError>>;

/// Awaits `connecting`, one part of what a standby connects ahead, and logs when it was ready
/// (a takeover waits for the slowest part).
async fn timed<T>(part: &'static str, started: Instant, connecting: impl std::future::Future<Output = T>) -> T {
    let connected = connecting.await;
    tracing::debug!(part, elapsed = ?started.elapsed(), "connected ahead");
    connected
}

/// A session's producers, connected side by side.
async fn connect_producers(
    settings: &ProducerSettings,
    transactional_id: &str,
) -> Result<Vec<FutureProducer>, RelayError> {
    let connecting = (0..SHARDS * LANES).map(|index| {
        let (settings, id) = (settings.clone(), producer_transactional_id(transactional_id, index));
        tokio::task::spawn_blocking(move || crate::publish::connect_producer(&settings, &id))
    });
    let mut producers = Vec::with_capacity(SHARDS * LANES);
    for connected in futures_util::future::join_all(connecting).await {
        producers.push(connected?.map_err(RelayError::Session)?);
    }
    Ok(producers)
}

/// A new producer session: its producers (connected ahead, or now) register side by side, and
/// the broker fences every earlier producer of each id.
async fn register_session(
    settings: ProducerSettings,
    transactional_id: String,
    ahead: Option<Vec<FutureProducer>>,
) -> Result<Session, RelayError> {
    let started = Instant::now();
    let connected_ahead = ahead.is_some();
    let producers = match ahead {
        Some(producers) => producers,
        None => connect_producers(&settings, &transactional_id).await?,
    };
    let registrations = producers.iter().map(|producer| {
        let (settings, producer) = (settings.clone(), producer.clone());
        tokio::task::spawn_blocking(move || crate::publish::register(&settings, &producer))
    });
    for registered in futures_util::future::join_all(registrations).await {
        registered?.map_err(RelayError::Session)?;
    }
    let shards = producers.chunks(LANES).map(|lanes| Shard { producers: lanes.to_vec(), next: 0 }).collect();
    tracing::info!(%transactional_id, shards = SHARDS, lanes = LANES, connected_ahead, elapsed = ?started.elapsed(), "producer session started; earlier producers of this outbox are fenced");
    Ok(Session { shards, transactional_id })
}

/// Creates `topic` if it is missing and checks that its record size limit agrees with the
/// producer's (see [`crate::topic`], [`crate::limits`]); never fails.
async fn examine_topic(settings: &RelaySettings, topic: &str) -> Option<crate::topic::Ensured> {
    let producer = &settings.producer;
    // Both ask the broker, side by side; a topic just created is asked its limit again.
    let (ensured, limit) = tokio::join!(
        crate::topic::ensure(&producer.bootstrap_servers, topic, settings.topic_spec),
        crate::limits::topic_limit(&producer.bootstrap_servers, topic)
    );
    let limit = match ensured {
        Some(crate::topic::Ensured::Created) => crate::limits::topic_limit(&producer.bootstrap_servers, topic).await,
        _ => limit,
    };
    crate::limits::report(topic, limit, producer.max_record_bytes);
    ensured
}

pub(crate) struct Relay {
    pool: Pool,
    database_url: DatabaseUrl,
    settings: RelaySettings,
    metrics: RelayMetrics,
    wake: Arc<Notify>,
    session: Option<Session>,
    /// The next session's producers, connected while standing by.
    connecting_ahead: Option<ConnectingAhead>,
    /// Outbox ids whose records the broker refused inside a batch (a refusal covers a whole
    /// produce request, so some may be innocent): the next rounds publish the rows before the
    /// first suspect as a batch, then that suspect alone, which settles or dead-letters it.
    suspects: std::collections::BTreeSet<i64>,
    /// Reads the topics' partition counts (metadata only), to warn when one changes.
    metadata: kafka_kit::probe::BrokerProbe,
    /// Per topic published to, the partition count last seen.
    partitions: std::collections::BTreeMap<String, usize>,
    /// The topics this producer session has created or checked (see `prepare_topic`).
    prepared: std::collections::HashSet<String>,
    /// The next batch, being read from DB1 while the current one commits.
    read_ahead: Option<tokio::task::JoinHandle<Result<Vec<OutboxRow>, RelayError>>>,
    /// The last committed batch, being settled while the next one is produced.
    settling: Option<Settling>,
}

/// A committed batch being settled in the background.
struct Settling {
    /// Its outbox rows: in flight until settled, so no read may return them.
    ids: Vec<i64>,
    handle: tokio::task::JoinHandle<Result<(), RelayError>>,
}

impl Relay {
    pub(crate) fn new(
        pool: Pool,
        database_url: DatabaseUrl,
        settings: RelaySettings,
        metrics: RelayMetrics,
        metadata: kafka_kit::probe::BrokerProbe,
    ) -> Self {
        Self {
            pool,
            database_url,
            settings,
            metrics,
            wake: Arc::new(Notify::new()),
            session: None,
            connecting_ahead: None,
            suspects: Default::default(),
            metadata,
            partitions: Default::default(),
            prepared: Default::default(),
            read_ahead: None,
            settling: None,
        }
    }

    /// The handle the NOTIFY listener wakes the relay through.
    pub(crate) fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Stands by, leads while holding the lock, stands by again after losing it; until `shutdown`.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let bound = self.settings.delivery_bound();
        while !shutdown.is_cancelled() {
            self.metrics.leader.set(0);
            if self.connecting_ahead.is_none() {
                self.connecting_ahead = Some(self.connect_ahead());
            }
            let Some(leadership) =
                Leadership::acquire(&self.database_url, &self.settings.instance, bound, &shutdown).await
            else {
                break;
            };
            let epoch = leadership.epoch.epoch;
            self.metrics.leader.set(1);
            self.metrics.epoch.set(epoch);
            let mut ended = self.lead(&leadership, &shutdown).await;
            // Whatever is still queued or in flight must not go out once we stop leading.
            self.end_session();
            self.drop_read_ahead();
            if let Err(error) = self.finish_settling().await {
                tracing::warn!(error = %error_chain(&error), "the last batch's settle failed; the next leader reconciles it");
                ended = Ended::Unclean;
            }
            if ended == Ended::Clean {
                self.record_clean_stop(epoch).await;
            } else if !shutdown.is_cancelled() {
                tracing::warn!(epoch, "stepped down as leader; standing by");
            }
        }
        self.metrics.leader.set(0);
        tracing::info!("relay stopped");
    }

    /// Publishes while `leadership` holds; returns when it is lost, fenced, or on shutdown.
    async fn lead(&mut self, leadership: &Leadership, shutdown: &CancellationToken) -> Ended {
        let epoch = leadership.epoch.epoch;
        let lost = leadership.lost();
        let wait = crate::leadership::takeover_wait(&leadership.epoch, self.settings.delivery_bound());
        self.metrics.takeover_wait.set(wait.unwrap_or_default().as_secs_f64());
        if let Some(wait) = wait {
            tracing::info!(
                epoch,
                ?wait,
                "the previous leader did not stop cleanly: waiting out its declared bound before reading back"
            );
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                // The predecessor's bound is not over: the next leader must still wait it out.
                () = lost.cancelled() => return Ended::Unclean,
                () = shutdown.cancelled() => return Ended::Unclean,
            }
        }
        // Nothing of the predecessor can land any more: the first read-back need not wait for
        // this leader's producers to fence it.
        let mut clean_handover = wait.is_none();
        // Clean only if the last round ended well: a failed one may have left records on the wire.
        let mut ended = Ended::Clean;
        let mut reconciled = false;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut backlog_refreshed = Instant::now() - BACKLOG_REFRESH;
        while !shutdown.is_cancelled() && !lost.is_cancelled() {
            let shutdown_grace = async {
                shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            let result = tokio::select! {
                result = self.round(leadership, reconciled, clean_handover) => result,
                () = lost.cancelled() => {
                    tracing::error!(epoch, "leader lock lost; stopping production at once");
                    return Ended::Unclean;
                }
                () = shutdown_grace => {
                    tracing::warn!("shutdown grace period over; abandoning the batch in flight (the next leader reconciles it)");
                    return Ended::Unclean;
                }
            };
            clean_handover = false;
            if backlog_refreshed.elapsed() >= BACKLOG_REFRESH {
                self.refresh_backlog().await;
                self.watch_partitions().await;
                backlog_refreshed = Instant::now();
            }
            ended = if result.is_ok() { Ended::Clean } else { Ended::Unclean };
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
                    self.metrics.fenced.inc();
                    tracing::error!(epoch, error = %error_chain(&error), "fenced: a newer leader took over; standing down");
                    return Ended::Unclean;
                }
                Err(RelayError::LeaseLapsed) => {
                    self.metrics.lease_lapsed.inc();
                    tracing::error!(
                        epoch,
                        "the lease lapsed (was this process paused?); nothing more is handed to the producer; standing down"
                    );
                    return Ended::Unclean;
                }
                Err(error) => {
                    reconciled = false;
                    // What was read ahead may be stale, and the read-back must see the last settle.
                    self.drop_read_ahead();
                    if let Err(settle_error) = self.finish_settling().await {
                        tracing::debug!(error = %error_chain(&settle_error), "the settle in flight failed too");
                    }
                    let mut delay = backoff.next_delay();
                    tracing::warn!(error = %error_chain(&error), ?delay, "relay round failed; rows stay in the outbox, reconciling before the next round");
                    if self.session_ended(&error) {
                        self.end_session();
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
        if lost.is_cancelled() { Ended::Unclean } else { ended }
    }

    /// Starts a producer session if there is none, reconciles if needed, then publishes one batch.
    /// The read-back follows the fencing, so that nothing of a deposed producer can land after
    /// it — except after a `clean_handover`, where it runs while the producers register.
    async fn round(
        &mut self,
        leadership: &Leadership,
        reconciled: bool,
        clean_handover: bool,
    ) -> Result<Outcome, RelayError> {
        let epoch = leadership.epoch.epoch;
        if self.session.is_none() {
            let transactional_id = leadership.epoch.transactional_id.clone();
            let ahead = match self.connecting_ahead.take() {
                Some(connecting) => {
                    let answer = connecting.await;
                    self.metrics.standby_ready.set(0);
                    match answer {
                        Ok(Ok(connected)) if connected.transactional_id == transactional_id => Some(connected),
                        answer => {
                            let answer = answer.map(|connected| connected.map(|connected| connected.transactional_id));
                            tracing::debug!(?answer, "nothing connected ahead for this session; connecting afresh");
                            None
                        }
                    }
                }
                None => None,
            };
            let (producers, default_topic, reader) = match ahead {
                Some(Connected { producers, default_topic, reader, .. }) => {
                    (Some(producers), Some(default_topic), Some(reader))
                }
                None => (None, None, None),
            };
            let registering =
                tokio::spawn(register_session(self.settings.producer.clone(), transactional_id, producers));
            if clean_handover && !reconciled {
                self.prepare_session_topics(default_topic).await;
                let read_back = self.reconcile(epoch, reader).await;
                self.session = Some(registering.await??);
                read_back?;
            } else {
                self.session = Some(registering.await??);
                self.prepare_session_topics(default_topic).await;
                if !reconciled {
                    self.reconcile(epoch, reader).await?;
                }
            }
        } else if !reconciled {
            self.reconcile(epoch, None).await?;
        }
        self.publish_batch(epoch, leadership.lease()).await
    }

    /// Connects the next session's producers and examines the default topic in the background
    /// (see [`Connected`]); a relay that cannot read its transactional id yet does both when it
    /// leads.
    fn connect_ahead(&self) -> ConnectingAhead {
        let (pool, settings, metrics) = (self.pool.clone(), self.settings.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let transactional_id = settle::transactional_id(&pool.get().await?).await?;
            let servers = settings.producer.bootstrap_servers.clone();
            let started = Instant::now();
            let (producers, default_topic, reader) = tokio::join!(
                timed("producers", started, connect_producers(&settings.producer, &transactional_id)),
                timed("topic", started, examine_topic(&settings, &settings.topic)),
                timed("reader", started, Reader::connected(servers, settings.isolation, settings.topic.clone()))
            );
            let producers = producers?;
            metrics.standby_ready.set(1);
            Ok(Connected { transactional_id, producers, default_topic, reader })
        })
    }

    /// A new session checks its topics again, the default one first (unless it was examined
    /// while this relay stood by: `examined_ahead`).
    async fn prepare_session_topics(&mut self, examined_ahead: Option<Option<crate::topic::Ensured>>) {
        self.prepared.clear();
        let topic = self.settings.topic.clone();
        match examined_ahead {
            Some(ensured) => {
                self.prepared.insert(topic.clone());
                self.saw_examined(&topic, ensured);
            }
            None => self.prepare_topic(&topic).await,
        }
    }

    /// Before a session's first record to `topic`: creates it if it is missing (before anything
    /// can auto-create it with the broker's defaults), and checks that its record size limit
    /// agrees with the producer's. Once per topic and session; never fails the round.
    async fn prepare_topic(&mut self, topic: &str) {
        if !self.prepared.insert(topic.to_owned()) {
            return;
        }
        let ensured = examine_topic(&self.settings, topic).await;
        self.saw_examined(topic, ensured);
    }

    /// Records the partition count [`examine_topic`] found on an existing topic.
    fn saw_examined(&mut self, topic: &str, ensured: Option<crate::topic::Ensured>) {
        if let Some(crate::topic::Ensured::Existed { partitions }) = ensured {
            self.saw_partitions(topic, partitions);
        }
    }

    /// Drops the producer session, purging what it still holds. Its open transaction, if any, is
    /// not aborted from here: the next session's registration under the same transactional id
    /// aborts it at the broker (an abort from a failed session would first ask the broker for an
    /// epoch bump, which not every broker implements), and nothing of it becomes visible.
    fn end_session(&mut self) {
        if let Some(session) = self.session.take() {
            for producer in session.producers() {
                producer.purge(PurgeConfig::default().queue().inflight());
            }
            tracing::debug!(transactional_id = %session.transactional_id, "producer session ended");
            // Each producer's drop joins its polling thread (up to its 100 ms poll): not on the
            // way of the successor's takeover, which waits for this relay's lock.
            tokio::task::spawn_blocking(move || drop(session));
        }
    }

    /// Reads back every topic the relay may have published to — the default one, those with a
    /// checkpoint and those a waiting row names — and settles the rows found there.
    async fn reconcile(&self, epoch: i64, reader: Option<Reader>) -> Result<u64, RelayError> {
        let mut reader = reader
            .unwrap_or_else(|| Reader::new(self.settings.producer.bootstrap_servers.clone(), self.settings.isolation));
        let mut topics = std::collections::BTreeSet::from([self.settings.topic.clone()]);
        {
            let client = self.pool.get().await?;
            topics.extend(outbox::checkpointed_topics(&client).await?);
            topics.extend(outbox::pending_topics(&client, &self.settings.topic).await?);
        }
        tracing::debug!(?topics, "topics to read back");
        let mut settled = 0;
        for topic in topics {
            settled += self.reconcile_topic(epoch, &topic, &mut reader).await?;
        }
        Ok(settled)
    }

    /// Reads `topic` back from its checkpoints and settles the rows found there.
    async fn reconcile_topic(&self, epoch: i64, topic: &str, reader: &mut Reader) -> Result<u64, RelayError> {
        let started = Instant::now();
        let checkpoints = settle::load(&self.pool.get().await?, topic).await?;
        let read_back = reader.read_back(topic.to_owned(), checkpoints.clone()).await?;
        crate::failpoint::hit(crate::failpoint::IN_READ_BACK);
        self.report_read_back(topic, &read_back);
        let ends = std::collections::BTreeMap::from([(topic.to_owned(), read_back.ends.clone())]);
        let settled =
            settle::settle(&mut self.pool.get().await?, epoch, Published::Events(&read_back.found), &ends).await?;
        self.metrics.reconciled.inc_by(settled.deleted);
        tracing::info!(
            epoch,
            topic,
            records_read = read_back.records,
            rows_settled = settled.deleted,
            from = ?checkpoints,
            to = ?read_back.ends,
            elapsed = ?started.elapsed(),
            "reconciled with the topic; rows found there are settled without being published again"
        );
        Ok(settled.deleted)
    }

    /// Raises the alarms of a read-back of `topic`: lost or replaced logs, records gone by
    /// retention, records of a deposed leader.
    fn report_read_back(&self, topic: &str, read_back: &ReadBack) {
        for &(partition, finding) in &read_back.findings {
            match finding {
                Finding::AheadOfLog { checkpoint, end } => {
                    self.metrics.checkpoint_ahead.inc();
                    tracing::error!(
                        topic,
                        partition,
                        checkpoint,
                        log_end = end,
                        "checkpoint ahead of the log: the log was lost (topic recreated, broker data wiped or unclean leader election); the events settled below the checkpoint are gone from it. Reading the partition as it is now and publishing every row not on it"
                    );
                }
                Finding::Replaced { offset, expected, found } => {
                    self.metrics.log_replaced.inc();
                    tracing::error!(topic, partition, offset, %expected, found = ?found, "the last settled record is not at its offset: the log was replaced; the events settled before are gone from it. Reading the partition as it is now and publishing every row not on it");
                }
                Finding::Truncated { checkpoint, start } => {
                    self.metrics.truncated.inc();
                    tracing::warn!(
                        topic,
                        partition,
                        checkpoint,
                        log_start = start,
                        "records below the log's start were removed (retention) before they were settled: outbox rows of theirs, if any, are taken for unpublished and published again"
                    );
                }
            }
        }
        for stale in &read_back.stale {
            self.metrics.stale_leader_records.inc();
            tracing::error!(topic, partition = stale.partition, offset = stale.offset, event_id = ?stale.event_id, epoch = stale.epoch, newer_epoch = stale.newer_epoch, "a record of a deposed leader landed after its successor's: a possible duplicate");
        }
    }

    /// Publishes up to `batch_size` of the oldest rows in one transaction, and settles those
    /// acknowledged once it committed — in the background, while the next round runs.
    ///
    /// The round is pipelined: while this batch's transaction commits, the next batch is read
    /// from DB1 (leaving out the rows in flight), and this batch is settled while the next one is
    /// produced. Kafka transactions stay one after the other, so a batch's records are committed
    /// before the next batch's are sent: per-article order holds in the log. A round that fails
    /// drops what was read ahead and waits for the settle in flight before reconciling.
    async fn publish_batch(&mut self, epoch: i64, lease: &Lease) -> Result<Outcome, RelayError> {
        let phase = PhaseClock::new(&self.metrics);
        let rows = match self.read_ahead.take() {
            Some(read_ahead) => read_ahead.await??,
            None => {
                let in_flight = self.settling.as_ref().map(|settling| settling.ids.clone()).unwrap_or_default();
                outbox::fetch_pending(&self.pool.get().await?, self.settings.batch_size, &in_flight).await?
            }
        };
        let (rows, alone) = self.isolate_suspect(rows);
        if rows.is_empty() {
            self.finish_settling().await?;
            return Ok(Outcome::Empty);
        }
        let mut phase = phase.lap("fetch");
        // The producer of each shard's next transaction; a shard's transaction begins with the
        // batch's first record on its partitions.
        let Some(session) = &self.session else {
            return Err(RelayError::NoSession);
        };
        let next_producers: Vec<FutureProducer> = session.shards.iter().map(|shard| shard.producer().clone()).collect();
        let mut open: Vec<Option<FutureProducer>> = vec![None; SHARDS];
        // A full batch means a backlog: read the next one while this one is produced, too. (A
        // partial one reads ahead only once acknowledged, so as to take the rows written meanwhile.)
        if rows.len() as i64 >= self.settings.batch_size && !alone {
            self.read_ahead_past(&rows);
        }
        let default_topic = self.settings.topic.clone();
        // Topics not prepared in this session yet, or whose partition count was unknown (the
        // broker was down when the session prepared them, say).
        let unprepared: std::collections::BTreeSet<String> = rows
            .iter()
            .map(|row| row.topic.as_deref().unwrap_or(&default_topic))
            .filter(|topic| !self.prepared.contains(*topic))
            .map(str::to_owned)
            .collect();
        for topic in &unprepared {
            self.prepare_topic(topic).await;
        }
        let partitions = self.partition_counts(&rows).await;
        let partitioner = self.settings.producer.partitioner;
        let cloudevents = self.settings.cloudevents.clone();
        let mut deliveries = Vec::with_capacity(rows.len());
        let mut sent = Vec::with_capacity(rows.len());
        let mut refused: Vec<(i64, KafkaError)> = Vec::new();
        let mut held_back = std::collections::HashSet::new();
        for row in &rows {
            if !lease.is_valid() {
                return Err(RelayError::LeaseLapsed);
            }
            crate::failpoint::hit(crate::failpoint::BEFORE_SEND);
            if held_back.contains(&(&row.aggregate_type, &row.aggregate_id)) {
                // A row of this aggregate was refused: its later rows wait behind the dead letter.
                continue;
            }
            let topic = row.topic.as_deref().unwrap_or(&default_topic);
            // Without every partition count (a broker just restarted, a topic not yet known),
            // the round is one transaction, as before the shards, and librdkafka places records.
            let partition =
                partitions.as_ref().map(|counts| partitioner.partition(row.aggregate_id.as_bytes(), counts[topic]));
            let shard = partition.map_or(0, shard_of);
            let producer = match &mut open[shard] {
                Some(producer) => producer,
                opening @ None => {
                    let producer = next_producers[shard].clone();
                    producer.begin_transaction().map_err(RelayError::Session)?;
                    opening.insert(producer)
                }
            };
            let span = crate::publish::publish_span(topic, row);
            span.in_scope(|| {
                tracing::info!(
                    aggregate_type = %row.aggregate_type,
                    aggregate_id = %row.aggregate_id,
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
            let headers = crate::publish::record_headers(row, epoch, &trace_headers, cloudevents.as_ref());
            match crate::publish::send(producer, topic, partition, row, &headers).await {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    sent.push((row, topic, span));
                }
                Err(error) if refuses_record(&error) => {
                    held_back.insert((&row.aggregate_type, &row.aggregate_id));
                    refused.push((row.id, error));
                }
                Err(error) => return Err(RelayError::Enqueue(error)),
            }
        }
        crate::failpoint::hit(crate::failpoint::AFTER_SEND);
        if !refused.is_empty() {
            // What was read ahead may hold later rows of a refused row's article, which must wait
            // behind its dead letter: read again once it is recorded.
            self.drop_read_ahead();
        }
        let results = futures_util::future::join_all(deliveries).await;
        let mut acks = Acknowledgements::default();
        for ((row, topic, span), result) in sent.iter().zip(results) {
            let answer = match result {
                Ok(Ok(delivery)) => {
                    span.record("messaging.destination.partition.id", delivery.partition);
                    span.record("messaging.kafka.offset", delivery.offset);
                    Ok((delivery.partition, delivery.offset))
                }
                Ok(Err((error, _message))) => Err(error),
                Err(_canceled) => Err(KafkaError::Canceled),
            };
            if answer.is_err() {
                span.record("otel.status_code", "error");
            }
            acks.record(row.id, row.event_id, topic, answer);
        }
        phase = phase.lap("produce");
        self.metrics.publish_errors.inc_by((acks.failed + refused.len()) as u64);
        if let Some(first) = acks.first_failure {
            // Nothing of a transaction that is not committed becomes visible: the whole batch
            // stays in the outbox, and the session ends (see `end_session`).
            if alone && !acks.refused.is_empty() {
                // Refused on its own: this record is the culprit.
                self.end_session();
                self.finish_settling().await?;
                self.dead_letter(&mut self.pool.get().await?, epoch, &rows, rows[0].id, &first).await?;
                return Ok(Outcome::Published(0));
            }
            if !acks.refused.is_empty() {
                tracing::warn!(suspects = ?acks.refused, "the broker refused records of the batch; publishing them one by one to find which it refuses for what they are");
                self.suspects.extend(&acks.refused);
            }
            return Err(RelayError::Delivery { failed: acks.failed, attempted: sent.len(), first });
        }
        // Read the next batch while this one commits.
        if refused.is_empty() && !alone && self.read_ahead.is_none() {
            self.read_ahead_past(&rows);
        }
        // Every record is acknowledged by now: the commits have nothing left to flush (rdkafka's
        // flush before a commit waits up to 100 ms for an event otherwise).
        self.commit(open.iter().flatten()).await?;
        phase = phase.lap("commit");
        if let Some(session) = &mut self.session {
            for (shard, _) in open.iter().enumerate().filter(|(_, producer)| producer.is_some()) {
                session.shards[shard].next = (session.shards[shard].next + 1) % LANES;
            }
        }
        crate::failpoint::hit(crate::failpoint::AFTER_COMMIT);
        for (row, _, _) in &sent {
            self.metrics.messages_sent.with_label_values(&[&row.event_type]).inc();
            let age = (Utc::now() - row.created_at).to_std().unwrap_or_default();
            self.metrics.commit_to_ack.observe(age.as_secs_f64());
        }
        // Settles are one after the other: each moves the checkpoints past the one before.
        self.finish_settling().await?;
        if !refused.is_empty() {
            let mut client = self.pool.get().await?;
            for (id, error) in &refused {
                self.dead_letter(&mut client, epoch, &rows, *id, error).await?;
            }
        }
        let published = acks.acknowledged.len();
        self.settling = Some(self.spawn_settle(epoch, acks, phase));
        tracing::debug!(published, "batch committed; settling it");
        Ok(Outcome::Published(published))
    }

    /// Reads the batch after `rows` in the background, leaving out every row not settled yet:
    /// `rows` and the batch being settled.
    fn read_ahead_past(&mut self, rows: &[OutboxRow]) {
        let mut in_flight: Vec<i64> = rows.iter().map(|row| row.id).collect();
        if let Some(settling) = &self.settling {
            in_flight.extend(&settling.ids);
        }
        let (pool, limit) = (self.pool.clone(), self.settings.batch_size);
        self.read_ahead =
            Some(tokio::spawn(async move { Ok(outbox::fetch_pending(&pool.get().await?, limit, &in_flight).await?) }));
    }

    /// Forgets the batch read ahead: after a failure, the next round reads afresh.
    fn drop_read_ahead(&mut self) {
        if let Some(read_ahead) = self.read_ahead.take() {
            read_ahead.abort();
        }
    }

    /// Settles an acknowledged, committed batch in the background: deletes its rows and moves the
    /// checkpoints, in one DB1 transaction fenced by `epoch`, raising the alarm for any
    /// checkpoint that went down.
    fn spawn_settle(&self, epoch: i64, acks: Acknowledgements, phase: PhaseClock) -> Settling {
        let (pool, metrics) = (self.pool.clone(), self.metrics.clone());
        let ids = acks.acknowledged.clone();
        let handle = tokio::spawn(async move {
            let Settled { lowered, .. } =
                settle::settle(&mut pool.get().await?, epoch, Published::Rows(&acks.acknowledged), &acks.checkpoints())
                    .await?;
            let _ = phase.lap("settle");
            for lowered in lowered {
                metrics.checkpoint_ahead.inc();
                tracing::error!(
                    topic = lowered.topic,
                    partition = lowered.partition,
                    checkpoint = lowered.from,
                    log_end = lowered.to,
                    "checkpoint ahead of the log: the broker acknowledged records below the checkpoint, so the log was lost or replaced; the events settled below the old checkpoint are gone from it"
                );
            }
            Ok(())
        });
        Settling { ids, handle }
    }

    /// Waits for the settle in flight, if any.
    async fn finish_settling(&mut self) -> Result<(), RelayError> {
        match self.settling.take() {
            Some(settling) => settling.handle.await?,
            None => Ok(()),
        }
    }

    /// With suspects, the rows before the first one form the batch, or that suspect goes alone;
    /// suspects no longer in the outbox are forgotten. Without, the rows as they are.
    /// Returns the rows and whether the one row is a suspect on its own.
    fn isolate_suspect(&mut self, rows: Vec<OutboxRow>) -> (Vec<OutboxRow>, bool) {
        while let Some(&suspect) = self.suspects.first() {
            match rows.first() {
                Some(first) if first.id == suspect => {
                    // Alone: whatever its answer, it is the answer about this record.
                    self.suspects.remove(&suspect);
                    return (rows.into_iter().take(1).collect(), true);
                }
                Some(first) if first.id < suspect => {
                    return (rows.into_iter().take_while(|row| row.id < suspect).collect(), false);
                }
                _ => {
                    self.suspects.remove(&suspect);
                }
            }
        }
        (rows, false)
    }

    /// Moves refused row `id` to the dead letters; the rows of other aggregates keep flowing.
    async fn dead_letter(
        &self,
        client: &mut deadpool_postgres::Object,
        epoch: i64,
        rows: &[OutboxRow],
        id: i64,
        error: &KafkaError,
    ) -> Result<(), RelayError> {
        let reason = error_chain(error);
        if settle::dead_letter(client, epoch, id, &reason).await? {
            self.metrics.dead_letters.inc();
            let row = rows.iter().find(|row| row.id == id);
            tracing::error!(
                outbox_id = id,
                event_id = ?row.map(|row| row.event_id),
                aggregate_type = ?row.map(|row| &row.aggregate_type),
                aggregate_id = ?row.map(|row| &row.aggregate_id),
                payload_bytes = ?row.map(|row| row.payload.len()),
                error = %reason,
                "the broker refuses this record for what it is: moved to outbox_dead_letters; later rows of its aggregate wait until it is requeued or discarded (blogctl outbox dead-letters)"
            );
        }
        Ok(())
    }

    /// Commits the batch's transactions, side by side. A commit that fails may still have happened
    /// at the broker, and the others may have: the rows then stay, and the next read-back finds the
    /// records committed and settles their rows.
    async fn commit(&self, producers: impl Iterator<Item = &FutureProducer>) -> Result<(), RelayError> {
        let timeout = self.settings.producer.delivery_timeout;
        let commits = producers.map(|producer| {
            let committing = producer.clone();
            tokio::task::spawn_blocking(move || kafka_kit::transaction::commit(&committing, timeout))
        });
        for committed in futures_util::future::join_all(commits).await {
            committed?.map_err(RelayError::Commit)?;
        }
        Ok(())
    }

    /// The partition count of every topic `rows` go to, as last seen, or read from the broker for
    /// a topic not seen yet (records are placed on partitions by the relay, see [`SHARDS`]); `None`
    /// when one cannot be known now.
    async fn partition_counts(&mut self, rows: &[OutboxRow]) -> Option<HashMap<String, usize>> {
        let topics: std::collections::BTreeSet<&str> =
            rows.iter().map(|row| row.topic.as_deref().unwrap_or(&self.settings.topic)).collect();
        let mut counts = HashMap::with_capacity(topics.len());
        for topic in topics {
            let count = match self.partitions.get(topic) {
                Some(&count) => count,
                None => {
                    let (metadata, name) = (self.metadata.clone(), topic.to_owned());
                    match tokio::task::spawn_blocking(move || metadata.partition_count(&name)).await {
                        Ok(Ok(count)) if count > 0 => count,
                        answer => {
                            // Prepared again next round: created as asked if it is still missing.
                            self.prepared.remove(topic);
                            tracing::debug!(topic, ?answer, "partition count unknown; this round is one transaction");
                            return None;
                        }
                    }
                }
            };
            counts.insert(topic.to_owned(), count);
        }
        for (topic, &count) in &counts {
            self.saw_partitions(topic, count);
        }
        Some(counts)
    }

    /// Whether `error` ends the producer session: any producer or transaction error does (a new
    /// session starts clean, and its registration aborts whatever this one left open).
    fn session_ended(&self, error: &RelayError) -> bool {
        if let Some(session) = &self.session
            && let Some((code, reason)) = session.producers().find_map(|producer| producer.client().fatal_error())
        {
            tracing::error!(?code, %reason, "fatal producer error");
            return true;
        }
        matches!(
            error,
            RelayError::Delivery { .. } | RelayError::Enqueue(_) | RelayError::Commit(_) | RelayError::Session(_)
        )
    }

    async fn record_clean_stop(&self, epoch: i64) {
        let recorded = async { settle::record_clean_stop(&mut self.pool.get().await?, epoch).await }.await;
        match recorded {
            Ok(()) => tracing::info!(epoch, "stopped cleanly with nothing in flight; a successor publishes at once"),
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "cannot record the clean stop; a successor will wait out this relay's bound")
            }
        }
    }

    /// Records `topic`'s partition count, warning when it changed since last seen. The gauge
    /// shows the default topic's.
    fn saw_partitions(&mut self, topic: &str, partitions: usize) {
        if partitions == 0 {
            return;
        }
        if topic == self.settings.topic {
            self.metrics.topic_partitions.set(i64::try_from(partitions).unwrap_or(i64::MAX));
        }
        match self.partitions.insert(topic.to_owned(), partitions) {
            Some(before) if before != partitions => tracing::warn!(
                topic,
                before,
                partitions,
                "the topic's partition count changed while the relay runs: aggregate ids now map to other partitions, so an aggregate's newer events may be read before its older ones still waiting in the old partition; add partitions only to a drained pipeline (docs/operations.md)"
            ),
            _ => {}
        }
    }

    /// Reads the partition count of every topic published to now (metadata only).
    async fn watch_partitions(&mut self) {
        let mut topics: Vec<String> = self.partitions.keys().cloned().collect();
        if !self.partitions.contains_key(&self.settings.topic) {
            topics.push(self.settings.topic.clone());
        }
        for topic in topics {
            let (metadata, name) = (self.metadata.clone(), topic.clone());
            match tokio::task::spawn_blocking(move || metadata.partition_count(&name)).await {
                Ok(Ok(partitions)) => self.saw_partitions(&topic, partitions),
                Ok(Err(error)) => tracing::debug!(topic, %error, "cannot read the topic's partition count"),
                Err(error) => tracing::debug!(topic, %error, "the partition count check did not finish"),
            }
        }
    }

    async fn refresh_backlog(&self) {
        let Ok(client) = self.pool.get().await else {
            return;
        };
        match outbox::backlog(&client).await {
            Ok(backlog) => {
                self.metrics.backlog.set(backlog.rows);
                self.metrics.oldest_age.set(backlog.oldest_age_seconds);
                self.metrics.dead_letter_rows.set(backlog.dead_letters);
            }
            Err(error) => tracing::debug!(%error, "cannot measure the outbox backlog"),
        }
    }
}

/// Times the phases of one round into `outbox_round_phase_seconds`.
struct PhaseClock {
    phases: prometheus::HistogramVec,
    started: Instant,
}

impl PhaseClock {
    fn new(metrics: &RelayMetrics) -> Self {
        Self { phases: metrics.round_phase.clone(), started: Instant::now() }
    }

    /// Records the phase that just ended, and starts the next.
    #[must_use]
    fn lap(mut self, phase: &str) -> Self {
        self.phases.with_label_values(&[phase]).observe(self.started.elapsed().as_secs_f64());
        self.started = Instant::now();
        self
    }
}
