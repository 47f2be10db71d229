//! The Kafka-protocol broker the tests, the local stack, the chaos script and the benchmark run:
//! **Apache Kafka** (a single KRaft node, broker and controller in one JVM) by default, and
//! **nisshi** (an independent implementation in Rust) with `BROKER=nisshi`, so that nothing
//! silently depends on one broker's behaviour. Both keep their data on disk, so a broker can be
//! killed and restarted with its log. Kafka writes its log through the page cache without an
//! fsync per record, as it does in production: a SIGKILL loses no acknowledged record (the kernel
//! still holds the pages), only a machine losing power would, which replication covers there.
//!
//! `scripts/setup.sh` installs both: Kafka's jars from Maven Central into the tool cache
//! ([`tool_cache`]), nisshi with `cargo install`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::consumer::{BaseConsumer, Consumer as _};

use crate::process::{ManagedProcess, ProcessSpec, Server, find_program};

/// The environment variable that picks the broker (`kafka` or `nisshi`).
pub const BROKER_ENV: &str = "BROKER";

/// Which broker implementation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BrokerKind {
    /// Apache Kafka in KRaft mode, from the jars `scripts/setup.sh` gathered.
    #[default]
    Kafka,
    /// nisshi with its durable sqlite storage.
    Nisshi,
}

impl BrokerKind {
    /// How the pipeline reads this broker's topics (`KAFKA_ISOLATION_LEVEL`): nisshi's
    /// transactions are incomplete, so everything in its log counts (see [`kafka_kit::Isolation`]).
    pub fn isolation(self) -> kafka_kit::Isolation {
        match self {
            Self::Kafka => kafka_kit::Isolation::ReadCommitted,
            Self::Nisshi => kafka_kit::Isolation::ReadUncommitted,
        }
    }

    /// The broker named by `BROKER` (default: Apache Kafka); an unknown name is an error.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var(BROKER_ENV) {
            Ok(name) if !name.is_empty() => name.parse(),
            _ => Ok(Self::default()),
        }
    }
}

impl FromStr for BrokerKind {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> anyhow::Result<Self> {
        match name {
            "kafka" => Ok(Self::Kafka),
            "nisshi" => Ok(Self::Nisshi),
            other => bail!("unknown broker {other:?} (BROKER is `kafka`, the default, or `nisshi`)"),
        }
    }
}

/// Where `scripts/setup.sh` keeps what it installs that is not a Debian package or a cargo
/// binary: `$XDG_CACHE_HOME/blog-outbox` or `~/.cache/blog-outbox`.
pub fn tool_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("blog-outbox")
}

/// The folder of Apache Kafka's jars: `KAFKA_LIBS`, or the one `scripts/setup.sh` links as
/// `kafka/libs` in the tool cache.
fn kafka_libs() -> anyhow::Result<PathBuf> {
    let libs = std::env::var_os("KAFKA_LIBS").map_or_else(|| tool_cache().join("kafka").join("libs"), PathBuf::from);
    if !libs.is_dir() {
        bail!("Apache Kafka's jars are not in {}: run scripts/setup.sh (or set KAFKA_LIBS)", libs.display());
    }
    Ok(libs)
}

/// The version of the Kafka jars in `libs` (from `kafka_2.13-<version>.jar`).
fn kafka_version(libs: &Path) -> Option<String> {
    std::fs::read_dir(libs).ok()?.filter_map(Result::ok).find_map(|entry| {
        let name = entry.file_name().into_string().ok()?;
        Some(name.strip_prefix("kafka_2.13-")?.strip_suffix(".jar")?.to_owned())
    })
}

/// How to start a broker.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    pub kind: BrokerKind,
    /// The client port (Kafka's controller takes another free port).
    pub port: u16,
    /// A second listener requiring TLS and SASL (Apache Kafka only), beside the plain one.
    pub sasl_ssl: Option<SaslSslListener>,
}

impl BrokerOptions {
    /// A broker of `kind` on `port`, plain text only.
    pub fn plain(kind: BrokerKind, port: u16) -> Self {
        Self { kind, port, sasl_ssl: None }
    }
}

