//! `blogctl outbox dead-letters`: what an operator does with the rows the broker refused
//! (`outbox_dead_letters` in DB1, see docs/operations.md). A requeued row goes back into the
//! outbox under its original id, so the relay publishes it before its article's later rows,
//! which have waited behind it; a discarded one is gone for good and those rows flow again.

use anyhow::{Context as _, bail};
use deadpool_postgres::Pool;

pub use outbox::DeadLetter;

/// Every dead letter, oldest first.
pub async fn list(pool: &Pool) -> anyhow::Result<Vec<DeadLetter>> {
    let client = pool.get().await.context("cannot connect to DB1")?;
    outbox::dead_letters(&client).await.context("cannot read outbox_dead_letters (is this DB1, migrated by the relay?)")
}

/// What an operator did to a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Requeue,
    Discard,
}

/// Requeues or discards dead letter `id`; an id that is not a dead letter is an error naming it.
pub async fn act(pool: &Pool, action: Action, id: i64) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("cannot connect to DB1")?;
    let transaction = client.transaction().await.context("cannot begin a DB1 transaction")?;
    let done = match action {
        Action::Requeue => outbox::requeue_dead_letter(&transaction, id).await,
        Action::Discard => outbox::discard_dead_letter(&transaction, id).await,
    }
    .with_context(|| format!("cannot change dead letter {id}"))?;
    if !done {
        bail!("no dead letter with id {id} (see `blogctl outbox dead-letters list`)");
    }
    transaction.commit().await.context("cannot commit")?;
    Ok(())
}

/// One dead letter as `list` prints it.
pub fn display_line(dead: &DeadLetter) -> String {
    format!(
        "{}\t{}\t{}={}\t{}\t{} bytes\tfailed {}\twaiting behind it: {}\t{}",
        dead.row.id,
        dead.row.event_id,
        dead.row.aggregate_type,
        dead.row.aggregate_id,
        dead.row.event_type,
        dead.row.payload.len(),
        dead.failed_at.to_rfc3339(),
        dead.waiting,
        dead.error
    )
}
