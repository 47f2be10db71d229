//! The replica sink in-process (`Application::build`), on a DB2 of its own in the run's shared
//! PostgreSQL cluster, consuming a topic of its own on the shared broker: applying events
//! exactly once, whatever arrives — hand-written, replayed, stale, after a deletion, poison.

use std::time::Duration;

use e2e::component::{self, Fixtures, Running};
use md5::{Digest, Md5};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

/// A sink consuming a topic of its own into a DB2 of its own.
struct SinkUnderTest {
    fixtures: Fixtures,
    db2: service_kit::config::DatabaseUrl,
    topic: String,
    running: Running,
}

impl SinkUnderTest {
    async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// A sink with extra flags.
    async fn start_with(extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let fixtures = Fixtures::start().await?;
        let db2 = fixtures.database("db2").await?;
        let (topic, group) = (Fixtures::unique("articles"), Fixtures::unique("blog-sync-group"));
        let running = component::sink(&db2, fixtures.bootstrap_servers(), &topic, &group, extra).await?;
        component::wait_ready(&running).await?;
        Ok(Self { fixtures, db2, topic, running })
    }

    fn bootstrap_servers(&self) -> &str {
        self.fixtures.bootstrap_servers()
    }

    async fn db2_client(&self) -> anyhow::Result<tokio_postgres::Client> {
        Ok(service_kit::db::connect(&self.db2).await?)
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        e2e::ApiClient::new(&self.running.url()).text("/metrics").await
    }
}

/// DB2's articles as (id, title, version), by id.
async fn articles_in(sink: &SinkUnderTest) -> anyhow::Result<Vec<(i64, String, i64)>> {
    let rows = sink.db2_client().await?.query("SELECT id, title, version FROM articles ORDER BY id", &[]).await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect())
}

/// Reads a single number from DB2.
async fn db2_count(sink: &SinkUnderTest, sql: &str) -> anyhow::Result<i64> {
    Ok(sink.db2_client().await?.query_one(sql, &[]).await?.get(0))
}

/// An event as the API writes it: `event_id`, `event_type`, and the article at `version`.
fn event(event_id: &str, event_type: &str, id: i64, version: i64, title: &str) -> String {
    json!({
        "event_id": event_id, "event_type": event_type, "timestamp": "2026-11-22T10:00:00Z",
        "data": {"id": id, "title": title, "content": "c", "author": "a", "category": null, "tags": [],
                 "status": "draft", "views_count": 0, "created_at": "2026-11-22T10:00:00Z",
                 "updated_at": "2026-11-22T10:00:00Z", "published_at": null, "version": version}
    })
    .to_string()
}

/// Produces `events` (key, value) in order and waits until DB2 recorded `processed` event ids.
async fn produce_and_wait(sink: &SinkUnderTest, events: &[(&str, String)], processed: i64) -> anyhow::Result<()> {
    let producer = blogctl::producer(sink.bootstrap_servers())?;
    for (key, value) in events {
        blogctl::produce(&producer, sink.topic.as_str(), Some(key), value).await?;
    }
    e2e::wait::until("the sink to record every event", TIMEOUT, || async {
        Ok(db2_count(sink, "SELECT count(*) FROM processed_events").await? == processed)
    })
    .await
}

/// The seed's idempotence test: the same hand-written event (no event id, no version, naive
/// timestamps) produced twice → one article, one `processed_events` row keyed by the md5 of the
/// value, and the second delivery counted as a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_hand_written_event_twice_is_applied_once() -> anyhow::Result<()> {
    const SEED_EVENT: &str = events::SEED_HAND_WRITTEN_EVENT;
    let sink = SinkUnderTest::start().await?;
    let producer = blogctl::producer(sink.bootstrap_servers())?;
    for _ in 0..2 {
        blogctl::produce(&producer, sink.topic.as_str(), None, SEED_EVENT).await?;
    }
    e2e::wait::until("the sink to skip the second copy", TIMEOUT, || async {
        Ok(sink.metrics().await?.contains("sink_events_duplicate_total 1"))
    })
    .await?;
    assert_eq!(db2_count(&sink, "SELECT count(*) FROM articles WHERE id = 999").await?, 1);
    let md5 = format!("{:x}", Md5::digest(SEED_EVENT.as_bytes()));
    let db2 = sink.db2_client().await?;
    let rows = db2.query("SELECT event_id, event_type, article_id FROM processed_events", &[]).await?;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), md5);
    assert_eq!(rows[0].get::<_, String>(1), "article.created");
    assert_eq!(rows[0].get::<_, i64>(2), 999);
    let title: String = db2.query_one("SELECT title FROM articles WHERE id = 999", &[]).await?.get(0);
    assert_eq!(title, "Duplicate Test");
    Ok(())
}

