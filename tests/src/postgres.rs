//! A PostgreSQL cluster of the harness's own: `initdb` into a directory, `postgres` on a chosen
//! port on 127.0.0.1 (as the `postgres` user when the harness runs as root), stopped or killed
//! and restarted on the same data.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use service_kit::config::DatabaseUrl;

use crate::process::{ManagedProcess, ProcessSpec, Server, running_as_root, user_ids};

#[derive(Debug)]
pub struct PgCluster {
    pub name: String,
    pub port: u16,
    pub(crate) process: ManagedProcess,
}

/// Options that differ between the test harness and the local stack.
#[derive(Debug, Clone, Copy)]
pub struct PgOptions {
    /// fsync on (the local stack) or off (tests: faster, and a killed process loses nothing
    /// the OS already has).
    pub durable: bool,
}

fn bindir() -> anyhow::Result<PathBuf> {
    let output = Command::new("pg_config").arg("--bindir").output().context("cannot run pg_config")?;
    if !output.status.success() {
        bail!("pg_config --bindir failed");
    }
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()))
}

impl PgCluster {
    /// Initialises `dir` if it holds no cluster yet, starts the server and waits until it answers.
    pub async fn start(name: &str, dir: &Path, port: u16, options: PgOptions) -> anyhow::Result<Self> {
        let bin = bindir()?;
        let data = dir.join("data");
        let socket_dir = dir.join("socket");
        std::fs::create_dir_all(&socket_dir)?;
        let run_as = if running_as_root() { Some(user_ids("postgres")?) } else { None };
        for path in [dir, socket_dir.as_path()] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
            }
        }
        if !data.join("PG_VERSION").exists() {
            // initdb takes seconds: awaited, not blocking the runtime the other parts start on.
            let mut initdb = tokio::process::Command::new(bin.join("initdb"));
            initdb.args(["-D"]).arg(&data).args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
            if let Some((uid, gid)) = run_as {
                initdb.uid(uid).gid(gid);
            }
            let output = initdb.output().await.context("cannot run initdb")?;
            if !output.status.success() {
                bail!("initdb failed: {}", String::from_utf8_lossy(&output.stderr));
            }
        }
        let fsync = if options.durable { "on" } else { "off" };
        let process = ManagedProcess::start(ProcessSpec {
            name: name.to_owned(),
            program: bin.join("postgres"),
            args: [
                "-D",
                &data.to_string_lossy(),
                "-p",
                &port.to_string(),
                "-k",
                &socket_dir.to_string_lossy(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                &format!("fsync={fsync}"),
                "-c",
                "max_connections=200",
            ]
            .map(str::to_owned)
            .to_vec(),
            envs: vec![],
            cwd: Some(dir.to_path_buf()),
            run_as,
            log: dir.join("postgres.log"),
            stop_signal: "INT",
        })?;
        let cluster = Self { name: name.to_owned(), port, process };
        cluster.wait_until_up().await?;
        Ok(cluster)
    }

    /// A URL for `user` on `database`.
    pub fn url(&self, user: &str, database: &str) -> DatabaseUrl {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port).parse().expect("a well-formed URL")
    }

    /// Creates `role` (with `password`) and a database it owns, unless they exist.
    pub async fn create_database(&self, database: &str, role: &str, password: &str) -> anyhow::Result<()> {
        let admin = service_kit::db::connect(&self.url("postgres", "postgres")).await?;
        let role_exists = admin.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role]).await?.is_some();
        if !role_exists {
            admin.batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")).await?;
        }
        let database_exists =
            admin.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database]).await?.is_some();
        if !database_exists {
            admin.batch_execute(&format!("CREATE DATABASE \"{database}\" OWNER \"{role}\"")).await?;
        }
        Ok(())
    }
}

impl Server for PgCluster {
    fn process_mut(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }

    async fn wait_until_up(&self) -> anyhow::Result<()> {
        let url = self.url("postgres", "postgres");
        crate::wait::until(&format!("{} to accept connections", self.name), Duration::from_secs(30), || async {
            Ok(service_kit::db::connect(&url).await.is_ok())
        })
        .await
        .with_context(|| format!("{} did not start; its log:\n{}", self.name, self.process.log_tail(20)))
    }
}
