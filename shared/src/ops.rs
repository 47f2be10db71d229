//! The operational endpoints every service serves on its `LISTEN_ADDR`: `GET /health` (the process
//! is alive), `GET /ready` (its dependencies answer) and `GET /metrics` (Prometheus text).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::future::BoxFuture;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Checks that a service's dependencies answer; `Err` says which one does not.
#[derive(Clone)]
pub struct ReadinessCheck(Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>);

impl ReadinessCheck {
    pub fn new(check: impl Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static) -> Self {
        Self(Arc::new(check))
    }

    pub async fn check(&self) -> Result<(), String> {
        (self.0)().await
    }
}

impl std::fmt::Debug for ReadinessCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadinessCheck")
    }
}

#[derive(Clone)]
struct OpsState {
    registry: Registry,
    ready: ReadinessCheck,
}

/// `/health`, `/ready` and `/metrics` over `registry` and `ready`.
pub fn router(registry: Registry, ready: ReadinessCheck) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(readiness))
        .route("/metrics", get(metrics))
        .with_state(OpsState { registry, ready })
}

/// The body of `/health` and `/ready`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProbeAnswer {
    /// `ok` (`/health`), `ready` or `unavailable` (`/ready`).
    pub status: &'static str,
    /// Why the service is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /health`: answers while the process runs.
pub async fn health() -> Response {
    axum::Json(ProbeAnswer { status: "ok", reason: None }).into_response()
}

async fn readiness(State(state): State<OpsState>) -> Response {
    readiness_response(state.ready.check().await)
}

/// The `/ready` answer for a readiness result: 200, or 503 naming what is unavailable.
pub fn readiness_response(result: Result<(), String>) -> Response {
    match result {
        Ok(()) => axum::Json(ProbeAnswer { status: "ready", reason: None }).into_response(),
        Err(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(ProbeAnswer { status: "unavailable", reason: Some(reason) }))
                .into_response()
        }
    }
}

async fn metrics(State(state): State<OpsState>) -> Response {
    metrics_response(&state.registry)
}

/// Prometheus text exposition of `registry`.
pub fn metrics_response(registry: &Registry) -> Response {
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut buffer) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buffer).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Binds `addr`, naming it in the error (a taken port is the usual start-up failure).
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))
}

/// A readiness check that runs `SELECT 1` on a pooled connection.
pub async fn database_answers(pool: &deadpool_postgres::Pool) -> Result<(), String> {
    let client = pool.get().await.map_err(|error| format!("database unavailable: {error}"))?;
    client.simple_query("SELECT 1").await.map_err(|error| format!("database unavailable: {error}"))?;
    Ok(())
}

/// The readiness of a service that needs its database and the broker: `SELECT 1` on a pooled
/// connection, then `broker_probe` (a blocking metadata request) on a blocking thread.
pub fn database_and_broker(
    pool: deadpool_postgres::Pool,
    broker_probe: impl Fn() -> Result<(), String> + Clone + Send + Sync + 'static,
) -> ReadinessCheck {
    use futures_util::FutureExt as _;
    ReadinessCheck::new(move || {
        let (pool, broker_probe) = (pool.clone(), broker_probe.clone());
        async move {
            database_answers(&pool).await?;
            tokio::task::spawn_blocking(broker_probe).await.map_err(|error| error.to_string())?
        }
        .boxed()
    })
}
