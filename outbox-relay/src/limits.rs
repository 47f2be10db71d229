//! Limits that agree: every record the relay may send (up to its `message.max.bytes`, uncompressed)
//! should be accepted by the topic (`max.message.bytes`, which the broker applies to the batch as
//! sent, compressed). Checked when a producer session starts, so that a
//! disagreement is said at once rather than discovered as dead letters.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

/// The topic setting that caps one record batch.
const TOPIC_LIMIT: &str = "max.message.bytes";

/// How the topic's limit compares with the relay's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Agreement {
    /// The topic takes every record the relay sends.
    Agrees { topic_limit: usize },
    /// Records between the two limits may be refused by the broker (and dead-lettered): the
    /// topic's limit applies to a compressed batch, the relay's to one uncompressed record.
    TopicBelowRelay { topic_limit: usize },
}

pub(crate) fn compare(topic_limit: usize, relay_limit: usize) -> Agreement {
    if topic_limit >= relay_limit {
        Agreement::Agrees { topic_limit }
    } else {
        Agreement::TopicBelowRelay { topic_limit }
    }
}

/// Says how `topic`'s `max.message.bytes`, as [`topic_limit`] read it, compares with
/// `relay_limit`. Never fails the relay: a broker that cannot describe configurations, or a topic
/// not created yet, is logged.
pub(crate) fn report(topic: &str, read: Result<Option<usize>, rdkafka::error::KafkaError>, relay_limit: usize) {
    match read {
        Ok(Some(topic_limit)) => match compare(topic_limit, relay_limit) {
            Agreement::Agrees { topic_limit } => {
                tracing::info!(topic, topic_limit, relay_limit, "the topic accepts every record the relay may send");
            }
            Agreement::TopicBelowRelay { topic_limit } => tracing::warn!(
                topic,
                topic_limit,
                relay_limit,
                "the topic's max.message.bytes is below the relay's KAFKA_MESSAGE_MAX_BYTES: records between the two that do not compress below the topic's limit will be refused by the broker and moved to outbox_dead_letters; raise the topic's limit or lower the relay's"
            ),
        },
        Ok(None) => {
            tracing::info!(topic, "the topic does not say its max.message.bytes (not created yet?); not checked")
        }
        Err(error) => tracing::info!(topic, %error, "cannot read the topic's max.message.bytes; not checked"),
    }
}

/// Reads `topic`'s `max.message.bytes` (`None` when the broker does not say it).
pub(crate) async fn topic_limit(
    bootstrap_servers: &str,
    topic: &str,
) -> Result<Option<usize>, rdkafka::error::KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        kafka_kit::configured(&kafka_kit::client_config(bootstrap_servers), kafka_kit::Role::Consumer)?.create()?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
    let results = admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &options).await?;
    Ok(results.into_iter().flatten().find_map(|resource| {
        resource.entries.iter().find(|entry| entry.name == TOPIC_LIMIT)?.value.as_deref()?.parse().ok()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_limit_below_the_relays_is_a_disagreement() {
        assert_eq!(compare(1_048_588, 1_048_576), Agreement::Agrees { topic_limit: 1_048_588 });
        assert_eq!(compare(1_048_576, 1_048_576), Agreement::Agrees { topic_limit: 1_048_576 });
        assert_eq!(compare(10_000, 1_048_576), Agreement::TopicBelowRelay { topic_limit: 10_000 });
    }
}
