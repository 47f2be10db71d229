//! The operational routes: metrics, this OpenAPI document, liveness and readiness.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use service_kit::ops::{NotReady, ProbeAnswer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// Metrics and this document, served under `/api/v1` (the seed's paths).
pub(super) fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics)).routes(routes!(openapi_document))
}

/// Liveness and readiness, at the root as every service of ours serves them.
pub(super) fn probes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health)).routes(routes!(ready))
}

#[utoipa::path(get, path = "/metrics", summary = "Prometheus metrics",
    responses((status = OK, description = "Prometheus text exposition", body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> Response {
    service_kit::ops::metrics_response(&state.metrics.registry)
}

#[utoipa::path(get, path = "/openapi.json", summary = "This document",
    responses((status = OK, description = "The OpenAPI document", body = serde_json::Value)))]
async fn openapi_document() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], super::OPENAPI_JSON.as_str()).into_response()
}

#[utoipa::path(get, path = "/health", summary = "Liveness: the process answers",
    responses((status = OK, description = "Alive", body = ProbeAnswer)))]
async fn health() -> Response {
    service_kit::ops::health().await
}

#[utoipa::path(get, path = "/ready", summary = "Readiness: the schema is applied and DB1 answers",
    responses((status = OK, description = "Ready", body = ProbeAnswer),
        (status = SERVICE_UNAVAILABLE, description = "Not ready; `reason` says why", body = ProbeAnswer)))]
async fn ready(State(state): State<AppState>) -> Response {
    // The database's own failure (unreachable, a certificate that does not verify) says more
    // than "schema pending" while the migration cannot connect.
    let result = match service_kit::ops::database_answers(&state.pool).await {
        Ok(()) if !state.schema_ready() => Err(NotReady::SchemaPending),
        answered => answered,
    };
    service_kit::ops::readiness_response(result)
}
