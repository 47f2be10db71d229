//! What every blog service binary needs, whatever it does: configuration types that keep secrets
//! out of logs, database pools and migrations, telemetry, the `/health` `/ready` `/metrics`
//! endpoints, shutdown and retry. Nothing here knows articles, the outbox or Kafka: those are the
//! `events`, `outbox` and `kafka-kit` crates, so a console tool need not pull a web server in.

pub mod backoff;
pub mod config;
pub mod connections;
pub mod db;
pub mod memory;
pub mod metrics;
pub mod ops;
pub mod pg_tls;
pub mod shutdown;
pub mod telemetry;
