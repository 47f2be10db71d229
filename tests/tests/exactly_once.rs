//! Exactly once in the log, under crashes (docs/guarantees.md): the relay, the broker and the sink
//! are killed with SIGKILL at random points while a workload writes through the API; afterwards
//! the topic must hold every acknowledged change exactly once, in per-article version order, and
//! DB2 must equal DB1.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use e2e::Stack;
use e2e::process::Server as _;
use e2e::stack::{FAST_TAKEOVER, Service};
use e2e::verify::TopicReport;
use e2e::workload::{self, WorkloadReport};

const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// A stack whose relays take over quickly ([`FAST_TAKEOVER`]).
async fn fast_takeover_stack() -> anyhow::Result<Stack> {
    Stack::start_for_test_configured(|options| options.relay_delivery_timeout = Some(FAST_TAKEOVER)).await
}

/// Waits for the pipeline to drain, then checks the topic against what the API acknowledged.
async fn assert_exactly_once(stack: &Stack, workload: &WorkloadReport) -> anyhow::Result<TopicReport> {
    stack.assert_exactly_once(workload, SYNC_TIMEOUT).await
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_killed_at_random_points_publishes_each_change_exactly_once() -> anyhow::Result<()> {
    let mut stack = fast_takeover_stack().await?;
    let api = stack.api();
    let writes = tokio::spawn(async move { workload::run(&api, 4, 300, Duration::from_millis(15)).await });
    let mut rng = fastrand::Rng::new();
    let mut kills = 0;
    let relay_port = stack.port(Service::Relay);
    while kills < 3 || !writes.is_finished() {
        // Kill only a relay that is publishing (past its takeover wait), at a random moment.
        e2e::wait::until("the relay to publish", Duration::from_secs(60), || async {
            Ok(writes.is_finished()
                || e2e::metric(&e2e::metrics_at(relay_port).await?, "kafka_messages_sent_total") > 0.0)
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..800))).await;
        stack.kill(Service::Relay);
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..500))).await;
        stack.restart(Service::Relay).await?;
    }
    let report = writes.await?;
    println!("relay killed {kills} times");
    assert_exactly_once(&stack, &report).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_killed_mid_write_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start_for_test_configured(|options| {
        options.shared_broker = None;
        options.relay_delivery_timeout = Some(FAST_TAKEOVER);
    })
    .await?;
    let api = stack.api();
    let writes = tokio::spawn(async move { workload::run(&api, 4, 150, Duration::from_millis(15)).await });
    let mut rng = fastrand::Rng::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
        stack.broker_mut()?.process_mut().kill();
        tokio::time::sleep(Duration::from_millis(rng.u64(200..1500))).await;
        stack.broker_mut()?.restart().await?;
    }
    let report = writes.await?;
    let relay = e2e::metrics_at(stack.port(Service::Relay)).await?;
    println!("publish errors seen by the relay: {}", e2e::metric(&relay, "outbox_publish_errors_total"));
    assert_exactly_once(&stack, &report).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn standby_relay_takes_over_and_a_relay_without_its_lock_stops_producing() -> anyhow::Result<()> {
    let mut stack = fast_takeover_stack().await?;
    let (first_port, second_port) = (stack.port(Service::Relay), e2e::free_port());
    let mut second = stack.start_extra_relay("outbox-relay-2", second_port).await?;
    assert_eq!(e2e::metric(&e2e::metrics_at(first_port).await?, "outbox_relay_leader"), 1.0, "the first relay leads");
    assert_eq!(e2e::metric(&e2e::metrics_at(second_port).await?, "outbox_relay_leader"), 0.0, "the second stands by");
    // The standby connects its producers ahead; they must fence nobody (they register only when
    // it leads).
    e2e::wait::until("the standby to hold its producers connected", Duration::from_secs(30), || async {
        Ok(e2e::metric(&e2e::metrics_at(second_port).await?, "outbox_relay_standby_ready") == 1.0)
    })
    .await?;
    assert_eq!(
        e2e::metric(&e2e::metrics_at(first_port).await?, "outbox_relay_standby_ready"),
        0.0,
        "the leader's are registered"
    );

    let api = stack.api();
    let writes = tokio::spawn(async move { workload::run(&api, 3, 200, Duration::from_millis(20)).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    e2e::wait::until("the leader to publish beside the standby", Duration::from_secs(30), || async {
        Ok(e2e::metric(&e2e::metrics_at(first_port).await?, "kafka_messages_sent_total") > 0.0)
    })
    .await?;
    let leader = e2e::metrics_at(first_port).await?;
    assert_eq!(e2e::metric(&leader, "outbox_producer_fenced_total"), 0.0, "the standby's producers fenced nobody");
    assert_eq!(e2e::metric(&leader, "outbox_relay_leader"), 1.0, "the first relay still leads");

    // 1. The leader dies: the standby leads within seconds and publishes the backlog.
    stack.kill(Service::Relay);
    let killed_at = Instant::now();
    e2e::wait::until("the standby to take the lock", Duration::from_secs(30), || async {
        Ok(e2e::metric(&e2e::metrics_at(second_port).await?, "outbox_relay_leader") == 1.0)
    })
    .await?;
    let took_lock = killed_at.elapsed();
    let sent_before = e2e::metric(&e2e::metrics_at(second_port).await?, "kafka_messages_sent_total");
    e2e::wait::until("the new leader to publish", Duration::from_secs(60), || async {
        Ok(e2e::metric(&e2e::metrics_at(second_port).await?, "kafka_messages_sent_total") > sent_before)
    })
    .await?;
    println!("standby took the lock {took_lock:?} and published {:?} after the leader was killed", killed_at.elapsed());
    assert_eq!(
        e2e::metric(&e2e::metrics_at(second_port).await?, "outbox_relay_standby_ready"),
        0.0,
        "its producers now publish"
    );

    // 2. The first relay comes back as a standby; then the leader's lock connection is cut.
    stack.restart(Service::Relay).await?;
    let epoch_before = e2e::metric(&e2e::metrics_at(second_port).await?, "outbox_relay_epoch");
    assert_eq!(stack.cut_leader_lock().await?, 1, "exactly one relay holds a lock connection");
    e2e::wait::until("a new epoch with exactly one leader", Duration::from_secs(30), || async {
        let (first, second) = (e2e::metrics_at(first_port).await?, e2e::metrics_at(second_port).await?);
        let leaders = e2e::metric(&first, "outbox_relay_leader") + e2e::metric(&second, "outbox_relay_leader");
        let epoch = e2e::metric(&first, "outbox_relay_epoch").max(e2e::metric(&second, "outbox_relay_epoch"));
        Ok(leaders == 1.0 && epoch > epoch_before)
    })
    .await?;
    let report = writes.await?;
    let topic = assert_exactly_once(&stack, &report).await?;
    let (first, second_text) = (e2e::metrics_at(first_port).await?, e2e::metrics_at(second_port).await?);
    let (first_sent, second_sent) =
        (e2e::metric(&first, "kafka_messages_sent_total"), e2e::metric(&second_text, "kafka_messages_sent_total"));
    println!("events: {}, sent by the first relay: {first_sent}, by the second: {second_sent}", topic.events);

    // The relay that does not lead now publishes nothing while more writes come in.
    let idle_port = if e2e::metric(&first, "outbox_relay_leader") == 1.0 { second_port } else { first_port };
    let idle_sent = e2e::metric(&e2e::metrics_at(idle_port).await?, "kafka_messages_sent_total");
    let more = workload::run(&stack.api(), 1, 20, Duration::ZERO).await;
    assert_eq!(more.errors, 0);
    stack.wait_for_replica(SYNC_TIMEOUT).await?;
    assert_eq!(
        e2e::metric(&e2e::metrics_at(idle_port).await?, "kafka_messages_sent_total"),
        idle_sent,
        "a standby never produces"
    );
    second.kill();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sink_killed_mid_batch_leaves_an_identical_replica() -> anyhow::Result<()> {
    let mut stack = Stack::start_for_test().await?;
    let api = stack.api();
    let writes = tokio::spawn(async move { workload::run(&api, 4, 150, Duration::from_millis(10)).await });
    let mut rng = fastrand::Rng::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1200))).await;
        stack.kill(Service::Sink);
        tokio::time::sleep(Duration::from_millis(rng.u64(0..500))).await;
        stack.restart(Service::Sink).await?;
    }
    let report = writes.await?;
    let topic = assert_exactly_once(&stack, &report).await?;
    let db2 = stack.db2_client().await?;
    let processed: i64 = db2.query_one("SELECT count(*) FROM processed_events", &[]).await?.get(0);
    assert_eq!(processed as usize, topic.events, "each event recorded once in processed_events");
    Ok(())
}

