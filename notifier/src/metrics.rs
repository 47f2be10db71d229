//! The notifier's Prometheus metrics, served at `/metrics`.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use service_kit::metrics::register;

#[derive(Debug, Clone)]
pub(crate) struct NotifierMetrics {
    pub(crate) registry: Registry,
    /// Notifications written with their outbox event.
    pub(crate) requested: IntCounter,
    /// Events whose id was already in `processed_events` (redeliveries).
    pub(crate) duplicates: IntCounter,
    /// Events of other types, consumed and left alone.
    pub(crate) ignored: IntCounter,
    /// Records that are not article events, by reason.
    pub(crate) poison: IntCounterVec,
}

impl NotifierMetrics {
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let poison = Opts::new("notifier_events_poison_total", "Records that are not article events, by reason");
        Ok(Self {
            requested: register(
                &registry,
                IntCounter::new(
                    "notifier_notifications_requested_total",
                    "Notifications written with their notification.requested outbox event",
                ),
            )?,
            duplicates: register(
                &registry,
                IntCounter::new(
                    "notifier_events_duplicate_total",
                    "Events skipped because they were already processed",
                ),
            )?,
            ignored: register(
                &registry,
                IntCounter::new("notifier_events_ignored_total", "Events of types the notifier does not act on"),
            )?,
            poison: register(&registry, IntCounterVec::new(poison, &["reason"]))?,
            registry,
        })
    }
}
