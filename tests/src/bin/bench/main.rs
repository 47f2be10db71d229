//! `bench`: measures the pipeline against the physical ceilings of the parts it drives, side by
//! side in one run (these machines are shared and noisy, so every figure is a ratio measured now):
//!
//! 1. API creates/s at 8 and 32 connections vs pgbench running the same SQL on the same DB1.
//! 2. Relay drain of an outbox backlog vs a bare rdkafka producer sending the same payloads.
//! 3. Sink apply rate on a topic backlog, with 1, 2 and 3 sinks, vs pgbench running the sink's
//!    apply SQL on DB2 and a bare consumer.
//! 4. End-to-end latency (API response → row visible in DB2's `processed_events`) at two rates,
//!    with 3 sinks on the topic's 6 partitions, after a warm-up at the first rate, and the
//!    broker's own floor at the same rates (records produced the relay's way and read as the sink
//!    reads, no database on either side).
//! 5. Peak RSS of each service.
//! 6. Bounded state over a long run: DB2's size and the sink's apply rate while updates flow for
//!    `--long-run-secs`, with a sink pruning `processed_events` past a short retention.
//!
//! Everything runs on one broker of its own, the one `BROKER` names (Apache Kafka by default, or
//! nisshi), so each ceiling is measured on the broker the pipeline used; `scripts/bench.sh` runs
//! it once per broker. Prints a table, writes `results.json` and `latency.svg` into `--out`.
//! `--short` proves the benchmark works (CI); it asserts nothing about speed.

mod api;
mod floor;
mod handover;
mod latency;
mod longrun;
mod measure;
mod pgbench;
mod relay;
mod sink;

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use clap::Parser;
use e2e::Stack;
use e2e::process::Server as _;
use e2e::stack::{FAST_TAKEOVER, Service};
use serde_json::json;

/// Partitions of the topic the relay creates (as `scripts/stack.sh` and compose do).
const PARTITIONS: u32 = 6;

/// What the run measured, written to `results.json`.
type Results = serde_json::Map<String, serde_json::Value>;

/// Prints a phase's line of the table and keeps its figures under `key`.
fn report(results: &mut Results, key: &str, line: &str, figures: serde_json::Value) {
    println!("{line}");
    results.insert(key.to_owned(), figures);
}

/// Writes what the run measured to `results.json` in `out`.
fn write_results(out: &std::path::Path, results: &Results) -> anyhow::Result<()> {
    Ok(std::fs::write(out.join("results.json"), serde_json::to_string_pretty(results)?)?)
}

/// The pipeline's processes whose CPU the latency phase counts: the services, both databases
/// (with their backends) and the broker.
fn pipeline_parts(stack: &mut Stack, extra_sinks: &[e2e::stack::ExtraSink]) -> anyhow::Result<latency::Parts> {
    let mut parts: latency::Parts = vec![
        ("api", stack.process(Service::Api).pid()),
        ("db1", stack.db1.process_mut().pid()),
        ("relay", stack.process(Service::Relay).pid()),
        ("broker", stack.broker_mut()?.process_mut().pid()),
        ("sink", stack.process(Service::Sink).pid()),
    ];
    parts.extend(["sink-2", "sink-3"].into_iter().zip(extra_sinks).map(|(name, sink)| (name, sink.process.pid())));
    parts.extend([("db2", stack.db2.process_mut().pid()), ("bench", Some(std::process::id()))]);
    Ok(parts)
}

