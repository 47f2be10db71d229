//! `blogctl status`: the whole pipeline on one screen, in the order an operator asks — is anything
//! stuck, how far behind is each part — from DB1 (the outbox, its dead letters, the relay's
//! leadership and checkpoints), the broker (each partition's offsets, the sink group's lag, the
//! sink's dead-letter topic) and DB2 (row counts). Each database is optional; what cannot be
//! reached is reported as such, never as healthy.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use deadpool_postgres::Pool;
use serde::Serialize;

use crate::topics::{self, PartitionOffsets};

/// What `status` looks at.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    pub bootstrap_servers: String,
    pub topic: String,
    /// The sink's dead-letter topic.
    pub dlq_topic: String,
    /// The sink's consumer group.
    pub group: String,
    pub isolation: kafka_kit::Isolation,
    /// A row or a record waiting longer than this counts as stuck.
    pub stuck_after: Duration,
}

/// One part of the pipeline: what was read, or why it could not be.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Part<T> {
    /// Not asked about (its connection string was not given).
    NotChecked,
    Unreachable {
        error: String,
    },
    Reached(T),
}

impl<T> Part<T> {
    fn reached(&self) -> Option<&T> {
        match self {
            Part::Reached(value) => Some(value),
            _ => None,
        }
    }
}

/// DB1's side: the outbox and the relay.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxState {
    #[serde(flatten)]
    pub backlog: outbox::Backlog,
    pub leader: outbox::Leadership,
    /// `relay_checkpoints` of the topic, by partition.
    pub checkpoints: BTreeMap<i32, i64>,
}

/// One partition of the topic.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionState {
    #[serde(flatten)]
    pub offsets: PartitionOffsets,
    /// The sink group's committed offset.
    pub group_offset: Option<i64>,
    /// Records waiting for the sink group.
    pub group_lag: i64,
    /// How long the oldest record waiting for the sink group has been on the topic.
    pub oldest_waiting_seconds: Option<f64>,
}

/// The broker's side: the topic and the sink's dead-letter topic.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerState {
    pub partitions: Vec<PartitionState>,
    /// Records on the sink's dead-letter topic (0 when it does not exist).
    pub sink_dead_letters: i64,
}

/// DB2's side.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaState {
    pub articles: i64,
    pub processed_events: i64,
    pub tombstones: i64,
}

/// Everything `status` found, and what is wrong.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub outbox: Part<OutboxState>,
    pub broker: Part<BrokerState>,
    pub replica: Part<ReplicaState>,
    /// Why the pipeline is stuck or needs an operator; empty when healthy.
    pub problems: Vec<String>,
}

/// `status`'s exit code: 2 when a part it was asked about cannot be reached, 1 when something is
/// stuck, 0 when healthy.
impl Report {
    pub fn exit_code(&self) -> u8 {
        let unreachable = [
            matches!(self.outbox, Part::Unreachable { .. }),
            matches!(self.broker, Part::Unreachable { .. }),
            matches!(self.replica, Part::Unreachable { .. }),
        ];
        if unreachable.contains(&true) {
            2
        } else if self.problems.is_empty() {
            0
        } else {
            1
        }
    }
}

/// Reads every part asked for (DB1 when `db1` is given, DB2 when `db2` is, the broker always)
/// and judges them.
pub async fn check(options: &StatusOptions, db1: Option<&Pool>, db2: Option<&Pool>) -> Report {
    let outbox = match db1 {
        None => Part::NotChecked,
        Some(pool) => part(read_outbox(pool, &options.topic).await),
    };
    let broker = {
        let options = options.clone();
        let read = tokio::task::spawn_blocking(move || read_broker(&options)).await;
        part(read.map_err(anyhow::Error::from).and_then(|read| read))
    };
    let replica = match db2 {
        None => Part::NotChecked,
        Some(pool) => part(read_replica(pool).await),
    };
    let problems = judge(options, &outbox, &broker);
    Report { outbox, broker, replica, problems }
}

fn part<T>(read: anyhow::Result<T>) -> Part<T> {
    match read {
        Ok(value) => Part::Reached(value),
        Err(error) => Part::Unreachable { error: format!("{error:#}") },
    }
}

