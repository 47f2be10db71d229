//! The operator's toolbox on real components, through the `blogctl` binary as an operator runs
//! it: topics and offsets, reading one partition from an offset, the pipeline's status (healthy,
//! stuck, unreachable) and re-seeding a replica with a snapshot after the broker lost its data.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use e2e::cli::{blogctl, verify_replica};
use e2e::component::Fixtures;
use e2e::stack::{FAST_TAKEOVER, Service};
use e2e::{Stack, workload};
use events::ArticleEvent;
use serde_json::{Value, json};

const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts `output` failed, its standard error saying `wanted`.
fn assert_refused(output: &Output, wanted: &str) {
    assert!(!output.status.success(), "should fail: {}", stdout(output));
    assert!(stderr(output).contains(wanted), "error should say {wanted:?}: {}", stderr(output));
}

/// `topics list` and `topics describe` show a topic a producer just wrote to, with the offsets
/// it was told; `consume --partition --offset` reads exactly from there; bad partitions, offsets
/// and topics are refused by name.
#[tokio::test(flavor = "multi_thread")]
async fn topics_show_the_offsets_just_written_and_consume_reads_from_an_offset() -> anyhow::Result<()> {
    let fixtures = Fixtures::start().await?;
    let (bootstrap, topic) = (fixtures.bootstrap_servers().to_owned(), Fixtures::unique("operator"));
    e2e::topics::create(&bootstrap, &topic, 3, &[]).await?;
    let envs = [("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()), ("KAFKA_TOPIC", topic.clone())];

    let lines: Vec<String> = (0..6).map(|i| format!("record {i}")).collect();
    let produced = blogctl(&["produce", "--key", "k1"], &envs, &(lines.join("\n") + "\n")).await?;
    assert!(produced.status.success(), "{}", stderr(&produced));
    // "produced to T partition P offset O", one line per record.
    let positions: Vec<(i32, i64)> = stderr(&produced)
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            (words.first() == Some(&"produced") && words.len() == 7)
                .then(|| (words[4].parse().ok(), words[6].parse().ok()))
        })
        .map(|(partition, offset)| {
            Ok((
                partition.ok_or_else(|| anyhow::anyhow!("no partition"))?,
                offset.ok_or_else(|| anyhow::anyhow!("no offset"))?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(positions.len(), 6, "{}", stderr(&produced));
    let partition = positions[0].0;
    assert!(positions.iter().all(|&(p, _)| p == partition), "one key, one partition: {positions:?}");

    let listed = blogctl(&["topics", "list"], &envs, "").await?;
    assert!(listed.status.success(), "{}", stderr(&listed));
    let row =
        stdout(&listed).lines().find(|line| line.split_whitespace().next() == Some(topic.as_str())).map(str::to_owned);
    assert_eq!(row.as_deref().map(|row| row.split_whitespace().nth(1)), Some(Some("3")), "{}", stdout(&listed));

    let described = blogctl(&["topics", "describe"], &envs, "").await?;
    assert!(described.status.success(), "{}", stderr(&described));
    assert!(stdout(&described).starts_with(&format!("Topic: {topic}\tPartitionCount: 3\t")), "{}", stdout(&described));
    let table: BTreeMap<i32, (i64, i64)> = stdout(&described)
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() != Some(&topic.as_str()) {
                return None;
            }
            Some((words.get(1)?.parse().ok()?, (words.get(3)?.parse().ok()?, words.get(4)?.parse().ok()?)))
        })
        .collect();
    assert_eq!(table.len(), 3, "{}", stdout(&described));
    let last_offset = positions.last().map(|&(_, offset)| offset).unwrap_or_default();
    assert_eq!(table[&partition], (0, last_offset + 1), "HIGH is one past the last offset written");
    assert!(table.iter().filter(|(p, _)| **p != partition).all(|(_, &(low, high))| low == 0 && high == 0));

    // From the third record of the partition, to the end: records 2 to 5 and nothing else.
    let from = positions[2].1;
    let from_text = from.to_string();
    let partition_text = partition.to_string();
    let consumed =
        blogctl(&["consume", "--partition", &partition_text, "--offset", &from_text, "--until-caught-up"], &envs, "")
            .await?;
    assert!(consumed.status.success(), "{}", stderr(&consumed));
    let values: Vec<String> =
        stdout(&consumed).lines().filter_map(|line| line.rsplit('\t').next().map(str::to_owned)).collect();
    assert_eq!(values, lines[2..], "{}", stdout(&consumed));
    assert!(stdout(&consumed).lines().all(|line| line.starts_with(&format!("partition={partition} "))));
    let first =
        blogctl(&["consume", "--partition", &partition_text, "--offset", &from_text, "--max-messages", "1"], &envs, "")
            .await?;
    assert_eq!(stdout(&first).lines().count(), 1, "{}", stdout(&first));
    assert!(stdout(&first).starts_with(&format!("partition={partition} offset={from}\t")), "{}", stdout(&first));

    assert_refused(
        &blogctl(&["consume", "--partition", "7", "--until-caught-up"], &envs, "").await?,
        "has no partition 7",
    );
    let beyond = (last_offset + 5).to_string();
    assert_refused(
        &blogctl(&["consume", "--partition", &partition_text, "--offset", &beyond], &envs, "").await?,
        &format!("offset {beyond} is outside partition {partition}"),
    );
    assert_refused(&blogctl(&["consume", "--offset", "1"], &envs, "").await?, "--partition");
    assert_refused(&blogctl(&["consume", "--partition", "x"], &envs, "").await?, "'x'");
    assert_refused(
        &blogctl(&["topics", "describe", "no-such-topic-here"], &envs, "").await?,
        "topic no-such-topic-here does not exist",
    );
    Ok(())
}

/// What `status` says of `stack` (JSON), with its exit code.
async fn status(
    stack: &Stack,
    extra: &[&str],
    envs: &[(&str, String)],
) -> anyhow::Result<(Option<i32>, Value, Output)> {
    let mut all_envs = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", stack.bootstrap_servers()),
        ("KAFKA_TOPIC", stack.topic().to_owned()),
        ("KAFKA_GROUP_ID", stack.group().to_owned()),
        ("DATABASE_URL", stack.db1_url().expose().to_owned()),
        ("REPLICA_DATABASE_URL", stack.db2_url().expose().to_owned()),
    ];
    for (name, value) in envs {
        all_envs.retain(|(existing, _)| existing != name);
        all_envs.push((name, value.clone()));
    }
    let mut args = vec!["status", "--json"];
    args.extend_from_slice(extra);
    let output = blogctl(&args, &all_envs, "").await?;
    let report: Value = serde_json::from_str(&stdout(&output))
        .map_err(|error| anyhow::anyhow!("status printed no JSON ({error}): {}{}", stdout(&output), stderr(&output)))?;
    Ok((output.status.code(), report, output))
}

fn problems(report: &Value) -> String {
    report["problems"].as_array().map(|problems| format!("{problems:?}")).unwrap_or_default()
}

/// `status` calls a flowing pipeline healthy (exit 0); a stopped relay stuck (exit 1: no leader,
/// an old backlog), a stopped sink stuck once its records wait too long; a database it cannot
/// reach exit 2. The screen version says the same.
#[tokio::test(flavor = "multi_thread")]
async fn status_tells_a_healthy_pipeline_from_a_stuck_relay_a_stuck_sink_and_an_unreachable_database()
-> anyhow::Result<()> {
    let mut stack =
        Stack::start_for_test_configured(|options| options.relay_delivery_timeout = Some(FAST_TAKEOVER)).await?;
    let api = stack.api();
    for i in 0..3 {
        api.create(&json!({"title": format!("status {i}"), "content": "c", "author": "ops"})).await?;
    }
    stack.wait_for_replica(SYNC_TIMEOUT).await?;
    // The sink stores its position within a second of going idle.
    e2e::wait::until("the sink group to catch up", SYNC_TIMEOUT, || async { Ok(stack.consumer_lag().await? == 0) })
        .await?;
    let (code, report, _) = status(&stack, &[], &[]).await?;
    assert_eq!(code, Some(0), "healthy: {report:#}");
    let described = blogctl(
        &["topics", "describe", "--group", stack.group()],
        &[("KAFKA_BOOTSTRAP_SERVERS", stack.bootstrap_servers()), ("KAFKA_TOPIC", stack.topic().to_owned())],
        "",
    )
    .await?;
    assert!(described.status.success(), "{}", stderr(&described));
    // TOPIC PARTITION LEADER LOW HIGH REPLICAS ISR GROUP CURRENT-OFFSET LAG: caught up everywhere.
    for line in stdout(&described).lines().filter(|line| line.starts_with(stack.topic())) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.get(7), Some(&stack.group()), "{line}");
        assert_eq!(words.get(9), Some(&"0"), "no lag: {line}");
    }
    assert_eq!(report["outbox"]["rows"], 0);
    assert_eq!(report["outbox"]["leader"]["lock_held"], true);
    assert_eq!(report["replica"]["articles"], 3);
    assert_eq!(report["replica"]["processed_events"], 3);
    let partitions = report["broker"]["partitions"].as_array().cloned().unwrap_or_default();
    assert!(!partitions.is_empty(), "{report:#}");
    let written: i64 = partitions.iter().map(|partition| partition["high"].as_i64().unwrap_or(0)).sum();
    assert!(written >= 3, "{report:#}");
    let screen = blogctl(
        &["status"],
        &[
            ("KAFKA_BOOTSTRAP_SERVERS", stack.bootstrap_servers()),
            ("KAFKA_TOPIC", stack.topic().to_owned()),
            ("KAFKA_GROUP_ID", stack.group().to_owned()),
            ("DATABASE_URL", stack.db1_url().expose().to_owned()),
        ],
        "",
    )
    .await?;
    assert_eq!(screen.status.code(), Some(0), "{}{}", stdout(&screen), stderr(&screen));
    assert!(stdout(&screen).contains("healthy"), "{}", stdout(&screen));
    assert!(stdout(&screen).contains("DB2 replica     not checked"), "{}", stdout(&screen));

    assert_eq!(stack.stop(Service::Relay).await, Some(0));
    api.create(&json!({"title": "waits", "content": "c", "author": "ops"})).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, report, _) = status(&stack, &["--stuck-after-seconds", "1"], &[]).await?;
    assert_eq!(code, Some(1), "a stopped relay is stuck: {report:#}");
    let said = problems(&report);
    assert!(said.contains("no relay holds the leader lock"), "{said}");
    assert!(said.contains("the oldest of 1 rows has waited"), "{said}");
    let (code, report, _) = status(&stack, &["--stuck-after-seconds", "600"], &[]).await?;
    assert_eq!(code, Some(1), "no leader is stuck whatever the threshold: {report:#}");

    assert_eq!(stack.stop(Service::Sink).await, Some(0));
    stack.restart(Service::Relay).await?;
    e2e::wait::until("the relay to publish the waiting row", SYNC_TIMEOUT, || async {
        let (_, report, _) = status(&stack, &[], &[]).await?;
        Ok(report["outbox"]["rows"] == 0 && report["outbox"]["leader"]["lock_held"] == true)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, report, _) = status(&stack, &["--stuck-after-seconds", "1"], &[]).await?;
    assert_eq!(code, Some(1), "a stopped sink is stuck: {report:#}");
    assert!(problems(&report).contains(&format!("sink group {}: 1 records", stack.group())), "{}", problems(&report));
    let (code, report, _) = status(&stack, &[], &[]).await?;
    assert_eq!(code, Some(0), "under the default threshold the sink is only behind: {report:#}");

    let closed = format!("postgres://bloguser:s3cret@127.0.0.1:{}/blogdb", e2e::free_port());
    let (code, report, output) = status(&stack, &[], &[("REPLICA_DATABASE_URL", closed)]).await?;
    assert_eq!(code, Some(2), "an unreachable DB2: {report:#}");
    assert_eq!(report["replica"]["state"], "unreachable");
    assert!(!stdout(&output).contains("s3cret") && !stderr(&output).contains("s3cret"), "the password never prints");
    stack.restart(Service::Sink).await?;
    Ok(())
}

