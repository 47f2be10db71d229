//! The relay serving any outbox (issue 14), in-process on the shared broker: rows routed by their
//! topic column with their extra headers, read back per topic, and CloudEvents attributes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use e2e::component::{Fixtures, Outbox, outbox_rows};
use e2e::replica::topic_records;
use outbox::NewEvent;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(60);

/// One row as a writer other than the articles API enqueues it.
struct Row {
    event_id: Uuid,
    aggregate_type: &'static str,
    aggregate_id: String,
    topic: Option<String>,
    headers: Vec<(String, String)>,
}

async fn enqueue_rows(pool: &deadpool_postgres::Pool, rows: &[Row]) -> anyhow::Result<()> {
    for row in rows {
        let mut client = pool.get().await?;
        let transaction = client.transaction().await?;
        let headers: Vec<(&str, &str)> =
            row.headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        let payload = serde_json::json!({"event_id": row.event_id, "id": row.aggregate_id}).to_string();
        let event = NewEvent {
            event_id: row.event_id,
            aggregate_type: row.aggregate_type,
            aggregate_id: &row.aggregate_id,
            event_type: &format!("{}.changed", row.aggregate_type),
            topic: row.topic.as_deref(),
            headers: &headers,
            payload: &payload,
            trace_context: &HashMap::new(),
        };
        outbox::enqueue(&transaction, &event).await?;
        transaction.commit().await?;
    }
    Ok(())
}

/// Per event id, how many times it is on `records`.
fn counts(records: &[blogctl::Record]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for record in records {
        *seen.entry(record.header("event_id").unwrap_or("none").to_owned()).or_insert(0) += 1;
    }
    seen
}

/// Rows naming a topic go there, rows naming none go to KAFKA_TOPIC; each once, keyed by its
/// aggregate id, in row order per aggregate, with its extra headers — and a row the relay
/// published before it could settle it, on a topic only that pending row names (no checkpoint),
/// is found there by the read-back and not published again.
#[tokio::test(flavor = "multi_thread")]
async fn rows_land_on_their_own_topics_once_with_their_headers() -> anyhow::Result<()> {
    let Outbox { fixtures, db1, pool, topic: default_topic } = Outbox::start().await?;
    let orders = Fixtures::unique("orders");
    // Already on the orders topic, as a relay that died between commit and settle left it.
    let already = Row {
        event_id: Uuid::new_v4(),
        aggregate_type: "order",
        aggregate_id: "o-0".into(),
        topic: Some(orders.clone()),
        headers: vec![],
    };
    let producer: FutureProducer =
        kafka_kit::client_config(fixtures.bootstrap_servers()).set("acks", "all").create()?;
    let event_id = already.event_id.to_string();
    let record: FutureRecord<'_, str, str> = FutureRecord::to(&orders)
        .key("o-0")
        .payload("{}")
        .headers(OwnedHeaders::new().insert(Header { key: "event_id", value: Some(&event_id) }));
    producer.send(record, TIMEOUT).await.map_err(|(error, _)| error)?;

    let mut rows = vec![already];
    for index in 0..40 {
        let (aggregate_type, topic) = if index % 2 == 0 { ("order", Some(orders.clone())) } else { ("article", None) };
        rows.push(Row {
            event_id: Uuid::new_v4(),
            aggregate_type,
            aggregate_id: format!("{}-{}", &aggregate_type[..1], index % 4),
            topic,
            headers: vec![("tenant".into(), format!("t{index}")), ("event_id".into(), "forged".into())],
        });
    }
    enqueue_rows(&pool, &rows).await?;
    let relay =
        e2e::component::relay(&db1, fixtures.bootstrap_servers(), &default_topic, &[("batch-size", "7")]).await?;
    e2e::wait::until("the outbox to drain", TIMEOUT, || async { Ok(outbox_rows(&pool).await? == 0) }).await?;

    let on_orders = topic_records(fixtures.bootstrap_servers(), &orders).await?;
    let on_default = topic_records(fixtures.bootstrap_servers(), &default_topic).await?;
    let (orders_seen, default_seen) = (counts(&on_orders), counts(&on_default));
    for row in &rows {
        let (mine, other) =
            if row.topic.is_some() { (&orders_seen, &default_seen) } else { (&default_seen, &orders_seen) };
        let id = row.event_id.to_string();
        assert_eq!(mine.get(&id), Some(&1), "{id} once on its own topic");
        assert_eq!(other.get(&id), None, "{id} not on the other topic");
    }
    assert_eq!(on_orders.len(), 21, "the record already there and 20 orders");
    assert_eq!(on_default.len(), 20);
    // Keys, extra headers and per-aggregate order.
    let by_id: HashMap<String, &Row> = rows.iter().map(|row| (row.event_id.to_string(), row)).collect();
    let mut order_per_key: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for record in on_orders.iter().chain(&on_default).filter(|record| record.header("tenant").is_some()) {
        let row = by_id[record.header("event_id").unwrap_or_default()];
        assert_eq!(record.key.as_deref(), Some(row.aggregate_id.as_str()), "keyed by aggregate id");
        assert_eq!(record.header("tenant"), Some(row.headers[0].1.as_str()), "the row's extra header");
        assert_eq!(record.header("event_type"), Some(format!("{}.changed", row.aggregate_type).as_str()));
        let position = rows.iter().position(|candidate| candidate.event_id == row.event_id).unwrap_or_default();
        order_per_key.entry((row.aggregate_type.to_owned(), row.aggregate_id.clone())).or_default().push(position);
    }
    for (key, positions) in &order_per_key {
        assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{key:?} in row order: {positions:?}");
    }
    let metrics = e2e::ApiClient::new(&relay.url()).text("/metrics").await?;
    assert_eq!(e2e::metric(&metrics, "outbox_reconciled_total"), 1.0, "found on the orders topic: {metrics}");
    assert_eq!(e2e::metric(&metrics, "kafka_messages_sent_total"), 40.0, "{metrics}");
    let checkpointed = outbox::checkpointed_topics(&pool.get().await?).await?;
    assert!(checkpointed.contains(&orders) && checkpointed.contains(&default_topic), "{checkpointed:?}");
    relay.stop().await
}

