//! End-to-end tests of the core pipeline on real components: two PostgreSQL clusters, a broker
//! (Apache Kafka, or nisshi with `BROKER=nisshi`) and the three service binaries, each test with
//! its own clusters and services, and its own topics on the run's shared broker (see `e2e::Stack`). They follow
//! the seed guide's scenarios, then go beyond them (random operations, Kafka down, relay killed).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use e2e::process::Server as _;
use e2e::stack::Service;
use e2e::{ApiClient, Stack};
use events::{ArticleEvent, ArticleStatus, EventType};
use reqwest::Method;
use serde_json::json;

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
            let event: ArticleEvent = serde_json::from_slice(record.value.as_deref().unwrap_or_default())?;
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
    assert_eq!(stack.wait_for_replica(SYNC_TIMEOUT).await?, vec![updated.clone()]);

    let published = api.publish(created.id).await?;
    assert_eq!(published.status, ArticleStatus::Published);
    assert!(published.published_at.is_some());
    assert_eq!(stack.wait_for_replica(SYNC_TIMEOUT).await?, vec![published.clone()]);
    let (status, body) =
        api.request(reqwest::Method::POST, &format!("/api/v1/articles/{}/publish", created.id), None).await?;
    assert_eq!(status, 409, "publishing twice is a conflict: {body}");

    api.delete(created.id).await?;
    assert!(api.get(created.id).await?.is_none());
    assert!(stack.wait_for_replica(SYNC_TIMEOUT).await?.is_empty());

    let events = topic_events(&stack).await?;
    let kinds: Vec<EventType> = events.iter().map(|(_, event)| event.event_type).collect();
    assert_eq!(kinds, [EventType::Created, EventType::Updated, EventType::Published, EventType::Deleted]);
    for (record, event) in &events {
        assert_eq!(record.key.as_deref(), Some(created.id.to_string().as_str()));
        assert_eq!(record.header("event_id"), event.event_id.as_deref());
        assert_eq!(record.header("event_type"), Some(event.event_type.as_str()));
        assert_eq!(event.data.id, created.id);
    }
    let deleted = &events[3].1.data;
    assert_eq!(deleted.title, published.title, "the deletion carries the last state");
    assert_eq!(deleted.version, published.version + 1);

    let db2 = stack.db2_client().await?;
    let processed: i64 = db2.query_one("SELECT count(*) FROM processed_events", &[]).await?.get(0);
    assert_eq!(processed, 4);
    let metrics = e2e::ApiClient::new(&stack.url(Service::Relay)).text("/metrics").await?;
    assert!(metrics.contains("kafka_messages_sent_total{event_type=\"article.created\"} 1"), "{metrics}");
    Ok(())
}

/// Reads a single number from DB2.
async fn db2_count(stack: &Stack, sql: &str) -> anyhow::Result<i64> {
    Ok(stack.db2_client().await?.query_one(sql, &[]).await?.get(0))
}

/// The seed's resilience test: with the sink stopped, 5 creates pile up as lag 5; once the sink
/// is back they all reach DB2 and the lag returns to 0.
#[tokio::test(flavor = "multi_thread")]
async fn events_wait_on_the_topic_while_the_sink_is_stopped() -> anyhow::Result<()> {
    let mut stack = Stack::start_for_test().await?;
    let api = stack.api();
    api.create(&article_body("Before the stop", "Someone")).await?;
    stack.wait_for_replica(SYNC_TIMEOUT).await?;
    e2e::wait::until("lag 0 before the stop", SYNC_TIMEOUT, || async { Ok(stack.consumer_lag().await? == 0) }).await?;

    assert_eq!(stack.stop(Service::Sink).await, Some(0), "the sink exits cleanly on SIGTERM");
    for i in 1..=5 {
        api.create(&article_body(&format!("Article {i}"), "Test")).await?;
    }
    e2e::wait::until("lag 5 while the sink is stopped", SYNC_TIMEOUT, || async {
        Ok(stack.consumer_lag().await? == 5)
    })
    .await?;
    assert_eq!(db2_count(&stack, "SELECT count(*) FROM articles WHERE author = 'Test'").await?, 0);

    stack.restart(Service::Sink).await?;
    stack.wait_for_replica(SYNC_TIMEOUT).await?;
    assert_eq!(db2_count(&stack, "SELECT count(*) FROM articles WHERE author = 'Test'").await?, 5);
    e2e::wait::until("lag back to 0", SYNC_TIMEOUT, || async { Ok(stack.consumer_lag().await? == 0) }).await?;
    let lags =
        blogctl::group_lag(&stack.bootstrap_servers(), stack.topic(), stack.group(), stack.options.broker.isolation())?;
    assert!(lags.iter().all(|lag| lag.lag == 0), "{lags:?}");
    Ok(())
}

