//! Phase 2: the relay's drain of an outbox backlog (topped up to the target size) against a bare
//! rdkafka producer sending the same records to the same broker.

use std::time::{Duration, Instant};

use e2e::Stack;
use e2e::process::Server as _;
use e2e::stack::Service;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use serde_json::json;

use crate::measure::{CpuUse, drain_curve};
use crate::{Results, Sizes};

/// Returns how many events the backlog held (all on the topic afterwards, for phase 3).
pub(crate) async fn run(stack: &mut Stack, sizes: &Sizes, results: &mut Results) -> anyhow::Result<i64> {
    let db1 = stack.db1_client().await?;
    let backlog = fill_backlog(&db1, sizes).await?;
    let backlog_size = backlog.len() as i64;
    let first_record = FirstRecord::watch(&stack.bootstrap_servers(), stack.topic()).await?;
    stack.restart(Service::Relay).await?;
    let relay_metrics = e2e::ApiClient::new(&stack.url(Service::Relay));
    let metrics_before = relay_metrics.text("/metrics").await?;
    let (relay_pid, db1_pid, broker_pid) =
        (stack.process(Service::Relay).pid(), stack.db1.process_mut().pid(), stack.broker_mut()?.process_mut().pid());
    let relay_cpu = CpuUse::start([("relay", relay_pid), ("db1", db1_pid), ("broker", broker_pid)]);
    let drain =
        drain_curve(0, || async { Ok(db1.query_one("SELECT count(*) FROM outbox", &[]).await?.get(0)) }).await?;
    // Timed from the first record on the topic, not from the first change of the outbox's count
    // (that comes only when the first round is settled, and would leave the round out).
    let (relay_rate, relay_time) = drain.since(first_record.seen().await?, backlog_size);
    let (relay_cpu, relay_cpu_figures) = relay_cpu.finish(backlog.len());
    let relay_rss = crate::measure::peak_rss_mib(relay_pid);
    let (phases, phase_figures) = crate::measure::round_phases(&metrics_before, &relay_metrics.text("/metrics").await?);
    // The relay's ceiling: a bare producer sending the same records (key, payload and the
    // `event_id` and `event_type` headers the relay adds) to another topic of the same broker. On
    // nisshi every header is a row of its own, so the same payloads without headers are measured
    // too, to show what the headers cost the broker.
    let bare_cpu = CpuUse::start([("bare_producer", Some(std::process::id())), ("broker", broker_pid)]);
    let with_headers = bare_produce(&stack.bootstrap_servers(), &backlog, true).await?;
    let (bare_cpu, bare_cpu_figures) = bare_cpu.finish(backlog.len());
    let without_headers = bare_produce(&stack.bootstrap_servers(), &backlog, false).await?;
    // What transactions cost the producer alone: the same records, one transaction per
    // RELAY_BATCH_ROWS records (the relay's default batch), one after the other, as the relay's
    // rounds are; and one transaction per LARGE_TRANSACTION_ROWS.
    let transactional = bare_produce_transactional(&stack.bootstrap_servers(), &backlog, RELAY_BATCH_ROWS).await?;
    let transactional_large =
        bare_produce_transactional(&stack.bootstrap_servers(), &backlog, LARGE_TRANSACTION_ROWS).await?;
    let (ratio, ratio_without_headers) = (relay_rate / with_headers, relay_rate / without_headers);
    let ratio_transactional = relay_rate / transactional;
    // What the operator set on top of the relay's own settings (`RDKAFKA_PRODUCER_COMPRESSION_TYPE`, …).
    let client_settings = kafka_kit::settings::settings()?.describe();
    let line = format!(
        "relay drain of {backlog_size} events: {relay_rate:>8.0}/s ({relay_time:.1?})   bare producer, same records: \
         {with_headers:>8.0}/s   ratio {ratio:.2}   (without headers: {without_headers:>8.0}/s, ratio {ratio_without_headers:.2})\n\
         bare transactional producer, same records: {RELAY_BATCH_ROWS} per transaction {transactional:>8.0}/s (relay's ratio to it \
         {ratio_transactional:.2}), {LARGE_TRANSACTION_ROWS} per transaction {transactional_large:>8.0}/s\n\
         relay round phases, mean per round: {phases}\n\
         relay drain (from the relay's start): {relay_cpu}; relay's peak RSS {:.1} MiB\n\
         bare producer, same records:          {bare_cpu}\n\
         Kafka client settings of the relay and the bare producers: {client_settings}",
        relay_rss.unwrap_or(f64::NAN)
    );
    let figures = json!({"events": backlog_size, "relay_per_s": relay_rate, "bare_producer_per_s": with_headers,
        "ratio": ratio, "bare_producer_without_headers_per_s": without_headers,
        "ratio_without_headers": ratio_without_headers, "round_phases": phase_figures,
        "bare_transactional_per_s": transactional, "rows_per_transaction": RELAY_BATCH_ROWS,
        "ratio_transactional": ratio_transactional, "bare_transactional_large_per_s": transactional_large,
        "rows_per_large_transaction": LARGE_TRANSACTION_ROWS, "relay_cpu": relay_cpu_figures,
        "bare_producer_cpu": bare_cpu_figures, "relay_peak_rss_mib": relay_rss,
        "kafka_client_settings": client_settings});
    crate::report(results, "relay_drain", &line, figures);
    Ok(backlog_size)
}

