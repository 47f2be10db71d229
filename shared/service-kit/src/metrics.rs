//! Creating a service's Prometheus metrics: each one is defined and registered in one call, so a
//! metric can never be defined and forgotten, and a metrics struct reads as the list it serves.

use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Registers `metric` with `registry` and hands it back.
pub fn registered<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> Result<M, prometheus::Error> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

pub fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    registered(registry, IntCounter::new(name, help)?)
}

pub fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

pub fn int_gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    registered(registry, IntGauge::new(name, help)?)
}

pub fn int_gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

pub fn gauge(registry: &Registry, name: &str, help: &str) -> Result<Gauge, prometheus::Error> {
    registered(registry, Gauge::new(name, help)?)
}

/// A histogram with explicit bucket bounds, in seconds for every histogram of ours.
pub fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Result<Histogram, prometheus::Error> {
    registered(registry, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?)
}

pub fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> Result<HistogramVec, prometheus::Error> {
    registered(registry, HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_registered_once_and_served() {
        let registry = Registry::new();
        let things = counter(&registry, "things_total", "Things").expect("new");
        things.inc();
        let latency = histogram(&registry, "latency_seconds", "Latency", &[0.1, 1.0]).expect("new");
        latency.observe(0.5);
        let names: Vec<String> = registry.gather().iter().map(|family| family.name().to_owned()).collect();
        assert_eq!(names, ["latency_seconds", "things_total"]);
        assert!(counter(&registry, "things_total", "Things").is_err(), "a second metric of the same name is refused");
    }
}