/// The seed's performance scenario: 100 creates → the same count in DB1 and DB2.
#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_creates_all_reach_the_replica() -> anyhow::Result<()> {
    let stack = Stack::start_for_test().await?;
    let api = stack.api();
    for i in 1..=100 {
        api.create(&article_body(&format!("Perf Test {i}"), "PerfTest")).await?;
    }
    let articles = stack.wait_for_replica(SYNC_TIMEOUT).await?;
    assert_eq!(articles.iter().filter(|article| article.author == "PerfTest").count(), 100);
    assert_eq!(db2_count(&stack, "SELECT count(*) FROM articles WHERE author = 'PerfTest'").await?, 100);
    Ok(())
}

/// One random change through the API; tolerates the answers a concurrent history can produce
/// (404 after another worker's delete, 409 when publishing twice).
async fn random_operation(
    api: &ApiClient,
    rng: &mut fastrand::Rng,
    own: &mut Vec<i64>,
    shared: &[i64],
) -> anyhow::Result<()> {
    let title = format!("Title {}", rng.u32(..));
    let roll = rng.u8(..100);
    if own.is_empty() || roll < 25 {
        let mut body = article_body(&title, &format!("author-{}", rng.u8(..4)));
        if rng.bool() {
            body["category"] = json!(format!("cat-{}", rng.u8(..3)));
            body["tags"] = json!(["a", "b"]);
        }
        own.push(api.create(&body).await?.id);
        return Ok(());
    }
    let id = own[rng.usize(..own.len())];
    match roll {
        25..=44 => {
            api.replace(id, &json!({"title": title, "content": "replaced", "author": "replacer", "tags": ["x"]}))
                .await?;
        }
        45..=64 => {
            let target = if shared.is_empty() || rng.bool() { id } else { shared[rng.usize(..shared.len())] };
            let (status, body) = api
                .request(
                    Method::PATCH,
                    &format!("/api/v1/articles/{target}"),
                    Some(&json!({"title": title, "category": null})),
                )
                .await?;
            anyhow::ensure!(status == 200, "PATCH {target}: {status} {body}");
        }
        65..=79 => {
            let (status, body) = api.request(Method::POST, &format!("/api/v1/articles/{id}/publish"), None).await?;
            anyhow::ensure!(status == 200 || status == 409, "publish {id}: {status} {body}");
        }
        80..=89 => {
            api.delete(id).await?;
            own.retain(|&other| other != id);
        }
        _ => {
            anyhow::ensure!(api.get(id).await?.is_some(), "article {id} vanished");
            let (status, _) = api.request(Method::GET, "/api/v1/articles?per_page=5&status=draft", None).await?;
            anyhow::ensure!(status == 200);
        }
    }
    Ok(())
}

