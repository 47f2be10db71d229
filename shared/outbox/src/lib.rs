//! The transactional outbox contract: the `outbox` table, its migrations (with the relay's own
//! tables), and all of its SQL, in one place.
//!
//! A writer calls [`enqueue`] inside the transaction that changes its data, so the change and its
//! event commit together or not at all; the same transaction NOTIFYs the relay, or, for a writer
//! at high rates, a [`RelayWaker`] does right after the commit. The relay reads rows in id order
//! with [`fetch_pending`] and removes them with [`delete_published`] once the broker has
//! acknowledged them, so the table holds only the unpublished backlog. This crate knows
//! no service: a row names its aggregate (type and id, the id being the record key), may name its
//! topic and extra headers, and its payload is the exact record value its writer built. The
//! contract, for a team putting the relay beside its own service, is in docs/architecture.md.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use serde::Serialize;
use uuid::Uuid;

mod waker;

pub use waker::RelayWaker;

mod embedded {
    refinery::embed_migrations!("../../sql/outbox");
}

/// The table that records this crate's migrations, apart from any other set in the same database.
pub const HISTORY_TABLE: &str = "outbox_schema_history";

/// The migrations of `outbox`, `outbox_dead_letters`, `relay_leader` and `relay_checkpoints` (`sql/outbox`); run them
/// with [`HISTORY_TABLE`] as the history table.
pub fn migrations() -> refinery::Runner {
    embedded::migrations::runner()
}

/// The channel writers notify and the relay listens on.
pub const NOTIFY_CHANNEL: &str = "outbox_new";

/// One unpublished event.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    /// What kind of thing changed (`article`, `notification`, `order`…).
    pub aggregate_type: String,
    /// Which one: the record key, so that one aggregate's events keep their order.
    pub aggregate_id: String,
    pub event_type: String,
    /// The topic to publish to; `None`: the relay's default topic (`KAFKA_TOPIC`).
    pub topic: Option<String>,
    /// Extra record headers, in name order.
    pub headers: BTreeMap<String, String>,
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
    /// What kind of thing changed (`article`, `order`…); a dead letter holds back the later
    /// events of the same aggregate (type and id).
    pub aggregate_type: &'a str,
    /// The record key: events of one aggregate keep their order on the topic, provided the writer
    /// commits them in the order it enqueues them (for example under a row lock on the aggregate).
    pub aggregate_id: &'a str,
    pub event_type: &'a str,
    /// The topic to publish to; `None`: the relay's default topic (`KAFKA_TOPIC`).
    pub topic: Option<&'a str>,
    /// Extra record headers. The relay's own (`event_id`, `event_type`, `relay_epoch`, the trace
    /// context and, when on, CloudEvents' `ce_*` and `content-type`) are set by the relay and win.
    pub headers: &'a [(&'a str, &'a str)],
    /// The exact record value.
    pub payload: &'a str,
    /// W3C trace context of the writer's span (`traceparent`, …); empty when it is not traced.
    pub trace_context: &'a HashMap<String, String>,
}

/// Writes `event` to the outbox and notifies the relay, on the caller's transaction: the event
/// commits with the change it describes, or not at all. The notification serialises the commits
/// of concurrent writers (see [`RelayWaker`]); a writer at high rates uses
/// [`enqueue_without_notify`] and wakes the relay after its commit instead.
pub async fn enqueue(transaction: &Transaction<'_>, event: &NewEvent<'_>) -> Result<(), tokio_postgres::Error> {
    enqueue_without_notify(transaction, event).await?;
    notify_relay(transaction).await
}

