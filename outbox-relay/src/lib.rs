//! The outbox relay: a sidecar of the API that publishes every outbox row of DB1 to the Kafka
//! topic `articles` exactly once, keyed by article id. One relay leads (advisory lock), others
//! stand by; the leader wakes on NOTIFY and polls as a fallback, and while Kafka is down it keeps
//! the rows and retries with capped backoff. See docs/guarantees.md.

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

/// What the relay applies to DB1: the outbox contract's set (the outbox and the relay's own
/// tables), never a service's tables.
pub const MIGRATIONS: &[service_kit::db::MigrationSet] = &[service_kit::db::MigrationSet {
    name: "outbox",
    history_table: outbox::HISTORY_TABLE,
    embedded: outbox::migrations,
}];
