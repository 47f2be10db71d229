//! The seed's event chain with an outbox at every hop (issue 14), on real processes: the API's
//! relay publishes `article.published`; the notifier consumes it and writes, in one transaction
//! of its own database, the notification and its `notification.requested` outbox row; a second
//! `outbox-relay` publishes that to `notifications`. The notifier and its relay are SIGKILLed and
//! restarted while articles are published: each published article still asks for exactly one
//! notification, in the database and on the topic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use e2e::Stack;
use e2e::stack::{FAST_TAKEOVER, Service};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(180);

async fn chain_stack() -> anyhow::Result<Stack> {
    Stack::start_for_test_configured(|options| {
        options.chain = true;
        options.relay_delivery_timeout = Some(FAST_TAKEOVER);
    })
    .await
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<i64> {
    Ok(client.query_one(sql, &[]).await?.get(0))
}

/// Creates and publishes an article every 50 ms until `stop`; returns their ids.
async fn publish_articles(api: e2e::ApiClient, stop: CancellationToken) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    while !stop.is_cancelled() {
        let index = ids.len();
        let article =
            api.create(&json!({"title": format!("Chained {index}"), "content": "c", "author": "chain"})).await?;
        api.publish(article.id).await?;
        ids.push(article.id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_published_article_asks_for_one_notification_through_kills_of_the_second_hop() -> anyhow::Result<()> {
    let mut stack = chain_stack().await?;
    let stop = CancellationToken::new();
    let writer = tokio::spawn(publish_articles(stack.api(), stop.clone()));
    let notifier_db = stack.notifier_client().await?;
    let notifications = || count(&notifier_db, "SELECT count(*) FROM notifications");

    // The notifier's relay dies with rows of the notifier's outbox waiting for it.
    e2e::wait::until("the first notifications", TIMEOUT, || async { Ok(notifications().await? >= 3) }).await?;
    stack.signal(Service::NotifierRelay, "STOP").await?;
    e2e::wait::until("notifier outbox rows waiting for the stopped relay", TIMEOUT, || async {
        Ok(count(&notifier_db, "SELECT count(*) FROM outbox").await? >= 3)
    })
    .await?;
    stack.kill(Service::NotifierRelay);
    stack.restart(Service::NotifierRelay).await?;

    // The notifier dies mid-stream, twice: notifications keep coming in between.
    for _ in 0..2 {
        let before = notifications().await?;
        e2e::wait::until("more notifications", TIMEOUT, || async { Ok(notifications().await? >= before + 3) }).await?;
        stack.kill(Service::Notifier);
        stack.restart(Service::Notifier).await?;
    }
    let before = notifications().await?;
    e2e::wait::until("notifications after the restarts", TIMEOUT, || async { Ok(notifications().await? > before) })
        .await?;
    stop.cancel();
    let published = writer.await??;
    let articles = published.len();
    let wanted: BTreeSet<i64> = published.iter().copied().collect();
    e2e::wait::until("every notification on the topic", TIMEOUT, || async {
        let outbox = count(&notifier_db, "SELECT count(*) FROM outbox").await?;
        Ok(outbox == 0 && stack.notification_records().await?.len() >= articles)
    })
    .await?;
    // Whatever is redelivered arrives by now.
    stack.wait_for_replica(TIMEOUT).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let records = stack.notification_records().await?;
    let mut by_article: BTreeMap<i64, usize> = BTreeMap::new();
    let mut event_ids = BTreeSet::new();
    for record in &records {
        let event: events::NotificationRequested = serde_json::from_slice(record.value.as_deref().unwrap_or_default())?;
        assert_eq!(event.event_type, "notification.requested");
        assert_eq!(record.header("event_type"), Some("notification.requested"));
        assert_eq!(record.header("event_id"), Some(event.event_id.as_str()));
        assert_eq!(record.key.as_deref(), Some(event.article_id.to_string().as_str()), "keyed by article id");
        assert!(record.header("source_event_id").is_some(), "the outbox row's extra header");
        *by_article.entry(event.article_id).or_default() += 1;
        event_ids.insert(event.event_id);
    }
    println!("{articles} articles published; {} notification records", records.len());
    assert_eq!(records.len(), articles, "exactly one record per published article");
    assert_eq!(event_ids.len(), articles, "distinct event ids");
    assert_eq!(by_article.keys().copied().collect::<BTreeSet<_>>(), wanted, "one per article: {by_article:?}");
    let rows = count(&notifier_db, "SELECT count(*) FROM notifications").await?;
    let distinct = count(&notifier_db, "SELECT count(DISTINCT article_id) FROM notifications").await?;
    let articles = i64::try_from(articles)?;
    assert_eq!((rows, distinct), (articles, articles), "one notifications row per article");
    let processed = count(&notifier_db, "SELECT count(*) FROM processed_events").await?;
    assert_eq!(processed, articles, "one processed event per article.published");
    // The notifier's database holds only its own tables and the outbox contract's.
    let articles_table = count(&notifier_db, "SELECT count(*) FROM pg_tables WHERE tablename = 'articles'").await?;
    assert_eq!(articles_table, 0, "no articles table beside the notifier");
    Ok(())
}

/// One trace follows a published article through both hops: API → relay → notifier → the
/// notifier's relay, read back from Jaeger.
#[tokio::test(flavor = "multi_thread")]
async fn one_trace_crosses_the_hop_into_the_second_relay() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let jaeger = e2e::jaeger::Jaeger::start(dir.path(), e2e::jaeger::JaegerPorts::free()).await?;
    let endpoint = jaeger.grpc_endpoint();
    let stack = Stack::start_for_test_configured(|options| {
        options.chain = true;
        options.service_env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint)];
    })
    .await?;
    let article = stack.api().create(&json!({"title": "Traced chain", "content": "c", "author": "tracer"})).await?;
    stack.api().publish(article.id).await?;
    let record = e2e::wait::until_some("the notification record", TIMEOUT, || async {
        Ok(stack.notification_records().await?.into_iter().next())
    })
    .await?;
    let traceparent = record.header("traceparent").unwrap_or_default().to_owned();
    let trace_id = traceparent.split('-').nth(1).unwrap_or_default().to_owned();
    assert_eq!(trace_id.len(), 32, "the notification record carries a trace context: {traceparent:?}");
    let wanted = ["api", "outbox-relay", "notifier"];
    let last = std::sync::Mutex::new(Vec::new());
    let complete = e2e::wait::until("spans of the whole chain in one trace", Duration::from_secs(60), || async {
        let spans = jaeger.trace(&trace_id).await?;
        let publishes = spans.iter().filter(|span| span.name.starts_with("outbox.publish")).count();
        let done = wanted.iter().all(|service| spans.iter().any(|span| span.service == *service)) && publishes >= 2;
        *last.lock().expect("not poisoned") = spans;
        Ok(done)
    })
    .await;
    let spans = last.into_inner().expect("not poisoned");
    complete.map_err(|error| error.context(format!("trace {trace_id}: {spans:#?}")))?;
    let find = |name: String| spans.iter().find(|span| span.name == name).cloned();
    let request = spans.iter().find(|span| span.service == "api" && span.name.contains("publish")).cloned();
    let first = find(format!("outbox.publish {}", stack.topic()));
    let handle = find("notifier.handle article.published".into());
    let second = find(format!("outbox.publish {}", stack.notifications_topic()));
    let (Some(request), Some(first), Some(handle), Some(second)) = (request, first, handle, second) else {
        anyhow::bail!("a hop is missing from trace {trace_id}: {spans:#?}");
    };
    assert_eq!(first.parent_span_id.as_ref(), Some(&request.span_id), "relay under the request");
    assert_eq!(handle.parent_span_id.as_ref(), Some(&first.span_id), "notifier under the first publish");
    assert_eq!(second.parent_span_id.as_ref(), Some(&handle.span_id), "second relay under the notifier");
    assert_eq!(handle.kind, "consumer");
    assert_eq!(second.kind, "producer");
    Ok(())
}

/// The chaos script with `--chain` (CI's short mode): the notifier and its relay are killed and
/// paused among the pipeline's faults, and the verdict checks one notification per published
/// article.
#[tokio::test(flavor = "multi_thread")]
async fn chaos_script_short_mode_passes_with_the_chain() -> anyhow::Result<()> {
    let run = e2e::process::run_tool("chaos", &["--short", "--chain", "--partitions", "6"]).await?;
    let stdout = &run.stdout;
    assert!(run.success, "chaos failed:\n{stdout}\n{}", run.stderr);
    assert!(stdout.contains("RESULT: PASS"), "{stdout}");
    assert!(stdout.contains("(one per published article)"), "{stdout}");
    assert!(stdout.contains("(duplicates 0, missing 0, unexpected 0)"), "{stdout}");
    // The second hop's kills come first in the rotation.
    assert!(stdout.contains("SIGKILL notifier ("), "the notifier was among the victims: {stdout}");
    assert!(stdout.contains("SIGKILL notifier-relay ("), "its relay too: {stdout}");
    Ok(())
}
