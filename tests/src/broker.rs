//! The Kafka-protocol broker: nisshi with its durable sqlite storage, so it can be killed and
//! restarted with its data (see `../shared/notes/toolchain.md`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

use crate::process::{ManagedProcess, ProcessSpec, find_program};

/// The storage file, relative to the broker's working directory (nisshi doubles absolute paths).
const STORAGE_FILE: &str = "broker.db";

#[derive(Debug)]
pub struct Broker {
    pub port: u16,
    process: ManagedProcess,
    dir: std::path::PathBuf,
}

impl Broker {
    pub async fn start(dir: &Path, port: u16) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let listener = format!("tcp://127.0.0.1:{port}");
        let process = ManagedProcess::start(ProcessSpec {
            name: "broker".to_owned(),
            program: find_program("nisshi")?,
            args: [
                "broker",
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &listener,
                "--storage-engine",
                &format!("sqlite://{STORAGE_FILE}"),
            ]
            .map(str::to_owned)
            .to_vec(),
            envs: vec![("RUST_LOG".to_owned(), "warn".to_owned())],
            cwd: Some(dir.to_path_buf()),
            run_as: None,
            log: dir.join("broker.log"),
            stop_signal: "TERM",
        })?;
        let broker = Self { port, process, dir: dir.to_path_buf() };
        broker.wait_until_up().await?;
        Ok(broker)
    }

    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn wait_until_up(&self) -> anyhow::Result<()> {
        let bootstrap = self.bootstrap_servers();
        crate::wait::until("the broker to answer metadata requests", Duration::from_secs(30), || {
            let bootstrap = bootstrap.clone();
            async move {
                tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
                    let consumer: BaseConsumer = shared::kafka::client_config(&bootstrap).create()?;
                    Ok(consumer.fetch_metadata(None, Duration::from_secs(2)).is_ok())
                })
                .await?
            }
        })
        .await
        .with_context(|| format!("broker did not start; its log:\n{}", self.process.log_tail(20)))?;
        self.index_headers().await
    }

    /// nisshi's sqlite schema has no index for reading record headers back, which makes every
    /// fetch scan all headers; this adds it (idempotent, survives restarts).
    async fn index_headers(&self) -> anyhow::Result<()> {
        let database = self.dir.join(STORAGE_FILE);
        crate::wait::until("the broker's header table", Duration::from_secs(30), || {
            let database = database.clone();
            async move {
                let output = std::process::Command::new("sqlite3")
                    .arg(&database)
                    .arg("CREATE INDEX IF NOT EXISTS header_topition_offset ON header(topition, offset_id)")
                    .output()
                    .context("cannot run sqlite3")?;
                Ok(output.status.success())
            }
        })
        .await
    }

    /// SIGKILL: the broker dies mid-write; its sqlite storage survives.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub async fn stop(&mut self) {
        self.process.stop(Duration::from_secs(10)).await;
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.restart()?;
        self.wait_until_up().await
    }

    pub fn process(&self) -> &ManagedProcess {
        &self.process
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}
