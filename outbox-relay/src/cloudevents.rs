//! CloudEvents, Kafka protocol binding, binary mode (`RELAY_CLOUDEVENTS=binary`): the record
//! value stays the writer's payload, untouched, and the event's attributes travel as headers —
//! `ce_specversion`, `ce_id`, `ce_type`, `ce_source`, `ce_time` and `content-type`. A consumer
//! that knows CloudEvents reads the event from any topic the relay feeds without knowing the
//! outbox; one that does not (the seed's sink) reads the plain envelope as before. Off by default.

use chrono::SecondsFormat;
use outbox::OutboxRow;

/// Whether records carry CloudEvents attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// Plain records: the relay's own headers only.
    #[default]
    Off,
    /// CloudEvents binary content mode: the attributes as `ce_*` headers.
    Binary,
}

/// The content type of a payload whose row does not say (an extra `content-type` header).
const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// What the relay stamps on every record in binary mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloudEvents {
    /// `ce_source`: the context the events happened in, a URI-reference.
    pub(crate) source: String,
}

impl CloudEvents {
    /// The six attributes of `row`'s event, as header (name, value) pairs.
    pub(crate) fn attributes(&self, row: &OutboxRow) -> [(&'static str, String); 6] {
        let content_type = row.headers.get("content-type").map_or(DEFAULT_CONTENT_TYPE, String::as_str);
        [
            ("ce_specversion", "1.0".to_owned()),
            ("ce_id", row.event_id.to_string()),
            ("ce_type", row.event_type.clone()),
            ("ce_source", self.source.clone()),
            // When the business transaction wrote the row: the event's time, not the relay's.
            ("ce_time", row.created_at.to_rfc3339_opts(SecondsFormat::Micros, true)),
            ("content-type", content_type.to_owned()),
        ]
    }
}

/// The default `ce_source`: the outbox's database, which names the service that owns it.
pub(crate) fn default_source(database: &str) -> String {
    format!("/outbox/{database}")
}

/// Checks that `value` is a URI-reference (RFC 3986): not empty, only characters a URI may hold,
/// each `%` starting an escape. Returns it, or says what is wrong.
pub fn parse_source(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("an empty source is not a URI-reference".to_owned());
    }
    let bytes = value.as_bytes();
    for (at, &byte) in bytes.iter().enumerate() {
        let allowed = byte.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&byte);
        if !allowed {
            return Err(format!(
                "{value:?} is not a URI-reference: {:?} at byte {at} must be percent-encoded",
                char::from(byte)
            ));
        }
        if byte == b'%' && !bytes.get(at + 1..at + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
            return Err(format!(
                "{value:?} is not a URI-reference: '%' at byte {at} is not followed by two hex digits"
            ));
        }
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use chrono::TimeZone as _;

    use super::*;

    /// The headers a CloudEvents binary-mode record carries.
    const HEADERS: [&str; 6] = ["ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "content-type"];

    fn row(headers: BTreeMap<String, String>) -> OutboxRow {
        OutboxRow {
            id: 1,
            event_id: uuid::Uuid::nil(),
            aggregate_type: "article".into(),
            aggregate_id: "7".into(),
            event_type: "article.published".into(),
            topic: None,
            headers,
            payload: "{}".into(),
            created_at: chrono::Utc.with_ymd_and_hms(2026, 12, 2, 10, 0, 0).single().expect("valid"),
            trace_context: HashMap::new(),
        }
    }

    #[test]
    fn every_record_gets_the_six_attributes_from_its_row() {
        let events = CloudEvents { source: "/outbox/blogdb".into() };
        let attributes = events.attributes(&row(BTreeMap::new()));
        let names: Vec<_> = attributes.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, HEADERS);
        let value = |name| attributes.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
        assert_eq!(value("ce_specversion"), Some("1.0"));
        assert_eq!(value("ce_id"), Some("00000000-0000-0000-0000-000000000000"));
        assert_eq!(value("ce_type"), Some("article.published"));
        assert_eq!(value("ce_source"), Some("/outbox/blogdb"));
        assert_eq!(value("ce_time"), Some("2026-12-02T10:00:00.000000Z"));
        assert_eq!(value("content-type"), Some("application/json"));
    }

    #[test]
    fn a_row_may_say_its_content_type() {
        let events = CloudEvents { source: "/s".into() };
        let headers = BTreeMap::from([("content-type".to_owned(), "text/plain".to_owned())]);
        let attributes = events.attributes(&row(headers));
        assert_eq!(attributes[5], ("content-type", "text/plain".to_owned()));
    }

    #[test]
    fn sources_must_be_uri_references() {
        for good in ["/outbox/blogdb", "https://blog.example/api", "urn:blog:articles", "a%20b", "//host/p?q=1#f"] {
            assert_eq!(parse_source(good).as_deref(), Ok(good));
        }
        for bad in ["", "has space", "tab\there", "50%", "%zz", "é"] {
            let error = parse_source(bad).expect_err(bad);
            assert!(error.contains("URI-reference"), "{bad}: {error}");
        }
        assert_eq!(default_source("blogdb"), "/outbox/blogdb");
        assert!(parse_source(&default_source("blog_db-1")).is_ok());
    }
}
