//! The whole pipeline — DB1, DB2, the broker, `api`, `outbox-relay`, `replica-sink` — started
//! under one directory. Tests use free ports and a temporary directory; the local stack uses the
//! seed's ports and names under `.stack/`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use events::Article;
use service_kit::config::DatabaseUrl;

use crate::api_client::ApiClient;
use crate::broker::{Broker, BrokerKind, BrokerOptions};
use crate::postgres::{PgCluster, PgOptions};
use crate::process::Server as _;
use crate::process::{ManagedProcess, ProcessSpec, binary};

mod options;

pub use options::*;

#[derive(Debug)]
pub struct Stack {
    pub db1: PgCluster,
    pub db2: PgCluster,
    /// The broker this stack started, if it did not use a shared one.
    broker: Option<Broker>,
    /// Where the harness reaches the broker (its plain listener).
    bootstrap_servers: String,
    /// Where the services reach it (the SASL_SSL listener of a `kafka_sasl` stack).
    service_bootstrap_servers: String,
    /// The `RDKAFKA_*` security settings the services get.
    kafka_client_env: Vec<(String, String)>,
    api: ManagedProcess,
    relay: ManagedProcess,
    sink: ManagedProcess,
    /// The notifier and its relay, with `StackOptions::chain`.
    chain: Option<[ManagedProcess; 2]>,
    pub options: StackOptions,
    _temp: Option<tempfile::TempDir>,
}

impl Stack {
    /// A stack of its own for one test: temporary directory, free ports.
    pub async fn start_for_test() -> anyhow::Result<Self> {
        Self::start_for_test_configured(|_| ()).await
    }

    /// Like [`Stack::start_for_test`], with the options adjusted by `configure` first.
    pub async fn start_for_test_configured(configure: impl FnOnce(&mut StackOptions)) -> anyhow::Result<Self> {
        let temp = tempfile::Builder::new().prefix("blog-e2e-").tempdir()?;
        let shared_broker = std::env::var(SHARED_BROKER_ENV).ok().filter(|bootstrap| !bootstrap.is_empty());
        // On a shared broker, names of its own keep each test's records and offsets apart.
        let suffix = if shared_broker.is_some() { format!("-{:08x}", fastrand::u32(..)) } else { String::new() };
        let mut options = StackOptions {
            root: temp.path().to_path_buf(),
            ports: Ports::free(),
            durable: false,
            broker: BrokerKind::from_env()?,
            shared_broker,
            topic: format!("{TOPIC}{suffix}"),
            group: format!("{GROUP}{suffix}"),
            chain: false,
            notifications_topic: format!("{NOTIFICATIONS_TOPIC}{suffix}"),
            notifier_group: format!("{NOTIFIER_GROUP}{suffix}"),
            rust_log: "info".to_owned(),
            relay_delivery_timeout: None,
            service_env: Vec::new(),
            service_env_by_name: Vec::new(),
            print_logs_on_drop: true,
            postgres_tls: false,
            kafka_sasl: false,
        };
        configure(&mut options);
        Self::start(options, Some(temp)).await
    }

