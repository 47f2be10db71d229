//! Configuration types shared by the binaries' command lines.
//!
//! A database URL carries a password, so it is wrapped: `Debug` and `Display` print it with the
//! password masked, and the raw string is only reachable through [`DatabaseUrl::expose`], which the
//! connection code alone calls.

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL connection string (URL or `key=value` form) whose password never prints.
#[derive(Clone)]
pub struct DatabaseUrl {
    raw: String,
    config: tokio_postgres::Config,
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

    /// The same database, with `settings` (`name`, value) set on every session the connections
    /// open (PostgreSQL's `options`, `-c name=value`), after those the URL itself sets.
    pub fn with_session_settings(&self, settings: &[(&str, &str)]) -> Self {
        let mut config = self.config.clone();
        let mut options: Vec<String> = config.get_options().map(str::to_owned).into_iter().collect();
        options.extend(settings.iter().map(|(name, value)| format!("-c {name}={value}")));
        config.options(options.join(" "));
        Self { raw: self.raw.clone(), config }
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
        let config = raw
            .parse::<tokio_postgres::Config>()
            .map_err(|error| format!("invalid PostgreSQL connection string {}: {error}", redact_password(raw)))?;
        Ok(Self { raw: raw.to_owned(), config })
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
