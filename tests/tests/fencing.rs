//! Exactly once without timing luck (docs/guarantees.md, "Leadership"): a relay leader stopped
//! with SIGSTOP in each window of its work — with records handed to its producer, with records
//! still lingering in its queue, after its transaction committed but before it settled — is
//! replaced by a standby that drains the outbox **while the old leader is still stopped**; then
//! the old leader is resumed, and must be refused or stand down. And a relay crashing in each
//! window, through fail points that prove the window was reached.

use std::time::Duration;

use e2e::Stack;
use e2e::process::ManagedProcess;
use e2e::stack::{FAILPOINT_RELAY, FAST_TAKEOVER, Service};
use e2e::workload::{self, WorkloadReport};

const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// A stack with quick takeovers whose own relay is stopped, and a backlog of `changes` API
/// writes waiting in the outbox.
async fn stack_with_backlog(changes: usize) -> anyhow::Result<(Stack, WorkloadReport)> {
    let mut stack =
        Stack::start_for_test_configured(|options| options.relay_delivery_timeout = Some(FAST_TAKEOVER)).await?;
    assert_eq!(stack.stop(Service::Relay).await, Some(0));
    let report = workload::run(&stack.api(), 4, changes / 4, Duration::ZERO).await;
    assert_eq!(report.errors, 0, "{:?}", report.error_samples);
    Ok((stack, report))
}

/// Waits until `process`'s log says the fail point fired.
async fn wait_fired(process: &ManagedProcess, failpoint: &str) -> anyhow::Result<()> {
    let fired = format!("failpoint {failpoint} fired");
    e2e::wait::until(&fired, Duration::from_secs(60), || async { Ok(process.log_contains(&fired)) }).await
}

/// Leader A stops itself at `failpoint` (SIGSTOP) while publishing a backlog; its lock session is
/// cut; standby B takes over and drains the outbox while A stays stopped; A is resumed and must
/// stand down or be refused. Returns B's metrics.
async fn paused_leader_is_replaced(failpoint: &str, nth: u32, extra_env: &[(&str, &str)]) -> anyhow::Result<String> {
    let (stack, report) = stack_with_backlog(1200).await?;
    let (a_port, b_port) = (e2e::free_port(), e2e::free_port());
    let spec = format!("{failpoint}:stop:{nth}");
    let mut env = vec![("RELAY_FAILPOINT", spec.as_str()), ("RELAY_BATCH_SIZE", "400")];
    env.extend_from_slice(extra_env);
    let a = stack.start_relay_variant("relay-a", a_port, FAILPOINT_RELAY, &env).await?;
    wait_fired(&a, failpoint).await?;
    let b = stack.start_extra_relay("relay-b", b_port).await?;
    assert_eq!(stack.cut_leader_lock().await?, 1, "A held the lock");

    // B drains everything while A is still stopped.
    stack.assert_exactly_once(&report, SYNC_TIMEOUT).await?;
    let b_metrics = e2e::metrics_at(b_port).await?;
    assert_eq!(e2e::metric(&b_metrics, "outbox_relay_leader"), 1.0, "B leads");
    assert!(e2e::metric(&b_metrics, "outbox_takeover_wait_seconds") > 0.0, "A did not stop cleanly: B waited");

    // A wakes up: whatever it still held must not reach the topic, and it must stand down.
    a.signal("CONT").await?;
    e2e::wait::until("A to stand down", Duration::from_secs(60), || async {
        Ok(e2e::metric(&e2e::metrics_at(a_port).await?, "outbox_relay_leader") == 0.0
            && a.log_contains("stepped down as leader"))
    })
    .await
    .map_err(|error| error.context(format!("relay A's log:\n{}", a.log_tail(60))))?;
    println!(
        "A stood down; the broker refused its producer: {}; its lease had lapsed: {}",
        a.log_contains("fenced by newer instance"),
        e2e::metric(&e2e::metrics_at(a_port).await?, "outbox_lease_lapsed_total") > 0.0
    );
    // Give A's producer time to flush anything it held (its requests are the broker's to refuse).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let more = workload::run(&stack.api(), 1, 20, Duration::ZERO).await;
    let mut all = report;
    all.errors += more.errors;
    all.acknowledged += more.acknowledged;
    all.expected.extend(more.expected);
    stack.assert_exactly_once(&all, SYNC_TIMEOUT).await?;
    let b_metrics = e2e::metrics_at(b_port).await?;
    assert_eq!(e2e::metric(&b_metrics, "outbox_stale_leader_records_total"), 0.0, "{b_metrics}");
    let sink = e2e::metrics_at(stack.port(Service::Sink)).await?;
    assert_eq!(e2e::metric(&sink, "sink_stale_leader_records_total"), 0.0, "no record of A after B's");
    drop((a, b));
    Ok(b_metrics)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_stopped_with_records_handed_to_its_producer_is_replaced_and_refused() -> anyhow::Result<()> {
    paused_leader_is_replaced("before-send", 150, &[]).await.map(drop)
}

/// Records still lingering in A's queue when it stops: they go out when it resumes, after B's
/// read-back, under A's fenced producer epoch.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_stopped_with_records_queued_is_replaced_and_its_late_records_refused() -> anyhow::Result<()> {
    paused_leader_is_replaced("after-send", 2, &[("KAFKA_LINGER_MS", "1000")]).await.map(drop)
}

