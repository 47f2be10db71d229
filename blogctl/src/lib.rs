//! Kafka operations the seed guide does with `kafka-console-consumer`, `kafka-console-producer`,
//! `kafka-consumer-groups` and `kafka-topics`, on rdkafka, so that they work on both brokers
//! (Debian's kcat links a librdkafka too old for nisshi), and the operator's view of the whole
//! pipeline (`status`, `snapshot`, the relay's dead letters). The `blogctl` binary wraps them;
//! the end-to-end tests use them to inspect the topic.

pub mod dead_letters;
pub mod snapshot;
pub mod status;
pub mod topics;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use deadpool_postgres::Pool;
use kafka_kit::{METADATA_TIMEOUT, Role, client_config, configured};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use service_kit::config::DatabaseUrl;

/// A one-connection pool on the database `database_url` names (TLS as its `sslmode` and
/// certificate parameters say, see `service_kit::pg_tls`); `setting` (`DATABASE_URL`, …) names it
/// in errors, which never echo a password.
pub fn database(database_url: &str, setting: &str) -> anyhow::Result<Pool> {
    let url: DatabaseUrl = database_url.parse().map_err(|error: String| anyhow::anyhow!("{setting}: {error}"))?;
    service_kit::db::pool(&url, 1).with_context(|| format!("cannot build a pool for {setting}"))
}

/// One record as read from the topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub value: Option<Vec<u8>>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    pub fn value_text(&self) -> String {
        self.value.as_deref().map_or_else(|| "null".to_owned(), |value| String::from_utf8_lossy(value).into_owned())
    }

    /// `CreateTime:… key=… headers=k:v,… value`, tab-separated, like the console consumer.
    pub fn display_line(&self) -> String {
        let headers: Vec<String> = self.headers.iter().map(|(key, value)| format!("{key}:{value}")).collect();
        format!(
            "partition={} offset={}\tCreateTime:{}\tkey={}\theaders={}\t{}",
            self.partition,
            self.offset,
            self.timestamp_ms.map_or_else(|| "-".to_owned(), |ms| ms.to_string()),
            self.key.as_deref().unwrap_or("null"),
            headers.join(","),
            self.value_text()
        )
    }

    fn from_message<M: rdkafka::message::Message>(message: &M) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| {
                        (
                            header.key.to_owned(),
                            header.value.map(String::from_utf8_lossy).unwrap_or_default().into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(|key| String::from_utf8_lossy(key).into_owned()),
            headers,
            value: message.payload().map(<[u8]>::to_vec),
        }
    }
}

fn reader(bootstrap_servers: &str, isolation: kafka_kit::Isolation) -> anyhow::Result<BaseConsumer> {
    let mut config = client_config(bootstrap_servers);
    config
        .set("group.id", "blogctl-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation.as_str());
    configured(&config, Role::Consumer)?.create().context("cannot create a Kafka consumer")
}

/// The partitions of `topic`, in order.
pub fn partitions(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    Ok(kafka_kit::topic_partitions(consumer, topic)?)
}

/// Where `consume` starts in each partition it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Beginning,
    End,
    /// This offset (of the one partition read, [`ConsumeOptions::partition`]).
    Offset(i64),
}

/// How `consume` reads.
#[derive(Debug, Clone, Copy)]
pub struct ConsumeOptions {
    pub start: Start,
    /// Read only this partition (all of them when `None`).
    pub partition: Option<i32>,
    pub isolation: kafka_kit::Isolation,
    /// Stop after this many records.
    pub max_records: Option<usize>,
    /// Stop once every partition is read to the end it had at the call.
    pub until_caught_up: bool,
    pub deadline: Option<Instant>,
}

