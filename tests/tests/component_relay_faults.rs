//! The relay in-process under faults it must survive without stalling or guessing: rows the broker
//! refuses (dead letters, `blogctl outbox dead-letters`), a lost or replaced log, and handovers
//! after a clean stop and after a crash (docs/guarantees.md).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use e2e::broker::BrokerKind;
use e2e::component::{Outbox, enqueue, enqueue_payload, events, outbox_rows};
use e2e::replica::topic_records;
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(60);

async fn relay_metrics(relay: &e2e::component::Running) -> anyhow::Result<String> {
    e2e::ApiClient::new(&relay.url()).text("/metrics").await
}

/// How many times each event id of ours is on the topic, and the keys in log order per article.
async fn on_topic(outbox: &Outbox) -> anyhow::Result<(HashMap<Uuid, usize>, Vec<blogctl::Record>)> {
    let records = topic_records(outbox.fixtures.bootstrap_servers(), &outbox.topic).await?;
    let mut counts = HashMap::new();
    for record in &records {
        if let Some(event_id) = record.header("event_id") {
            *counts.entry(event_id.parse()?).or_default() += 1;
        }
    }
    Ok((counts, records))
}

/// Runs `blogctl outbox dead-letters ARGS` on the outbox's DB1; returns (success, stdout + stderr).
async fn dead_letters(outbox: &Outbox, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = tokio::process::Command::new(e2e::process::binary("blogctl")?)
        .args(["outbox", "dead-letters"])
        .args(args)
        .env("DATABASE_URL", outbox.db1.expose())
        .output()
        .await?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Ok((output.status.success(), text))
}