    /// Starts every part and waits until each is ready.
    pub async fn start(mut options: StackOptions, temp: Option<tempfile::TempDir>) -> anyhow::Result<Self> {
        let root = options.root.clone();
        std::fs::create_dir_all(root.join("logs"))?;
        let certs = if options.postgres_tls || options.kafka_sasl {
            Some(crate::certs::Certs::generate(&root.join("tls"))?)
        } else {
            None
        };
        let pg = PgOptions { durable: options.durable, tls: certs.clone().filter(|_| options.postgres_tls) };
        let (db1_dir, db2_dir, broker_dir) = (root.join("db1"), root.join("db2"), root.join("broker"));
        let mut broker_options = BrokerOptions::plain(options.broker, options.ports.broker);
        let mut kafka_client_env = Vec::new();
        if let Some(certs) = certs.filter(|_| options.kafka_sasl) {
            if options.shared_broker.is_some() || options.broker != BrokerKind::Kafka {
                anyhow::bail!(
                    "a SASL_SSL listener needs a stack's own Apache Kafka (shared_broker = None, BROKER=kafka)"
                );
            }
            let (listener, env) = sasl_ssl_listener(&root.join("tls"), certs)?;
            broker_options.sasl_ssl = Some(listener);
            kafka_client_env = env;
            options
                .service_env
                .extend(kafka_client_env.iter().filter(|(name, _)| name != "KAFKA_BOOTSTRAP_SERVERS").cloned());
        }
        let own_broker = async {
            match &options.shared_broker {
                Some(_) => Ok(None),
                None => Broker::start(&broker_dir, broker_options).await.map(Some),
            }
        };
        let (db1, db2, broker) = tokio::try_join!(
            PgCluster::start("db1", &db1_dir, options.ports.db1, pg.clone()),
            PgCluster::start("db2", &db2_dir, options.ports.db2, pg),
            own_broker,
        )?;
        let bootstrap_servers = match (&broker, &options.shared_broker) {
            (Some(broker), _) => broker.bootstrap_servers(),
            (None, shared) => shared.clone().unwrap_or_default(),
        };
        // The services connect where a client must authenticate, when there is such a listener;
        // the harness keeps the plain one.
        let service_bootstrap_servers = kafka_client_env
            .iter()
            .find(|(name, _)| name == "KAFKA_BOOTSTRAP_SERVERS")
            .map_or_else(|| bootstrap_servers.clone(), |(_, address)| address.clone());
        db1.create_database(DB1_NAME, DB_USER, DB_PASSWORD).await?;
        db2.create_database(DB2_NAME, DB_USER, DB_PASSWORD).await?;
        if options.chain {
            db2.create_database(NOTIFIER_DB_NAME, DB_USER, DB_PASSWORD).await?;
        }
        let start = |service: Service| -> anyhow::Result<ManagedProcess> {
            let port = options.ports.of(service);
            let spec = service_spec(service, port, service.name(), &options, &db1, &db2, &service_bootstrap_servers)?;
            ManagedProcess::start(spec)
        };
        let (api, relay, sink) = (start(Service::Api)?, start(Service::Relay)?, start(Service::Sink)?);
        let chain =
            if options.chain { Some([start(Service::Notifier)?, start(Service::NotifierRelay)?]) } else { None };
        let stack = Self {
            db1,
            db2,
            broker,
            bootstrap_servers,
            service_bootstrap_servers,
            kafka_client_env,
            api,
            relay,
            sink,
            chain,
            options,
            _temp: temp,
        };
        for service in stack.services() {
            stack.wait_ready(service).await?;
        }
        Ok(stack)
    }

    /// The services this stack runs: the pipeline's, and the chain's if it has one.
    pub fn services(&self) -> Vec<Service> {
        let chain = if self.chain.is_some() { &Service::CHAIN[..] } else { &[] };
        Service::PIPELINE.iter().chain(chain).copied().collect()
    }

    /// The notifier's database (on DB2's cluster).
    pub fn notifier_url(&self) -> DatabaseUrl {
        self.db2.url(DB_USER, NOTIFIER_DB_NAME)
    }

    pub async fn notifier_client(&self) -> anyhow::Result<tokio_postgres::Client> {
        Ok(service_kit::db::connect(&self.notifier_url()).await?)
    }

    /// The topic the notifier's relay publishes to.
    pub fn notifications_topic(&self) -> &str {
        &self.options.notifications_topic
    }

    /// Every record on the notifications topic.
    pub async fn notification_records(&self) -> anyhow::Result<Vec<blogctl::Record>> {
        crate::replica::topic_records(&self.bootstrap_servers(), self.notifications_topic()).await
    }

    pub fn root(&self) -> &Path {
        &self.options.root
    }

    pub fn db1_url(&self) -> DatabaseUrl {
        self.db1.url(DB_USER, DB1_NAME)
    }

    pub fn db2_url(&self) -> DatabaseUrl {
        self.db2.url(DB_USER, DB2_NAME)
    }

    pub fn bootstrap_servers(&self) -> String {
        self.bootstrap_servers.clone()
    }