/// Writes `event` to the outbox on the caller's transaction, as [`enqueue`] does, without
/// notifying the relay: call [`RelayWaker::wake`] once the transaction committed (or leave the row
/// to the relay's poll).
pub async fn enqueue_without_notify(
    transaction: &Transaction<'_>,
    event: &NewEvent<'_>,
) -> Result<(), tokio_postgres::Error> {
    // A map of strings always serialises; `None` keeps untraced rows free of an empty object.
    let trace_context =
        if event.trace_context.is_empty() { None } else { serde_json::to_string(event.trace_context).ok() };
    let headers = if event.headers.is_empty() {
        None
    } else {
        let headers: BTreeMap<&str, &str> = event.headers.iter().copied().collect();
        serde_json::to_string(&headers).ok()
    };
    let insert = transaction
        .prepare_cached(
            "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, topic, headers, payload, trace_context) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    transaction
        .execute(
            &insert,
            &[
                &event.event_id,
                &event.aggregate_type,
                &event.aggregate_id,
                &event.event_type,
                &event.topic,
                &headers,
                &event.payload,
                &trace_context,
            ],
        )
        .await?;
    Ok(())
}

/// Wakes the relay when `transaction` commits (notifications are delivered at commit and
/// coalesced within a transaction).
async fn notify_relay(transaction: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    let notify = transaction.prepare_cached("SELECT pg_notify($1, '')").await?;
    transaction.execute(&notify, &[&NOTIFY_CHANNEL]).await?;
    Ok(())
}

/// The records the relay publishes by default may be this large (key, headers and value; the
/// producer's `message.max.bytes`). A writer's largest event must stay below it, and the topic's
/// `max.message.bytes` should not be lower (the relay checks at start).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// The query of [`fetch_pending`] (`$1`: the limit, `$2`: the ids in flight), public so that its
/// plan can be checked against a real database.
pub const FETCH_PENDING_SQL: &str = "SELECT id, event_id, aggregate_type, aggregate_id, event_type, topic, headers, \
     payload, created_at, trace_context FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM outbox_dead_letters d \
     WHERE d.aggregate_id = o.aggregate_id AND d.aggregate_type = o.aggregate_type) \
     AND o.id <> ALL($2) ORDER BY id LIMIT $1";

/// The oldest `limit` unpublished rows, in the order they must be published, leaving out the
/// rows of any aggregate that has a dead letter: they wait for an operator (see [`dead_letter`]),
/// and the rows `in_flight` (a pipelined relay's batches sent but not settled yet). Rows are left
/// out by id, never by "ids above the last one sent": ids are taken in insertion order but
/// committed in any order, so a row with a lower id can become visible after a higher one.
pub async fn fetch_pending(
    client: &impl GenericClient,
    limit: i64,
    in_flight: &[i64],
) -> Result<Vec<OutboxRow>, tokio_postgres::Error> {
    let statement = client.prepare_cached(FETCH_PENDING_SQL).await?;
    let rows = client.query(&statement, &[&limit, &in_flight]).await?;
    rows.iter().map(OutboxRow::from_row).collect()
}

impl OutboxRow {
    fn from_row(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            event_id: row.try_get("event_id")?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            event_type: row.try_get("event_type")?,
            topic: row.try_get("topic")?,
            headers: parse_headers(row.try_get("headers")?),
            payload: row.try_get("payload")?,
            created_at: row.try_get("created_at")?,
            trace_context: parse_trace_context(row.try_get("trace_context")?),
        })
    }
}

/// A row the broker refused, kept aside in `outbox_dead_letters`.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub row: OutboxRow,
    /// Why the broker refused it.
    pub error: String,
    pub failed_at: DateTime<Utc>,
    /// Rows of the same aggregate waiting behind it in the outbox.
    pub waiting: i64,
}

/// Moves outbox row `id` to `outbox_dead_letters` with `error`, on the caller's transaction (the
/// relay's fenced settle). Returns whether the row was there.
pub async fn dead_letter(transaction: &Transaction<'_>, id: i64, error: &str) -> Result<bool, tokio_postgres::Error> {
    let statement = transaction
        .prepare_cached(
            "WITH moved AS (DELETE FROM outbox WHERE id = $1 RETURNING *) \
             INSERT INTO outbox_dead_letters (id, event_id, aggregate_type, aggregate_id, event_type, topic, headers, \
             payload, created_at, trace_context, error) \
             SELECT id, event_id, aggregate_type, aggregate_id, event_type, topic, headers, payload, created_at, \
             trace_context, $2 FROM moved",
        )
        .await?;
    Ok(transaction.execute(&statement, &[&id, &error]).await? == 1)
}