/// The dead letters' ids, oldest first.
async fn dead_letter_ids(outbox: &Outbox) -> anyhow::Result<Vec<i64>> {
    let client = outbox.pool.get().await?;
    Ok(client
        .query("SELECT id FROM outbox_dead_letters ORDER BY id", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// Outbox id of the row of event `event_id`, wherever it is.
async fn id_of(outbox: &Outbox, event_id: Uuid) -> anyhow::Result<i64> {
    let client = outbox.pool.get().await?;
    let row = client
        .query_one(
            "SELECT id FROM outbox WHERE event_id = $1 UNION ALL SELECT id FROM outbox_dead_letters WHERE event_id = $1",
            &[&event_id],
        )
        .await?;
    Ok(row.get(0))
}

/// `len` characters of random hex: with compression on (`RDKAFKA_PRODUCER_COMPRESSION_TYPE`), a
/// payload that compresses well would pass under the topic's limit; this one does not.
fn incompressible(len: usize) -> String {
    std::iter::repeat_with(|| Uuid::new_v4().simple().to_string())
        .flat_map(String::into_bytes)
        .take(len)
        .map(char::from)
        .collect()
}

/// A row too large for the producer (3 MB, written by a writer other than the API) and, on Apache
/// Kafka, one too large for the topic's `max.message.bytes` are moved to the dead letters with
/// their error; the other articles' rows reach the topic without waiting, the refused articles'
/// later rows wait; after the fix, a requeue publishes the refused row before its article's later
/// one, and a discard lets the later one through.
#[tokio::test(flavor = "multi_thread")]
async fn rows_the_broker_refuses_are_dead_lettered_and_requeued_in_order() -> anyhow::Result<()> {
    let outbox = Outbox::start().await?;
    let bootstrap = outbox.fixtures.bootstrap_servers().to_owned();
    // nisshi does not enforce a topic's max.message.bytes; Apache Kafka does.
    let topic_enforces_limit = BrokerKind::from_env()? == BrokerKind::Kafka;
    e2e::topics::create(&bootstrap, &outbox.topic, 4, &[("max.message.bytes", "20000")]).await?;

    let small = |article: i64| (article, Uuid::new_v4());
    let (a1, a1_later, a3, a3_later) = (small(1), small(1), small(3), small(3));
    let (too_large_for_topic, a2_later) = ((2, Uuid::new_v4()), small(2));
    let (too_large_for_producer, a4_later) = ((4, Uuid::new_v4()), small(4));
    enqueue(&outbox.pool, &[a1]).await?;
    enqueue_payload(&outbox.pool, 2, too_large_for_topic.1, &incompressible(50_000)).await?;
    enqueue(&outbox.pool, &[a2_later, a3]).await?;
    enqueue_payload(&outbox.pool, 4, too_large_for_producer.1, &"p".repeat(3_000_000)).await?;
    enqueue(&outbox.pool, &[a4_later, a1_later, a3_later]).await?;

    let relay = outbox.relay(&[]).await?;
    // Waiting behind their dead letters: a4's later row, and on Kafka a2's.
    let waiting = if topic_enforces_limit { 2 } else { 1 };
    outbox.wait_for_rows(waiting).await?;
    let (counts, _) = on_topic(&outbox).await?;
    for (_, event_id) in [a1, a1_later, a3, a3_later] {
        assert_eq!(counts.get(&event_id), Some(&1), "the other articles flow: {event_id}");
    }
    assert_eq!(counts.get(&a4_later.1), None, "a4's later row waits behind its dead letter");
    assert_eq!(counts.get(&too_large_for_producer.1), None);
    let expected_dead = if topic_enforces_limit { 2 } else { 1 };
    let dead_ids = dead_letter_ids(&outbox).await?;
    assert_eq!(dead_ids.len(), expected_dead, "dead letters: {dead_ids:?}");
    let metrics = relay_metrics(&relay).await?;
    assert_eq!(e2e::metric(&metrics, "outbox_dead_letters_total"), expected_dead as f64, "{metrics}");

    let (listed, list) = dead_letters(&outbox, &["list"]).await?;
    assert!(listed, "{list}");
    println!("{list}");
    assert!(list.contains(&too_large_for_producer.1.to_string()) && list.contains("3000000 bytes"), "{list}");
    assert!(list.contains("size"), "the error says why: {list}");
    assert!(list.contains("waiting behind it: 1"), "{list}");

    if topic_enforces_limit {
        assert_eq!(counts.get(&a2_later.1), None, "a2's later row waits behind its dead letter");
        // The fix: the topic takes larger records; the requeued row goes first, then a2's later one.
        e2e::topics::alter(&bootstrap, &outbox.topic, &[("max.message.bytes", "200000")]).await?;
        let requeued = id_of(&outbox, too_large_for_topic.1).await?;
        let (ok, said) = dead_letters(&outbox, &["requeue", &requeued.to_string()]).await?;
        assert!(ok && said.contains(&format!("requeued dead letter {requeued}")), "{said}");
        outbox.wait_for_rows(1).await?;
        let (counts, records) = on_topic(&outbox).await?;
        assert_eq!(counts.get(&too_large_for_topic.1), Some(&1));
        let a2_order: Vec<&str> = records
            .iter()
            .filter(|record| record.key.as_deref() == Some("2"))
            .filter_map(|r| r.header("event_id"))
            .collect();
        assert_eq!(a2_order, [too_large_for_topic.1.to_string(), a2_later.1.to_string()], "requeued in order");
    } else {
        assert_eq!(counts.get(&too_large_for_topic.1), Some(&1), "the limits allow it: published");
    }

    let discarded = id_of(&outbox, too_large_for_producer.1).await?;
    let (ok, said) = dead_letters(&outbox, &["discard", &discarded.to_string()]).await?;
    assert!(ok && said.contains(&format!("discarded dead letter {discarded}")), "{said}");
    outbox.wait_for_rows(0).await?;
    let (counts, _) = on_topic(&outbox).await?;
    assert_eq!(counts.get(&a4_later.1), Some(&1), "a4's later row flows once its dead letter is gone");
    assert!(dead_letter_ids(&outbox).await?.is_empty());

    let (ok, said) = dead_letters(&outbox, &["requeue", "987654321"]).await?;
    assert!(!ok && said.contains("no dead letter with id 987654321"), "{said}");
    relay.stop().await
}

/// An outbox whose relay published `published` events to a topic of `partitions` partitions,
/// then stopped; the topic was then deleted and created again, empty (a lost log).
async fn published_then_log_lost(partitions: i32, published: i64) -> anyhow::Result<Outbox> {
    let outbox = Outbox::start_deleting_topics().await?;
    let bootstrap = outbox.fixtures.bootstrap_servers().to_owned();
    e2e::topics::create(&bootstrap, &outbox.topic, partitions, &[]).await?;
    enqueue(&outbox.pool, &events(published, 6)).await?;
    let relay = outbox.relay(&[]).await?;
    outbox.wait_for_rows(0).await?;
    relay.stop().await?;
    e2e::topics::delete(&bootstrap, &outbox.topic).await?;
    e2e::topics::create(&bootstrap, &outbox.topic, partitions, &[]).await?;
    Ok(outbox)
}

/// The topic deleted and recreated while the relay is down: the checkpoint is above the new log's
/// end. The alarm fires (counter and log) and the rows written meanwhile reach the new log once.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_log_raises_the_alarm_and_the_rows_written_meanwhile_reach_the_new_log_once() -> anyhow::Result<()> {
    let outbox = published_then_log_lost(2, 40).await?;
    let meanwhile = events(12, 6);
    enqueue(&outbox.pool, &meanwhile).await?;
    let relay = outbox.relay(&[]).await?;
    outbox.wait_for_rows(0).await?;
    let metrics = relay_metrics(&relay).await?;
    assert!(e2e::metric(&metrics, "outbox_checkpoint_ahead_of_log_total") >= 1.0, "the alarm fired: {metrics}");
    let (counts, records) = on_topic(&outbox).await?;
    assert_eq!(records.len(), meanwhile.len(), "only the rows written meanwhile are on the new log");
    for (_, event_id) in &meanwhile {
        assert_eq!(counts.get(event_id), Some(&1), "{event_id} once");
    }
    relay.stop().await
}

/// The topic replaced by one that already grew past the old checkpoint (here by another
/// producer's records): no checkpoint is above the end, but the last settled record is not at its
/// offset any more. The relay notices, says so, and publishes the waiting rows once.
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_log_that_grew_past_the_checkpoint_is_noticed() -> anyhow::Result<()> {
    let outbox = published_then_log_lost(1, 6).await?;
    let producer: FutureProducer =
        kafka_kit::client_config(outbox.fixtures.bootstrap_servers()).set("acks", "all").create()?;
    for _ in 0..30 {
        let record = FutureRecord::<str, str>::to(&outbox.topic).key("x").payload("another producer's");
        producer.send(record, TIMEOUT).await.map_err(|(error, _)| error)?;
    }
    let waiting = events(5, 2);
    enqueue(&outbox.pool, &waiting).await?;
    let relay = outbox.relay(&[]).await?;
    outbox.wait_for_rows(0).await?;
    let metrics = relay_metrics(&relay).await?;
    assert_eq!(e2e::metric(&metrics, "outbox_log_replaced_total"), 1.0, "the replacement is noticed: {metrics}");
    let (counts, records) = on_topic(&outbox).await?;
    assert_eq!(records.len(), 30 + waiting.len());
    for (_, event_id) in &waiting {
        assert_eq!(counts.get(event_id), Some(&1), "{event_id} once");
    }
    relay.stop().await
}

/// A relay stopped cleanly records that nothing of its is in flight: its successor publishes at
/// once. After a crash, the successor waits the bound its predecessor declared (not its own).
#[tokio::test(flavor = "multi_thread")]
async fn a_clean_stop_hands_over_at_once_and_a_crash_costs_the_predecessors_bound() -> anyhow::Result<()> {
    let outbox = Outbox::start().await?;
    enqueue(&outbox.pool, &events(10, 3)).await?;
    // Declares 3 s lease + 1 s delivery timeout + 2 s = 6 s.
    let first = outbox.relay(&[("delivery-timeout-ms", "1000")]).await?;
    outbox.wait_for_rows(0).await?;
    first.stop().await?;

    let started = Instant::now();
    let second = outbox.relay(&[("delivery-timeout-ms", "5000")]).await?;
    enqueue(&outbox.pool, &events(10, 3)).await?;
    outbox.wait_for_rows(0).await?;
    println!("after a clean stop, the successor published its first rows {:?} after its start", started.elapsed());
    let metrics = relay_metrics(&second).await?;
    assert_eq!(e2e::metric(&metrics, "outbox_takeover_wait_seconds"), 0.0, "no wait after a clean stop: {metrics}");
    second.crash().await;

    let third = outbox.relay(&[("delivery-timeout-ms", "1000")]).await?;
    enqueue(&outbox.pool, &events(10, 3)).await?;
    outbox.wait_for_rows(0).await?;
    let metrics = relay_metrics(&third).await?;
    // The second declared 3 + 5 + 2 = 10 s; the takeover adds 1 s.
    assert_eq!(e2e::metric(&metrics, "outbox_takeover_wait_seconds"), 11.0, "{metrics}");
    assert_eq!(outbox_rows(&outbox.pool).await?, 0);
    let (counts, _) = on_topic(&outbox).await?;
    assert_eq!(counts.len(), 30, "every event once");
    assert!(counts.values().all(|&count| count == 1), "{counts:?}");
    third.stop().await
}
