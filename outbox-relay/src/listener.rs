//! Wakes the relay when the API commits an outbox row.
//!
//! A dedicated connection LISTENs on [`outbox::NOTIFY_CHANNEL`] and turns each notification
//! into a permit on a [`Notify`]. The connection is re-opened with backoff when lost, and every
//! (re)connection also wakes the relay, since notifications sent while disconnected are gone. A
//! lost notification therefore costs at most one polling interval, never an event.

use std::sync::Arc;

use futures_util::StreamExt as _;
use service_kit::backoff::Backoff;
use service_kit::config::DatabaseUrl;
use service_kit::db::{DbError, error_chain};
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// Keeps a LISTEN connection open until `shutdown`, waking `wake` on every notification.
pub async fn listen(url: DatabaseUrl, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        match listen_until_lost(&url, &wake, &shutdown, &mut backoff).await {
            Ok(()) => {}
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %error_chain(&error), ?delay, "LISTEN connection lost; polling until it is back");
                if !service_kit::shutdown::sleep_unless_cancelled(&shutdown, delay).await {
                    break;
                }
            }
        }
    }
}

async fn listen_until_lost(
    url: &DatabaseUrl,
    wake: &Arc<Notify>,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), DbError> {
    let (client, mut connection) = service_kit::db::connection_config(url)
        .connect(url.tls())
        .await
        .map_err(|source| DbError::Connect { database: url.redacted(), source })?;
    let notifications = wake.clone();
    let mut driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            if let AsyncMessage::Notification(_) = message? {
                notifications.notify_one();
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    });
    client.batch_execute(&format!("LISTEN {}", outbox::NOTIFY_CHANNEL)).await?;
    tracing::info!(channel = outbox::NOTIFY_CHANNEL, "listening for outbox notifications");
    backoff.reset();
    wake.notify_one();
    tokio::select! {
        joined = &mut driver => match joined {
            Ok(result) => Ok(result?),
            Err(join_error) => {
                tracing::error!(%join_error, "LISTEN task failed");
                Ok(())
            }
        },
        () = shutdown.cancelled() => {
            driver.abort();
            Ok(())
        }
    }
}
