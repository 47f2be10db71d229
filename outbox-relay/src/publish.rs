//! Publishing one batch: each outbox row becomes a record keyed by article id, with the event id
//! and type in headers and the trace context carried on; the idempotent producer keeps the order
//! per partition and writes no duplicates of its own retries. [`Acknowledgements`] then sorts the
//! broker's answers into what may be settled.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kafka_kit::{EVENT_ID_HEADER, EVENT_TYPE_HEADER};
use outbox::OutboxRow;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

/// What the producer needs to know.
#[derive(Debug, Clone)]
pub(crate) struct ProducerSettings {
    pub(crate) bootstrap_servers: String,
    pub(crate) delivery_timeout: Duration,
    pub(crate) linger: Duration,
}

/// Creates an idempotent producer: a new producer session.
pub(crate) fn create_producer(settings: &ProducerSettings) -> Result<FutureProducer, KafkaError> {
    producer_config(settings).create()
}

fn producer_config(settings: &ProducerSettings) -> rdkafka::ClientConfig {
    let mut config = kafka_kit::client_config(&settings.bootstrap_servers);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", settings.linger.as_millis().to_string())
        .set("message.timeout.ms", settings.delivery_timeout.as_millis().to_string())
        .set("queue.buffering.max.messages", "200000");
    config
}

/// Hands one row to the producer, waiting while its queue is full (back-pressure, not failure).
pub(crate) async fn send(
    producer: &FutureProducer,
    topic: &str,
    row: &OutboxRow,
    trace_headers: &HashMap<String, String>,
) -> Result<DeliveryFuture, KafkaError> {
    let key = row.article_id.to_string();
    let event_id = row.event_id.to_string();
    loop {
        let mut headers = OwnedHeaders::new_with_capacity(2 + trace_headers.len())
            .insert(Header { key: EVENT_ID_HEADER, value: Some(event_id.as_str()) })
            .insert(Header { key: EVENT_TYPE_HEADER, value: Some(row.event_type.as_str()) });
        for (name, value) in trace_headers {
            headers = headers.insert(Header { key: name, value: Some(value.as_str()) });
        }
        let record = FutureRecord::to(topic).key(&key).payload(&row.payload).headers(headers);
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// The producer span of one row: a child of the request that wrote it (`SpanKind::Producer`).
pub(crate) fn publish_span(topic: &str, row: &OutboxRow) -> tracing::Span {
    let otel_name = format!("outbox.publish {topic}");
    let span = service_kit::kafka_span!("outbox.publish", producer = "send", otel_name, topic);
    span.record("messaging.message.id", tracing::field::display(&row.event_id));
    span.record("messaging.kafka.message.key", row.article_id);
    span.record("event_type", row.event_type.as_str());
    span.record("article.id", row.article_id);
    service_kit::telemetry::continue_trace(&span, &service_kit::telemetry::MapCarrier(&row.trace_context));
    span
}

/// The broker's answers for one batch, sorted into what may be settled.
#[derive(Debug, Default)]
pub(crate) struct Acknowledgements {
    /// Outbox ids of the rows the broker acknowledged.
    pub(crate) acknowledged: Vec<i64>,
    /// Per partition, the offset after the last acknowledged record: the checkpoints to move to.
    /// Empty after any failure: a record that timed out may still have been written, so the
    /// checkpoints stay and the next read-back reads the whole batch.
    pub(crate) next_offsets: BTreeMap<i32, i64>,
    /// How many records failed, and the first error.
    pub(crate) failed: usize,
    pub(crate) first_failure: Option<KafkaError>,
}

impl Acknowledgements {
    /// Records the answer for outbox row `id`: its partition and offset, or why it failed.
    pub(crate) fn record(&mut self, id: i64, answer: Result<(i32, i64), KafkaError>) {
        match answer {
            Ok((partition, offset)) => {
                self.acknowledged.push(id);
                let next = self.next_offsets.entry(partition).or_insert(0);
                *next = (*next).max(offset + 1);
            }
            Err(error) => {
                self.failed += 1;
                self.first_failure.get_or_insert(error);
            }
        }
    }

    /// The checkpoints a settle may move to: none once anything failed.
    pub(crate) fn checkpoints(&self) -> BTreeMap<i32, i64> {
        if self.failed > 0 { BTreeMap::new() } else { self.next_offsets.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_move_past_the_highest_acknowledged_offset_of_each_partition() {
        let mut acks = Acknowledgements::default();
        acks.record(1, Ok((0, 10)));
        acks.record(2, Ok((1, 4)));
        acks.record(3, Ok((0, 11)));
        assert_eq!(acks.acknowledged, [1, 2, 3]);
        assert_eq!(acks.checkpoints(), BTreeMap::from([(0, 12), (1, 5)]));
        assert_eq!(acks.failed, 0);
    }

    #[test]
    fn one_failure_keeps_every_checkpoint_but_settles_the_acknowledged_rows() {
        let mut acks = Acknowledgements::default();
        acks.record(1, Ok((0, 10)));
        acks.record(2, Err(KafkaError::Canceled));
        acks.record(3, Ok((0, 11)));
        acks.record(4, Err(KafkaError::NoMessageReceived));
        assert_eq!(acks.acknowledged, [1, 3]);
        assert!(acks.checkpoints().is_empty());
        assert_eq!(acks.failed, 2);
        assert!(matches!(acks.first_failure, Some(KafkaError::Canceled)));
    }

    #[test]
    fn the_producer_is_idempotent_and_waits_for_every_replica() {
        let settings = ProducerSettings {
            bootstrap_servers: "localhost:1".to_owned(),
            delivery_timeout: Duration::from_secs(7),
            linger: Duration::from_millis(3),
        };
        let config = producer_config(&settings);
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("message.timeout.ms"), Some("7000"));
        assert_eq!(config.get("linger.ms"), Some("3"));
        // Creating the producer needs no broker: it connects lazily.
        assert!(create_producer(&settings).is_ok());
    }
}