/// The topic's events, decoded, per article in log order.
async fn events_by_article(stack: &Stack) -> anyhow::Result<BTreeMap<i64, Vec<ArticleEvent>>> {
    let mut by_article: BTreeMap<i64, Vec<ArticleEvent>> = BTreeMap::new();
    for record in stack.topic_records().await? {
        let event: ArticleEvent = serde_json::from_slice(record.value.as_deref().unwrap_or_default())?;
        by_article.entry(event.data.id).or_default().push(event);
    }
    Ok(by_article)
}

/// `blogctl snapshot` re-seeds an empty replica after the broker lost all its data (topics,
/// group offsets), while the API keeps writing: DB2 ends identical to DB1 and `replica-sink
/// verify` finds no drift. Runs on a broker of its own, which it wipes.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_reseeds_an_empty_replica_after_the_broker_lost_its_data_while_writes_go_on() -> anyhow::Result<()> {
    let mut stack = Stack::start_for_test_configured(|options| {
        options.shared_broker = None;
        options.relay_delivery_timeout = Some(FAST_TAKEOVER);
    })
    .await?;
    let before = workload::run(&stack.api(), 3, 40, Duration::ZERO).await;
    assert_eq!(before.errors, 0, "{:?}", before.error_samples);
    stack.wait_for_replica(SYNC_TIMEOUT).await?;

    assert_eq!(stack.stop(Service::Sink).await, Some(0));
    stack.broker_mut()?.wipe_and_restart().await?;
    stack.db2_client().await?.batch_execute("TRUNCATE articles, processed_events, article_tombstones").await?;
    // The workload's writers change articles of their own, created from now on: the articles
    // written before the wipe can reach the empty DB2 only through the snapshot.
    let writes = workload::Unbounded::start(&stack.api(), 2, Duration::from_millis(20));
    stack.restart(Service::Sink).await?;
    let snapshot =
        blogctl(&["snapshot", "--batch-size", "7"], &[("DATABASE_URL", stack.db1_url().expose().to_owned())], "")
            .await?;
    assert!(snapshot.status.success(), "{}{}", stdout(&snapshot), stderr(&snapshot));
    assert!(stdout(&snapshot).contains("articles enqueued as article.snapshot events"), "{}", stdout(&snapshot));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = writes.finish().await?;
    assert_eq!(during.errors, 0, "{:?}", during.error_samples);

    let articles = stack.wait_for_replica(SYNC_TIMEOUT).await?;
    assert!(!articles.is_empty());
    let verify = verify_replica(stack.db1_url().expose(), stack.db2_url().expose()).await?;
    assert!(verify.status.success(), "{}{}", stdout(&verify), stderr(&verify));
    assert!(stdout(&verify).contains("verdict: IDENTICAL"), "{}", stdout(&verify));
    // Every article alive in DB1 reached the new log as a snapshot (or a later change).
    let events = events_by_article(&stack).await?;
    for article in &articles {
        assert!(events.contains_key(&article.id), "article {} is not on the new log", article.id);
    }
    Ok(())
}

