//! Phase 7 (`--long-run SECONDS`): bounded state over a long run. Every sink of the earlier
//! phases is stopped and one sink runs alone with a short `SINK_PROCESSED_RETENTION`; then updates
//! of a fixed set of articles flow through the whole pipeline at a steady rate, and every
//! interval the phase samples DB2's size, the rows of `processed_events` and the sink's apply
//! rate. Without pruning `processed_events` grows by a row per event for ever; with it, it levels
//! off at about retention × rate rows, and DB2's size with it.

use std::time::{Duration, Instant};

use e2e::Stack;
use serde_json::json;

use crate::{Results, Sizes};

/// What the sink keeps in `processed_events` during the long run (its default is 7 days).
const RETENTION: &str = "60s";
/// Articles the run keeps updating: DB2's `articles` stays this size.
const ARTICLES: i64 = 500;

/// One sample of DB2.
struct Sample {
    at: f64,
    db2_bytes: i64,
    processed_rows: i64,
    applied: f64,
}

pub(crate) async fn run(stack: &mut Stack, sizes: &Sizes, results: &mut Results) -> anyhow::Result<()> {
    let (duration, rate, interval) = (sizes.long_run, sizes.long_run_rate, sizes.long_run_sample);
    stack.stop(e2e::stack::Service::Sink).await;
    let mut sink = stack.start_extra_sink_with("sink-long-run", &[("SINK_PROCESSED_RETENTION", RETENTION)]).await?;
    let sink_metrics = e2e::ApiClient::new(&format!("http://127.0.0.1:{}", sink.port));
    let api = stack.api();
    let mut ids = Vec::new();
    for i in 0..ARTICLES {
        ids.push(api.create(&json!({"title": format!("long run {i}"), "content": "c", "author": "bench"})).await?.id);
    }
    let db2 = stack.db2_client().await?;
    let started = Instant::now();
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            let mut writes = Vec::new();
            let mut i = 0usize;
            while started.elapsed() < duration {
                ticker.tick().await;
                let (api, id) = (api.clone(), ids[i % ids.len()]);
                writes
                    .push(tokio::spawn(async move { api.patch(id, &json!({"content": format!("update {i}")})).await }));
                i += 1;
            }
            let mut refused = 0usize;
            for write in writes {
                if write.await.map_or(true, |result| result.is_err()) {
                    refused += 1;
                }
            }
            (i, refused)
        })
    };
    let mut samples = Vec::new();
    while !writer.is_finished() {
        samples.push(sample(&db2, &sink_metrics, started).await?);
        tokio::time::sleep(interval).await;
    }
    let (written, refused) = writer.await?;
    stack.wait_for_replica(Duration::from_secs(300)).await?;
    samples.push(sample(&db2, &sink_metrics, started).await?);
    sink.process.stop(Duration::from_secs(30)).await;

    let rates: Vec<f64> = samples
        .windows(2)
        .map(|pair| (pair[1].applied - pair[0].applied) / (pair[1].at - pair[0].at).max(0.001))
        .collect();
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let peak_rows = samples.iter().map(|sample| sample.processed_rows).max().unwrap_or_default();
    let mib = |bytes: i64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "long run, {:.0} s of updates at {rate}/s to {ARTICLES} articles ({written} written, {refused} refused), sink retention {RETENTION}: \
         DB2 {:.1} MiB → {:.1} MiB, processed_events peak {peak_rows} rows, last {} rows; apply rate per interval min {:.0}/s, max {:.0}/s",
        duration.as_secs_f64(),
        mib(first.db2_bytes),
        mib(last.db2_bytes),
        last.processed_rows,
        rates.iter().copied().fold(f64::INFINITY, f64::min),
        rates.iter().copied().fold(0.0, f64::max),
    );
    let series: Vec<serde_json::Value> = samples
        .iter()
        .map(|sample| {
            json!({"seconds": sample.at, "db2_bytes": sample.db2_bytes, "processed_events_rows": sample.processed_rows,
                "applied_total": sample.applied})
        })
        .collect();
    results.insert(
        "long_run".into(),
        json!({"seconds": duration.as_secs_f64(), "rate": rate, "articles": ARTICLES, "written": written,
            "refused": refused, "retention": RETENTION, "samples": series}),
    );
    Ok(())
}

async fn sample(db2: &tokio_postgres::Client, sink: &e2e::ApiClient, started: Instant) -> anyhow::Result<Sample> {
    let row = db2
        .query_one("SELECT pg_database_size(current_database()), (SELECT count(*) FROM processed_events)", &[])
        .await?;
    let applied = e2e::metric(&sink.text("/metrics").await?, "sink_events_applied_total");
    Ok(Sample { at: started.elapsed().as_secs_f64(), db2_bytes: row.get(0), processed_rows: row.get(1), applied })
}