    /// What a Kafka client of the services' own needs in its environment (`KAFKA_BOOTSTRAP_SERVERS`
    /// and, on a stack with `kafka_sasl`, the `RDKAFKA_*` security settings): for `blogctl`.
    pub fn kafka_client_env(&self) -> Vec<(String, String)> {
        let mut env = vec![("KAFKA_BOOTSTRAP_SERVERS".to_owned(), self.service_bootstrap_servers.clone())];
        env.extend(self.kafka_client_env.iter().filter(|(name, _)| name != "KAFKA_BOOTSTRAP_SERVERS").cloned());
        env
    }

    /// The topic the relay publishes to.
    pub fn topic(&self) -> &str {
        &self.options.topic
    }

    /// The sink's consumer group.
    pub fn group(&self) -> &str {
        &self.options.group
    }

    /// The sink's dead-letter topic (its default, `<topic>.dlq`).
    pub fn dlq_topic(&self) -> String {
        format!("{}.dlq", self.options.topic)
    }

    /// What broker runs: "Apache Kafka 4.1.1", "nisshi 0.7.0-pre.2", or "shared broker".
    pub fn broker_description(&self) -> &str {
        self.broker.as_ref().map_or("shared broker", Broker::description)
    }

    /// The broker this stack started, to kill or restart it. A stack on the test run's shared
    /// broker has none: a test that stops the broker sets `shared_broker = None`.
    pub fn broker_mut(&mut self) -> anyhow::Result<&mut Broker> {
        self.broker.as_mut().context("this stack uses the shared broker; start it with `shared_broker = None`")
    }

    pub fn port(&self, service: Service) -> u16 {
        self.options.ports.of(service)
    }

    /// Starts one more relay (a standby while the first leads), serving its ops endpoints on
    /// `port`, logging to `logs/<name>.log`; waits until it is ready.
    pub async fn start_extra_relay(&self, name: &str, port: u16) -> anyhow::Result<ManagedProcess> {
        self.start_relay_variant(name, port, Service::Relay.binary_name(), &[]).await
    }

    /// Like [`Stack::start_extra_relay`], running `binary` (e.g. [`FAILPOINT_RELAY`]) with `env`
    /// on top of the stack's (e.g. `RELAY_FAILPOINT`).
    pub async fn start_relay_variant(
        &self,
        name: &str,
        port: u16,
        binary_name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ManagedProcess> {
        self.start_instance(Service::Relay, name, port, binary_name, env).await
    }

    /// Starts one more sink in the stack's group (the group then shares the topic's partitions),
    /// serving its ops endpoints on a free port, logging to `logs/<name>.log`; waits until it is
    /// ready.
    pub async fn start_extra_sink(&self, name: &str) -> anyhow::Result<ExtraSink> {
        self.start_extra_sink_with(name, &[]).await
    }

    /// [`Self::start_extra_sink`] with `env` on top of the stack's sink environment.
    pub async fn start_extra_sink_with(&self, name: &str, env: &[(&str, &str)]) -> anyhow::Result<ExtraSink> {
        let port = crate::free_port();
        let process = self.start_instance(Service::Sink, name, port, Service::Sink.binary_name(), env).await?;
        Ok(ExtraSink { process, port })
    }

    /// One more process of `service`, configured as the stack's own, running `binary_name`.
    async fn start_instance(
        &self,
        service: Service,
        name: &str,
        port: u16,
        binary_name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ManagedProcess> {
        let mut spec =
            service_spec(service, port, name, &self.options, &self.db1, &self.db2, &self.service_bootstrap_servers)?;
        spec.program = binary(binary_name)?;
        spec.envs.extend(env.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())));
        let process = ManagedProcess::start(spec)?;
        wait_ready_at(name, port).await?;
        Ok(process)
    }

    pub fn url(&self, service: Service) -> String {
        format!("http://127.0.0.1:{}", self.port(service))
    }

    pub fn api(&self) -> ApiClient {
        ApiClient::new(&self.url(Service::Api))
    }

    /// The process of `service`. Panics for a chain service of a stack without the chain: a
    /// test asking for it was written for a chain stack.
    pub fn process(&mut self, service: Service) -> &mut ManagedProcess {
        match service {
            Service::Api => &mut self.api,
            Service::Relay => &mut self.relay,
            Service::Sink => &mut self.sink,
            Service::Notifier | Service::NotifierRelay => {
                let chain = self.chain.as_mut().expect("this stack runs no chain (StackOptions::chain)");
                &mut chain[usize::from(service == Service::NotifierRelay)]
            }
        }
    }

