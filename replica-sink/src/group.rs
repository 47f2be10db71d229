//! Membership of the sink group: how partitions move between instances, and what happens to the
//! records in hand when one goes.
//!
//! The sink asks for **cooperative** rebalancing (`cooperative-sticky`): when an instance joins or
//! leaves, only the partitions that change owner are revoked, and the others keep flowing, where
//! the eager protocol would stop every instance of the group for every change. Nothing in the
//! sink relies on the protocol for correctness: `RDKAFKA_CONSUMER_PARTITION_ASSIGNMENT_STRATEGY`
//! may choose another.
//!
//! On revocation librdkafka commits the offsets stored so far (auto-commit is on), i.e. those of
//! every event already applied. A batch still in hand is **not** waited for: its offsets cannot be
//! stored once its partition is gone, so the new owner receives its records again. If the old
//! owner's transaction still commits after that (it lost the partition without knowing), it
//! changes nothing the new owner applied: the event id is in `processed_events` for one of the
//! two transactions only, and the version guard refuses an older article over a newer one.

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};

/// The sink's consumer.
pub(crate) type SinkConsumer = rdkafka::consumer::StreamConsumer<GroupLog>;

/// The partition assignment strategy the sink asks for (see the module documentation).
pub(crate) const ASSIGNMENT_STRATEGY: &str = "cooperative-sticky";

/// Logs each change of the partitions this instance owns.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct GroupLog;

impl ClientContext for GroupLog {}

impl ConsumerContext for GroupLog {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = %describe(partitions), "partitions revoked: their stored offsets are committed; a batch in hand is redelivered to their next owner");
            }
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = %describe(partitions), "partitions assigned");
            }
            Rebalance::Error(error) => tracing::warn!(%error, "group rebalance failed"),
        }
    }
}

/// `topic[0,3,5]`, for the logs.
fn describe(partitions: &rdkafka::TopicPartitionList) -> String {
    let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    for element in partitions.elements() {
        by_topic.entry(element.topic().to_owned()).or_default().push(element.partition());
    }
    by_topic
        .iter()
        .map(|(topic, partitions)| {
            let list: Vec<String> = partitions.iter().map(i32::to_string).collect();
            format!("{topic}[{}]", list.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}
