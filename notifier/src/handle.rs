//! The consume loop, one record at a time, in partition order. For an `article.published` the
//! notifier writes, in one transaction of its own database, the event id in `processed_events`,
//! the notification, and the `notification.requested` outbox row; the record's offset is stored
//! only after that commit. So:
//!
//! - killed before the commit: nothing was written, the record is delivered again;
//! - killed after it, before the offset was committed: the record is delivered again, its id is
//!   found in `processed_events`, and nothing is written twice;
//! - the outbox row is published by the relay beside the notifier, exactly once in the log.
//!
//! Every other record is consumed and left alone; one that is not an article event (poison) is
//! logged and counted, never retried, so it cannot stop the chain. While the database is down
//! the loop retries the same record with capped backoff and does not move on.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::Pool;
use events::decode::{DecodedEvent, decode};
use events::{EventType, NotificationRequested};
use outbox::NewEvent;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message as _};
use service_kit::backoff::Backoff;
use service_kit::db::{error_chain, is_transient};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::NotifierMetrics;

/// The W3C trace context headers a record may carry.
const TRACE_HEADERS: [&str; 3] = ["traceparent", "tracestate", "baggage"];

/// Why writing a notification failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotifyError {
    #[error("the notifier's database is unavailable")]
    Unavailable(#[from] deadpool_postgres::PoolError),
    #[error("a query of the notifier failed")]
    Query(#[from] tokio_postgres::Error),
    #[error("cannot serialise the notification event")]
    Serialize(#[from] serde_json::Error),
}

impl NotifyError {
    /// Whether trying again later may succeed (the database is away, not refusing the data).
    fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::Query(error) => is_transient(error),
            Self::Serialize(_) => false,
        }
    }
}

/// What handling one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Requested,
    /// Its id was in `processed_events` already.
    Duplicate,
}

pub(crate) struct Notifier {
    pub(crate) pool: Pool,
    pub(crate) consumer: Arc<StreamConsumer>,
    pub(crate) metrics: NotifierMetrics,
    /// The topic of the `notification.requested` outbox rows.
    pub(crate) notifications_topic: String,
}

impl Notifier {
    /// Consumes until `shutdown`, then commits the stored offsets and leaves the group.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        loop {
            let received = tokio::select! {
                received = self.consumer.recv() => received,
                () = shutdown.cancelled() => break,
            };
            let message = match received {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "consumer error");
                    service_kit::shutdown::sleep_unless_cancelled(&shutdown, Duration::from_millis(200)).await;
                    continue;
                }
            };
            if !self.handle(&message, &shutdown).await {
                break;
            }
            if let Err(error) = self.consumer.store_offset_from_message(&message) {
                // Revoked meanwhile: the next owner finds the event id in processed_events.
                tracing::warn!(%error, "cannot store the offset");
            }
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("offsets committed"),
            Err(error) => tracing::debug!(%error, "no offsets committed at shutdown"),
        }
        self.consumer.unsubscribe();
        tracing::info!("notifier stopped");
    }

    /// Handles one record; false when interrupted by shutdown before its effect was committed.
    async fn handle(&self, message: &BorrowedMessage<'_>, shutdown: &CancellationToken) -> bool {
        let header_event_id = kafka_kit::header_str(message, kafka_kit::EVENT_ID_HEADER);
        let decoded = decode(message.payload(), header_event_id);
        let event_type = decoded.as_ref().map_or("poison", |decoded| decoded.event.event_type.as_str());
        let headers = kafka_kit::headers_map(message);
        let span = service_kit::consumer_span!(
            "notifier.handle",
            event_type,
            message.topic(),
            message.partition(),
            message.offset(),
            &headers
        );
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(poison) => {
                self.metrics.poison.with_label_values(&[poison.reason()]).inc();
                span.in_scope(|| {
                    tracing::warn!(partition = message.partition(), offset = message.offset(), error = %poison, "not an article event; skipped");
                });
                return true;
            }
        };
        span.record("messaging.message.id", decoded.event_id.as_str());
        span.record("article.id", decoded.event.data.id);
        if decoded.event.event_type != EventType::Published {
            self.metrics.ignored.inc();
            return true;
        }
        // The outbox row carries this span's context: the next relay's publish continues the trace.
        // When the notifier does not trace, the record's own context passes through unchanged.
        let mut trace_context = service_kit::telemetry::context_of(&span);
        if trace_context.is_empty() {
            trace_context = headers.into_iter().filter(|(name, _)| TRACE_HEADERS.contains(&name.as_str())).collect();
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let result = request_notification(&self.pool, &self.notifications_topic, &decoded, &trace_context).await;
            let retry = match result {
                Ok(Outcome::Requested) => {
                    self.metrics.requested.inc();
                    span.in_scope(|| tracing::info!(article_id = decoded.event.data.id, event_id = %decoded.event_id, "notification requested"));
                    return true;
                }
                Ok(Outcome::Duplicate) => {
                    self.metrics.duplicates.inc();
                    span.in_scope(|| tracing::info!(event_id = %decoded.event_id, "event already processed; skipped"));
                    return true;
                }
                Err(error) if error.is_transient() => {
                    let delay = backoff.next_delay();
                    span.in_scope(|| tracing::warn!(error = %error_chain(&error), ?delay, "cannot write the notification; retrying"));
                    delay
                }
                Err(error) => {
                    span.record("otel.status_code", "error");
                    span.in_scope(|| tracing::error!(event_id = %decoded.event_id, error = %error_chain(&error), "the database refuses this notification; skipping the event"));
                    return true;
                }
            };
            if !service_kit::shutdown::sleep_unless_cancelled(shutdown, retry).await {
                return false;
            }
        }
    }
}

/// In one transaction: records the event id, writes the notification and its outbox event.
async fn request_notification(
    pool: &Pool,
    topic: &str,
    decoded: &DecodedEvent,
    trace_context: &std::collections::HashMap<String, String>,
) -> Result<Outcome, NotifyError> {
    let article = &decoded.event.data;
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let record = transaction
        .prepare_cached(
            "INSERT INTO processed_events (event_id, event_type, article_id) VALUES ($1, $2, $3) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .await?;
    let event_type = decoded.event.event_type.as_str();
    if transaction.execute(&record, &[&decoded.event_id, &event_type, &article.id]).await? == 0 {
        return Ok(Outcome::Duplicate);
    }
    let insert = transaction
        .prepare_cached(
            "INSERT INTO notifications (article_id, author, title, source_event_id, published_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    transaction
        .execute(&insert, &[&article.id, &article.author, &article.title, &decoded.event_id, &article.published_at])
        .await?;
    let event_id = Uuid::new_v4();
    let event = NotificationRequested {
        event_id: event_id.to_string(),
        event_type: NotificationRequested::EVENT_TYPE.to_owned(),
        timestamp: Utc::now(),
        article_id: article.id,
        author: article.author.clone(),
        title: article.title.clone(),
        source_event_id: decoded.event_id.clone(),
    };
    let payload = serde_json::to_string(&event)?;
    let article_id = article.id.to_string();
    let new_event = NewEvent {
        event_id,
        aggregate_type: NotificationRequested::AGGREGATE_TYPE,
        aggregate_id: &article_id,
        event_type: NotificationRequested::EVENT_TYPE,
        topic: Some(topic),
        headers: &[("source_event_id", &decoded.event_id)],
        payload: &payload,
        trace_context,
    };
    outbox::enqueue(&transaction, &new_event).await?;
    transaction.commit().await?;
    Ok(Outcome::Requested)
}
