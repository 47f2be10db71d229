//! What every handler can reach: the DB1 pool, metrics, settings, and whether the schema is in.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::metrics::ApiMetrics;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: Pool,
    /// Wakes the relay after each committed change (see [`outbox::RelayWaker`]).
    pub relay_waker: outbox::RelayWaker,
    pub metrics: ApiMetrics,
    pub request_timeout: Duration,
    /// Required for writes when set.
    pub api_token: Option<service_kit::config::Secret>,
    /// One permit per request the API may handle at once (`MAX_CONCURRENT_REQUESTS`).
    pub in_flight: Arc<Semaphore>,
    max_concurrent_requests: usize,
    schema_ready: Arc<AtomicBool>,
}

/// What an [`AppState`] is built with, beside its pool and metrics.
#[derive(Debug, Clone)]
pub struct Limits {
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
}

impl AppState {
    /// A state whose schema is not applied yet: writes and reads answer 503 until
    /// [`AppState::set_schema_ready`]. Starts the relay waker's task: call within a Tokio runtime.
    pub fn new(
        pool: Pool,
        metrics: ApiMetrics,
        limits: Limits,
        api_token: Option<service_kit::config::Secret>,
    ) -> Self {
        Self {
            relay_waker: outbox::RelayWaker::spawn(pool.clone()),
            pool,
            metrics,
            request_timeout: limits.request_timeout,
            api_token,
            in_flight: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            max_concurrent_requests: limits.max_concurrent_requests,
            schema_ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// `MAX_CONCURRENT_REQUESTS`.
    pub fn max_concurrent_requests(&self) -> usize {
        self.max_concurrent_requests
    }

    /// The migrations are in: handlers may use the database.
    pub fn set_schema_ready(&self) {
        self.schema_ready.store(true, Ordering::Release);
    }

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
