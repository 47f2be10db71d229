//! Phase 4b: the broker's own latency floor at the latency phase's rates, measured in this process
//! with no database on either side, so that what separates it from the end-to-end figure is the
//! pipeline's own doing:
//!
//! - **transactional**: records produced the relay's way — one Kafka transaction at a time, each
//!   holding what arrived since the last one began, every acknowledgement awaited, then the
//!   commit, alternating between two producers as the relay's lanes do — and read by a
//!   `read_committed` consumer with the sink's fetch settings;
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
    Transactional,
    Plain,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Transactional => "transactional",
            Self::Plain => "plain",
        }
    }
}

pub(crate) async fn run(stack: &e2e::Stack, sizes: &Sizes, results: &mut Results) -> anyhow::Result<()> {
    let bootstrap = stack.bootstrap_servers();
    let mut rows = Vec::new();
    for rate in sizes.rates {
        for mode in [Mode::Transactional, Mode::Plain] {
            let latencies = floor(&bootstrap, mode, rate, sizes.phase)
                .await
                .with_context(|| format!("the {} floor at {rate} records/s", mode.name()))?;
            let (p50, p99, max) =
                (percentile(&latencies, 0.5), percentile(&latencies, 0.99), percentile(&latencies, 1.0));
            println!(
                "broker floor, {:<13} at {rate:>4} records/s: p50 {p50:>7.1} ms  p99 {p99:>7.1} ms  max {max:>7.1} ms",
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
    let topic = format!("bench-floor-{}-{rate}", mode.name());
    e2e::topics::create(bootstrap, &topic, PARTITIONS as i32, &[]).await?;
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let origin = Instant::now();
    let consumer = consumer(bootstrap, &topic, mode)?;
    let (warmed_up, warm) = tokio::sync::oneshot::channel();
    let received = tokio::spawn(receive(consumer, total, origin, warmed_up));
    let producers = [producer(bootstrap, &topic, mode, 0).await?, producer(bootstrap, &topic, mode, 1).await?];
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
        Mode::Transactional => kafka_kit::Isolation::ReadCommitted,
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

/// Producer `lane` of the floor: as the relay does, transactions alternate between two producers
/// (a producer that begins a transaction while the broker still completes its last commit waits
/// ~20 ms for it; docs/performance.md).
async fn producer(bootstrap: &str, topic: &str, mode: Mode, lane: usize) -> anyhow::Result<FutureProducer> {
    let mut config = kafka_kit::client_config(bootstrap);
    config.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5");
    if mode == Mode::Transactional {
        config.set("transactional.id", format!("{topic}-producer-{lane}"));
    }
    let producer: FutureProducer = config.create()?;
    if mode == Mode::Transactional {
        let registering = producer.clone();
        tokio::task::spawn_blocking(move || registering.init_transactions(Duration::from_secs(30))).await??;
    }
    Ok(producer)
}

/// Produces each arrival (index, send time) as its mode does, until the sender is dropped.
async fn produce(
    producers: [FutureProducer; 2],
    topic: String,
    mode: Mode,
    mut arrivals: mpsc::UnboundedReceiver<(usize, u64)>,
) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    let mut lane = 0;
    while let Some(first) = arrivals.recv().await {
        let producer = &producers[lane];
        lane = (lane + 1) % producers.len();
        let mut batch = vec![first];
        if mode == Mode::Transactional {
            while let Ok(next) = arrivals.try_recv() {
                batch.push(next);
            }
            producer.begin_transaction()?;
        }
        for (index, sent) in batch {
            pending.push(send(producer, &topic, index, sent).await);
        }
        if mode == Mode::Transactional {
            crate::measure::acknowledged(std::mem::take(&mut pending)).await?;
            let committing = producer.clone();
            tokio::task::spawn_blocking(move || committing.commit_transaction(Duration::from_secs(30))).await??;
        }
    }
    crate::measure::acknowledged(pending).await
}

/// Hands record `index`, sent at `sent`, to the producer.
async fn send(producer: &FutureProducer, topic: &str, index: usize, sent: u64) -> DeliveryFuture {
    let key = index.to_string();
    let mut payload = [0_u8; 16];
    payload[..8].copy_from_slice(&sent.to_be_bytes());
    payload[8..].copy_from_slice(&(index as u64).to_be_bytes());
    crate::measure::send_waiting(producer, FutureRecord::to(topic).key(&key).payload(&payload[..])).await
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
