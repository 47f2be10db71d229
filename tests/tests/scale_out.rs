//! Scale-out (docs/architecture.md, "Scaling out"): a 6-partition topic consumed by a group of
//! sinks, with real processes on Apache Kafka. Sinks and the broker are killed mid-write, a sink
//! joins and others leave while events flow, and a sink frozen in the middle of a DB2
//! transaction loses its partitions and applies its batch late: DB2 still equals DB1, each event
//! is recorded once in `processed_events`, and the topic holds every change once, in order.

use std::time::Duration;

use e2e::process::Server as _;
use e2e::stack::{FAST_TAKEOVER, Service, wait_ready_at};
use e2e::{Stack, workload};
use serde_json::json;

const SYNC_TIMEOUT: Duration = Duration::from_secs(180);
const PARTITIONS: &str = "6";

/// A stack whose relay creates a 6-partition topic, on a broker of its own when `own_broker`.
async fn six_partitions(own_broker: bool) -> anyhow::Result<Stack> {
    Stack::start_for_test_configured(|options| {
        if own_broker {
            options.shared_broker = None;
        }
        options.relay_delivery_timeout = Some(FAST_TAKEOVER);
        options.service_env_by_name.push((Service::Relay, "KAFKA_TOPIC_PARTITIONS".into(), PARTITIONS.into()));
    })
    .await
}

/// A counter of the sink serving on `port`.
async fn sink_counter(port: u16, name: &str) -> anyhow::Result<f64> {
    Ok(e2e::metric(&e2e::metrics_at(port).await?, name))
}

/// Waits until the sink serving on `port` has applied an event.
async fn wait_applying(port: u16) -> anyhow::Result<()> {
    e2e::wait::until("the sink to apply events", SYNC_TIMEOUT, || async {
        Ok(sink_counter(port, "sink_events_applied_total").await? > 0.0)
    })
    .await
}

/// DB2 records each event once: as many `processed_events` rows as events on the topic.
async fn assert_one_processed_row_per_event(stack: &Stack, events: usize) -> anyhow::Result<()> {
    let rows: i64 = stack.db2_client().await?.query_one("SELECT count(*) FROM processed_events", &[]).await?.get(0);
    assert_eq!(usize::try_from(rows)?, events, "one processed_events row per event");
    Ok(())
}

/// The acceptance's run: 3 sinks on 6 partitions; one sink and the broker SIGKILLed mid-write and
/// restarted; a fourth sink joins; one leaves with SIGTERM, one dies with SIGKILL for good.
#[tokio::test(flavor = "multi_thread")]
async fn three_sinks_on_six_partitions_survive_kills_joins_and_leaves() -> anyhow::Result<()> {
    let mut stack = six_partitions(true).await?;
    let mut second = stack.start_extra_sink("replica-sink-2").await?;
    let mut third = stack.start_extra_sink("replica-sink-3").await?;
    let writes = workload::Unbounded::start(&stack.api(), 4, Duration::from_millis(10));
    for port in [stack.port(Service::Sink), second.port, third.port] {
        wait_applying(port).await?;
    }
    let mut rng = fastrand::Rng::new();
    let pause = |rng: &mut fastrand::Rng| Duration::from_millis(rng.u64(200..1200));

    stack.kill(Service::Sink);
    tokio::time::sleep(pause(&mut rng)).await;
    stack.restart(Service::Sink).await?;

    tokio::time::sleep(pause(&mut rng)).await;
    stack.broker_mut()?.process_mut().kill();
    tokio::time::sleep(pause(&mut rng)).await;
    stack.broker_mut()?.restart().await?;

    let fourth = stack.start_extra_sink("replica-sink-4").await?;
    wait_applying(fourth.port).await?;
    assert_eq!(second.process.stop(Duration::from_secs(30)).await, Some(0), "a leaving sink exits 0 on SIGTERM");
    tokio::time::sleep(pause(&mut rng)).await;
    third.process.kill();
    // The sinks left keep applying the partitions of those gone.
    let applied = sink_counter(fourth.port, "sink_events_applied_total").await?;
    e2e::wait::until("the remaining sinks to take the partitions over", SYNC_TIMEOUT, || async {
        Ok(sink_counter(fourth.port, "sink_events_applied_total").await? > applied)
    })
    .await?;

    let report = writes.finish().await?;
    let topic = stack.assert_exactly_once(&report, SYNC_TIMEOUT).await?;
    assert_one_processed_row_per_event(&stack, topic.events).await?;
    let partitions: std::collections::BTreeSet<i32> =
        stack.topic_records().await?.iter().map(|record| record.partition).collect();
    assert_eq!(partitions.len(), 6, "the articles spread over the 6 partitions: {partitions:?}");
    assert!(fourth.process.log_contains("partitions assigned"), "the joining sink was given partitions");
    Ok(())
}