async fn read_outbox(pool: &Pool, topic: &str) -> anyhow::Result<OutboxState> {
    let client = pool.get().await.context("cannot connect to DB1")?;
    let not_migrated = "cannot read the outbox tables (is this DB1, migrated by the relay?)";
    Ok(OutboxState {
        backlog: outbox::backlog(&client).await.context(not_migrated)?,
        leader: outbox::leadership(&client).await.context(not_migrated)?,
        checkpoints: outbox::checkpoints(&client, topic).await.context(not_migrated)?,
    })
}

/// DB2's row counts. The tables are the sink's (sql/replica); this only counts them.
async fn read_replica(pool: &Pool) -> anyhow::Result<ReplicaState> {
    let client = pool.get().await.context("cannot connect to DB2")?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM articles) AS articles, \
                    (SELECT count(*) FROM processed_events) AS processed_events, \
                    (SELECT count(*) FROM article_tombstones) AS tombstones",
            &[],
        )
        .await
        .context("cannot count DB2's rows (is this DB2, migrated by the sink?)")?;
    Ok(ReplicaState {
        articles: row.try_get("articles")?,
        processed_events: row.try_get("processed_events")?,
        tombstones: row.try_get("tombstones")?,
    })
}

/// Blocking: the topic's partitions, the group's lag and the age of the oldest record it has
/// not consumed, and the dead-letter topic's size.
fn read_broker(options: &StatusOptions) -> anyhow::Result<BrokerState> {
    let offsets = topics::describe(&options.bootstrap_servers, &options.topic)?;
    let lags = crate::group_lag(&options.bootstrap_servers, &options.topic, &options.group, options.isolation)?;
    let first_waiting: BTreeMap<i32, i64> =
        lags.iter().filter(|lag| lag.lag > 0).map(|lag| (lag.partition, lag.current_offset.unwrap_or(0))).collect();
    let waiting_since = first_record_times(options, &offsets, &first_waiting)?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let partitions = offsets
        .into_iter()
        .map(|offsets| {
            let lag = lags.iter().find(|lag| lag.partition == offsets.partition);
            let oldest_waiting_seconds =
                waiting_since.get(&offsets.partition).map(|&created_ms| (now_ms - created_ms).max(0) as f64 / 1000.0);
            PartitionState {
                group_offset: lag.and_then(|lag| lag.current_offset),
                group_lag: lag.map_or(0, |lag| lag.lag),
                oldest_waiting_seconds,
                offsets,
            }
        })
        .collect();
    let sink_dead_letters = topics::describe_if_exists(&options.bootstrap_servers, &options.dlq_topic)?
        .map_or(0, |partitions| partitions.iter().map(|partition| partition.high - partition.low).sum());
    Ok(BrokerState { partitions, sink_dead_letters })
}

/// The timestamp (ms) of the first record at or after each `from` offset, by partition.
fn first_record_times(
    options: &StatusOptions,
    offsets: &[PartitionOffsets],
    from: &BTreeMap<i32, i64>,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let ranges: BTreeMap<i32, (i64, i64)> = offsets
        .iter()
        .filter_map(|partition| {
            let start = from.get(&partition.partition)?.max(&partition.low);
            (*start < partition.high).then_some((partition.partition, (*start, start + 1)))
        })
        .collect();
    let reader = kafka_kit::reader(&options.bootstrap_servers, "blogctl-status", options.isolation)?;
    let mut times = BTreeMap::new();
    kafka_kit::read_partitions(
        &reader,
        &options.topic,
        &ranges,
        Instant::now() + Duration::from_secs(15),
        |message| {
            use rdkafka::message::Message as _;
            if let Some(ms) = message.timestamp().to_millis() {
                times.entry(message.partition()).or_insert(ms);
            }
        },
    )?;
    Ok(times)
}

