//! The consume loop. For each record: decode it; apply it to DB2 (retrying with capped backoff
//! while DB2 is unavailable, without moving on); then store its offset for the next auto-commit.
//! A record that can never be applied (poison) is logged, counted and copied to the dead-letter
//! topic (`articles.dlq`, with headers saying why and where it came from), and the sink moves on:
//! poison never stops the pipeline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use service_kit::backoff::Backoff;
use service_kit::db::{error_chain, is_transient};
use tokio_util::sync::CancellationToken;

use crate::apply::{ApplyOutcome, apply_all};
use crate::decode::{DecodedEvent, Poison, decode};
use crate::metrics::SinkMetrics;

/// Most records applied in one DB2 transaction.
pub const MAX_BATCH: usize = 500;

/// Whether a record is done with (its offset may be stored) or the sink is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    Done,
    Interrupted,
}

pub struct Sink {
    pool: Pool,
    consumer: Arc<StreamConsumer>,
    metrics: SinkMetrics,
    /// Producer and topic for records that can never be applied.
    dlq: FutureProducer,
    dlq_topic: String,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").finish_non_exhaustive()
    }
}

impl Sink {
    pub fn new(
        pool: Pool,
        consumer: Arc<StreamConsumer>,
        metrics: SinkMetrics,
        dlq: FutureProducer,
        dlq_topic: String,
    ) -> Self {
        Self { pool, consumer, metrics, dlq, dlq_topic }
    }

