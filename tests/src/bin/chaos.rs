//! `chaos`: drives writes through the API at a steady rate while killing the broker, the relay
//! and the sink with SIGKILL and restarting them, and pausing the relay and the broker with SIGSTOP
//! for longer than the relay's lease before SIGCONT; then waits for the pipeline to drain and
//! prints a verdict: acknowledged writes, events on the topic, duplicates, missing, per-article order
//! violations, DB1 vs DB2 differences, API errors (also while the broker was down). Exits 1 on any
//! loss, duplicate, reorder, difference or API error.
//!
//! With `--chain`, the chain's second hop is among the victims too (the notifier and its relay,
//! killed and paused), and the verdict checks it: one `notification.requested` on the
//! notifications topic per `article.published` on the articles topic, and one `notifications` row
//! each.
//!
//! Targets: `self` (default) starts its own stack (what CI runs, with `--short`); `local` works on
//! the stack started by `scripts/stack.sh` (killing through its pid files; the stack restarts what
//! dies); `compose` works on `compose/docker-compose.yml` through `docker compose`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use e2e::process::Server as _;
use e2e::stack::{
    DB_USER, DB1_NAME, DB2_NAME, ExtraSink, FAST_TAKEOVER, NOTIFICATIONS_TOPIC, NOTIFIER_DB_NAME, Service, TOPIC,
};
use e2e::verify::{check_chain, check_topic};
use e2e::{ApiClient, Ports, Stack, workload};
use service_kit::config::DatabaseUrl;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// A stack of its own, in a temporary directory on free ports.
    #[value(name = "self")]
    SelfContained,
    /// The stack of `scripts/stack.sh` (seed ports, pid files in --stack-dir).
    Local,
    /// The docker compose stack (compose/docker-compose.yml).
    Compose,
}

/// Kills the broker, the relay and the sink, and pauses the relay and the broker, mid-write; checks
/// that nothing was lost, duplicated or reordered.
#[derive(Debug, Parser)]
#[command(name = "chaos", version)]
struct Cli {
    #[arg(long, value_enum, default_value = "self")]
    target: Target,
    /// Writes per second through the API.
    #[arg(long, default_value_t = 50)]
    rate: u64,
    /// Seconds of writing.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seconds between faults (each picks the next of: kill the broker, the relay, the sink; pause
    /// the relay, the broker).
    #[arg(long, default_value_t = 6)]
    kill_every: u64,
    /// CI's quick run: 20 s at 40 writes/s, a fault every 3 s.
    #[arg(long)]
    short: bool,
    /// Partitions of the topic the relay creates (target `self`; default: the broker's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    partitions: Option<u32>,
    /// Sinks in the group (target `self`); each sink fault hits one of them at random.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    sinks: u32,
    /// Also hurt and check the chain's second hop: the notifier and its relay (targets `self` and
    /// `local`).
    #[arg(long)]
    chain: bool,
    /// The local stack's directory (pid files).
    #[arg(long, default_value = ".stack")]
    stack_dir: PathBuf,
    /// The compose file.
    #[arg(long, default_value = "compose/docker-compose.yml")]
    compose_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Broker,
    Relay,
    Sink,
    Notifier,
    NotifierRelay,
}

/// What happens to a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL, then a restart.
    Kill(Part),
    /// SIGSTOP, then SIGCONT: a frozen process, whose connections stay open.
    Pause(Part),
}

impl Fault {
    const ROTATION: [Fault; 5] = [
        Fault::Kill(Part::Broker),
        Fault::Kill(Part::Relay),
        Fault::Kill(Part::Sink),
        Fault::Pause(Part::Relay),
        Fault::Pause(Part::Broker),
    ];
    /// With `--chain`: the second hop's faults between the pipeline's, so that a short run
    /// reaches both.
    const CHAIN_ROTATION: [Fault; 8] = [
        Fault::Kill(Part::Notifier),
        Fault::Kill(Part::NotifierRelay),
        Fault::Kill(Part::Broker),
        Fault::Kill(Part::Relay),
        Fault::Pause(Part::NotifierRelay),
        Fault::Kill(Part::Sink),
        Fault::Pause(Part::Relay),
        Fault::Pause(Part::Broker),
    ];

    fn part(self) -> Part {
        match self {
            Self::Kill(part) | Self::Pause(part) => part,
        }
    }

