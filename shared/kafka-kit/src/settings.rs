//! Any librdkafka property, from the environment or from properties files, for every Kafka client
//! of every binary — what managed Kafka needs (SASL, TLS with a custom CA, `client.rack`,
//! compression) without the code knowing each setting. One convention:
//!
//! - `RDKAFKA_<NAME>` sets property `<name>` on every client: upper case to lower case,
//!   `_` to `.` (`RDKAFKA_SECURITY_PROTOCOL=SASL_SSL` → `security.protocol`,
//!   `RDKAFKA_SASL_MECHANISMS=SCRAM-SHA-256`, `RDKAFKA_SSL_CA_LOCATION=/etc/kafka/ca.pem`);
//! - `RDKAFKA_PRODUCER_<NAME>` / `RDKAFKA_CONSUMER_<NAME>` set it on producers / consumers only;
//! - `<VARIABLE>_FILE` reads the value from a file (container secrets:
//!   `RDKAFKA_SASL_PASSWORD_FILE=/run/secrets/kafka`);
//! - `KAFKA_PROPERTIES_FILE`, `KAFKA_PRODUCER_PROPERTIES_FILE`, `KAFKA_CONSUMER_PROPERTIES_FILE`:
//!   `name=value` lines (`#` comments), for many settings at once; a variable wins over a file.
//!
//! These go on top of what the code sets, so an operator can change any default — except the
//! properties the pipeline's guarantees rest on (idempotence, acks, the transactional id, the
//! isolation level, the manual offset store, delivery timeouts the takeover wait is computed
//! from, …): setting one is refused at start, naming it and what to use instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use rdkafka::ClientConfig;

/// Which kind of client a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Producer,
    /// Consumers, and admin or metadata clients (they get the common settings only).
    Consumer,
}

/// One property an operator set, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Property {
    value: String,
    /// `RDKAFKA_SASL_USERNAME`, `/etc/blog/kafka.properties:3`, …
    origin: String,
}

/// The operator's librdkafka properties, common and per role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSettings {
    common: BTreeMap<String, Property>,
    producer: BTreeMap<String, Property>,
    consumer: BTreeMap<String, Property>,
}

/// Why the operator's Kafka settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("{origin} sets {property}, which the pipeline's guarantees depend on: {instead}")]
    Protected { property: String, origin: String, instead: &'static str },
    #[error("cannot read {variable} ({path}): {reason}")]
    File { variable: String, path: PathBuf, reason: String },
    #[error("{origin}: expected name=value, got {line:?}")]
    Malformed { origin: String, line: String },
    #[error("{variable} names no property")]
    Empty { variable: String },
}

/// Properties an operator may not set, and what to do instead.
const PROTECTED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set KAFKA_BOOTSTRAP_SERVERS"),
    ("metadata.broker.list", "set KAFKA_BOOTSTRAP_SERVERS"),
    ("group.id", "set KAFKA_GROUP_ID"),
    ("isolation.level", "set KAFKA_ISOLATION_LEVEL (the relay's read-back and the sink must read alike)"),
    ("enable.idempotence", "the relay publishes with an idempotent, transactional producer"),
    ("acks", "every record is acknowledged by all in-sync replicas"),
    ("request.required.acks", "every record is acknowledged by all in-sync replicas"),
    ("transactional.id", "the relay's transactional id comes from DB1 and fences a deposed leader"),
    ("max.in.flight.requests.per.connection", "idempotent ordering depends on it"),
    ("max.in.flight", "idempotent ordering depends on it"),
    ("retries", "idempotent delivery depends on it"),
    ("message.send.max.retries", "idempotent delivery depends on it"),
    ("message.timeout.ms", "set KAFKA_DELIVERY_TIMEOUT_MS (a successor's takeover wait is computed from it)"),
    ("delivery.timeout.ms", "set KAFKA_DELIVERY_TIMEOUT_MS (a successor's takeover wait is computed from it)"),
    ("transaction.timeout.ms", "set KAFKA_DELIVERY_TIMEOUT_MS (a successor's takeover wait is computed from it)"),
    ("request.timeout.ms", "set KAFKA_DELIVERY_TIMEOUT_MS (requests time out at half of it)"),
    ("message.max.bytes", "set KAFKA_MESSAGE_MAX_BYTES (rows larger are dead-lettered, not retried)"),
    ("enable.auto.commit", "the sink commits only offsets it stored after their DB2 commit"),
    ("enable.auto.offset.store", "the sink stores an offset only after its event's DB2 commit"),
    ("auto.offset.reset", "a sink without offsets must start from the oldest record"),
    ("enable.partition.eof", "reading a topic to its end depends on it"),
];

/// Properties whose values never print.
fn is_secret(property: &str) -> bool {
    property.contains("password")
        || property.contains("secret")
        || property.contains("pem")
        || property == "ssl_key"
        || property == "sasl.oauthbearer.config"
}

