//! `blogctl`: the seed guide's Kafka CLI steps against any Kafka-protocol broker, and the
//! relay's dead letters in DB1.

use std::io::BufRead as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use blogctl::dead_letters::{self, Action};
use blogctl::{Start, consume, group_lag, produce, producer};
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
    /// Print records (partition, offset, timestamp, key, headers, value), live or from the beginning.
    Consume {
        /// Start at the oldest record instead of waiting for new ones.
        #[arg(long)]
        from_beginning: bool,
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Consume { from_beginning, max_messages, until_caught_up } => {
            let start = if from_beginning { Start::Beginning } else { Start::End };
            let options = blogctl::ConsumeOptions {
                start,
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
        Command::Outbox { database_url, command: OutboxCommand::DeadLetters(command) } => {
            let pool = dead_letters::connect(&database_url)?;
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
    Ok(())
}
