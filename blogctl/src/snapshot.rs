//! `blogctl snapshot`: re-seeds a replica through the pipeline itself. For every article in DB1 it
//! enqueues, through the outbox, one `article.snapshot` event carrying the article as it is, so
//! the relay publishes it like any change and the sink applies it as an upsert under the version
//! guard: a snapshot never overwrites a newer change nor resurrects a newer deletion.
//!
//! Batches follow article ids, each one DB1 transaction that locks its articles `FOR SHARE` while
//! it writes their events: an update racing the snapshot waits for the batch, so each article's
//! events reach the outbox in version order. A run that is interrupted has committed whole batches
//! only; running it again (or with `--after-id`, printed as it goes) is harmless, since a repeated
//! snapshot of the same version changes nothing. A snapshot cannot tell what was deleted while a
//! log was lost: rebuilding a replica means starting from an empty one (docs/operations.md).

use std::collections::HashMap;

use anyhow::Context as _;
use chrono::Utc;
use deadpool_postgres::Pool;
use events::{Article, ArticleEvent, EventType, article_columns};
use outbox::NewEvent;
use uuid::Uuid;

/// How far a snapshot has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Articles enqueued so far.
    pub done: u64,
    /// Articles in DB1 when the run started (more may come while it runs).
    pub total: u64,
    /// The highest article id enqueued: `--after-id` resumes after it.
    pub last_id: i64,
}

/// Enqueues an `article.snapshot` event for every article whose id is above `after_id`, `batch`
/// articles per transaction, calling `on_batch` after each commit. Returns the final progress.
pub async fn run(
    pool: &Pool,
    after_id: i64,
    batch: i64,
    mut on_batch: impl FnMut(Progress),
) -> anyhow::Result<Progress> {
    let mut client = pool.get().await.context("cannot connect to DB1")?;
    let total: i64 = client
        .query_one("SELECT count(*) FROM articles WHERE id > $1", &[&after_id])
        .await
        .context("cannot count DB1's articles (is this DB1, migrated by the API?)")?
        .try_get(0)?;
    let mut progress = Progress { done: 0, total: total.unsigned_abs(), last_id: after_id };
    loop {
        let transaction = client.transaction().await.context("cannot begin a DB1 transaction")?;
        let rows = transaction
            .query(
                concat!("SELECT ", article_columns!(), " FROM articles WHERE id > $1 ORDER BY id LIMIT $2 FOR SHARE"),
                &[&progress.last_id, &batch],
            )
            .await
            .context("cannot read DB1's articles")?;
        if rows.is_empty() {
            return Ok(progress);
        }
        for row in &rows {
            let article = Article::from_row(row).context("cannot read an article row")?;
            let id = article.id;
            enqueue_snapshot(&transaction, article).await.with_context(|| format!("cannot enqueue article {id}"))?;
            progress.last_id = id;
        }
        transaction.commit().await.context("cannot commit a snapshot batch")?;
        progress.done += rows.len() as u64;
        progress.total = progress.total.max(progress.done);
        on_batch(progress);
    }
}

/// Writes `article`'s snapshot event to the outbox on the caller's transaction.
async fn enqueue_snapshot(transaction: &deadpool_postgres::Transaction<'_>, article: Article) -> anyhow::Result<()> {
    let event_id = Uuid::new_v4();
    let event = ArticleEvent {
        event_id: Some(event_id.to_string()),
        event_type: EventType::Snapshot,
        timestamp: Utc::now(),
        data: article,
    };
    let payload = serde_json::to_string(&event)?;
    let untraced = HashMap::new();
    let article_id = event.data.id.to_string();
    let new_event = NewEvent {
        event_id,
        aggregate_type: ArticleEvent::AGGREGATE_TYPE,
        aggregate_id: &article_id,
        event_type: EventType::Snapshot.as_str(),
        topic: None,
        headers: &[],
        payload: &payload,
        trace_context: &untraced,
    };
    outbox::enqueue(transaction, &new_event).await?;
    Ok(())
}

/// A progress bar for a terminal: `[#####.....]  512/1024 articles (50%)`.
pub fn bar(progress: Progress) -> String {
    const WIDTH: u64 = 30;
    let total = progress.total.max(1);
    let filled = (progress.done.min(total) * WIDTH / total) as usize;
    format!(
        "[{}{}] {}/{} articles ({}%)",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled),
        progress.done,
        progress.total,
        progress.done.min(total) * 100 / total
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_share_done_and_survives_an_empty_table() {
        assert_eq!(bar(Progress { done: 0, total: 0, last_id: 0 }), format!("[{}] 0/0 articles (0%)", ".".repeat(30)));
        assert_eq!(
            bar(Progress { done: 5, total: 10, last_id: 9 }),
            format!("[{}{}] 5/10 articles (50%)", "#".repeat(15), ".".repeat(15))
        );
        assert_eq!(
            bar(Progress { done: 10, total: 10, last_id: 9 }),
            format!("[{}] 10/10 articles (100%)", "#".repeat(30))
        );
    }
}
