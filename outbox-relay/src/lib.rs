//! The outbox relay: a sidecar of a service (the articles API, the notifier…) that publishes every
//! row of its database's outbox exactly once, to the row's topic (default `KAFKA_TOPIC`), keyed by
//! the row's aggregate id. It reads only the outbox contract (the `outbox` crate). One relay leads (advisory lock), others
//! stand by; the leader wakes on NOTIFY and polls as a fallback, and while Kafka is down it keeps
//! the rows and retries with capped backoff. See docs/guarantees.md.

pub mod cloudevents;
pub mod config;
mod error;
mod failpoint;
pub mod leadership;
mod limits;
mod listener;
mod metrics;
mod publish;
mod readback;
mod relay;
mod settle;
pub mod startup;
mod topic;

pub use relay::{LANES, SHARDS};

/// What the relay applies to DB1: the outbox contract's set (the outbox and the relay's own
/// tables), never a service's tables.
pub const MIGRATIONS: &[service_kit::db::MigrationSet] = &[service_kit::db::MigrationSet {
    name: "outbox",
    history_table: outbox::HISTORY_TABLE,
    embedded: outbox::migrations,
}];