/// Versions make the replica converge whatever arrives: an older update is recorded but changes
/// nothing, a replayed event id is skipped, and an older event after a deletion cannot resurrect
/// the article (its tombstone refuses it). Produced by hand, in one burst, so that the sink
/// applies them together in one pipelined transaction as well as one by one.
#[tokio::test(flavor = "multi_thread")]
async fn stale_replayed_and_post_deletion_events_change_nothing() -> anyhow::Result<()> {
    let sink = SinkUnderTest::start().await?;
    let events = [
        ("7000", event("e1", "article.created", 7000, 1, "v1")),
        ("7000", event("e3", "article.updated", 7000, 3, "v3")),
        ("7000", event("e2", "article.updated", 7000, 2, "v2 (stale)")),
        ("7000", event("e3", "article.updated", 7000, 3, "v3")),
        ("7001", event("f2", "article.updated", 7001, 2, "kept")),
        ("7001", event("f1", "article.created", 7001, 1, "older (stale)")),
        ("7002", event("g1", "article.created", 7002, 1, "deleted")),
        ("7002", event("g2", "article.deleted", 7002, 2, "deleted")),
        ("7002", event("g0", "article.created", 7002, 1, "resurrected?")),
    ];
    produce_and_wait(&sink, &events, 8).await?;
    let metrics = sink.metrics().await?;
    assert!(metrics.contains("sink_events_duplicate_total 1"), "e3 twice: {metrics}");
    assert!(metrics.contains("sink_events_stale_total 3"), "e2, f1 and g0 are stale: {metrics}");
    let articles = articles_in(&sink).await?;
    assert_eq!(articles, [(7000, "v3".to_owned(), 3), (7001, "kept".to_owned(), 2)], "7002 stays deleted");
    let db2 = sink.db2_client().await?;
    let tombstone: i64 = db2.query_one("SELECT version FROM article_tombstones WHERE id = 7002", &[]).await?.get(0);
    assert_eq!(tombstone, 2);
    Ok(())
}