/// What is wrong, in words an operator acts on.
fn judge(options: &StatusOptions, outbox: &Part<OutboxState>, broker: &Part<BrokerState>) -> Vec<String> {
    let mut problems = Vec::new();
    let stuck_after = options.stuck_after.as_secs_f64();
    if let Some(state) = outbox.reached() {
        if !state.leader.lock_held {
            problems.push("relay: no relay holds the leader lock, so nothing is published".to_owned());
        }
        if state.backlog.rows > 0 && state.backlog.oldest_age_seconds > stuck_after {
            problems.push(format!(
                "outbox: the oldest of {} rows has waited {:.1} s (stuck after {stuck_after} s)",
                state.backlog.rows, state.backlog.oldest_age_seconds
            ));
        }
        if state.backlog.dead_letters > 0 {
            problems.push(format!(
                "outbox: {} dead letters hold back their articles' later rows (blogctl outbox dead-letters list)",
                state.backlog.dead_letters
            ));
        }
        if let Some(broker) = broker.reached() {
            for partition in &broker.partitions {
                let checkpoint = state.checkpoints.get(&partition.offsets.partition);
                if let Some(&checkpoint) = checkpoint.filter(|&&checkpoint| checkpoint > partition.offsets.high) {
                    problems.push(format!(
                        "relay: the checkpoint of partition {} ({checkpoint}) is past the log's end ({}): the log was lost or replaced",
                        partition.offsets.partition, partition.offsets.high
                    ));
                }
            }
        }
    }
    if let Some(broker) = broker.reached() {
        for partition in &broker.partitions {
            if let Some(waited) = partition.oldest_waiting_seconds.filter(|&waited| waited > stuck_after) {
                problems.push(format!(
                    "sink group {}: {} records of partition {} wait, the oldest for {waited:.1} s (stuck after {stuck_after} s)",
                    options.group, partition.group_lag, partition.offsets.partition
                ));
            }
        }
    }
    problems
}

