//! At most one relay publishes at a time: the leader holds a PostgreSQL advisory lock on a
//! dedicated connection. Standbys wait for the lock in the server and take over the moment the
//! leader's connection closes (a dead process's closes at once, a clean stop's too).
//!
//! The lock only lasts as long as its connection, so the leader watches it: when the connection
//! ends, or a heartbeat (`SELECT 1` every second) fails or takes over three seconds, the `lost`
//! token fires and the relay stops producing at once. Taking the lock also increments the fencing
//! epoch in `relay_leader` (see [`crate::settle`]), which is what actually keeps a deposed
//! leader from settling anything.
//!
//! On top of the lock, a [`Lease`] on this process's monotonic clock: it runs [`LEASE`] from the
//! moment the last successful heartbeat was *sent*, and nothing is handed to the producer once it
//! lapsed. A leader paused past its lease (SIGSTOP, a frozen VM) therefore sends nothing new when
//! it resumes, whatever its tasks notice first. What it had already handed over is the broker's
//! to refuse (transactional fencing, [`crate::publish`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use service_kit::backoff::Backoff;
use service_kit::config::DatabaseUrl;
use service_kit::db::error_chain;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Advisory lock key of the leader relay (arbitrary, distinct from the migration locks).
const LOCK_KEY: i64 = outbox::LEADER_LOCK_KEY;
/// How long a standby's wait for the lock lasts before it starts another (the server ends it).
const LOCK_WAIT: Duration = Duration::from_secs(2);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a successful heartbeat keeps the lease, counted from when it was sent.
pub(crate) const LEASE: Duration = HEARTBEAT_TIMEOUT;
/// Visible in `pg_stat_activity`, so an operator (or a test) can find the lock connection.
pub const LOCK_CONNECTION_NAME: &str = "outbox-relay-leader";

/// The leader's lease on its own monotonic clock (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    origin: Instant,
    /// Milliseconds after `origin` at which the lease lapses.
    until_ms: Arc<AtomicU64>,
}

impl Lease {
    fn starting(sent_at: Instant) -> Self {
        let lease = Self { origin: sent_at, until_ms: Arc::new(AtomicU64::new(0)) };
        lease.renew(sent_at);
        lease
    }

    /// Extends the lease to [`LEASE`] after `sent_at`, the moment the confirming request was sent.
    fn renew(&self, sent_at: Instant) {
        let until = (sent_at.saturating_duration_since(self.origin) + LEASE).as_millis();
        self.until_ms.fetch_max(u64::try_from(until).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Whether the lease still holds now.
    pub(crate) fn is_valid(&self) -> bool {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        now < self.until_ms.load(Ordering::Relaxed)
    }
}

/// Held while this relay is the leader; dropping it releases the lock.
#[derive(Debug)]
pub struct Leadership {
    /// The fencing epoch this relay leads, with what its predecessor declared.
    pub(crate) epoch: crate::settle::Epoch,
    lease: Lease,
    lost: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Leadership {
    /// Waits until this relay holds the lock (or `shutdown`), then starts a new epoch, declaring
    /// `delivery_bound` for its successor.
    pub(crate) async fn acquire(
        url: &DatabaseUrl,
        holder: &str,
        delivery_bound: Duration,
        shutdown: &CancellationToken,
    ) -> Option<Self> {
        let mut backoff = Backoff::default();
        let mut announced_standby = false;
        while !shutdown.is_cancelled() {
            match Self::try_acquire(url, holder, delivery_bound, shutdown, &mut announced_standby).await {
                Ok(Some(leadership)) => return Some(leadership),
                Ok(None) => return None,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %error_chain(&error), ?delay, "cannot reach DB1 for the leader lock; retrying");
                    if !service_kit::shutdown::sleep_unless_cancelled(shutdown, delay).await {
                        return None;
                    }
                }
            }
        }
        None
    }

    /// Connects and waits for the lock; `Ok(None)` when shut down while standing by.
    async fn try_acquire(
        url: &DatabaseUrl,
        holder: &str,
        delivery_bound: Duration,
        shutdown: &CancellationToken,
        announced_standby: &mut bool,
    ) -> Result<Option<Self>, tokio_postgres::Error> {
        let mut config = service_kit::db::connection_config(url);
        config.application_name(LOCK_CONNECTION_NAME).keepalives(true).keepalives_idle(Duration::from_secs(5));
        let (client, connection) = config.connect(url.tls()).await?;
        let lost = CancellationToken::new();
        let connection_task = {
            let lost = lost.clone();
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(%error, "leader lock connection failed");
                }
                lost.cancel();
            })
        };
        // A standby waits for the lock in the server, so it takes over the moment the leader's
        // session ends; the wait gives up now and then, which lets the loop see a shutdown.
        client.batch_execute(&format!("SET lock_timeout = '{}ms'", LOCK_WAIT.as_millis())).await?;
        let locked: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY]).await?.try_get(0)?;
        if !locked {
            if !*announced_standby {
                tracing::info!("another relay holds the leader lock; standing by");
                *announced_standby = true;
            }
            loop {
                let waited = tokio::select! {
                    waited = client.query_one("SELECT pg_advisory_lock($1)", &[&LOCK_KEY]) => waited,
                    () = shutdown.cancelled() => {
                        connection_task.abort();
                        return Ok(None);
                    }
                };
                match waited {
                    Ok(_) => break,
                    Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {}
                    Err(error) => return Err(error),
                }
            }
        }
        // The lease runs from a request sent once the lock is ours: the new epoch's.
        let sent_at = Instant::now();
        let epoch = crate::settle::begin_epoch(&client, holder, delivery_bound).await?;
        let lease = Lease::starting(sent_at);
        let heartbeat = tokio::spawn(heartbeat(Arc::new(client), lease.clone(), lost.clone()));
        tracing::info!(epoch = epoch.epoch, holder, predecessor = ?epoch.predecessor, "this relay is now the leader");
        Ok(Some(Self { epoch, lease, lost, tasks: vec![connection_task, heartbeat] }))
    }

    /// Fires when the lock may have been lost.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// The lease, checked before anything is handed to the producer.
    pub(crate) fn lease(&self) -> &Lease {
        &self.lease
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        // Aborting the tasks drops the client and closes the connection, releasing the lock.
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn heartbeat(client: Arc<tokio_postgres::Client>, lease: Lease, lost: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            () = lost.cancelled() => return,
        }
        let sent_at = Instant::now();
        match tokio::time::timeout(HEARTBEAT_TIMEOUT, client.simple_query("SELECT 1")).await {
            Ok(Ok(_)) if lease.is_valid() => lease.renew(sent_at),
            Ok(Ok(_)) => {
                tracing::warn!("the lease lapsed before the heartbeat came back (was this process paused?)");
                lost.cancel();
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "leader lock connection heartbeat failed");
                lost.cancel();
                return;
            }
            Err(_) => {
                tracing::warn!(timeout = ?HEARTBEAT_TIMEOUT, "leader lock connection heartbeat timed out");
                lost.cancel();
                return;
            }
        }
    }
}