/// `article.snapshot` (what `blogctl snapshot` enqueues to re-seed a replica) is an upsert under
/// the version guard: it fills an empty replica, and an older snapshot — one that raced a newer
/// change, or a deletion — changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn snapshots_fill_an_empty_replica_but_never_undo_a_newer_change_or_deletion() -> anyhow::Result<()> {
    let sink = SinkUnderTest::start().await?;
    let events = [
        ("8000", event("s1", "article.snapshot", 8000, 4, "seeded at v4")),
        ("8001", event("u1", "article.created", 8001, 1, "v1")),
        ("8001", event("u2", "article.updated", 8001, 2, "v2")),
        ("8001", event("s2", "article.snapshot", 8001, 1, "snapshot of v1 (stale)")),
        ("8001", event("s3", "article.snapshot", 8001, 2, "v2")),
        ("8002", event("d1", "article.created", 8002, 1, "v1")),
        ("8002", event("d2", "article.deleted", 8002, 2, "v1")),
        ("8002", event("s4", "article.snapshot", 8002, 1, "resurrected?")),
    ];
    produce_and_wait(&sink, &events, 8).await?;
    let metrics = sink.metrics().await?;
    assert!(metrics.contains("sink_events_stale_total 2"), "s2 and s4 are stale: {metrics}");
    assert!(metrics.contains(r#"sink_events_applied_total{event_type="article.snapshot"} 2"#), "{metrics}");
    let articles = articles_in(&sink).await?;
    assert_eq!(articles, [(8000, "seeded at v4".to_owned(), 4), (8001, "v2".to_owned(), 2)], "8002 stays deleted");
    Ok(())
}

/// A burst of upserts naming each article and each event id once is applied by one set-based
/// statement (`sink_apply_transactions_total{statement="batch"}`), and per event it does what the
/// per-event statement does: a new article lands with every column, a newer version replaces an
/// older one, an older version and a creation after a deletion are stale, and a replayed event id
/// is a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_distinct_articles_is_one_statement_with_the_same_outcome_per_event() -> anyhow::Result<()> {
    let sink = SinkUnderTest::start().await?;
    let earlier = [
        ("9000", event("a2", "article.updated", 9000, 2, "kept")),
        ("9001", event("b1", "article.created", 9001, 1, "b v1")),
        ("9002", event("c1", "article.created", 9002, 1, "c")),
        ("9002", event("c2", "article.deleted", 9002, 2, "c")),
        ("9004", event("d1", "article.created", 9004, 1, "d")),
    ];
    produce_and_wait(&sink, &earlier, 5).await?;
    let full = json!({
        "event_id": "n1", "event_type": "article.published", "timestamp": "2026-11-22T10:00:00Z",
        "data": {"id": 9003, "title": "full", "content": "every column", "author": "a", "category": "tech",
                 "tags": ["rust", "it's \"quoted\""], "status": "published", "views_count": 7,
                 "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T11:00:00Z",
                 "published_at": "2026-11-22T11:00:00Z", "version": 3}
    })
    .to_string();
    let burst = [
        event("a1", "article.created", 9000, 1, "older (stale)"),
        event("b2", "article.updated", 9001, 2, "b v2"),
        event("c0", "article.created", 9002, 1, "resurrected?"),
        full,
        event("d1", "article.created", 9004, 1, "d"),
    ];
    // All handed to the producer before any is awaited, under one key (one partition): the sink
    // reads them in one fetch, as one batch.
    let producer = blogctl::producer(sink.bootstrap_servers())?;
    let mut deliveries = Vec::new();
    for value in &burst {
        let record = rdkafka::producer::FutureRecord::to(&sink.topic).key("burst").payload(value.as_str());
        deliveries.push(producer.send_result(record).map_err(|(error, _)| error)?);
    }
    for delivery in deliveries {
        delivery.await?.map_err(|(error, _)| error)?;
    }
    e2e::wait::until("the sink to apply the burst", TIMEOUT, || async {
        Ok(sink.metrics().await?.contains("sink_events_duplicate_total 1"))
    })
    .await?;
    let metrics = sink.metrics().await?;
    assert!(
        metrics.contains(r#"sink_apply_transactions_total{statement="batch"}"#),
        "no batch statement ran: {metrics}"
    );
    assert!(metrics.contains("sink_events_stale_total 2"), "a1 and c0 are stale: {metrics}");
    assert_eq!(db2_count(&sink, "SELECT count(*) FROM processed_events").await?, 9, "d1 is recorded once");
    let articles = articles_in(&sink).await?;
    assert_eq!(
        articles,
        [
            (9000, "kept".to_owned(), 2),
            (9001, "b v2".to_owned(), 2),
            (9003, "full".to_owned(), 3),
            (9004, "d".to_owned(), 1)
        ],
        "9002 stays deleted"
    );
    let row = sink
        .db2_client()
        .await?
        .query_one(
            "SELECT content, category, tags, status, views_count, (updated_at AT TIME ZONE 'UTC')::text, \
             (published_at AT TIME ZONE 'UTC')::text FROM articles WHERE id = 9003",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), "every column");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("tech"));
    assert_eq!(row.get::<_, Vec<String>>(2), ["rust", "it's \"quoted\""]);
    assert_eq!(row.get::<_, String>(3), "published");
    assert_eq!(row.get::<_, i64>(4), 7);
    assert!(row.get::<_, String>(5).starts_with("2026-11-22 11:00:00"), "updated_at: {}", row.get::<_, String>(5));
    assert!(row.get::<_, Option<String>>(6).is_some_and(|at| at.starts_with("2026-11-22 11:00:00")));
    Ok(())
}