const PREFIX: &str = "RDKAFKA_";
const PROPERTY_FILES: [(&str, Option<Role>); 3] = [
    ("KAFKA_PROPERTIES_FILE", None),
    ("KAFKA_PRODUCER_PROPERTIES_FILE", Some(Role::Producer)),
    ("KAFKA_CONSUMER_PROPERTIES_FILE", Some(Role::Consumer)),
];

impl ClientSettings {
    /// The settings of this process's environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::parse(std::env::vars(), |path| std::fs::read_to_string(path))
    }

    /// The settings in `vars`, reading files with `read`.
    pub fn parse(
        vars: impl IntoIterator<Item = (String, String)>,
        read: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<Self, SettingsError> {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let mut settings = Self::default();
        let read_file = |variable: &str, path: &str| {
            read(Path::new(path)).map_err(|error| SettingsError::File {
                variable: variable.to_owned(),
                path: PathBuf::from(path),
                reason: error.to_string(),
            })
        };
        for (variable, role) in PROPERTY_FILES {
            let Some(path) = vars.get(variable) else { continue };
            let content = read_file(variable, path)?;
            for (number, line) in content.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                    continue;
                }
                let origin = format!("{path}:{}", number + 1);
                let Some((name, value)) = line.split_once('=') else {
                    return Err(SettingsError::Malformed { origin, line: line.to_owned() });
                };
                settings.set(role, name.trim(), value.trim(), origin)?;
            }
        }
        for (variable, value) in &vars {
            let Some(rest) = variable.strip_prefix(PREFIX) else { continue };
            let (role, rest) = if let Some(rest) = rest.strip_prefix("PRODUCER_") {
                (Some(Role::Producer), rest)
            } else if let Some(rest) = rest.strip_prefix("CONSUMER_") {
                (Some(Role::Consumer), rest)
            } else {
                (None, rest)
            };
            let (rest, value) = match rest.strip_suffix("_FILE") {
                Some(rest) => {
                    let content = read_file(variable, value)?;
                    (rest, content.trim_end_matches(['\n', '\r']).to_owned())
                }
                None => (rest, value.clone()),
            };
            if rest.is_empty() {
                return Err(SettingsError::Empty { variable: variable.clone() });
            }
            let name = rest.to_ascii_lowercase().replace('_', ".");
            settings.set(role, &name, &value, variable.clone())?;
        }
        Ok(settings)
    }

    fn set(&mut self, role: Option<Role>, name: &str, value: &str, origin: String) -> Result<(), SettingsError> {
        if let Some((_, instead)) = PROTECTED.iter().find(|(protected, _)| *protected == name) {
            return Err(SettingsError::Protected { property: name.to_owned(), origin, instead });
        }
        let map = match role {
            None => &mut self.common,
            Some(Role::Producer) => &mut self.producer,
            Some(Role::Consumer) => &mut self.consumer,
        };
        map.insert(name.to_owned(), Property { value: value.to_owned(), origin });
        Ok(())
    }

    /// Puts the operator's properties for `role` on `config`, over what the code set.
    pub fn apply(&self, config: &mut ClientConfig, role: Role) {
        let specific = match role {
            Role::Producer => &self.producer,
            Role::Consumer => &self.consumer,
        };
        for (name, property) in self.common.iter().chain(specific) {
            config.set(name, &property.value);
        }
    }

    /// What a start-up log says of the connection: the security protocol and SASL mechanism,
    /// then every other property set, with secret values masked.
    pub fn describe(&self) -> String {
        let protocol = self.common.get("security.protocol").map_or("plaintext", |property| property.value.as_str());
        let mut parts = vec![format!("security.protocol={protocol}")];
        for (scope, map) in [("", &self.common), ("producer ", &self.producer), ("consumer ", &self.consumer)] {
            for (name, property) in map.iter().filter(|(name, _)| !scope.is_empty() || *name != "security.protocol") {
                let value = if is_secret(name) { "***" } else { property.value.as_str() };
                parts.push(format!("{scope}{name}={value}"));
            }
        }
        parts.join(" ")
    }
}

static SETTINGS: LazyLock<Result<ClientSettings, SettingsError>> = LazyLock::new(ClientSettings::from_env);

/// This process's settings (read from the environment once). Each binary calls it at start, so
/// that a protected or unreadable setting stops it there with its reason.
pub fn settings() -> Result<&'static ClientSettings, SettingsError> {
    SETTINGS.as_ref().map_err(Clone::clone)
}

