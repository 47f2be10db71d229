//! The replica sink: consumes the `articles` topic as group `blog-sync-group` and applies each
//! event to DB2 exactly once — the event id is recorded in `processed_events` in the same DB2
//! transaction as its effect, and the consumer offset is stored only after that commit.

use service_kit::db::MigrationSet;

mod apply;
pub mod config;
mod dead_letter;
mod group;
mod in_hand;
mod lag;
mod metrics;
mod prune;
mod sink;
pub mod startup;
pub mod verify;

/// The sink's statement, for the benchmark's ceiling (pgbench runs the very same SQL).
pub use apply::{UPSERT, UPSERT_BATCH, UPSERT_PARAMETERS};
/// Most events in one of the sink's DB2 transactions, for the same ceiling.
pub use sink::LANE_BATCH;

mod embedded_migrations {
    refinery::embed_migrations!("../sql/replica");
}

/// What the sink applies to DB2 before consuming: `sql/replica`.
pub const MIGRATIONS: &[MigrationSet] = &[MigrationSet {
    name: "replica",
    history_table: "replica_schema_history",
    embedded: embedded_migrations::migrations::runner,
}];
