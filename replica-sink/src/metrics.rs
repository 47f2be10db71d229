//! The sink's Prometheus metrics, served at `/metrics`.

use events::EventType;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use service_kit::metrics::{LATENCY_BUCKETS, register};

#[derive(Debug, Clone)]
pub struct SinkMetrics {
    pub registry: Registry,
    /// Events whose change is now in DB2, by type.
    pub applied: IntCounterVec,
    /// Events skipped because their id was already in `processed_events`.
    pub duplicates: IntCounter,
    /// Events recorded but older than what DB2 holds.
    pub stale: IntCounter,
    /// Records that can never be applied, by reason.
    pub poison: IntCounterVec,
    /// Seconds spent applying one event (DB2 transaction), by type.
    pub apply_duration: HistogramVec,
    /// Seconds from the event's timestamp (its commit in DB1) to its change being applied in DB2.
    pub end_to_end_latency: Histogram,
    /// Records between the consumer's position and the log end, per assigned partition.
    pub lag: IntGaugeVec,
    /// Records of a deposed relay leader read after its successor's.
    pub stale_leader_records: IntCounter,
    /// `processed_events` rows deleted past `SINK_PROCESSED_RETENTION`.
    pub processed_pruned: IntCounter,
    /// DB2 transactions applying events, by statement form (`batch`: one statement for the whole
    /// batch; `per_event`: one per event).
    pub apply_transactions: IntCounterVec,
    /// Estimated bytes held by records received but not yet applied (`SINK_IN_HAND_MIB` bounds it).
    pub in_hand_bytes: IntGauge,
}

impl SinkMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let applied = register(
            &registry,
            IntCounterVec::new(
                Opts::new("sink_events_applied_total", "Events applied to DB2, by event type"),
                &["event_type"],
            ),
        )?;
        for kind in EventType::ALL {
            applied.with_label_values(&[kind.as_str()]);
        }
        let apply = HistogramOpts::new("sink_apply_duration_seconds", "Time to apply one event to DB2")
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]);
        let end_to_end = HistogramOpts::new(
            "sink_end_to_end_latency_seconds",
            "Time from the event timestamp (DB1 commit) to the change applied in DB2",
        );
        let poison = Opts::new("sink_events_poison_total", "Records that cannot be applied, by reason");
        let lag = Opts::new("sink_consumer_lag", "Records not yet consumed, per assigned partition");
        Ok(Self {
            applied,
            duplicates: register(
                &registry,
                IntCounter::new("sink_events_duplicate_total", "Events skipped because they were already processed"),
            )?,
            stale: register(
                &registry,
                IntCounter::new("sink_events_stale_total", "Events older than the replica's state (no change)"),
            )?,
            poison: register(&registry, IntCounterVec::new(poison, &["reason"]))?,
            apply_duration: register(&registry, HistogramVec::new(apply, &["event_type"]))?,
            end_to_end_latency: register(
                &registry,
                Histogram::with_opts(end_to_end.buckets(LATENCY_BUCKETS[2..].to_vec())),
            )?,
            lag: register(&registry, IntGaugeVec::new(lag, &["partition"]))?,
            stale_leader_records: register(
                &registry,
                IntCounter::new(
                    "sink_stale_leader_records_total",
                    "Records of a deposed relay leader read after its successor's",
                ),
            )?,
            processed_pruned: register(
                &registry,
                IntCounter::new(
                    "sink_processed_events_pruned_total",
                    "processed_events rows deleted past SINK_PROCESSED_RETENTION",
                ),
            )?,
            apply_transactions: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("sink_apply_transactions_total", "DB2 transactions applying events, by statement form"),
                    &["statement"],
                ),
            )?,
            in_hand_bytes: register(
                &registry,
                IntGauge::new(
                    "sink_in_hand_bytes",
                    "Estimated bytes held by records received but not yet applied (bounded by SINK_IN_HAND_MIB)",
                ),
            )?,
            registry,
        })
    }
}
