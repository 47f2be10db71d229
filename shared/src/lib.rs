//! Code every blog service needs and that must agree across them: the event envelope on the
//! `articles` topic, the outbox table's SQL (written by the API, drained by the relay), database
//! pools and migrations, configuration types that keep secrets out of logs, telemetry, the
//! `/health` `/ready` `/metrics` endpoints, shutdown and retry helpers.

pub mod article;
pub mod backoff;
pub mod config;
pub mod db;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod ops;
pub mod outbox;
pub mod shutdown;
pub mod telemetry;

pub use article::{Article, ArticleEvent, ArticleStatus, EventType};
