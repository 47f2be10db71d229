//! Phase 3: the sink's apply rate on the topic's backlog, with 1, 2 and 3 instances of the group
//! (default settings), against its two ceilings: pgbench running the sink's own statement on DB2
//! (one client, and as many as one instance applies partitions side by side), and a bare consumer
//! reading the same topic. Each drain starts from an empty DB2 and the group's offsets at the
//! start of the topic; the last one's three sinks stay for the latency phase.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::Stack;
use e2e::process::Server as _;
use e2e::stack::{DB2_NAME, ExtraSink, Service};
use serde_json::json;

use crate::latency::Curve;
use crate::measure::{CpuUse, drain_curve};
use crate::pgbench::pgbench;
use crate::{Results, Sizes};

/// Events per transaction in the ceiling of the per-event statement (what a lane applies when its batch cannot go as a set).
const APPLY_BATCH: usize = 100;
/// Events per set-based statement in its ceiling: the most a lane of the sink applies in one
/// transaction (a backlog's transactions averaged 550–660 on 2026-12-07: a smaller statement,
/// which costs DB2 more per event, so this ceiling is the stricter one).
const SET_BATCH: usize = replica_sink::LANE_BATCH;
/// DB2 connections of one sink (its `DB_POOL_SIZE` default): how many partitions it applies at once.
const SINK_CONNECTIONS: u32 = 4;
/// The sink counts of the drains.
const SINK_COUNTS: [usize; 3] = [1, 2, 3];

