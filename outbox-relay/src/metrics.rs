//! The relay's Prometheus metrics, served at `/metrics`.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use service_kit::metrics::{LATENCY_BUCKETS, register};

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
        let sent = Opts::new("kafka_messages_sent_total", "Total Kafka messages sent (acknowledged by the broker)");
        let commit_to_ack = HistogramOpts::new(
            "outbox_commit_to_ack_seconds",
            "Time from outbox row creation to broker acknowledgement",
        );
        let reconciled_help = "Outbox rows found on the topic by read-back and settled without publishing again";
        Ok(Self {
            leader: register(
                &registry,
                IntGauge::new("outbox_relay_leader", "1 while this relay holds the leader lock"),
            )?,
            epoch: register(&registry, IntGauge::new("outbox_relay_epoch", "Fencing epoch this relay last led"))?,
            reconciled: register(&registry, IntCounter::new("outbox_reconciled_total", reconciled_help))?,
            messages_sent: register(&registry, IntCounterVec::new(sent, &["event_type"]))?,
            publish_errors: register(
                &registry,
                IntCounter::new("outbox_publish_errors_total", "Records the broker refused or that timed out"),
            )?,
            backlog: register(&registry, IntGauge::new("outbox_backlog_rows", "Outbox rows not yet published"))?,
            oldest_age: register(
                &registry,
                Gauge::new("outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row"),
            )?,
            commit_to_ack: register(&registry, Histogram::with_opts(commit_to_ack.buckets(LATENCY_BUCKETS.to_vec())))?,
            registry,
        })
    }
}
