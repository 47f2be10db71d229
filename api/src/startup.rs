//! Builds and runs the API: `Application::build` binds the listener (port 0 in tests) and the
//! pool without touching the database; `run_until_stopped` applies migrations in the background
//! (answering 503 until they are in) and serves until the shutdown token is cancelled.

use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ApiConfig;
use crate::metrics::ApiMetrics;
use crate::state::{AppState, Limits};

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
    config: ApiConfig,
}

impl Application {
    pub async fn build(config: ApiConfig) -> anyhow::Result<Self> {
        let listener = service_kit::ops::bind(config.listen_addr).await?;
        let pool =
            service_kit::db::pool(&config.database_url, config.db_pool_size).context("cannot create the DB1 pool")?;
        let state = AppState::new(
            pool,
            ApiMetrics::new().context("cannot register metrics")?,
            Limits {
                request_timeout: Duration::from_secs(config.request_timeout_secs),
                max_concurrent_requests: config.max_concurrent_requests as usize,
            },
            config.api_token.clone(),
        );
        Ok(Self { listener, state, config })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|addr| addr.port()).unwrap_or(0)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { listener, state, config } = self;
        tracing::info!(listen_addr = %listener.local_addr()?, database = %config.database_url, database_security = %config.database_url.security(),
            max_connections = config.max_connections, max_concurrent_requests = config.max_concurrent_requests, "api starting");
        if config.api_token.is_none() {
            tracing::warn!("API_TOKEN is not set: writes are open to anyone who can reach the API");
        }
        let migrations = {
            let (url, state, shutdown) = (config.database_url.clone(), state.clone(), shutdown.clone());
            tokio::spawn(async move {
                if service_kit::db::migrate_when_available(&url, crate::MIGRATIONS, &shutdown).await {
                    state.set_schema_ready();
                    tracing::info!("DB1 schema ready, accepting writes");
                }
            })
        };
        let listener = service_kit::connections::LimitedListener::new(
            listener,
            config.max_connections as usize,
            Duration::from_secs(config.connection_idle_timeout_secs),
        );
        let served = service_kit::ops::serve_limited(listener, crate::routes::router(state), shutdown).await;
        migrations.abort();
        tracing::info!("api stopped");
        served.context("the HTTP server failed")
    }
}