    /// Consumes until `shutdown`, then commits the stored offsets and leaves the group. Records
    /// already waiting (up to [`MAX_BATCH`]) are applied together in one DB2 transaction.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let received = tokio::select! {
                received = self.consumer.recv() => received,
                () = shutdown.cancelled() => break,
            };
            let first = match received {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "consumer error");
                    service_kit::shutdown::sleep_unless_cancelled(&shutdown, Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                    Ok(Ok(message)) => batch.push(message),
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "consumer error");
                        break;
                    }
                    Err(_nothing_waiting) => break,
                }
            }
            if self.handle_batch(&batch, &shutdown).await == Handled::Interrupted {
                break;
            }
            for message in &batch {
                tracing::debug!(partition = message.partition(), offset = message.offset(), "Committing offset...");
                if let Err(error) = self.consumer.store_offset_from_message(message) {
                    // The partition was revoked meanwhile; its new owner skips the event by its id.
                    tracing::warn!(%error, "cannot store the offset");
                }
            }
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("offsets committed"),
            Err(error) => tracing::debug!(%error, "no offsets committed at shutdown"),
        }
        self.consumer.unsubscribe();
        tracing::info!("sink stopped");
    }

    /// Decodes a record and opens its consumer span, continuing the producer's trace; poison is
    /// counted and skipped here.
    fn open(&self, message: &BorrowedMessage<'_>) -> Result<(DecodedEvent, tracing::Span), Poison> {
        let header_event_id = kafka_kit::header_str(message, kafka_kit::EVENT_ID_HEADER);
        let decoded = decode(message.payload(), header_event_id);
        let event_type = decoded.as_ref().map_or("poison", |decoded| decoded.event.event_type.as_str());
        let span = tracing::info_span!(
            "sink.apply",
            otel.name = %format!("sink.apply {event_type}"),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.destination.name = %message.topic(),
            messaging.destination.partition.id = message.partition(),
            messaging.kafka.offset = message.offset(),
            messaging.message.id = tracing::field::Empty,
            article.id = tracing::field::Empty,
            event_type,
            trace_id = tracing::field::Empty,
        );
        service_kit::telemetry::continue_trace(
            &span,
            &service_kit::telemetry::MapCarrier(&kafka_kit::headers_map(message)),
        );
        match decoded {
            Ok(decoded) => {
                span.record("messaging.message.id", decoded.event_id.as_str());
                span.record("article.id", decoded.event.data.id);
                span.in_scope(|| {
                    let (event_type, article_id) = (decoded.event.event_type, decoded.event.data.id);
                    tracing::info!("Received event: {event_type} for article ID: {article_id}");
                    tracing::info!(
                        partition = message.partition(),
                        offset = message.offset(),
                        "Event ID: {}",
                        decoded.event_id
                    );
                    tracing::info!("Checking idempotency for event ID: {}", decoded.event_id);
                });
                Ok((decoded, span))
            }
            Err(poison) => {
                span.record("otel.status_code", "error");
                span.in_scope(|| self.skip_poison(message, &poison));
                Err(poison)
            }
        }
    }

    /// Dead-letters the poison records, then applies the others in one DB2 transaction, retrying
    /// with capped backoff while DB2 is unavailable. If DB2 refuses one event's data, the batch is
    /// applied event by event so that only that event is dead-lettered.
    async fn handle_batch(&self, messages: &[BorrowedMessage<'_>], shutdown: &CancellationToken) -> Handled {
        let mut events: Vec<(DecodedEvent, tracing::Span)> = Vec::with_capacity(messages.len());
        let mut origins = Vec::with_capacity(messages.len());
        for (index, message) in messages.iter().enumerate() {
            match self.open(message) {
                Ok(event) => {
                    events.push(event);
                    origins.push(index);
                }
                Err(poison) => {
                    if self.dead_letter(message, poison.reason(), &poison.to_string(), shutdown).await
                        == Handled::Interrupted
                    {
                        return Handled::Interrupted;
                    }
                }
            }
        }
        if events.is_empty() {
            return Handled::Done;
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut one_by_one = events.len() == 1;
        loop {
            let chunks: Vec<&[(DecodedEvent, tracing::Span)]> =
                if one_by_one { events.chunks(1).collect() } else { vec![events.as_slice()] };
            let mut retry = false;
            for (position, chunk) in chunks.into_iter().enumerate() {
                match self.apply(chunk).await {
                    Ok(outcomes) => {
                        for ((decoded, span), outcome) in chunk.iter().zip(outcomes) {
                            span.in_scope(|| self.report(decoded, outcome));
                        }
                    }
                    Err(ApplyError::Permanent(error)) if !one_by_one => {
                        tracing::warn!(error = %error_chain(&error), "DB2 refused an event of the batch; applying it event by event");
                        one_by_one = true;
                        retry = true;
                        break;
                    }
                    Err(ApplyError::Permanent(error)) => {
                        let (decoded, span) = &chunk[0];
                        span.record("otel.status_code", "error");
                        span.in_scope(|| {
                            tracing::error!(event_id = %decoded.event_id, error = %error_chain(&error), "DB2 refuses this event; skipping it");
                        });
                        self.metrics.poison.with_label_values(&["rejected_by_db"]).inc();
                        // One event per chunk here, so `position` is the event's index.
                        let message = &messages[origins[position]];
                        if self.dead_letter(message, "rejected_by_db", &error_chain(&error), shutdown).await
                            == Handled::Interrupted
                        {
                            return Handled::Interrupted;
                        }
                    }
                    Err(ApplyError::Transient(error)) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %error, ?delay, events = chunk.len(), "DB2 unavailable; retrying");
                        if !service_kit::shutdown::sleep_unless_cancelled(shutdown, delay).await {
                            return Handled::Interrupted;
                        }
                        retry = true;
                        break;
                    }
                }
            }
            if !retry {
                return Handled::Done;
            }
            // Events already applied one by one are found in processed_events on the retry.
        }
    }

    async fn apply(&self, events: &[(DecodedEvent, tracing::Span)]) -> Result<Vec<ApplyOutcome>, ApplyError> {
        let started = Instant::now();
        let mut client = self.pool.get().await.map_err(|error| ApplyError::Transient(error_chain(&error)))?;
        let outcomes = apply_all(&mut client, events).await.map_err(|error| {
            if is_transient(&error) { ApplyError::Transient(error_chain(&error)) } else { ApplyError::Permanent(error) }
        })?;
        let per_event = started.elapsed().as_secs_f64() / events.len() as f64;
        for (decoded, _) in events {
            self.metrics.apply_duration.with_label_values(&[decoded.event.event_type.as_str()]).observe(per_event);
        }
        Ok(outcomes)
    }

    fn report(&self, decoded: &DecodedEvent, outcome: ApplyOutcome) {
        let (event_type, article_id, event_id) = (decoded.event.event_type, decoded.event.data.id, &decoded.event_id);
        match outcome {
            ApplyOutcome::Applied => {
                self.metrics.applied.with_label_values(&[event_type.as_str()]).inc();
                let latency = (chrono::Utc::now() - decoded.event.timestamp).to_std().unwrap_or_default();
                self.metrics.end_to_end_latency.observe(latency.as_secs_f64());
                tracing::info!("Successfully processed event: {event_type} for article {article_id}");
            }
            ApplyOutcome::AlreadyProcessed => {
                self.metrics.duplicates.inc();
                tracing::warn!("Event already processed: {event_id}. Skipping...");
                tracing::info!("Successfully processed event (already done): {event_type} for article {article_id}");
            }
            ApplyOutcome::Stale => {
                self.metrics.stale.inc();
                tracing::info!(
                    version = decoded.event.data.version,
                    "Event {event_id} is older than the replica's state for article {article_id}; recorded, no change"
                );
            }
        }
    }

    /// Copies a record that can never be applied to the dead-letter topic, with its key, value and
    /// headers plus `dlq.reason`, `dlq.error` and its source (`dlq.source.topic`, `.partition`,
    /// `.offset`). Retries until the broker acknowledges it: the offset only moves on after that.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        reason: &str,
        error: &str,
        shutdown: &CancellationToken,
    ) -> Handled {
        let (partition, offset) = (message.partition().to_string(), message.offset().to_string());
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(Header { key: header.key, value: header.value });
            }
        }
        for (key, value) in [
            ("dlq.reason", reason),
            ("dlq.error", error),
            ("dlq.source.topic", message.topic()),
            ("dlq.source.partition", partition.as_str()),
            ("dlq.source.offset", offset.as_str()),
        ] {
            headers = headers.insert(Header { key, value: Some(value) });
        }
        let mut backoff = Backoff::default();
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.dlq_topic).headers(headers.clone());
            if let Some(value) = message.payload() {
                record = record.payload(value);
            }
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            match self.dlq.send(record, Duration::from_secs(10)).await {
                Ok(_) => {
                    tracing::warn!(topic = %self.dlq_topic, reason, "record sent to the dead-letter topic");
                    return Handled::Done;
                }
                Err((error, _)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, ?delay, "cannot write to the dead-letter topic; retrying");
                    if !service_kit::shutdown::sleep_unless_cancelled(shutdown, delay).await {
                        return Handled::Interrupted;
                    }
                }
            }
        }
    }

    fn skip_poison(&self, message: &BorrowedMessage<'_>, poison: &Poison) {
        self.metrics.poison.with_label_values(&[poison.reason()]).inc();
        tracing::error!(
            partition = message.partition(),
            offset = message.offset(),
            reason = poison.reason(),
            error = %poison,
            "poison record skipped"
        );
    }
}

