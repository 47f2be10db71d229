//! The transactional outbox contract: the `outbox` table, its migrations (with the relay's own
//! tables), and all of its SQL, in one place.
//!
//! A writer calls [`enqueue`] inside the transaction that changes its data, so the change and its
//! event commit together or not at all; the same transaction NOTIFYs the relay. The relay reads
//! rows in id order with [`fetch_pending`] and removes them with [`delete_published`] once the
//! broker has acknowledged them, so the table holds only the unpublished backlog. This crate knows
//! nothing of articles: a row's payload is the exact record value its writer built.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use uuid::Uuid;

mod embedded {
    refinery::embed_migrations!("../../sql/outbox");
}

/// The table that records this crate's migrations, apart from any other set in the same database.
pub const HISTORY_TABLE: &str = "outbox_schema_history";

/// The migrations of `outbox`, `relay_leader` and `relay_checkpoints` (`sql/outbox`); run them
/// with [`HISTORY_TABLE`] as the history table.
pub fn migrations() -> refinery::Runner {
    embedded::migrations::runner()
}

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

/// An event to publish, as its writer hands it to [`enqueue`].
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    /// Unique per event; the relay puts it in the `event_id` header and finds it again there.
    pub event_id: Uuid,
    /// The record key (column `article_id`): events of one id keep their order on the topic.
    pub article_id: i64,
    pub event_type: &'a str,
    /// The exact record value.
    pub payload: &'a str,
    /// W3C trace context of the writer's span (`traceparent`, …); empty when it is not traced.
    pub trace_context: &'a HashMap<String, String>,
}

/// Writes `event` to the outbox and notifies the relay, on the caller's transaction: the event
/// commits with the change it describes, or not at all.
pub async fn enqueue(transaction: &Transaction<'_>, event: &NewEvent<'_>) -> Result<(), tokio_postgres::Error> {
    // A map of strings always serialises; `None` keeps untraced rows free of an empty object.
    let trace_context =
        if event.trace_context.is_empty() { None } else { serde_json::to_string(event.trace_context).ok() };
    let insert = transaction
        .prepare_cached(
            "INSERT INTO outbox (event_id, article_id, event_type, payload, trace_context) VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    transaction
        .execute(&insert, &[&event.event_id, &event.article_id, &event.event_type, &event.payload, &trace_context])
        .await?;
    // Notifications are delivered at commit and coalesced within a transaction.
    let notify = transaction.prepare_cached("SELECT pg_notify($1, '')").await?;
    transaction.execute(&notify, &[&NOTIFY_CHANNEL]).await?;
    Ok(())
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
                id: row.try_get("id")?,
                event_id: row.try_get("event_id")?,
                article_id: row.try_get("article_id")?,
                event_type: row.try_get("event_type")?,
                payload: row.try_get("payload")?,
                created_at: row.try_get("created_at")?,
                trace_context: parse_trace_context(row.try_get("trace_context")?),
            })
        })
        .collect()
}

/// The stored trace context as a map. A malformed one only loses the trace link, never the event.
fn parse_trace_context(stored: Option<String>) -> HashMap<String, String> {
    stored.and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default()
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
        .prepare_cached(
            "SELECT count(*) AS rows, \
             COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) AS oldest_age_seconds FROM outbox",
        )
        .await?;
    let row = client.query_one(&statement, &[]).await?;
    Ok((row.try_get("rows")?, row.try_get("oldest_age_seconds")?))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_trace_context_reads_as_none_rather_than_failing_the_row() {
        assert!(parse_trace_context(None).is_empty());
        assert!(parse_trace_context(Some("not json".to_owned())).is_empty());
        assert!(parse_trace_context(Some("[1, 2]".to_owned())).is_empty());
        let context = parse_trace_context(Some(r#"{"traceparent":"00-abc-def-01"}"#.to_owned()));
        assert_eq!(context.get("traceparent").map(String::as_str), Some("00-abc-def-01"));
    }

    #[test]
    fn the_migration_set_holds_the_outbox_and_the_relay_tables_and_nothing_else() {
        let runner = migrations();
        let versions: Vec<_> = runner.get_migrations().iter().map(|migration| migration.version()).collect();
        assert_eq!(versions, [1, 2, 3]);
        let sql: String = runner.get_migrations().iter().filter_map(|migration| migration.sql()).collect();
        assert!(sql.contains("outbox") && sql.contains("relay_leader") && sql.contains("relay_checkpoints"));
        assert!(
            !sql.contains("CREATE TABLE IF NOT EXISTS articles"),
            "the outbox set must not create a service's tables"
        );
    }
}
