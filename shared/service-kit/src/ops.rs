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

/// Why a service is not ready; `/ready` answers 503 with this error's chain as `reason`.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("database schema not applied yet")]
    SchemaPending,
    #[error("database unavailable")]
    DatabasePool(#[from] deadpool_postgres::PoolError),
    #[error("database unavailable")]
    Database(#[from] tokio_postgres::Error),
    #[error("broker unavailable")]
    Broker(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the readiness check did not finish")]
    Check(#[from] tokio::task::JoinError),
}

/// Checks that a service's dependencies answer; `Err` says which one does not.
#[derive(Clone)]
pub struct ReadinessCheck(Arc<dyn Fn() -> BoxFuture<'static, Result<(), NotReady>> + Send + Sync>);

impl ReadinessCheck {
    pub fn new(check: impl Fn() -> BoxFuture<'static, Result<(), NotReady>> + Send + Sync + 'static) -> Self {
        Self(Arc::new(check))
    }

    pub async fn check(&self) -> Result<(), NotReady> {
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
fn router(registry: Registry, ready: ReadinessCheck) -> Router {
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
pub fn readiness_response(result: Result<(), NotReady>) -> Response {
    match result {
        Ok(()) => axum::Json(ProbeAnswer { status: "ready", reason: None }).into_response(),
        Err(not_ready) => {
            let reason = Some(crate::db::error_chain(&not_ready));
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(ProbeAnswer { status: "unavailable", reason })).into_response()
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

/// [`serve`] on a listener that bounds its open connections (see [`crate::connections`]).
pub async fn serve_limited(
    listener: crate::connections::LimitedListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// The ops endpoints of a service that is not an HTTP server itself (the relay, the sink): bound
/// when the service is built (port 0 in tests), served while the service works.
#[derive(Debug)]
pub struct OpsServer {
    listener: TcpListener,
    registry: Registry,
    readiness: ReadinessCheck,
}

impl OpsServer {
    pub async fn bind(
        addr: std::net::SocketAddr,
        registry: Registry,
        readiness: ReadinessCheck,
    ) -> anyhow::Result<Self> {
        Ok(Self { listener: bind(addr).await?, registry, readiness })
    }

    /// The port bound (the chosen one when asked for port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|addr| addr.port()).unwrap_or(0)
    }

    /// Serves `/health`, `/ready` and `/metrics` while `work` runs; when `work` returns (it does
    /// on `shutdown`), cancels `shutdown` and stops the server.
    pub async fn serve_while(self, shutdown: CancellationToken, work: impl Future<Output = ()>) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let router = router(self.registry, self.readiness);
        let server = tokio::spawn(serve(self.listener, router, shutdown.clone()));
        work.await;
        shutdown.cancel();
        server.await.context("the ops server panicked")?.context("the ops server failed")
    }
}

/// Binds `addr`, naming it in the error (a taken port is the usual start-up failure).
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))
}

/// A readiness check that runs `SELECT 1` on a pooled connection.
pub async fn database_answers(pool: &deadpool_postgres::Pool) -> Result<(), NotReady> {
    pool.get().await?.simple_query("SELECT 1").await?;
    Ok(())
}

/// The readiness of a service that needs its database and the broker: `SELECT 1` on a pooled
/// connection, then `broker_probe` (a blocking metadata request) on a blocking thread.
pub fn database_and_broker<E: std::error::Error + Send + Sync + 'static>(
    pool: deadpool_postgres::Pool,
    broker_probe: impl Fn() -> Result<(), E> + Clone + Send + Sync + 'static,
) -> ReadinessCheck {
    use futures_util::FutureExt as _;
    ReadinessCheck::new(move || {
        let (pool, broker_probe) = (pool.clone(), broker_probe.clone());
        async move {
            database_answers(&pool).await?;
            tokio::task::spawn_blocking(broker_probe).await?.map_err(|error| NotReady::Broker(Box::new(error)))
        }
        .boxed()
    })
}