/// With an in-hand budget of 1 MiB, a record of ~600 KB (counted twice, raw and decoded: more than
/// the whole budget) goes through alone: the sink never deadlocks, and applies every version of
/// every article in order, small records mixed in; the budget is all given back afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn records_larger_than_the_in_hand_budget_are_applied_in_order() -> anyhow::Result<()> {
    let sink = SinkUnderTest::start_with(&[("in-hand-mib", "1")]).await?;
    let large = "x".repeat(600 * 1024);
    let mut events = Vec::new();
    for version in 1..=4_i64 {
        for id in 9100..9104_i64 {
            let event_type = if version == 1 { "article.created" } else { "article.updated" };
            let mut value: serde_json::Value = serde_json::from_str(&event(
                &format!("large-{id}-{version}"),
                event_type,
                id,
                version,
                &format!("v{version}"),
            ))?;
            value["data"]["content"] = json!(large);
            events.push((id.to_string(), value.to_string()));
            events.push((
                (id + 100).to_string(),
                event(&format!("small-{id}-{version}"), event_type, id + 100, version, &format!("v{version}")),
            ));
        }
    }
    let keyed: Vec<(&str, String)> = events.iter().map(|(key, value)| (key.as_str(), value.clone())).collect();
    produce_and_wait(&sink, &keyed, 32).await?;
    let articles = articles_in(&sink).await?;
    let expected: Vec<(i64, String, i64)> = (9100..9104).chain(9200..9204).map(|id| (id, "v4".to_owned(), 4)).collect();
    assert_eq!(articles, expected, "every article at its last version");
    let content_length: i64 =
        db2_count(&sink, "SELECT min(length(content))::bigint FROM articles WHERE id BETWEEN 9100 AND 9103").await?;
    assert_eq!(content_length, 600 * 1024, "the large content arrives whole");
    e2e::wait::until("the budget to be given back", TIMEOUT, || async {
        Ok(sink.metrics().await?.lines().any(|line| line == "sink_in_hand_bytes 0"))
    })
    .await
}

/// `processed_events` is pruned past its retention, and a replay of the pruned events changes
/// nothing in DB2: versions and tombstones make each a no-op (docs/guarantees.md).
#[tokio::test(flavor = "multi_thread")]
async fn processed_events_past_the_retention_are_pruned_and_their_replay_changes_nothing() -> anyhow::Result<()> {
    let sink = SinkUnderTest::start_with(&[("processed-retention", "3s"), ("prune-batch", "2")]).await?;
    let events = [
        ("9000", event("p1", "article.created", 9000, 1, "v1")),
        ("9000", event("p2", "article.updated", 9000, 2, "v2")),
        ("9001", event("q1", "article.created", 9001, 1, "doomed")),
        ("9001", event("q2", "article.deleted", 9001, 2, "doomed")),
        ("9002", event("r1", "article.snapshot", 9002, 5, "seeded")),
    ];
    produce_and_wait(&sink, &events, 5).await?;
    let db2 = sink.db2_client().await?;
    let state = || async {
        let tombstones = db2.query("SELECT id, version FROM article_tombstones ORDER BY id", &[]).await?;
        let tombstones: Vec<(i64, i64)> = tombstones.iter().map(|row| (row.get(0), row.get(1))).collect();
        anyhow::Ok((articles_in(&sink).await?, tombstones))
    };
    let before = state().await?;
    assert_eq!(before.0, [(9000, "v2".to_owned(), 2), (9002, "seeded".to_owned(), 5)]);
    e2e::wait::until("processed_events to be pruned", TIMEOUT, || async {
        Ok(db2_count(&sink, "SELECT count(*) FROM processed_events").await? == 0)
    })
    .await?;
    assert!(sink.metrics().await?.contains("sink_processed_events_pruned_total 5"));

    // Every pruned event again, in order, then the oldest ones once more out of order.
    let mut replay: Vec<(&str, String)> = events.to_vec();
    replay.push(("9000", event("p1", "article.created", 9000, 1, "v1")));
    replay.push(("9001", event("q1", "article.created", 9001, 1, "doomed")));
    let producer = blogctl::producer(sink.bootstrap_servers())?;
    for (key, value) in &replay {
        blogctl::produce(&producer, sink.topic.as_str(), Some(key), value).await?;
    }
    // Of the seven, the two at DB2's versions (p2, r1) apply their same content again; the other
    // five change nothing: p1, q1 and q2 are stale (older than DB2 or its tombstone), the last
    // two are stale too, or duplicates if their first replay is not pruned yet.
    e2e::wait::until("the sink to consume the replay", TIMEOUT, || async {
        let metrics = sink.metrics().await?;
        let unchanged =
            e2e::metric(&metrics, "sink_events_stale_total") + e2e::metric(&metrics, "sink_events_duplicate_total");
        Ok(unchanged == 5.0)
    })
    .await?;
    assert_eq!(state().await?, before, "a replay of pruned events changes nothing");
    Ok(())
}

