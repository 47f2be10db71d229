//! DB2's tables — `articles`, `processed_events`, `article_tombstones` — and all of their SQL.
//!
//! One transaction per batch of events. For each event, in order: record its id (a conflict
//! means it was applied before, so nothing else happens) and apply it. A batch of upserts that
//! names each article and each event id once — a backlog of creations, a partition's share of
//! steady traffic — is applied by one set-based statement ([`UPSERT_BATCH`]) instead of one
//! statement per event: per event, that statement does the same as [`UPSERT`], and as no two of
//! its rows touch the same article or id, their order within it cannot matter. Any other batch
//! (a deletion, an article twice) goes event by event.
//! Versions make the replica converge whatever the order events arrive in: an upsert only
//! replaces an older version, a deletion leaves a tombstone that refuses older upserts, so a stale
//! or replayed event can neither roll back nor resurrect.

use deadpool_postgres::Transaction;
use events::EventType;
use tokio_postgres::types::ToSql;
use tracing::Instrument as _;

use events::decode::DecodedEvent;

/// How a batch was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatementForm {
    /// One [`UPSERT_BATCH`] for the whole batch.
    Batch,
    /// One statement per event.
    PerEvent,
}

impl StatementForm {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Batch => "batch",
            Self::PerEvent => "per_event",
        }
    }
}

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

/// Applies `events` in one DB2 transaction: with [`UPSERT_BATCH`] when it can (see
/// [`applies_as_a_set`]), else each inside its own span, with one statement per event. Those
/// statements are pipelined: all are sent before the first answer is awaited, so a
/// batch costs about one round trip instead of one per event. tokio-postgres sends them in the
/// order `try_join_all` first polls them, which is the events' order; PostgreSQL runs them one
/// after the other, each seeing the effects of those before it. (DB2's final state would not
/// depend on that order anyway: versions decide.)
pub(crate) async fn apply_all<'a>(
    client: &mut deadpool_postgres::Object,
    events: impl IntoIterator<Item = (&'a DecodedEvent, &'a tracing::Span)>,
) -> Result<(StatementForm, Vec<ApplyOutcome>), tokio_postgres::Error> {
    let events: Vec<(&DecodedEvent, &tracing::Span)> = events.into_iter().collect();
    let decoded: Vec<&DecodedEvent> = events.iter().map(|(event, _)| *event).collect();
    let transaction = client.transaction().await?;
    let (form, outcomes) = if applies_as_a_set(&decoded) {
        (StatementForm::Batch, upsert_batch(&transaction, &decoded).await?)
    } else {
        let statements = Statements {
            upsert: transaction.prepare_cached(UPSERT).await?,
            delete: transaction.prepare_cached(DELETE).await?,
        };
        let applies =
            events.iter().map(|(event, span)| apply_in(&transaction, &statements, event).instrument((*span).clone()));
        (StatementForm::PerEvent, futures_util::future::try_join_all(applies).await?)
    };
    transaction.commit().await?;
    Ok((form, outcomes))
}

/// Whether `events` can go through [`UPSERT_BATCH`]: more than one, all upserts, no article and no
/// event id twice.
fn applies_as_a_set(events: &[&DecodedEvent]) -> bool {
    if events.len() < 2 {
        return false;
    }
    let (mut articles, mut ids) = (std::collections::HashSet::new(), std::collections::HashSet::new());
    for event in events {
        if event.event.event_type == EventType::Deleted
            || !articles.insert(event.event.data.id)
            || !ids.insert(event.event_id.as_str())
        {
            return false;
        }
    }
    true
}

/// The conflict clause both upserts share: replace every column of DB2's article, but only with
/// a version at least as new (equal: the same content again).
macro_rules! version_guarded_update {
    () => {
        "ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, content = EXCLUDED.content, \
         author = EXCLUDED.author, category = EXCLUDED.category, tags = EXCLUDED.tags, \
         status = EXCLUDED.status, views_count = EXCLUDED.views_count, \
         created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, \
         published_at = EXCLUDED.published_at, version = EXCLUDED.version \
         WHERE articles.version <= EXCLUDED.version "
    };
}

