//! The notifier in-process (`Application::build`) on a database of its own and a topic of its own
//! on the shared broker: what it writes for each kind of record.

use std::time::Duration;

use e2e::component::{self, Fixtures};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The API's envelope of `article` with `event_type`, as JSON.
fn article_event(event_type: &str, event_id: Option<&str>, article: i64) -> String {
    let mut event: serde_json::Value =
        serde_json::from_str(events::SEED_HAND_WRITTEN_EVENT).expect("the seed's event is JSON");
    event["event_type"] = event_type.into();
    event["data"]["id"] = article.into();
    event["data"]["title"] = format!("Article {article}").into();
    if let Some(event_id) = event_id {
        event["event_id"] = event_id.into();
    }
    event.to_string()
}

/// One published article asks for one notification, in one transaction with its outbox row for
/// the notifications topic and its processed event; a redelivery, a creation and a record that is
/// not an article event ask for nothing, and none of them stops the next one.
#[tokio::test(flavor = "multi_thread")]
async fn a_published_article_asks_once_and_nothing_else_asks() -> anyhow::Result<()> {
    let fixtures = Fixtures::start().await?;
    let database = fixtures.database("notifier").await?;
    let (topic, notifications) = (Fixtures::unique("articles"), Fixtures::unique("notifications"));
    let producer: FutureProducer =
        kafka_kit::client_config(fixtures.bootstrap_servers()).set("acks", "all").create()?;
    let published = article_event("article.published", Some("e-published-7"), 7);
    let records = [
        ("7", article_event("article.created", Some("e-created-7"), 7)),
        ("7", published.clone()),
        ("7", published),
        ("x", "not an article event".to_owned()),
        // The seed's hand-written kind: no event id, so the md5 of the value is its id.
        ("8", article_event("article.published", None, 8)),
    ];
    for (key, value) in &records {
        let headers = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        });
        let record: FutureRecord<'_, str, str> =
            FutureRecord::to(&topic).key(*key).payload(value.as_str()).headers(headers);
        producer.send(record, TIMEOUT).await.map_err(|(error, _)| error)?;
    }
    let notifier = component::notifier(
        &database,
        fixtures.bootstrap_servers(),
        &topic,
        &Fixtures::unique("notifier"),
        &notifications,
    )
    .await?;
    let metrics = e2e::ApiClient::new(&notifier.url());
    e2e::wait::until("every record handled", TIMEOUT, || async {
        let text = metrics.text("/metrics").await?;
        let handled = e2e::metric(&text, "notifier_notifications_requested_total")
            + e2e::metric(&text, "notifier_events_duplicate_total")
            + e2e::metric(&text, "notifier_events_ignored_total")
            + e2e::metric(&text, "notifier_events_poison_total");
        Ok(handled >= 5.0)
    })
    .await?;
    let text = metrics.text("/metrics").await?;
    for (name, wanted) in [
        ("notifier_notifications_requested_total", 2.0),
        ("notifier_events_duplicate_total", 1.0),
        ("notifier_events_ignored_total", 1.0),
        ("notifier_events_poison_total", 1.0),
    ] {
        assert_eq!(e2e::metric(&text, name), wanted, "{name}: {text}");
    }
    let client = service_kit::db::connect(&database).await?;
    let rows = client
        .query(
            "SELECT n.article_id, n.title, n.source_event_id, o.aggregate_type, o.aggregate_id, o.event_type, o.topic, \
             o.headers, o.payload, o.trace_context FROM notifications n \
             JOIN outbox o ON o.payload::jsonb ->> 'source_event_id' = n.source_event_id ORDER BY n.article_id",
            &[],
        )
        .await?;
    assert_eq!(rows.len(), 2, "one notification, with its outbox row, per published article");
    let (first, second) = (&rows[0], &rows[1]);
    assert_eq!(first.get::<_, i64>("article_id"), 7);
    assert_eq!(first.get::<_, String>("title"), "Article 7");
    assert_eq!(first.get::<_, String>("source_event_id"), "e-published-7");
    assert_eq!(second.get::<_, i64>("article_id"), 8);
    assert_eq!(second.get::<_, String>("source_event_id").len(), 32, "the md5 of a hand-written event");
    for row in [first, second] {
        assert_eq!(row.get::<_, String>("aggregate_type"), "notification");
        assert_eq!(row.get::<_, String>("aggregate_id"), row.get::<_, i64>("article_id").to_string());
        assert_eq!(row.get::<_, String>("event_type"), "notification.requested");
        assert_eq!(row.get::<_, Option<String>>("topic").as_deref(), Some(notifications.as_str()));
        let headers: serde_json::Value = serde_json::from_str(&row.get::<_, String>("headers"))?;
        assert_eq!(headers["source_event_id"], row.get::<_, String>("source_event_id"));
        let payload: events::NotificationRequested = serde_json::from_str(&row.get::<_, String>("payload"))?;
        assert_eq!(payload.article_id, row.get::<_, i64>("article_id"));
        assert_eq!(payload.author, "Test");
        let trace: Option<String> = row.get("trace_context");
        assert!(trace.is_some_and(|trace| trace.contains("0af7651916cd43dd8448eb211c80319c")), "the trace goes on");
    }
    let processed: i64 = client.query_one("SELECT count(*) FROM processed_events", &[]).await?.get(0);
    assert_eq!(processed, 2, "only the events acted on are recorded");
    notifier.stop().await
}
