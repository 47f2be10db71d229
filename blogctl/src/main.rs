//! `blogctl`: the seed guide's Kafka CLI steps against any Kafka-protocol broker, and the
//! operator's view of the pipeline: its status, a snapshot to re-seed a replica, the relay's dead
//! letters in DB1.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use blogctl::dead_letters::{self, Action};
use blogctl::status::StatusOptions;
use blogctl::{Start, consume, database, group_lag, produce, producer, snapshot, status, topics};
use clap::{Parser, Subcommand};

/// Kafka command line for the blog pipeline.
#[derive(Debug, Parser)]
#[command(name = "blogctl", version)]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(long, global = true, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = "localhost:9092")]
    bootstrap_servers: String,
    /// Topic.
    #[arg(long, global = true, env = "KAFKA_TOPIC", default_value = "articles")]
    topic: String,
    /// Which records `consume` shows: `read_committed` (what the sink reads) or `read_uncommitted`
    /// (also records of aborted transactions; what nisshi shows every reader).
    #[arg(long, global = true, env = "KAFKA_ISOLATION_LEVEL", default_value_t = kafka_kit::Isolation::default())]
    isolation_level: kafka_kit::Isolation,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The broker's topics (`kafka-topics --list` and `--describe`).
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Print records (partition, offset, timestamp, key, headers, value), live or from the beginning.
    Consume {
        /// Start at the oldest record instead of waiting for new ones.
        #[arg(long, conflicts_with = "offset")]
        from_beginning: bool,
        /// Read only this partition.
        #[arg(long)]
        partition: Option<i32>,
        /// Start at this offset of --partition (between its low and high offsets, see `topics describe`).
        #[arg(long, requires = "partition")]
        offset: Option<i64>,
        /// Stop after this many records.
        #[arg(long)]
        max_messages: Option<usize>,
        /// Stop once every partition is read up to where it ended at start (with --from-beginning).
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Produce each non-empty line of standard input as one record.
    Produce {
        /// Record key (none by default, like the console producer).
        #[arg(long)]
        key: Option<String>,
    },
    /// Show a consumer group's committed offset, log end and lag per partition: LAG counts the
    /// records waiting (up to 100,000 offsets behind; beyond, the offset distance), OFFSET-LAG the
    /// offsets (which also count transaction markers).
    Lag {
        /// Consumer group.
        #[arg(long, env = "KAFKA_GROUP_ID", default_value = "blog-sync-group")]
        group: String,
    },
    /// The whole pipeline on one screen: the outbox's backlog and dead letters, the relay leader,
    /// checkpoints against the log, the sink group's lag, DB2's rows. Exit 0 when healthy, 1 when
    /// something is stuck, 2 when a part asked about cannot be reached. DB1 and DB2 are checked
    /// when their connection strings are given.
    Status {
        /// DB1 (the outbox's database) connection string.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// DB2 (the replica) connection string.
        #[arg(long, env = "REPLICA_DATABASE_URL", hide_env_values = true)]
        replica_database_url: Option<String>,
        /// The sink's consumer group.
        #[arg(long, env = "KAFKA_GROUP_ID", default_value = "blog-sync-group")]
        group: String,
        /// The sink's dead-letter topic (default: `<topic>.dlq`, as the sink's).
        #[arg(long, env = "KAFKA_DLQ_TOPIC")]
        dlq_topic: Option<String>,
        /// Seconds an outbox row or a record for the sink may wait before the pipeline counts as stuck.
        #[arg(long, default_value_t = 60.0, value_parser = positive_seconds, allow_negative_numbers = true)]
        stuck_after_seconds: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-seed a replica: enqueue, through the outbox, one `article.snapshot` event per article in
    /// DB1, in batches of one transaction each. Safe while the API writes, and to interrupt and
    /// run again. Start from an empty replica: a snapshot cannot tell what was deleted.
    Snapshot {
        /// DB1 (the articles' and the outbox's database) connection string.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Articles per transaction.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        batch_size: i64,
        /// Only articles with an id above this one (to resume an interrupted run).
        #[arg(long, default_value_t = 0)]
        after_id: i64,
    },
    /// The outbox in DB1: the relay's dead letters.
    Outbox {
        /// DB1 (the outbox's database) connection string.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[command(subcommand)]
        command: OutboxCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Every topic with its partition count.
    List,
    /// Per partition of a topic: its leader, low and high offsets and, with --group, the group's
    /// committed offset and lag.
    Describe {
        /// The topic (default: the global --topic).
        topic: Option<String>,
        /// Also show this consumer group's offsets.
        #[arg(long)]
        group: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Rows the broker refused (too large, invalid), kept in `outbox_dead_letters`; the later rows
    /// of their articles wait behind them.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// List the dead letters: id, event id, article, type, size, when and why they failed, and
    /// how many rows of the same article wait behind each.
    List,
    /// Put a dead letter back into the outbox under its original id (after fixing the cause,
    /// e.g. raising the topic's max.message.bytes): it is published before its article's later rows.
    Requeue {
        /// The dead letter's id (the outbox id it had).
        id: i64,
    },
    /// Delete a dead letter for good: its event is never published, its article's later rows flow again.
    Discard {
        /// The dead letter's id (the outbox id it had).
        id: i64,
    },
}

/// A number of seconds above zero, for `--stuck-after-seconds`.
fn positive_seconds(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => Ok(seconds),
        _ => Err(format!("{value:?} is not a positive number of seconds")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = service_kit::config::parse_with_secret_files::<Cli>();
    match cli.command {
        Command::Topics(TopicsCommand::List) => {
            let bootstrap = cli.bootstrap_servers;
            let listed = tokio::task::spawn_blocking(move || topics::list(&bootstrap)).await??;
            println!("{:<40} {:>10}", "TOPIC", "PARTITIONS");
            for topic in listed {
                println!("{:<40} {:>10}", topic.name, topic.partitions);
            }
        }
        Command::Topics(TopicsCommand::Describe { topic, group }) => {
            let topic = topic.unwrap_or(cli.topic);
            let (bootstrap, isolation) = (cli.bootstrap_servers, cli.isolation_level);
            let table = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
                let partitions = topics::describe(&bootstrap, &topic)?;
                let lags = match &group {
                    Some(group) => Some(group_lag(&bootstrap, &topic, group, isolation)?),
                    None => None,
                };
                let group = group.as_deref().zip(lags.as_deref());
                Ok(topics::describe_table(&topic, &partitions, group))
            })
            .await??;
            print!("{table}");
        }
        Command::Consume { from_beginning, partition, offset, max_messages, until_caught_up } => {
            let start = match (offset, from_beginning) {
                (Some(offset), _) => Start::Offset(offset),
                (None, true) => Start::Beginning,
                (None, false) => Start::End,
            };
            let options = blogctl::ConsumeOptions {
                start,
                partition,
                isolation: cli.isolation_level,
                max_records: max_messages,
                until_caught_up,
                deadline: None,
            };
            let read = consume(&cli.bootstrap_servers, &cli.topic, options, |record| {
                println!("{}", record.display_line());
            })?;
            eprintln!("Processed a total of {read} messages");
        }
        Command::Produce { key } => {
            let producer = producer(&cli.bootstrap_servers)?;
            let started = Instant::now();
            let mut produced = 0;
            for line in std::io::stdin().lock().lines() {
                let line = line.context("cannot read standard input")?;
                if line.trim().is_empty() {
                    continue;
                }
                let at = produce(&producer, &cli.topic, key.as_deref(), &line).await?;
                eprintln!("produced to {} partition {} offset {}", cli.topic, at.partition, at.offset);
                produced += 1;
            }
            eprintln!("{produced} records produced in {:?}", started.elapsed().max(Duration::ZERO));
        }
        Command::Lag { group } => {
            let lags = group_lag(&cli.bootstrap_servers, &cli.topic, &group, cli.isolation_level)?;
            println!(
                "{:<20} {:<12} {:>9} {:>15} {:>15} {:>8} {:>11}",
                "GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "OFFSET-LAG"
            );
            for lag in lags {
                let current = lag.current_offset.map_or_else(|| "-".to_owned(), |offset| offset.to_string());
                println!(
                    "{:<20} {:<12} {:>9} {:>15} {:>15} {:>8} {:>11}",
                    group, cli.topic, lag.partition, current, lag.log_end_offset, lag.lag, lag.offset_lag
                );
            }
        }
        Command::Status { database_url, replica_database_url, group, dlq_topic, stuck_after_seconds, json } => {
            let db1 = database_url.as_deref().map(|url| database(url, "DATABASE_URL")).transpose()?;
            let db2 = replica_database_url.as_deref().map(|url| database(url, "REPLICA_DATABASE_URL")).transpose()?;
            let options = StatusOptions {
                bootstrap_servers: cli.bootstrap_servers,
                dlq_topic: dlq_topic.unwrap_or_else(|| format!("{}.dlq", cli.topic)),
                topic: cli.topic,
                group,
                isolation: cli.isolation_level,
                stuck_after: Duration::from_secs_f64(stuck_after_seconds),
            };
            let report = status::check(&options, db1.as_ref(), db2.as_ref()).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", status::render(&options, &report));
            }
            return Ok(ExitCode::from(report.exit_code()));
        }
        Command::Snapshot { database_url, batch_size, after_id } => {
            let pool = database(&database_url, "DATABASE_URL")?;
            let on_terminal = std::io::stderr().is_terminal();
            let mut last_line = Instant::now();
            let done = snapshot::run(&pool, after_id, batch_size, |progress| {
                if on_terminal {
                    eprint!("\r{}", snapshot::bar(progress));
                    let _ = std::io::stderr().flush();
                } else if last_line.elapsed() >= Duration::from_secs(1) {
                    last_line = Instant::now();
                    eprintln!(
                        "snapshot: {}/{} articles enqueued (resume with --after-id {})",
                        progress.done, progress.total, progress.last_id
                    );
                }
            })
            .await?;
            if on_terminal {
                eprintln!();
            }
            println!(
                "snapshot: {} articles enqueued as article.snapshot events, up to article id {}",
                done.done, done.last_id
            );
        }
        Command::Outbox { database_url, command: OutboxCommand::DeadLetters(command) } => {
            let pool = database(&database_url, "DATABASE_URL")?;
            match command {
                DeadLetterCommand::List => {
                    let dead = dead_letters::list(&pool).await?;
                    for letter in &dead {
                        println!("{}", dead_letters::display_line(letter));
                    }
                    eprintln!("{} dead letters", dead.len());
                }
                DeadLetterCommand::Requeue { id } => {
                    dead_letters::act(&pool, Action::Requeue, id).await?;
                    println!(
                        "requeued dead letter {id}: back in the outbox under its id, published before its article's later rows"
                    );
                }
                DeadLetterCommand::Discard { id } => {
                    dead_letters::act(&pool, Action::Discard, id).await?;
                    println!(
                        "discarded dead letter {id}: its event will not be published; its article's later rows flow again"
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