/// A sink frozen (SIGSTOP) in the middle of a DB2 transaction: the server ends its transaction,
/// the group gives its partitions to another sink, which applies the same events and newer ones
/// while the first is still stopped. Resumed, the first applies its batch late — and changes
/// nothing: the event is already in `processed_events`, and the article is newer.
#[tokio::test(flavor = "multi_thread")]
async fn a_sink_frozen_mid_transaction_applies_late_and_changes_nothing() -> anyhow::Result<()> {
    let stack = six_partitions(false).await?;
    let api = stack.api();
    let article = api.create(&json!({"title": "v1", "content": "c", "author": "a"})).await?;
    stack.wait_for_replica(SYNC_TIMEOUT).await?;

    // Hold the article's row in DB2, so that the sink's next apply of it waits inside its
    // transaction, then freeze the sink there.
    let mut db2 = stack.db2_client().await?;
    let holder = db2.transaction().await?;
    holder.execute("SELECT 1 FROM articles WHERE id = $1 FOR UPDATE", &[&article.id]).await?;
    api.patch(article.id, &json!({"title": "v2"})).await?;
    let watcher = stack.db2_client().await?;
    e2e::wait::until("the sink to wait for the row inside its transaction", SYNC_TIMEOUT, || async {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
                &[],
            )
            .await?
            .get(0);
        Ok(waiting > 0)
    })
    .await?;
    stack.signal(Service::Sink, "STOP").await?;
    holder.rollback().await?;

    // Another sink takes the partitions over while the first is still frozen, and applies v2 and v3.
    let second = stack.start_extra_sink("replica-sink-2").await?;
    stack.wait_for_replica(SYNC_TIMEOUT).await?;
    api.patch(article.id, &json!({"title": "v3"})).await?;
    let replica = stack.wait_for_replica(SYNC_TIMEOUT).await?;
    let before_resume = replica.iter().find(|replicated| replicated.id == article.id).cloned();
    assert_eq!(before_resume.as_ref().map(|a| (a.title.as_str(), a.version)), Some(("v3", 3)));

    stack.signal(Service::Sink, "CONT").await?;
    let first = stack.port(Service::Sink);
    e2e::wait::until("the resumed sink to apply its batch late", SYNC_TIMEOUT, || async {
        Ok(sink_counter(first, "sink_events_duplicate_total").await? >= 1.0)
    })
    .await?;
    wait_ready_at("replica-sink", first).await?;
    let replica = stack.wait_for_replica(SYNC_TIMEOUT).await?;
    assert_eq!(
        replica.iter().find(|replicated| replicated.id == article.id).cloned(),
        before_resume,
        "the late apply changed nothing"
    );
    assert!(sink_counter(second.port, "sink_events_applied_total").await? >= 2.0, "the second sink applied v2 and v3");
    let events = stack.topic_records().await?.iter().filter(|record| record.header("event_id").is_some()).count();
    assert_eq!(events, 3);
    assert_one_processed_row_per_event(&stack, events).await?;
    Ok(())
}