/// Reads `topic` from `options.start`, calling `on_record` for each record, until `max_records`
/// were read, or (when `until_caught_up`) until every partition reached the end it had at the
/// call — told by the broker's end-of-partition event at a position past that end, so that a
/// transaction marker at the end does not keep it waiting —, or `deadline` passes. Returns how
/// many records were read.
pub fn consume(
    bootstrap_servers: &str,
    topic: &str,
    options: ConsumeOptions,
    mut on_record: impl FnMut(Record),
) -> anyhow::Result<usize> {
    let ConsumeOptions { start, partition: only, isolation, max_records, until_caught_up, deadline } = options;
    let consumer = reader(bootstrap_servers, isolation)?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
    for partition in chosen_partitions(partitions(&consumer, topic)?, topic, only, start)? {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
            .with_context(|| format!("cannot read the offsets of partition {partition}"))?;
        let from = match start {
            Start::Beginning => low,
            Start::End => high,
            Start::Offset(offset) if (low..=high).contains(&offset) => offset,
            Start::Offset(offset) => bail!(
                "offset {offset} is outside partition {partition} of {topic}, which holds offsets {low} to {high} \
                 ({high} is where the next record goes)"
            ),
        };
        assignment.add_partition_offset(topic, partition, Offset::Offset(from)).context("cannot assign partition")?;
        if start != Start::End && high > from {
            remaining.insert(partition, high);
        }
    }
    consumer.assign(&assignment).context("cannot assign partitions")?;
    let mut read = 0;
    loop {
        if until_caught_up && remaining.is_empty() {
            return Ok(read);
        }
        if max_records.is_some_and(|max| read >= max) {
            return Ok(read);
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            if until_caught_up {
                bail!("timed out reading {topic}: partitions not caught up: {remaining:?}");
            }
            return Ok(read);
        }
        let message = match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                if let Some(&end) = remaining.get(&partition)
                    && kafka_kit::position_reached(&consumer, topic, partition, end)
                        .context("cannot read the consumer's position")?
                {
                    remaining.remove(&partition);
                }
                continue;
            }
            Some(result) => result.context("cannot read from the topic")?,
        };
        let record = Record::from_message(&message);
        if remaining.get(&record.partition).is_some_and(|&end| record.offset + 1 >= end) {
            remaining.remove(&record.partition);
        }
        read += 1;
        on_record(record);
    }
}

/// The partitions `consume` reads: all of them, or the one asked for if it exists; an offset
/// names a position in one partition, so it needs one.
fn chosen_partitions(all: Vec<i32>, topic: &str, only: Option<i32>, start: Start) -> anyhow::Result<Vec<i32>> {
    match (only, start) {
        (None, Start::Offset(offset)) => bail!("offset {offset} needs a partition (--partition)"),
        (None, _) => Ok(all),
        (Some(partition), _) if all.contains(&partition) => Ok(vec![partition]),
        (Some(partition), _) => {
            bail!(
                "topic {topic} has no partition {partition} (it has {}: 0 to {})",
                all.len(),
                all.len().saturating_sub(1)
            )
        }
    }
}

/// Every record of `topic` present when called, in partition then offset order.
pub fn read_all(
    bootstrap_servers: &str,
    topic: &str,
    isolation: kafka_kit::Isolation,
    timeout: Duration,
) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    kafka_kit::read_to_end(bootstrap_servers, topic, isolation, Instant::now() + timeout, |message| {
        records.push(Record::from_message(message));
    })?;
    records.sort_by_key(|record| (record.partition, record.offset));
    Ok(records)
}

/// Lag of a consumer group on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    /// The group's committed offset, if it committed one.
    pub current_offset: Option<i64>,
    pub log_end_offset: i64,
    /// Records waiting for the group: those between its committed offset and the log end, counted
    /// (up to [`COUNTED_LAG`] offsets; beyond, the offset distance). Offsets alone would overstate
    /// it: a transactional producer's commit markers (one per relay batch) take offsets but are
    /// no records.
    pub lag: i64,
    /// The same distance in offsets, as `kafka-consumer-groups` shows it.
    pub offset_lag: i64,
}

/// The largest distance in offsets over which `group_lag` counts the records waiting; a larger
/// lag is reported in offsets, so that the command stays quick on a large backlog.
pub const COUNTED_LAG: i64 = 100_000;

/// The lag of `group` on each partition of `topic` (like `kafka-consumer-groups --describe`),
/// read at `isolation`.
pub fn group_lag(
    bootstrap_servers: &str,
    topic: &str,
    group: &str,
    isolation: kafka_kit::Isolation,
) -> anyhow::Result<Vec<PartitionLag>> {
    let mut config = client_config(bootstrap_servers);
    config.set("group.id", group).set("enable.auto.commit", "false").set("isolation.level", isolation.as_str());
    let consumer: BaseConsumer =
        configured(&config, Role::Consumer)?.create().context("cannot create a Kafka consumer")?;
    let partitions = partitions(&consumer, topic)?;
    let mut wanted = TopicPartitionList::new();
    for &partition in &partitions {
        wanted.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(wanted, METADATA_TIMEOUT).context("cannot read committed offsets")?;
    let mut lags = Vec::with_capacity(partitions.len());
    let mut waiting = BTreeMap::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT)?;
        let current_offset = committed.find_partition(topic, partition).and_then(|element| match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        });
        let from = current_offset.unwrap_or(low).max(low);
        let offset_lag = high - from;
        if from < high && offset_lag <= COUNTED_LAG {
            waiting.insert(partition, (from, high));
        }
        let lag = if offset_lag > COUNTED_LAG { offset_lag } else { 0 };
        lags.push(PartitionLag { partition, current_offset, log_end_offset: high, lag, offset_lag });
    }
    let reader = kafka_kit::reader(bootstrap_servers, "blogctl-lag", isolation)?;
    let mut counts: BTreeMap<i32, i64> = BTreeMap::new();
    kafka_kit::read_partitions(&reader, topic, &waiting, Instant::now() + Duration::from_secs(60), |message| {
        if waiting.get(&message.partition()).is_some_and(|&(_, end)| message.offset() < end) {
            *counts.entry(message.partition()).or_default() += 1;
        }
    })?;
    for lag in lags.iter_mut().filter(|lag| waiting.contains_key(&lag.partition)) {
        lag.lag = counts.get(&lag.partition).copied().unwrap_or_default();
    }
    Ok(lags)
}