/// Why applying an event failed: retry later, or never.
#[derive(Debug)]
enum ApplyError {
    Transient(String),
    Permanent(tokio_postgres::Error),
}

/// How often the lag gauge is refreshed.
const LAG_REFRESH: Duration = Duration::from_secs(5);

/// Refreshes `sink_consumer_lag` until `shutdown`: per assigned partition, the high watermark
/// minus the consumer's position.
pub async fn report_lag(consumer: Arc<StreamConsumer>, metrics: SinkMetrics, shutdown: CancellationToken) {
    while service_kit::shutdown::sleep_unless_cancelled(&shutdown, LAG_REFRESH).await {
        let (consumer, metrics) = (consumer.clone(), metrics.clone());
        let measured = tokio::task::spawn_blocking(move || -> Result<(), rdkafka::error::KafkaError> {
            let positions = consumer.position()?;
            metrics.lag.reset();
            for element in positions.elements() {
                let (_, high) =
                    consumer.fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(2))?;
                let position = match element.offset() {
                    rdkafka::Offset::Offset(offset) => offset,
                    _ => continue,
                };
                metrics.lag.with_label_values(&[&element.partition().to_string()]).set((high - position).max(0));
            }
            Ok(())
        })
        .await;
        if let Ok(Err(error)) = measured {
            tracing::debug!(%error, "cannot measure the consumer lag");
        }
    }
}
