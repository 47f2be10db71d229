//! Checks what the topic holds against what the API acknowledged: each change exactly once, and
//! each article's changes in version order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use events::ArticleEvent;

/// The verdict on a topic.
#[derive(Debug, Default, Clone)]
pub struct TopicReport {
    /// Records read.
    pub records: usize,
    /// Records that are pipeline events (carry an `event_id` header).
    pub events: usize,
    /// Events whose `(article, version)` or event id was already seen.
    pub duplicates: usize,
    /// Acknowledged changes absent from the topic.
    pub missing: Vec<(i64, i64)>,
    /// Events in the topic after an event of the same article with an equal or higher version.
    pub order_violations: usize,
    /// Events the API never acknowledged (e.g. written before a crash the client did not see).
    pub unacknowledged: usize,
}

impl TopicReport {
    pub fn is_clean(&self) -> bool {
        self.duplicates == 0 && self.missing.is_empty() && self.order_violations == 0
    }
}

/// Compares `records` (in partition, offset order) with the acknowledged `expected` changes.
pub fn check_topic(records: &[blogctl::Record], expected: &BTreeSet<(i64, i64)>) -> TopicReport {
    let mut report = TopicReport { records: records.len(), ..TopicReport::default() };
    let mut seen_changes: HashMap<(i64, i64), usize> = HashMap::new();
    let mut seen_ids: HashMap<String, usize> = HashMap::new();
    let mut last_version: BTreeMap<i64, i64> = BTreeMap::new();
    for record in records {
        let Some(event_id) = record.header(kafka_kit::EVENT_ID_HEADER) else {
            continue;
        };
        let Ok(event) = serde_json::from_slice::<ArticleEvent>(record.value.as_deref().unwrap_or_default()) else {
            continue;
        };
        report.events += 1;
        let change = (event.data.id, event.data.version);
        let change_count = seen_changes.entry(change).or_default();
        *change_count += 1;
        let id_count = seen_ids.entry(event_id.to_owned()).or_default();
        *id_count += 1;
        if *change_count > 1 || *id_count > 1 {
            report.duplicates += 1;
        }
        if !expected.contains(&change) {
            report.unacknowledged += 1;
        }
        if let Some(&previous) = last_version.get(&change.0)
            && previous >= change.1
        {
            report.order_violations += 1;
        }
        last_version.insert(change.0, change.1);
    }
    report.missing = expected.iter().filter(|change| !seen_changes.contains_key(change)).copied().collect();
    report
}

/// The verdict on the chain's second hop: one `notification.requested` per `article.published`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// `article.published` events on the articles topic (by event id).
    pub published: usize,
    /// `notification.requested` records on the notifications topic.
    pub notifications: usize,
    /// Notifications beyond the first for one published event (by `source_event_id`), or with an
    /// event id already seen.
    pub duplicates: usize,
    /// Published events without a notification.
    pub missing: Vec<String>,
    /// Notifications that answer no published event on the topic, or name another article.
    pub unexpected: usize,
}

impl ChainReport {
    pub fn is_clean(&self) -> bool {
        self.duplicates == 0 && self.missing.is_empty() && self.unexpected == 0
    }
}

