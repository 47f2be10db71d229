//! Logging and tracing set-up.
//!
//! Logs: `tracing` with `RUST_LOG` filtering (default `info`), human-readable lines by default and
//! one JSON object per line with `LOG_FORMAT=json`. Root spans carry a `trace_id` field, so log
//! lines written inside them name the trace they belong to.
//!
//! Traces: exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`OTEL_EXPORTER_OTLP_PROTOCOL`
//! `grpc`, the default, or `http/protobuf`; `OTEL_SERVICE_NAME` defaults to the binary's name). Export
//! is batched on a background thread: it never blocks a request, and a dead collector costs a
//! warning. Unset endpoint → no exporter at all. W3C trace context and baggage are always
//! propagated, so a trace continues through services even when this one does not export.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::Arc;

use opentelemetry::propagation::{Extractor, TextMapCompositePropagator};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Flushes and stops the trace exporter when dropped (at the end of `main`).
#[derive(Debug)]
#[must_use = "traces are flushed when the guard is dropped"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("warning: cannot flush traces: {error}");
        }
    }
}

/// Installs the global subscriber and, when configured, the OTLP exporter. Call once, first thing
/// in `main`, and keep the guard until the end.
pub fn init(default_service_name: &str) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json"));
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        // Colours only on a terminal: log files and collectors get plain text.
        tracing_subscriber::fmt::layer().with_target(false).with_ansi(std::io::stdout().is_terminal()).boxed()
    };
    let (provider, export_error) = match tracer_provider(default_service_name) {
        Ok(provider) => (provider, None),
        Err(error) => (None, Some(error)),
    };
    let otel_layer = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(default_service_name.to_owned())));
    let _ = tracing_subscriber::registry().with(fmt_layer).with(otel_layer).with(filter).try_init();
    if let Some(error) = export_error {
        tracing::warn!(error = %crate::db::error_chain(&error), "traces will not be exported");
    } else if provider.is_some() {
        tracing::info!(
            endpoint = %std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default(),
            protocol = %otlp_protocol(),
            "exporting traces over OTLP"
        );
    }
    TelemetryGuard { provider }
}

/// Why traces cannot be exported (logging works regardless).
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("unsupported OTEL_EXPORTER_OTLP_PROTOCOL {0:?} (supported: grpc, http/protobuf)")]
    UnsupportedProtocol(String),
    #[error("cannot start the OTLP export runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot build the OTLP exporter")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

fn otlp_protocol() -> String {
    std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_else(|_| "grpc".to_owned())
}

/// The tracer provider for the `OTEL_*` variables, or `None` when no endpoint is set.
fn tracer_provider(default_service_name: &str) -> Result<Option<SdkTracerProvider>, ExportError> {
    if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").map_or(true, |endpoint| endpoint.trim().is_empty()) {
        return Ok(None);
    }
    let service_name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| default_service_name.to_owned());
    let resource = Resource::builder().with_service_name(service_name).build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let provider = match otlp_protocol().as_str() {
        "grpc" => builder.with_batch_exporter(GrpcOnOwnRuntime::build()?).build(),
        "http/protobuf" => {
            // The blocking HTTP client works on the batch processor's plain thread.
            let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
            builder.with_batch_exporter(exporter).build()
        }
        other => return Err(ExportError::UnsupportedProtocol(other.to_owned())),
    };
    Ok(Some(provider))
}

/// The OTLP/gRPC exporter needs a Tokio reactor, which the SDK's batch thread does not have; this
/// adapter gives it a one-worker runtime of its own (see opentelemetry-rust issue #2673).
#[derive(Debug)]
struct GrpcOnOwnRuntime {
    inner: opentelemetry_otlp::SpanExporter,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl GrpcOnOwnRuntime {
    fn build() -> Result<Self, ExportError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(ExportError::Runtime)?;
        let inner = {
            let _context = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?
        };
        Ok(Self { inner, runtime: Arc::new(runtime) })
    }
}

impl SpanExporter for GrpcOnOwnRuntime {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        // Called on the batch processor's own thread, never inside a Tokio runtime.
        std::future::ready(self.runtime.block_on(self.inner.export(batch)))
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// W3C trace context (`traceparent`, `tracestate`, `baggage`) of `span`, for an outbox row or
/// Kafka headers. Empty when the span is not traced.
pub fn context_of(span: &tracing::Span) -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut carrier));
    carrier
}

/// Makes the context in `carrier` the parent of `span`, and records its trace id on the span.
pub fn continue_trace(span: &tracing::Span, carrier: &dyn Extractor) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(carrier));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    record_trace_id(span);
}

/// Records the span's trace id in its `trace_id` field, so log lines inside it name the trace.
pub fn record_trace_id(span: &tracing::Span) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", tracing::field::display(span_context.trace_id()));
    }
}

/// A string map as a propagation carrier.
#[derive(Debug)]
pub struct MapCarrier<'a>(pub &'a HashMap<String, String>);

impl Extractor for MapCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// HTTP request headers as a propagation carrier.
#[derive(Debug)]
pub struct HeaderCarrier<'a>(pub &'a axum::http::HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

/// A span for one Kafka record (OpenTelemetry messaging conventions):
/// `kafka_span!("outbox.publish", producer = "send", otel_name, topic)` — the span's name in logs,
/// its kind (`producer` or `consumer`) and operation, its name in traces, the topic. Every
/// messaging attribute is declared, so callers record what they know (`messaging.message.id`,
/// `messaging.kafka.message.key`, partition, offset, `event_type`, `article.id`, `aggregate.type`,
/// `aggregate.id`).
#[macro_export]
macro_rules! kafka_span {
    ($name:literal, $kind:ident = $operation:literal, $otel_name:expr, $topic:expr $(,)?) => {
        tracing::info_span!(
            $name,
            otel.name = %$otel_name,
            otel.kind = stringify!($kind),
            otel.status_code = tracing::field::Empty,
            messaging.system = "kafka",
            messaging.operation.type = $operation,
            messaging.destination.name = %$topic,
            messaging.message.id = tracing::field::Empty,
            messaging.kafka.message.key = tracing::field::Empty,
            messaging.destination.partition.id = tracing::field::Empty,
            messaging.kafka.offset = tracing::field::Empty,
            event_type = tracing::field::Empty,
            article.id = tracing::field::Empty,
            aggregate.type = tracing::field::Empty,
            aggregate.id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        )
    };
}

/// The span of a consumer processing one Kafka record: `"<name> <event type>"` in traces, with
/// the record's topic, partition and offset, continuing the producer's trace from the record's
/// headers (a `HashMap<String, String>`, e.g. `kafka_kit::headers_map`).
/// `consumer_span!("sink.apply", event_type, message.topic(), message.partition(), message.offset(), &headers)`.
#[macro_export]
macro_rules! consumer_span {
    ($name:literal, $event_type:expr, $topic:expr, $partition:expr, $offset:expr, $headers:expr $(,)?) => {{
        let event_type: &str = $event_type;
        let otel_name = format!("{} {event_type}", $name);
        let span = $crate::kafka_span!($name, consumer = "process", otel_name, $topic);
        span.record("messaging.destination.partition.id", $partition);
        span.record("messaging.kafka.offset", $offset);
        span.record("event_type", event_type);
        $crate::telemetry::continue_trace(&span, &$crate::telemetry::MapCarrier($headers));
        span
    }};
}
