//! End-to-end tests of the core pipeline on real components: two PostgreSQL clusters, the nisshi
//! broker and the three service binaries, each test with its own (see `e2e::Stack`). They follow
//! the seed guide's scenarios, then go beyond them (random operations, Kafka down, relay killed).

use std::collections::HashMap;
use std::time::Duration;

use e2e::Stack;
use e2e::stack::{Service, TOPIC};
use serde_json::json;
use shared::{ArticleEvent, ArticleStatus, EventType};

const SYNC_TIMEOUT: Duration = Duration::from_secs(90);

fn article_body(title: &str, author: &str) -> serde_json::Value {
    json!({ "title": title, "content": format!("Content of {title}"), "author": author })
}

/// The events on the topic, decoded, in partition/offset order.
async fn topic_events(stack: &Stack) -> anyhow::Result<Vec<(blogctl::Record, ArticleEvent)>> {
    let records = stack.topic_records().await?;
    records
        .into_iter()
        .map(|record| {
            let event: ArticleEvent =
                serde_json::from_slice(record.value.as_deref().unwrap_or_default())?;
            Ok((record, event))
        })
        .collect()
}

/// The seed's full lifecycle: create → update → publish → delete, each visible in DB2; the topic
/// holds the four events in order, keyed by the article id, with `event_id`/`event_type` headers.
#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_create_update_publish_delete_reaches_the_replica() -> anyhow::Result<()> {
    let stack = Stack::start_for_test().await?;
    let api = stack.api();
    let created = api
        .create(&json!({
            "title": "Sync Verification Article",
            "content": "Testing full synchronization",
            "author": "Sync Test",
            "category": "sync-test",
            "tags": ["sync", "test", "kafka"]
        }))
        .await?;
    assert_eq!(created.status, ArticleStatus::Draft);
    assert_eq!(created.views_count, 0);
    assert_eq!(created.published_at, None);
    let replica = stack.wait_for_replica(SYNC_TIMEOUT).await?;
    assert_eq!(replica, vec![created.clone()]);

    let updated = api
        .replace(
            created.id,
            &json!({
                "title": "Sync Verification Article - UPDATED",
                "content": "Updated content",
                "author": "Sync Test",
                "category": "sync-test-updated",
                "tags": ["sync", "test", "kafka", "updated"]
            }),
        )
        .await?;
    assert_eq!(updated.version, created.version + 1);
    assert_eq!(
        stack.wait_for_replica(SYNC_TIMEOUT).await?,
        vec![updated.clone()]
    );

    let published = api.publish(created.id).await?;
    assert_eq!(published.status, ArticleStatus::Published);
    assert!(published.published_at.is_some());
    assert_eq!(
        stack.wait_for_replica(SYNC_TIMEOUT).await?,
        vec![published.clone()]
    );
    let (status, body) = api
        .request(
            reqwest::Method::POST,
            &format!("/api/v1/articles/{}/publish", created.id),
            None,
        )
        .await?;
    assert_eq!(status, 409, "publishing twice is a conflict: {body}");

    api.delete(created.id).await?;
    assert!(api.get(created.id).await?.is_none());
    assert!(stack.wait_for_replica(SYNC_TIMEOUT).await?.is_empty());

    let events = topic_events(&stack).await?;
    let kinds: Vec<EventType> = events.iter().map(|(_, event)| event.event_type).collect();
    assert_eq!(
        kinds,
        [
            EventType::Created,
            EventType::Updated,
            EventType::Published,
            EventType::Deleted
        ]
    );
    for (record, event) in &events {
        assert_eq!(record.key.as_deref(), Some(created.id.to_string().as_str()));
        assert_eq!(record.header("event_id"), event.event_id.as_deref());
        assert_eq!(record.header("event_type"), Some(event.event_type.as_str()));
        assert_eq!(event.data.id, created.id);
    }
    let deleted = &events[3].1.data;
    assert_eq!(
        deleted.title, published.title,
        "the deletion carries the last state"
    );
    assert_eq!(deleted.version, published.version + 1);

    let db2 = stack.db2_client().await?;
    let processed: i64 = db2
        .query_one("SELECT count(*) FROM processed_events", &[])
        .await?
        .get(0);
    assert_eq!(processed, 4);
    let metrics = e2e::ApiClient::new(&stack.url(Service::Relay))
        .text("/metrics")
        .await?;
    assert!(
        metrics.contains("kafka_messages_sent_total{event_type=\"article.created\"} 1"),
        "{metrics}"
    );
    Ok(())
}
