//! DB2's tables — `articles`, `processed_events`, `article_tombstones` — and all of their SQL.
//!
//! One transaction per batch of events, each in order: record the event id (a conflict means it was applied before, so
//! nothing else happens), then apply it. Versions make the replica converge whatever the order
//! events arrive in: an upsert only replaces an older version, a deletion leaves a tombstone that
//! refuses older upserts, so a stale or replayed event can neither roll back nor resurrect.

use deadpool_postgres::Transaction;
use shared::{Article, EventType};
use tracing::Instrument as _;

use crate::decode::DecodedEvent;

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The change is now in DB2.
    Applied,
    /// The event id was already in `processed_events`; nothing changed.
    AlreadyProcessed,
    /// Recorded, but DB2 already holds a newer version (or a newer deletion); nothing changed.
    Stale,
}

/// Applies `events` in order, in one DB2 transaction; each inside its own span.
pub async fn apply_all(
    client: &mut deadpool_postgres::Object,
    events: &[(DecodedEvent, tracing::Span)],
) -> Result<Vec<ApplyOutcome>, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    let mut outcomes = Vec::with_capacity(events.len());
    for (event, span) in events {
        outcomes.push(apply_in(&transaction, event).instrument(span.clone()).await?);
    }
    transaction.commit().await?;
    Ok(outcomes)
}

/// Records the event id and, if it is new, applies the change; on the caller's transaction.
async fn apply_in(transaction: &Transaction<'_>, event: &DecodedEvent) -> Result<ApplyOutcome, tokio_postgres::Error> {
    if !record_processed(transaction, event).await? {
        return Ok(ApplyOutcome::AlreadyProcessed);
    }
    let changed = match event.event.event_type {
        EventType::Deleted => delete(transaction, &event.event.data).await?,
        EventType::Created | EventType::Updated | EventType::Published => {
            upsert(transaction, &event.event.data).await?
        }
    };
    Ok(if changed { ApplyOutcome::Applied } else { ApplyOutcome::Stale })
}

/// Inserts the event id into `processed_events`; false if it was there already.
async fn record_processed(transaction: &Transaction<'_>, event: &DecodedEvent) -> Result<bool, tokio_postgres::Error> {
    let statement = transaction
        .prepare_cached(
            "INSERT INTO processed_events (event_id, event_type, article_id) VALUES ($1, $2, $3) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .await?;
    let inserted = transaction
        .execute(&statement, &[&event.event_id, &event.event.event_type.as_str(), &event.event.data.id])
        .await?;
    Ok(inserted == 1)
}

/// Writes the article unless DB2 holds a newer version or a deletion at least as new.
async fn upsert(transaction: &Transaction<'_>, article: &Article) -> Result<bool, tokio_postgres::Error> {
    let statement = transaction
        .prepare_cached(
            "INSERT INTO articles (id, title, content, author, category, tags, status, views_count, \
                                   created_at, updated_at, published_at, version) \
             SELECT $1::bigint, $2::text, $3::text, $4::text, $5::text, $6::text[], $7::text, $8::bigint, \
                    $9::timestamptz, $10::timestamptz, $11::timestamptz, $12::bigint \
             WHERE NOT EXISTS (SELECT 1 FROM article_tombstones WHERE id = $1 AND version >= $12) \
             ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, content = EXCLUDED.content, \
                 author = EXCLUDED.author, category = EXCLUDED.category, tags = EXCLUDED.tags, \
                 status = EXCLUDED.status, views_count = EXCLUDED.views_count, \
                 created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, \
                 published_at = EXCLUDED.published_at, version = EXCLUDED.version \
             WHERE articles.version <= EXCLUDED.version",
        )
        .await?;
    let written = transaction
        .execute(
            &statement,
            &[
                &article.id,
                &article.title,
                &article.content,
                &article.author,
                &article.category,
                &article.tags,
                &article.status.as_str(),
                &article.views_count,
                &article.created_at,
                &article.updated_at,
                &article.published_at,
                &article.version,
            ],
        )
        .await?;
    Ok(written == 1)
}

/// Deletes the article unless DB2 holds a newer version, and leaves a tombstone.
async fn delete(transaction: &Transaction<'_>, article: &Article) -> Result<bool, tokio_postgres::Error> {
    let delete = transaction.prepare_cached("DELETE FROM articles WHERE id = $1 AND version <= $2").await?;
    let deleted = transaction.execute(&delete, &[&article.id, &article.version]).await?;
    let tombstone = transaction
        .prepare_cached(
            "INSERT INTO article_tombstones (id, version) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET version = GREATEST(article_tombstones.version, EXCLUDED.version), \
                 deleted_at = now()",
        )
        .await?;
    transaction.execute(&tombstone, &[&article.id, &article.version]).await?;
    Ok(deleted == 1)
}
