//! The blog API: REST CRUD and publish on `/api/v1/articles`. Every change writes the article and
//! one outbox row in the same DB1 transaction; the outbox relay publishes the row to Kafka. The
//! API itself never talks to Kafka, so it keeps answering while the broker is down.

pub mod articles;
pub mod config;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod startup;
pub mod validation;
