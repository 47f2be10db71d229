//! Builds and runs the API: `Application::build` binds the listener (port 0 in tests) and the
//! pool without touching the database; `run_until_stopped` applies migrations in the background
//! (answering 503 until they are in) and serves until the shutdown token is cancelled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::Pool;
use shared::db::Schema;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ApiConfig;
use crate::error::ApiError;
use crate::metrics::ApiMetrics;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: Pool,
    pub metrics: ApiMetrics,
    pub request_timeout: Duration,
    /// Required for writes when set.
    pub api_token: Option<shared::config::Secret>,
    schema_ready: Arc<AtomicBool>,
}

impl AppState {
    pub fn schema_ready(&self) -> bool {
        self.schema_ready.load(Ordering::Acquire)
    }

    /// A pooled DB1 connection, or 503 while the schema is not applied or DB1 is unreachable.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, ApiError> {
        if !self.schema_ready() {
            return Err(ApiError::Starting);
        }
        Ok(self.pool.get().await?)
    }
}

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
    config: ApiConfig,
}

impl Application {
    pub async fn build(config: ApiConfig) -> anyhow::Result<Self> {
        let listener = shared::ops::bind(config.listen_addr).await?;
        let pool = shared::db::pool(&config.database_url, config.db_pool_size).context("cannot create the DB1 pool")?;
        let state = AppState {
            pool,
            metrics: ApiMetrics::new().context("cannot register metrics")?,
            request_timeout: Duration::from_secs(config.request_timeout_secs),
            api_token: config.api_token.clone(),
            schema_ready: Arc::new(AtomicBool::new(false)),
        };
        Ok(Self { listener, state, config })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|addr| addr.port()).unwrap_or(0)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { listener, state, config } = self;
        tracing::info!(listen_addr = %listener.local_addr()?, database = %config.database_url, "api starting");
        if config.api_token.is_none() {
            tracing::warn!("API_TOKEN is not set: writes are open to anyone who can reach the API");
        }
        let migrations = {
            let (url, schema_ready, shutdown) =
                (config.database_url.clone(), state.schema_ready.clone(), shutdown.clone());
            tokio::spawn(async move {
                if shared::db::migrate_when_available(&url, Schema::Primary, &shutdown).await {
                    schema_ready.store(true, Ordering::Release);
                    tracing::info!("DB1 schema ready, accepting writes");
                }
            })
        };
        let served = shared::ops::serve(listener, crate::routes::router(state), shutdown).await;
        migrations.abort();
        tracing::info!("api stopped");
        served.context("the HTTP server failed")
    }
}
