//! `stack`: the whole pipeline on this machine without Docker — DB1 and DB2 (PostgreSQL), the
//! broker (Apache Kafka, or nisshi with `--broker nisshi`), Jaeger, `api`, `outbox-relay`,
//! `replica-sink`, and the chain's `notifier` with its own `outbox-relay` — on the seed's ports, with data kept under `--dir` between runs (Jaeger keeps
//! its traces in memory). Ctrl-C stops everything cleanly.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use e2e::broker::{BROKER_ENV, BrokerKind};
use e2e::jaeger::{Jaeger, JaegerPorts};
use e2e::stack::{
    DB_USER, DB1_NAME, DB2_NAME, GROUP, NOTIFICATIONS_TOPIC, NOTIFIER_DB_NAME, NOTIFIER_GROUP, Service, TOPIC,
};
use e2e::{Ports, Stack, StackOptions};

/// Starts DB1, DB2, the broker, the three services and the notifier with its relay locally (no Docker).
#[derive(Debug, Parser)]
#[command(name = "stack", version)]
struct Cli {
    /// Directory for data and logs (kept between runs; delete it to start afresh).
    #[arg(long, env = "STACK_DIR", default_value = ".stack")]
    dir: PathBuf,
    /// Log filter for the services.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    rust_log: String,
    /// DB1 port.
    #[arg(long, env = "STACK_DB1_PORT", default_value_t = 5432)]
    db1_port: u16,
    /// DB2 port.
    #[arg(long, env = "STACK_DB2_PORT", default_value_t = 5433)]
    db2_port: u16,
    /// The broker: `kafka` (Apache Kafka) or `nisshi`. Each keeps its own files in `<dir>/broker`,
    /// so after a switch the topic starts empty while the databases keep their rows.
    #[arg(long, env = BROKER_ENV, default_value = "kafka")]
    broker: BrokerKind,
    /// Where the services send their traces. Unset: to the Jaeger the stack starts (OTLP on 4317
    /// and 4318, query API on 16686); set: to that endpoint, and no Jaeger is started.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Bearer token the API requires for writes (unset: writes are open).
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.dir).with_context(|| format!("cannot create {}", cli.dir.display()))?;
    let root = cli.dir.canonicalize()?;
    let ports = Ports { db1: cli.db1_port, db2: cli.db2_port, ..Ports::seed() };
    println!("Starting the stack under {} (logs in {}/logs) ...", root.display(), root.display());
    // The stack passes the OTEL_* variables of its own environment to the services.
    let mut service_env: Vec<(String, String)> = std::env::vars().filter(|(key, _)| key.starts_with("OTEL_")).collect();
    let mut jaeger = match cli.otlp_endpoint {
        Some(_) => None,
        None => {
            let jaeger = Jaeger::start(&root.join("jaeger"), JaegerPorts::standard())
                .await
                .context("Jaeger did not start (is something else on 4317, 4318 or 16686?)")?;
            service_env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), jaeger.grpc_endpoint()));
            service_env.push(("OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(), "grpc".to_owned()));
            Some(jaeger)
        }
    };
    let options = StackOptions {
        root: root.clone(),
        ports,
        durable: true,
        broker: cli.broker,
        shared_broker: None,
        topic: TOPIC.to_owned(),
        group: GROUP.to_owned(),
        chain: true,
        notifications_topic: NOTIFICATIONS_TOPIC.to_owned(),
        notifier_group: NOTIFIER_GROUP.to_owned(),
        rust_log: cli.rust_log,
        relay_delivery_timeout: None,
        service_env,
        // The relay creates the topic with 6 partitions (a topic already there is left as it is).
        service_env_by_name: [Service::Relay, Service::NotifierRelay]
            .into_iter()
            .map(|relay| (relay, "KAFKA_TOPIC_PARTITIONS".into(), "6".into()))
            .chain(cli.api_token.map(|token| (Service::Api, "API_TOKEN".into(), token)))
            .collect(),
        print_logs_on_drop: false,
        postgres_tls: false,
        kafka_sasl: false,
    };
    let stack = Stack::start(options, None)
        .await
        .context("the stack did not start; see the logs above and in the logs directory")?;
    let logs = root.join("logs");
    println!(
        "
The stack is up:
  API            http://localhost:{api}/api/v1/articles   (metrics: /api/v1/metrics, OpenAPI: /api/v1/openapi.json)
  outbox-relay   http://localhost:{relay}/metrics   /ready
  replica-sink   http://localhost:{sink}/metrics   /ready
  notifier       http://localhost:{notifier}/metrics   /ready   (group {NOTIFIER_GROUP})
  notifier-relay http://localhost:{notifier_relay}/metrics   /ready   (topic {NOTIFICATIONS_TOPIC})
  Kafka broker   localhost:{broker} ({broker_name}), topic {TOPIC}, group {GROUP}
  traces         {traces}
  DB1            psql postgres://{DB_USER}@localhost:{db1}/{DB1_NAME}
  DB2            psql postgres://{DB_USER}@localhost:{db2}/{DB2_NAME}
  notifier DB    psql postgres://{DB_USER}@localhost:{db2}/{NOTIFIER_DB_NAME}
  logs           tail -f {logs}/api.log {logs}/outbox-relay.log {logs}/replica-sink.log {logs}/notifier.log {logs}/notifier-relay.log

Try:
  curl -s -X POST http://localhost:{api}/api/v1/articles -H 'Content-Type: application/json' \\
       -d '{{\"title\":\"Test Kafka Event\",\"content\":\"Testing event production\",\"author\":\"Kafka Tester\"}}'
  target/debug/blogctl consume --from-beginning --until-caught-up
  target/debug/blogctl lag
  curl -s -X POST http://localhost:{api}/api/v1/articles/1/publish
  target/debug/blogctl consume --topic {NOTIFICATIONS_TOPIC} --from-beginning --until-caught-up

Parts that die are restarted (pid files in {root}/pids). Press Ctrl-C to stop everything (data is kept in {root}).",
        api = stack.port(Service::Api),
        relay = stack.port(Service::Relay),
        sink = stack.port(Service::Sink),
        notifier = stack.port(Service::Notifier),
        notifier_relay = stack.port(Service::NotifierRelay),
        broker = ports.broker,
        broker_name = stack.broker_description(),
        traces = jaeger.as_ref().map_or_else(
            || "exported to OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            |jaeger| format!(
                "Jaeger query API {}/api/traces?service=api (this build serves no UI: see docs/observability.md)",
                jaeger.query_url().replace("127.0.0.1", "localhost")
            )
        ),
        db1 = ports.db1,
        db2 = ports.db2,
        logs = logs.display(),
        root = root.display(),
    );
    let mut stack = stack;
    let stop = service_kit::shutdown::signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {
                if let Err(error) = stack.supervise().await {
                    eprintln!("[stack] cannot restart a part: {error:#}");
                }
                if let Some(jaeger) = jaeger.as_mut()
                    && !jaeger.is_running()
                {
                    eprintln!("[stack] jaeger exited; restarting it");
                    if let Err(error) = jaeger.restart() {
                        eprintln!("[stack] cannot restart jaeger: {error:#}");
                    }
                }
            }
        }
    }
    println!("Stopping the stack ...");
    stack.shutdown().await;
    if let Some(jaeger) = jaeger.as_mut() {
        jaeger.stop().await;
    }
    println!("Stopped.");
    Ok(())
}