    /// How long the part stays down: a pause outlasts the relay's 3 s lease.
    fn duration(self, rng: &mut fastrand::Rng) -> Duration {
        match self {
            Self::Kill(_) => Duration::from_millis(rng.u64(300..2000)),
            Self::Pause(_) => Duration::from_millis(rng.u64(4000..6000)),
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Kill(part) => format!("SIGKILL {}", part.name()),
            Self::Pause(part) => format!("SIGSTOP {}", part.name()),
        }
    }
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Self::Broker => "broker",
            Self::Relay => "outbox-relay",
            Self::Sink => "replica-sink",
            Self::Notifier => "notifier",
            Self::NotifierRelay => "notifier-relay",
        }
    }

    fn compose_service(self) -> &'static str {
        match self {
            Self::Broker => "kafka",
            other => other.name(),
        }
    }

    /// The stack's service, for the parts that are services.
    fn service(self) -> Option<Service> {
        match self {
            Self::Broker => None,
            Self::Relay => Some(Service::Relay),
            Self::Sink => Some(Service::Sink),
            Self::Notifier => Some(Service::Notifier),
            Self::NotifierRelay => Some(Service::NotifierRelay),
        }
    }
}

/// Where the parts are and how to kill and restart them.
enum Victims {
    /// The stack and the sinks added to its group.
    Own(Box<Stack>, Vec<ExtraSink>),
    Local {
        pids: PathBuf,
    },
    Compose {
        file: PathBuf,
    },
}

struct Endpoints {
    api: String,
    bootstrap: String,
    topic: String,
    db1: DatabaseUrl,
    db2: DatabaseUrl,
    /// The chain's second hop: the notifier's database and topic.
    notifier: DatabaseUrl,
    notifications_topic: String,
}

impl Victims {
    async fn inflict(&mut self, fault: Fault, down_for: Duration) -> anyhow::Result<()> {
        match fault {
            Fault::Kill(part) => self.kill_and_restart(part, down_for).await,
            Fault::Pause(part) => self.pause(part, down_for).await,
        }
    }

    /// SIGSTOP, `down_for`, SIGCONT.
    async fn pause(&mut self, part: Part, down_for: Duration) -> anyhow::Result<()> {
        match self {
            Self::Own(stack, extra_sinks) => {
                let process = match (part, part.service()) {
                    (Part::Sink, _) => match pick_sink(extra_sinks) {
                        Some(sink) => &mut sink.process,
                        None => stack.process(Service::Sink),
                    },
                    (_, Some(service)) => stack.process(service),
                    (_, None) => stack.broker_mut()?.process_mut(),
                };
                process.signal("STOP").await?;
                tokio::time::sleep(down_for).await;
                process.signal("CONT").await
            }
            Self::Local { pids } => {
                let pid = std::fs::read_to_string(pids.join(format!("{}.pid", part.name())))
                    .with_context(|| format!("no pid file for {} in {}", part.name(), pids.display()))?;
                run(Command::new("kill").args(["-STOP", pid.trim()]))?;
                tokio::time::sleep(down_for).await;
                run(Command::new("kill").args(["-CONT", pid.trim()]))
            }
            Self::Compose { file } => {
                let compose = |args: &[&str]| {
                    let mut command = Command::new("docker");
                    command.arg("compose").arg("-f").arg(&*file).args(args);
                    run(&mut command)
                };
                compose(&["pause", part.compose_service()])?;
                tokio::time::sleep(down_for).await;
                compose(&["unpause", part.compose_service()])
            }
        }
    }

