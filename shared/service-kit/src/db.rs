//! Database plumbing: connection pools, migrations and the transient/permanent split of errors.
//!
//! Migrations are refinery files under `sql/`, one directory per set, each embedded by the crate
//! that owns it (`outbox` for `sql/outbox`, the API for `sql/articles`, the sink for `sql/replica`)
//! and recorded in that set's own history table, so sets sharing a database never see each
//! other's versions. Every service applies the sets it uses at start-up; processes starting at
//! once are serialised by a PostgreSQL advisory lock taken on the migrating connection.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::DatabaseUrl;

/// A set of migrations one crate owns, applied in the order given to [`migrate`].
#[derive(Debug, Clone, Copy)]
pub struct MigrationSet {
    /// Names the set in logs.
    pub name: &'static str,
    /// The table that records this set's versions, and no other set's.
    pub history_table: &'static str,
    /// The runner `refinery::embed_migrations!` generated for the set's directory.
    pub embedded: fn() -> refinery::Runner,
}

impl MigrationSet {
    fn runner(&self) -> refinery::Runner {
        let mut runner = (self.embedded)();
        runner.set_migration_table_name(self.history_table);
        runner
    }
}

/// Arbitrary constant key of the advisory lock that serialises migrations within one database.
const MIGRATION_LOCK_KEY: i64 = 0x626c_6f67_0001;

/// Errors of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to {database}")]
    Connect {
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("database query failed")]
    Query(#[from] tokio_postgres::Error),
    #[error("migration set {set} failed")]
    Migration {
        set: &'static str,
        #[source]
        source: refinery::Error,
    },
    #[error("cannot build the connection pool")]
    Pool(#[from] deadpool_postgres::BuildError),
}

/// Session settings for a service whose open transaction another instance may wait behind (a
/// relay's successor, a sink's partition's next owner): if the process stops mid-transaction
/// (SIGSTOP, a frozen VM), the server ends that transaction after 10 s, and a statement waiting
/// for a lock gives up after 5 s and is retried ([`is_transient`] says both are transient).
/// Apply them with [`DatabaseUrl::with_session_settings`]; migrations may wait longer.
pub const BOUNDED_SESSIONS: &[(&str, &str)] =
    &[("lock_timeout", "5s"), ("statement_timeout", "60s"), ("idle_in_transaction_session_timeout", "10s")];

/// How long a caller waits for a pooled connection, or for a new one to open, before giving up.
pub const POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// The driver configuration of `url` with the connect timeout every connection of ours uses.
pub fn connection_config(url: &DatabaseUrl) -> tokio_postgres::Config {
    let mut config = url.config().clone();
    config.connect_timeout(POOL_TIMEOUT);
    config
}

/// A pool that opens connections lazily, so building it never needs the database to be up.
pub fn pool(url: &DatabaseUrl, max_size: usize) -> Result<Pool, DbError> {
    let config = connection_config(url);
    let manager = Manager::from_config(config, url.tls(), ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Ok(Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .build()?)
}

/// Opens one connection outside any pool (migrations, LISTEN, advisory locks).
pub async fn connect(url: &DatabaseUrl) -> Result<tokio_postgres::Client, DbError> {
    let (client, connection) = connection_config(url)
        .connect(url.tls())
        .await
        .map_err(|source| DbError::Connect { database: url.redacted(), source })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "database connection closed");
        }
    });
    Ok(client)
}

/// Applies `sets` in order, holding an advisory lock so that concurrent starters apply them once.
pub async fn migrate(url: &DatabaseUrl, sets: &[MigrationSet]) -> Result<(), DbError> {
    let mut client = connect(url).await?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY]).await?;
    let mut result = Ok(());
    for set in sets {
        match set.runner().run_async(&mut client).await {
            Ok(report) => {
                for migration in report.applied_migrations() {
                    tracing::info!(set = set.name, migration = %migration, "applied migration");
                }
            }
            Err(source) => {
                result = Err(DbError::Migration { set: set.name, source });
                break;
            }
        }
    }
    // The lock also goes with the connection; unlocking explicitly just frees it sooner.
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY]).await;
    result
}

/// Retries [`migrate`] with capped backoff until it succeeds; returns false if cancelled first.
/// Services call this at start-up so that they may start before their database.
pub async fn migrate_when_available(url: &DatabaseUrl, sets: &[MigrationSet], shutdown: &CancellationToken) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match migrate(url, sets).await {
            Ok(()) => return true,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(database = %url, error = %error_chain(&error), ?delay, "database not ready, retrying");
                if !crate::shutdown::sleep_unless_cancelled(shutdown, delay).await {
                    return false;
                }
            }
        }
    }
}

/// True for errors that say nothing about the statement itself (lost connection, server
/// shutting down, too many connections, serialisation conflicts): retrying later may succeed.
/// False for errors the same statement would hit again (bad data, constraint violations).
pub fn is_transient(error: &tokio_postgres::Error) -> bool {
    let Some(code) = error.code() else {
        // No SQLSTATE: the error happened on the connection, not in the server's executor.
        return true;
    };
    let class = &code.code()[..2];
    // A session the server ended for idling in a transaction ([`BOUNDED_SESSIONS`]) is gone, not
    // wrong: the work is retried on a new one.
    matches!(class, "08" | "53" | "57" | "58" | "40")
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
}

/// `error: cause: cause` on one line, for log fields.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