/// The chaos script's short mode (CI's run), with 3 sinks on 6 partitions: kills the broker, the
/// relay and sinks while writing, pauses the relay and the broker, and must end with a PASS verdict.
#[tokio::test(flavor = "multi_thread")]
async fn chaos_script_short_mode_passes() -> anyhow::Result<()> {
    let run = e2e::process::run_tool("chaos", &["--short", "--partitions", "6", "--sinks", "3"]).await?;
    let stdout = &run.stdout;
    assert!(run.success, "chaos failed:\n{stdout}\n{}", run.stderr);
    assert!(stdout.contains("RESULT: PASS"));
    assert!(stdout.contains("duplicates                 0"));
    assert!(stdout.contains("partitions: 6; sinks: 3"), "{stdout}");
    assert!(stdout.contains("(one per event)"), "{stdout}");
    Ok(())
}

/// `replica-sink verify` says IDENTICAL (exit 0) on a synced replica and names the drifting ids
/// (exit 1) once DB2 is tampered with.
#[tokio::test(flavor = "multi_thread")]
async fn replica_verifier_reports_missing_extra_and_differing_articles() -> anyhow::Result<()> {
    let stack = Stack::start_for_test().await?;
    let api = stack.api();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(api.create(&serde_json::json!({"title": format!("v{i}"), "content": "c", "author": "a"})).await?.id);
    }
    stack.wait_for_replica(SYNC_TIMEOUT).await?;
    let (db1, db2) = (stack.db1_url().expose().to_owned(), stack.db2_url().expose().to_owned());
    let verify = || e2e::cli::verify_replica(&db1, &db2);
    let clean = verify().await?;
    let stderr = String::from_utf8_lossy(&clean.stderr);
    assert!(clean.status.success(), "{}\n{stderr}", String::from_utf8_lossy(&clean.stdout));
    assert!(String::from_utf8_lossy(&clean.stdout).contains("verdict: IDENTICAL"));

    tamper(&stack, ids[0], ids[1]).await?;
    let drift = verify().await?;
    let report = String::from_utf8_lossy(&drift.stdout);
    println!("{report}");
    assert_eq!(drift.status.code(), Some(1));
    assert!(report.contains(&format!("missing in the replica: 1 [{}]", ids[0])), "{report}");
    assert!(report.contains(&format!("differing:              1 [{}]", ids[1])), "{report}");
    assert!(report.contains("extra in the replica:   1 [424242]"), "{report}");
    assert!(report.contains("verdict: DRIFT"));
    Ok(())
}

