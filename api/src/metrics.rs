//! The API's Prometheus metrics, served at `GET /api/v1/metrics` (the seed's path).

use events::EventType;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use service_kit::metrics::{LATENCY_BUCKETS, register};

#[derive(Debug, Clone)]
pub struct ApiMetrics {
    pub registry: Registry,
    /// `http_requests_total{method, route, status}`.
    pub requests: IntCounterVec,
    /// `http_request_duration_seconds{method, route}`.
    pub request_duration: HistogramVec,
    /// `article_writes_total{event_type}`: committed changes, i.e. events written to the outbox.
    pub writes: IntCounterVec,
    /// `http_requests_shed_total`: requests answered 503 at once because the API was already
    /// handling `MAX_CONCURRENT_REQUESTS`.
    pub shed: IntCounter,
}

impl ApiMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let by_route =
            HistogramOpts::new("http_request_duration_seconds", "HTTP request duration, by route and method");
        let writes_help = "Article changes committed with their outbox event, by event type";
        let writes =
            register(&registry, IntCounterVec::new(Opts::new("article_writes_total", writes_help), &["event_type"]))?;
        for kind in EventType::CHANGES {
            writes.with_label_values(&[kind.as_str()]);
        }
        Ok(Self {
            requests: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("http_requests_total", "HTTP requests answered, by route, method and status"),
                    &["method", "route", "status"],
                ),
            )?,
            request_duration: register(
                &registry,
                HistogramVec::new(by_route.buckets(LATENCY_BUCKETS[..13].to_vec()), &["method", "route"]),
            )?,
            writes,
            shed: register(
                &registry,
                IntCounter::new(
                    "http_requests_shed_total",
                    "Requests answered 503 at once because MAX_CONCURRENT_REQUESTS were in progress",
                ),
            )?,
            registry,
        })
    }
}
