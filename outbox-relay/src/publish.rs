//! Publishing one batch: each outbox row becomes a record on its row's topic (or the default one),
//! keyed by its aggregate id, with the event id, the event type and the leader's epoch in headers,
//! the trace context carried on, the row's extra headers and, when on, CloudEvents attributes. A batch is
//! one Kafka transaction of a transactional producer whose `transactional.id` every relay of this
//! outbox shares: when a new leader's producer registers it, the broker aborts the previous
//! leader's open transaction and refuses every later request of the old producer, even one that
//! was sitting in a socket of a paused process. The producer is idempotent (no duplicates or
//! reordering from its own retries). [`Acknowledgements`] sorts the broker's answers into what
//! may be settled once the transaction is committed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kafka_kit::{EVENT_ID_HEADER, EVENT_TYPE_HEADER, RELAY_EPOCH_HEADER};
use outbox::OutboxRow;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use uuid::Uuid;

use crate::cloudevents::CloudEvents;
use crate::readback::Checkpoint;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

/// What the producer needs to know.
#[derive(Debug, Clone)]
pub(crate) struct ProducerSettings {
    pub(crate) bootstrap_servers: String,
    pub(crate) delivery_timeout: Duration,
    pub(crate) linger: Duration,
    /// The largest record the producer sends (`message.max.bytes`).
    pub(crate) max_record_bytes: usize,
    /// How records' keys map to partitions (the relay places each record itself).
    pub(crate) partitioner: kafka_kit::Partitioner,
}

impl ProducerSettings {
    /// How long one produce request may wait for the broker's answer: well below the delivery
    /// timeout, so a request cannot outlive the bound a leader declares to its successor.
    fn request_timeout(&self) -> Duration {
        (self.delivery_timeout / 2).max(Duration::from_millis(500))
    }
}

/// Creates the transactional producer of `transactional_id` and waits for its first broker
/// connection, without registering the id: librdkafka asks for a producer id only in
/// `init_transactions`, so nothing is fenced yet and a standby may hold such producers while it
/// waits for the lead ([`register`] is what fences). Blocks: call from `spawn_blocking`.
pub(crate) fn connect_producer(
    settings: &ProducerSettings,
    transactional_id: &str,
) -> Result<FutureProducer, KafkaError> {
    let producer: FutureProducer =
        kafka_kit::configured(&producer_config(settings, transactional_id), kafka_kit::Role::Producer)?.create()?;
    // Registration asks a connected broker for the transaction coordinator; called before the
    // first connection is up, librdkafka retries only on a 500 ms timer, which a session of six
    // producers started side by side hit about every other time (docs/performance.md). A metadata
    // request of its own is sent as soon as a broker is up. (Waiting for the cluster id instead
    // waited for librdkafka's own first metadata, which came a second late in one start of four.)
    // All topics, none named: a named one would be auto-created by brokers that do so.
    let _ = producer.client().fetch_metadata(None, settings.delivery_timeout);
    Ok(producer)
}

/// Registers the producer's `transactional_id` with the broker, which fences every earlier
/// producer of that id (aborting its open transaction). Blocks: call from `spawn_blocking`.
pub(crate) fn register(settings: &ProducerSettings, producer: &FutureProducer) -> Result<(), KafkaError> {
    producer.init_transactions(settings.delivery_timeout * 3)
}

fn producer_config(settings: &ProducerSettings, transactional_id: &str) -> rdkafka::ClientConfig {
    let mut config = kafka_kit::client_config(&settings.bootstrap_servers);
    config
        .set("transactional.id", transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", settings.linger.as_millis().to_string())
        .set("message.timeout.ms", settings.delivery_timeout.as_millis().to_string())
        .set("request.timeout.ms", settings.request_timeout().as_millis().to_string())
        .set("transaction.timeout.ms", (settings.delivery_timeout * 6).as_millis().to_string())
        .set("message.max.bytes", settings.max_record_bytes.to_string())
        .set("queue.buffering.max.messages", "200000");
    config
}

/// Whether the broker (or the producer, before sending) refuses this record for what it is —
/// too large, invalid — so that sending it again can never succeed. Timeouts, authorisation and
/// an unreachable broker are not: the row waits for them to pass.
pub(crate) fn refuses_record(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
        )
    )
}

/// Whether `error` says another producer registered our transactional id: this one is fenced.
pub(crate) fn is_producer_fenced(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch | RDKafkaErrorCode::Fenced)
    )
}

