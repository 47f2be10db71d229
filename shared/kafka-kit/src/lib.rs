//! Kafka client settings shared by the relay, the sink and `blogctl` (with the operator's own on
//! top, [`settings`]), the record headers the pipeline writes, and reading a topic to its end (the
//! relay's read-back, `blogctl consume`). Every client is created from [`configured`].

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Headers, Message};

pub mod partitioner;
pub mod probe;
pub mod settings;
pub mod transaction;

pub use partitioner::Partitioner;
pub use settings::{Role, configured};

/// Header carrying the outbox row's event id.
pub const EVENT_ID_HEADER: &str = "event_id";
/// Header carrying the event type.
pub const EVENT_TYPE_HEADER: &str = "event_type";
/// Header carrying the fencing epoch of the relay leader that published the record.
pub const RELAY_EPOCH_HEADER: &str = "relay_epoch";

/// Which records a reader of the topic sees. The relay's read-back and the sink must read alike:
/// with `read_committed` (the default), records of aborted transactions — a fenced relay's — are
/// skipped by both. `read_uncommitted` is for brokers whose transactions are incomplete (nisshi:
/// it shows aborted records to every reader, and a transaction left open by a crashed producer
/// holds its last stable offset back for good), where every record in the log counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    #[default]
    ReadCommitted,
    ReadUncommitted,
}

impl Isolation {
    /// librdkafka's name for it (`isolation.level`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadCommitted => "read_committed",
            Self::ReadUncommitted => "read_uncommitted",
        }
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "read_committed" => Ok(Self::ReadCommitted),
            "read_uncommitted" => Ok(Self::ReadUncommitted),
            other => Err(format!("unknown isolation level {other:?} (read_committed or read_uncommitted)")),
        }
    }
}

/// How long a metadata request may take before the broker counts as unreachable.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// The settings every client gets: where the brokers are, IPv4 first, quick reconnects.
pub fn client_config(bootstrap_servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("broker.address.family", "v4")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "2000")
        .set("log_level", "4");
    config
}

/// Consumer settings: a group member that stores offsets only when told to (after its effect
/// is committed), and joins its group quickly (see docs/architecture.md on `max.poll.interval.ms`).
pub fn consumer_config(bootstrap_servers: &str, group_id: &str, isolation: Isolation) -> ClientConfig {
    let mut config = client_config(bootstrap_servers);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        // As the relay's read-back reads (see [`Isolation`]).
        .set("isolation.level", isolation.as_str())
        .set("auto.offset.reset", "earliest")
        .set("max.poll.interval.ms", "60000")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("topic.metadata.refresh.interval.ms", "5000")
        // librdkafka's default lets a fetch wait 500 ms at the broker for more data: that was most
        // of the end-to-end latency at low rates (docs/performance.md).
        .set("fetch.wait.max.ms", "10")
        // librdkafka prefetches up to 64 MiB by default; Apache Kafka fills that at once on a
        // backlog (the sink peaked at 140 MiB RSS; at 8 MiB still 72-78 MiB). 2 MiB is ~3,000
        // events of the articles topic ahead, refilled within `fetch.queue.backoff.ms`; the drain
        // rate did not drop (docs/performance.md, 2026-12-07).
        .set("queued.max.messages.kbytes", "2048")
        // When that cap is reached librdkafka postpones the partition's next fetch by this long
        // (1,000 ms by default): on a backlog the sink applied a queue's worth in ~0.3 s, then
        // waited ~0.75 s for the next fetch, every second (docs/performance.md).
        .set("fetch.queue.backoff.ms", "10");
    config
}

/// The value of header `name` as UTF-8, if present.
pub fn header_str<'a, M: Message>(message: &'a M, name: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|header| header.key == name)
        .and_then(|header| header.value)
        .and_then(|value| std::str::from_utf8(value).ok())
}

/// Whether the broker answers a metadata request for `topic` (which also auto-creates it on
/// brokers that do so). Blocking: call from `spawn_blocking`.
pub fn topic_reachable<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<(), rdkafka::error::KafkaError> {
    client.fetch_metadata(Some(topic), METADATA_TIMEOUT).map(|_| ())
}

/// The partition count of `topic` as `client` sees it now (0 when the broker does not know the
/// topic). Blocking.
pub fn partition_count<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<usize, rdkafka::error::KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    Ok(metadata.topics().iter().find(|found| found.name() == topic).map_or(0, |found| found.partitions().len()))
}

/// Why reading a topic back failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadBackError {
    #[error("Kafka error")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("the broker sent no metadata for topic {0}")]
    NoMetadata(String),
    #[error("topic {topic}: the broker answers {error:?}")]
    Topic { topic: String, error: rdkafka::types::RDKafkaRespErr },
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    #[error("timed out before reaching the end of partitions {partitions:?}")]
    Timeout { partitions: Vec<i32> },
}

