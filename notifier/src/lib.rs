//! The notifier, the seed's email service and the chain's second hop: it consumes `articles` as
//! group `notifier` and, for every `article.published`, writes in **one transaction of its own
//! database** the notification, its `notification.requested` outbox event (topic
//! `notifications`) and the event id in `processed_events`. A redelivered event finds its id
//! there and changes nothing; a second `outbox-relay`, pointed at this database, publishes the
//! outbox. Consume → write → publish is thus done exactly once without a dual write
//! (docs/architecture.md, "The event chain").

use service_kit::db::MigrationSet;

pub mod config;
mod handle;
mod metrics;
pub mod startup;

mod embedded_migrations {
    refinery::embed_migrations!("../sql/notifier");
}

/// What the notifier applies to its database before consuming: its own tables, then the outbox
/// contract's (the relay beside it applies the latter too; each set has its own history).
pub const MIGRATIONS: &[MigrationSet] = &[
    MigrationSet {
        name: "notifier",
        history_table: "notifier_schema_history",
        embedded: embedded_migrations::migrations::runner,
    },
    MigrationSet { name: "outbox", history_table: outbox::HISTORY_TABLE, embedded: outbox::migrations },
];