/// A `SASL_SSL` listener as managed Kafka offerings run one: TLS with `certs` (the server's
/// certificate for 127.0.0.1), SCRAM-SHA-256/512 for `users` (created when the storage is
/// formatted) and PLAIN for the same users.
#[derive(Debug, Clone)]
pub struct SaslSslListener {
    pub port: u16,
    pub certs: crate::certs::Certs,
    /// `(name, password)`.
    pub users: Vec<(String, String)>,
}

/// A running broker, owning its data directory's contents.
#[derive(Debug)]
pub struct Broker {
    pub kind: BrokerKind,
    pub port: u16,
    pub(crate) process: ManagedProcess,
    dir: PathBuf,
    /// What runs, for messages: "Apache Kafka 4.1.1", "nisshi 0.7.0-pre.2".
    description: String,
    sasl_ssl: Option<SaslSslListener>,
}

/// nisshi's storage file, relative to its working directory (nisshi doubles absolute paths).
const NISSHI_STORAGE_FILE: &str = "broker.db";

/// Any valid KRaft cluster id (a base64 UUID); each broker has its own data directory.
const KAFKA_CLUSTER_ID: &str = "YmxvZy1vdXRib3gtdGVzdA";

/// Partitions of a topic the broker creates on first use: both brokers get the same count, so a
/// test behaves the same on either (nisshi's own default is 4).
const DEFAULT_PARTITIONS: u32 = 4;

impl Broker {
    /// Starts a broker in `dir` (created if needed; an existing log is kept) and waits until it
    /// answers metadata requests.
    pub async fn start(dir: &Path, options: BrokerOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // Both run a program and wait for it (a JVM formatting storage, `nisshi --version`).
        let spec_dir = dir.to_path_buf();
        let (kind, port, sasl_ssl) = (options.kind, options.port, options.sasl_ssl.clone());
        if kind == BrokerKind::Nisshi && sasl_ssl.is_some() {
            bail!("the SASL_SSL listener is for Apache Kafka (nisshi has no TLS)");
        }
        let (spec, description) = tokio::task::spawn_blocking(move || match options.kind {
            BrokerKind::Kafka => kafka_spec(&spec_dir, options),
            BrokerKind::Nisshi => nisshi_spec(&spec_dir, options.port),
        })
        .await??;
        let process = ManagedProcess::start(spec)?;
        let broker = Self { kind, port, process, dir: dir.to_path_buf(), description, sasl_ssl };
        broker.wait_until_up().await?;
        Ok(broker)
    }

    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// "Apache Kafka 4.1.1" or "nisshi 0.7.0-pre.2".
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Stops the broker, deletes everything it stored — topics, group offsets, transactions: a
    /// broker whose disks were lost — and starts it again, empty, on the same port.
    pub async fn wipe_and_restart(&mut self) -> anyhow::Result<()> {
        self.process.stop(Duration::from_secs(30)).await;
        let stored: Vec<PathBuf> = match self.kind {
            BrokerKind::Kafka => vec![self.dir.join("data")],
            BrokerKind::Nisshi => std::fs::read_dir(&self.dir)?
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| {
                    path.file_name().is_some_and(|name| name.to_string_lossy().starts_with(NISSHI_STORAGE_FILE))
                })
                .collect(),
        };
        for path in stored {
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed.with_context(|| format!("cannot delete {}", path.display()))?;
        }
        let options = BrokerOptions { kind: self.kind, port: self.port, sasl_ssl: self.sasl_ssl.clone() };
        *self = Self::start(&self.dir.clone(), options).await?;
        Ok(())
    }

    /// nisshi's sqlite schema has no index for reading record headers back, which makes every
    /// fetch scan all headers; this adds it (idempotent, survives restarts).
    async fn index_nisshi_headers(&self) -> anyhow::Result<()> {
        let database = self.dir.join(NISSHI_STORAGE_FILE);
        crate::wait::until("the broker's header table", Duration::from_secs(30), || {
            let database = database.clone();
            async move {
                let status = tokio::process::Command::new("sqlite3")
                    .arg(&database)
                    .arg("CREATE INDEX IF NOT EXISTS header_topition_offset ON header(topition, offset_id)")
                    .output()
                    .await
                    .context("cannot run sqlite3")?
                    .status;
                Ok(status.success())
            }
        })
        .await
    }
}

