//! Configuration types shared by the binaries' command lines.
//!
//! A database URL carries a password, so it is wrapped: `Debug` and `Display` print it with the
//! password masked, and the raw string is only reachable through [`DatabaseUrl::expose`], which the
//! connection code alone calls.

use std::fmt;
use std::str::FromStr;

use crate::pg_tls::TlsSettings;

/// A PostgreSQL connection string (URL or `key=value` form) whose password never prints, with
/// its TLS settings (libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey`; see [`crate::pg_tls`]).
#[derive(Clone)]
pub struct DatabaseUrl {
    raw: String,
    config: tokio_postgres::Config,
    tls: TlsSettings,
    connector: postgres_openssl::MakeTlsConnector,
}

impl DatabaseUrl {
    /// The unmasked connection string, for the driver only.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The parsed driver configuration.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS connector every connection to this database uses (certificates read once, when
    /// the URL was parsed).
    pub fn tls(&self) -> postgres_openssl::MakeTlsConnector {
        self.connector.clone()
    }

    /// The connection's security, for start-up logs: `sslmode=verify-full sslrootcert=…`.
    pub fn security(&self) -> String {
        self.tls.to_string()
    }

    /// The same database, with `settings` (`name`, value) set on every session the connections
    /// open (PostgreSQL's `options`, `-c name=value`), after those the URL itself sets.
    pub fn with_session_settings(&self, settings: &[(&str, &str)]) -> Self {
        let mut config = self.config.clone();
        let mut options: Vec<String> = config.get_options().map(str::to_owned).into_iter().collect();
        options.extend(settings.iter().map(|(name, value)| format!("-c {name}={value}")));
        config.options(options.join(" "));
        Self { config, ..self.clone() }
    }

    /// A description safe for logs: the URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_password(&self.raw)
    }
}

/// Masks the password of a `postgres://user:password@host/db` URL or a `password=…` pair.
pub fn redact_password(raw: &str) -> String {
    if let Some((scheme, rest)) = raw.split_once("://") {
        if let Some((credentials, host)) = rest.rsplit_once('@')
            && let Some((user, _password)) = credentials.split_once(':')
        {
            return format!("{scheme}://{user}:***@{host}");
        }
        return raw.to_owned();
    }
    raw.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let invalid = |error: String| format!("invalid PostgreSQL connection string {}: {error}", redact_password(raw));
        let (driver_string, tls) = TlsSettings::split(raw).map_err(invalid)?;
        let mut config = driver_string.parse::<tokio_postgres::Config>().map_err(|error| invalid(error.to_string()))?;
        config.ssl_mode(tls.driver_mode());
        let connector = tls.connector().map_err(invalid)?;
        Ok(Self { raw: raw.to_owned(), config, tls, connector })
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl").field(&self.redacted()).finish()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_password() {
        let url: DatabaseUrl = "postgres://bloguser:blogpass@localhost:5432/blogdb".parse().expect("valid");
        assert_eq!(url.to_string(), "postgres://bloguser:***@localhost:5432/blogdb");
        assert!(!format!("{url:?}").contains("blogpass"));
        let pairs: DatabaseUrl = "host=localhost password=blogpass dbname=blogdb".parse().expect("valid");
        assert_eq!(pairs.to_string(), "host=localhost password=*** dbname=blogdb");
    }

    #[test]
    fn session_settings_come_after_the_urls_own_options() {
        let url: DatabaseUrl = "postgres://u@h/db?options=-c%20search_path%3Dx".parse().expect("valid");
        let limited = url.with_session_settings(&[("lock_timeout", "5s"), ("statement_timeout", "30s")]);
        assert_eq!(
            limited.config().get_options(),
            Some("-c search_path=x -c lock_timeout=5s -c statement_timeout=30s")
        );
        assert_eq!(limited.expose(), url.expose(), "the URL a user gave is unchanged");
        let plain: DatabaseUrl = "postgres://u@h/db".parse().expect("valid");
        assert_eq!(plain.with_session_settings(&[("a", "1")]).config().get_options(), Some("-c a=1"));
    }

    #[test]
    fn rejects_garbage_without_echoing_secrets() {
        let error = "postgres://u:secret@host:notaport/db".parse::<DatabaseUrl>().expect_err("invalid");
        assert!(error.contains("invalid PostgreSQL connection string"));
        assert!(!error.contains("secret"));
    }
}