/// Returns the sinks added to the stack's group, which keep running, and the drain curves.
pub(crate) async fn run(
    stack: &mut Stack,
    sizes: &Sizes,
    backlog_size: i64,
    scripts: &Path,
    results: &mut Results,
) -> anyhow::Result<(Vec<ExtraSink>, Vec<Curve>)> {
    let db2 = stack.db2_client().await?;
    let on_topic =
        stack.topic_records().await?.iter().filter(|record| record.header("event_id").is_some()).count() as i64;
    let mut drains = Vec::new();
    let mut curves: Vec<Curve> = Vec::new();
    let mut extra_sinks: Vec<ExtraSink> = Vec::new();
    for sinks in SINK_COUNTS {
        stack.stop(Service::Sink).await;
        for mut sink in extra_sinks.drain(..) {
            sink.process.stop(Duration::from_secs(30)).await;
        }
        db2.batch_execute("TRUNCATE articles, processed_events, article_tombstones").await?;
        rewind_group(stack).await?;
        // Every sink starts applying at once: DB2's table stays locked until all are ready (their
        // statements wait, give up after their lock timeout and are retried).
        let mut holder = stack.db2_client().await?;
        let lock = holder.transaction().await?;
        lock.batch_execute("LOCK TABLE processed_events IN ACCESS EXCLUSIVE MODE").await?;
        stack.restart(Service::Sink).await?;
        for number in 2..=sinks {
            extra_sinks.push(stack.start_extra_sink(&format!("replica-sink-{number}")).await?);
        }
        let mut parts = vec![("sink", stack.process(Service::Sink).pid())];
        parts.extend(["sink-2", "sink-3"].into_iter().zip(&extra_sinks).map(|(name, sink)| (name, sink.process.pid())));
        parts.extend([("db2", stack.db2.process_mut().pid()), ("broker", stack.broker_mut()?.process_mut().pid())]);
        let cpu = CpuUse::start(parts);
        lock.commit().await?;
        let could_apply = Instant::now();
        let drain = drain_curve(on_topic, || async {
            Ok(db2.query_one("SELECT count(*) FROM processed_events", &[]).await?.get(0))
        })
        .await?;
        // Timed from the moment the sinks could apply, not from DB2's first commit (which would
        // leave their first batches out).
        let (rate, time) = drain.since(could_apply, on_topic);
        let (cpu, cpu_figures) = cpu.finish(on_topic as usize);
        // How large the first sink's DB2 transactions were: what its batches gave each partition.
        let metrics = e2e::ApiClient::new(&stack.url(Service::Sink)).text("/metrics").await?;
        let transactions = e2e::metric(&metrics, "sink_apply_transactions_total");
        let per_transaction = e2e::metric(&metrics, "sink_events_applied_total") / transactions.max(1.0);
        let applying = e2e::metric(&metrics, "sink_apply_duration_seconds_sum");
        let peak_rss = crate::measure::peak_rss_mib(stack.process(Service::Sink).pid()).unwrap_or(f64::NAN);
        println!(
            "sink drain of {on_topic} events, {sinks} sink(s) on the topic's partitions: {rate:>8.0}/s ({time:.1?}); {cpu}; \
             first sink: {transactions} DB2 transactions, {per_transaction:.0} events each, {applying:.1} s in them, peak RSS {peak_rss:.1} MiB"
        );
        let measured = json!({"cpu": cpu_figures, "curve": &drain.curve, "first_sink_transactions": transactions,
            "first_sink_seconds_in_transactions": applying, "first_sink_peak_rss_mib": peak_rss});
        drains.push((sinks, rate, time, measured));
        curves.push((format!("{sinks} sink(s): {rate:.0}/s"), drain.curve));
    }
    let (_, sink_rate, sink_time, _) = drains[0];
    let apply_script = scripts.join("apply.sql");
    // Where a partition's share cannot go as a set (a deletion, an article twice), the sink applies
    // it in one transaction, one statement per event, pipelined: this ceiling runs that statement (`replica_sink::apply::UPSERT`) for
    // APPLY_BATCH events per transaction in a pgbench pipeline.
    let mut upsert = replica_sink::UPSERT.to_owned();
    // Each parameter by its name; highest first, so that `$1` does not match the start of `$13`.
    for (index, name) in replica_sink::UPSERT_PARAMETERS.iter().enumerate().rev() {
        let value = match *name {
            "id" => ":id",
            "title" | "author" => "'bench'",
            "content" => "repeat('x', 300)",
            "category" | "published_at" => "NULL",
            "tags" => "'{}'",
            "status" => "'draft'",
            "views_count" => "0",
            "created_at" | "updated_at" => "now()",
            "version" => "1",
            "event_id" => "md5(random()::text)",
            _ => "'article.created'",
        };
        upsert = upsert.replace(&format!("${}", index + 1), value);
    }
    let mut script = String::from("BEGIN;\n\\startpipeline\n");
    for _ in 0..APPLY_BATCH {
        script.push_str("\\set id random(100000000, 900000000)\n");
        script.push_str(&upsert.split_whitespace().collect::<Vec<_>>().join(" "));
        script.push_str(";\n");
    }
    script.push_str("\\endpipeline\nCOMMIT;\n");
    std::fs::write(&apply_script, script)?;
    let sink_ceiling = APPLY_BATCH as f64 * pgbench(stack.db2.port, DB2_NAME, 1, sizes.phase.as_secs(), &apply_script)?;
    let parallel_ceiling =
        APPLY_BATCH as f64 * pgbench(stack.db2.port, DB2_NAME, SINK_CONNECTIONS, sizes.phase.as_secs(), &apply_script)?;
    // A backlog of creations goes through the set-based statement (`replica_sink::UPSERT_BATCH`),
    // a partition's share of a full batch at a time: its ceiling runs that statement with arrays of
    // SET_BATCH events built by PostgreSQL.
    let batch_script = scripts.join("apply-batch.sql");
    std::fs::write(&batch_script, batch_apply_script())?;
    let batch_ceiling = SET_BATCH as f64 * pgbench(stack.db2.port, DB2_NAME, 1, sizes.phase.as_secs(), &batch_script)?;
    let parallel_batch_ceiling =
        SET_BATCH as f64 * pgbench(stack.db2.port, DB2_NAME, SINK_CONNECTIONS, sizes.phase.as_secs(), &batch_script)?;
    // pgbench's rows are not replicas of anything: remove them so DB2 matches DB1 again.
    db2.batch_execute(
        "DELETE FROM articles WHERE id >= 100000000; DELETE FROM processed_events WHERE article_id >= 100000000",
    )
    .await?;
    // The other side of the sink's ceiling: a bare consumer reading the same topic from the
    // same broker, doing nothing with the records.
    let (bootstrap, topic, isolation) =
        (stack.bootstrap_servers(), stack.topic().to_owned(), stack.options.broker.isolation());
    let started = Instant::now();
    let consumed = tokio::task::spawn_blocking(move || {
        let mut consumed = 0_u64;
        kafka_kit::read_to_end(&bootstrap, &topic, isolation, Instant::now() + Duration::from_secs(600), |_| {
            consumed += 1;
        })
        .map(|_| consumed)
    })
    .await??;
    let bare_consumer_rate = consumed as f64 / started.elapsed().as_secs_f64();
    // One instance applies its partitions side by side: its ceiling is the lower of the bare
    // consumer and pgbench running its drain's statement with as many clients as it has connections.
    let ceiling = bare_consumer_rate.min(parallel_batch_ceiling);
    let (consumer_ratio, ratio) = (sink_rate / bare_consumer_rate, sink_rate / ceiling);
    let line = format!(
        "sink apply of {on_topic} events, 1 sink: {sink_rate:>8.0}/s ({sink_time:.1?})   bare consumer: \
         {bare_consumer_rate:>8.0}/s   pgbench same statement, pipelined ({APPLY_BATCH}/tx): 1 client \
         {sink_ceiling:>8.0}/s, {SINK_CONNECTIONS} clients {parallel_ceiling:>8.0}/s   batch statement ({SET_BATCH}/statement): \
         1 client {batch_ceiling:>8.0}/s, {SINK_CONNECTIONS} clients {parallel_batch_ceiling:>8.0}/s   ratio to the lower ceiling {ratio:.2}"
    );
    let drain_figures: Vec<serde_json::Value> = drains
        .iter()
        .map(|(sinks, rate, time, measured)| json!({"sinks": sinks, "per_s": rate, "seconds": time.as_secs_f64(), "measured": measured}))
        .collect();
    let figures = json!({"events": on_topic, "backlog": backlog_size, "sink_per_s": sink_rate,
        "bare_consumer_per_s": bare_consumer_rate, "consumer_ratio": consumer_ratio,
        "pgbench_events_per_s": sink_ceiling, "pgbench_parallel_events_per_s": parallel_ceiling,
        "pgbench_parallel_clients": SINK_CONNECTIONS, "pgbench_batch_events_per_s": batch_ceiling,
        "pgbench_parallel_batch_events_per_s": parallel_batch_ceiling, "events_per_batch_statement": SET_BATCH,
        "ceiling_per_s": ceiling,
        "events_per_transaction": APPLY_BATCH, "ratio": ratio, "drains": drain_figures});
    crate::report(results, "sink_apply", &line, figures);
    Ok((extra_sinks, curves))
}

