//! The relay's Prometheus metrics, served at `/metrics`.

use prometheus::{Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
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
    /// `outbox_dead_letter_rows`: rows in `outbox_dead_letters` now, each holding back its
    /// article's later rows until an operator requeues or discards it.
    pub dead_letter_rows: IntGauge,
    /// `outbox_topic_partitions`: the partition count of the topic, as last seen.
    pub topic_partitions: IntGauge,
    /// Seconds from the outbox row's commit to the broker's acknowledgement.
    pub commit_to_ack: Histogram,
    /// `outbox_round_phase_seconds{phase}`: how long each phase of a publishing round took —
    /// `fetch` (read the batch from DB1), `produce` (hand it over until every acknowledgement),
    /// `commit` (the Kafka transaction's commit), `settle` (delete the rows, move the checkpoints):
    /// what bounds the relay's rate and latency.
    pub round_phase: HistogramVec,
    /// 1 while this relay is the leader.
    pub leader: IntGauge,
    /// `outbox_relay_standby_ready`: 1 while this relay holds the next session's producers,
    /// connected ahead, so that taking over costs only their registration (a rolling deploy
    /// stops the old leader once its successor shows 1).
    pub standby_ready: IntGauge,
    /// The fencing epoch this relay last led.
    pub epoch: IntGauge,
    /// Outbox rows found on the topic by reconciliation and settled without republishing.
    pub reconciled: IntCounter,
    /// Seconds the last takeover waited for its predecessor's bound (0 after a clean handover).
    pub takeover_wait: Gauge,
    /// Times this relay found itself deposed (DB1's epoch moved on, or the broker fenced it).
    pub fenced: IntCounter,
    /// Times this relay's lease lapsed while it led (it stood down).
    pub lease_lapsed: IntCounter,
    /// Checkpoints found above the log's end: the log was lost.
    pub checkpoint_ahead: IntCounter,
    /// Logs replaced under their checkpoint (the last settled record gone from its offset).
    pub log_replaced: IntCounter,
    /// Partitions whose records were removed by retention before they were settled.
    pub truncated: IntCounter,
    /// Records of a deposed leader found after its successor's records.
    pub stale_leader_records: IntCounter,
    /// Rows moved to `outbox_dead_letters` because the broker refuses them.
    pub dead_letters: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    register(registry, IntCounter::new(name, help))
}

impl RelayMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let sent = Opts::new("kafka_messages_sent_total", "Total Kafka messages sent (acknowledged by the broker)");
        let commit_to_ack = HistogramOpts::new(
            "outbox_commit_to_ack_seconds",
            "Time from outbox row creation to broker acknowledgement",
        );
        let round_phase =
            HistogramOpts::new("outbox_round_phase_seconds", "Duration of each phase of a publishing round")
                .buckets(LATENCY_BUCKETS.to_vec());
        let reconciled_help = "Outbox rows found on the topic by read-back and settled without publishing again";
        Ok(Self {
            leader: register(
                &registry,
                IntGauge::new("outbox_relay_leader", "1 while this relay holds the leader lock"),
            )?,
            standby_ready: register(
                &registry,
                IntGauge::new(
                    "outbox_relay_standby_ready",
                    "1 while this relay holds its next producer session connected, ready to take over",
                ),
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
            topic_partitions: register(
                &registry,
                IntGauge::new(
                    "outbox_topic_partitions",
                    "Partitions of the topic the relay publishes to, as last seen",
                ),
            )?,
            dead_letter_rows: register(
                &registry,
                IntGauge::new("outbox_dead_letter_rows", "Rows in outbox_dead_letters, waiting for an operator"),
            )?,
            commit_to_ack: register(&registry, Histogram::with_opts(commit_to_ack.buckets(LATENCY_BUCKETS.to_vec())))?,
            round_phase: register(&registry, HistogramVec::new(round_phase, &["phase"]))?,
            takeover_wait: register(
                &registry,
                Gauge::new(
                    "outbox_takeover_wait_seconds",
                    "Seconds the last takeover waited out its predecessor's bound",
                ),
            )?,
            fenced: counter(
                &registry,
                "outbox_producer_fenced_total",
                "Times this relay found a newer leader had fenced it",
            )?,
            lease_lapsed: counter(
                &registry,
                "outbox_lease_lapsed_total",
                "Times this relay's leader lease lapsed while it led",
            )?,
            checkpoint_ahead: counter(
                &registry,
                "outbox_checkpoint_ahead_of_log_total",
                "Checkpoints found above the log's end (the log was lost)",
            )?,
            log_replaced: counter(
                &registry,
                "outbox_log_replaced_total",
                "Partitions whose last settled record was gone from its offset (the log was replaced)",
            )?,
            truncated: counter(
                &registry,
                "outbox_readback_truncated_total",
                "Partitions whose unsettled records were removed by retention",
            )?,
            stale_leader_records: counter(
                &registry,
                "outbox_stale_leader_records_total",
                "Records of a deposed leader found after its successor's",
            )?,
            dead_letters: counter(
                &registry,
                "outbox_dead_letters_total",
                "Outbox rows moved to outbox_dead_letters because the broker refuses them",
            )?,
            registry,
        })
    }
}
