//! Measuring helpers shared by the phases: a drain rate, a process's peak memory.

use std::time::{Duration, Instant};

use anyhow::bail;

/// A drain measured by [`drain_curve`].
pub(crate) struct Drain {
    /// When `count()` reached the target. The drain is timed from when the phase's work began
    /// (the first record on the topic, the moment the sinks could apply), not from the first
    /// change of `count()`, which comes only when the first batch is done.
    pub(crate) finished: Instant,
    /// (seconds since the first change, events moved since), every poll.
    pub(crate) curve: Vec<(f64, f64)>,
}

impl Drain {
    /// `events` per second, and the time taken, from `began` (when the phase's work began) to
    /// the end of the drain.
    pub(crate) fn since(&self, began: Instant, events: i64) -> (f64, Duration) {
        let elapsed = self.finished.saturating_duration_since(began).max(Duration::from_millis(1));
        (events as f64 / elapsed.as_secs_f64(), elapsed)
    }
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
            return Ok(Drain { finished: Instant::now(), curve });
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

/// Clock ticks per second of `/proc`'s CPU times (`getconf CLK_TCK`; 100 on every Linux this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// The fields of `/proc/<pid>/stat` after the command name, which may hold spaces and parentheses.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    // The state (a letter) comes first; every later field is a number.
    Some(after_name.split_whitespace().skip(1).map(|field| field.parse().unwrap_or(0)).collect())
}

/// CPU seconds used by process `pid` and its children: its own, its reaped children's, and its
/// living children's (a PostgreSQL cluster's backends are children of its postmaster). The
/// benchmark's own process counts alone: its children are the stack's parts, each measured as a
/// part of its own.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    // Indices in `stat_fields`: ppid 0, utime 10, stime 11, cutime 12, cstime 13.
    let ticks = |fields: &[u64], with_reaped: bool| {
        fields[10] + fields[11] + if with_reaped { fields[12] + fields[13] } else { 0 }
    };
    let own = stat_fields(pid)?;
    if pid == std::process::id() {
        return Some(ticks(&own, false) as f64 / TICKS_PER_SECOND);
    }
    let mut total = ticks(&own, true);
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        if let Some(fields) = stat_fields(child)
            && fields.first() == Some(&u64::from(pid))
        {
            total += ticks(&fields, false);
        }
    }
    Some(total as f64 / TICKS_PER_SECOND)
}

/// The machine's busy and total CPU ticks so far, over all cores (`/proc/stat`).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let times: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    let total: u64 = times.iter().take(8).sum();
    // idle and iowait are the 4th and 5th.
    let idle = times.get(3)? + times.get(4)?;
    Some((total - idle, total))
}

/// The CPU that named processes (and the machine as a whole) use while something runs: what a
/// drain costs each part, and whether the machine's cores were the bound.
pub(crate) struct CpuUse {
    parts: Vec<(&'static str, u32, f64)>,
    machine: Option<(u64, u64)>,
}

impl CpuUse {
    /// Starts counting for `parts` (name, pid); a part whose pid is unknown is left out.
    pub(crate) fn start(parts: impl IntoIterator<Item = (&'static str, Option<u32>)>) -> Self {
        let parts = parts
            .into_iter()
            .filter_map(|(name, pid)| {
                let pid = pid?;
                Some((name, pid, cpu_seconds(pid)?))
            })
            .collect();
        Self { parts, machine: machine_ticks() }
    }

    /// Stops counting: the line `CPU per 1,000 events: relay 12 ms, … machine busy 97%` and its
    /// figures, for `events` events.
    pub(crate) fn finish(self, events: usize) -> (String, serde_json::Value) {
        let per_thousand = 1000.0 / events.max(1) as f64;
        let mut figures = serde_json::Map::new();
        let mut text: Vec<String> = Vec::new();
        for (name, pid, before) in self.parts {
            let Some(after) = cpu_seconds(pid) else { continue };
            let ms = (after - before) * 1000.0 * per_thousand;
            figures.insert(format!("{name}_cpu_ms_per_1000"), serde_json::json!(ms));
            text.push(format!("{name} {ms:.0} ms"));
        }
        let busy = self.machine.zip(machine_ticks()).map(|((busy_before, total_before), (busy, total))| {
            (busy - busy_before) as f64 / (total - total_before).max(1) as f64 * 100.0
        });
        figures.insert("machine_busy_pct".to_owned(), serde_json::json!(busy));
        let busy = busy.map_or_else(|| "unknown".to_owned(), |busy| format!("{busy:.0}%"));
        let line = format!("CPU per 1,000 events: {}; machine busy {busy} of its cores", text.join(", "));
        (line, serde_json::Value::Object(figures))
    }
}
