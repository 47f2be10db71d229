//! The relay in-process (`Application::build`), on a database of its own in the run's shared
//! PostgreSQL cluster and a topic of its own on the shared broker: settling and read-back.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use e2e::component::{self, Outbox, checkpoints, enqueue, events, outbox_rows};
use e2e::replica::topic_records;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Per partition, the offset after its last record (the log's end).
fn log_ends(records: &[blogctl::Record]) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for record in records {
        let end = ends.entry(record.partition).or_insert(0);
        *end = (*end).max(record.offset + 1);
    }
    ends
}

/// Every row becomes one record keyed by its article id, in row order per article, with the
/// event id and type in headers; once acknowledged, its row is gone and each partition's
/// checkpoint stands at the log's end.
#[tokio::test(flavor = "multi_thread")]
async fn each_row_is_published_once_in_order_per_article_and_settled_up_to_the_log_end() -> anyhow::Result<()> {
    let Outbox { fixtures, db1, pool, topic } = Outbox::start().await?;
    let events = events(60, 7);
    enqueue(&pool, &events).await?;
    let relay = component::relay(&db1, fixtures.bootstrap_servers(), &topic, &[("batch-size", "16")]).await?;
    e2e::wait::until("the outbox to drain", TIMEOUT, || async { Ok(outbox_rows(&pool).await? == 0) }).await?;

    let records = topic_records(fixtures.bootstrap_servers(), &topic).await?;
    assert_eq!(records.len(), events.len(), "one record per row");
    let mut on_topic: BTreeMap<i64, Vec<Uuid>> = BTreeMap::new();
    for record in &records {
        let key: i64 = record.key.as_deref().unwrap_or_default().parse()?;
        assert_eq!(record.header("event_type"), Some("article.updated"));
        on_topic.entry(key).or_default().push(record.header("event_id").unwrap_or_default().parse()?);
    }
    let mut written: BTreeMap<i64, Vec<Uuid>> = BTreeMap::new();
    for (article_id, event_id) in &events {
        written.entry(*article_id).or_default().push(*event_id);
    }
    assert_eq!(on_topic, written, "per article, the records follow the rows' order");
    assert_eq!(checkpoints(&pool, &topic).await?, log_ends(&records), "checkpoints at the log's end");
    let metrics = e2e::ApiClient::new(&relay.url()).text("/metrics").await?;
    assert_eq!(e2e::metric(&metrics, "kafka_messages_sent_total"), 60.0, "{metrics}");
    assert_eq!(e2e::metric(&metrics, "outbox_reconciled_total"), 0.0, "nothing was on the topic before");
    relay.stop().await
}

/// Records an earlier session published without settling their rows (it died between the
/// acknowledgement and the commit) are found by the read-back: their rows are settled without
/// being published again, and only the others are published.
#[tokio::test(flavor = "multi_thread")]
async fn read_back_settles_rows_already_on_the_topic_without_publishing_them_again() -> anyhow::Result<()> {
    let Outbox { fixtures, db1, pool, topic } = Outbox::start().await?;
    let already_published = events(25, 5);
    let producer: FutureProducer =
        kafka_kit::client_config(fixtures.bootstrap_servers()).set("acks", "all").create()?;
    for (article_id, event_id) in &already_published {
        let (key, event_id) = (article_id.to_string(), event_id.to_string());
        let headers = OwnedHeaders::new().insert(Header { key: "event_id", value: Some(&event_id) });
        let record: FutureRecord<'_, str, str> =
            FutureRecord::to(&topic).key(key.as_str()).payload("{}").headers(headers);
        producer.send(record, TIMEOUT).await.map_err(|(error, _)| error)?;
    }
    // A record of someone else (no event id header) is read past and ignored.
    producer
        .send(FutureRecord::<str, str>::to(&topic).key("9").payload("by hand"), TIMEOUT)
        .await
        .map_err(|(error, _)| error)?;
    let new = events(15, 5);
    enqueue(&pool, &already_published).await?;
    enqueue(&pool, &new).await?;

    let relay = component::relay(&db1, fixtures.bootstrap_servers(), &topic, &[]).await?;
    e2e::wait::until("the outbox to drain", TIMEOUT, || async { Ok(outbox_rows(&pool).await? == 0) }).await?;

    let records = topic_records(fixtures.bootstrap_servers(), &topic).await?;
    assert_eq!(records.len(), already_published.len() + 1 + new.len(), "nothing published twice");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for record in &records {
        if let Some(event_id) = record.header("event_id") {
            *seen.entry(event_id).or_default() += 1;
        }
    }
    for (_, event_id) in already_published.iter().chain(&new) {
        assert_eq!(seen.get(event_id.to_string().as_str()), Some(&1), "event {event_id} once");
    }
    let metrics = e2e::ApiClient::new(&relay.url()).text("/metrics").await?;
    assert_eq!(e2e::metric(&metrics, "outbox_reconciled_total"), 25.0, "the window was reached: {metrics}");
    assert_eq!(e2e::metric(&metrics, "kafka_messages_sent_total"), 15.0, "{metrics}");
    assert_eq!(checkpoints(&pool, &topic).await?, log_ends(&records));
    relay.stop().await
}