/// Tops the outbox up to the backlog's size (removing pgbench's rows first) and returns its rows,
/// in the order the relay publishes them.
async fn fill_backlog(db1: &tokio_postgres::Client, sizes: &Sizes) -> anyhow::Result<Vec<BacklogRecord>> {
    // pgbench's rows all carry the same sample payload: they are removed, the API's rows stay.
    db1.batch_execute(
        "DELETE FROM outbox WHERE payload LIKE '%6f1c2b8e-7a51-4a8e-9c43-0d9a3f5b2e11%'; DELETE FROM articles WHERE title = 'bench'",
    )
    .await?;
    let pending: i64 = db1.query_one("SELECT count(*) FROM outbox", &[]).await?.get(0);
    if pending < sizes.backlog {
        db1.execute(
            "INSERT INTO articles (title, content, author) SELECT 'backlog ' || g, repeat('x', 300), 'bench' FROM generate_series(1, $1::bigint) g",
            &[&(sizes.backlog - pending)],
        )
        .await?;
        db1.execute(
            &format!(
                "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload) \
                 SELECT e.event_id, 'article', a.id::text, 'article.created', {EVENT_SQL} \
                 FROM articles a CROSS JOIN LATERAL (SELECT gen_random_uuid() AS event_id, a.id AS per_row) e \
                 WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.aggregate_id = a.id::text) ORDER BY a.id"
            ),
            &[],
        )
        .await?;
    }
    Ok(db1
        .query("SELECT aggregate_id, payload, event_id::text, event_type FROM outbox ORDER BY id", &[])
        .await?
        .iter()
        .map(|row| BacklogRecord { key: row.get(0), payload: row.get(1), event_id: row.get(2), event_type: row.get(3) })
        .collect())
}

/// Fills the topic with the backlog, through the relay, without measuring it: what phase 3 needs
/// when phase 2 is skipped (`--sink-only`). Returns how many events the backlog held.
pub(crate) async fn publish_backlog(stack: &mut Stack, sizes: &Sizes) -> anyhow::Result<i64> {
    let db1 = stack.db1_client().await?;
    let backlog = fill_backlog(&db1, sizes).await?;
    stack.restart(Service::Relay).await?;
    drain_curve(0, || async { Ok(db1.query_one("SELECT count(*) FROM outbox", &[]).await?.get(0)) }).await?;
    Ok(backlog.len() as i64)
}

/// Watches the log's end of every partition of a topic, on a thread of its own, for the first
/// record written after [`FirstRecord::watch`] (committed or not: it is the moment the relay's
/// first record reached the broker).
struct FirstRecord(tokio::task::JoinHandle<anyhow::Result<Instant>>);

impl FirstRecord {
    /// How often the log's ends are asked for.
    const POLL: Duration = Duration::from_millis(5);

    /// Reads the log's ends now, then watches them until one moves.
    async fn watch(bootstrap_servers: &str, topic: &str) -> anyhow::Result<Self> {
        let topic = topic.to_owned();
        let consumer =
            kafka_kit::reader(bootstrap_servers, "bench-first-record", kafka_kit::Isolation::ReadUncommitted)?;
        let (consumer, topic, partitions, initial) = tokio::task::spawn_blocking(move || {
            let partitions = kafka_kit::topic_partitions(&consumer, &topic)?;
            let initial = Self::log_ends(&consumer, &topic, &partitions)?;
            anyhow::Ok((consumer, topic, partitions, initial))
        })
        .await??;
        Ok(Self(tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while Instant::now() < deadline {
                if Self::log_ends(&consumer, &topic, &partitions)? > initial {
                    return Ok(Instant::now());
                }
                std::thread::sleep(Self::POLL);
            }
            anyhow::bail!("no record reached {topic} in 600 s")
        })))
    }

    /// The sum of the partitions' log ends (high watermarks).
    fn log_ends(consumer: &rdkafka::consumer::BaseConsumer, topic: &str, partitions: &[i32]) -> anyhow::Result<i64> {
        let mut sum = 0;
        for &partition in partitions {
            sum += kafka_kit::partition_bounds(consumer, topic, partition)?.1;
        }
        Ok(sum)
    }

    /// When the first record was seen.
    async fn seen(self) -> anyhow::Result<Instant> {
        self.0.await?
    }
}

