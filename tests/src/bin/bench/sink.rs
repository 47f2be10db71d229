//! Phase 3: the sink's apply rate on the topic's backlog against its two ceilings: pgbench running
//! the sink's own statement on DB2, and a bare consumer reading the same topic.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::Stack;
use e2e::stack::{DB2_NAME, Service};
use serde_json::json;

use crate::measure::drain_rate;
use crate::pgbench::pgbench;
use crate::{Results, Sizes};

/// Events per transaction in the sink's ceiling (the sink applies up to 500 waiting records at once).
const APPLY_BATCH: usize = 100;

pub(crate) async fn run(
    stack: &mut Stack,
    sizes: &Sizes,
    backlog_size: i64,
    scripts: &Path,
    results: &mut Results,
) -> anyhow::Result<()> {
    let db2 = stack.db2_client().await?;
    let applied_before: i64 = db2.query_one("SELECT count(*) FROM processed_events", &[]).await?.get(0);
    let on_topic = backlog_size + applied_before;
    stack.restart(Service::Sink).await?;
    let (sink_rate, sink_time) = drain_rate(on_topic, || async {
        Ok(db2.query_one("SELECT count(*) FROM processed_events", &[]).await?.get(0))
    })
    .await?;
    let apply_script = scripts.join("apply.sql");
    // The sink applies the records waiting for it in one transaction, one statement per event,
    // pipelined: the ceiling runs the very same statement (`replica_sink::apply::UPSERT`) for
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
    let (consumer_ratio, ratio) = (sink_rate / bare_consumer_rate, sink_rate / sink_ceiling);
    let line = format!(
        "sink apply of {backlog_size} events: {sink_rate:>8.0}/s ({sink_time:.1?})   bare consumer: \
         {bare_consumer_rate:>8.0}/s   ratio {consumer_ratio:.2}   pgbench same statement, pipelined \
         ({APPLY_BATCH}/tx): {sink_ceiling:>8.0}/s   ratio {ratio:.2}"
    );
    let figures = json!({"events": backlog_size, "sink_per_s": sink_rate, "bare_consumer_per_s": bare_consumer_rate,
        "consumer_ratio": consumer_ratio, "pgbench_events_per_s": sink_ceiling,
        "events_per_transaction": APPLY_BATCH, "ratio": ratio});
    crate::report(results, "sink_apply", &line, figures);
    Ok(())
}