/// Every dead letter, oldest first.
pub async fn dead_letters(client: &impl GenericClient) -> Result<Vec<DeadLetter>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT d.*, (SELECT count(*) FROM outbox o WHERE o.aggregate_id = d.aggregate_id \
             AND o.aggregate_type = d.aggregate_type) AS waiting \
             FROM outbox_dead_letters d ORDER BY d.id",
        )
        .await?;
    let rows = client.query(&statement, &[]).await?;
    rows.iter()
        .map(|row| {
            Ok(DeadLetter {
                row: OutboxRow::from_row(row)?,
                error: row.try_get("error")?,
                failed_at: row.try_get("failed_at")?,
                waiting: row.try_get("waiting")?,
            })
        })
        .collect()
}

/// Puts dead letter `id` back into the outbox under its original id, so it is published before
/// the later rows of its aggregate, and notifies the relay. Returns whether it was there.
pub async fn requeue_dead_letter(transaction: &Transaction<'_>, id: i64) -> Result<bool, tokio_postgres::Error> {
    let statement = transaction
        .prepare_cached(
            "WITH moved AS (DELETE FROM outbox_dead_letters WHERE id = $1 RETURNING *) \
             INSERT INTO outbox (id, event_id, aggregate_type, aggregate_id, event_type, topic, headers, payload, \
             created_at, trace_context) \
             SELECT id, event_id, aggregate_type, aggregate_id, event_type, topic, headers, payload, created_at, \
             trace_context FROM moved",
        )
        .await?;
    let moved = transaction.execute(&statement, &[&id]).await? == 1;
    if moved {
        notify_relay(transaction).await?;
    }
    Ok(moved)
}

/// Deletes dead letter `id` for good (its event is never published); the aggregate's later rows
/// then flow again. Returns whether it was there.
pub async fn discard_dead_letter(transaction: &Transaction<'_>, id: i64) -> Result<bool, tokio_postgres::Error> {
    let statement = transaction.prepare_cached("DELETE FROM outbox_dead_letters WHERE id = $1").await?;
    let discarded = transaction.execute(&statement, &[&id]).await? == 1;
    if discarded {
        notify_relay(transaction).await?;
    }
    Ok(discarded)
}

/// The stored trace context as a map. A malformed one only loses the trace link, never the event.
fn parse_trace_context(stored: Option<String>) -> HashMap<String, String> {
    stored.and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default()
}

/// Stored extra headers as a map. Malformed ones (not an object of strings) are dropped: a
/// header is never worth losing the event over.
fn parse_headers(stored: Option<String>) -> BTreeMap<String, String> {
    stored.and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default()
}

/// Every topic the outbox has a row for (a row without one goes to `default_topic`), the dead
/// letters left out: the relay reads these back before publishing.
pub async fn pending_topics(
    client: &impl GenericClient,
    default_topic: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let statement =
        client.prepare_cached("SELECT DISTINCT COALESCE(topic, $1) AS topic FROM outbox ORDER BY 1").await?;
    let rows = client.query(&statement, &[&default_topic]).await?;
    rows.iter().map(|row| row.try_get("topic")).collect()
}

/// Every topic the relay has a checkpoint for.
pub async fn checkpointed_topics(client: &impl GenericClient) -> Result<Vec<String>, tokio_postgres::Error> {
    let statement = client.prepare_cached("SELECT DISTINCT topic FROM relay_checkpoints ORDER BY 1").await?;
    let rows = client.query(&statement, &[]).await?;
    rows.iter().map(|row| row.try_get("topic")).collect()
}

/// Removes rows the broker has acknowledged.
pub async fn delete_published(client: &impl GenericClient, ids: &[i64]) -> Result<u64, tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let statement = client.prepare_cached("DELETE FROM outbox WHERE id = ANY($1)").await?;
    client.execute(&statement, &[&ids]).await
}

/// What waits in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Backlog {
    /// Rows not yet published.
    pub rows: i64,
    /// Age in seconds of the oldest of them (0 when there is none).
    pub oldest_age_seconds: f64,
    /// Rows the broker refused, in `outbox_dead_letters`: each holds back its aggregate's later rows.
    pub dead_letters: i64,
}