/// A few hundred random operations from concurrent clients (some on shared articles) → DB1 and DB2
/// hold identical articles, every column compared.
#[tokio::test(flavor = "multi_thread")]
async fn random_mixed_operations_leave_identical_databases() -> anyhow::Result<()> {
    let stack = Stack::start_for_test().await?;
    let api = stack.api();
    let mut shared_ids = Vec::new();
    for i in 0..5 {
        shared_ids.push(api.create(&article_body(&format!("Hot {i}"), "hot")).await?.id);
    }
    let seed = fastrand::u64(..);
    println!("random operations seed: {seed}");
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (api, shared_ids) = (api.clone(), shared_ids.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed + worker);
            let mut own = Vec::new();
            for _ in 0..75 {
                random_operation(&api, &mut rng, &mut own, &shared_ids).await?;
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let articles = stack.wait_for_replica(SYNC_TIMEOUT).await?;
    assert!(articles.len() >= 5, "the shared articles are never deleted");
    let statuses: HashSet<ArticleStatus> = articles.iter().map(|article| article.status).collect();
    println!("{} articles, statuses {statuses:?}", articles.len());
    Ok(())
}

/// Kafka down: the API keeps answering 201 (it never talks to Kafka); the relay keeps the rows,
/// with deliveries timing out and being retried; once the broker is back every event arrives.
#[tokio::test(flavor = "multi_thread")]
async fn writes_succeed_while_kafka_is_down_and_arrive_once_it_is_back() -> anyhow::Result<()> {
    let mut stack = Stack::start_for_test_configured(|options| {
        options.shared_broker = None;
        options.relay_delivery_timeout = Some(Duration::from_secs(2));
    })
    .await?;
    let api = stack.api();
    api.create(&article_body("Before the outage", "ops")).await?;
    stack.wait_for_replica(SYNC_TIMEOUT).await?;

    stack.broker_mut()?.process_mut().kill();
    let mut created = Vec::new();
    for i in 0..20 {
        created.push(api.create(&article_body(&format!("During the outage {i}"), "ops")).await?.id);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let db1 = stack.db1_client().await?;
    let backlog: i64 = db1.query_one("SELECT count(*) FROM outbox", &[]).await?.get(0);
    assert!(backlog > 0, "events wait in the outbox while the broker is down");
    let relay_ready = ApiClient::new(&stack.url(Service::Relay)).request(Method::GET, "/ready", None).await?;
    assert_eq!(relay_ready.0, 503, "the relay reports the broker unavailable: {}", relay_ready.1);

    stack.broker_mut()?.restart().await?;
    let articles = stack.wait_for_replica(SYNC_TIMEOUT).await?;
    assert_eq!(articles.len(), 21);
    let events = topic_events(&stack).await?;
    let on_topic: HashSet<i64> = events.iter().map(|(_, event)| event.data.id).collect();
    assert!(created.iter().all(|id| on_topic.contains(id)), "every write made during the outage is on the topic");
    Ok(())
}

/// The relay killed (SIGKILL) twice while writes stream in → nothing lost: every change is on the
/// topic and DB2 equals DB1.
#[tokio::test(flavor = "multi_thread")]
async fn killing_the_relay_mid_stream_loses_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start_for_test().await?;
    let api = stack.api();
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let api = api.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..60 {
                    let article = api.create(&article_body(&format!("w{writer}-{i}"), "stream")).await?;
                    api.patch(article.id, &json!({"content": "patched"})).await?;
                    ids.push(article.id);
                }
                anyhow::Ok(ids)
            })
        })
        .collect();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        stack.kill(Service::Relay);
        tokio::time::sleep(Duration::from_millis(500)).await;
        stack.restart(Service::Relay).await?;
    }
    let mut written = Vec::new();
    for writer in writers {
        written.extend(writer.await??);
    }
    let articles = stack.wait_for_replica(SYNC_TIMEOUT).await?;
    assert_eq!(articles.len(), written.len());
    assert!(articles.iter().all(|article| article.content == "patched" && article.version == 2));
    let events = topic_events(&stack).await?;
    let mut per_article: HashMap<i64, Vec<EventType>> = HashMap::new();
    for (_, event) in &events {
        per_article.entry(event.data.id).or_default().push(event.event_type);
    }
    for id in &written {
        let kinds = per_article.get(id).map(Vec::as_slice).unwrap_or_default();
        assert!(kinds.contains(&EventType::Created) && kinds.contains(&EventType::Updated), "article {id}: {kinds:?}");
    }
    let distinct: HashSet<&str> = events.iter().filter_map(|(record, _)| record.header("event_id")).collect();
    println!(
        "{} events on the topic, {} distinct (at-least-once: resends after a kill are allowed here)",
        events.len(),
        distinct.len()
    );
    Ok(())
}
