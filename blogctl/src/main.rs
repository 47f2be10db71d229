//! `blogctl`: the seed guide's Kafka CLI steps against any Kafka-protocol broker.

use std::io::BufRead as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
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
    /// Show a consumer group's committed offset, log end and lag per partition.
    Lag {
        /// Consumer group.
        #[arg(long, env = "KAFKA_GROUP_ID", default_value = "blog-sync-group")]
        group: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Consume { from_beginning, max_messages, until_caught_up } => {
            let start = if from_beginning { Start::Beginning } else { Start::End };
            let read =
                consume(&cli.bootstrap_servers, &cli.topic, start, max_messages, until_caught_up, None, |record| {
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
            let lags = group_lag(&cli.bootstrap_servers, &cli.topic, &group)?;
            println!(
                "{:<20} {:<12} {:>9} {:>15} {:>15} {:>8}",
                "GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"
            );
            for lag in lags {
                let current = lag.current_offset.map_or_else(|| "-".to_owned(), |offset| offset.to_string());
                println!(
                    "{:<20} {:<12} {:>9} {:>15} {:>15} {:>8}",
                    group, cli.topic, lag.partition, current, lag.log_end_offset, lag.lag
                );
            }
        }
    }
    Ok(())
}
