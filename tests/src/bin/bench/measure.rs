//! Measuring helpers shared by the phases: a drain rate, a process's peak memory.

use std::time::{Duration, Instant};

use anyhow::bail;

/// Waits until `count()` reaches `target`; returns events/s measured from the first change.
pub(crate) async fn drain_rate<F, Fut>(target: i64, count: F) -> anyhow::Result<(f64, Duration)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<i64>>,
{
    let drain = drain_curve(target, count).await?;
    Ok((drain.rate, drain.elapsed))
}

/// A drain measured by [`drain_curve`].
pub(crate) struct Drain {
    /// Events per second from the first change to the target.
    pub(crate) rate: f64,
    pub(crate) elapsed: Duration,
    /// (seconds since the first change, events moved since), every poll.
    pub(crate) curve: Vec<(f64, f64)>,
}

/// Waits until `count()` reaches `target`, sampling how far it got every 50 ms.
pub(crate) async fn drain_curve<F, Fut>(target: i64, mut count: F) -> anyhow::Result<Drain>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<i64>>,
{
    let initial = count().await?;
    let mut first_change: Option<(Instant, i64)> = None;
    let mut curve = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let now = count().await?;
        if now != initial && first_change.is_none() {
            first_change = Some((Instant::now(), initial));
        }
        if let Some((started, at_start)) = first_change {
            curve.push((started.elapsed().as_secs_f64(), (now - at_start).abs() as f64));
        }
        if now == target {
            let (started, at_start) = first_change.unwrap_or((Instant::now(), initial));
            let elapsed = started.elapsed().max(Duration::from_millis(1));
            let moved = (target - at_start).abs().max(1);
            return Ok(Drain { rate: moved as f64 / elapsed.as_secs_f64(), elapsed, curve });
        }
        if Instant::now() > deadline {
            bail!("gave up waiting: {now} of {target}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Peak resident memory (VmHWM) of a process, in MiB.
pub(crate) fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Per label value of histogram `name`'s `label`, (count, sum) in Prometheus text.
pub(crate) fn histogram_by_label(
    text: &str,
    name: &str,
    label: &str,
) -> std::collections::BTreeMap<String, (f64, f64)> {
    let mut by_value: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    let prefix = format!("{label}=\"");
    for line in text.lines() {
        let (is_count, rest) = if let Some(rest) = line.strip_prefix(&format!("{name}_count{{")) {
            (true, rest)
        } else if let Some(rest) = line.strip_prefix(&format!("{name}_sum{{")) {
            (false, rest)
        } else {
            continue;
        };
        let Some(start) = rest.find(&prefix) else { continue };
        let value_start = &rest[start + prefix.len()..];
        let Some(end) = value_start.find('"') else { continue };
        let Some(number) = line.rsplit(' ').next().and_then(|number| number.parse::<f64>().ok()) else { continue };
        let entry = by_value.entry(value_start[..end].to_owned()).or_default();
        if is_count {
            entry.0 += number;
        } else {
            entry.1 += number;
        }
    }
    by_value
}

/// The relay's round phases between two `/metrics` texts: per phase, mean ms and share of the
/// time, e.g. `fetch 1.2 ms (8%), produce …`.
pub(crate) fn round_phases(before: &str, after: &str) -> (String, serde_json::Value) {
    let (before, after) = (
        histogram_by_label(before, "outbox_round_phase_seconds", "phase"),
        histogram_by_label(after, "outbox_round_phase_seconds", "phase"),
    );
    let deltas: Vec<(String, f64, f64)> = after
        .iter()
        .map(|(phase, (count, sum))| {
            let (count_before, sum_before) = before.get(phase).copied().unwrap_or_default();
            (phase.clone(), count - count_before, sum - sum_before)
        })
        .collect();
    let total: f64 = deltas.iter().map(|(_, _, sum)| sum).sum();
    let mut figures = serde_json::Map::new();
    let text = deltas
        .iter()
        .map(|(phase, count, sum)| {
            let mean_ms = if *count > 0.0 { sum / count * 1000.0 } else { 0.0 };
            let share = if total > 0.0 { sum / total * 100.0 } else { 0.0 };
            figures.insert(phase.clone(), serde_json::json!({"rounds": count, "mean_ms": mean_ms, "share_pct": share}));
            format!("{phase} {mean_ms:.1} ms ({share:.0}%)")
        })
        .collect::<Vec<_>>()
        .join(", ");
    (text, serde_json::Value::Object(figures))
}

/// Hands `message` to `producer`, waiting while its queue is full (back-pressure, as the relay
/// does); returns its delivery.
pub(crate) async fn send_waiting<K, P>(
    producer: &rdkafka::producer::FutureProducer,
    mut message: rdkafka::producer::FutureRecord<'_, K, P>,
) -> rdkafka::producer::DeliveryFuture
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send_result(message) {
            Ok(delivery) => return delivery,
            Err((_, returned)) => {
                message = returned;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Awaits every delivery, in order; the first failure is the error.
pub(crate) async fn acknowledged(deliveries: Vec<rdkafka::producer::DeliveryFuture>) -> anyhow::Result<()> {
    for delivery in deliveries {
        delivery.await.map_err(|_| anyhow::anyhow!("delivery canceled"))?.map_err(|(error, _)| error)?;
    }
    Ok(())
}