/// `RELAY_CLOUDEVENTS=binary`: every record carries the six attributes with the row's values;
/// off (the default), none of them.
#[tokio::test(flavor = "multi_thread")]
async fn cloudevents_attributes_are_on_every_record_when_asked_and_on_none_otherwise() -> anyhow::Result<()> {
    let outbox = Outbox::start().await?;
    let row = |index: usize| Row {
        event_id: Uuid::new_v4(),
        aggregate_type: "article",
        aggregate_id: index.to_string(),
        topic: None,
        headers: vec![],
    };
    let plain: Vec<Row> = (0..5).map(row).collect();
    enqueue_rows(&outbox.pool, &plain).await?;
    let relay = outbox.relay(&[]).await?;
    outbox.wait_for_rows(0).await?;
    relay.stop().await?;

    let before = Utc::now();
    let stamped: Vec<Row> = (0..5).map(row).collect();
    enqueue_rows(&outbox.pool, &stamped).await?;
    let after = Utc::now();
    let relay = outbox.relay(&[("cloudevents", "binary"), ("cloudevents-source", "urn:test:blog")]).await?;
    outbox.wait_for_rows(0).await?;
    relay.stop().await?;

    let records = topic_records(outbox.fixtures.bootstrap_servers(), &outbox.topic).await?;
    assert_eq!(records.len(), 10);
    let attributes = ["ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "content-type"];
    for record in &records {
        let event_id = record.header("event_id").unwrap_or_default();
        if plain.iter().any(|row| row.event_id.to_string() == event_id) {
            for name in attributes {
                assert_eq!(record.header(name), None, "off: no {name} on {event_id}");
            }
            continue;
        }
        assert_eq!(record.header("ce_specversion"), Some("1.0"));
        assert_eq!(record.header("ce_id"), Some(event_id));
        assert_eq!(record.header("ce_type"), Some("article.changed"));
        assert_eq!(record.header("ce_source"), Some("urn:test:blog"));
        assert_eq!(record.header("content-type"), Some("application/json"));
        let time: DateTime<Utc> = DateTime::parse_from_rfc3339(record.header("ce_time").unwrap_or_default())?.into();
        // When the row was written, not when it was published: the relay only started after.
        assert!(time >= before - chrono::Duration::seconds(1) && time <= after, "{time} within [{before}, {after}]");
    }
    Ok(())
}

/// A writer's row naming a topic Kafka would refuse, or headers that are not a JSON object, is
/// refused in the writer's own transaction (SQLSTATE 23514 or 22P02), naming the rule: it can
/// never reach the relay and hold up the outbox.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_with_a_bad_topic_or_bad_headers_is_refused_at_enqueue() -> anyhow::Result<()> {
    let outbox = Outbox::start().await?;
    let client = outbox.pool.get().await?;
    let insert = |topic: Option<&'static str>, headers: Option<&'static str>| {
        let client = &client;
        async move {
            client
                .execute(
                    "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, topic, headers, payload) \
                     VALUES (gen_random_uuid(), 'order', '1', 'order.placed', $1, $2, '{}')",
                    &[&topic, &headers],
                )
                .await
        }
    };
    for (topic, headers, wanted) in [
        (Some("has space"), None, "outbox_topic_is_a_kafka_topic_name"),
        (Some(""), None, "outbox_topic_is_a_kafka_topic_name"),
        (Some(".."), None, "outbox_topic_is_a_kafka_topic_name"),
        (None, Some("[1, 2]"), "outbox_headers_are_a_json_object"),
        (None, Some("not json"), "json"),
    ] {
        let error = insert(topic, headers).await.expect_err("refused");
        let text = service_kit::db::error_chain(&error);
        assert!(text.contains(wanted), "{topic:?} {headers:?}: {text}");
    }
    insert(Some("orders.v1_eu-west"), Some(r#"{"tenant": "t1"}"#)).await?;
    insert(None, None).await?;
    assert_eq!(outbox_rows(&outbox.pool).await?, 2, "only the good rows are in");
    Ok(())
}

/// A LISTEN connection on `db`'s outbox channel; each notification's arrival is sent on the channel.
async fn listen(
    db: &service_kit::config::DatabaseUrl,
) -> anyhow::Result<(tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<()>)> {
    use futures_util::StreamExt as _;
    let (client, mut connection) = service_kit::db::connection_config(db).connect(db.tls()).await?;
    let (arrived, notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = message {
                let _ = arrived.send(());
            }
        }
    });
    client.batch_execute(&format!("LISTEN {}", outbox::NOTIFY_CHANNEL)).await?;
    Ok((client, notifications))
}

