//! The topic the relay publishes to is created by the relay, with the partitions and replication
//! the operator chose (`KAFKA_TOPIC_PARTITIONS`, `KAFKA_TOPIC_REPLICATION_FACTOR`; unset: the
//! broker's defaults), when a producer session starts and before its first record: otherwise the
//! first record would have the broker auto-create it with whatever its `num.partitions` says. An
//! existing topic is left as it is; its partition count is logged, and said clearly when it is
//! not the one asked for.
//!
//! Records are keyed by article id, so a partition count that changes under a running pipeline
//! moves keys to other partitions: an article's later events may then be read before its earlier
//! ones. The relay watches the count and warns when it changes (docs/operations.md says how to
//! add partitions safely: drain first).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

/// What the operator asked for a topic the relay creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct TopicSpec {
    /// `None`: the broker's `num.partitions`.
    pub(crate) partitions: Option<i32>,
    /// `None`: the broker's `default.replication.factor`.
    pub(crate) replication_factor: Option<i32>,
}

/// What [`ensure`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ensured {
    Created,
    Existed { partitions: usize },
}

/// How an existing topic's partitions compare with what was asked.
pub(crate) fn mismatch(spec: TopicSpec, existing: usize) -> Option<i32> {
    spec.partitions.filter(|&asked| usize::try_from(asked).ok() != Some(existing))
}

/// Creates `topic` as `spec` says unless it exists. Never fails the relay: a broker that refuses
/// (no right to create topics, say) is logged, and the topic is then whatever the broker makes.
pub(crate) async fn ensure(bootstrap_servers: &str, topic: &str, spec: TopicSpec) -> Option<Ensured> {
    match create(bootstrap_servers, topic, spec).await {
        Ok(Ensured::Created) => {
            tracing::info!(
                topic,
                partitions = ?spec.partitions,
                replication_factor = ?spec.replication_factor,
                "created the topic (unset: the broker's default)"
            );
            Some(Ensured::Created)
        }
        Ok(Ensured::Existed { partitions }) => {
            match mismatch(spec, partitions) {
                Some(asked) => tracing::warn!(
                    topic,
                    partitions,
                    asked,
                    "the topic exists with another partition count than KAFKA_TOPIC_PARTITIONS asks (auto-created before the relay, or made by hand); it is left as it is: to change it, drain the pipeline first (docs/operations.md)"
                ),
                None => tracing::info!(topic, partitions, "the topic exists; left as it is"),
            }
            Some(Ensured::Existed { partitions })
        }
        Err(error) => {
            tracing::warn!(topic, %error, "cannot create the topic; the broker will create it on first use, if it does");
            None
        }
    }
}

async fn create(bootstrap_servers: &str, topic: &str, spec: TopicSpec) -> Result<Ensured, rdkafka::error::KafkaError> {
    let config = kafka_kit::configured(&kafka_kit::client_config(bootstrap_servers), kafka_kit::Role::Consumer)?;
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    // -1: the broker's default (CreateTopics v4, KIP-464).
    let new = NewTopic::new(
        topic,
        spec.partitions.unwrap_or(-1),
        TopicReplication::Fixed(spec.replication_factor.unwrap_or(-1)),
    );
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    match admin.create_topics([&new], &options).await?.into_iter().next() {
        Some(Ok(_)) => Ok(Ensured::Created),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {
            let partitions = kafka_kit::partition_count(admin.inner(), topic)?;
            Ok(Ensured::Existed { partitions })
        }
        Some(Err((_, code))) => Err(rdkafka::error::KafkaError::AdminOp(code)),
        None => Err(rdkafka::error::KafkaError::AdminOpCreation("no answer".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_asked_count_that_differs_is_a_mismatch() {
        let asked = |partitions| TopicSpec { partitions, replication_factor: None };
        assert_eq!(mismatch(asked(Some(6)), 4), Some(6));
        assert_eq!(mismatch(asked(Some(6)), 6), None);
        assert_eq!(mismatch(asked(None), 4), None, "unset: whatever the broker made is fine");
    }
}