/// The payload the API writes for a created article, built in SQL (used by pgbench and the backlog).
const EVENT_SQL: &str = "json_build_object('event_id', e.event_id::text, 'event_type', 'article.created', \
    'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'data', json_build_object(\
    'id', a.id, 'title', a.title, 'content', a.content, 'author', a.author, 'category', a.category, 'tags', a.tags, \
    'status', a.status, 'views_count', a.views_count, \
    'created_at', to_char(a.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
    'updated_at', to_char(a.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
    'published_at', NULL, 'version', a.version))::text";

/// One outbox row as the relay publishes it.
#[derive(Debug)]
struct BacklogRecord {
    key: String,
    payload: String,
    event_id: String,
    event_type: String,
}

/// A producer set up like the relay's (idempotent, acks=all, linger 5 ms, and the operator's
/// `RDKAFKA_PRODUCER_*` settings the relay also gets from this process's environment, such as
/// `compression.type`), transactional under `transactional_id` when one is given (its id
/// registered with the broker).
async fn bare_producer(bootstrap_servers: &str, transactional_id: Option<&str>) -> anyhow::Result<FutureProducer> {
    let mut config = kafka_kit::client_config(bootstrap_servers);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000");
    if let Some(id) = transactional_id {
        config.set("transactional.id", id);
    }
    let producer: FutureProducer = kafka_kit::configured(&config, kafka_kit::Role::Producer)?.create()?;
    if transactional_id.is_some() {
        let registering = producer.clone();
        tokio::task::spawn_blocking(move || registering.init_transactions(Duration::from_secs(30))).await??;
    }
    Ok(producer)
}

/// `record` as the relay sends it to `topic`: keyed, with the `event_id` and `event_type`
/// headers unless `headers` is false.
fn bare_record<'a>(topic: &'a str, record: &'a BacklogRecord, headers: bool) -> FutureRecord<'a, String, String> {
    let message = FutureRecord::to(topic).key(&record.key).payload(&record.payload);
    if !headers {
        return message;
    }
    message.headers(
        OwnedHeaders::new()
            .insert(Header { key: kafka_kit::EVENT_ID_HEADER, value: Some(&record.event_id) })
            .insert(Header { key: kafka_kit::EVENT_TYPE_HEADER, value: Some(&record.event_type) }),
    )
}

/// Sends `backlog` to the topic `bench-bare` with [`bare_producer`], all in flight at once;
/// returns records acknowledged per second.
async fn bare_produce(bootstrap_servers: &str, backlog: &[BacklogRecord], headers: bool) -> anyhow::Result<f64> {
    let producer = bare_producer(bootstrap_servers, None).await?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(backlog.len());
    for record in backlog {
        deliveries.push(crate::measure::send_waiting(&producer, bare_record("bench-bare", record, headers)).await);
    }
    crate::measure::acknowledged(deliveries).await?;
    Ok(backlog.len() as f64 / started.elapsed().as_secs_f64())
}

/// The relay's default batch (`RELAY_BATCH_SIZE`).
const RELAY_BATCH_ROWS: usize = 5000;
/// The larger transactions of the bare transactional producer: four relay batches.
const LARGE_TRANSACTION_ROWS: usize = 4 * RELAY_BATCH_ROWS;

/// Sends `backlog` to the topic `bench-bare-transactional` with a transactional
/// [`bare_producer`], `rows_per_transaction` records per transaction, each transaction's records
/// all acknowledged and committed before the next begins; returns records committed per second.
async fn bare_produce_transactional(
    bootstrap_servers: &str,
    backlog: &[BacklogRecord],
    rows_per_transaction: usize,
) -> anyhow::Result<f64> {
    let producer = bare_producer(bootstrap_servers, Some(&format!("bench-bare-{rows_per_transaction}"))).await?;
    let started = Instant::now();
    for chunk in backlog.chunks(rows_per_transaction) {
        producer.begin_transaction()?;
        let mut deliveries = Vec::with_capacity(chunk.len());
        for record in chunk {
            let message = bare_record("bench-bare-transactional", record, true);
            deliveries.push(crate::measure::send_waiting(&producer, message).await);
        }
        crate::measure::acknowledged(deliveries).await?;
        let committing = producer.clone();
        tokio::task::spawn_blocking(move || kafka_kit::transaction::commit(&committing, Duration::from_secs(30)))
            .await??;
    }
    Ok(backlog.len() as f64 / started.elapsed().as_secs_f64())
}
