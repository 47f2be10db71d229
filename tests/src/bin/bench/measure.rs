//! Measuring helpers shared by the phases: a drain rate, a process's peak memory.

use std::time::{Duration, Instant};

use anyhow::bail;

/// Waits until `count()` reaches `target`; returns events/s measured from the first change.
pub(crate) async fn drain_rate<F, Fut>(target: i64, mut count: F) -> anyhow::Result<(f64, Duration)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<i64>>,
{
    let initial = count().await?;
    let mut first_change = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let now = count().await?;
        if now != initial && first_change.is_none() {
            first_change = Some((Instant::now(), now));
        }
        if now == target {
            let (started, at_start) = first_change.unwrap_or((Instant::now(), initial));
            let elapsed = started.elapsed().max(Duration::from_millis(1));
            let moved = (target - at_start).abs().max(1);
            return Ok((moved as f64 / elapsed.as_secs_f64(), elapsed));
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
