//! DB2's tables — `articles`, `processed_events`, `article_tombstones` — and all of their SQL.
//!
//! One transaction per batch of events and one statement per event, in order: it records the
//! event id (a conflict means it was applied before, so nothing else happens) and applies it.
//! Versions make the replica converge whatever the order events arrive in: an upsert only
//! replaces an older version, a deletion leaves a tombstone that refuses older upserts, so a stale
//! or replayed event can neither roll back nor resurrect.

use deadpool_postgres::Transaction;
use events::EventType;
use tokio_postgres::types::ToSql;
use tracing::Instrument as _;

use events::decode::DecodedEvent;

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

/// Applies `events` in one DB2 transaction, each inside its own span, with one statement per
/// event. The statements are pipelined: all are sent before the first answer is awaited, so a
/// batch costs about one round trip instead of one per event. tokio-postgres sends them in the
/// order `try_join_all` first polls them, which is the events' order; PostgreSQL runs them one
/// after the other, each seeing the effects of those before it. (DB2's final state would not
/// depend on that order anyway: versions decide.)
pub(crate) async fn apply_all<'a>(
    client: &mut deadpool_postgres::Object,
    events: impl IntoIterator<Item = (&'a DecodedEvent, &'a tracing::Span)>,
) -> Result<Vec<ApplyOutcome>, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    let statements = Statements {
        upsert: transaction.prepare_cached(UPSERT).await?,
        delete: transaction.prepare_cached(DELETE).await?,
    };
    let applies =
        events.into_iter().map(|(event, span)| apply_in(&transaction, &statements, event).instrument(span.clone()));
    let outcomes = futures_util::future::try_join_all(applies).await?;
    transaction.commit().await?;
    Ok(outcomes)
}

#[derive(Debug)]
struct Statements {
    upsert: tokio_postgres::Statement,
    delete: tokio_postgres::Statement,
}

/// The names of [`UPSERT`]'s parameters: `$1` is `id`, `$13` is `event_id`, and so on. The
/// statement, [`apply_in`] and the benchmark's copy of the statement agree through these names.
pub const UPSERT_PARAMETERS: [&str; 14] = [
    "id",
    "title",
    "content",
    "author",
    "category",
    "tags",
    "status",
    "views_count",
    "created_at",
    "updated_at",
    "published_at",
    "version",
    "event_id",
    "event_type",
];

/// Records the event id in `processed_events` and, only if it was not there, writes the article
/// unless DB2 holds a newer version or a deletion at least as new. Answers (recorded, written).
pub const UPSERT: &str = "\
    WITH recorded AS ( \
        INSERT INTO processed_events (event_id, event_type, article_id) VALUES ($13, $14, $1) \
        ON CONFLICT (event_id) DO NOTHING RETURNING 1 \
    ), written AS ( \
        INSERT INTO articles (id, title, content, author, category, tags, status, views_count, \
                              created_at, updated_at, published_at, version) \
        SELECT $1::bigint, $2::text, $3::text, $4::text, $5::text, $6::text[], $7::text, $8::bigint, \
               $9::timestamptz, $10::timestamptz, $11::timestamptz, $12::bigint \
        WHERE EXISTS (SELECT 1 FROM recorded) \
          AND NOT EXISTS (SELECT 1 FROM article_tombstones WHERE id = $1 AND version >= $12) \
        ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, content = EXCLUDED.content, \
            author = EXCLUDED.author, category = EXCLUDED.category, tags = EXCLUDED.tags, \
            status = EXCLUDED.status, views_count = EXCLUDED.views_count, \
            created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, \
            published_at = EXCLUDED.published_at, version = EXCLUDED.version \
        WHERE articles.version <= EXCLUDED.version \
        RETURNING 1 \
    ) \
    SELECT EXISTS (SELECT 1 FROM recorded) AS recorded, EXISTS (SELECT 1 FROM written) AS changed";

/// Records the event id and, only if it was not there, deletes the article unless DB2 holds a
/// newer version, and leaves a tombstone. Answers (recorded, deleted).
const DELETE: &str = "\
    WITH recorded AS ( \
        INSERT INTO processed_events (event_id, event_type, article_id) VALUES ($3::text, $4::text, $1::bigint) \
        ON CONFLICT (event_id) DO NOTHING RETURNING 1 \
    ), deleted AS ( \
        DELETE FROM articles WHERE id = $1 AND version <= $2 AND EXISTS (SELECT 1 FROM recorded) \
        RETURNING 1 \
    ), tombstone AS ( \
        INSERT INTO article_tombstones (id, version) SELECT $1::bigint, $2::bigint WHERE EXISTS (SELECT 1 FROM recorded) \
        ON CONFLICT (id) DO UPDATE SET version = GREATEST(article_tombstones.version, EXCLUDED.version), \
            deleted_at = now() \
        RETURNING 1 \
    ) \
    SELECT EXISTS (SELECT 1 FROM recorded) AS recorded, EXISTS (SELECT 1 FROM deleted) AS changed";

/// Applies one event with its statement, on the caller's transaction.
async fn apply_in(
    transaction: &Transaction<'_>,
    statements: &Statements,
    event: &DecodedEvent,
) -> Result<ApplyOutcome, tokio_postgres::Error> {
    let (article, event_type) = (&event.event.data, event.event.event_type.as_str());
    let row = match event.event.event_type {
        EventType::Deleted => {
            transaction
                .query_one(&statements.delete, &[&article.id, &article.version, &event.event_id, &event_type])
                .await?
        }
        EventType::Created | EventType::Updated | EventType::Published | EventType::Snapshot => {
            let status = article.status.as_str();
            let parameters = UPSERT_PARAMETERS.map(|name| -> &(dyn ToSql + Sync) {
                match name {
                    "id" => &article.id,
                    "title" => &article.title,
                    "content" => &article.content,
                    "author" => &article.author,
                    "category" => &article.category,
                    "tags" => &article.tags,
                    "status" => &status,
                    "views_count" => &article.views_count,
                    "created_at" => &article.created_at,
                    "updated_at" => &article.updated_at,
                    "published_at" => &article.published_at,
                    "version" => &article.version,
                    "event_id" => &event.event_id,
                    _ => &event_type,
                }
            });
            transaction.query_one(&statements.upsert, &parameters).await?
        }
    };
    let (recorded, changed): (bool, bool) = (row.try_get("recorded")?, row.try_get("changed")?);
    Ok(match (recorded, changed) {
        (false, _) => ApplyOutcome::AlreadyProcessed,
        (true, true) => ApplyOutcome::Applied,
        (true, false) => ApplyOutcome::Stale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_parameter_is_used_by_the_upsert_and_no_other() {
        for (index, name) in UPSERT_PARAMETERS.iter().enumerate() {
            assert!(UPSERT.contains(&format!("${}", index + 1)), "${} ({name}) unused", index + 1);
        }
        assert!(!UPSERT.contains(&format!("${}", UPSERT_PARAMETERS.len() + 1)));
        let names: std::collections::BTreeSet<_> = UPSERT_PARAMETERS.iter().collect();
        assert_eq!(names.len(), UPSERT_PARAMETERS.len(), "a name is listed twice");
    }
}
