//! The API in-process (`Application::build` on port 0), on a DB1 of its own in the run's shared
//! PostgreSQL cluster: every route, its errors, and the outbox rows its writes commit.

use std::collections::BTreeSet;

use anyhow::Context as _;
use e2e::ApiClient;
use e2e::component::{self, Fixtures};
use events::{ArticleEvent, EventType};
use reqwest::Method;
use serde_json::json;

fn article_body(title: &str, author: &str) -> serde_json::Value {
    json!({ "title": title, "content": format!("Content of {title}"), "author": author })
}

/// An API on a fresh DB1; the client, and a connection to read the outbox.
async fn api() -> anyhow::Result<(Fixtures, component::Running, ApiClient, tokio_postgres::Client)> {
    let fixtures = Fixtures::start().await?;
    let db1 = fixtures.database("db1").await?;
    let running = component::api(&db1, &[]).await?;
    let client = ApiClient::new(&running.url());
    let db1 = service_kit::db::connect(&db1).await?;
    Ok((fixtures, running, client, db1))
}

/// The outbox rows, oldest first, decoded.
async fn outbox_events(db1: &tokio_postgres::Client) -> anyhow::Result<Vec<(i64, String, ArticleEvent)>> {
    let rows = db1
        .query(
            "SELECT aggregate_id::bigint AS article_id, event_type, payload FROM outbox \
             WHERE aggregate_type = 'article' AND topic IS NULL ORDER BY id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let payload: String = row.get("payload");
            Ok((row.get("article_id"), row.get("event_type"), serde_json::from_str(&payload)?))
        })
        .collect()
}

/// Each successful write commits exactly one outbox row carrying the seed's envelope (with the
/// article as the answer showed it, its version, and a unique event id); a refused write
/// commits none.
#[tokio::test(flavor = "multi_thread")]
async fn every_write_commits_one_outbox_event_and_a_refused_write_none() -> anyhow::Result<()> {
    let (_fixtures, _running, api, db1) = api().await?;
    let created = api.create(&article_body("Outboxed", "routes")).await?;
    let replaced = api.replace(created.id, &article_body("Replaced", "routes")).await?;
    let patched = api.patch(created.id, &json!({"category": "tests", "tags": ["a", "b"]})).await?;
    let published = api.publish(created.id).await?;
    assert_eq!(api.request(Method::POST, &format!("/api/v1/articles/{}/publish", created.id), None).await?.0, 409);
    assert_eq!(api.request(Method::PUT, "/api/v1/articles/987654", Some(&article_body("x", "y"))).await?.0, 404);
    assert_eq!(
        api.request(Method::PATCH, &format!("/api/v1/articles/{}", created.id), Some(&json!({"title": ""}))).await?.0,
        422
    );
    assert_eq!(api.get(created.id).await?.as_ref(), Some(&published));
    api.delete(created.id).await?;
    assert_eq!(api.get(created.id).await?, None);
    assert_eq!(api.request(Method::DELETE, &format!("/api/v1/articles/{}", created.id), None).await?.0, 404);

    let events = outbox_events(&db1).await?;
    let kinds: Vec<EventType> = events.iter().map(|(_, _, event)| event.event_type).collect();
    assert_eq!(
        kinds,
        [EventType::Created, EventType::Updated, EventType::Updated, EventType::Published, EventType::Deleted]
    );
    for (article_id, event_type, event) in &events {
        assert_eq!(*article_id, created.id, "the record key is the article id");
        assert_eq!(event_type, event.event_type.as_str());
    }
    let data: Vec<_> = events.iter().map(|(_, _, event)| event.data.clone()).collect();
    assert_eq!(
        data[..4],
        [created.clone(), replaced, patched, published.clone()],
        "each event carries the answer's article"
    );
    assert_eq!(data[4].version, published.version + 1, "a deletion takes the next version");
    let ids: BTreeSet<_> =
        events.iter().map(|(_, _, event)| event.event_id.clone().context("an event id")).collect::<Result<_, _>>()?;
    assert_eq!(ids.len(), 5, "event ids are unique");
    Ok(())
}

/// The list's filters and paging, in creation order (ascending id), as the document says.
#[tokio::test(flavor = "multi_thread")]
async fn the_list_filters_and_pages_in_creation_order() -> anyhow::Result<()> {
    let (_fixtures, _running, api, _db1) = api().await?;
    let mut ids = Vec::new();
    for index in 0..5 {
        let author = if index % 2 == 0 { "even" } else { "odd" };
        ids.push(api.create(&article_body(&format!("Listed {index}"), author)).await?.id);
    }
    api.publish(ids[2]).await?;
    let (status, page) = api.request(Method::GET, "/api/v1/articles?author=even&per_page=2&page=2", None).await?;
    assert_eq!(status, 200, "{page}");
    assert_eq!((page["total"].as_i64(), page["pages"].as_i64(), page["page"].as_i64()), (Some(3), Some(2), Some(2)));
    assert_eq!(page["items"][0]["id"].as_i64(), Some(ids[4]));
    let (_, published) = api.request(Method::GET, "/api/v1/articles?status=published", None).await?;
    assert_eq!(published["total"], 1);
    assert_eq!(published["items"][0]["id"].as_i64(), Some(ids[2]));
    let (_, all) = api.request(Method::GET, "/api/v1/articles", None).await?;
    let listed: Vec<i64> =
        all["items"].as_array().context("items")?.iter().filter_map(|item| item["id"].as_i64()).collect();
    assert_eq!(listed, ids, "ascending id");
    Ok(())
}

