//! PostgreSQL over TLS, configured as `psql` and libpq users already know it: `sslmode`
//! (`disable`, `prefer` — the default —, `require`, `verify-ca`, `verify-full`), `sslrootcert`,
//! `sslcert` and `sslkey` as parameters of the connection string, with libpq's meanings:
//!
//! - `disable`: plain text only; `prefer`: TLS if the server offers it, without checking its
//!   certificate, else plain text; `require`: TLS, certificate not checked;
//! - `verify-ca`: TLS, the server's certificate must chain to `sslrootcert`; `verify-full`: also
//!   its name (DNS name or IP address in the certificate) must be the host connected to.
//! - `sslrootcert` defaults to `~/.postgresql/root.crt` when that file exists, else the system's
//!   trusted CAs (libpq has no such fallback; `sslrootcert=system` asks for them explicitly);
//!   `sslcert` / `sslkey` are a client certificate and its key (PEM).
//!
//! The driver (tokio-postgres) knows only the first three modes and none of the file
//! parameters, so they are taken out of the string here and turned into an OpenSSL connector.
//! A certificate that does not verify fails the connection with OpenSSL's reason; there is never
//! a fallback to plain text except under `prefer`, as in libpq.

use std::fmt;
use std::path::{Path, PathBuf};

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            // libpq's `allow` (plain first, TLS if refused) has no driver equivalent.
            other => {
                return Err(format!(
                    "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// The driver's own mode: whether TLS is attempted, and whether it is required.
    fn driver_mode(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Disable => tokio_postgres::config::SslMode::Disable,
            Self::Prefer => tokio_postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => tokio_postgres::config::SslMode::Require,
        }
    }

    fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }
}

/// The TLS parameters of a connection string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `None`: `~/.postgresql/root.crt` if it exists, else the system's CAs.
    pub root_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The parameters this module takes out of a connection string.
const TLS_PARAMETERS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl TlsSettings {
    /// Splits `raw` (a `postgres://` URL or `key=value` pairs) into the string the driver gets,
    /// without the TLS parameters, and those parameters.
    pub fn split(raw: &str) -> Result<(String, Self), String> {
        let mut settings = Self::default();
        let mut take = |key: &str, value: &str| -> Result<(), String> {
            match key {
                "sslmode" => settings.mode = SslMode::parse(value)?,
                "sslrootcert" => settings.root_cert = Some(PathBuf::from(value)),
                "sslcert" => settings.cert = Some(PathBuf::from(value)),
                _ => settings.key = Some(PathBuf::from(value)),
            }
            Ok(())
        };
        let stripped = if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            match raw.split_once('?') {
                None => raw.to_owned(),
                Some((base, query)) => {
                    let mut kept = Vec::new();
                    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
                        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                        if TLS_PARAMETERS.contains(&key) {
                            take(key, &percent_decode(value)?)?;
                        } else {
                            kept.push(pair);
                        }
                    }
                    if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) }
                }
            }
        } else {
            let mut kept = Vec::new();
            for pair in raw.split_whitespace() {
                match pair.split_once('=') {
                    Some((key, value)) if TLS_PARAMETERS.contains(&key.trim()) => {
                        take(key.trim(), value.trim_matches('\''))?;
                    }
                    _ => kept.push(pair),
                }
            }
            kept.join(" ")
        };
        Ok((stripped, settings))
    }

    /// The driver's mode for these settings.
    pub fn driver_mode(&self) -> tokio_postgres::config::SslMode {
        self.mode.driver_mode()
    }

    /// The connector every connection of this URL uses. Reads the certificate files now, so a
    /// missing or unreadable one is an error at start, naming it.
    pub fn connector(&self) -> Result<MakeTlsConnector, String> {
        let mut builder =
            SslConnector::builder(SslMethod::tls_client()).map_err(|error| format!("cannot set up TLS: {error}"))?;
        if self.mode.verifies() {
            builder.set_verify(SslVerifyMode::PEER);
            match self.root_cert_file() {
                Some(path) if path.as_os_str() == "system" => {}
                Some(path) => builder
                    .set_ca_file(&path)
                    .map_err(|error| format!("cannot read sslrootcert {}: {error}", path.display()))?,
                None => {}
            }
        } else {
            builder.set_verify(SslVerifyMode::NONE);
        }
        if let Some(cert) = &self.cert {
            builder
                .set_certificate_chain_file(cert)
                .map_err(|error| format!("cannot read sslcert {}: {error}", cert.display()))?;
            let key = self.key.as_ref().ok_or_else(|| format!("sslcert {} needs its sslkey", cert.display()))?;
            builder
                .set_private_key_file(key, SslFiletype::PEM)
                .map_err(|error| format!("cannot read sslkey {}: {error}", key.display()))?;
        }
        let mut connector = MakeTlsConnector::new(builder.build());
        if self.mode != SslMode::VerifyFull {
            connector.set_callback(|config, _host| {
                config.set_verify_hostname(false);
                Ok(())
            });
        }
        Ok(connector)
    }

    /// `sslrootcert`, or libpq's default file when it exists.
    fn root_cert_file(&self) -> Option<PathBuf> {
        self.root_cert.clone().or_else(|| {
            let default = Path::new(&std::env::var_os("HOME")?).join(".postgresql/root.crt");
            default.is_file().then_some(default)
        })
    }
}