/// The headers of `row`'s record: the relay's own, the trace context, the CloudEvents attributes
/// when on, then the row's extra headers — except those whose name one of the former already
/// took (the relay's headers are what exactly once and tracing rest on).
pub(crate) fn record_headers(
    row: &OutboxRow,
    epoch: i64,
    trace_headers: &HashMap<String, String>,
    cloudevents: Option<&CloudEvents>,
) -> Vec<(String, String)> {
    let mut headers = vec![
        (EVENT_ID_HEADER.to_owned(), row.event_id.to_string()),
        (EVENT_TYPE_HEADER.to_owned(), row.event_type.clone()),
        (RELAY_EPOCH_HEADER.to_owned(), epoch.to_string()),
    ];
    headers.extend(trace_headers.iter().map(|(name, value)| (name.clone(), value.clone())));
    if let Some(cloudevents) = cloudevents {
        headers.extend(cloudevents.attributes(row).into_iter().map(|(name, value)| (name.to_owned(), value)));
    }
    for (name, value) in &row.headers {
        if headers.iter().all(|(taken, _)| !taken.eq_ignore_ascii_case(name)) {
            headers.push((name.clone(), value.clone()));
        }
    }
    headers
}

/// Hands one record for `partition` (`None`: the partitioner's choice) to the producer, waiting
/// while its queue is full (back-pressure, not failure).
pub(crate) async fn send(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    row: &OutboxRow,
    headers: &[(String, String)],
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned = owned.insert(Header { key: name, value: Some(value.as_str()) });
        }
        let mut record = FutureRecord::to(topic).key(&row.aggregate_id).payload(&row.payload).headers(owned);
        record.partition = partition;
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
    span.record("messaging.kafka.message.key", row.aggregate_id.as_str());
    span.record("event_type", row.event_type.as_str());
    span.record("aggregate.type", row.aggregate_type.as_str());
    span.record("aggregate.id", row.aggregate_id.as_str());
    service_kit::telemetry::continue_trace(&span, &service_kit::telemetry::MapCarrier(&row.trace_context));
    span
}

/// The broker's answers for one batch, sorted into what may be settled.
#[derive(Debug, Default)]
pub(crate) struct Acknowledgements {
    /// Outbox ids of the rows the broker acknowledged.
    pub(crate) acknowledged: Vec<i64>,
    /// Per topic and partition, the checkpoint after the last acknowledged record: where to move
    /// to. Empty after any failure: a record that timed out may still have been written, so the
    /// checkpoints stay and the next read-back reads the whole batch.
    pub(crate) next: Checkpoints,
    /// How many records failed, and the first error.
    pub(crate) failed: usize,
    pub(crate) first_failure: Option<KafkaError>,
    /// Outbox ids whose records the broker refused for what they are ([`refuses_record`]).
    pub(crate) refused: Vec<i64>,
}

/// Checkpoints by topic, then partition.
pub(crate) type Checkpoints = BTreeMap<String, BTreeMap<i32, Checkpoint>>;

impl Acknowledgements {
    /// Records the answer for outbox row `id` (event `event_id`, sent to `topic`): its partition
    /// and offset, or why it failed.
    pub(crate) fn record(&mut self, id: i64, event_id: Uuid, topic: &str, answer: Result<(i32, i64), KafkaError>) {
        match answer {
            Ok((partition, offset)) => {
                self.acknowledged.push(id);
                let partitions = match self.next.get_mut(topic) {
                    Some(partitions) => partitions,
                    None => self.next.entry(topic.to_owned()).or_default(),
                };
                let next = partitions.entry(partition).or_default();
                if offset + 1 > next.next_offset {
                    *next = Checkpoint { next_offset: offset + 1, last: Some((offset, event_id)) };
                }
            }
            Err(error) => {
                self.failed += 1;
                if refuses_record(&error) {
                    self.refused.push(id);
                }
                self.first_failure.get_or_insert(error);
            }
        }
    }

