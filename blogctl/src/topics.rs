//! `blogctl topics`: what `kafka-topics --list` and `--describe` show, on rdkafka so that it works
//! on both brokers: every topic with its partition count, and per partition its leader, its low
//! and high offsets and, for a consumer group, where the group stands.

use anyhow::{Context as _, bail};
use kafka_kit::probe::LastError;
use kafka_kit::{METADATA_TIMEOUT, Role, client_config, configured};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use serde::Serialize;

use crate::PartitionLag;

/// One topic as `topics list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicSummary {
    pub name: String,
    pub partitions: usize,
}

/// One partition as `topics describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionOffsets {
    pub partition: i32,
    /// The broker leading the partition (its node id), if it has one.
    pub leader: Option<i32>,
    /// The oldest offset still held (records below it were removed by retention).
    pub low: i64,
    /// The offset the next record will get.
    pub high: i64,
    /// The brokers holding a replica, and those of them in sync (node ids).
    pub replicas: Vec<i32>,
    pub in_sync: Vec<i32>,
}

/// A metadata client that remembers why the broker connection failed (authentication, TLS).
fn admin_reader(bootstrap_servers: &str) -> anyhow::Result<(BaseConsumer<LastError>, LastError)> {
    let mut config = client_config(bootstrap_servers);
    config.set("group.id", "blogctl-topics").set("allow.auto.create.topics", "false");
    let context = LastError::default();
    let consumer = configured(&config, Role::Consumer)?
        .create_with_context(context.clone())
        .context("cannot create a Kafka client")?;
    Ok((consumer, context))
}

/// `what` failed with `error`; with the broker connection's last failure when there was one.
fn broker_error(
    what: String,
    error: rdkafka::error::KafkaError,
    consumer: &BaseConsumer<LastError>,
    context: &LastError,
) -> anyhow::Error {
    kafka_kit::probe::serve_errors(consumer);
    match context.last() {
        Some(last) => anyhow::anyhow!("{what}: {error}; the broker connection failed with: {last}"),
        None => anyhow::anyhow!("{what}: {error}"),
    }
}

/// Every topic of the cluster, by name, with its partition count.
pub fn list(bootstrap_servers: &str) -> anyhow::Result<Vec<TopicSummary>> {
    let (consumer, context) = admin_reader(bootstrap_servers)?;
    let metadata = consumer.fetch_metadata(None, METADATA_TIMEOUT).map_err(|error| {
        broker_error(
            format!("cannot read the topics from the broker at {bootstrap_servers}"),
            error,
            &consumer,
            &context,
        )
    })?;
    let mut topics: Vec<TopicSummary> = metadata
        .topics()
        .iter()
        .filter(|topic| topic.error().is_none())
        .map(|topic| TopicSummary { name: topic.name().to_owned(), partitions: topic.partitions().len() })
        .collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(topics)
}

/// Each partition of `topic` with its leader and offsets; a topic that does not exist is an error
/// naming it.
pub fn describe(bootstrap_servers: &str, topic: &str) -> anyhow::Result<Vec<PartitionOffsets>> {
    describe_if_exists(bootstrap_servers, topic)?
        .with_context(|| format!("topic {topic} does not exist (`blogctl topics list` shows those that do)"))
}

/// [`describe`], with `None` for a topic that does not exist.
pub fn describe_if_exists(bootstrap_servers: &str, topic: &str) -> anyhow::Result<Option<Vec<PartitionOffsets>>> {
    let (consumer, context) = admin_reader(bootstrap_servers)?;
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT).map_err(|error| {
        broker_error(
            format!("cannot read topic {topic} from the broker at {bootstrap_servers}"),
            error,
            &consumer,
            &context,
        )
    })?;
    let Some(found) = metadata.topics().iter().find(|found| found.name() == topic) else {
        bail!("the broker said nothing of topic {topic}");
    };
    if let Some(error) = found.error() {
        if error == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART {
            return Ok(None);
        }
        bail!("the broker reports an error for topic {topic}: {error:?}");
    }
    let mut partitions = Vec::with_capacity(found.partitions().len());
    for partition in found.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), METADATA_TIMEOUT)
            .with_context(|| format!("cannot read the offsets of {topic} partition {}", partition.id()))?;
        let leader = (partition.leader() >= 0).then_some(partition.leader());
        partitions.push(PartitionOffsets {
            partition: partition.id(),
            leader,
            low,
            high,
            replicas: partition.replicas().to_vec(),
            in_sync: partition.isr().to_vec(),
        });
    }
    partitions.sort_by_key(|partition| partition.partition);
    Ok(Some(partitions))
}

