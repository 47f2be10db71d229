//! Database plumbing: connection pools, migrations and the transient/permanent split of errors.
//!
//! Migrations are refinery files in `sql/db1` and `sql/db2`, embedded in the binaries. Every
//! service applies its database's migrations at start-up; two processes starting at once are
//! serialised by a PostgreSQL advisory lock taken on the migrating connection.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::DatabaseUrl;

mod embedded_db1 {
    refinery::embed_migrations!("../sql/db1");
}

mod embedded_db2 {
    refinery::embed_migrations!("../sql/db2");
}

/// Which database's schema to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// DB1: articles and the outbox (owned by the API and the relay).
    Primary,
    /// DB2: the replica's articles, `processed_events` and tombstones (owned by the sink).
    Replica,
}

impl Schema {
    fn runner(self) -> refinery::Runner {
        match self {
            Self::Primary => embedded_db1::migrations::runner(),
            Self::Replica => embedded_db2::migrations::runner(),
        }
    }

    /// Arbitrary constant key of the advisory lock that serialises migrations.
    fn lock_key(self) -> i64 {
        match self {
            Self::Primary => 0x626c_6f67_0001,
            Self::Replica => 0x626c_6f67_0002,
        }
    }
}

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
    #[error("migration failed")]
    Migration(#[from] refinery::Error),
    #[error("cannot build the connection pool")]
    Pool(#[from] deadpool_postgres::BuildError),
}

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
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
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
        .connect(NoTls)
        .await
        .map_err(|source| DbError::Connect { database: url.redacted(), source })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "database connection closed");
        }
    });
    Ok(client)
}

/// Applies the embedded migrations of `schema`, holding an advisory lock so that concurrent
/// starters apply them once.
pub async fn migrate(url: &DatabaseUrl, schema: Schema) -> Result<(), DbError> {
    let mut client = connect(url).await?;
    client.execute("SELECT pg_advisory_lock($1)", &[&schema.lock_key()]).await?;
    let report = schema.runner().run_async(&mut client).await;
    // The lock also goes with the connection; unlocking explicitly just frees it sooner.
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&schema.lock_key()]).await;
    let report = report?;
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, "applied migration");
    }
    Ok(())
}

/// Retries [`migrate`] with capped backoff until it succeeds; returns false if cancelled first.
/// Services call this at start-up so that they may start before their database.
pub async fn migrate_when_available(url: &DatabaseUrl, schema: Schema, shutdown: &CancellationToken) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match migrate(url, schema).await {
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
    matches!(class, "08" | "53" | "57" | "58" | "40") || *code == SqlState::LOCK_NOT_AVAILABLE
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
