//! The replica sink: consumes the `articles` topic as group `blog-sync-group` and applies each
//! event to DB2 exactly once — the event id is recorded in `processed_events` in the same DB2
//! transaction as its effect, and the consumer offset is stored only after that commit.

pub mod apply;
pub mod config;
pub mod decode;
pub mod metrics;
pub mod sink;
pub mod startup;
pub mod verify;
