//! Registering a service's Prometheus metrics: each one is created and registered in one
//! expression, so a metric can never be defined and forgotten, and a metrics struct reads as the
//! list of what it serves.

use prometheus::Registry;
use prometheus::core::Collector;

/// Registers the `created` metric with `registry` and hands it back.
pub fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    created: Result<M, prometheus::Error>,
) -> Result<M, prometheus::Error> {
    let metric = created?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// Histogram buckets, in seconds, from 1 ms to a minute.
pub const LATENCY_BUCKETS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[cfg(test)]
mod tests {
    use prometheus::{Histogram, HistogramOpts, IntCounter};

    use super::*;

    #[test]
    fn a_metric_is_registered_once_and_served() {
        let registry = Registry::new();
        let things = register(&registry, IntCounter::new("things_total", "Things")).expect("new");
        things.inc();
        let opts = HistogramOpts::new("latency_seconds", "Latency").buckets(LATENCY_BUCKETS.to_vec());
        register(&registry, Histogram::with_opts(opts)).expect("new").observe(0.5);
        let names: Vec<String> = registry.gather().iter().map(|family| family.name().to_owned()).collect();
        assert_eq!(names, ["latency_seconds", "things_total"]);
        let again = register(&registry, IntCounter::new("things_total", "Things"));
        assert!(again.is_err(), "a second metric of the same name is refused");
        assert!(register(&registry, IntCounter::new("", "no name")).is_err(), "an invalid metric is refused");
    }
}