/// A snapshot racing updates of the same articles: each article's events reach the log in
/// version order (the snapshot locks what it reads), and the older value never stays in DB2.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_racing_updates_never_leaves_the_older_value_in_the_replica() -> anyhow::Result<()> {
    let stack = Stack::start_for_test().await?;
    let api = stack.api();
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(api.create(&json!({"title": format!("race {i}"), "content": "v1", "author": "ops"})).await?.id);
    }
    stack.wait_for_replica(SYNC_TIMEOUT).await?;
    let updates = {
        let (api, ids) = (api.clone(), ids.clone());
        tokio::spawn(async move {
            for round in 0..15 {
                for &id in &ids {
                    api.patch(id, &json!({"content": format!("round {round}")})).await?;
                }
            }
            anyhow::Ok(())
        })
    };
    for _ in 0..3 {
        let snapshot =
            blogctl(&["snapshot", "--batch-size", "1"], &[("DATABASE_URL", stack.db1_url().expose().to_owned())], "")
                .await?;
        assert!(snapshot.status.success(), "{}", stderr(&snapshot));
    }
    updates.await??;
    let articles = stack.wait_for_replica(SYNC_TIMEOUT).await?;
    assert!(articles.iter().all(|article| article.content == "round 14"), "DB2 holds the last round everywhere");
    let events = events_by_article(&stack).await?;
    let mut snapshots = 0;
    for (id, events) in &events {
        let versions: Vec<i64> = events.iter().map(|event| event.data.version).collect();
        assert!(versions.is_sorted(), "article {id}: versions on the log out of order: {versions:?}");
        snapshots += events.iter().filter(|event| event.event_type == events::EventType::Snapshot).count();
    }
    assert_eq!(snapshots, 3 * ids.len(), "three snapshots of every article");
    Ok(())
}
