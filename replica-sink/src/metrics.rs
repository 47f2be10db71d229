//! The sink's Prometheus metrics, served at `/metrics`.

use events::EventType;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Registry};
use service_kit::metrics::{counter, counter_vec, histogram, histogram_vec, int_gauge_vec};

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
}

impl SinkMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let applied = counter_vec(
            &registry,
            "sink_events_applied_total",
            "Events applied to DB2, by event type",
            &["event_type"],
        )?;
        for kind in EventType::ALL {
            applied.with_label_values(&[kind.as_str()]);
        }
        Ok(Self {
            applied,
            duplicates: counter(
                &registry,
                "sink_events_duplicate_total",
                "Events skipped because they were already processed",
            )?,
            stale: counter(&registry, "sink_events_stale_total", "Events older than the replica's state (no change)")?,
            poison: counter_vec(
                &registry,
                "sink_events_poison_total",
                "Records that cannot be applied, by reason",
                &["reason"],
            )?,
            apply_duration: histogram_vec(
                &registry,
                "sink_apply_duration_seconds",
                "Time to apply one event to DB2",
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
                &["event_type"],
            )?,
            end_to_end_latency: histogram(
                &registry,
                "sink_end_to_end_latency_seconds",
                "Time from the event timestamp (DB1 commit) to the change applied in DB2",
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            )?,
            lag: int_gauge_vec(
                &registry,
                "sink_consumer_lag",
                "Records not yet consumed, per assigned partition",
                &["partition"],
            )?,
            registry,
        })
    }
}