/// The report as a terminal shows it.
pub fn render(options: &StatusOptions, report: &Report) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    match &report.outbox {
        Part::NotChecked => line("DB1 outbox      not checked (no DATABASE_URL)".to_owned()),
        Part::Unreachable { error } => line(format!("DB1 outbox      UNREACHABLE: {error}")),
        Part::Reached(state) => {
            line(format!(
                "DB1 outbox      {} rows waiting, oldest {:.1} s; {} dead letters",
                state.backlog.rows, state.backlog.oldest_age_seconds, state.backlog.dead_letters
            ));
            let leader = &state.leader;
            line(format!(
                "relay leader    {} (epoch {}, since {}){}",
                if leader.lock_held { "leading" } else { "NONE: no relay holds the lock" },
                leader.epoch,
                leader.since.map_or_else(|| "never".to_owned(), |since| since.to_rfc3339()),
                leader.holder.as_ref().map_or_else(String::new, |holder| format!(", last holder {holder}"))
            ));
        }
    }
    match &report.broker {
        Part::NotChecked => {}
        Part::Unreachable { error } => line(format!("broker          UNREACHABLE: {error}")),
        Part::Reached(state) => {
            line(format!("broker          topic {}, {} partitions", options.topic, state.partitions.len()));
            line(format!(
                "  {:>9} {:>10} {:>10} {:>12} {:>12} {:>8} {:>14}",
                "PARTITION", "LOW", "HIGH", "CHECKPOINT", "SINK-OFFSET", "SINK-LAG", "OLDEST-WAITING"
            ));
            let checkpoints = report.outbox.reached().map(|state| &state.checkpoints);
            for partition in &state.partitions {
                let checkpoint = checkpoints
                    .and_then(|checkpoints| checkpoints.get(&partition.offsets.partition))
                    .map_or_else(|| "-".to_owned(), ToString::to_string);
                let group_offset = partition.group_offset.map_or_else(|| "-".to_owned(), |offset| offset.to_string());
                let waiting = partition
                    .oldest_waiting_seconds
                    .map_or_else(|| "-".to_owned(), |seconds| format!("{seconds:.1} s"));
                line(format!(
                    "  {:>9} {:>10} {:>10} {:>12} {:>12} {:>8} {:>14}",
                    partition.offsets.partition,
                    partition.offsets.low,
                    partition.offsets.high,
                    checkpoint,
                    group_offset,
                    partition.group_lag,
                    waiting
                ));
            }
            line(format!("sink DLQ        {} records on {}", state.sink_dead_letters, options.dlq_topic));
        }
    }
    match &report.replica {
        Part::NotChecked => line("DB2 replica     not checked (no REPLICA_DATABASE_URL)".to_owned()),
        Part::Unreachable { error } => line(format!("DB2 replica     UNREACHABLE: {error}")),
        Part::Reached(state) => line(format!(
            "DB2 replica     {} articles, {} processed events, {} tombstones",
            state.articles, state.processed_events, state.tombstones
        )),
    }
    if report.problems.is_empty() && report.exit_code() == 0 {
        line("healthy".to_owned());
    }
    for problem in &report.problems {
        line(format!("STUCK: {problem}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> StatusOptions {
        StatusOptions {
            bootstrap_servers: "localhost:9092".to_owned(),
            topic: "articles".to_owned(),
            dlq_topic: "articles.dlq".to_owned(),
            group: "blog-sync-group".to_owned(),
            isolation: kafka_kit::Isolation::default(),
            stuck_after: Duration::from_secs(60),
        }
    }

    fn outbox(rows: i64, oldest: f64, dead_letters: i64, lock_held: bool, checkpoint: i64) -> Part<OutboxState> {
        Part::Reached(OutboxState {
            backlog: outbox::Backlog { rows, oldest_age_seconds: oldest, dead_letters },
            leader: outbox::Leadership {
                epoch: 3,
                holder: Some("r1".to_owned()),
                since: None,
                clean_stop: false,
                lock_held,
            },
            checkpoints: BTreeMap::from([(0, checkpoint)]),
        })
    }

    fn broker(high: i64, lag: i64, oldest_waiting: Option<f64>) -> Part<BrokerState> {
        Part::Reached(BrokerState {
            partitions: vec![PartitionState {
                offsets: PartitionOffsets {
                    partition: 0,
                    leader: Some(1),
                    low: 0,
                    high,
                    replicas: vec![1],
                    in_sync: vec![1],
                },
                group_offset: Some(high - lag),
                group_lag: lag,
                oldest_waiting_seconds: oldest_waiting,
            }],
            sink_dead_letters: 2,
        })
    }

    #[test]
    fn a_flowing_pipeline_is_healthy_even_with_a_young_backlog_and_lag() {
        let problems = judge(&options(), &outbox(40, 1.5, 0, true, 90), &broker(100, 10, Some(0.4)));
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn each_kind_of_stuck_is_named() {
        let problems = judge(&options(), &outbox(40, 75.0, 2, false, 120), &broker(100, 10, Some(61.0)));
        let all = problems.join("\n");
        assert_eq!(problems.len(), 5, "{all}");
        for wanted in [
            "no relay holds the leader lock",
            "waited 75.0 s",
            "2 dead letters",
            "past the log's end",
            "oldest for 61.0 s",
        ] {
            assert!(all.contains(wanted), "{wanted}: {all}");
        }
    }

    #[test]
    fn exit_codes_tell_unreachable_from_stuck_from_healthy() {
        let report = |outbox, problems: Vec<String>| Report {
            outbox,
            broker: broker(1, 0, None),
            replica: Part::NotChecked,
            problems,
        };
        assert_eq!(report(Part::NotChecked, vec![]).exit_code(), 0);
        assert_eq!(report(Part::NotChecked, vec!["x".to_owned()]).exit_code(), 1);
        assert_eq!(report(Part::Unreachable { error: "refused".to_owned() }, vec!["x".to_owned()]).exit_code(), 2);
    }

    #[test]
    fn the_screen_and_the_json_show_the_same_parts() {
        let report = Report {
            outbox: outbox(1, 0.5, 0, true, 99),
            broker: broker(100, 0, None),
            replica: Part::Unreachable { error: "connection refused".to_owned() },
            problems: vec![],
        };
        let screen = render(&options(), &report);
        assert!(screen.contains("1 rows waiting"), "{screen}");
        assert!(screen.contains("DB2 replica     UNREACHABLE: connection refused"), "{screen}");
        assert!(!screen.contains("healthy"), "an unreachable part is not healthy: {screen}");
        let json = serde_json::to_value(&report).expect("serialises");
        assert_eq!(json["outbox"]["state"], "reached");
        assert_eq!(json["outbox"]["rows"], 1);
        assert_eq!(json["outbox"]["checkpoints"]["0"], 99);
        assert_eq!(json["broker"]["partitions"][0]["high"], 100);
        assert_eq!(json["replica"]["state"], "unreachable");
    }
}