/// A stopped after its transaction committed, before it settled: B's read-back finds the batch
/// on the topic and settles it without publishing it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_stopped_while_it_settles_is_replaced_and_its_batch_settled_once() -> anyhow::Result<()> {
    let b_metrics = paused_leader_is_replaced("after-commit", 2, &[]).await?;
    assert!(e2e::metric(&b_metrics, "outbox_reconciled_total") >= 1.0, "the window was reached: {b_metrics}");
    Ok(())
}

/// A relay that crashes in each window (fail point `crash`, which aborts like SIGKILL) is followed
/// by one that publishes the rest exactly once; the after-commit crash leaves a batch on the topic
/// that the successor finds by reading back.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_crashing_in_each_window_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let (stack, report) = stack_with_backlog(1200).await?;
    let mut reconciled = 0.0;
    // The read-back runs once as a leader starts: it crashes on its first hit, the others on
    // their second batch.
    for (failpoint, nth) in [("after-send", 2), ("after-commit", 2), ("in-read-back", 1)] {
        let port = e2e::free_port();
        let spec = format!("{failpoint}:crash:{nth}");
        let env = [("RELAY_FAILPOINT", spec.as_str()), ("RELAY_BATCH_SIZE", "100")];
        let mut crashing = stack.start_relay_variant(failpoint, port, FAILPOINT_RELAY, &env).await?;
        wait_fired(&crashing, failpoint).await?;
        e2e::wait::until("the relay to die", Duration::from_secs(30), || {
            let running = crashing.is_running();
            async move { Ok(!running) }
        })
        .await?;
        if failpoint == "after-commit" {
            // The successor of this crash finds the committed batch on the topic.
            let successor_port = e2e::free_port();
            let successor = stack.start_extra_relay("after-commit-successor", successor_port).await?;
            e2e::wait::until("the successor to reconcile", Duration::from_secs(60), || async {
                Ok(e2e::metric(&e2e::metrics_at(successor_port).await?, "outbox_reconciled_total") > 0.0)
            })
            .await
            .map_err(|error| {
                error.context(format!(
                    "crashed relay:\n{}\nsuccessor:\n{}",
                    crashing.log_tail(30),
                    std::fs::read_to_string(successor.log_path())
                        .unwrap_or_default()
                        .lines()
                        .filter(|line| !line.contains("Publishing to Kafka"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ))
            })?;
            reconciled = e2e::metric(&e2e::metrics_at(successor_port).await?, "outbox_reconciled_total");
            drop(successor);
        }
    }
    assert!(reconciled >= 1.0, "the after-commit window left rows for the read-back: {reconciled}");
    let last = stack.start_extra_relay("last", e2e::free_port()).await?;
    stack.assert_exactly_once(&report, SYNC_TIMEOUT).await?;
    drop(last);
    Ok(())
}

/// The fail points exist only in the binary the tests run: the relay `scripts/stack.sh`, the
/// bench and a release build run has none.
#[test]
fn only_the_test_binary_has_fail_points() -> anyhow::Result<()> {
    let has = |name: &str| -> anyhow::Result<bool> {
        let bytes = std::fs::read(e2e::process::binary(name)?)?;
        Ok(bytes.windows(b"RELAY_FAILPOINT".len()).any(|window| window == b"RELAY_FAILPOINT"))
    };
    assert!(has(FAILPOINT_RELAY)?, "the test binary is armed");
    assert!(!has(Service::Relay.binary_name())?, "the relay others run is not");
    Ok(())
}
