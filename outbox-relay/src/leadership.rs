//! At most one relay publishes at a time: the leader holds a PostgreSQL advisory lock on a
//! dedicated connection. Standbys try the lock every half second and take over within about a
//! second of the leader's connection closing (a dead process's connection closes at once).
//!
//! The lock only lasts as long as its connection, so the leader watches it: when the connection
//! ends, or a heartbeat (`SELECT 1` every second) fails or takes over three seconds, the `lost`
//! token fires and the relay stops producing at once. Taking the lock also increments the fencing
//! epoch in `relay_leader` (see [`crate::settle`]), which is what actually keeps a deposed
//! leader from settling anything.

use std::sync::Arc;
use std::time::Duration;

use service_kit::backoff::Backoff;
use service_kit::config::DatabaseUrl;
use service_kit::db::error_chain;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

/// Advisory lock key of the leader relay (arbitrary, distinct from the migration locks).
const LOCK_KEY: i64 = 0x626c_6f67_0010;
const RETRY_LOCK_EVERY: Duration = Duration::from_millis(500);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// Added to the previous leader's delivery timeout before a new leader reads back.
const TAKEOVER_MARGIN: Duration = Duration::from_secs(2);
/// Visible in `pg_stat_activity`, so an operator (or a test) can find the lock connection.
pub const LOCK_CONNECTION_NAME: &str = "outbox-relay-leader";

/// Held while this relay is the leader; dropping it releases the lock.
#[derive(Debug)]
pub struct Leadership {
    /// The fencing epoch this relay leads.
    pub epoch: i64,
    lost: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Leadership {
    /// Waits until this relay holds the lock (or `shutdown`), then starts a new epoch.
    pub async fn acquire(url: &DatabaseUrl, holder: &str, shutdown: &CancellationToken) -> Option<Self> {
        let mut backoff = Backoff::default();
        let mut announced_standby = false;
        while !shutdown.is_cancelled() {
            match Self::try_acquire(url, holder, shutdown, &mut announced_standby).await {
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

    /// Connects and polls the lock; `Ok(None)` when shut down while standing by.
    async fn try_acquire(
        url: &DatabaseUrl,
        holder: &str,
        shutdown: &CancellationToken,
        announced_standby: &mut bool,
    ) -> Result<Option<Self>, tokio_postgres::Error> {
        let mut config = service_kit::db::connection_config(url);
        config.application_name(LOCK_CONNECTION_NAME).keepalives(true).keepalives_idle(Duration::from_secs(5));
        let (client, connection) = config.connect(NoTls).await?;
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
        let client = Arc::new(client);
        loop {
            let locked: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY]).await?.try_get(0)?;
            if locked {
                let epoch = crate::settle::begin_epoch(&client, holder).await?;
                let heartbeat = tokio::spawn(heartbeat(client, lost.clone()));
                tracing::info!(epoch, holder, "this relay is now the leader");
                return Ok(Some(Self { epoch, lost, tasks: vec![connection_task, heartbeat] }));
            }
            if !*announced_standby {
                tracing::info!("another relay holds the leader lock; standing by");
                *announced_standby = true;
            }
            if !service_kit::shutdown::sleep_unless_cancelled(shutdown, RETRY_LOCK_EVERY).await {
                connection_task.abort();
                return Ok(None);
            }
        }
    }

    /// Fires when the lock may have been lost.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
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

async fn heartbeat(client: Arc<tokio_postgres::Client>, lost: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            () = lost.cancelled() => return,
        }
        match tokio::time::timeout(HEARTBEAT_TIMEOUT, client.simple_query("SELECT 1")).await {
            Ok(Ok(_)) => {}
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

/// How long the leader of `epoch` waits before reading back: the first leader ever has no
/// predecessor; any later one waits until the previous leader's records can no longer land.
pub(crate) fn takeover_wait(epoch: i64, delivery_timeout: Duration) -> Option<Duration> {
    (epoch > 1).then(|| delivery_timeout + TAKEOVER_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_successor_waits_out_its_predecessor_deliveries() {
        assert_eq!(takeover_wait(1, Duration::from_secs(10)), None);
        assert_eq!(takeover_wait(2, Duration::from_secs(10)), Some(Duration::from_secs(12)));
        assert_eq!(takeover_wait(40, Duration::from_secs(3)), Some(Duration::from_secs(5)));
    }
}