/// Changes DB2 behind the sink's back: one article deleted, one changed, one added.
async fn tamper(stack: &Stack, delete: i64, change: i64) -> anyhow::Result<()> {
    let db2 = stack.db2_client().await?;
    db2.execute("DELETE FROM articles WHERE id = $1", &[&delete]).await?;
    db2.execute("UPDATE articles SET title = 'tampered' WHERE id = $1", &[&change]).await?;
    db2.execute(
            "INSERT INTO articles (id, title, content, author, created_at, updated_at) VALUES (424242, 't', 'c', 'a', now(), now())",
            &[],
        )
        .await?;
    Ok(())
}

/// The benchmark's short mode runs to the end and writes its results (no speed is asserted:
/// figures are for docs/performance.md, measured with `scripts/bench.sh`).
#[tokio::test(flavor = "multi_thread")]
async fn benchmark_short_mode_produces_results() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let out_dir = out.path().to_str().context("a UTF-8 temporary directory")?;
    let run = e2e::process::run_tool("bench", &["--short", "--out", out_dir]).await?;
    assert!(run.success, "bench failed:\n{}\n{}", run.stdout, run.stderr);
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json"))?)?;
    for key in ["api_writes", "relay_drain", "sink_apply", "end_to_end", "handover", "peak_rss_mib"] {
        assert!(!results[key].is_null(), "results.json lacks {key}: {results}");
    }
    let drains = results["sink_apply"]["drains"].as_array().map(Vec::len);
    assert_eq!(drains, Some(3), "drains with 1, 2 and 3 sinks: {results}");
    assert!(!results["relay_drain"]["round_phases"]["commit"].is_null(), "the relay's phases: {results}");
    let plot = std::fs::read_to_string(out.path().join("latency.svg"))?;
    assert!(plot.starts_with("<svg") && plot.contains("Sink drain"), "latency distributions and drain curves: {plot}");
    Ok(())
}

/// SIGTERM under load: the relay and the sink stop cleanly (exit 0) mid-stream and are started
/// again; nothing is lost or duplicated. The API, stopped last, also exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_stops_cleanly_and_loses_nothing() -> anyhow::Result<()> {
    let mut stack = fast_takeover_stack().await?;
    // The writes go on until every service was stopped while working: on a slow machine a fixed
    // number of changes could all be published before the last restart, leaving nothing to do.
    let writes = workload::Unbounded::start(&stack.api(), 4, Duration::from_millis(10));
    let mut rng = fastrand::Rng::new();
    for service in [Service::Relay, Service::Sink, Service::Relay, Service::Sink] {
        // Stop a service that is working (the relay publishing, the sink applying): a sink stopped
        // before its group's first assignment leaves nisshi's group unassignable (docs/guarantees.md).
        let (port, counter) = match service {
            Service::Sink => (stack.port(Service::Sink), "sink_events_applied_total"),
            _ => (stack.port(Service::Relay), "kafka_messages_sent_total"),
        };
        e2e::wait::until("the service to be working", Duration::from_secs(60), || async {
            Ok(e2e::metric(&e2e::metrics_at(port).await?, counter) > 0.0)
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..500))).await;
        assert_eq!(stack.stop(service).await, Some(0), "{} exits 0 on SIGTERM", service.binary_name());
        stack.restart(service).await?;
    }
    let report = writes.finish().await?;
    assert_exactly_once(&stack, &report).await?;
    assert_eq!(stack.stop(Service::Api).await, Some(0), "the API exits 0 on SIGTERM");
    Ok(())
}
