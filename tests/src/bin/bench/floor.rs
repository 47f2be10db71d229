//! Phase 4b: the broker's own latency floor at the latency phase's rates, measured in this process
//! with no database on either side, so that what separates it from the end-to-end figure is the
//! pipeline's own doing:
//!
//! - **transactional, sharded**: records produced the relay's way — rounds one after the other,
//!   each holding what arrived since the last one began, in one transaction per shard of
//!   partitions it touches (`outbox_relay::SHARDS`, each shard alternating between
//!   `outbox_relay::LANES` producers), every acknowledgement awaited, then the commits — and read
//!   by a `read_committed` consumer with the sink's fetch settings;
//! - **transactional, one shard**: the same with one transaction per round over every partition
//!   (the relay before 2026-12-02), to show what the shards buy;
//! - **plain**: each record handed to an idempotent producer the moment it arrives, read
//!   `read_uncommitted` (the broker's latency without transactions).
//!
//! Records are keyed over the topic's partitions as articles are; each carries its send time.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use tokio::sync::mpsc;

use crate::latency::percentile;
use crate::{PARTITIONS, Results, Sizes};

/// How the floor's records are produced and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One transaction per shard of partitions per round, side by side.
    Transactional {
        shards: usize,
    },
    Plain,
}

impl Mode {
    const ALL: [Self; 3] =
        [Self::Transactional { shards: outbox_relay::SHARDS }, Self::Transactional { shards: 1 }, Self::Plain];

    fn name(self) -> String {
        match self {
            Self::Transactional { shards } => format!("transactional, {shards} shard(s)"),
            Self::Plain => "plain".to_owned(),
        }
    }

    /// How many producers it alternates between, per shard.
    fn lanes(self) -> usize {
        match self {
            Self::Transactional { .. } => outbox_relay::LANES,
            Self::Plain => 1,
        }
    }

    fn shards(self) -> usize {
        match self {
            Self::Transactional { shards } => shards,
            Self::Plain => 1,
        }
    }
}

pub(crate) async fn run(bootstrap: &str, sizes: &Sizes, results: &mut Results) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for rate in sizes.rates {
        for mode in Mode::ALL {
            let latencies = floor(bootstrap, mode, rate, sizes.phase)
                .await
                .with_context(|| format!("the {} floor at {rate} records/s", mode.name()))?;
            let (p50, p99, max) =
                (percentile(&latencies, 0.5), percentile(&latencies, 0.99), percentile(&latencies, 1.0));
            println!(
                "broker floor, {:<27} at {rate:>4} records/s: p50 {p50:>7.1} ms  p99 {p99:>7.1} ms  max {max:>7.1} ms",
                mode.name()
            );
            rows.push(json!({"mode": mode.name(), "rate": rate, "records": latencies.len(), "p50_ms": p50,
                "p99_ms": p99, "max_ms": max}));
        }
    }
    results.insert("broker_floor".into(), json!(rows));
    Ok(())
}

