//! Keeps `processed_events` bounded: rows older than `SINK_PROCESSED_RETENTION` are deleted in
//! small batches (one short transaction each, so the sink's applies never wait long behind them).
//!
//! Why that is safe: `processed_events` is what makes a redelivered event a no-op by its id, but
//! for the pipeline's own events the article's version already does — an upsert only replaces an
//! older or equal version (equal: the same content again), and a deletion's tombstone, which is
//! never pruned, refuses every older event. So an event replayed after its row was pruned
//! changes nothing in DB2. What only `processed_events` protects is the count: such a replay is
//! counted as applied (or stale) instead of as a duplicate. And hand-written events without a
//! version (the seed's idempotence test, version 0) are re-applied with the same content. The
//! retention only needs to exceed how far back a redelivery can reach in practice (a rebalance,
//! a restart: seconds to minutes); the default, 7 days, also covers an operator replaying a
//! topic from a week-old offset without a single duplicate being counted as applied.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::metrics::SinkMetrics;
use crate::sink::Db2Error;

/// How often the pruner looks for rows past the retention when it found none last time.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Deletes up to `$2` rows processed before `now() - $1` seconds, oldest first.
const PRUNE: &str = "\
    DELETE FROM processed_events WHERE event_id IN ( \
        SELECT event_id FROM processed_events \
        WHERE processed_at < LOCALTIMESTAMP - make_interval(secs => $1) \
        ORDER BY processed_at LIMIT $2)";

/// Prunes `processed_events` until `shutdown`: batches of `batch` rows back to back while there
/// are rows past `retention`, then a pause.
pub(crate) async fn prune_processed_events(
    pool: Pool,
    retention: Duration,
    batch: i64,
    metrics: SinkMetrics,
    shutdown: CancellationToken,
) {
    let mut pause = Duration::ZERO;
    while service_kit::shutdown::sleep_unless_cancelled(&shutdown, pause).await {
        pause = match prune_once(&pool, retention, batch).await {
            Ok(deleted) => {
                metrics.processed_pruned.inc_by(deleted);
                if deleted > 0 {
                    tracing::debug!(deleted, "pruned processed_events past the retention");
                }
                if deleted >= batch.unsigned_abs() { Duration::ZERO } else { PRUNE_EVERY.min(retention) }
            }
            Err(error) => {
                tracing::warn!(error = %service_kit::db::error_chain(&error), "cannot prune processed_events; retrying");
                PRUNE_EVERY.min(retention)
            }
        };
    }
}

async fn prune_once(pool: &Pool, retention: Duration, batch: i64) -> Result<u64, Db2Error> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(PRUNE).await?;
    Ok(client.execute(&statement, &[&retention.as_secs_f64(), &batch]).await?)
}