/// 5. Peak RSS of each service and of the broker (for comparison: a JVM against nisshi).
fn peak_rss(stack: &mut Stack, extra_sinks: &[e2e::stack::ExtraSink], results: &mut Results) -> anyhow::Result<()> {
    let mut rss = serde_json::Map::new();
    let mut processes: Vec<(&str, Option<u32>)> = [Service::Api, Service::Relay, Service::Sink]
        .into_iter()
        .map(|service| (service.binary_name(), stack.process(service).pid()))
        .collect();
    processes.extend(extra_sinks.iter().map(|sink| (sink.process.name(), sink.process.pid())));
    processes.push(("broker", stack.broker_mut()?.process_mut().pid()));
    for (name, pid) in processes {
        let peak = measure::peak_rss_mib(pid);
        println!("peak RSS {name:<13} {:>6.1} MiB", peak.unwrap_or(f64::NAN));
        rss.insert(name.into(), json!(peak));
    }
    results.insert("peak_rss_mib".into(), json!(rss));
    Ok(())
}

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
    /// The sink's `KAFKA_ISOLATION_LEVEL` (unset: the stack's), to measure what reading only
    /// committed transactions costs in latency.
    #[arg(long)]
    sink_isolation_level: Option<kafka_kit::Isolation>,
    /// How long the bounded-state phase writes (0: skip it); default 300 s, 10 s with `--short`.
    #[arg(long)]
    long_run_secs: Option<u64>,
    /// Measure only the broker's latency floor (phase 4b), against the broker at these bootstrap
    /// servers, with no stack: the floor of a broker that serves nothing else.
    #[arg(long, value_name = "BOOTSTRAP_SERVERS")]
    floor_only: Option<String>,
    /// Measure only the relay's drain against the bare producers (phase 2), on a stack of its own:
    /// a quick run while working on the relay.
    #[arg(long)]
    relay_only: bool,
    /// Measure only the end-to-end latency (phase 4, with its stages) and the services' peak RSS,
    /// on a stack of its own with 3 sinks: a quick run while working on latency.
    #[arg(long, conflicts_with = "relay_only")]
    latency_only: bool,
    /// Measure only the sinks' drains against their ceilings (phase 3), on a stack of its own whose
    /// relay publishes the backlog first, unmeasured: a quick run while working on the sink.
    #[arg(long, conflicts_with_all = ["relay_only", "latency_only"])]
    sink_only: bool,
    /// How long the latency phase writes at its first rate, unmeasured, before it measures (0: a
    /// cold start); default 30 s, 1 s with `--short`. A freshly started broker's JVM compiles its
    /// hot paths first (with C2, about half the broker's CPU for its first minute; docs/performance.md).
    #[arg(long)]
    warmup_secs: Option<u64>,
    /// The relay's `RELAY_BATCH_SIZE` (unset: the relay's default), to measure what larger rounds buy.
    #[arg(long, value_name = "ROWS")]
    relay_batch_size: Option<u32>,
}

/// How long each phase runs and how much it moves.
struct Sizes {
    /// How long each measured phase runs.
    phase: Duration,
    /// Outbox rows the relay drains (and the sink then applies).
    backlog: i64,
    /// Write rates of the latency phase, per second.
    rates: [u64; 2],
    /// Writes at the first rate before the latency phase measures anything.
    warmup: Duration,
    /// The bounded-state phase: how long, at what rate, sampled how often.
    long_run: Duration,
    long_run_rate: u64,
    long_run_sample: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let sizes = if cli.short {
        Sizes {
            phase: Duration::from_secs(2),
            backlog: 3_000,
            rates: [50, 100],
            warmup: Duration::from_secs(cli.warmup_secs.unwrap_or(1)),
            long_run: Duration::from_secs(cli.long_run_secs.unwrap_or(10)),
            long_run_rate: 50,
            long_run_sample: Duration::from_secs(2),
        }
    } else {
        Sizes {
            phase: Duration::from_secs(10),
            backlog: 100_000,
            rates: [1000, 2000],
            warmup: Duration::from_secs(cli.warmup_secs.unwrap_or(30)),
            long_run: Duration::from_secs(cli.long_run_secs.unwrap_or(300)),
            long_run_rate: 500,
            long_run_sample: Duration::from_secs(10),
        }
    };
    std::fs::create_dir_all(&cli.out)?;
    let mut results = serde_json::Map::new();
    if let Some(bootstrap) = &cli.floor_only {
        floor::run(bootstrap, &sizes, &mut results).await?;
        results.insert("broker".into(), json!(bootstrap));
        write_results(&cli.out, &results)?;
        return Ok(());
    }
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
            .chain(
                cli.sink_isolation_level
                    .map(|level| (Service::Sink, "KAFKA_ISOLATION_LEVEL".to_owned(), level.to_string())),
            )
            .chain(cli.relay_batch_size.map(|rows| (Service::Relay, "RELAY_BATCH_SIZE".to_owned(), rows.to_string())))
            .chain([(Service::Relay, "KAFKA_TOPIC_PARTITIONS".to_owned(), PARTITIONS.to_string())])
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
    results.insert("relay_batch_size".into(), json!(cli.relay_batch_size));
    results.insert("sink_isolation_level".into(), json!(cli.sink_isolation_level.map(|level| level.to_string())));
    let scripts = tempfile::tempdir()?;

