//! The outbox table: all of its SQL, in one place.
//!
//! The API calls [`enqueue`] inside the transaction that changes an article, so the change and its
//! event commit together or not at all; the same transaction NOTIFYs the relay. The relay reads
//! rows in id order with [`fetch_pending`] and removes them with [`delete_published`] once the
//! broker has acknowledged them, so the table holds only the unpublished backlog.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::article::{Article, ArticleEvent, EventType};

/// The channel the API notifies and the relay listens on.
pub const NOTIFY_CHANNEL: &str = "outbox_new";

/// One unpublished event.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub article_id: i64,
    pub event_type: String,
    /// The exact record value to publish.
    pub payload: String,
    pub created_at: DateTime<Utc>,
    /// W3C trace context of the request that wrote the row (`traceparent`, …), if it was traced.
    pub trace_context: HashMap<String, String>,
}

/// Errors of writing to the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot serialise the event")]
    Serialize(#[from] serde_json::Error),
    #[error("cannot write the outbox row")]
    Database(#[from] tokio_postgres::Error),
}

/// Builds the event for `article`, writes it to the outbox and notifies the relay — all on the
/// caller's transaction. Returns the event id.
pub async fn enqueue(
    transaction: &impl GenericClient,
    event_type: EventType,
    article: &Article,
) -> Result<Uuid, OutboxError> {
    let event_id = Uuid::new_v4();
    let event =
        ArticleEvent { event_id: Some(event_id.to_string()), event_type, timestamp: Utc::now(), data: article.clone() };
    let payload = serde_json::to_string(&event)?;
    let trace_context = crate::telemetry::context_of(&tracing::Span::current());
    let trace_context = if trace_context.is_empty() { None } else { Some(serde_json::to_string(&trace_context)?) };
    let insert = transaction
        .prepare_cached(
            "INSERT INTO outbox (event_id, article_id, event_type, payload, trace_context) VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    transaction.execute(&insert, &[&event_id, &article.id, &event_type.as_str(), &payload, &trace_context]).await?;
    // Notifications are delivered at commit and coalesced within a transaction.
    let notify = transaction.prepare_cached("SELECT pg_notify($1, '')").await?;
    transaction.execute(&notify, &[&NOTIFY_CHANNEL]).await?;
    Ok(event_id)
}

/// The oldest `limit` unpublished rows, in the order they must be published.
pub async fn fetch_pending(client: &impl GenericClient, limit: i64) -> Result<Vec<OutboxRow>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT id, event_id, article_id, event_type, payload, created_at, trace_context \
             FROM outbox ORDER BY id LIMIT $1",
        )
        .await?;
    let rows = client.query(&statement, &[&limit]).await?;
    rows.iter()
        .map(|row| {
            Ok(OutboxRow {
                id: row.try_get(0)?,
                event_id: row.try_get(1)?,
                article_id: row.try_get(2)?,
                event_type: row.try_get(3)?,
                payload: row.try_get(4)?,
                created_at: row.try_get(5)?,
                // A malformed context only loses the trace link, never the event.
                trace_context: row
                    .try_get::<_, Option<String>>(6)?
                    .and_then(|text| serde_json::from_str(&text).ok())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Removes rows the broker has acknowledged.
pub async fn delete_published(client: &impl GenericClient, ids: &[i64]) -> Result<u64, tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let statement = client.prepare_cached("DELETE FROM outbox WHERE id = ANY($1)").await?;
    client.execute(&statement, &[&ids]).await
}

/// Rows not yet published, and the age in seconds of the oldest (0 when empty).
pub async fn backlog(client: &impl GenericClient) -> Result<(i64, f64), tokio_postgres::Error> {
    let statement = client
        .prepare_cached("SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) FROM outbox")
        .await?;
    let row = client.query_one(&statement, &[]).await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Removes the rows whose events were found on the topic by reconciliation.
pub async fn delete_by_event_ids(
    client: &impl GenericClient,
    event_ids: &[Uuid],
) -> Result<u64, tokio_postgres::Error> {
    if event_ids.is_empty() {
        return Ok(0);
    }
    let statement = client.prepare_cached("DELETE FROM outbox WHERE event_id = ANY($1)").await?;
    client.execute(&statement, &[&event_ids]).await
}