/// Sends `rate` records a second for `duration` through a topic of its own; returns each record's
/// latency from its send time to its arrival at the consumer, in ms, sorted.
async fn floor(bootstrap: &str, mode: Mode, rate: u64, duration: Duration) -> anyhow::Result<Vec<f64>> {
    // A topic of this run's own: `--floor-only` may measure a broker an earlier run measured.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let topic = format!("bench-floor-{}-{rate}-{run}", mode.name().replace([',', ' ', '(', ')'], ""));
    e2e::topics::create(bootstrap, &topic, PARTITIONS as i32, &[]).await?;
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let origin = Instant::now();
    let consumer = consumer(bootstrap, &topic, mode)?;
    let (warmed_up, warm) = tokio::sync::oneshot::channel();
    let received = tokio::spawn(receive(consumer, total, origin, warmed_up));
    let mut producers = Vec::new();
    for shard in 0..mode.shards() {
        let mut lanes = Vec::new();
        for lane in 0..mode.lanes() {
            lanes.push(producer(bootstrap, &topic, mode, shard * mode.lanes() + lane).await?);
        }
        producers.push(lanes);
    }
    let (sender, arrivals) = mpsc::unbounded_channel();
    let produced = tokio::spawn(produce(producers, topic, mode, arrivals));
    // One record through first: the timed ones find the consumer fetching and the producers
    // connected, as the pipeline's are.
    sender.send((WARM_UP, micros_since(origin)))?;
    tokio::time::timeout(Duration::from_secs(60), warm).await.context("the warm-up record did not arrive")??;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    for i in 0..total {
        ticker.tick().await;
        sender.send((i, micros_since(origin)))?;
    }
    drop(sender);
    produced.await??;
    let mut latencies = received.await??;
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

fn micros_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn consumer(bootstrap: &str, topic: &str, mode: Mode) -> anyhow::Result<StreamConsumer> {
    let isolation = match mode {
        Mode::Transactional { .. } => kafka_kit::Isolation::ReadCommitted,
        Mode::Plain => kafka_kit::Isolation::ReadUncommitted,
    };
    let consumer: StreamConsumer =
        kafka_kit::consumer_config(bootstrap, &format!("{topic}-reader"), isolation).create()?;
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS as i32 {
        partitions.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&partitions)?;
    Ok(consumer)
}

/// The index of the warm-up record, which is not timed.
const WARM_UP: usize = usize::MAX;

/// Producer `index` of the floor: as the relay does, each shard's transactions alternate between
/// its lanes' producers (a producer that begins a transaction while the broker still completes its
/// last commit waits ~20 ms for it; docs/performance.md).
async fn producer(bootstrap: &str, topic: &str, mode: Mode, index: usize) -> anyhow::Result<FutureProducer> {
    let mut config = kafka_kit::client_config(bootstrap);
    config.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5");
    let transactional = mode != Mode::Plain;
    if transactional {
        config.set("transactional.id", format!("{topic}-producer-{index}"));
    }
    let producer: FutureProducer = config.create()?;
    if transactional {
        let registering = producer.clone();
        tokio::task::spawn_blocking(move || registering.init_transactions(Duration::from_secs(30))).await??;
    }
    Ok(producer)
}

/// Produces each arrival (index, send time) as its mode does, until the sender is dropped:
/// `producers` holds each shard's lanes.
async fn produce(
    producers: Vec<Vec<FutureProducer>>,
    topic: String,
    mode: Mode,
    mut arrivals: mpsc::UnboundedReceiver<(usize, u64)>,
) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    let mut lanes = vec![0; producers.len()];
    while let Some(first) = arrivals.recv().await {
        let mut batch = vec![first];
        if mode == Mode::Plain {
            pending.push(send(&producers[0][0], &topic, first.0, first.1).await);
            continue;
        }
        while let Ok(next) = arrivals.try_recv() {
            batch.push(next);
        }
        let mut open: Vec<Option<&FutureProducer>> = vec![None; producers.len()];
        for (index, sent) in batch {
            let shard = partition_of(index) as usize % producers.len();
            let producer = match open[shard] {
                Some(producer) => producer,
                None => {
                    let producer = &producers[shard][lanes[shard]];
                    producer.begin_transaction()?;
                    *open[shard].insert(producer)
                }
            };
            pending.push(send(producer, &topic, index, sent).await);
        }
        crate::measure::acknowledged(std::mem::take(&mut pending)).await?;
        let commits = open.iter().flatten().map(|producer| {
            let committing = (*producer).clone();
            tokio::task::spawn_blocking(move || kafka_kit::transaction::commit(&committing, Duration::from_secs(30)))
        });
        for committed in futures_util::future::join_all(commits).await {
            committed??;
        }
        for (shard, _) in open.iter().enumerate().filter(|(_, producer)| producer.is_some()) {
            lanes[shard] = (lanes[shard] + 1) % producers[shard].len();
        }
    }
    crate::measure::acknowledged(pending).await
}

/// The partition of record `index`, placed as the relay places records (by key).
fn partition_of(index: usize) -> i32 {
    kafka_kit::Partitioner::Crc32.partition(index.to_string().as_bytes(), PARTITIONS as usize)
}

/// Hands record `index`, sent at `sent`, to the producer, on the partition its key hashes to.
async fn send(producer: &FutureProducer, topic: &str, index: usize, sent: u64) -> DeliveryFuture {
    let key = index.to_string();
    let mut payload = [0_u8; 16];
    payload[..8].copy_from_slice(&sent.to_be_bytes());
    payload[8..].copy_from_slice(&(index as u64).to_be_bytes());
    let record = FutureRecord::to(topic).partition(partition_of(index)).key(&key).payload(&payload[..]);
    crate::measure::send_waiting(producer, record).await
}

/// Reads the warm-up record (then says so on `warmed_up`) and `total` timed records; returns
/// each timed one's latency in ms.
async fn receive(
    consumer: StreamConsumer,
    total: usize,
    origin: Instant,
    warmed_up: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::with_capacity(total);
    let mut warmed_up = Some(warmed_up);
    while latencies.len() < total {
        let message =
            tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await.context("no record for 60 s")??;
        let payload: [u8; 16] =
            message.payload().and_then(|payload| payload.try_into().ok()).context("a bad payload")?;
        let (sent, index) = payload.split_at(8);
        if u64::from_be_bytes(index.try_into()?) == WARM_UP as u64 {
            if let Some(warmed_up) = warmed_up.take() {
                let _ = warmed_up.send(());
            }
            continue;
        }
        let age = micros_since(origin).saturating_sub(u64::from_be_bytes(sent.try_into()?));
        latencies.push(age as f64 / 1000.0);
    }
    Ok(latencies)
}