    fn process_ref(&self, service: Service) -> &ManagedProcess {
        match service {
            Service::Api => &self.api,
            Service::Relay => &self.relay,
            Service::Sink => &self.sink,
            Service::Notifier | Service::NotifierRelay => {
                let chain = self.chain.as_ref().expect("this stack runs no chain (StackOptions::chain)");
                &chain[usize::from(service == Service::NotifierRelay)]
            }
        }
    }

    /// Waits until `GET /ready` of `service` answers 200.
    pub async fn wait_ready(&self, service: Service) -> anyhow::Result<()> {
        wait_ready_at(service.name(), self.port(service)).await
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub async fn stop(&mut self, service: Service) -> Option<i32> {
        self.process(service).stop(Duration::from_secs(30)).await
    }

    /// Sends `signal` (`TERM`, `STOP`, `CONT`, …) to `service` and returns at once.
    pub async fn signal(&self, service: Service, signal: &str) -> anyhow::Result<()> {
        self.process_ref(service).signal(signal).await
    }

    /// SIGKILL.
    pub fn kill(&mut self, service: Service) {
        self.process(service).kill();
    }

    /// Starts a stopped or killed service again and waits until it is ready.
    pub async fn restart(&mut self, service: Service) -> anyhow::Result<()> {
        self.process(service).restart()?;
        self.wait_ready(service).await
    }

    /// Terminates the PostgreSQL session that holds the relay leader lock, as a server or an
    /// operator does with the connection of a process that cannot close it (stopped, frozen);
    /// returns how many sessions were terminated.
    pub async fn cut_leader_lock(&self) -> anyhow::Result<u64> {
        Ok(self
            .db1_client()
            .await?
            .execute(
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                 WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1",
                &[&outbox_relay::leadership::LOCK_CONNECTION_NAME],
            )
            .await?)
    }

    /// Waits for the pipeline to drain, then checks the topic against what the API acknowledged:
    /// every change once, in per-article order, nothing the API did not acknowledge.
    pub async fn assert_exactly_once(
        &self,
        workload: &crate::workload::WorkloadReport,
        timeout: Duration,
    ) -> anyhow::Result<crate::verify::TopicReport> {
        assert_eq!(workload.errors, 0, "the API never fails: {:?}", workload.error_samples);
        self.wait_for_replica(timeout).await?;
        let records = self.topic_records().await?;
        let topic = crate::verify::check_topic(&records, &workload.expected);
        println!(
            "acknowledged {} changes; topic: {} events, {} duplicates, {} missing, {} order violations",
            workload.acknowledged,
            topic.events,
            topic.duplicates,
            topic.missing.len(),
            topic.order_violations
        );
        assert!(topic.is_clean(), "not exactly once: {topic:?}");
        assert_eq!(topic.events, workload.expected.len(), "no event the API did not acknowledge");
        Ok(topic)
    }

    pub async fn db1_client(&self) -> anyhow::Result<tokio_postgres::Client> {
        Ok(service_kit::db::connect(&self.db1_url()).await?)
    }

    pub async fn db2_client(&self) -> anyhow::Result<tokio_postgres::Client> {
        Ok(service_kit::db::connect(&self.db2_url()).await?)
    }

    /// Waits until the outbox is empty and DB2 holds exactly DB1's articles; returns them.
    pub async fn wait_for_replica(&self, timeout: Duration) -> anyhow::Result<Vec<Article>> {
        crate::replica::wait_for_replica(&self.db1_url(), &self.db2_url(), timeout).await
    }

    /// Every record on the topic.
    pub async fn topic_records(&self) -> anyhow::Result<Vec<blogctl::Record>> {
        crate::replica::topic_records(&self.bootstrap_servers(), self.topic()).await
    }

    /// The sink group's total lag over all partitions: records waiting, counted.
    pub async fn consumer_lag(&self) -> anyhow::Result<i64> {
        let (bootstrap, topic, group) = (self.bootstrap_servers(), self.topic().to_owned(), self.group().to_owned());
        let isolation = self.options.broker.isolation();
        let lags =
            tokio::task::spawn_blocking(move || blogctl::group_lag(&bootstrap, &topic, &group, isolation)).await??;
        Ok(lags.iter().map(|lag| lag.lag).sum())
    }

    /// Restarts any part that died (the local stack's supervisor, like a restart policy), and
    /// keeps `pids/<name>.pid` up to date so that tools such as the chaos script can kill parts.
    pub async fn supervise(&mut self) -> anyhow::Result<()> {
        for service in self.services() {
            let process = self.process(service);
            if !process.is_running() {
                eprintln!("[stack] {} exited; restarting it", process.name());
                process.restart()?;
            }
        }
        if let Some(broker) = self.broker.as_mut()
            && !broker.process_mut().is_running()
        {
            eprintln!("[stack] the broker exited; restarting it");
            broker.restart().await?;
        }
        for cluster in [&mut self.db1, &mut self.db2] {
            if !cluster.process_mut().is_running() {
                eprintln!("[stack] {} exited; restarting it", cluster.name);
                cluster.restart().await?;
            }
        }
        self.write_pid_files()
    }

    fn write_pid_files(&self) -> anyhow::Result<()> {
        let dir = self.options.root.join("pids");
        std::fs::create_dir_all(&dir)?;
        for process in self.processes() {
            if let Some(pid) = process.pid() {
                std::fs::write(dir.join(format!("{}.pid", process.name())), pid.to_string())?;
            }
        }
        Ok(())
    }

    /// Stops everything cleanly: the services (SIGTERM), then the broker and both databases.
    pub async fn shutdown(mut self) {
        for service in self.services() {
            self.stop(service).await;
        }
        if let Some(broker) = self.broker.as_mut() {
            broker.stop().await;
        }
        self.db1.stop().await;
        self.db2.stop().await;
    }

    /// Every process the stack started.
    fn processes(&self) -> impl Iterator<Item = &ManagedProcess> {
        [&self.db1.process, &self.db2.process]
            .into_iter()
            .chain(self.broker.as_ref().map(|broker| &broker.process))
            .chain([&self.api, &self.relay, &self.sink])
            .chain(self.chain.iter().flatten())
    }

    /// The log tails of every process, for a failing test's report.
    pub fn log_tails(&self, lines: usize) -> String {
        self.processes()
            .map(|process| {
                format!(
                    "----- {} ({}) -----\n{}",
                    process.name(),
                    process.log_path().display(),
                    process.log_tail(lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Test runners show a test's output only when it fails, so the log tails are always printed:
/// they are there exactly when someone needs them.
impl Drop for Stack {
    fn drop(&mut self) {
        if self.options.print_logs_on_drop {
            eprintln!("{}", self.log_tails(40));
        }
    }
}

/// A sink [`Stack::start_extra_sink`] added to the stack's group.
#[derive(Debug)]
pub struct ExtraSink {
    pub process: ManagedProcess,
    /// Where it serves /health, /ready and /metrics.
    pub port: u16,
}

impl ExtraSink {
    /// Starts it again after a kill or a stop, and waits until it is ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.restart()?;
        wait_ready_at(self.process.name(), self.port).await
    }
}

/// Waits until `GET /ready` on `port` answers 200.
pub async fn wait_ready_at(name: &str, port: u16) -> anyhow::Result<()> {
    let client = ApiClient::new(&format!("http://127.0.0.1:{port}"));
    crate::wait::until(&format!("{name} to be ready"), Duration::from_secs(60), || async {
        Ok(client.request(reqwest::Method::GET, "/ready", None).await?.0 == 200)
    })
    .await
}

/// The user every service of a `kafka_sasl` stack authenticates as.
pub const KAFKA_SASL_USER: &str = "pipeline";

/// A SASL_SSL listener on a free port for [`KAFKA_SASL_USER`] with a password of its own (in a
/// file under `dir`), and the client environment that reaches it: SCRAM-SHA-256 over TLS,
/// verifying the broker against the stack's CA.
fn sasl_ssl_listener(
    dir: &std::path::Path,
    certs: crate::certs::Certs,
) -> anyhow::Result<(crate::broker::SaslSslListener, Vec<(String, String)>)> {
    let password = format!("pw-{:016x}", fastrand::u64(..));
    let password_file = dir.join("kafka-password");
    std::fs::write(&password_file, format!("{password}\n"))?;
    let port = crate::free_port();
    let env = [
        ("KAFKA_BOOTSTRAP_SERVERS", format!("127.0.0.1:{port}")),
        ("RDKAFKA_SECURITY_PROTOCOL", "SASL_SSL".to_owned()),
        ("RDKAFKA_SASL_MECHANISMS", "SCRAM-SHA-256".to_owned()),
        ("RDKAFKA_SASL_USERNAME", KAFKA_SASL_USER.to_owned()),
        ("RDKAFKA_SASL_PASSWORD_FILE", password_file.display().to_string()),
        ("RDKAFKA_SSL_CA_LOCATION", certs.ca_cert.display().to_string()),
    ]
    .map(|(name, value)| (name.to_owned(), value))
    .to_vec();
    let listener = crate::broker::SaslSslListener { port, certs, users: vec![(KAFKA_SASL_USER.to_owned(), password)] };
    Ok((listener, env))
}

fn service_spec(
    service: Service,
    port: u16,
    name: &str,
    options: &StackOptions,
    db1: &PgCluster,
    db2: &PgCluster,
    bootstrap_servers: &str,
) -> anyhow::Result<ProcessSpec> {
    let mut envs = vec![
        ("LISTEN_ADDR".to_owned(), format!("127.0.0.1:{port}")),
        ("RUST_LOG".to_owned(), options.rust_log.clone()),
    ];
    envs.extend(options.service_env.iter().cloned());
    envs.extend(
        options
            .service_env_by_name
            .iter()
            .filter(|(target, _, _)| *target == service)
            .map(|(_, key, value)| (key.clone(), value.clone())),
    );
    let url = |cluster: &PgCluster, database: &str| cluster.url(DB_USER, database).expose().to_owned();
    let notifier_db = url(db2, NOTIFIER_DB_NAME);
    // (database variable, its URL, the topic read or written by default, the consumer group)
    let (database, topic, group) = match service {
        Service::Api => (("DATABASE_URL", url(db1, DB1_NAME)), None, None),
        Service::Relay => (("DATABASE_URL", url(db1, DB1_NAME)), Some(&options.topic), None),
        Service::Sink => (("REPLICA_DATABASE_URL", url(db2, DB2_NAME)), Some(&options.topic), Some(&options.group)),
        Service::Notifier => (("DATABASE_URL", notifier_db), Some(&options.topic), Some(&options.notifier_group)),
        Service::NotifierRelay => (("DATABASE_URL", notifier_db), Some(&options.notifications_topic), None),
    };
    envs.push((database.0.to_owned(), database.1));
    if let Some(topic) = topic {
        envs.push(("KAFKA_BOOTSTRAP_SERVERS".to_owned(), bootstrap_servers.to_owned()));
        envs.push(("KAFKA_TOPIC".to_owned(), topic.clone()));
        envs.push(("KAFKA_ISOLATION_LEVEL".to_owned(), options.broker.isolation().to_string()));
    }
    if let Some(group) = group {
        envs.push(("KAFKA_GROUP_ID".to_owned(), group.clone()));
    }
    if service == Service::Notifier {
        envs.push(("NOTIFICATIONS_TOPIC".to_owned(), options.notifications_topic.clone()));
    }
    if let (Service::Relay | Service::NotifierRelay, Some(timeout)) = (service, options.relay_delivery_timeout) {
        envs.push(("KAFKA_DELIVERY_TIMEOUT_MS".to_owned(), timeout.as_millis().to_string()));
    }
    Ok(ProcessSpec {
        name: name.to_owned(),
        program: binary(service.binary_name()).context("the service binaries are needed")?,
        args: vec![],
        envs,
        cwd: None,
        run_as: None,
        log: options.root.join("logs").join(format!("{name}.log")),
        stop_signal: "TERM",
    })
}