    /// The checkpoints a settle may move to: none once anything failed.
    pub(crate) fn checkpoints(&self) -> Checkpoints {
        if self.failed > 0 { BTreeMap::new() } else { self.next.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_move_past_the_highest_acknowledged_offset_of_each_partition() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut acks = Acknowledgements::default();
        let d = Uuid::new_v4();
        acks.record(1, a, "articles", Ok((0, 10)));
        acks.record(2, b, "articles", Ok((1, 4)));
        acks.record(3, c, "articles", Ok((0, 11)));
        acks.record(4, d, "orders", Ok((0, 2)));
        assert_eq!(acks.acknowledged, [1, 2, 3, 4]);
        assert_eq!(
            acks.checkpoints(),
            BTreeMap::from([
                (
                    "articles".to_owned(),
                    BTreeMap::from([
                        (0, Checkpoint { next_offset: 12, last: Some((11, c)) }),
                        (1, Checkpoint { next_offset: 5, last: Some((4, b)) })
                    ])
                ),
                ("orders".to_owned(), BTreeMap::from([(0, Checkpoint { next_offset: 3, last: Some((2, d)) })])),
            ]),
            "each topic's partitions have checkpoints of their own"
        );
        assert_eq!(acks.failed, 0);
    }

    #[test]
    fn one_failure_keeps_every_checkpoint_but_settles_the_acknowledged_rows() {
        let mut acks = Acknowledgements::default();
        acks.record(1, Uuid::new_v4(), "t", Ok((0, 10)));
        acks.record(2, Uuid::new_v4(), "t", Err(KafkaError::Canceled));
        acks.record(3, Uuid::new_v4(), "t", Ok((0, 11)));
        acks.record(4, Uuid::new_v4(), "t", Err(KafkaError::NoMessageReceived));
        assert_eq!(acks.acknowledged, [1, 3]);
        assert!(acks.checkpoints().is_empty());
        assert_eq!(acks.failed, 2);
        assert!(matches!(acks.first_failure, Some(KafkaError::Canceled)));
        assert!(acks.refused.is_empty(), "neither failure is about the record itself");
    }

    #[test]
    fn only_errors_about_the_record_itself_mark_it_refused() {
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let unauthorised = KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed);
        let down = KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown);
        assert!(refuses_record(&too_large));
        assert!(refuses_record(&KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRecord)));
        for error in [&timed_out, &unauthorised, &down] {
            assert!(!refuses_record(error), "{error}");
        }
        let mut acks = Acknowledgements::default();
        acks.record(7, Uuid::new_v4(), "t", Err(timed_out));
        acks.record(9, Uuid::new_v4(), "t", Err(too_large.clone()));
        acks.record(8, Uuid::new_v4(), "t", Err(too_large));
        assert_eq!(acks.refused, [9, 8], "only the refused ones are suspects");
    }

    fn row(headers: &[(&str, &str)]) -> OutboxRow {
        OutboxRow {
            id: 1,
            event_id: Uuid::nil(),
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            event_type: "order.placed".into(),
            topic: Some("orders".into()),
            headers: headers.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect(),
            payload: "{}".into(),
            created_at: chrono::Utc::now(),
            trace_context: HashMap::new(),
        }
    }

    #[test]
    fn a_row_adds_its_headers_but_cannot_take_the_relays_own() {
        let trace = HashMap::from([("traceparent".to_owned(), "00-a-b-01".to_owned())]);
        let extra = [("tenant", "t1"), ("EVENT_ID", "forged"), ("traceparent", "forged"), ("ce_id", "mine")];
        let headers = record_headers(&row(&extra), 4, &trace, None);
        let value = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(value("event_id"), Some("00000000-0000-0000-0000-000000000000"));
        assert_eq!(value("event_type"), Some("order.placed"));
        assert_eq!(value("relay_epoch"), Some("4"));
        assert_eq!(value("traceparent"), Some("00-a-b-01"));
        assert_eq!(value("tenant"), Some("t1"));
        assert_eq!(value("ce_id"), Some("mine"), "without CloudEvents, ce_* names are the row's to use");
        assert_eq!(value("EVENT_ID"), None, "header names are compared without case");
        assert_eq!(headers.len(), 6, "{headers:?}");

        let cloudevents = CloudEvents { source: "/outbox/shop".into() };
        let headers = record_headers(&row(&extra), 4, &trace, Some(&cloudevents));
        let value = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(value("ce_id"), Some("00000000-0000-0000-0000-000000000000"), "CloudEvents' own id wins");
        assert_eq!(value("ce_source"), Some("/outbox/shop"));
        assert_eq!(headers.iter().filter(|(name, _)| name == "ce_id").count(), 1);
    }

    #[test]
    fn the_producer_is_transactional_and_its_timeouts_stay_inside_the_delivery_bound() {
        let settings = ProducerSettings {
            bootstrap_servers: "localhost:1".to_owned(),
            delivery_timeout: Duration::from_secs(7),
            linger: Duration::from_millis(3),
            max_record_bytes: 2_000_000,
            partitioner: kafka_kit::Partitioner::Crc32,
        };
        let config = producer_config(&settings, "outbox-relay-x");
        assert_eq!(config.get("transactional.id"), Some("outbox-relay-x"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("message.timeout.ms"), Some("7000"));
        assert_eq!(config.get("request.timeout.ms"), Some("3500"));
        assert_eq!(config.get("linger.ms"), Some("3"));
        assert_eq!(config.get("compression.type"), None, "uncompressed unless the operator says (docs/performance.md)");
        assert_eq!(config.get("message.max.bytes"), Some("2000000"));
        assert!(is_producer_fenced(&KafkaError::MessageProduction(RDKafkaErrorCode::InvalidProducerEpoch)));
        assert!(!is_producer_fenced(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)));
    }
}
