//! DB2's tables — `articles`, `processed_events`, `article_tombstones` — and all of their SQL.
//!
//! One transaction per batch of events and one statement per event, in order: it records the
//! event id (a conflict means it was applied before, so nothing else happens) and applies it.
//! Versions make the replica converge whatever the order events arrive in: an upsert only
//! replaces an older version, a deletion leaves a tombstone that refuses older upserts, so a stale
//! or replayed event can neither roll back nor resurrect.

use deadpool_postgres::Transaction;
use events::EventType;
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

/// The statements' parameters: `$1` the article as JSON (the event's `data`), `$2` the event id,
/// `$3` the event type. `jsonb_populate_record` maps the JSON onto DB2's `articles` row type by
/// column name, so no statement lists the columns by position.
macro_rules! with_recorded_event {
    ($rest:literal) => {
        concat!(
            "WITH event AS (SELECT * FROM jsonb_populate_record(NULL::articles, $1::text::jsonb)), \
             recorded AS ( \
                 INSERT INTO processed_events (event_id, event_type, article_id) \
                 SELECT $2::text, $3::text, id FROM event \
                 ON CONFLICT (event_id) DO NOTHING RETURNING 1 \
             ), ",
            $rest
        )
    };
}

/// Records the event id in `processed_events` and, only if it was not there, writes the article
/// unless DB2 holds a newer version or a deletion at least as new. Answers (recorded, changed).
pub const UPSERT: &str = with_recorded_event!(
    "written AS ( \
        INSERT INTO articles SELECT * FROM event \
        WHERE EXISTS (SELECT 1 FROM recorded) \
          AND NOT EXISTS (SELECT 1 FROM article_tombstones t, event e WHERE t.id = e.id AND t.version >= e.version) \
        ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, content = EXCLUDED.content, \
            author = EXCLUDED.author, category = EXCLUDED.category, tags = EXCLUDED.tags, \
            status = EXCLUDED.status, views_count = EXCLUDED.views_count, \
            created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, \
            published_at = EXCLUDED.published_at, version = EXCLUDED.version \
        WHERE articles.version <= EXCLUDED.version \
        RETURNING 1 \
    ) \
    SELECT EXISTS (SELECT 1 FROM recorded) AS recorded, EXISTS (SELECT 1 FROM written) AS changed"
);

/// Records the event id and, only if it was not there, deletes the article unless DB2 holds a
/// newer version, and leaves a tombstone. Answers (recorded, changed).
const DELETE: &str = with_recorded_event!(
    "deleted AS ( \
        DELETE FROM articles a USING event e \
        WHERE a.id = e.id AND a.version <= e.version AND EXISTS (SELECT 1 FROM recorded) \
        RETURNING 1 \
    ), tombstone AS ( \
        INSERT INTO article_tombstones (id, version) SELECT id, version FROM event WHERE EXISTS (SELECT 1 FROM recorded) \
        ON CONFLICT (id) DO UPDATE SET version = GREATEST(article_tombstones.version, EXCLUDED.version), \
            deleted_at = now() \
        RETURNING 1 \
    ) \
    SELECT EXISTS (SELECT 1 FROM recorded) AS recorded, EXISTS (SELECT 1 FROM deleted) AS changed"
);

/// Applies one event with its statement, on the caller's transaction.
async fn apply_in(
    transaction: &Transaction<'_>,
    statements: &Statements,
    event: &DecodedEvent,
) -> Result<ApplyOutcome, tokio_postgres::Error> {
    let statement = match event.event.event_type {
        EventType::Deleted => &statements.delete,
        EventType::Created | EventType::Updated | EventType::Published => &statements.upsert,
    };
    let row = transaction
        .query_one(statement, &[&event.article_json, &event.event_id, &event.event.event_type.as_str()])
        .await?;
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
    fn both_statements_take_the_article_as_json_the_event_id_and_its_type_and_nothing_else() {
        for statement in [UPSERT, DELETE] {
            for parameter in ["$1::text::jsonb", "$2::text", "$3::text"] {
                assert!(statement.contains(parameter), "{parameter} in {statement}");
            }
            assert!(!statement.contains("$4"));
            assert!(statement.contains("AS recorded") && statement.contains("AS changed"));
        }
    }
}
