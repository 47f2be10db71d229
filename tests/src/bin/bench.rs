//! `bench`: measures the pipeline against the physical ceilings of the parts it drives, side by
//! side in one run (these machines are shared and noisy, so every figure is a ratio measured now):
//!
//! 1. API creates/s at 8 and 32 connections vs pgbench running the same SQL on the same DB1.
//! 2. Relay drain of an outbox backlog vs a bare rdkafka producer sending the same payloads.
//! 3. Sink apply rate on a topic backlog vs pgbench running the sink's apply SQL on DB2.
//! 4. End-to-end latency (API response → row visible in DB2's `processed_events`) at two rates.
//! 5. Peak RSS of each service.
//!
//! Everything runs on one broker of its own, the one `BROKER` names (Apache Kafka by default, or
//! nisshi), so each ceiling is measured on the broker the pipeline used; `scripts/bench.sh` runs
//! it once per broker. Prints a table, writes `results.json` and `latency.svg` into `--out`.
//! `--short` proves the benchmark works (CI); it asserts nothing about speed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use clap::Parser;
use e2e::process::Server as _;
use e2e::stack::{DB_USER, DB1_NAME, DB2_NAME, FAST_TAKEOVER, Service};
use e2e::{ApiClient, Stack};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

/// Measures the pipeline against its ceilings (see the module docs).
#[derive(Debug, Parser)]
#[command(name = "bench", version)]
struct Cli {
    /// A quick run proving the benchmark works (small backlog, short phases).
    #[arg(long)]
    short: bool,
    /// Where to write results.json and latency.svg.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The sink's `KAFKA_FETCH_WAIT_MAX_MS` (unset: the sink's default), to measure its trade-off
    /// between catching up and following closely.
    #[arg(long)]
    sink_fetch_wait_ms: Option<u64>,
}

/// Events per transaction in the sink's ceiling (the sink applies up to 500 waiting records at once).
const APPLY_BATCH: usize = 100;

struct Sizes {
    phase: Duration,
    backlog: i64,
    rates: [u64; 2],
}

fn pg_bin(name: &str) -> anyhow::Result<PathBuf> {
    let output = Command::new("pg_config").arg("--bindir").output()?;
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()).join(name))
}

