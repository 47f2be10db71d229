//! The article and the event envelope published on the `articles` topic.
//!
//! The envelope is the seed guide's (`event_type`, `timestamp`, `data`) plus `event_id` (unique per
//! outbox row) and `data.version` (the article's version in DB1, so the replica can refuse stale
//! events). Events typed by hand in the seed's exact format — naive timestamps, no `event_id`, no
//! `version` — must still decode, so both are optional on the way in.

pub mod decode;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Whether an article is visible to readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ArticleStatus {
    Draft,
    Published,
}

impl ArticleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Published => "published",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "draft" => Some(Self::Draft),
            "published" => Some(Self::Published),
            _ => None,
        }
    }
}

/// An article, as the API returns it and as events carry it in `data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Article {
    pub id: i64,
    pub title: String,
    pub content: String,
    pub author: String,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default = "default_status")]
    pub status: ArticleStatus,
    #[serde(default)]
    pub views_count: i64,
    #[serde(with = "timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "timestamp")]
    pub updated_at: DateTime<Utc>,
    #[serde(default, with = "optional_timestamp")]
    pub published_at: Option<DateTime<Utc>>,
    /// DB1's version of the article; 0 when an event does not say (hand-written events).
    #[serde(default)]
    pub version: i64,
}

fn default_status() -> ArticleStatus {
    ArticleStatus::Draft
}

/// The columns of `articles` that [`Article::from_row`] reads, as a literal for `concat!`. Both
/// databases share this layout, so every query returning articles selects it.
#[macro_export]
macro_rules! article_columns {
    () => {
        "id, title, content, author, category, tags, status, views_count, created_at, updated_at, published_at, version"
    };
}

#[cfg(feature = "postgres")]
impl Article {
    /// Reads a row selected with [`article_columns!`], by column name.
    pub fn from_row(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        let status: String = row.try_get("status")?;
        Ok(Self {
            id: row.try_get("id")?,
            title: row.try_get("title")?,
            content: row.try_get("content")?,
            author: row.try_get("author")?,
            category: row.try_get("category")?,
            tags: row.try_get("tags")?,
            // The CHECK constraint in DB1 only admits the two values; anything else in a replica
            // written by hand reads as a draft rather than failing the whole query.
            status: ArticleStatus::parse(&status).unwrap_or(ArticleStatus::Draft),
            views_count: row.try_get("views_count")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            published_at: row.try_get("published_at")?,
            version: row.try_get("version")?,
        })
    }
}

/// The seed's four kinds of article change, and the snapshot an operator enqueues to re-seed a
/// replica (`blogctl snapshot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "article.created")]
    Created,
    #[serde(rename = "article.updated")]
    Updated,
    #[serde(rename = "article.published")]
    Published,
    #[serde(rename = "article.deleted")]
    Deleted,
    /// The article as DB1 holds it, not a change: applied as an upsert under the version guard,
    /// so it never overwrites a newer change nor resurrects a newer deletion.
    #[serde(rename = "article.snapshot")]
    Snapshot,
}

impl EventType {
    /// The changes a writer of articles (the API) publishes: the seed's four types.
    pub const CHANGES: [EventType; 4] = [Self::Created, Self::Updated, Self::Published, Self::Deleted];
    /// Every type a consumer of the topic meets.
    pub const ALL: [EventType; 5] = [Self::Created, Self::Updated, Self::Published, Self::Deleted, Self::Snapshot];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "article.created",
            Self::Updated => "article.updated",
            Self::Published => "article.published",
            Self::Deleted => "article.deleted",
            Self::Snapshot => "article.snapshot",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == value)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The record value on the `articles` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArticleEvent {
    /// Unique per outbox row; absent from hand-written events (the sink then uses an md5 of the value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub event_type: EventType,
    #[serde(with = "timestamp")]
    pub timestamp: DateTime<Utc>,
    pub data: Article,
}

impl ArticleEvent {
    /// The outbox's `aggregate_type` of article events.
    pub const AGGREGATE_TYPE: &'static str = "article";
}

/// The record value on the `notifications` topic: the notifier asks for the email that tells
/// readers an article was published. Flat, as the seed's chain events are (`{"order_id": 42}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRequested {
    pub event_id: String,
    /// Always [`NotificationRequested::EVENT_TYPE`].
    pub event_type: String,
    #[serde(with = "timestamp")]
    pub timestamp: DateTime<Utc>,
    pub article_id: i64,
    pub author: String,
    pub title: String,
    /// The `article.published` event this notification answers.
    pub source_event_id: String,
}

impl NotificationRequested {
    pub const EVENT_TYPE: &'static str = "notification.requested";
    /// The outbox's `aggregate_type` of notifications (their aggregate id is the article's).
    pub const AGGREGATE_TYPE: &'static str = "notification";
}

/// The hand-written event of the seed guide's idempotence test: no `event_id`, no `version`, naive
/// timestamps. Every consumer of the topic must still accept it.
pub const SEED_HAND_WRITTEN_EVENT: &str = r#"{"event_type":"article.created","timestamp":"2024-12-02T10:00:00","data":{"id":999,"title":"Duplicate Test","content":"Testing idempotency","author":"Test","category":"test","tags":[],"status":"draft","views_count":0,"created_at":"2024-12-02T10:00:00","updated_at":"2024-12-02T10:00:00","published_at":null}}"#;

/// Timestamps are written as UTC with microseconds (`2024-12-02T10:30:45.123456Z`), PostgreSQL's
/// precision, so a value survives DB1 → JSON → DB2 unchanged. On the way in, RFC 3339 with any
/// offset is accepted, and so are the seed's naive timestamps, read as UTC.
pub mod timestamp {
    use super::*;

    pub fn format(value: &DateTime<Utc>) -> String {
        value.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    }

    pub fn parse(value: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(value)
            .map(|parsed| parsed.with_timezone(&Utc))
            .ok()
            .or_else(|| NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|naive| naive.and_utc()))
    }

    pub fn serialize<S: Serializer>(value: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp {text:?}")))
    }
}

/// [`timestamp`] for nullable columns.
pub mod optional_timestamp {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => timestamp::serialize(value, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(None),
            Some(text) => timestamp::parse(&text)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp {text:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_seed_hand_written_event() {
        let event: ArticleEvent = serde_json::from_str(SEED_HAND_WRITTEN_EVENT).expect("seed event decodes");
        assert_eq!(event.event_type, EventType::Created);
        assert_eq!(event.event_id, None);
        assert_eq!(event.data.id, 999);
        assert_eq!(event.data.version, 0);
        assert_eq!(timestamp::format(&event.data.created_at), "2024-12-02T10:00:00.000000Z");
    }

    #[test]
    fn round_trips_microsecond_timestamps() {
        let parsed = timestamp::parse("2024-12-02T10:30:45.123456").expect("naive");
        assert_eq!(timestamp::format(&parsed), "2024-12-02T10:30:45.123456Z");
        let offset = timestamp::parse("2024-12-02T12:30:45.123456+02:00").expect("offset");
        assert_eq!(offset, parsed);
        assert!(timestamp::parse("yesterday").is_none());
    }

    #[test]
    fn event_types_have_the_seed_names() {
        for kind in EventType::ALL {
            let json = serde_json::to_string(&kind).expect("serializes");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventType::parse("article.exploded"), None);
    }
}