/// Added to the previous leader's declared bound before a new leader reads back.
const TAKEOVER_MARGIN: Duration = Duration::from_secs(1);

/// How long a new leader waits before reading back: nothing when it is the first leader ever or
/// when its predecessor stopped cleanly with nothing in flight; otherwise the bound the
/// predecessor declared (its own, when the predecessor declared none), so that nothing it handed
/// to its producer can still land after the read-back.
pub(crate) fn takeover_wait(epoch: &crate::settle::Epoch, own_bound: Duration) -> Option<Duration> {
    if epoch.epoch <= 1 || epoch.predecessor.clean_stop {
        return None;
    }
    Some(epoch.predecessor.delivery_bound.unwrap_or(own_bound) + TAKEOVER_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settle::{Epoch, Predecessor};

    fn epoch(epoch: i64, clean_stop: bool, delivery_bound: Option<Duration>) -> Epoch {
        Epoch { epoch, transactional_id: "t".to_owned(), predecessor: Predecessor { clean_stop, delivery_bound } }
    }

    #[test]
    fn a_successor_waits_out_its_predecessors_declared_bound_unless_it_stopped_cleanly() {
        let own = Duration::from_secs(10);
        assert_eq!(takeover_wait(&epoch(1, false, None), own), None, "the first leader has no predecessor");
        assert_eq!(takeover_wait(&epoch(2, true, Some(Duration::from_secs(30))), own), None);
        assert_eq!(
            takeover_wait(&epoch(2, false, Some(Duration::from_secs(4))), own),
            Some(Duration::from_secs(5)),
            "the predecessor's bound, not this relay's own"
        );
        assert_eq!(takeover_wait(&epoch(7, false, None), own), Some(Duration::from_secs(11)));
    }

    #[test]
    fn the_lease_runs_from_when_the_renewal_was_sent_and_lapses() {
        let long_ago = Instant::now().checked_sub(LEASE * 2).expect("the clock runs that long");
        let lease = Lease::starting(long_ago);
        assert!(!lease.is_valid(), "a lease sent two lease lengths ago has lapsed");
        lease.renew(Instant::now());
        assert!(lease.is_valid());
        // A late answer to an older request never shortens the lease.
        lease.renew(long_ago);
        assert!(lease.is_valid());
    }
}