/// The outbox's backlog and its dead letters, in one statement.
pub async fn backlog(client: &impl GenericClient) -> Result<Backlog, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT count(*) AS rows, \
             COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) AS oldest_age_seconds, \
             (SELECT count(*) FROM outbox_dead_letters) AS dead_letters FROM outbox",
        )
        .await?;
    let row = client.query_one(&statement, &[]).await?;
    Ok(Backlog {
        rows: row.try_get("rows")?,
        oldest_age_seconds: row.try_get("oldest_age_seconds")?,
        dead_letters: row.try_get("dead_letters")?,
    })
}

/// The PostgreSQL advisory lock (one bigint key; arbitrary, distinct from the migration locks)
/// the leading relay holds for as long as it leads.
pub const LEADER_LOCK_KEY: i64 = 0x626c_6f67_0010;

/// The relay leadership as DB1 records it, for operators (`blogctl status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leadership {
    /// The fencing epoch of the last leader (0: none ever led).
    pub epoch: i64,
    /// The last leader's name.
    pub holder: Option<String>,
    /// When it took the lead.
    pub since: Option<DateTime<Utc>>,
    /// It stopped cleanly (SIGTERM, nothing in flight).
    pub clean_stop: bool,
    /// A session holds [`LEADER_LOCK_KEY`] now: a relay is leading.
    pub lock_held: bool,
}

/// Who leads the relays, and whether a relay holds the lock at this moment.
pub async fn leadership(client: &impl GenericClient) -> Result<Leadership, tokio_postgres::Error> {
    // A bigint advisory key shows in pg_locks as its high and low 32 bits, with objsubid 1.
    let statement = client
        .prepare_cached(
            "SELECT epoch, holder, since, clean_stop, EXISTS ( \
                 SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
                   AND (classid::bigint << 32) | objid::bigint = $1) AS lock_held \
             FROM relay_leader WHERE id = 1",
        )
        .await?;
    let row = client.query_one(&statement, &[&LEADER_LOCK_KEY]).await?;
    Ok(Leadership {
        epoch: row.try_get("epoch")?,
        holder: row.try_get("holder")?,
        since: row.try_get("since")?,
        clean_stop: row.try_get("clean_stop")?,
        lock_held: row.try_get("lock_held")?,
    })
}

/// Per partition of `topic`, the offset below which the relay has settled every record it
/// published (`relay_checkpoints.next_offset`).
pub async fn checkpoints(
    client: &impl GenericClient,
    topic: &str,
) -> Result<std::collections::BTreeMap<i32, i64>, tokio_postgres::Error> {
    let statement =
        client.prepare_cached("SELECT partition, next_offset FROM relay_checkpoints WHERE topic = $1").await?;
    let rows = client.query(&statement, &[&topic]).await?;
    rows.iter().map(|row| Ok((row.try_get("partition")?, row.try_get("next_offset")?))).collect()
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
    fn malformed_headers_read_as_none_rather_than_failing_the_row() {
        assert!(parse_headers(None).is_empty());
        assert!(parse_headers(Some("not json".to_owned())).is_empty());
        assert!(parse_headers(Some(r#"{"a": 1}"#.to_owned())).is_empty(), "values must be strings");
        let headers = parse_headers(Some(r#"{"tenant":"t1","b":"2"}"#.to_owned()));
        assert_eq!(headers.into_iter().collect::<Vec<_>>(), [("b".into(), "2".into()), ("tenant".into(), "t1".into())]);
    }

    #[test]
    fn the_migration_set_holds_the_outbox_and_the_relay_tables_and_nothing_else() {
        let runner = migrations();
        let versions: Vec<_> = runner.get_migrations().iter().map(|migration| migration.version()).collect();
        assert_eq!(versions, [1, 2, 3, 4, 5]);
        let sql: String = runner.get_migrations().iter().filter_map(|migration| migration.sql()).collect();
        for table in ["outbox", "relay_leader", "relay_checkpoints", "outbox_dead_letters", "aggregate_type", "topic"] {
            assert!(sql.contains(table), "{table}");
        }
        assert!(
            !sql.contains("CREATE TABLE IF NOT EXISTS articles"),
            "the outbox set must not create a service's tables"
        );
    }
}