/// Parses a [`DatabaseUrl`] for clap without echoing the rejected value (clap's default error
/// repeats the value, password included).
#[derive(Debug, Clone, Copy)]
pub struct DatabaseUrlParser;

impl clap::builder::TypedValueParser for DatabaseUrlParser {
    type Value = DatabaseUrl;

    fn parse_ref(
        &self,
        _command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<DatabaseUrl, clap::Error> {
        use clap::error::ErrorKind;
        let name = arg.map_or_else(|| "the database URL".to_owned(), ToString::to_string);
        let text = value
            .to_str()
            .ok_or_else(|| clap::Error::raw(ErrorKind::InvalidUtf8, format!("{name} is not valid UTF-8\n")))?;
        text.parse().map_err(|error: String| {
            clap::Error::raw(ErrorKind::ValueValidation, format!("invalid value for {name}: {error}\n"))
        })
    }
}

/// Parses the command line like `C::parse()` (`--help` and errors exit), after giving every secret
/// setting a value from a file when `<ENV>_FILE` names one: the `_FILE` convention of container
/// secrets (`DATABASE_URL_FILE=/run/secrets/db1`). A secret setting is an argument whose
/// environment values are hidden (`hide_env_values`); the file's content, without its final line
/// break, becomes its default, never shown in `--help`. Setting both `<ENV>` and `<ENV>_FILE`, or
/// naming a file that cannot be read, is an error naming the variable and the path.
pub fn parse_with_secret_files<C: clap::Parser>() -> C {
    let command = C::command();
    let mut names = Vec::new();
    secret_env_names(&command, &mut names);
    let values = match read_secret_files(&names, |name| std::env::var_os(name), |path| std::fs::read_to_string(path)) {
        Ok(values) => values,
        Err(message) => clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{message}\n")).exit(),
    };
    let mut matches = with_secret_defaults(command, &values).get_matches();
    C::from_arg_matches_mut(&mut matches).unwrap_or_else(|error| error.exit())
}

/// The environment variables of every secret argument of `command` and its subcommands.
fn secret_env_names(command: &clap::Command, names: &mut Vec<String>) {
    for arg in command.get_arguments().filter(|arg| arg.is_hide_env_values_set()) {
        if let Some(name) = arg.get_env().and_then(|name| name.to_str())
            && !names.iter().any(|known| known == name)
        {
            names.push(name.to_owned());
        }
    }
    for subcommand in command.get_subcommands() {
        secret_env_names(subcommand, names);
    }
}

/// For each of `names` whose `<NAME>_FILE` is set, the file's content.
fn read_secret_files(
    names: &[String],
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
    read: impl Fn(&std::path::Path) -> std::io::Result<String>,
) -> Result<Vec<(String, String)>, String> {
    let mut values = Vec::new();
    for name in names {
        let file_variable = format!("{name}_FILE");
        let Some(path) = var(&file_variable) else { continue };
        if var(name).is_some() {
            return Err(format!("both {name} and {file_variable} are set: use one"));
        }
        let path = std::path::PathBuf::from(path);
        let content =
            read(&path).map_err(|error| format!("cannot read {file_variable} ({}): {error}", path.display()))?;
        let value =
            content.strip_suffix('\n').map(|value| value.strip_suffix('\r').unwrap_or(value)).unwrap_or(&content);
        if value.is_empty() {
            return Err(format!("{file_variable} ({}) is empty", path.display()));
        }
        values.push((name.clone(), value.to_owned()));
    }
    Ok(values)
}

/// `command` with `values` as the hidden defaults of the arguments reading those variables.
fn with_secret_defaults(command: clap::Command, values: &[(String, String)]) -> clap::Command {
    if values.is_empty() {
        return command;
    }
    command
        .mut_args(|arg| {
            let secret = arg
                .get_env()
                .and_then(|name| name.to_str())
                .and_then(|name| values.iter().find(|(known, _)| known == name).map(|(_, value)| value.clone()));
            match secret {
                // Read once per process; clap keeps defaults as `&'static str`.
                Some(value) if arg.is_hide_env_values_set() => {
                    arg.default_value(&*String::leak(value)).hide_default_value(true).required(false)
                }
                _ => arg,
            }
        })
        .mut_subcommands(|subcommand| with_secret_defaults(subcommand, values))
}

#[cfg(test)]
mod secret_file_tests {
    use super::*;
    use clap::{CommandFactory as _, FromArgMatches as _, Parser};

