//! Trace continuity, on Jaeger itself: one trace follows an article from the HTTP request through
//! the outbox row, the relay and the Kafka headers into the sink, read back from Jaeger's query API.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context as _;
use e2e::Stack;
use e2e::jaeger::{Jaeger, JaegerPorts, Span};
use e2e::stack::Service;
use reqwest::Method;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

/// API and relay export over gRPC, the sink over HTTP/protobuf: both protocols are exercised.
async fn traced_stack(jaeger: &Jaeger) -> anyhow::Result<Stack> {
    let (grpc, http) = (jaeger.grpc_endpoint(), jaeger.http_endpoint());
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

/// Reads trace `trace_id` until it holds spans of all three services, and returns them.
async fn wait_for_complete_trace(jaeger: &Jaeger, trace_id: &str) -> anyhow::Result<Vec<Span>> {
    let wanted: HashSet<&str> = ["api", "outbox-relay", "replica-sink"].into();
    let last = std::sync::Mutex::new(Vec::new());
    let outcome = e2e::wait::until("a trace with spans of all three services", TIMEOUT, || {
        let (wanted, last) = (&wanted, &last);
        async move {
            let spans = jaeger.trace(trace_id).await?;
            let done = wanted.iter().all(|service| spans.iter().any(|span| span.service == *service));
            *last.lock().expect("not poisoned") = spans;
            Ok(done)
        }
    })
    .await;
    let spans = last.into_inner().expect("not poisoned");
    outcome.map_err(|error| error.context(format!("last seen of trace {trace_id}: {spans:#?}")))?;
    Ok(spans)
}

fn find<'a>(spans: &'a [Span], service: &str, name: &str) -> anyhow::Result<&'a Span> {
    spans
        .iter()
        .find(|span| span.service == service && span.name == name)
        .ok_or_else(|| anyhow::anyhow!("no span {name:?} of {service} in {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_follows_an_article_from_the_request_to_the_replica() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let jaeger = Jaeger::start(dir.path(), JaegerPorts::free()).await?;
    let stack = traced_stack(&jaeger).await?;
    let article = stack.api().create(&json!({"title": "Traced", "content": "c", "author": "tracer"})).await?;
    stack.wait_for_replica(TIMEOUT).await?;

    let trace_id = trace_id_of(&stack, article.id).await?;
    let spans = wait_for_complete_trace(&jaeger, &trace_id).await?;
    let request = find(&spans, "api", "POST /api/v1/articles")?;
    let publish = find(&spans, "outbox-relay", &format!("outbox.publish {}", stack.topic()))?;
    let apply = find(&spans, "replica-sink", "sink.apply article.created")?;
    println!("request {request:?}\npublish {publish:?}\napply {apply:?}");

    assert_eq!(publish.parent_span_id.as_ref(), Some(&request.span_id), "the publish span is a child of the request");
    assert_eq!(apply.parent_span_id.as_ref(), Some(&publish.span_id), "the apply span is a child of the publish span");
    assert_eq!(request.attribute("article.id"), Some(article.id.to_string().as_str()));
    for (span, kind) in [(request, "server"), (publish, "producer"), (apply, "consumer")] {
        assert_eq!(span.kind, kind, "{span:?}");
    }
    for span in [publish, apply] {
        assert_eq!(span.attribute("messaging.system"), Some("kafka"));
        assert_eq!(span.attribute("messaging.destination.name"), Some(stack.topic()));
        assert!(span.attribute("messaging.destination.partition.id").is_some(), "{span:?}");
        assert!(span.attribute("messaging.kafka.offset").is_some(), "{span:?}");
    }
    assert_eq!(publish.attribute("messaging.message.id"), apply.attribute("messaging.message.id"));
    assert!(publish.attribute("messaging.message.id").is_some(), "{publish:?}");
    // Jaeger's search finds the trace from each service, as its UI would.
    for service in ["api", "outbox-relay", "replica-sink"] {
        let found = jaeger.trace_ids(service).await?;
        assert!(found.contains(&trace_id), "searching {service} finds {trace_id}: {found:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsampled_request_stays_unsampled_across_every_hop() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let jaeger = Jaeger::start(dir.path(), JaegerPorts::free()).await?;
    let stack = traced_stack(&jaeger).await?;
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
    wait_for_complete_trace(&jaeger, &trace_id_of(&stack, loud.id).await?).await?;
    let quiet = jaeger.trace(trace_id).await?;
    assert!(quiet.is_empty(), "unsampled trace was exported: {quiet:?}");
    Ok(())
}