fn nisshi_spec(dir: &Path, port: u16) -> anyhow::Result<(ProcessSpec, String)> {
    let listener = format!("tcp://127.0.0.1:{port}");
    let program = find_program("nisshi")?;
    let version = std::process::Command::new(&program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map_or_else(|| "nisshi".to_owned(), |version| version.trim().to_owned());
    let spec = ProcessSpec {
        name: "broker".to_owned(),
        program,
        args: [
            "broker",
            "--listener-url",
            &listener,
            "--advertised-listener-url",
            &listener,
            "--storage-engine",
            &format!("sqlite://{NISSHI_STORAGE_FILE}"),
        ]
        .map(str::to_owned)
        .to_vec(),
        envs: vec![("RUST_LOG".to_owned(), "warn".to_owned())],
        cwd: Some(dir.to_path_buf()),
        run_as: None,
        log: dir.join("broker.log"),
        stop_signal: "TERM",
    };
    Ok((spec, version))
}

/// Extra options for the Apache Kafka node's JVM, whitespace-separated, after the defaults.
pub const KAFKA_JVM_OPTS_ENV: &str = "KAFKA_JVM_OPTS";

/// Writes the node's configuration, formats its storage the first time (blocking: a JVM runs
/// `StorageTool`), and returns how to start it.
fn kafka_spec(dir: &Path, options: BrokerOptions) -> anyhow::Result<(ProcessSpec, String)> {
    let libs = kafka_libs()?;
    let description = format!("Apache Kafka {}", kafka_version(&libs).as_deref().unwrap_or("(unknown version)"));
    let config = dir.join("server.properties");
    let data = dir.join("data");
    // The controller's port is chosen once: a restarted node must find its quorum where it was.
    let controller_port = match std::fs::read_to_string(dir.join("controller.port")) {
        Ok(port) => port.trim().parse().context("bad controller.port")?,
        Err(_) => {
            let port = crate::free_port();
            std::fs::write(dir.join("controller.port"), port.to_string())?;
            port
        }
    };
    let mut properties = kafka_server_properties(&data, options.port, controller_port);
    if let Some(listener) = &options.sasl_ssl {
        properties = with_sasl_ssl_listener(&properties, dir, options.port, controller_port, listener)?;
    }
    std::fs::write(&config, properties)?;
    std::fs::write(dir.join("log4j2.properties"), KAFKA_LOG4J2)?;
    let java = find_program("java")?;
    let extra_jvm_options = std::env::var(KAFKA_JVM_OPTS_ENV).unwrap_or_default();
    let jvm_args = |heap: &str| {
        let mut args = vec![
            format!("-Xmx{heap}"),
            "-XX:+UseG1GC".to_owned(),
            // C1 only: on a 2-core machine shared with the whole pipeline, C2 compiled the broker's
            // hot paths for its first minute or more at about half the broker's CPU, and the
            // pipeline's end-to-end tail paid for it (docs/performance.md, 2026-12-07).
            "-XX:TieredStopAtLevel=1".to_owned(),
            "-Djava.awt.headless=true".to_owned(),
            format!("-Dlog4j2.configurationFile={}", dir.join("log4j2.properties").display()),
        ];
        // Last, so that they win: `KAFKA_JVM_OPTS=-XX:TieredStopAtLevel=4` brings C2 back.
        args.extend(extra_jvm_options.split_whitespace().map(str::to_owned));
        args.extend(["-cp".to_owned(), format!("{}/*", libs.display())]);
        args
    };
    if !data.join("meta.properties").exists() {
        let output = std::process::Command::new(&java)
            .args(jvm_args("256m"))
            .args(["kafka.tools.StorageTool", "format", "--standalone", "--ignore-formatted", "-t", KAFKA_CLUSTER_ID])
            .args(scram_credentials(options.sasl_ssl.as_ref()))
            .arg("-c")
            .arg(&config)
            .output()
            .context("cannot run java (Java 17 or later is needed)")?;
        if !output.status.success() {
            bail!(
                "formatting {description}'s storage failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    let mut args = jvm_args("1g");
    args.extend(["kafka.Kafka".to_owned(), config.to_string_lossy().into_owned()]);
    let spec = ProcessSpec {
        name: "broker".to_owned(),
        program: java,
        args,
        envs: Vec::new(),
        cwd: Some(dir.to_path_buf()),
        run_as: None,
        log: dir.join("broker.log"),
        stop_signal: "TERM",
    };
    Ok((spec, description))
}

/// `--add-scram` arguments of the storage format creating every user's SCRAM credentials.
fn scram_credentials(listener: Option<&SaslSslListener>) -> Vec<String> {
    let users = listener.map(|listener| listener.users.as_slice()).unwrap_or_default();
    users
        .iter()
        .flat_map(|(name, password)| {
            ["SCRAM-SHA-256", "SCRAM-SHA-512"]
                .map(|mechanism| ["--add-scram".to_owned(), format!("{mechanism}=[name={name},password={password}]")])
        })
        .flatten()
        .collect()
}

/// `properties` with a `SASL_SSL` listener on `listener.port` beside the plain one: the server's
/// key and certificate as a PEM key store, SCRAM and PLAIN for `listener.users`.
fn with_sasl_ssl_listener(
    properties: &str,
    dir: &Path,
    port: u16,
    controller_port: u16,
    listener: &SaslSslListener,
) -> anyhow::Result<String> {
    let keystore = dir.join("server-keystore.pem");
    let key = std::fs::read_to_string(&listener.certs.server_key)?;
    let cert = std::fs::read_to_string(&listener.certs.server_cert)?;
    std::fs::write(&keystore, format!("{key}{cert}"))?;
    let plain_users: String =
        listener.users.iter().map(|(name, password)| format!(" user_{name}=\"{password}\"")).collect();
    let sasl_port = listener.port;
    let mut lines: Vec<String> = properties
        .lines()
        .filter(|line| {
            !line.starts_with("listeners=")
                && !line.starts_with("advertised.listeners=")
                && !line.starts_with("listener.security.protocol.map=")
        })
        .map(str::to_owned)
        .collect();
    lines.extend([
        format!("listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{sasl_port},CONTROLLER://127.0.0.1:{controller_port}"),
        format!("advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{sasl_port}"),
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL".to_owned(),
        "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN".to_owned(),
        "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;".to_owned(),
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;".to_owned(),
        format!("listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required{plain_users};"),
        "listener.name.sasl_ssl.ssl.keystore.type=PEM".to_owned(),
        format!("listener.name.sasl_ssl.ssl.keystore.location={}", keystore.display()),
    ]);
    Ok(lines.join("\n") + "\n")
}

/// A single node that is its own controller, on 127.0.0.1 only, with what tests need: groups
/// that form at once, internal topics of one partition and one replica (fast to create, enough
/// for one node), topics created on first use with [`DEFAULT_PARTITIONS`] partitions, and a short
/// broker session: a node restarted after SIGKILL can register again only once its controller has
/// expired the previous session (`DUPLICATE_BROKER_REGISTRATION` until then), 9 s by default,
/// which made every kill-and-restart cost ~12 s instead of ~5.
fn kafka_server_properties(data: &Path, port: u16, controller_port: u16) -> String {
    format!(
        "process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions={DEFAULT_PARTITIONS}
auto.create.topics.enable=true
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
broker.session.timeout.ms=2000
broker.heartbeat.interval.ms=500
log.segment.bytes=16777216
num.recovery.threads.per.data.dir=2
",
        data = data.display(),
    )
}

/// Warnings and errors only, with the start-up banner: the log stays readable in a test report.
const KAFKA_LOG4J2: &str = "status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = info
";

impl Server for Broker {
    fn process_mut(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }

    async fn wait_until_up(&self) -> anyhow::Result<()> {
        let bootstrap = self.bootstrap_servers();
        // A JVM starts in seconds, and recovers an unclean log after a kill before it listens.
        crate::wait::until("the broker to answer metadata requests", Duration::from_secs(90), || {
            let bootstrap = bootstrap.clone();
            async move {
                tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
                    let consumer: BaseConsumer = kafka_kit::client_config(&bootstrap).create()?;
                    Ok(consumer.fetch_metadata(None, Duration::from_secs(2)).is_ok())
                })
                .await?
            }
        })
        .await
        .with_context(|| format!("{} did not start; its log:\n{}", self.description, self.process.log_tail(30)))?;
        if self.kind == BrokerKind::Nisshi {
            self.index_nisshi_headers().await?;
        }
        Ok(())
    }
}
