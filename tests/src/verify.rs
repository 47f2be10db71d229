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
