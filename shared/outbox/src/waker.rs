//! Waking the relay after a commit instead of inside the transaction.
//!
//! A `NOTIFY` inside a writer's transaction costs more than its statement: PostgreSQL serialises
//! every committing transaction that notifies, holding a database-wide lock from just before the
//! commit until its WAL is flushed, so that notifications queue in commit order. Concurrent
//! writers then commit one at a time, each waiting for its own flush (no group commit), and one
//! writer descheduled while it holds the lock stalls all the others. Measured with pgbench and
//! the API's statements, 8 clients, fsync on: 2,442–2,962 transactions/s with the `NOTIFY`,
//! 4,493–4,631 without (docs/performance.md).
//!
//! A writer at high rates therefore enqueues with [`crate::enqueue_without_notify`], commits, and
//! then calls [`RelayWaker::wake`]. One background task sends the notification on a connection of
//! its own, outside any writer's transaction, with `synchronous_commit` off for that statement only
//! (a notification is a hint, not data). Wake-ups that arrive while one is being sent, or within
//! [`SPACING`] after it, are folded into the next, so a burst of commits costs one or two
//! notifications. A wake-up lost to a crash or an unreachable database only delays the row until
//! the relay's next poll: the row itself committed, and the relay finds it by polling
//! (`RELAY_POLL_INTERVAL_MS`).

use deadpool_postgres::Pool;
use tokio::sync::mpsc;

use crate::NOTIFY_CHANNEL;

/// The least time between two notifications. Each is a small transaction of its own on the
/// database; sent back to back they were a second transaction for every other write at 6,000
/// writes/s. A relay that has rows keeps publishing without being woken (it waits for a
/// notification only once the outbox is empty), so a wake-up held back this long delays only
/// the first row after the relay found the outbox empty.
const SPACING: std::time::Duration = std::time::Duration::from_millis(2);

/// Sends the relay's wake-ups for one writer process; cheap to clone, one task behind all clones.
/// The task ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct RelayWaker {
    pending: mpsc::Sender<()>,
}

impl RelayWaker {
    /// Starts the task that notifies the relay, on a connection it takes out of `pool` (the pool
    /// may open another in its place). Call from within a Tokio runtime.
    pub fn spawn(pool: Pool) -> Self {
        // One slot: a wake-up waiting there stands for every commit since the last notification.
        let (pending, mut woken) = mpsc::channel(1);
        tokio::spawn(async move {
            let mut connection: Option<deadpool_postgres::ClientWrapper> = None;
            while woken.recv().await.is_some() {
                if let Err(error) = notify(&pool, &mut connection).await {
                    // The next wake-up opens a new connection; the relay's poll finds the rows meanwhile.
                    connection = None;
                    tracing::warn!(%error, "cannot wake the relay; it finds the new rows at its next poll");
                }
                tokio::time::sleep(SPACING).await;
            }
        });
        Self { pending }
    }

    /// Asks for a notification to the relay, after the caller's transaction committed. Never waits.
    pub fn wake(&self) {
        // Full: a wake-up is already pending and will cover this commit too. Closed: the runtime
        // is shutting down, and the relay polls.
        let _ = self.pending.try_send(());
    }
}

/// Errors of one notification.
#[derive(Debug, thiserror::Error)]
enum WakeError {
    // The source is in the message: this error is only ever logged, as one line.
    #[error("no connection to the outbox's database: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("the notification failed: {0}")]
    Notify(#[from] tokio_postgres::Error),
}

/// Sends one notification on `connection`, opening it first when there is none.
async fn notify(pool: &Pool, connection: &mut Option<deadpool_postgres::ClientWrapper>) -> Result<(), WakeError> {
    let client = match connection {
        Some(client) if !client.is_closed() => client,
        _ => connection.insert(deadpool_postgres::Object::take(pool.get().await?)),
    };
    // `set_config(…, true)` lasts until the end of this statement's own transaction, whose commit
    // it governs: nothing else on the connection is affected.
    let statement =
        client.prepare_cached("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')").await?;
    client.execute(&statement, &[&NOTIFY_CHANNEL]).await?;
    Ok(())
}