/// [`UPSERT`] for a whole batch in one statement: its parameters are [`UPSERT_PARAMETERS`], each an
/// array holding every event's value (tags as a JSON array, since PostgreSQL's arrays of arrays
/// must be rectangular). Each event, by its position in the arrays, answers (recorded, written)
/// as [`UPSERT`] does. The batch must name each article and each event id once.
pub const UPSERT_BATCH: &str = concat!(
    "\
    WITH input AS ( \
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                             $8::bigint[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::bigint[], \
                             $13::text[], $14::text[]) \
        WITH ORDINALITY AS input (id, title, content, author, category, tags, status, views_count, created_at, \
                                  updated_at, published_at, version, event_id, event_type, position) \
    ), recorded AS ( \
        INSERT INTO processed_events (event_id, event_type, article_id) \
        SELECT event_id, event_type, id FROM input ORDER BY position \
        ON CONFLICT (event_id) DO NOTHING RETURNING event_id \
    ), written AS ( \
        INSERT INTO articles (id, title, content, author, category, tags, status, views_count, \
                              created_at, updated_at, published_at, version) \
        SELECT i.id, i.title, i.content, i.author, i.category, \
               ARRAY(SELECT jsonb_array_elements_text(i.tags::jsonb)), i.status, i.views_count, \
               i.created_at, i.updated_at, i.published_at, i.version \
        FROM input i JOIN recorded r ON r.event_id = i.event_id \
        WHERE NOT EXISTS (SELECT 1 FROM article_tombstones t WHERE t.id = i.id AND t.version >= i.version) \
        ORDER BY i.position ",
    version_guarded_update!(),
    "RETURNING id \
    ) \
    SELECT r.event_id IS NOT NULL AS recorded, w.id IS NOT NULL AS changed \
    FROM input i LEFT JOIN recorded r ON r.event_id = i.event_id LEFT JOIN written w ON w.id = i.id \
    ORDER BY i.position"
);