    #[derive(Debug, Parser)]
    struct Demo {
        #[arg(long, env = "DEMO_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[arg(long, env = "DEMO_TOPIC", default_value = "articles")]
        topic: String,
        #[command(subcommand)]
        command: Option<DemoCommand>,
    }

    #[derive(Debug, clap::Subcommand)]
    enum DemoCommand {
        Verify {
            #[arg(long, env = "DEMO_PRIMARY_URL", hide_env_values = true)]
            primary: String,
        },
    }

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> + 'a {
        move |name| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| value.into())
    }

    #[test]
    fn only_hidden_settings_are_secrets_and_subcommands_count() {
        let mut names = Vec::new();
        secret_env_names(&Demo::command(), &mut names);
        assert_eq!(names, ["DEMO_DATABASE_URL", "DEMO_PRIMARY_URL"]);
    }

    #[test]
    fn a_file_gives_the_value_without_its_line_break_and_never_shows_in_help() {
        let names = vec!["DEMO_DATABASE_URL".to_owned()];
        let read = |_: &std::path::Path| Ok("postgres://u:s3cret@h/db\n".to_owned());
        let values =
            read_secret_files(&names, env(&[("DEMO_DATABASE_URL_FILE", "/run/secrets/db")]), read).expect("read");
        assert_eq!(values, [("DEMO_DATABASE_URL".to_owned(), "postgres://u:s3cret@h/db".to_owned())]);
        let mut command = with_secret_defaults(Demo::command(), &values);
        let help = command.render_long_help().to_string();
        assert!(!help.contains("s3cret"), "{help}");
        let parsed = Demo::from_arg_matches(&command.try_get_matches_from(["demo"]).expect("parses")).expect("valid");
        assert_eq!(parsed.database_url, "postgres://u:s3cret@h/db");
        assert_eq!(parsed.topic, "articles");
    }

    #[test]
    fn both_set_an_unreadable_file_or_an_empty_one_is_refused_by_name() {
        let names = vec!["DEMO_DATABASE_URL".to_owned()];
        let never = |_: &std::path::Path| -> std::io::Result<String> { Err(std::io::ErrorKind::NotFound.into()) };
        let both = env(&[("DEMO_DATABASE_URL", "x"), ("DEMO_DATABASE_URL_FILE", "/f")]);
        assert_eq!(
            read_secret_files(&names, both, never),
            Err("both DEMO_DATABASE_URL and DEMO_DATABASE_URL_FILE are set: use one".to_owned())
        );
        let missing =
            read_secret_files(&names, env(&[("DEMO_DATABASE_URL_FILE", "/no/file")]), never).expect_err("refused");
        assert!(missing.starts_with("cannot read DEMO_DATABASE_URL_FILE (/no/file): "), "{missing}");
        let empty = read_secret_files(&names, env(&[("DEMO_DATABASE_URL_FILE", "/f")]), |_: &std::path::Path| {
            Ok("\n".to_owned())
        });
        assert_eq!(empty, Err("DEMO_DATABASE_URL_FILE (/f) is empty".to_owned()));
    }
}

/// A secret (a token) whose value never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares with `candidate` in time independent of where they differ.
    pub fn matches(&self, candidate: &str) -> bool {
        let (expected, given) = (self.0.as_bytes(), candidate.as_bytes());
        let mut difference = expected.len() ^ given.len();
        for (index, byte) in expected.iter().enumerate() {
            difference |= usize::from(byte ^ given.get(index).copied().unwrap_or(0));
        }
        difference == 0
    }
}

impl FromStr for Secret {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.trim().is_empty() {
            return Err("must not be empty".to_owned());
        }
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn compares_whole_values_and_never_prints() {
        let secret: Secret = "s3cret".parse().expect("valid");
        assert!(secret.matches("s3cret"));
        assert!(!secret.matches("s3cre"));
        assert!(!secret.matches("s3cret!"));
        assert!(!secret.matches(""));
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert!("  ".parse::<Secret>().is_err());
    }
}
