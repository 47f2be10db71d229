//! What every request goes through: a server span continuing the caller's trace, counting and
//! timing, the request timeout, and the bearer token on writes.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use service_kit::telemetry::HeaderCarrier;
use tracing::Instrument as _;

use crate::error::ApiError;
use crate::state::AppState;

/// Wraps every request in a server span (continuing the caller's W3C trace context, if any),
/// counts and times it, and answers 503 when it outlives the request timeout.
pub(super) async fn observe_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let span = tracing::info_span!(
        "HTTP request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        article.id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    service_kit::telemetry::continue_trace(&span, &HeaderCarrier(request.headers()));
    let response = match tokio::time::timeout(state.request_timeout, next.run(request)).instrument(span.clone()).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    };
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    let metrics = &state.metrics;
    metrics.requests.with_label_values(&[&method, &route, status.as_str()]).inc();
    metrics.request_duration.with_label_values(&[&method, &route]).observe(started.elapsed().as_secs_f64());
    response
}

/// Routes never shed: an operator must see an overloaded API (liveness, readiness, metrics).
const NEVER_SHED: [&str; 3] = ["/health", "/ready", "/api/v1/metrics"];

/// Answers 503 at once (with `Retry-After`) when `MAX_CONCURRENT_REQUESTS` are already being
/// handled: beyond DB1's pace, a queue of waiting requests would only grow the API's memory (one
/// connection and task each) and every caller's latency, until the pool's wait timed them out.
pub(super) async fn shed_load(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if NEVER_SHED.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    match state.in_flight.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            state.metrics.shed.inc();
            ApiError::Overloaded(state.max_concurrent_requests()).into_response()
        }
    }
}

/// With `API_TOKEN` set, refuses writes (any method but GET, HEAD, OPTIONS) without
/// `Authorization: Bearer <token>` (compared in constant time).
pub(super) async fn require_token_for_writes(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.api_token else { return next.run(request).await };
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(presented) if token.matches(presented) => next.run(request).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}
