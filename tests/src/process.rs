//! Child processes the harness owns: started from a spec (so they can be restarted identically),
//! logging to a file, stopped with a signal or killed with SIGKILL, and killed when dropped.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How to start a process.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// Run as this (uid, gid) — PostgreSQL refuses to run as root.
    pub run_as: Option<(u32, u32)>,
    pub log: PathBuf,
    /// Signal that asks for a clean stop (`TERM`, or `INT` for PostgreSQL's fast shutdown).
    pub stop_signal: &'static str,
}

#[derive(Debug)]
pub struct ManagedProcess {
    spec: ProcessSpec,
    child: Option<Child>,
}

/// Variables the parent may have that would change how children behave; children get only
/// what their spec says on top of a scrubbed environment.
const SCRUBBED_ENV: &[&str] = &[
    "DATABASE_URL",
    "REPLICA_DATABASE_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_TOPIC",
    "KAFKA_GROUP_ID",
    "KAFKA_DLQ_TOPIC",
    "KAFKA_ISOLATION_LEVEL",
    "RELAY_FAILPOINT",
    "LISTEN_ADDR",
    "STORAGE_ENGINE",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "CLUSTER_ID",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "API_TOKEN",
];

impl ManagedProcess {
    pub fn start(spec: ProcessSpec) -> anyhow::Result<Self> {
        let mut process = Self { spec, child: None };
        process.spawn()?;
        Ok(process)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let spec = &self.spec;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("cannot open log {}", spec.log.display()))?;
        let mut command = Command::new(&spec.program);
        command.args(&spec.args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        for name in SCRUBBED_ENV {
            command.env_remove(name);
        }
        command.envs(spec.envs.iter().map(|(key, value)| (key, value)));
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        if let Some((uid, gid)) = spec.run_as {
            command.uid(uid).gid(gid);
        }
        let child =
            command.spawn().with_context(|| format!("cannot start {} ({})", spec.name, spec.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts the process again after a stop or kill.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("{} is still running", self.spec.name);
        }
        self.spawn()
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, …) and returns at once.
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().with_context(|| format!("{} is not running", self.spec.name))?;
        let status =
            tokio::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().await?;
        if !status.success() {
            bail!("kill -{signal} {pid} ({}) failed", self.spec.name);
        }
        Ok(())
    }

    /// Whether the log holds `text`.
    pub fn log_contains(&self, text: &str) -> bool {
        std::fs::read_to_string(&self.spec.log).is_ok_and(|log| log.contains(text))
    }

    /// Sends the stop signal and waits up to `timeout` for a clean exit, then kills. Returns the
    /// exit code of a clean exit.
    pub async fn stop(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = tokio::process::Command::new("kill")
            .arg(format!("-{}", self.spec.stop_signal))
            .arg(child.id().to_string())
            .status()
            .await;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.code(),
                Ok(None) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.spec.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The uid and gid of `user` from /etc/passwd.
pub fn user_ids(user: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() > 3 && fields[0] == user {
            return Ok((fields[2].parse()?, fields[3].parse()?));
        }
    }
    bail!("no user {user} in /etc/passwd")
}

/// Whether this process runs as root.
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find(|line| line.starts_with("Uid:")).map(|line| line.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Where the workspace's binaries are: the directory of the running executable (tests run from
/// `target/<profile>/deps`, the `stack` binary from `target/<profile>`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let mut dir = exe.parent().context("executable has no directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} not found: build the services first (`cargo build --workspace --bins`)", path.display());
    }
    Ok(path)
}

/// What a tool the tests run to the end printed, and how it exited.
#[derive(Debug)]
pub struct ToolRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs one of the workspace's binaries (`chaos`, `bench`) to the end, echoing its standard
/// output line by line as it comes, so that a run the test runner times out still shows how far
/// it got; what it wrote to standard error is kept for the failure message.
pub async fn run_tool(name: &str, args: &[&str]) -> anyhow::Result<ToolRun> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
    let mut child = tokio::process::Command::new(binary(name)?)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let mut stderr_pipe = child.stderr.take().context("no stderr pipe")?;
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        stderr_pipe.read_to_string(&mut text).await.map(|_| text)
    });
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("no stdout pipe")?).lines();
    let mut stdout = String::new();
    while let Some(line) = lines.next_line().await? {
        println!("{line}");
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let status = child.wait().await?;
    let stderr = stderr.await??;
    Ok(ToolRun { success: status.success(), stdout, stderr })
}

/// Finds `program` on PATH, in ~/.cargo/bin or in the `bin` folder of the tool cache
/// (`scripts/setup.sh` puts Jaeger there).
pub fn find_program(program: &str) -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join(program)).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin").join(program));
    }
    candidates.push(crate::broker::tool_cache().join("bin").join(program));
    candidates
        .into_iter()
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{program} not found on PATH; run scripts/setup.sh"))
}

/// A server the harness runs as one child process (a PostgreSQL cluster, a broker): stopped and
/// restarted the same way, and waited for after a restart until it answers again.
#[allow(async_fn_in_trait, reason = "test harness: awaited in place, never spawned")]
pub trait Server {
    /// The server's process, to kill it or ask whether it runs.
    fn process_mut(&mut self) -> &mut ManagedProcess;

    /// Waits until the server answers.
    async fn wait_until_up(&self) -> anyhow::Result<()>;

    /// A clean stop with its stop signal (PostgreSQL: fast shutdown); its data stays.
    async fn stop(&mut self) {
        self.process_mut().stop(Duration::from_secs(30)).await;
    }

    /// Starts it again on the same data and port, and waits until it answers.
    async fn restart(&mut self) -> anyhow::Result<()> {
        self.process_mut().restart()?;
        self.wait_until_up().await
    }
}
