//! `blogctl outbox dead-letters`: what an operator does with the rows the broker refused
//! (`outbox_dead_letters` in DB1, see docs/operations.md). A requeued row goes back into the
//! outbox under its original id, so the relay publishes it before its article's later rows,
//! which have waited behind it; a discarded one is gone for good and those rows flow again.

use anyhow::{Context as _, bail};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

pub use outbox::DeadLetter;

/// A one-connection pool on DB1. `database_url` is parsed here so that an invalid one is
/// refused without being echoed (it may hold a password).
pub fn connect(database_url: &str) -> anyhow::Result<Pool> {
    let Ok(config) = database_url.parse::<tokio_postgres::Config>() else {
        bail!("DATABASE_URL is not a valid PostgreSQL connection string");
    };
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager).max_size(1).build().context("cannot build the DB1 pool")
}

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
        "{}\t{}\tarticle={}\t{}\t{} bytes\tfailed {}\twaiting behind it: {}\t{}",
        dead.row.id,
        dead.row.event_id,
        dead.row.article_id,
        dead.row.event_type,
        dead.row.payload.len(),
        dead.failed_at.to_rfc3339(),
        dead.waiting,
        dead.error
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_url_is_refused_without_echoing_it() {
        let error = connect("postgres://u:s3cret@host:notaport/db").err().map(|error| error.to_string());
        let error = error.unwrap_or_default();
        assert!(error.contains("DATABASE_URL"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }
}