/// The table `topics describe` prints: a summary line like `kafka-topics --describe`'s, then one
/// line per partition, with the group's columns when `lags` (one per partition, from
/// [`crate::group_lag`]) is given.
pub fn describe_table(topic: &str, partitions: &[PartitionOffsets], group: Option<(&str, &[PartitionLag])>) -> String {
    let replication = partitions.iter().map(|partition| partition.replicas.len()).max().unwrap_or(0);
    let mut table = format!("Topic: {topic}\tPartitionCount: {}\tReplicationFactor: {replication}\n", partitions.len());
    table.push_str(&format!(
        "{:<24} {:>9} {:>7} {:>12} {:>12} {:>9} {:>9}",
        "TOPIC", "PARTITION", "LEADER", "LOW", "HIGH", "REPLICAS", "ISR"
    ));
    if group.is_some() {
        table.push_str(&format!(" {:<20} {:>15} {:>8}", "GROUP", "CURRENT-OFFSET", "LAG"));
    }
    table.push('\n');
    let ids = |nodes: &[i32]| {
        if nodes.is_empty() {
            "-".to_owned()
        } else {
            nodes.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
        }
    };
    for partition in partitions {
        let leader = partition.leader.map_or_else(|| "none".to_owned(), |leader| leader.to_string());
        table.push_str(&format!(
            "{:<24} {:>9} {:>7} {:>12} {:>12} {:>9} {:>9}",
            topic,
            partition.partition,
            leader,
            partition.low,
            partition.high,
            ids(&partition.replicas),
            ids(&partition.in_sync)
        ));
        if let Some((group, lags)) = group {
            let lag = lags.iter().find(|lag| lag.partition == partition.partition);
            let current =
                lag.and_then(|lag| lag.current_offset).map_or_else(|| "-".to_owned(), |offset| offset.to_string());
            let waiting = lag.map_or_else(|| "-".to_owned(), |lag| lag.lag.to_string());
            table.push_str(&format!(" {group:<20} {current:>15} {waiting:>8}"));
        }
        table.push('\n');
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_offsets_and_the_groups_columns_only_when_asked() {
        let partitions = [
            PartitionOffsets {
                partition: 0,
                leader: Some(1),
                low: 0,
                high: 12,
                replicas: vec![1, 2],
                in_sync: vec![1],
            },
            PartitionOffsets { partition: 1, leader: None, low: 3, high: 3, replicas: vec![], in_sync: vec![] },
        ];
        let plain = describe_table("articles", &partitions, None);
        let lines: Vec<&str> = plain.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "Topic: articles\tPartitionCount: 2\tReplicationFactor: 2");
        assert!(lines[1].starts_with("TOPIC") && !lines[1].contains("GROUP"), "{plain}");
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["articles", "0", "1", "0", "12", "1,2", "1"]);
        assert_eq!(lines[3].split_whitespace().collect::<Vec<_>>(), ["articles", "1", "none", "3", "3", "-", "-"]);

        let lags = [PartitionLag { partition: 0, current_offset: Some(10), log_end_offset: 12, lag: 1, offset_lag: 2 }];
        let with_group = describe_table("articles", &partitions, Some(("g", &lags)));
        let lines: Vec<&str> = with_group.lines().collect();
        assert!(lines[1].contains("CURRENT-OFFSET"), "{with_group}");
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["articles", "0", "1", "0", "12", "1,2", "1", "g", "10", "1"]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["articles", "1", "none", "3", "3", "-", "-", "g", "-", "-"]
        );
    }
}
