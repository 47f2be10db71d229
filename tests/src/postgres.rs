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
    /// The CA clients verify the server with, when it requires TLS.
    ca_cert: Option<PathBuf>,
}

/// Options that differ between the test harness and the local stack.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// fsync on (the local stack) or off (tests: faster, and a killed process loses nothing
    /// the OS already has).
    pub durable: bool,
    /// Serve TLS with this server certificate and refuse every TCP connection without it
    /// (`pg_hba.conf`: `hostssl` only); [`PgCluster::url`] then asks for `sslmode=verify-full`.
    pub tls: Option<crate::certs::Certs>,
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
        let mut args: Vec<String> = [
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
        .to_vec();
        if let Some(certs) = &options.tls {
            args.extend(require_tls(dir, &data, certs, run_as)?);
        }
        let process = ManagedProcess::start(ProcessSpec {
            name: name.to_owned(),
            program: bin.join("postgres"),
            args,
            envs: vec![],
            cwd: Some(dir.to_path_buf()),
            run_as,
            log: dir.join("postgres.log"),
            stop_signal: "INT",
        })?;
        let ca_cert = options.tls.map(|certs| certs.ca_cert);
        let cluster = Self { name: name.to_owned(), port, process, ca_cert };
        cluster.wait_until_up().await?;
        Ok(cluster)
    }

    /// A URL for `user` on `database` (verifying the server fully when it requires TLS).
    pub fn url(&self, user: &str, database: &str) -> DatabaseUrl {
        let tls = self
            .ca_cert
            .as_ref()
            .map_or_else(String::new, |ca| format!("?sslmode=verify-full&sslrootcert={}", ca.display()));
        format!("postgres://{user}@127.0.0.1:{}/{database}{tls}", self.port).parse().expect("a well-formed URL")
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

/// Copies the server's certificate and key where the server can read them (its key must be its
/// own, mode 0600), writes a `pg_hba.conf` that admits TCP connections over TLS only, and
/// returns the server options that turn TLS on.
fn require_tls(
    dir: &Path,
    data: &Path,
    certs: &crate::certs::Certs,
    run_as: Option<(u32, u32)>,
) -> anyhow::Result<Vec<String>> {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::copy(&certs.server_cert, &cert)?;
    std::fs::copy(&certs.server_key, &key)?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    if let Some((uid, gid)) = run_as {
        for path in [&cert, &key] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
    }
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust
hostssl all all 127.0.0.1/32 trust
hostnossl all all 127.0.0.1/32 reject
",
    )?;
    Ok(vec![
        "-c".to_owned(),
        "ssl=on".to_owned(),
        "-c".to_owned(),
        format!("ssl_cert_file={}", cert.display()),
        "-c".to_owned(),
        format!("ssl_key_file={}", key.display()),
    ])
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