/// Where a produced record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    pub partition: i32,
    pub offset: i64,
}

/// Produces `value` to `topic` and waits for the broker's acknowledgement.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    value: &str,
) -> anyhow::Result<Produced> {
    let mut record = FutureRecord::<str, str>::to(topic).payload(value);
    if let Some(key) = key {
        record = record.key(key);
    }
    let delivery = producer.send(record, Duration::from_secs(30)).await.map_err(|(error, _)| error)?;
    Ok(Produced { partition: delivery.partition, offset: delivery.offset })
}

/// A producer with acknowledgement from all replicas.
pub fn producer(bootstrap_servers: &str) -> anyhow::Result<FutureProducer> {
    let mut config = client_config(bootstrap_servers);
    config.set("acks", "all").set("message.timeout.ms", "30000");
    configured(&config, Role::Producer)?.create().context("cannot create a Kafka producer")
}

#[cfg(test)]
mod tests {
    use super::{Record, Start, chosen_partitions, database};

    #[test]
    fn an_invalid_url_is_refused_by_its_setting_without_echoing_it() {
        let error = database("postgres://u:s3cret@host:notaport/db", "REPLICA_DATABASE_URL").err();
        let error = error.map(|error| error.to_string()).unwrap_or_default();
        assert!(error.contains("REPLICA_DATABASE_URL"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn a_partition_is_read_alone_only_if_it_exists_and_an_offset_needs_one() {
        assert_eq!(chosen_partitions(vec![0, 1, 2], "t", None, Start::Beginning).ok(), Some(vec![0, 1, 2]));
        assert_eq!(chosen_partitions(vec![0, 1, 2], "t", Some(1), Start::Offset(4)).ok(), Some(vec![1]));
        let missing = chosen_partitions(vec![0, 1, 2], "t", Some(7), Start::End).err().map(|error| error.to_string());
        assert_eq!(missing.as_deref(), Some("topic t has no partition 7 (it has 3: 0 to 2)"));
        let no_partition = chosen_partitions(vec![0], "t", None, Start::Offset(4)).err().map(|error| error.to_string());
        assert_eq!(no_partition.as_deref(), Some("offset 4 needs a partition (--partition)"));
    }

    fn record(value: Option<&[u8]>) -> Record {
        Record {
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_733_133_600_000),
            key: Some("7".to_owned()),
            headers: vec![
                ("event_id".to_owned(), "e-1".to_owned()),
                ("event_type".to_owned(), "article.created".to_owned()),
            ],
            value: value.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn headers_are_found_by_name() {
        let record = record(None);
        assert_eq!(record.header("event_type"), Some("article.created"));
        assert_eq!(record.header("traceparent"), None);
    }

    #[test]
    fn values_print_as_text_or_null() {
        assert_eq!(record(Some(br#"{"id":7}"#)).value_text(), r#"{"id":7}"#);
        assert_eq!(record(None).value_text(), "null");
        assert_eq!(record(Some(b"\xff ok")).value_text(), "\u{fffd} ok", "bytes that are not UTF-8 do not fail");
    }

    #[test]
    fn a_line_shows_position_time_key_headers_and_value_like_the_console_consumer() {
        assert_eq!(
            record(Some(b"v")).display_line(),
            "partition=2 offset=41\tCreateTime:1733133600000\tkey=7\theaders=event_id:e-1,event_type:article.created\tv"
        );
        let bare = Record { timestamp_ms: None, key: None, headers: Vec::new(), ..record(None) };
        assert_eq!(bare.display_line(), "partition=2 offset=41\tCreateTime:-\tkey=null\theaders=\tnull");
    }
}
