//! Command line and environment of the `api` binary.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use service_kit::config::{DatabaseUrl, DatabaseUrlParser, Secret};

/// Blog articles REST API. Each change writes the article and its event (outbox row) in one DB1
/// transaction; the outbox relay publishes the events to Kafka.
#[derive(Debug, Parser)]
#[command(name = "api", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: ApiConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply DB1's migrations and exit (the server also applies them at start-up).
    Migrate,
}

#[derive(Debug, Clone, Args)]
pub struct ApiConfig {
    /// DB1 (primary) connection string, e.g. postgres://bloguser:blogpass@localhost:5432/blogdb.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = DatabaseUrlParser)]
    pub database_url: DatabaseUrl,
    /// Address to serve the API, /health, /ready and /api/v1/metrics on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:5000")]
    pub listen_addr: SocketAddr,
    /// Maximum DB1 connections.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,
    /// When set, writes (POST, PUT, PATCH, DELETE) need `Authorization: Bearer <token>`; reads,
    /// health and metrics stay open. Unset: writes are open (a warning is logged at start-up).
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    pub api_token: Option<Secret>,
    /// A request taking longer than this many seconds is answered 503.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 10)]
    pub request_timeout_secs: u64,
    /// Most API requests handled at once; beyond, a request is answered 503 at once (with
    /// `Retry-After`) instead of queueing for DB1, so that an overload costs neither memory nor
    /// every caller's latency. Health, readiness and metrics are never refused.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_requests: u32,
    /// Most connections held open at once; beyond, new connections wait in the kernel's accept
    /// queue until one closes (each open connection costs memory whether it is busy or not).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// A connection on which nothing moved for this many seconds is closed (idle keep-alive
    /// connections would otherwise hold the `MAX_CONNECTIONS` slots).
    #[arg(long, env = "CONNECTION_IDLE_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub connection_idle_timeout_secs: u64,
}
