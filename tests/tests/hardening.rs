//! Partial failure and access control: a write token, DB1 and DB2 outages.

use std::time::{Duration, Instant};

use e2e::Stack;
use e2e::process::Server as _;
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
