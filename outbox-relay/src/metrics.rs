//! The relay's Prometheus metrics, served at `/metrics`.

use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, Registry};
use service_kit::metrics::{counter, counter_vec, gauge, histogram, int_gauge};

#[derive(Debug, Clone)]
pub struct RelayMetrics {
    pub registry: Registry,
    /// `kafka_messages_sent_total{event_type}`: the seed's name; records acknowledged by the broker.
    pub messages_sent: IntCounterVec,
    /// Records the broker refused or that timed out (their rows stay in the outbox).
    pub publish_errors: IntCounter,
    /// Rows waiting in the outbox.
    pub backlog: IntGauge,
    /// Age in seconds of the oldest waiting row.
    pub oldest_age: Gauge,
    /// Seconds from the outbox row's commit to the broker's acknowledgement.
    pub commit_to_ack: Histogram,
    /// 1 while this relay is the leader.
    pub leader: IntGauge,
    /// The fencing epoch this relay last led.
    pub epoch: IntGauge,
    /// Outbox rows found on the topic by reconciliation and settled without republishing.
    pub reconciled: IntCounter,
}

impl RelayMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let sent_help = "Total Kafka messages sent (acknowledged by the broker)";
        Ok(Self {
            leader: int_gauge(&registry, "outbox_relay_leader", "1 while this relay holds the leader lock")?,
            epoch: int_gauge(&registry, "outbox_relay_epoch", "Fencing epoch this relay last led")?,
            reconciled: counter(
                &registry,
                "outbox_reconciled_total",
                "Outbox rows found on the topic by read-back and settled without publishing again",
            )?,
            messages_sent: counter_vec(&registry, "kafka_messages_sent_total", sent_help, &["event_type"])?,
            publish_errors: counter(
                &registry,
                "outbox_publish_errors_total",
                "Records the broker refused or that timed out",
            )?,
            backlog: int_gauge(&registry, "outbox_backlog_rows", "Outbox rows not yet published")?,
            oldest_age: gauge(&registry, "outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row")?,
            commit_to_ack: histogram(
                &registry,
                "outbox_commit_to_ack_seconds",
                "Time from outbox row creation to broker acknowledgement",
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            )?,
            registry,
        })
    }
}