impl fmt::Display for TlsSettings {
    /// What a start-up log says of the connection's security: never a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sslmode={}", self.mode.as_str())?;
        if self.mode.verifies() {
            match self.root_cert_file() {
                Some(path) => write!(f, " sslrootcert={}", path.display())?,
                None => f.write_str(" sslrootcert=(system CAs)")?,
            }
        }
        if let Some(cert) = &self.cert {
            write!(f, " sslcert={}", cert.display())?;
        }
        Ok(())
    }
}

fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = value.get(index + 1..index + 3).ok_or_else(|| format!("bad percent-encoding in {value:?}"))?;
            decoded.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad percent-encoding in {value:?}"))?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| format!("{value:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_a_url_and_the_rest_stays() {
        let (rest, tls) = TlsSettings::split(
            "postgres://u:p@db.example.com:5432/blog?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .expect("valid");
        assert_eq!(rest, "postgres://u:p@db.example.com:5432/blog?application_name=x");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        let (rest, tls) = TlsSettings::split("postgres://u@h/db?sslmode=require").expect("valid");
        assert_eq!((rest.as_str(), tls.mode), ("postgres://u@h/db", SslMode::Require));
    }

    #[test]
    fn key_value_strings_work_too_and_prefer_is_the_default() {
        let (rest, tls) =
            TlsSettings::split("host=h dbname=db sslmode=verify-ca sslcert=/c.pem sslkey=/c.key").expect("valid");
        assert_eq!(rest, "host=h dbname=db");
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(tls.cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(tls.key.as_deref(), Some(Path::new("/c.key")));
        assert_eq!(TlsSettings::split("postgres://u@h/db").expect("valid").1.mode, SslMode::Prefer);
    }

    #[test]
    fn an_unknown_mode_or_a_missing_file_is_named() {
        let error = TlsSettings::split("postgres://u@h/db?sslmode=allow").expect_err("refused");
        assert!(error.contains("\"allow\""), "{error}");
        let (_, tls) =
            TlsSettings::split("postgres://u@h/db?sslmode=verify-full&sslrootcert=/no/such/ca.pem").expect("parses");
        let error = tls.connector().err().unwrap_or_default();
        assert!(error.contains("sslrootcert /no/such/ca.pem"), "{error}");
    }

    #[test]
    fn the_description_names_the_mode_and_files_only() {
        let (_, tls) = TlsSettings::split("postgres://u:pw@h/db?sslmode=verify-full&sslrootcert=/ca.pem").expect("ok");
        assert_eq!(tls.to_string(), "sslmode=verify-full sslrootcert=/ca.pem");
        let (_, plain) = TlsSettings::split("postgres://u:pw@h/db?sslmode=disable").expect("ok");
        assert_eq!(plain.to_string(), "sslmode=disable");
    }
}