    // One article through the whole pipeline first, so that the topic exists and the sink's group
    // has its assignment before the sink is stopped (nisshi did not assign partitions to a member
    // that joined after one that left before the topic existed).
    stack.api().create(&json!({"title": "first", "content": "c", "author": "bench"})).await?;
    stack.wait_for_replica(Duration::from_secs(60)).await?;

    if cli.relay_only {
        stack.stop(Service::Relay).await;
        stack.stop(Service::Sink).await;
        relay::run(&mut stack, &sizes, &mut results).await?;
        results.insert("date".into(), json!(Utc::now().to_rfc3339()));
        write_results(&cli.out, &results)?;
        stack.shutdown().await;
        return Ok(());
    }
    if cli.sink_only {
        stack.stop(Service::Relay).await;
        let backlog_size = relay::publish_backlog(&mut stack, &sizes).await?;
        let (extra_sinks, drain_curves) =
            sink::run(&mut stack, &sizes, backlog_size, scripts.path(), &mut results).await?;
        for mut sink in extra_sinks {
            sink.process.stop(Duration::from_secs(30)).await;
        }
        results.insert("date".into(), json!(Utc::now().to_rfc3339()));
        write_results(&cli.out, &results)?;
        std::fs::write(cli.out.join("latency.svg"), latency::svg_plot(&Vec::new(), &drain_curves))?;
        stack.shutdown().await;
        return Ok(());
    }
    if cli.latency_only {
        let mut extra_sinks = Vec::new();
        for number in 2..=3 {
            extra_sinks.push(stack.start_extra_sink(&format!("replica-sink-{number}")).await?);
        }
        // The group's rebalance over before the first measured write.
        tokio::time::sleep(Duration::from_secs(5)).await;
        stack.api().create(&json!({"title": "warm-up", "content": "c", "author": "bench"})).await?;
        stack.wait_for_replica(Duration::from_secs(60)).await?;
        let parts = pipeline_parts(&mut stack, &extra_sinks)?;
        let series = latency::run(&stack, &sizes, &parts, &mut results).await?;
        peak_rss(&mut stack, &extra_sinks, &mut results)?;
        results.insert("date".into(), json!(Utc::now().to_rfc3339()));
        write_results(&cli.out, &results)?;
        std::fs::write(cli.out.join("latency.svg"), latency::svg_plot(&series, &[]))?;
        for mut sink in extra_sinks {
            sink.process.stop(Duration::from_secs(30)).await;
        }
        stack.shutdown().await;
        return Ok(());
    }
    api::run(&mut stack, &sizes, scripts.path(), &mut results).await?;
    let backlog_size = relay::run(&mut stack, &sizes, &mut results).await?;
    // The sinks the drains added to the group stay: the latency phase runs with 3.
    let (extra_sinks, drain_curves) = sink::run(&mut stack, &sizes, backlog_size, scripts.path(), &mut results).await?;
    let parts = pipeline_parts(&mut stack, &extra_sinks)?;
    let series = latency::run(&stack, &sizes, &parts, &mut results).await?;
    floor::run(&stack.bootstrap_servers(), &sizes, &mut results).await?;
    handover::run(&mut stack, &sizes, &mut results).await?;
    peak_rss(&mut stack, &extra_sinks, &mut results)?;
    // Last, since it replaces every sink by one that prunes.
    for mut sink in extra_sinks {
        sink.process.stop(Duration::from_secs(30)).await;
    }
    if !sizes.long_run.is_zero() {
        longrun::run(&mut stack, &sizes, &mut results).await?;
    }
    results.insert("short".into(), json!(cli.short));
    results.insert("date".into(), json!(Utc::now().to_rfc3339()));

    write_results(&cli.out, &results)?;
    std::fs::write(cli.out.join("latency.svg"), latency::svg_plot(&series, &drain_curves))?;
    println!("results: {}, plot: {}", cli.out.join("results.json").display(), cli.out.join("latency.svg").display());
    stack.shutdown().await;
    Ok(())
}
