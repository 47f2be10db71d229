//! The API's Prometheus metrics, served at `GET /api/v1/metrics` (the seed's path).

use events::EventType;
use prometheus::{HistogramVec, IntCounterVec, Registry};
use service_kit::metrics::{counter_vec, histogram_vec};

#[derive(Debug, Clone)]
pub struct ApiMetrics {
    pub registry: Registry,
    /// `http_requests_total{method, route, status}`.
    pub requests: IntCounterVec,
    /// `http_request_duration_seconds{method, route}`.
    pub request_duration: HistogramVec,
    /// `article_writes_total{event_type}`: committed changes, i.e. events written to the outbox.
    pub writes: IntCounterVec,
}

impl ApiMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = counter_vec(
            &registry,
            "http_requests_total",
            "HTTP requests answered, by route, method and status",
            &["method", "route", "status"],
        )?;
        let request_duration = histogram_vec(
            &registry,
            "http_request_duration_seconds",
            "HTTP request duration, by route and method",
            &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            &["method", "route"],
        )?;
        let writes = counter_vec(
            &registry,
            "article_writes_total",
            "Article changes committed with their outbox event, by event type",
            &["event_type"],
        )?;
        for kind in EventType::ALL {
            writes.with_label_values(&[kind.as_str()]);
        }
        Ok(Self { registry, requests, request_duration, writes })
    }
}
