//! The blog API: REST CRUD and publish on `/api/v1/articles`. Every change writes the article and
//! one outbox row in the same DB1 transaction; the outbox relay publishes the row to Kafka. The
//! API itself never talks to Kafka, so it keeps answering while the broker is down.

use service_kit::db::MigrationSet;

mod articles;
pub mod config;
mod error;
mod metrics;
mod openapi;
mod routes;
pub mod startup;
mod state;
mod validation;

mod embedded_migrations {
    refinery::embed_migrations!("../sql/articles");
}

/// What the API applies to DB1 before accepting writes: the outbox it writes to, then its own
/// `articles` table (`sql/articles`), each set with its own history table.
pub const MIGRATIONS: &[MigrationSet] = &[
    MigrationSet { name: "outbox", history_table: outbox::HISTORY_TABLE, embedded: outbox::migrations },
    MigrationSet {
        name: "articles",
        history_table: "api_schema_history",
        embedded: embedded_migrations::migrations::runner,
    },
];