    async fn kill_and_restart(&mut self, part: Part, down_for: Duration) -> anyhow::Result<()> {
        match self {
            Self::Own(stack, extra_sinks) => {
                let mut extra = if part == Part::Sink { pick_sink(extra_sinks) } else { None };
                match (extra.as_deref_mut(), part.service()) {
                    (Some(sink), _) => sink.process.kill(),
                    (None, Some(service)) => stack.kill(service),
                    (None, None) => stack.broker_mut()?.process_mut().kill(),
                }
                tokio::time::sleep(down_for).await;
                match (extra, part.service()) {
                    (Some(sink), _) => sink.restart().await,
                    (None, Some(service)) => stack.restart(service).await,
                    (None, None) => stack.broker_mut()?.restart().await,
                }
            }
            Self::Local { pids } => {
                let pid = std::fs::read_to_string(pids.join(format!("{}.pid", part.name())))
                    .with_context(|| format!("no pid file for {} in {}", part.name(), pids.display()))?;
                run(Command::new("kill").args(["-KILL", pid.trim()]))?;
                // The stack's supervisor restarts it within a second.
                tokio::time::sleep(down_for).await;
                Ok(())
            }
            Self::Compose { file } => {
                let compose = |args: &[&str]| {
                    let mut command = Command::new("docker");
                    command.arg("compose").arg("-f").arg(&*file).args(args);
                    run(&mut command)
                };
                compose(&["kill", "-s", "SIGKILL", part.compose_service()])?;
                tokio::time::sleep(down_for).await;
                compose(&["start", part.compose_service()])
            }
        }
    }
}