/// Moves the stack's sink group back to the start of the topic (its members must be stopped):
/// the next drain applies every event again, into an empty DB2.
async fn rewind_group(stack: &Stack) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
    let (bootstrap, topic, group) = (stack.bootstrap_servers(), stack.topic().to_owned(), stack.group().to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let consumer: BaseConsumer =
            kafka_kit::client_config(&bootstrap).set("group.id", &group).set("enable.auto.commit", "false").create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let mut start = rdkafka::TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|topic| topic.partitions()) {
            let (low, _) = consumer.fetch_watermarks(&topic, partition.id(), Duration::from_secs(10))?;
            start.add_partition_offset(&topic, partition.id(), rdkafka::Offset::Offset(low))?;
        }
        consumer.commit(&start, CommitMode::Sync)?;
        Ok(())
    })
    .await?
}

/// A pgbench script running `replica_sink::UPSERT_BATCH` once per transaction, each parameter an
/// array of [`SET_BATCH`] values built by PostgreSQL.
fn batch_apply_script() -> String {
    let mut statement = replica_sink::UPSERT_BATCH.to_owned();
    // Highest first, so that `$1` does not match the start of `$13`.
    for (index, name) in replica_sink::UPSERT_PARAMETERS.iter().enumerate().rev() {
        let value = match *name {
            "id" => ":id + g",
            "title" | "author" => "'bench'::text",
            "content" => "repeat('x', 300)",
            "category" => "NULL::text",
            "published_at" => "NULL::timestamptz",
            "tags" => "'[]'::text",
            "status" => "'draft'::text",
            "views_count" => "0::bigint",
            "created_at" | "updated_at" => "now()",
            "version" => "1::bigint",
            "event_id" => "md5(random()::text)",
            _ => "'article.created'::text",
        };
        let array = format!("(SELECT array_agg({value}) FROM generate_series(0, {}) g)", SET_BATCH - 1);
        statement = statement.replace(&format!("${}", index + 1), &array);
    }
    format!("\\set id random(100000000, 900000000)\n{};\n", statement.split_whitespace().collect::<Vec<_>>().join(" "))
}