/// Errors are JSON with the right status, never an HTML page or a panic.
#[tokio::test(flavor = "multi_thread")]
async fn api_errors_are_json_with_the_right_status() -> anyhow::Result<()> {
    let (_fixtures, _running, api, _db1) = api().await?;
    let cases: Vec<(Method, &str, Option<serde_json::Value>, u16, &str)> = vec![
        (Method::GET, "/api/v1/articles/424242", None, 404, "not_found"),
        (Method::GET, "/api/v1/articles/abc", None, 400, "bad_request"),
        (Method::GET, "/api/v1/articles/-1", None, 400, "bad_request"),
        (Method::POST, "/api/v1/articles", Some(json!({"title": "t", "content": "c"})), 422, "validation_failed"),
        (
            Method::POST,
            "/api/v1/articles",
            Some(json!({"title": "  ", "content": "c", "author": "a"})),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            "/api/v1/articles",
            Some(json!({"title": "a\0b", "content": "c", "author": "a"})),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            "/api/v1/articles",
            Some(json!({"title": 5, "content": "c", "author": "a"})),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            "/api/v1/articles",
            Some(json!({"title": "t", "content": "c", "author": "a", "id": 7})),
            422,
            "validation_failed",
        ),
        (Method::GET, "/api/v1/articles?per_page=1000", None, 400, "bad_request"),
        (Method::GET, "/api/v1/articles?page=zero", None, 400, "bad_request"),
        (Method::GET, "/api/v1/nothing", None, 404, "not_found"),
        (Method::DELETE, "/api/v1/articles", None, 405, "method_not_allowed"),
    ];
    for (method, path, body, status, code) in cases {
        let (got, json) = api.request(method.clone(), path, body.as_ref()).await?;
        assert_eq!(got, status, "{method} {path} {body:?}: {json}");
        assert_eq!(json["error"]["code"], code, "{method} {path}: {json}");
        assert!(json["error"]["message"].is_string());
    }
    let huge = json!({"title": "t", "author": "a", "content": "x".repeat(2 * 1024 * 1024)});
    let (status, json) = api.request(Method::POST, "/api/v1/articles", Some(&huge)).await?;
    assert_eq!(status, 413, "a body over 1 MiB: {json}");
    assert_eq!(json["error"]["code"], "payload_too_large");
    let created = api.create(&article_body("Listed", "lister")).await?;
    let (status, page) = api.request(Method::GET, "/api/v1/articles?author=lister&per_page=10", None).await?;
    assert_eq!(status, 200);
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["id"], created.id);
    let metrics = api.text("/api/v1/metrics").await?;
    assert!(metrics.contains("article_writes_total{event_type=\"article.created\"} 1"), "{metrics}");
    Ok(())
}

/// Beyond `MAX_CONCURRENT_REQUESTS` a request is answered 503 at once, with `Retry-After`, a JSON
/// body naming the limit, and nothing written; health, readiness and metrics still answer; the
/// requests in progress complete, and once they have the API takes writes again.
#[tokio::test(flavor = "multi_thread")]
async fn requests_beyond_the_limit_are_shed_at_once_and_write_nothing() -> anyhow::Result<()> {
    let fixtures = Fixtures::start().await?;
    let db1_url = fixtures.database("db1").await?;
    let running = component::api(&db1_url, &[("max-concurrent-requests", "2"), ("db-pool-size", "4")]).await?;
    let api = ApiClient::new(&running.url());
    let mut db1 = service_kit::db::connect(&db1_url).await?;
    // Two creates held in progress: they wait for a lock on `articles`.
    let lock = db1.transaction().await?;
    lock.batch_execute("LOCK TABLE articles IN ACCESS EXCLUSIVE MODE").await?;
    let held: Vec<_> = (0..2)
        .map(|n| {
            let api = api.clone();
            tokio::spawn(async move { api.create(&article_body(&format!("held {n}"), "shed")).await })
        })
        .collect();
    let watcher = service_kit::db::connect(&db1_url).await?;
    e2e::wait::until("both creates wait for the lock", std::time::Duration::from_secs(30), || async {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await?
            .get(0);
        Ok(waiting == 2)
    })
    .await?;

    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/articles", running.url()))
        .json(&article_body("shed", "shed"))
        .send()
        .await?;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers().get("retry-after").and_then(|value| value.to_str().ok()), Some("1"));
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["code"], "service_unavailable", "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|message| message.contains("limit of 2")), "{body}");
    assert_eq!(api.request(Method::GET, "/api/v1/articles", None).await?.0, 503, "reads are shed too");
    for probe in ["/health", "/ready"] {
        assert_eq!(api.request(Method::GET, probe, None).await?.0, 200, "{probe} is never shed");
    }
    let metrics = api.text("/api/v1/metrics").await?;
    assert!(metrics.contains("http_requests_shed_total 2"), "{metrics}");

    lock.commit().await?;
    for create in held {
        create.await??;
    }
    let after = api.create(&article_body("after", "shed")).await?;
    let outbox: Vec<String> = db1
        .query("SELECT payload::json->'data'->>'title' FROM outbox ORDER BY id", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(outbox.len(), 3, "the two held creates and the one after, nothing of the shed one: {outbox:?}");
    assert!(!outbox.contains(&"shed".to_owned()));
    assert_eq!(outbox.last(), Some(&after.title));
    Ok(())
}