/// A writer at high rates enqueues without notifying and wakes the relay after its commit: the
/// notification comes after the commit (the row is visible when it arrives), none comes from the
/// transaction itself, and a burst of wake-ups is folded into a few notifications.
#[tokio::test(flavor = "multi_thread")]
async fn the_relay_waker_notifies_after_the_commit_and_folds_a_burst() -> anyhow::Result<()> {
    let outbox = Outbox::start().await?;
    let (listener, mut notifications) = listen(&outbox.db1).await?;
    let waker = outbox::RelayWaker::spawn(outbox.pool.clone());
    let event_id = Uuid::new_v4();
    let event = NewEvent {
        event_id,
        aggregate_type: "order",
        aggregate_id: "o-1",
        event_type: "order.placed",
        topic: None,
        headers: &[],
        payload: "{}",
        trace_context: &HashMap::new(),
    };
    let mut client = outbox.pool.get().await?;
    let transaction = client.transaction().await?;
    outbox::enqueue_without_notify(&transaction, &event).await?;
    transaction.commit().await?;
    let quiet = tokio::time::timeout(Duration::from_millis(500), notifications.recv()).await;
    assert!(quiet.is_err(), "the transaction itself notified nobody");

    waker.wake();
    tokio::time::timeout(TIMEOUT, notifications.recv()).await?.expect("a notification");
    let visible: i64 =
        listener.query_one("SELECT count(*) FROM outbox WHERE event_id = $1", &[&event_id]).await?.get(0);
    assert_eq!(visible, 1, "the row had committed when its notification arrived");

    // `enqueue` still notifies on the writer's transaction, for writers at modest rates.
    let transaction = client.transaction().await?;
    outbox::enqueue(&transaction, &NewEvent { event_id: Uuid::new_v4(), ..event }).await?;
    transaction.commit().await?;
    tokio::time::timeout(TIMEOUT, notifications.recv()).await?.expect("the transaction's notification");

    let burst = 500;
    for _ in 0..burst {
        waker.wake();
    }
    tokio::time::timeout(TIMEOUT, notifications.recv()).await?.expect("a notification for the burst");
    // Whatever else the burst sent arrives within a second; far fewer than one per wake-up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut folded = 1;
    while notifications.try_recv().is_ok() {
        folded += 1;
    }
    assert!(folded < burst / 10, "{folded} notifications for {burst} wake-ups");

    // The waker's connection is its own: the pool's connections still commit synchronously.
    let setting: String = outbox.pool.get().await?.query_one("SHOW synchronous_commit", &[]).await?.get(0);
    assert_eq!(setting, "on");
    Ok(())
}