/// Compares the notifications topic with the `article.published` events of the articles topic.
pub fn check_chain(articles: &[blogctl::Record], notifications: &[blogctl::Record]) -> ChainReport {
    let mut published: BTreeMap<String, i64> = BTreeMap::new();
    for record in articles {
        let Some(event_id) = record.header(kafka_kit::EVENT_ID_HEADER) else {
            continue;
        };
        if let Ok(event) = serde_json::from_slice::<ArticleEvent>(record.value.as_deref().unwrap_or_default())
            && event.event_type == events::EventType::Published
        {
            published.insert(event_id.to_owned(), event.data.id);
        }
    }
    let mut report = ChainReport { published: published.len(), ..ChainReport::default() };
    let (mut answered, mut ids): (HashMap<String, usize>, HashMap<String, usize>) = Default::default();
    for record in notifications {
        let Ok(event) =
            serde_json::from_slice::<events::NotificationRequested>(record.value.as_deref().unwrap_or_default())
        else {
            report.unexpected += 1;
            continue;
        };
        report.notifications += 1;
        let answers = answered.entry(event.source_event_id.clone()).or_default();
        *answers += 1;
        let seen = ids.entry(event.event_id.clone()).or_default();
        *seen += 1;
        if *answers > 1 || *seen > 1 {
            report.duplicates += 1;
        }
        if published.get(&event.source_event_id) != Some(&event.article_id) {
            report.unexpected += 1;
        }
    }
    report.missing = published.keys().filter(|event_id| !answered.contains_key(*event_id)).cloned().collect();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of the pipeline: `event_id` header, the envelope of `(article, version)`.
    fn record(partition: i32, offset: i64, event_id: &str, article: i64, version: i64) -> blogctl::Record {
        let mut event: ArticleEvent = serde_json::from_str(events::SEED_HAND_WRITTEN_EVENT).expect("the seed event");
        (event.data.id, event.data.version) = (article, version);
        blogctl::Record {
            partition,
            offset,
            timestamp_ms: None,
            key: Some(article.to_string()),
            headers: vec![(kafka_kit::EVENT_ID_HEADER.to_owned(), event_id.to_owned())],
            value: Some(serde_json::to_vec(&event).expect("serialises")),
        }
    }

    #[test]
    fn a_clean_topic_passes_and_foreign_records_are_ignored() {
        let mut foreign = record(0, 2, "x", 9, 9);
        foreign.headers.clear();
        let records = [record(0, 0, "a", 1, 1), record(1, 0, "b", 2, 1), record(0, 1, "c", 1, 2), foreign];
        let report = check_topic(&records, &BTreeSet::from([(1, 1), (1, 2), (2, 1)]));
        assert!(report.is_clean(), "{report:?}");
        assert_eq!((report.records, report.events, report.unacknowledged), (4, 3, 0));
    }

    #[test]
    fn duplicates_gaps_and_reordering_are_each_caught() {
        let duplicated = [record(0, 0, "a", 1, 1), record(0, 1, "a", 1, 1)];
        assert_eq!(check_topic(&duplicated, &BTreeSet::from([(1, 1)])).duplicates, 1);
        let missing = check_topic(&[record(0, 0, "a", 1, 1)], &BTreeSet::from([(1, 1), (1, 2)]));
        assert_eq!(missing.missing, [(1, 2)]);
        let reordered = [record(0, 0, "b", 1, 2), record(0, 1, "a", 1, 1)];
        let report = check_topic(&reordered, &BTreeSet::from([(1, 1), (1, 2)]));
        assert_eq!(report.order_violations, 1);
        assert!(!report.is_clean());
        let unacknowledged = check_topic(&[record(0, 0, "a", 1, 1)], &BTreeSet::new());
        assert_eq!(unacknowledged.unacknowledged, 1, "written but never acknowledged to the client");
    }

    /// An `article.published` of `article`, and a notification answering `source` for `article`.
    fn published(event_id: &str, article: i64) -> blogctl::Record {
        let mut record = record(0, 0, event_id, article, 2);
        let text = String::from_utf8(record.value.take().unwrap_or_default()).unwrap_or_default();
        record.value = Some(text.replace("article.created", "article.published").into_bytes());
        record
    }

    fn notification(event_id: &str, source: &str, article: i64) -> blogctl::Record {
        let event = events::NotificationRequested {
            event_id: event_id.to_owned(),
            event_type: events::NotificationRequested::EVENT_TYPE.to_owned(),
            timestamp: chrono::Utc::now(),
            article_id: article,
            author: "a".into(),
            title: "t".into(),
            source_event_id: source.to_owned(),
        };
        let value = serde_json::to_vec(&event).unwrap_or_default();
        blogctl::Record { value: Some(value), ..record(0, 0, event_id, article, 1) }
    }

    #[test]
    fn the_chain_wants_one_notification_per_published_event() {
        let articles = [published("p1", 1), published("p2", 2), record(0, 2, "c3", 3, 1)];
        let clean = check_chain(&articles, &[notification("n1", "p1", 1), notification("n2", "p2", 2)]);
        assert!(clean.is_clean(), "{clean:?}");
        assert_eq!((clean.published, clean.notifications), (2, 2), "a creation asks for nothing");
        let twice = check_chain(&articles, &[notification("n1", "p1", 1), notification("n9", "p1", 1)]);
        assert_eq!((twice.duplicates, twice.missing.clone()), (1, vec!["p2".to_owned()]), "{twice:?}");
        let wrong = check_chain(&articles, &[notification("n1", "p1", 2), notification("n2", "nope", 2)]);
        assert_eq!(wrong.unexpected, 2, "{wrong:?}");
    }
}