/// Runs pgbench with `script` and returns its tps.
fn pgbench(port: u16, database: &str, clients: u32, seconds: u64, script: &Path) -> anyhow::Result<f64> {
    let output = Command::new(pg_bin("pgbench")?)
        .args(["-n", "-M", "prepared", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", DB_USER])
        .args(["-c", &clients.to_string(), "-j", &clients.min(2).to_string(), "-T", &seconds.to_string()])
        .arg("-f")
        .arg(script)
        .arg(database)
        .output()
        .context("cannot run pgbench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("pgbench failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    }
    stdout
        .lines()
        .find(|line| line.starts_with("tps = "))
        .and_then(|line| line.split_whitespace().nth(2))
        .and_then(|tps| tps.parse().ok())
        .with_context(|| format!("no tps in pgbench output: {stdout}"))
}

/// The payload the API writes for a created article, built in SQL (used by pgbench and the backlog).
const EVENT_SQL: &str = "json_build_object('event_id', e.event_id::text, 'event_type', 'article.created', \
    'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'data', json_build_object(\
    'id', a.id, 'title', a.title, 'content', a.content, 'author', a.author, 'category', a.category, 'tags', a.tags, \
    'status', a.status, 'views_count', a.views_count, \
    'created_at', to_char(a.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
    'updated_at', to_char(a.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
    'published_at', NULL, 'version', a.version))::text";

/// Creates through the API with `clients` connections for `duration`; returns creates/s.
async fn api_throughput(api: &ApiClient, clients: usize, duration: Duration) -> anyhow::Result<f64> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let api = api.clone();
            tokio::spawn(async move {
                let mut done = 0_u64;
                while Instant::now() < deadline {
                    let body = json!({"title": format!("bench {client}-{done}"), "content": "x".repeat(300), "author": "bench"});
                    api.create(&body).await?;
                    done += 1;
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Waits until `count()` reaches `target`; returns events/s measured from the first change.
async fn drain_rate<F, Fut>(target: i64, mut count: F) -> anyhow::Result<(f64, Duration)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<i64>>,
{
    let initial = count().await?;
    let mut first_change = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let now = count().await?;
        if now != initial && first_change.is_none() {
            first_change = Some((Instant::now(), now));
        }
        if now == target {
            let (started, at_start) = first_change.unwrap_or((Instant::now(), initial));
            let elapsed = started.elapsed().max(Duration::from_millis(1));
            let moved = (target - at_start).abs().max(1);
            return Ok((moved as f64 / elapsed.as_secs_f64(), elapsed));
        }
        if Instant::now() > deadline {
            bail!("gave up waiting: {now} of {target}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Peak resident memory (VmHWM) of a process, in MiB.
fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Open-loop creates at `rate`/s for `duration`; returns each latency in ms from the API's
/// response to the event's row in DB2's `processed_events`.
async fn end_to_end(stack: &Stack, rate: u64, duration: Duration) -> anyhow::Result<(Vec<f64>, usize)> {
    let api = stack.api();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        ticker.tick().await;
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let article =
                api.create(&json!({"title": format!("e2e {i}"), "content": "latency", "author": "e2e"})).await?;
            anyhow::Ok((article.id, Utc::now()))
        }));
    }
    let mut responses = Vec::with_capacity(total);
    for task in tasks {
        responses.push(task.await??);
    }
    stack.wait_for_replica(Duration::from_secs(300)).await?;
    let db2 = stack.db2_client().await?;
    let ids: Vec<i64> = responses.iter().map(|(id, _)| *id).collect();
    let rows = db2
        .query(
            "SELECT article_id, processed_at AT TIME ZONE current_setting('TimeZone') FROM processed_events \
             WHERE event_type = 'article.created' AND article_id = ANY($1)",
            &[&ids],
        )
        .await?;
    let applied: std::collections::HashMap<i64, DateTime<Utc>> =
        rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    let mut latencies: Vec<f64> = responses
        .iter()
        .filter_map(|(id, responded)| {
            let micros = (*applied.get(id)? - *responded).num_microseconds()?;
            Some((micros as f64 / 1000.0).max(0.0))
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok((latencies, total))
}

fn svg_plot(series: &[(String, Vec<f64>)]) -> String {
    let (width, height, margin) = (720.0, 420.0, 60.0);
    let max_ms = series.iter().flat_map(|(_, values)| values.iter().copied()).fold(1.0_f64, f64::max);
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' font-size='12'>\
         <rect width='100%' height='100%' fill='white'/>\
         <text x='{}' y='20' text-anchor='middle' font-size='14'>End-to-end latency (API response → applied in DB2): cumulative distribution</text>\
         <line x1='{margin}' y1='{}' x2='{}' y2='{}' stroke='black'/><line x1='{margin}' y1='{margin}' x2='{margin}' y2='{}' stroke='black'/>\
         <text x='{}' y='{}' text-anchor='middle'>latency (ms), max {max_ms:.1}</text><text x='15' y='{}' transform='rotate(-90 15 {})' text-anchor='middle'>fraction of events</text>",
        width / 2.0,
        height - margin,
        width - 20.0,
        height - margin,
        height - margin,
        width / 2.0,
        height - 15.0,
        height / 2.0,
        height / 2.0
    );
    for tick in 0..=4 {
        let fraction = tick as f64 / 4.0;
        let y = height - margin - fraction * (height - 2.0 * margin);
        let x = margin + fraction * (width - margin - 20.0);
        svg.push_str(&format!(
            "<text x='{}' y='{}' text-anchor='end'>{fraction:.2}</text><text x='{x}' y='{}' text-anchor='middle'>{:.0}</text>",
            margin - 5.0, y + 4.0, height - margin + 15.0, fraction * max_ms
        ));
    }
    for (index, (label, values)) in series.iter().enumerate() {
        let color = colors[index % colors.len()];
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, ms)| {
                let x = margin + ms / max_ms * (width - margin - 20.0);
                let y = height - margin - (i + 1) as f64 / values.len() as f64 * (height - 2.0 * margin);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        svg.push_str(&format!(
            "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>",
            points.join(" ")
        ));
        svg.push_str(&format!(
            "<text x='{}' y='{}' fill='{color}'>{label}</text>",
            width - 240.0,
            height - margin - 40.0 - 18.0 * index as f64
        ));
    }
    svg.push_str("</svg>");
    svg
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let sizes = if cli.short {
        Sizes { phase: Duration::from_secs(2), backlog: 3_000, rates: [50, 100] }
    } else {
        Sizes { phase: Duration::from_secs(10), backlog: 100_000, rates: [200, 1000] }
    };
    std::fs::create_dir_all(&cli.out)?;
    let mut results = serde_json::Map::new();
    let mut stack = Stack::start_for_test_configured(|options| {
        // Figures of a broker of its own, never of one shared with tests running beside it.
        options.shared_broker = None;
        options.durable = true;
        options.rust_log = "warn".to_owned();
        options.relay_delivery_timeout = Some(FAST_TAKEOVER);
        options.service_env_by_name = cli
            .sink_fetch_wait_ms
            .map(|wait| (Service::Sink, "KAFKA_FETCH_WAIT_MAX_MS".to_owned(), wait.to_string()))
            .into_iter()
            .collect();
        options.print_logs_on_drop = false;
    })
    .await?;
    println!(
        "stack: {}, durable PostgreSQL, release services with RUST_LOG=warn, sink fetch wait {}",
        stack.broker_description(),
        cli.sink_fetch_wait_ms.map_or_else(|| "default".to_owned(), |wait| format!("{wait} ms"))
    );
    results.insert("broker".into(), json!(stack.broker_description()));
    results.insert("sink_fetch_wait_ms".into(), json!(cli.sink_fetch_wait_ms));
    let api = stack.api();
    let scripts = tempfile::tempdir()?;

    // One article through the whole pipeline first, so that the topic exists and the sink's group
    // has its assignment before the sink is stopped (nisshi did not assign partitions to a member
    // that joined after one that left before the topic existed).
    api.create(&json!({"title": "first", "content": "c", "author": "bench"})).await?;
    stack.wait_for_replica(Duration::from_secs(60)).await?;

    // 1. API writes vs pgbench, with the relay and the sink stopped (their backlog feeds 2 and 3).
    stack.stop(Service::Relay).await;
    stack.stop(Service::Sink).await;
    api_throughput(&api, 8, Duration::from_secs(1)).await?; // warm-up
    // The API's statements: insert the article (RETURNING), insert the outbox row with the event
    // JSON as a parameter (here a literal of the same size), notify, in one transaction.
    let create_script = scripts.path().join("create.sql");
    let sample_payload = serde_json::to_string(&json!({
        "event_id": "6f1c2b8e-7a51-4a8e-9c43-0d9a3f5b2e11", "event_type": "article.created",
        "timestamp": "2026-11-22T01:00:00.000000Z",
        "data": {"id": 1, "title": "bench", "content": "x".repeat(300), "author": "bench", "category": null, "tags": [],
                 "status": "draft", "views_count": 0, "created_at": "2026-11-22T01:00:00.000000Z",
                 "updated_at": "2026-11-22T01:00:00.000000Z", "published_at": null, "version": 1}
    }))?;
    std::fs::write(
        &create_script,
        format!(
            "BEGIN;\nINSERT INTO articles (title, content, author, category, tags) VALUES ('bench', repeat('x', 300), 'bench', NULL, '{{}}') \
             RETURNING id, title, content, author, tags, status, views_count, created_at, updated_at, version \\gset\n\
             INSERT INTO outbox (event_id, article_id, event_type, payload, trace_context) VALUES (gen_random_uuid(), :id, 'article.created', replace('{}', '~', ':'), NULL);\n\
             SELECT pg_notify('outbox_new', '');\nCOMMIT;\n",
            // pgbench reads `:name` as a variable, even inside a literal: colons travel as `~`.
            sample_payload.replace('\'', "''").replace(':', "~")
        ),
    )?;
    let mut api_rows = Vec::new();
    for clients in [8_u32, 32] {
        let api_rate = api_throughput(&api, clients as usize, sizes.phase).await?;
        let ceiling = pgbench(stack.db1.port, DB1_NAME, clients, sizes.phase.as_secs(), &create_script)?;
        println!(
            "API creates/s at {clients:>2} connections: {api_rate:>8.0}   pgbench same SQL: {ceiling:>8.0}   ratio {:.2}",
            api_rate / ceiling
        );
        api_rows.push(
            json!({"connections": clients, "api_per_s": api_rate, "pgbench_tps": ceiling, "ratio": api_rate / ceiling}),
        );
    }
    results.insert("api_writes".into(), json!(api_rows));

    // 2. Relay drain of the backlog (topped up to the target size) vs a bare producer. pgbench's
    // rows all carry the same sample payload: they are removed, the API's rows stay.
    let db1 = stack.db1_client().await?;
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
                "INSERT INTO outbox (event_id, article_id, event_type, payload) \
                 SELECT e.event_id, a.id, 'article.created', {EVENT_SQL} \
                 FROM articles a CROSS JOIN LATERAL (SELECT gen_random_uuid() AS event_id, a.id AS per_row) e \
                 WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.article_id = a.id) ORDER BY a.id"
            ),
            &[],
        )
        .await?;
    }
    let backlog: Vec<BacklogRecord> = db1
        .query("SELECT article_id::text, payload, event_id::text, event_type FROM outbox ORDER BY id", &[])
        .await?
        .iter()
        .map(|row| BacklogRecord { key: row.get(0), payload: row.get(1), event_id: row.get(2), event_type: row.get(3) })
        .collect();
    let backlog_size = backlog.len() as i64;
    stack.restart(Service::Relay).await?;
    let (relay_rate, relay_time) =
        drain_rate(0, || async { Ok(db1.query_one("SELECT count(*) FROM outbox", &[]).await?.get(0)) }).await?;
    // The relay's ceiling: a bare producer sending the same records (key, payload and the
    // `event_id` and `event_type` headers the relay adds) to another topic of the same broker. On
    // nisshi every header is a row of its own, so the same payloads without headers are measured
    // too, to show what the headers cost the broker.
    let with_headers = bare_produce(&stack.bootstrap_servers(), &backlog, true).await?;
    let without_headers = bare_produce(&stack.bootstrap_servers(), &backlog, false).await?;
    println!(
        "relay drain of {backlog_size} events: {relay_rate:>8.0}/s ({relay_time:.1?})   bare producer, same records: {with_headers:>8.0}/s   ratio {:.2}   (without headers: {without_headers:>8.0}/s, ratio {:.2})",
        relay_rate / with_headers,
        relay_rate / without_headers
    );
    results.insert(
        "relay_drain".into(),
        json!({"events": backlog_size, "relay_per_s": relay_rate, "bare_producer_per_s": with_headers,
               "ratio": relay_rate / with_headers, "bare_producer_without_headers_per_s": without_headers,
               "ratio_without_headers": relay_rate / without_headers}),
    );

    // 3. Sink apply of the topic backlog vs pgbench running the sink's SQL.
    let db2 = stack.db2_client().await?;
    let applied_before: i64 = db2.query_one("SELECT count(*) FROM processed_events", &[]).await?.get(0);
    let on_topic = backlog_size + applied_before;
    stack.restart(Service::Sink).await?;
    let (sink_rate, sink_time) = drain_rate(on_topic, || async {
        Ok(db2.query_one("SELECT count(*) FROM processed_events", &[]).await?.get(0))
    })
    .await?;
    let apply_script = scripts.path().join("apply.sql");
    // The sink applies the records waiting for it in one transaction, one statement per event,
    // pipelined: the ceiling runs the very same statement (`replica_sink::apply::UPSERT`) for
    // APPLY_BATCH events per transaction in a pgbench pipeline.
    // The statement's parameters: the article as JSON, the event id, the event type.
    let article = "jsonb_build_object('id', :id::bigint, 'title', 'bench', 'content', repeat('x', 300), 'author', 'bench', \
                   'category', NULL, 'tags', '[]'::jsonb, 'status', 'draft', 'views_count', 0, 'created_at', now(), \
                   'updated_at', now(), 'published_at', NULL, 'version', 1)::text";
    let upsert = replica_sink::UPSERT
        .replace("$1", article)
        .replace("$2", "md5(random()::text)")
        .replace("$3", "'article.created'");
    let mut script = String::from("BEGIN;\n\\startpipeline\n");
    for _ in 0..APPLY_BATCH {
        script.push_str("\\set id random(100000000, 900000000)\n");
        script.push_str(&upsert.split_whitespace().collect::<Vec<_>>().join(" "));
        script.push_str(";\n");
    }
    script.push_str("\\endpipeline\nCOMMIT;\n");
    std::fs::write(&apply_script, script)?;
    let sink_ceiling = APPLY_BATCH as f64 * pgbench(stack.db2.port, DB2_NAME, 1, sizes.phase.as_secs(), &apply_script)?;
    // pgbench's rows are not replicas of anything: remove them so DB2 matches DB1 again.
    db2.batch_execute(
        "DELETE FROM articles WHERE id >= 100000000; DELETE FROM processed_events WHERE article_id >= 100000000",
    )
    .await?;
    // The other side of the sink's ceiling: a bare consumer reading the same topic from the
    // same broker, doing nothing with the records.
    let (bootstrap, topic) = (stack.bootstrap_servers(), stack.topic().to_owned());
    let started = Instant::now();
    let consumed = tokio::task::spawn_blocking(move || {
        let mut consumed = 0_u64;
        kafka_kit::read_to_end(
            &bootstrap,
            &topic,
            |_| None,
            Instant::now() + Duration::from_secs(600),
            |_| {
                consumed += 1;
            },
        )
        .map(|_| consumed)
    })
    .await??;
    let bare_consumer_rate = consumed as f64 / started.elapsed().as_secs_f64();
    println!(
        "sink apply of {backlog_size} events: {sink_rate:>8.0}/s ({sink_time:.1?})   bare consumer: {bare_consumer_rate:>8.0}/s   ratio {:.2}   pgbench same statement, pipelined ({APPLY_BATCH}/tx): {sink_ceiling:>8.0}/s   ratio {:.2}",
        sink_rate / bare_consumer_rate,
        sink_rate / sink_ceiling
    );
    results.insert(
        "sink_apply".into(),
        json!({"events": backlog_size, "sink_per_s": sink_rate, "bare_consumer_per_s": bare_consumer_rate,
               "consumer_ratio": sink_rate / bare_consumer_rate, "pgbench_events_per_s": sink_ceiling,
               "events_per_transaction": APPLY_BATCH, "ratio": sink_rate / sink_ceiling}),
    );

    // 4. End-to-end latency at two rates.
    let mut series = Vec::new();
    let mut latency_rows = Vec::new();
    for rate in sizes.rates {
        let (latencies, sent) = end_to_end(&stack, rate, sizes.phase).await?;
        let (p50, p95, p99, max) = (
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.95),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0),
        );
        println!(
            "end-to-end at {rate:>4} writes/s: p50 {p50:>7.1} ms  p95 {p95:>7.1} ms  p99 {p99:>7.1} ms  max {max:>7.1} ms  ({} of {sent} seen)",
            latencies.len()
        );
        latency_rows.push(json!({"rate": rate, "sent": sent, "seen": latencies.len(), "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "max_ms": max}));
        series.push((format!("{rate} writes/s (n={})", latencies.len()), latencies));
    }
    results.insert("end_to_end".into(), json!(latency_rows));

    // 5. Peak RSS (the broker's for comparison: a JVM against nisshi).
    let mut rss = serde_json::Map::new();
    let mut processes: Vec<(&str, Option<u32>)> = [Service::Api, Service::Relay, Service::Sink]
        .into_iter()
        .map(|service| (service.binary_name(), stack.process(service).pid()))
        .collect();
    processes.push(("broker", stack.broker_mut()?.process_mut().pid()));
    for (name, pid) in processes {
        let peak = peak_rss_mib(pid);
        println!("peak RSS {name:<13} {:>6.1} MiB", peak.unwrap_or(f64::NAN));
        rss.insert(name.into(), json!(peak));
    }
    results.insert("peak_rss_mib".into(), json!(rss));
    results.insert("short".into(), json!(cli.short));
    results.insert("date".into(), json!(Utc::now().to_rfc3339()));

    std::fs::write(cli.out.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    std::fs::write(cli.out.join("latency.svg"), svg_plot(&series))?;
    println!("results: {}, plot: {}", cli.out.join("results.json").display(), cli.out.join("latency.svg").display());
    stack.shutdown().await;
    Ok(())
}

/// One outbox row as the relay publishes it.
#[derive(Debug)]
struct BacklogRecord {
    key: String,
    payload: String,
    event_id: String,
    event_type: String,
}

/// Sends `backlog` to the topic `bench-bare` with an idempotent producer set up like the relay's
/// (acks=all, linger 5 ms), all in flight at once; returns records acknowledged per second.
async fn bare_produce(bootstrap_servers: &str, backlog: &[BacklogRecord], headers: bool) -> anyhow::Result<f64> {
    let producer: FutureProducer = kafka_kit::client_config(bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(backlog.len());
    for record in backlog {
        let mut message = FutureRecord::to("bench-bare").key(&record.key).payload(&record.payload);
        if headers {
            message = message.headers(
                OwnedHeaders::new()
                    .insert(Header { key: kafka_kit::EVENT_ID_HEADER, value: Some(&record.event_id) })
                    .insert(Header { key: kafka_kit::EVENT_TYPE_HEADER, value: Some(&record.event_type) }),
            );
        }
        loop {
            match producer.send_result(message) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((_, returned)) => {
                    message = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    for delivery in futures_util_join(deliveries).await {
        delivery.map_err(|_| anyhow::anyhow!("delivery canceled"))?.map_err(|(error, _)| error)?;
    }
    Ok(backlog.len() as f64 / started.elapsed().as_secs_f64())
}

/// Awaits every delivery, in order.
async fn futures_util_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut outputs = Vec::with_capacity(futures.len());
    for future in futures {
        outputs.push(future.await);
    }
    outputs
}