/// One of the extra sinks, or `None` for the stack's own, at random.
fn pick_sink(extra_sinks: &mut [ExtraSink]) -> Option<&mut ExtraSink> {
    let index = fastrand::usize(..=extra_sinks.len());
    extra_sinks.get_mut(index)
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn seed_endpoints() -> Endpoints {
    let ports = Ports::seed();
    let url = |port: u16, database: &str| -> DatabaseUrl {
        format!("postgres://{DB_USER}:blogpass@127.0.0.1:{port}/{database}").parse().expect("a well-formed URL")
    };
    Endpoints {
        api: format!("http://127.0.0.1:{}", ports.api),
        bootstrap: format!("127.0.0.1:{}", ports.broker),
        topic: TOPIC.to_owned(),
        db1: url(ports.db1, DB1_NAME),
        db2: url(ports.db2, DB2_NAME),
        notifier: url(ports.db2, NOTIFIER_DB_NAME),
        notifications_topic: NOTIFICATIONS_TOPIC.to_owned(),
    }
}

/// Waits until the notifier's outbox is empty and the notifications topic holds as many records
/// as the articles topic holds `article.published` events; returns the chain's verdict line and
/// whether it passes.
async fn check_second_hop(
    endpoints: &Endpoints,
    articles: &[blogctl::Record],
    deadline: Instant,
) -> anyhow::Result<(String, bool)> {
    let wanted = check_chain(articles, &[]).published;
    let (notifier, waiting) = loop {
        let client = service_kit::db::connect(&endpoints.notifier).await;
        let waiting: i64 = match &client {
            Ok(client) => client.query_one("SELECT count(*) FROM outbox", &[]).await?.get(0),
            Err(_) => i64::MAX,
        };
        let records = e2e::replica::topic_records(&endpoints.bootstrap, &endpoints.notifications_topic).await?;
        if (waiting == 0 && records.len() >= wanted) || Instant::now() >= deadline {
            break (client?, waiting);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let records = e2e::replica::topic_records(&endpoints.bootstrap, &endpoints.notifications_topic).await?;
    let chain = check_chain(articles, &records);
    let rows: i64 = notifier.query_one("SELECT count(*) FROM notifications", &[]).await?.get(0);
    let rows_once = usize::try_from(rows).is_ok_and(|rows| rows == chain.published);
    let line = format!(
        "  chain: article.published  {}\n  notification.requested     {} (duplicates {}, missing {}, unexpected {})\n  notifications rows         {rows} ({})\n  notifier outbox rows left  {waiting}",
        chain.published,
        chain.notifications,
        chain.duplicates,
        chain.missing.len(),
        chain.unexpected,
        if rows_once { "one per published article" } else { "NOT one per published article" }
    );
    Ok((line, chain.is_clean() && rows_once && chain.notifications == chain.published && waiting == 0))
}

/// How long the pipeline has to drain once the writes are done, both hops together: short enough
/// that the verdict (and the logs of a failure) print before the test runner gives up on a run.
const DRAIN_BUDGET: Duration = Duration::from_secs(150);

/// Waits until DB1's outbox is empty and DB2 equals DB1, or `deadline`; returns the drift and the
/// outbox rows left.
async fn wait_drained(endpoints: &Endpoints, deadline: Instant) -> anyhow::Result<(replica_sink::verify::Drift, i64)> {
    loop {
        let backlog: i64 = match service_kit::db::connect(&endpoints.db1).await {
            Ok(client) => client.query_one("SELECT count(*) FROM outbox", &[]).await?.get(0),
            Err(_) => i64::MAX,
        };
        let drift = replica_sink::verify::compare(&endpoints.db1, &endpoints.db2).await;
        match drift {
            Ok(drift) if backlog == 0 && drift.is_identical() => return Ok((drift, backlog)),
            Ok(drift) if Instant::now() >= deadline => return Ok((drift, backlog)),
            Err(error) if Instant::now() >= deadline => return Err(error.into()),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if cli.short {
        (cli.rate, cli.duration, cli.kill_every) = (40, 20, 3);
    }
    if cli.rate == 0 || cli.duration == 0 || cli.kill_every == 0 {
        bail!("--rate, --duration and --kill-every must be positive");
    }
    if cli.target != Target::SelfContained && (cli.partitions.is_some() || cli.sinks != 1) {
        bail!("--partitions and --sinks apply to --target self only (the local and compose stacks choose their own)");
    }
    if cli.chain && cli.target == Target::Compose {
        bail!("--chain applies to --target self or local (compose does not publish the notifier's database)");
    }
    let (mut victims, endpoints) = match cli.target {
        Target::SelfContained => {
            println!("starting a stack of its own ...");
            let mut stack = Stack::start_for_test_configured(|options| {
                // The broker is one of the victims: a broker of its own, never a shared one.
                options.shared_broker = None;
                options.relay_delivery_timeout = Some(FAST_TAKEOVER);
                options.chain = cli.chain;
                if let Some(partitions) = cli.partitions {
                    options.service_env_by_name.push((
                        Service::Relay,
                        "KAFKA_TOPIC_PARTITIONS".into(),
                        partitions.to_string(),
                    ));
                }
            })
            .await?;
            let mut extra_sinks = Vec::new();
            for number in 2..=cli.sinks {
                extra_sinks.push(stack.start_extra_sink(&format!("replica-sink-{number}")).await?);
            }
            // Logs are printed below only when the verdict is a failure.
            stack.options.print_logs_on_drop = false;
            println!(
                "broker: {}; partitions: {}; sinks: {}",
                stack.broker_description(),
                cli.partitions.map_or_else(|| "the broker's default".to_owned(), |p| p.to_string()),
                cli.sinks
            );
            let endpoints = Endpoints {
                api: stack.url(Service::Api),
                bootstrap: stack.bootstrap_servers(),
                topic: stack.topic().to_owned(),
                db1: stack.db1_url(),
                db2: stack.db2_url(),
                notifier: stack.notifier_url(),
                notifications_topic: stack.notifications_topic().to_owned(),
            };
            (Victims::Own(Box::new(stack), extra_sinks), endpoints)
        }
        Target::Local => (Victims::Local { pids: cli.stack_dir.join("pids") }, seed_endpoints()),
        Target::Compose => (Victims::Compose { file: cli.compose_file.clone() }, seed_endpoints()),
    };
    let api = ApiClient::new(&endpoints.api);
    let workers = 4_u64;
    let pause = Duration::from_secs_f64(workers as f64 / cli.rate as f64);
    let changes_per_worker = (cli.rate * cli.duration / workers) as usize;
    println!(
        "writing {} changes at {} writes/s for {} s, killing a part every {} s",
        changes_per_worker as u64 * workers,
        cli.rate,
        cli.duration,
        cli.kill_every
    );
    let started = Instant::now();
    let writes = {
        let api = api.clone();
        tokio::spawn(async move { workload::run(&api, workers, changes_per_worker, pause).await })
    };
    let rotation: &[Fault] = if cli.chain { &Fault::CHAIN_ROTATION } else { &Fault::ROTATION };
    let mut faults = vec![0_u32; rotation.len()];
    let mut broker_down: Vec<(Instant, Instant)> = Vec::new();
    let mut rng = fastrand::Rng::new();
    let mut turn = 0;
    while !writes.is_finished() {
        tokio::time::sleep(Duration::from_millis(cli.kill_every * 1000 / 2 + rng.u64(0..cli.kill_every * 1000))).await;
        if writes.is_finished() {
            break;
        }
        let index = turn % rotation.len();
        let fault = rotation[index];
        turn += 1;
        let down_for = fault.duration(&mut rng);
        println!("{:>6.1} s  {} (down ~{down_for:?})", started.elapsed().as_secs_f64(), fault.describe());
        let down_at = Instant::now();
        victims.inflict(fault, down_for).await?;
        if fault.part() == Part::Broker {
            broker_down.push((down_at, Instant::now()));
        }
        faults[index] += 1;
    }
    let report = writes.await?;
    println!("writes done after {:.1} s; waiting for the pipeline to drain ...", started.elapsed().as_secs_f64());
    let drain_deadline = Instant::now() + DRAIN_BUDGET;
    let (drift, backlog) = wait_drained(&endpoints, drain_deadline).await?;
    let records = e2e::replica::topic_records(&endpoints.bootstrap, &endpoints.topic).await?;
    let topic = check_topic(&records, &report.expected);
    let errors_while_broker_down =
        report.error_times.iter().filter(|at| broker_down.iter().any(|(from, to)| (from..=to).contains(at))).count();
    // Each event recorded once in DB2, whichever sink applied it and however often it was delivered.
    let processed: i64 = service_kit::db::connect(&endpoints.db2)
        .await?
        .query_one("SELECT count(*) FROM processed_events", &[])
        .await?
        .get(0);
    let processed_once = usize::try_from(processed).is_ok_and(|rows| rows == topic.events);
    let (chain_line, chain_pass) = if cli.chain {
        let (line, pass) = check_second_hop(&endpoints, &records, drain_deadline).await?;
        (format!("\n{line}"), pass)
    } else {
        (String::new(), true)
    };
    let pass =
        topic.is_clean() && drift.is_identical() && backlog == 0 && report.errors == 0 && processed_once && chain_pass;
    let count = |wanted: fn(Part) -> Fault, part: Part| -> u32 {
        rotation.iter().zip(&faults).filter(|(fault, _)| **fault == wanted(part)).map(|(_, count)| count).sum()
    };
    let tally = |wanted: fn(Part) -> Fault, parts: &[Part]| -> String {
        parts.iter().map(|&part| format!("{} {}", part.name(), count(wanted, part))).collect::<Vec<_>>().join(", ")
    };
    let (kill_parts, pause_parts): (&[Part], &[Part]) = if cli.chain {
        (
            &[Part::Broker, Part::Relay, Part::Sink, Part::Notifier, Part::NotifierRelay],
            &[Part::Relay, Part::Broker, Part::NotifierRelay],
        )
    } else {
        (&[Part::Broker, Part::Relay, Part::Sink], &[Part::Relay, Part::Broker])
    };
    println!(
        "
chaos verdict ({:?} target, {} s at {} writes/s)
  kills                      {}
  pauses                     {}
  writes acknowledged by API {}
  API errors                 {} (while the broker was down: {errors_while_broker_down})
  outbox rows left           {backlog}
  events on the topic        {} (of {} records)
  duplicates                 {}
  missing                    {}{}
  order violations           {}
  DB1 vs DB2                 {} (DB1 {} articles, DB2 {}; missing {}, extra {}, differing {})
  processed_events rows      {processed} ({}){chain_line}
RESULT: {}",
        cli.target,
        cli.duration,
        cli.rate,
        tally(Fault::Kill, kill_parts),
        tally(Fault::Pause, pause_parts),
        report.acknowledged,
        report.errors,
        topic.events,
        topic.records,
        topic.duplicates,
        topic.missing.len(),
        if topic.missing.is_empty() {
            String::new()
        } else {
            format!(" e.g. {:?}", &topic.missing[..topic.missing.len().min(10)])
        },
        topic.order_violations,
        if drift.is_identical() { "identical" } else { "DIFFERENT" },
        drift.primary_rows,
        drift.replica_rows,
        drift.missing.0,
        drift.extra.0,
        drift.differing.0,
        if processed_once { "one per event" } else { "NOT one per event" },
        if pass { "PASS" } else { "FAIL" }
    );
    if !report.error_samples.is_empty() {
        println!("API error samples: {:#?}", report.error_samples);
    }
    if let Victims::Own(stack, extra_sinks) = victims {
        if !pass {
            println!("{}", stack.log_tails(60));
            for sink in &extra_sinks {
                println!("----- {} -----\n{}", sink.process.name(), sink.process.log_tail(60));
            }
        }
        drop(extra_sinks);
        stack.shutdown().await;
    }
    if !pass {
        std::process::exit(1);
    }
    Ok(())
}
