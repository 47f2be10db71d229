//! The relay's Prometheus metrics, served at `/metrics`.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

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
        let messages_sent = IntCounterVec::new(
            Opts::new("kafka_messages_sent_total", "Total Kafka messages sent (acknowledged by the broker)"),
            &["event_type"],
        )?;
        let publish_errors =
            IntCounter::new("outbox_publish_errors_total", "Records the broker refused or that timed out")?;
        let backlog = IntGauge::new("outbox_backlog_rows", "Outbox rows not yet published")?;
        let oldest_age = Gauge::new("outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row")?;
        let commit_to_ack = Histogram::with_opts(
            HistogramOpts::new(
                "outbox_commit_to_ack_seconds",
                "Time from outbox row creation to broker acknowledgement",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
        )?;
        let leader = IntGauge::new("outbox_relay_leader", "1 while this relay holds the leader lock")?;
        let epoch = IntGauge::new("outbox_relay_epoch", "Fencing epoch this relay last led")?;
        let reconciled = IntCounter::new(
            "outbox_reconciled_total",
            "Outbox rows found on the topic by read-back and settled without publishing again",
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(epoch.clone()))?;
        registry.register(Box::new(reconciled.clone()))?;
        registry.register(Box::new(messages_sent.clone()))?;
        registry.register(Box::new(publish_errors.clone()))?;
        registry.register(Box::new(backlog.clone()))?;
        registry.register(Box::new(oldest_age.clone()))?;
        registry.register(Box::new(commit_to_ack.clone()))?;
        Ok(Self {
            registry,
            messages_sent,
            publish_errors,
            backlog,
            oldest_age,
            commit_to_ack,
            leader,
            epoch,
            reconciled,
        })
    }
}