/// Applies `events` (see [`applies_as_a_set`]) with [`UPSERT_BATCH`], on the caller's transaction.
async fn upsert_batch(
    transaction: &Transaction<'_>,
    batch: &[&DecodedEvent],
) -> Result<Vec<ApplyOutcome>, tokio_postgres::Error> {
    let articles: Vec<&events::Article> = batch.iter().map(|event| &event.event.data).collect();
    let ids: Vec<i64> = articles.iter().map(|article| article.id).collect();
    let titles: Vec<&str> = articles.iter().map(|article| article.title.as_str()).collect();
    let contents: Vec<&str> = articles.iter().map(|article| article.content.as_str()).collect();
    let authors: Vec<&str> = articles.iter().map(|article| article.author.as_str()).collect();
    let categories: Vec<Option<&str>> = articles.iter().map(|article| article.category.as_deref()).collect();
    let tags: Vec<String> =
        articles.iter().map(|article| serde_json::Value::from(article.tags.clone()).to_string()).collect();
    let statuses: Vec<&str> = articles.iter().map(|article| article.status.as_str()).collect();
    let views: Vec<i64> = articles.iter().map(|article| article.views_count).collect();
    let created: Vec<chrono::DateTime<chrono::Utc>> = articles.iter().map(|article| article.created_at).collect();
    let updated: Vec<chrono::DateTime<chrono::Utc>> = articles.iter().map(|article| article.updated_at).collect();
    let published: Vec<Option<chrono::DateTime<chrono::Utc>>> =
        articles.iter().map(|article| article.published_at).collect();
    let versions: Vec<i64> = articles.iter().map(|article| article.version).collect();
    let event_ids: Vec<&str> = batch.iter().map(|event| event.event_id.as_str()).collect();
    let event_types: Vec<&str> = batch.iter().map(|event| event.event.event_type.as_str()).collect();
    let parameters = UPSERT_PARAMETERS.map(|name| -> &(dyn ToSql + Sync) {
        match name {
            "id" => &ids,
            "title" => &titles,
            "content" => &contents,
            "author" => &authors,
            "category" => &categories,
            "tags" => &tags,
            "status" => &statuses,
            "views_count" => &views,
            "created_at" => &created,
            "updated_at" => &updated,
            "published_at" => &published,
            "version" => &versions,
            "event_id" => &event_ids,
            _ => &event_types,
        }
    });
    let statement = transaction.prepare_cached(UPSERT_BATCH).await?;
    let rows = transaction.query(&statement, &parameters).await?;
    rows.iter().map(|row| Ok(outcome(row.try_get("recorded")?, row.try_get("changed")?))).collect()
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
pub const UPSERT: &str = concat!(
    "\
    WITH recorded AS ( \
        INSERT INTO processed_events (event_id, event_type, article_id) VALUES ($13, $14, $1) \
        ON CONFLICT (event_id) DO NOTHING RETURNING 1 \
    ), written AS ( \
        INSERT INTO articles (id, title, content, author, category, tags, status, views_count, \
                              created_at, updated_at, published_at, version) \
        SELECT $1::bigint, $2::text, $3::text, $4::text, $5::text, $6::text[], $7::text, $8::bigint, \
               $9::timestamptz, $10::timestamptz, $11::timestamptz, $12::bigint \
        WHERE EXISTS (SELECT 1 FROM recorded) \
          AND NOT EXISTS (SELECT 1 FROM article_tombstones WHERE id = $1 AND version >= $12) ",
    version_guarded_update!(),
    "RETURNING 1 \
    ) \
    SELECT EXISTS (SELECT 1 FROM recorded) AS recorded, EXISTS (SELECT 1 FROM written) AS changed"
);

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
    Ok(outcome(row.try_get("recorded")?, row.try_get("changed")?))
}

/// What an event's statement answered, as an outcome.
fn outcome(recorded: bool, changed: bool) -> ApplyOutcome {
    match (recorded, changed) {
        (false, _) => ApplyOutcome::AlreadyProcessed,
        (true, true) => ApplyOutcome::Applied,
        (true, false) => ApplyOutcome::Stale,
    }
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
        for index in 1..=UPSERT_PARAMETERS.len() {
            assert!(UPSERT_BATCH.contains(&format!("${index}::")), "the batch statement does not use ${index}");
        }
        assert!(!UPSERT_BATCH.contains(&format!("${}", UPSERT_PARAMETERS.len() + 1)));
    }

    fn decoded(event_id: &str, event_type: &str, article: i64) -> DecodedEvent {
        let value = serde_json::json!({
            "event_id": event_id, "event_type": event_type, "timestamp": "2026-11-22T10:00:00Z",
            "data": {"id": article, "title": "t", "content": "c", "author": "a",
                     "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:00Z", "version": 1}
        })
        .to_string();
        events::decode::decode(Some(value.as_bytes()), None).expect("a valid event")
    }

    #[test]
    fn only_batches_of_upserts_naming_each_article_and_event_once_go_as_a_set() {
        let set = |batch: &[DecodedEvent]| applies_as_a_set(&batch.iter().collect::<Vec<_>>());
        let (a, b) = (decoded("e1", "article.created", 1), decoded("e2", "article.updated", 2));
        assert!(set(&[a.clone(), b.clone()]));
        assert!(!set(std::slice::from_ref(&a)), "one event goes by itself");
        assert!(!set(&[a.clone(), decoded("e3", "article.updated", 1)]), "article 1 twice");
        assert!(!set(&[a.clone(), decoded("e1", "article.updated", 3)]), "event id e1 twice");
        assert!(!set(&[a, b, decoded("e4", "article.deleted", 4)]), "a deletion");
    }
}