/// The partitions of `topic`, in order (a metadata request; brokers that auto-create topics
/// create it).
pub fn topic_partitions<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
) -> Result<Vec<i32>, ReadBackError> {
    use rdkafka::consumer::Consumer as _;
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let topic_metadata = metadata.topics().first().ok_or_else(|| ReadBackError::NoMetadata(topic.to_owned()))?;
    if let Some(error) = topic_metadata.error() {
        if error == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART {
            return Err(ReadBackError::UnknownTopic(topic.to_owned()));
        }
        return Err(ReadBackError::Topic { topic: topic.to_owned(), error });
    }
    let mut partitions: Vec<i32> = topic_metadata.partitions().iter().map(|partition| partition.id()).collect();
    partitions.sort_unstable();
    Ok(partitions)
}

/// How long the broker may hold a [`reader`]'s fetch that finds nothing new.
pub const READER_FETCH_WAIT: Duration = Duration::from_millis(10);

/// A consumer that reads partitions it is assigned, outside any group's offsets: its isolation
/// level set explicitly (see [`Isolation`]) and an end-of-partition event, so a read stops where
/// the log ends whatever holes its offsets have (transaction markers, aborted records, compaction).
/// The end of a partition whose last offset is a transaction marker shows only as that event,
/// which comes with a fetch the broker answers empty: the broker holds such a fetch at most
/// [`READER_FETCH_WAIT`], not the default 500 ms, which a read-back (and so a takeover) would
/// otherwise pay.
pub fn reader(
    bootstrap_servers: &str,
    group_id: &str,
    isolation: Isolation,
) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
    configured(&reader_config(bootstrap_servers, group_id, isolation), Role::Consumer)?.create()
}

fn reader_config(bootstrap_servers: &str, group_id: &str, isolation: Isolation) -> ClientConfig {
    let mut config = client_config(bootstrap_servers);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", READER_FETCH_WAIT.as_millis().to_string())
        .set("isolation.level", isolation.as_str())
        .set("allow.auto.create.topics", "false");
    config
}

/// The low watermark and the end of `partition` as `consumer` can read it (for a `read_committed`
/// reader, the last stable offset: the end of the committed records).
pub fn partition_bounds(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), rdkafka::error::KafkaError> {
    use rdkafka::consumer::Consumer as _;
    consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT)
}

/// Reads each partition of `ranges` from its first offset to its end (`(from, end)`, the end as
/// [`partition_bounds`] gave it), calling `on_record` for every record. Holes in offsets are fine:
/// a partition is done when the consumer reports the end of the partition with its position at
/// or past `end`, or when it delivered the record just before `end` — never by waiting for an
/// offset that may be a transaction marker or an aborted record.
pub fn read_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &BTreeMap<i32, (i64, i64)>,
    deadline: std::time::Instant,
    mut on_record: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), ReadBackError> {
    use rdkafka::consumer::Consumer as _;
    use rdkafka::error::KafkaError;
    use rdkafka::{Offset, TopicPartitionList};

    if ranges.is_empty() {
        return Ok(());
    }
    let mut assignment = TopicPartitionList::new();
    for (&partition, &(from, _)) in ranges {
        assignment.add_partition_offset(topic, partition, Offset::Offset(from))?;
    }
    consumer.assign(&assignment)?;
    let mut unfinished: BTreeMap<i32, i64> = ranges.iter().map(|(&partition, &(_, end))| (partition, end)).collect();
    let result = loop {
        if unfinished.is_empty() {
            break Ok(());
        }
        if std::time::Instant::now() >= deadline {
            break Err(ReadBackError::Timeout { partitions: unfinished.keys().copied().collect() });
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                if let Some(&end) = unfinished.get(&partition)
                    && position_reached(consumer, topic, partition, end)?
                {
                    unfinished.remove(&partition);
                }
            }
            Some(Err(error)) => break Err(error.into()),
            Some(Ok(message)) => {
                let partition = message.partition();
                if unfinished.get(&partition).is_some_and(|&end| message.offset() + 1 >= end) {
                    unfinished.remove(&partition);
                }
                on_record(&message);
            }
        }
    };
    consumer.unassign()?;
    result
}

/// Whether `consumer`'s position in `partition` is at or past `end`: what an end-of-partition
/// event means only then, since the broker also reports one at a last stable offset or a hole.
pub fn position_reached(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    end: i64,
) -> Result<bool, rdkafka::error::KafkaError> {
    use rdkafka::consumer::Consumer as _;
    let position = consumer.position()?;
    let at = position.find_partition(topic, partition).map(|element| element.offset());
    Ok(matches!(at, Some(rdkafka::Offset::Offset(offset)) if offset >= end))
}

