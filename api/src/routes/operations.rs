//! The operational routes: metrics, this OpenAPI document, liveness and readiness.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use service_kit::ops::{NotReady, ProbeAnswer};

use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses((status = OK, description = "Prometheus text exposition", body = String, content_type = "text/plain"))
)]
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    service_kit::ops::metrics_response(&state.metrics.registry)
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This document",
    responses((status = OK, description = "The OpenAPI document", body = serde_json::Value))
)]
pub(super) async fn openapi_document() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], super::OPENAPI_JSON.as_str()).into_response()
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Liveness: the process answers",
    responses((status = OK, description = "Alive", body = ProbeAnswer))
)]
pub(super) async fn health() -> Response {
    service_kit::ops::health().await
}

#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    summary = "Readiness: the schema is applied and DB1 answers",
    responses(
        (status = OK, description = "Ready", body = ProbeAnswer),
        (status = SERVICE_UNAVAILABLE, description = "Not ready; `reason` says why", body = ProbeAnswer),
    )
)]
pub(super) async fn ready(State(state): State<AppState>) -> Response {
    let result = if state.schema_ready() {
        service_kit::ops::database_answers(&state.pool).await
    } else {
        Err(NotReady::SchemaPending)
    };
    service_kit::ops::readiness_response(result)
}
