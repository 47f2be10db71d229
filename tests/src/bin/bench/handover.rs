//! Phase 5: relay handovers. End-to-end latency at a steady rate while the relay is replaced the
//! way a rolling deploy does it (a new instance starts as a standby, then the old one gets
//! SIGTERM once the new one reports `outbox_relay_standby_ready`), and the time from a relay's
//! start to its first publish after its predecessor stopped cleanly and after it crashed (which
//! costs the predecessor's declared bound).

use std::time::{Duration, Instant};

use e2e::Stack;
use e2e::stack::Service;
use serde_json::json;

use crate::latency::{end_to_end, percentile};
use crate::{Results, Sizes};

/// The write rate of the rolling restart.
const ROLLING_RATE: u64 = 200;

pub(crate) async fn run(stack: &mut Stack, sizes: &Sizes, results: &mut Results) -> anyhow::Result<()> {
    let steady = steady(stack, sizes).await?;
    let rolling = rolling_restart(stack, sizes).await?;
    let after_clean_stop = first_publish_after(stack, false).await?;
    let after_crash = first_publish_after(stack, true).await?;
    println!(
        "relay start to first publish: after a clean stop {:>7.1} ms, after a crash {:>7.1} ms",
        after_clean_stop.as_secs_f64() * 1000.0,
        after_crash.as_secs_f64() * 1000.0
    );
    results.insert(
        "handover".into(),
        json!({"steady": steady, "rolling_restart": rolling, "first_publish_after_clean_stop_ms": after_clean_stop.as_secs_f64() * 1000.0,
            "first_publish_after_crash_ms": after_crash.as_secs_f64() * 1000.0}),
    );
    Ok(())
}

/// The same writes as [`rolling_restart`] with no restart: what the pipeline's own tail is at
/// that rate, the floor under the rolling restart's figures.
async fn steady(stack: &mut Stack, sizes: &Sizes) -> anyhow::Result<serde_json::Value> {
    let measured = end_to_end(stack, ROLLING_RATE, rolling_duration(sizes)).await?;
    report_latencies("with no restart", measured)
}

/// How long the rolling restart's writes last.
fn rolling_duration(sizes: &Sizes) -> Duration {
    sizes.phase.max(Duration::from_secs(3))
}

/// Prints and returns the figures of end-to-end latencies at [`ROLLING_RATE`].
fn report_latencies(
    during: &str,
    (latencies, written): (Vec<f64>, crate::latency::Written),
) -> anyhow::Result<serde_json::Value> {
    let crate::latency::Written { sent, refused, .. } = written;
    let (p50, p99, max) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99), percentile(&latencies, 1.0));
    println!(
        "end-to-end at {ROLLING_RATE:>4} writes/s {during}: p50 {p50:>7.1} ms  p99 {p99:>7.1} ms  max {max:>7.1} ms  ({} of {sent} seen, {refused} refused by the API)",
        latencies.len()
    );
    Ok(
        json!({"rate": ROLLING_RATE, "sent": sent, "seen": latencies.len(), "refused": refused, "p50_ms": p50, "p99_ms": p99, "max_ms": max}),
    )
}

/// Writes at [`ROLLING_RATE`] while a second relay starts and the first is stopped with SIGTERM a
/// third of the way in; then the first is started again and the second stopped (a clean
/// handover back).
async fn rolling_restart(stack: &mut Stack, sizes: &Sizes) -> anyhow::Result<serde_json::Value> {
    let duration = rolling_duration(sizes);
    let replace = async {
        tokio::time::sleep(duration / 3).await;
        let port = e2e::free_port();
        let successor = stack.start_extra_relay("outbox-relay-next", port).await?;
        // As a rolling deploy that watches it would: the old leader is stopped once its
        // successor holds its producers connected, ready to take over.
        e2e::wait::until("the successor to be ready to take over", Duration::from_secs(30), || async {
            Ok(e2e::metric(&e2e::metrics_at(port).await?, "outbox_relay_standby_ready") == 1.0)
        })
        .await?;
        stack.signal(Service::Relay, "TERM").await?;
        anyhow::Ok(successor)
    };
    let (measured, successor) = tokio::join!(end_to_end(stack, ROLLING_RATE, duration), replace);
    let measured = measured?;
    let mut successor = successor?;
    // Reaps the first relay (it exited on SIGTERM) and starts it again as a standby.
    stack.stop(Service::Relay).await;
    stack.restart(Service::Relay).await?;
    successor.stop(Duration::from_secs(30)).await;
    report_latencies("through a rolling restart of the relay", measured)
}

/// Stops the relay (SIGKILL when `crash`, else SIGTERM), commits one change, starts the relay
/// again and returns the time from its start to the change leaving the outbox.
async fn first_publish_after(stack: &mut Stack, crash: bool) -> anyhow::Result<Duration> {
    if crash {
        stack.kill(Service::Relay);
    } else {
        stack.stop(Service::Relay).await;
    }
    stack.api().create(&json!({"title": "handover", "content": "c", "author": "bench"})).await?;
    let db1 = stack.db1_client().await?;
    let started = Instant::now();
    stack.process(Service::Relay).restart()?;
    loop {
        let waiting: i64 = db1.query_one("SELECT count(*) FROM outbox", &[]).await?.get(0);
        if waiting == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("the relay did not publish within 120 s of its start");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