/// Reads every partition of `topic` from its low watermark to its end, calling `on_record` for
/// each record; returns each partition's end. A topic that does not exist reads as empty.
/// Blocking: call from `spawn_blocking`.
pub fn read_to_end(
    bootstrap_servers: &str,
    topic: &str,
    isolation: Isolation,
    deadline: std::time::Instant,
    on_record: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<BTreeMap<i32, i64>, ReadBackError> {
    let consumer = reader(bootstrap_servers, "blog-read-to-end", isolation)?;
    let partitions = match topic_partitions(&consumer, topic) {
        Err(ReadBackError::UnknownTopic(_)) => return Ok(BTreeMap::new()),
        other => other?,
    };
    let mut ends = BTreeMap::new();
    let mut ranges = BTreeMap::new();
    for partition in partitions {
        let (low, end) = partition_bounds(&consumer, topic, partition)?;
        ends.insert(partition, end);
        if low < end {
            ranges.insert(partition, (low, end));
        }
    }
    read_partitions(&consumer, topic, &ranges, deadline, on_record)?;
    Ok(ends)
}

/// Watches the leader epochs the relay writes in [`RELAY_EPOCH_HEADER`], per partition: a record
/// whose epoch is lower than one already seen in its partition was written by a deposed leader
/// after its successor began, which the relay's fencing is there to prevent. Such a record is a
/// possible duplicate; whoever reads it counts it and says so.
#[derive(Debug, Default, Clone)]
pub struct EpochWatch {
    highest: BTreeMap<i32, i64>,
}

impl EpochWatch {
    /// Sees a record of `partition` written under `epoch`; returns the newer epoch already seen
    /// in that partition when this record is stale.
    pub fn see(&mut self, partition: i32, epoch: i64) -> Option<i64> {
        let highest = self.highest.entry(partition).or_insert(epoch);
        if epoch < *highest {
            return Some(*highest);
        }
        *highest = epoch;
        None
    }
}

/// The relay epoch a record carries, if it has a well-formed [`RELAY_EPOCH_HEADER`].
pub fn relay_epoch<M: Message>(message: &M) -> Option<i64> {
    header_str(message, RELAY_EPOCH_HEADER)?.parse().ok()
}

/// The record's UTF-8 headers as a map (trace context extraction).
pub fn headers_map<M: Message>(message: &M) -> std::collections::HashMap<String, String> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .filter_map(|header| Some((header.key.to_owned(), std::str::from_utf8(header.value?).ok()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    use super::*;

    fn record_with(headers: OwnedHeaders) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"{}".to_vec()),
            None,
            "articles".to_owned(),
            Timestamp::NotAvailable,
            0,
            7,
            Some(headers),
        )
    }

    #[test]
    fn headers_read_as_utf8_and_a_missing_or_binary_one_reads_as_none() {
        let headers = OwnedHeaders::new()
            .insert(Header { key: EVENT_ID_HEADER, value: Some("0b6f") })
            .insert(Header { key: "binary", value: Some(&[0xff_u8, 0xfe][..]) })
            .insert(Header { key: "traceparent", value: Some("00-1-2-01") });
        let record = record_with(headers);
        assert_eq!(header_str(&record, EVENT_ID_HEADER), Some("0b6f"));
        assert_eq!(header_str(&record, "binary"), None);
        assert_eq!(header_str(&record, EVENT_TYPE_HEADER), None);
        let map = headers_map(&record);
        assert_eq!(map.get("traceparent").map(String::as_str), Some("00-1-2-01"));
        assert!(!map.contains_key("binary"));
    }

    #[test]
    fn a_lower_epoch_after_a_higher_one_in_the_same_partition_is_stale() {
        let mut watch = EpochWatch::default();
        assert_eq!(watch.see(0, 3), None);
        assert_eq!(watch.see(0, 3), None);
        assert_eq!(watch.see(1, 2), None, "partitions are watched apart");
        assert_eq!(watch.see(0, 4), None);
        assert_eq!(watch.see(0, 3), Some(4));
        assert_eq!(watch.see(1, 2), None);
    }

    #[test]
    fn readers_skip_aborted_transactions_and_stop_at_the_end_of_a_partition() {
        let config = reader_config("localhost:1", "read-back", Isolation::default());
        assert_eq!(config.get("isolation.level"), Some("read_committed"));
        let config = reader_config("localhost:1", "read-back", "read_uncommitted".parse().expect("a level"));
        assert_eq!(config.get("isolation.level"), Some("read_uncommitted"));
        assert!("committed".parse::<Isolation>().is_err());
        assert_eq!(config.get("enable.partition.eof"), Some("true"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert_eq!(config.get("fetch.wait.max.ms"), Some("10"), "an end shown as an empty fetch costs little");
    }

    #[test]
    fn consumers_store_offsets_only_when_told_and_bound_their_prefetch() {
        let config = consumer_config("localhost:9092", "blog-sync-group", Isolation::ReadCommitted);
        assert_eq!(config.get("group.id"), Some("blog-sync-group"));
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(config.get("isolation.level"), Some("read_committed"));
        assert_eq!(config.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(config.get("queued.max.messages.kbytes"), Some("2048"));
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("10"), "a full prefetch queue must not stall fetching");
        assert_eq!(config.get("bootstrap.servers"), Some("localhost:9092"));
    }
}
