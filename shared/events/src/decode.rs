//! Turns a record of the `articles` topic into an event, or says why it is poison: every consumer
//! of the topic (the replica sink, the notifier) reads it the same way.
//!
//! The event id is the `event_id` field of the value, else the `event_id` header, else the md5 hex
//! of the raw value — so the same hand-written event produced twice is recognised as one.

use crate::ArticleEvent;
use md5::{Digest, Md5};

/// An event ready to apply.
#[derive(Debug, Clone)]
pub struct DecodedEvent {
    pub event_id: String,
    pub event: ArticleEvent,
}

/// Why a record cannot be applied; such records are skipped (and counted), never retried.
#[derive(Debug, thiserror::Error)]
pub enum Poison {
    #[error("record has no value")]
    NoValue,
    #[error("value is not valid UTF-8")]
    NotUtf8,
    #[error("value is not a valid article event: {0}")]
    Invalid(#[from] serde_json::Error),
    #[error("event id is longer than 255 characters")]
    EventIdTooLong,
}

impl Poison {
    /// A short label for the metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoValue => "no_value",
            Self::NotUtf8 => "not_utf8",
            Self::Invalid(_) => "invalid_event",
            Self::EventIdTooLong => "event_id_too_long",
        }
    }
}

pub fn decode(value: Option<&[u8]>, header_event_id: Option<&str>) -> Result<DecodedEvent, Poison> {
    let value = value.ok_or(Poison::NoValue)?;
    let text = std::str::from_utf8(value).map_err(|_| Poison::NotUtf8)?;
    let event: ArticleEvent = serde_json::from_str(text)?;
    let event_id = event
        .event_id
        .clone()
        .or_else(|| header_event_id.map(str::to_owned))
        .unwrap_or_else(|| format!("{:x}", Md5::digest(value)));
    if event_id.len() > 255 {
        return Err(Poison::EventIdTooLong);
    }
    Ok(DecodedEvent { event_id, event })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_EVENT: &[u8] = crate::SEED_HAND_WRITTEN_EVENT.as_bytes();

    #[test]
    fn hand_written_event_gets_the_md5_of_its_value() {
        let decoded = decode(Some(SEED_EVENT), None).expect("valid");
        assert_eq!(decoded.event_id, format!("{:x}", Md5::digest(SEED_EVENT)));
        assert_eq!(decoded.event_id.len(), 32);
        assert_eq!(decode(Some(SEED_EVENT), None).expect("valid").event_id, decoded.event_id);
    }

    #[test]
    fn body_event_id_wins_over_header() {
        let with_id = String::from_utf8_lossy(SEED_EVENT).replacen('{', r#"{"event_id":"abc","#, 1);
        assert_eq!(decode(Some(with_id.as_bytes()), Some("header")).expect("valid").event_id, "abc");
        assert_eq!(decode(Some(SEED_EVENT), Some("header")).expect("valid").event_id, "header");
    }

    #[test]
    fn poison_is_classified() {
        assert!(matches!(decode(None, None), Err(Poison::NoValue)));
        assert!(matches!(decode(Some(b"\xff\xfe"), None), Err(Poison::NotUtf8)));
        assert!(matches!(decode(Some(b"not json"), None), Err(Poison::Invalid(_))));
        let unknown_type = String::from_utf8_lossy(SEED_EVENT).replace("article.created", "article.exploded");
        assert!(matches!(decode(Some(unknown_type.as_bytes()), None), Err(Poison::Invalid(_))));
    }
}
