//! Trace continuity, on a real OTLP store (otelite): one trace follows an article from the HTTP
//! request through the outbox row, the relay and the Kafka headers into the sink.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context as _;
use e2e::Stack;
use e2e::otelite::Otelite;
use e2e::stack::Service;
use reqwest::Method;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

/// API and relay export over gRPC, the sink over HTTP/protobuf: both protocols are exercised.
async fn traced_stack(otelite: &Otelite) -> anyhow::Result<Stack> {
    let (grpc, http) = (otelite.grpc_endpoint(), otelite.http_endpoint());
    Stack::start_for_test_configured(|options| {
        options.service_env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT".into(), grpc)];
        options.service_env_by_name = vec![
            (Service::Sink, "OTEL_EXPORTER_OTLP_ENDPOINT".into(), http),
            (Service::Sink, "OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into()),
        ];
    })
    .await
}

/// The trace id in the `traceparent` header of the record of article `id`.
async fn trace_id_of(stack: &Stack, id: i64) -> anyhow::Result<String> {
    let records = stack.topic_records().await?;
    let record = records.iter().find(|record| record.key == Some(id.to_string())).context("no record")?;
    let traceparent = record.header("traceparent").context("the record carries no traceparent")?;
    Ok(traceparent.split('-').nth(1).context("malformed traceparent")?.to_owned())
}

/// Reads trace `trace_id` until it holds spans of all three services, and returns them. (otelite's
/// trace list is not used: it omits traces whose first stored span is not the root.)
async fn wait_for_complete_trace(otelite: &Otelite, trace_id: &str) -> anyhow::Result<Vec<Value>> {
    let wanted: HashSet<&str> = ["api", "outbox-relay", "replica-sink"].into();
    let last = std::sync::Mutex::new(Vec::new());
    let outcome = e2e::wait::until("a trace with spans of all three services", TIMEOUT, || {
        let (wanted, last) = (&wanted, &last);
        async move {
            let spans = otelite.trace(trace_id).await?.as_ref().map(spans).unwrap_or_default();
            let done = wanted.is_subset(&spans.iter().map(service_of).collect());
            *last.lock().expect("not poisoned") = spans;
            Ok(done)
        }
    })
    .await;
    let spans = last.into_inner().expect("not poisoned");
    outcome.map_err(|error| error.context(format!("last seen of trace {trace_id}: {spans:#?}")))?;
    Ok(spans)
}

fn spans(trace: &Value) -> Vec<Value> {
    trace["spans"].as_array().cloned().unwrap_or_default()
}

fn service_of(span: &Value) -> &str {
    span["resource"]["attributes"]["service.name"].as_str().unwrap_or_default()
}

fn attribute<'a>(span: &'a Value, name: &str) -> &'a Value {
    &span["attributes"][name]
}

fn find<'a>(spans: &'a [Value], service: &str, name: &str) -> anyhow::Result<&'a Value> {
    spans
        .iter()
        .find(|span| service_of(span) == service && span["name"] == name)
        .ok_or_else(|| anyhow::anyhow!("no span {name:?} of {service} in {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_follows_an_article_from_the_request_to_the_replica() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let otelite = Otelite::start(dir.path()).await?;
    let stack = traced_stack(&otelite).await?;
    let article = stack.api().create(&json!({"title": "Traced", "content": "c", "author": "tracer"})).await?;
    stack.wait_for_replica(TIMEOUT).await?;

    let spans = wait_for_complete_trace(&otelite, &trace_id_of(&stack, article.id).await?).await?;
    let request = find(&spans, "api", "POST /api/v1/articles")?;
    let publish = find(&spans, "outbox-relay", "outbox.publish articles")?;
    let apply = find(&spans, "replica-sink", "sink.apply article.created")?;
    println!("request {request}\npublish {publish}\napply {apply}");

    assert_eq!(publish["parent_span_id"], request["span_id"], "the publish span is a child of the request");
    assert_eq!(apply["parent_span_id"], publish["span_id"], "the apply span is a child of the publish span");
    assert_eq!(attribute(request, "article.id"), &Value::String(article.id.to_string()));
    for (span, kind) in [(request, "server"), (publish, "producer"), (apply, "consumer")] {
        let actual = span["kind"].as_str().unwrap_or_default().to_ascii_lowercase();
        assert!(actual.contains(kind), "span kind {actual:?}, expected {kind}");
    }
    for span in [publish, apply] {
        assert_eq!(attribute(span, "messaging.system"), "kafka");
        assert_eq!(attribute(span, "messaging.destination.name"), "articles");
        assert!(!attribute(span, "messaging.destination.partition.id").is_null(), "{span}");
        assert!(!attribute(span, "messaging.kafka.offset").is_null(), "{span}");
    }
    assert_eq!(attribute(publish, "messaging.message.id"), attribute(apply, "messaging.message.id"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsampled_request_stays_unsampled_across_every_hop() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let otelite = Otelite::start(dir.path()).await?;
    let stack = traced_stack(&otelite).await?;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-00");
    let (status, body) = stack
        .api()
        .request_with_headers(
            Method::POST,
            "/api/v1/articles",
            Some(&json!({"title": "Quiet", "content": "c", "author": "nobody"})),
            &[("traceparent", &traceparent)],
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    stack.wait_for_replica(TIMEOUT).await?;
    let records = stack.topic_records().await?;
    let header = records[0].header("traceparent").expect("the record carries the trace context");
    assert!(header.starts_with(&format!("00-{trace_id}-")) && header.ends_with("-00"), "{header}");
    // A sampled trace made afterwards is exported; by then the unsampled one would have been too.
    let loud = stack.api().create(&json!({"title": "Loud", "content": "c", "author": "somebody"})).await?;
    stack.wait_for_replica(TIMEOUT).await?;
    wait_for_complete_trace(&otelite, &trace_id_of(&stack, loud.id).await?).await?;
    let quiet = otelite.trace(trace_id).await?;
    assert!(quiet.as_ref().is_none_or(|trace| spans(trace).is_empty()), "unsampled trace was exported: {quiet:?}");
    Ok(())
}