/// `blogctl consume --from-beginning --until-caught-up` on a topic the relay wrote in transactions
/// (its last offset is a commit marker, not a record) prints every record and stops.
#[tokio::test(flavor = "multi_thread")]
async fn blogctl_consume_until_caught_up_stops_at_a_commit_marker() -> anyhow::Result<()> {
    let Outbox { fixtures, db1, pool, topic } = Outbox::start().await?;
    enqueue(&pool, &events(12, 3)).await?;
    let relay = component::relay(&db1, fixtures.bootstrap_servers(), &topic, &[]).await?;
    e2e::wait::until("the outbox to drain", TIMEOUT, || async { Ok(outbox_rows(&pool).await? == 0) }).await?;
    let consume = tokio::process::Command::new(e2e::process::binary("blogctl")?)
        .args(["consume", "--from-beginning", "--until-caught-up", "--topic", &topic])
        .args(["--bootstrap-servers", fixtures.bootstrap_servers()])
        .args(["--isolation-level", &e2e::broker::BrokerKind::from_env()?.isolation().to_string()])
        .output();
    let output = tokio::time::timeout(TIMEOUT, consume).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.lines().filter(|line| line.starts_with("partition=")).count(), 12, "{stdout}");
    relay.stop().await
}

/// The partitions of `topic` as the broker reports them.
async fn partitions_of(bootstrap: &str, topic: &str) -> anyhow::Result<usize> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    Ok(tokio::task::spawn_blocking(move || blogctl::topics::describe(&bootstrap, &topic)).await??.len())
}

/// A missing topic is created by the relay with `KAFKA_TOPIC_PARTITIONS` before its first record
/// (not auto-created with the broker's count), and every row lands on it; an existing topic with
/// another count is left as it is, its count exported.
#[tokio::test(flavor = "multi_thread")]
async fn the_relay_creates_a_missing_topic_with_the_partitions_asked_and_leaves_an_existing_one() -> anyhow::Result<()>
{
    let outbox = Outbox::start().await?;
    let bootstrap = outbox.fixtures.bootstrap_servers().to_owned();
    enqueue(&outbox.pool, &events(30, 9)).await?;
    let relay = outbox.relay(&[("topic-partitions", "6")]).await?;
    outbox.wait_for_rows(0).await?;
    assert_eq!(partitions_of(&bootstrap, &outbox.topic).await?, 6, "created with the partitions asked");
    let records = topic_records(&bootstrap, &outbox.topic).await?;
    assert_eq!(records.len(), 30);
    assert!(records.iter().map(|record| record.partition).max() > Some(3), "keys spread over the six");
    relay.stop().await?;

    let existing = component::Outbox::start().await?;
    e2e::topics::create(&bootstrap, &existing.topic, 2, &[]).await?;
    enqueue(&existing.pool, &events(10, 5)).await?;
    let relay = existing.relay(&[("topic-partitions", "6")]).await?;
    existing.wait_for_rows(0).await?;
    assert_eq!(partitions_of(&bootstrap, &existing.topic).await?, 2, "an existing topic is left as it is");
    let metrics = e2e::ApiClient::new(&relay.url()).text("/metrics").await?;
    assert_eq!(e2e::metric(&metrics, "outbox_topic_partitions"), 2.0, "{metrics}");
    relay.stop().await
}

/// After a backlog, the outbox's table keeps its pages (VACUUM frees them but cannot give them
/// back while newer rows sit behind them); once ANALYZE has counted few live rows in those pages,
/// PostgreSQL's planner prefers reading the whole table to the primary key. The relay's sessions
/// keep it on the key: its fetch reads the few pending rows, not every page of the old backlog.
#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_after_a_large_backlog_reads_the_primary_key_not_the_whole_table() -> anyhow::Result<()> {
    let outbox = Outbox::start().await?;
    let client = service_kit::db::connect(&outbox.db1).await?;
    // A drained backlog of 50,000 rows, then 500 rows written behind it, vacuumed and analysed.
    let insert = "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload) \
                  SELECT gen_random_uuid(), 'article', (i % 1000)::text, 'article.created', repeat('x', 600) \
                  FROM generate_series(1, $1::int) i";
    client.execute(insert, &[&50_000_i32]).await?;
    client.batch_execute("DELETE FROM outbox").await?;
    client.execute(insert, &[&500_i32]).await?;
    client.batch_execute("VACUUM ANALYZE outbox").await?;
    let pages: i32 = client.query_one("SELECT relpages FROM pg_class WHERE relname = 'outbox'", &[]).await?.get(0);
    assert!(pages > 1_000, "the backlog's pages stay: {pages}");

    let plan = |client: tokio_postgres::Client| async move {
        let explain = format!("EXPLAIN {}", outbox::FETCH_PENDING_SQL);
        let rows = client.query(&explain, &[&5_000_i64, &Vec::<i64>::new()]).await?;
        Ok::<_, anyhow::Error>(rows.iter().map(|row| row.get::<_, String>(0)).collect::<Vec<_>>().join("\n"))
    };
    let plain = plan(client).await?;
    assert!(plain.contains("Seq Scan on outbox"), "without the relay's settings the planner reads the table:\n{plain}");
    let relay = plan(service_kit::db::connect(&outbox_relay::startup::relay_sessions(&outbox.db1)).await?).await?;
    assert!(relay.contains("Index Scan using outbox_pkey"), "the relay reads the primary key:\n{relay}");
    assert!(!relay.contains("Seq Scan on outbox "), "{relay}");
    // And the relay still publishes those rows.
    let relay_task = outbox.relay(&[]).await?;
    outbox.wait_for_rows(0).await?;
    relay_task.stop().await?;
    Ok(())
}