/// Poison records (not UTF-8, not JSON, unknown event type, missing fields, wrong types) between
/// good ones: the good ones are applied, the poison goes to `articles.dlq` with headers saying why
/// and where from, and the pipeline keeps going.
#[tokio::test(flavor = "multi_thread")]
async fn poison_goes_to_the_dead_letter_topic_and_good_events_are_applied() -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let sink = SinkUnderTest::start().await?;
    let good = |id: i64| {
        format!(
            r#"{{"event_type":"article.created","timestamp":"2024-12-02T10:00:00","data":{{"id":{id},"title":"Good {id}","content":"c","author":"a","category":null,"tags":[],"status":"draft","views_count":0,"created_at":"2024-12-02T10:00:00","updated_at":"2024-12-02T10:00:00","published_at":null}}}}"#
        )
        .into_bytes()
    };
    let records: Vec<Vec<u8>> = vec![
        good(7001),
        b"\xff\xfe not utf-8".to_vec(),
        b"not json at all".to_vec(),
        String::from_utf8(good(7002))?.replace("article.created", "article.exploded").into_bytes(),
        br#"{"event_type":"article.created","timestamp":"2024-12-02T10:00:00","data":{"id":7003}}"#.to_vec(),
        String::from_utf8(good(7004))?.replace(r#""id":7004"#, r#""id":"seven""#).into_bytes(),
        good(7005),
    ];
    let producer: FutureProducer = kafka_kit::client_config(sink.bootstrap_servers()).set("acks", "all").create()?;
    for value in &records {
        let record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(sink.topic.as_str()).key("poison-test").payload(value);
        producer.send(record, Duration::from_secs(30)).await.map_err(|(error, _)| error)?;
    }
    let db2 = sink.db2_client().await?;
    e2e::wait::until("the good events to be applied", TIMEOUT, || async {
        let applied: i64 = db2.query_one("SELECT count(*) FROM articles WHERE id IN (7001, 7005)", &[]).await?.get(0);
        Ok(applied == 2)
    })
    .await?;
    let (bootstrap, dlq_topic) = (sink.bootstrap_servers().to_owned(), format!("{}.dlq", sink.topic));
    let dead = e2e::wait::until_some("five records in the dead-letter topic", TIMEOUT, || {
        let (bootstrap, dlq_topic) = (bootstrap.clone(), dlq_topic.clone());
        async move {
            let dead = e2e::replica::topic_records(&bootstrap, &dlq_topic).await?;
            Ok((dead.len() == 5).then_some(dead))
        }
    })
    .await?;
    let reasons: Vec<&str> = dead.iter().filter_map(|record| record.header("dlq.reason")).collect();
    assert_eq!(reasons, ["not_utf8", "invalid_event", "invalid_event", "invalid_event", "invalid_event"], "{dead:?}");
    for record in &dead {
        assert_eq!(record.header("dlq.source.topic"), Some(sink.topic.as_str()));
        assert!(record.header("dlq.source.offset").is_some() && record.header("dlq.error").is_some());
        assert_eq!(record.key.as_deref(), Some("poison-test"));
    }
    assert_eq!(dead[0].value.as_deref(), Some(&b"\xff\xfe not utf-8"[..]), "the original bytes are kept");
    let metrics = sink.metrics().await?;
    assert!(metrics.contains("sink_events_poison_total{reason=\"invalid_event\"} 4"), "{metrics}");
    Ok(())
}