/// `config` with the operator's properties for `role` on top: what every client is created from.
pub fn configured(config: &ClientConfig, role: Role) -> Result<ClientConfig, rdkafka::error::KafkaError> {
    let settings = settings().map_err(|error| rdkafka::error::KafkaError::ClientCreation(error.to_string()))?;
    let mut config = config.clone();
    settings.apply(&mut config, role);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)], files: &[(&str, &str)]) -> Result<ClientSettings, SettingsError> {
        let files: BTreeMap<String, String> =
            files.iter().map(|(path, content)| ((*path).to_owned(), (*content).to_owned())).collect();
        ClientSettings::parse(vars.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())), |path| {
            files.get(&path.display().to_string()).cloned().ok_or_else(|| std::io::ErrorKind::NotFound.into())
        })
    }

    fn applied(settings: &ClientSettings, role: Role) -> BTreeMap<String, String> {
        let mut config = ClientConfig::new();
        config.set("linger.ms", "5");
        settings.apply(&mut config, role);
        config.config_map().iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
    }

    #[test]
    fn variables_name_properties_by_one_convention_per_role() {
        let settings = parse(
            &[
                ("RDKAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                ("RDKAFKA_SASL_MECHANISMS", "SCRAM-SHA-256"),
                ("RDKAFKA_PRODUCER_COMPRESSION_TYPE", "zstd"),
                ("RDKAFKA_CONSUMER_CLIENT_RACK", "eu-west-1a"),
                ("RDKAFKA_PRODUCER_LINGER_MS", "20"),
                ("KAFKA_TOPIC", "not a property"),
            ],
            &[],
        )
        .expect("valid");
        let producer = applied(&settings, Role::Producer);
        assert_eq!(producer.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
        assert_eq!(producer.get("compression.type").map(String::as_str), Some("zstd"));
        assert_eq!(producer.get("linger.ms").map(String::as_str), Some("20"), "over the code's default");
        assert_eq!(producer.get("client.rack"), None);
        let consumer = applied(&settings, Role::Consumer);
        assert_eq!(consumer.get("client.rack").map(String::as_str), Some("eu-west-1a"));
        assert_eq!(consumer.get("compression.type"), None);
        assert_eq!(consumer.get("sasl.mechanisms").map(String::as_str), Some("SCRAM-SHA-256"));
    }

    #[test]
    fn files_give_values_and_properties_and_variables_win() {
        let settings = parse(
            &[
                ("RDKAFKA_SASL_PASSWORD_FILE", "/run/secrets/kafka"),
                ("KAFKA_PROPERTIES_FILE", "/etc/kafka.properties"),
                ("RDKAFKA_SASL_USERNAME", "relay"),
            ],
            &[
                ("/run/secrets/kafka", "s3cret\n"),
                ("/etc/kafka.properties", "# managed Kafka\nsecurity.protocol = SASL_SSL\nsasl.username=from-file\n\n"),
            ],
        )
        .expect("valid");
        let config = applied(&settings, Role::Consumer);
        assert!(config.contains_key("sasl.password"), "applied (rdkafka masks its value when read back)");
        assert_eq!(settings.common.get("sasl.password").map(|property| property.value.as_str()), Some("s3cret"));
        assert_eq!(config.get("sasl.username").map(String::as_str), Some("relay"));
        assert_eq!(config.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
        let described = settings.describe();
        assert!(described.starts_with("security.protocol=SASL_SSL "), "{described}");
        assert!(described.contains("sasl.password=***") && !described.contains("s3cret"), "{described}");
        assert!(described.contains("sasl.username=relay"), "{described}");
        assert_eq!(ClientSettings::default().describe(), "security.protocol=plaintext");
    }

    #[test]
    fn guarantee_critical_properties_are_refused_naming_where_and_what_instead() {
        let error = parse(&[("RDKAFKA_PRODUCER_ENABLE_IDEMPOTENCE", "false")], &[]).expect_err("refused");
        assert_eq!(
            error.to_string(),
            "RDKAFKA_PRODUCER_ENABLE_IDEMPOTENCE sets enable.idempotence, which the pipeline's guarantees depend on: \
             the relay publishes with an idempotent, transactional producer"
        );
        let from_file = parse(
            &[("KAFKA_CONSUMER_PROPERTIES_FILE", "/c")],
            &[("/c", "fetch.min.bytes=1\nisolation.level=read_uncommitted\n")],
        )
        .expect_err("refused");
        assert!(from_file.to_string().starts_with("/c:2 sets isolation.level"), "{from_file}");
        assert!(from_file.to_string().contains("KAFKA_ISOLATION_LEVEL"), "{from_file}");
        for (variable, _) in
            [("RDKAFKA_ACKS", ""), ("RDKAFKA_ENABLE_AUTO_OFFSET_STORE", ""), ("RDKAFKA_TRANSACTIONAL_ID", "")]
        {
            assert!(matches!(parse(&[(variable, "x")], &[]), Err(SettingsError::Protected { .. })), "{variable}");
        }
    }

    #[test]
    fn unreadable_files_and_malformed_lines_are_named() {
        let missing = parse(&[("RDKAFKA_SASL_PASSWORD_FILE", "/nope")], &[]).expect_err("refused");
        assert!(missing.to_string().starts_with("cannot read RDKAFKA_SASL_PASSWORD_FILE (/nope): "), "{missing}");
        let malformed = parse(&[("KAFKA_PROPERTIES_FILE", "/p")], &[("/p", "just words\n")]).expect_err("refused");
        assert_eq!(malformed.to_string(), "/p:1: expected name=value, got \"just words\"");
        assert!(matches!(parse(&[("RDKAFKA_", "x")], &[]), Err(SettingsError::Empty { .. })));
    }
}
