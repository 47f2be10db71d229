//! Test certificates, made with the `openssl` command line: a CA of the test's own and a server
//! certificate it signs for `localhost` and `127.0.0.1`, so that clients can verify the server
//! fully (`sslmode=verify-full`, `ssl.endpoint.identification.algorithm=https`). Nothing is
//! committed: every test makes its own, valid for two days.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// A CA and a server certificate it signed, as PEM files.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    /// Unencrypted PKCS#8.
    pub server_key: PathBuf,
}

/// `openssl req` arguments that make a new P-256 key, unencrypted.
const NEW_KEY: [&str; 6] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout"];

/// `openssl req` with a new key written to `key` (see [`NEW_KEY`]), then `rest`.
fn request_with_new_key(dir: &Path, x509: bool, key: &str, rest: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["req"];
    if x509 {
        args.push("-x509");
    }
    args.extend(NEW_KEY);
    args.push(key);
    args.extend(rest);
    openssl(dir, &args)
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("openssl").args(args).current_dir(dir).output().context("cannot run openssl")?;
    if !output.status.success() {
        bail!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

/// A self-signed CA named `name` in `dir` (`<name>.crt`, `<name>.key`).
pub fn certificate_authority(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let (cert, key) = (format!("{name}.crt"), format!("{name}.key"));
    request_with_new_key(dir, true, &key, &["-out", &cert, "-days", "2", "-subj", &format!("/CN={name}")])?;
    Ok((dir.join(cert), dir.join(key)))
}

impl Certs {
    /// A CA and a server certificate for `localhost` / `127.0.0.1` in `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        let (ca_cert, _) = certificate_authority(dir, "test-ca")?;
        request_with_new_key(dir, false, "server.key", &["-out", "server.csr", "-subj", "/CN=localhost"])?;
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "test-ca.crt",
                "-CAkey",
                "test-ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        )?;
        Ok(Self { ca_cert, server_cert: dir.join("server.crt"), server_key: dir.join("server.key") })
    }
}
