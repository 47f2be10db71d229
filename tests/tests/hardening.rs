//! Partial failure and access control: a write token, DB1 and DB2 outages.

use std::time::{Duration, Instant};

use e2e::Stack;
use e2e::stack::{FAST_TAKEOVER, Service};
use reqwest::Method;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(120);

fn body(title: &str) -> serde_json::Value {
    json!({"title": title, "content": "c", "author": "hardening"})
}

/// With `API_TOKEN` set, every write needs the bearer token (401 JSON otherwise); reads, health
/// and metrics stay open; the token never appears in the logs.
#[tokio::test(flavor = "multi_thread")]
async fn writes_need_the_token_and_reads_stay_open() -> anyhow::Result<()> {
    const TOKEN: &str = "s3cret-token-for-tests";
    let stack = Stack::start_for_test_configured(|options| {
        options.service_env_by_name = vec![(Service::Api, "API_TOKEN".into(), TOKEN.into())];
    })
    .await?;
    let api = stack.api();
    let create = |headers: Vec<(&'static str, String)>| {
        let api = api.clone();
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
            api.request_with_headers(Method::POST, "/api/v1/articles", Some(&body("secured")), &headers).await
        }
    };
    for headers in
        [vec![], vec![("authorization", "Bearer wrong".to_owned())], vec![("authorization", TOKEN.to_owned())]]
    {
        let (status, json) = create(headers).await?;
        assert_eq!(status, 401, "{json}");
        assert_eq!(json["error"]["code"], "unauthorized");
    }
    let (status, created) = create(vec![("authorization", format!("Bearer {TOKEN}"))]).await?;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().expect("an id");
    let (status, _) = api.request(Method::DELETE, &format!("/api/v1/articles/{id}"), None).await?;
    assert_eq!(status, 401, "DELETE needs the token too");
    for path in [format!("/api/v1/articles/{id}"), "/api/v1/articles".to_owned(), "/health".to_owned()] {
        assert_eq!(api.request(Method::GET, &path, None).await?.0, 200, "{path} stays open");
    }
    assert!(api.text("/api/v1/metrics").await?.contains("http_requests_total"));
    stack.wait_for_replica(TIMEOUT).await?;
    let log = std::fs::read_to_string(stack.root().join("logs/api.log"))?;
    assert!(!log.contains(TOKEN), "the token leaked into the log");
    assert!(!log.contains("blogpass"));
    Ok(())
}

/// DB1 down: the API answers 503 JSON within seconds (never hangs) and recovers by itself; the
/// relay waits; at the end DB2 equals DB1.
#[tokio::test(flavor = "multi_thread")]
async fn db1_outage_gives_503s_then_recovers() -> anyhow::Result<()> {
    let mut stack =
        Stack::start_for_test_configured(|options| options.relay_delivery_timeout = Some(FAST_TAKEOVER)).await?;
    let api = stack.api();
    api.create(&body("before")).await?;
    stack.wait_for_replica(TIMEOUT).await?;
    stack.db1.stop().await;
    let asked = Instant::now();
    let (status, json) = api.request(Method::POST, "/api/v1/articles", Some(&body("during"))).await?;
    let answered_in = asked.elapsed();
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["error"]["code"], "service_unavailable");
    assert!(
        answered_in < Duration::from_secs(12),
        "answered in {answered_in:?}: bounded by the pool wait and request timeout"
    );
    assert_eq!(api.request(Method::GET, "/api/v1/articles/1", None).await?.0, 503);
    stack.db1.restart().await?;
    e2e::wait::until("the API to accept writes again", TIMEOUT, || async {
        Ok(api.request(Method::POST, "/api/v1/articles", Some(&body("after"))).await?.0 == 201)
    })
    .await?;
    let articles = stack.wait_for_replica(TIMEOUT).await?;
    assert!(articles.iter().all(|article| article.title != "during"), "the refused write left nothing behind");
    assert!(articles.iter().any(|article| article.title == "after"));
    Ok(())
}

/// DB2 down: the sink stops applying (and storing offsets), retries, and loses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn db2_outage_loses_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start_for_test().await?;
    let api = stack.api();
    api.create(&body("before")).await?;
    stack.wait_for_replica(TIMEOUT).await?;
    stack.db2.stop().await;
    for i in 0..10 {
        api.create(&body(&format!("during {i}"))).await?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(stack.process(Service::Sink).is_running(), "the sink keeps running while DB2 is down");
    stack.db2.restart().await?;
    let articles = stack.wait_for_replica(TIMEOUT).await?;
    assert_eq!(articles.len(), 11);
    Ok(())
}

/// Poison records (not UTF-8, not JSON, unknown event type, missing fields, wrong types) between
/// good ones: the good ones are applied, the poison goes to `articles.dlq` with headers saying why
/// and where from, and the pipeline keeps going.
#[tokio::test(flavor = "multi_thread")]
async fn poison_goes_to_the_dead_letter_topic_and_good_events_are_applied() -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let stack = Stack::start_for_test().await?;
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
    let producer: FutureProducer = kafka_kit::client_config(&stack.bootstrap_servers()).set("acks", "all").create()?;
    for value in &records {
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(stack.topic()).key("poison-test").payload(value);
        producer.send(record, Duration::from_secs(30)).await.map_err(|(error, _)| error)?;
    }
    let db2 = stack.db2_client().await?;
    e2e::wait::until("the good events to be applied", TIMEOUT, || async {
        let applied: i64 = db2.query_one("SELECT count(*) FROM articles WHERE id IN (7001, 7005)", &[]).await?.get(0);
        Ok(applied == 2)
    })
    .await?;
    let (bootstrap, dlq_topic) = (stack.bootstrap_servers(), stack.dlq_topic());
    let dead = e2e::wait::until_some("five records in the dead-letter topic", TIMEOUT, || {
        let (bootstrap, dlq_topic) = (bootstrap.clone(), dlq_topic.clone());
        async move {
            let dead =
                tokio::task::spawn_blocking(move || blogctl::read_all(&bootstrap, &dlq_topic, Duration::from_secs(20)))
                    .await??;
            Ok((dead.len() == 5).then_some(dead))
        }
    })
    .await?;
    let reasons: Vec<&str> = dead.iter().filter_map(|record| record.header("dlq.reason")).collect();
    assert_eq!(reasons, ["not_utf8", "invalid_event", "invalid_event", "invalid_event", "invalid_event"], "{dead:?}");
    for record in &dead {
        assert_eq!(record.header("dlq.source.topic"), Some(stack.topic()));
        assert!(record.header("dlq.source.offset").is_some() && record.header("dlq.error").is_some());
        assert_eq!(record.key.as_deref(), Some("poison-test"));
    }
    assert_eq!(dead[0].value.as_deref(), Some(&b"\xff\xfe not utf-8"[..]), "the original bytes are kept");
    let metrics = e2e::ApiClient::new(&stack.url(Service::Sink)).text("/metrics").await?;
    assert!(metrics.contains("sink_events_poison_total{reason=\"invalid_event\"} 4"), "{metrics}");
    Ok(())
}
