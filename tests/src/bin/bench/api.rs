//! Phase 1: API creates/s at 8 and 32 connections against pgbench running the API's statements on
//! the same DB1, with the relay and the sink stopped (their backlog feeds phases 2 and 3).

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::stack::{DB1_NAME, Service};
use e2e::{ApiClient, Stack};
use serde_json::json;

use crate::pgbench::pgbench;
use crate::{Results, Sizes};

pub(crate) async fn run(stack: &mut Stack, sizes: &Sizes, scripts: &Path, results: &mut Results) -> anyhow::Result<()> {
    let api = stack.api();
    stack.stop(Service::Relay).await;
    stack.stop(Service::Sink).await;
    api_throughput(&api, 8, Duration::from_secs(1)).await?; // warm-up
    // The API's statements: insert the article (RETURNING), insert the outbox row with the event
    // JSON as a parameter (here a literal of the same size), in one transaction. The API's
    // wake-ups of the relay, sent after its commits and folded together (`outbox::RelayWaker`),
    // are left out: extra work on the API's side of the ratio.
    let create_script = scripts.join("create.sql");
    let sample_payload = serde_json::to_string(&json!({
        "event_id": "6f1c2b8e-7a51-4a8e-9c43-0d9a3f5b2e11", "event_type": "article.created",
        "timestamp": "2026-11-22T01:00:00.000000Z",
        "data": {"id": 1, "title": "bench", "content": "x".repeat(300), "author": "bench", "category": null, "tags": [],
                 "status": "draft", "views_count": 0, "created_at": "2026-11-22T01:00:00.000000Z",
                 "updated_at": "2026-11-22T01:00:00.000000Z", "published_at": null, "version": 1}
    }))?;
    // pgbench reads `:name` as a variable, even inside a literal: colons travel as `~`.
    let escaped = sample_payload.replace('\'', "''").replace(':', "~");
    let script = |notify_inside: &str| {
        format!(
            "BEGIN;\nINSERT INTO articles (title, content, author, category, tags) VALUES ('bench', repeat('x', 300), 'bench', NULL, '{{}}') \
             RETURNING id, title, content, author, tags, status, views_count, created_at, updated_at, version \\gset\n\
             INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, trace_context) VALUES (gen_random_uuid(), 'article', CAST(:id AS text), 'article.created', replace('{escaped}', '~', ':'), NULL);\n\
             {notify_inside}COMMIT;\n"
        )
    };
    std::fs::write(&create_script, script(""))?;
    // What the API ran until 2026-12-08, notifying inside the transaction: the ceiling it had then.
    let notify_inside_script = scripts.join("create-notify-inside.sql");
    std::fs::write(&notify_inside_script, script("SELECT pg_notify('outbox_new', '');\n"))?;
    let mut api_rows = Vec::new();
    for clients in [8_u32, 32] {
        let api_rate = api_throughput(&api, clients as usize, sizes.phase).await?;
        let ceiling = pgbench(stack.db1.port, DB1_NAME, clients, sizes.phase.as_secs(), &create_script)?;
        let notify_inside = pgbench(stack.db1.port, DB1_NAME, clients, sizes.phase.as_secs(), &notify_inside_script)?;
        println!(
            "API creates/s at {clients:>2} connections: {api_rate:>8.0}   pgbench same SQL: {ceiling:>8.0}   ratio {:.2}   \
             (pgbench with the NOTIFY inside the transaction, as before 2026-12-08: {notify_inside:>8.0}, API's ratio to it {:.2})",
            api_rate / ceiling,
            api_rate / notify_inside
        );
        api_rows.push(json!({"connections": clients, "api_per_s": api_rate, "pgbench_tps": ceiling,
            "ratio": api_rate / ceiling, "pgbench_notify_inside_tps": notify_inside,
            "ratio_to_notify_inside": api_rate / notify_inside}));
    }
    results.insert("api_writes".into(), json!(api_rows));
    Ok(())
}

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
