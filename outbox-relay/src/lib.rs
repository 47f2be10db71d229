//! The outbox relay: a sidecar of the API that publishes every outbox row of DB1 to the Kafka
//! topic `articles`, keyed by article id, and removes the row once the broker acknowledged it.
//! It wakes on NOTIFY and polls as a fallback, and while Kafka is down it keeps the rows and
//! retries with capped backoff.

pub mod config;
pub mod listener;
pub mod metrics;
pub mod relay;
pub mod startup;
