//! Reading the topic back: every partition from its checkpoint to its end, collecting the event
//! ids of our records. Rows whose events are found there were published by an earlier session and
//! are settled without being published again.
//!
//! The read never guesses. It stops where the broker says a partition ends (end-of-partition
//! event, at the isolation level the consumers use), so holes in offsets — transaction markers, aborted records, another
//! producer's open transaction — neither stall it nor hide a record. And it checks that the log it
//! reads is the one it settled before: a checkpoint beyond the log's end, or a last settled record
//! that is no longer at its offset, means the log was lost or replaced ([`Finding`]); the read then
//! covers the whole partition as it is now, so the rows that are not on it are published again,
//! and the relay raises an alarm. A checkpoint below the log's start means records were removed by
//! retention before they were settled: rows of theirs still in the outbox will be published again,
//! and the relay says so.
//!
//! The decisions are plain functions over a small [`Log`] trait, so that logs a real broker cannot
//! produce on demand are unit-tested against a fake one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_kit::{EVENT_ID_HEADER, EpochWatch, ReadBackError};
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message as _;
use uuid::Uuid;

use crate::error::RelayError;

/// How long a read-back may take.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a partition's settled records end, as `relay_checkpoints` keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Checkpoint {
    /// The offset after the settled records: the next read starts here.
    pub(crate) next_offset: i64,
    /// The last of our records settled in the partition (offset, event id), if known.
    pub(crate) last: Option<(i64, Uuid)>,
}

/// One record as the read-back sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// Our event id, if the record carries one (records produced by others do not).
    pub(crate) event_id: Option<Uuid>,
    /// The relay epoch that published it, if it says.
    pub(crate) epoch: Option<i64>,
}

/// The log as the read-back needs it.
pub(crate) trait Log {
    /// The topic's partitions; none when the topic does not exist.
    fn partitions(&mut self) -> Result<Vec<i32>, ReadBackError>;
    /// Per partition of `partitions`, the first offset still in it and the offset where
    /// reading it ends.
    fn bounds(&mut self, partitions: &[i32]) -> Result<BTreeMap<i32, (i64, i64)>, ReadBackError>;
    /// Reads each partition of `ranges` from its first offset to its end (`(from, end)`).
    fn read(
        &mut self,
        ranges: &BTreeMap<i32, (i64, i64)>,
        on_record: &mut dyn FnMut(Seen),
    ) -> Result<(), ReadBackError>;
}

/// What a read-back noticed about a partition's log, beyond the records on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finding {
    /// The checkpoint is beyond the log's end: the log was lost (topic deleted and recreated,
    /// broker data wiped, unclean leader election).
    AheadOfLog { checkpoint: i64, end: i64 },
    /// The last settled record is not at its offset any more: the log was replaced and the new
    /// one has grown past the old checkpoint.
    Replaced { offset: i64, expected: Uuid, found: Option<Uuid> },
    /// Records between the checkpoint and the log's start were removed by retention before they
    /// were settled; outbox rows of theirs, if any, are taken for unpublished.
    Truncated { checkpoint: i64, start: i64 },
}

/// A record written by a deposed leader after its successor's records (see [`EpochWatch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StaleRecord {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) event_id: Option<Uuid>,
    pub(crate) epoch: i64,
    pub(crate) newer_epoch: i64,
}

/// What a read-back saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ReadBack {
    /// Event ids of the records that carry our header.
    pub(crate) found: Vec<Uuid>,
    /// Per partition, where the read ended: the new checkpoints.
    pub(crate) ends: BTreeMap<i32, Checkpoint>,
    /// Records read, ours or not.
    pub(crate) records: u64,
    /// Per partition, what was noticed about its log.
    pub(crate) findings: Vec<(i32, Finding)>,
    pub(crate) stale: Vec<StaleRecord>,
}

/// How one partition is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    from: i64,
    end: i64,
    /// The last settled record to find again at its offset.
    verify: Option<(i64, Uuid)>,
    finding: Option<Finding>,
}

/// Decides where to read `partition` from, given its checkpoint and its bounds.
fn plan(checkpoint: Option<&Checkpoint>, start: i64, end: i64) -> Plan {
    let Some(checkpoint) = checkpoint else {
        return Plan { from: start, end, verify: None, finding: None };
    };
    let next = checkpoint.next_offset;
    if next > end {
        return Plan { from: start, end, verify: None, finding: Some(Finding::AheadOfLog { checkpoint: next, end }) };
    }
    if next < start {
        return Plan { from: start, end, verify: None, finding: Some(Finding::Truncated { checkpoint: next, start }) };
    }
    match checkpoint.last {
        // Read from the last settled record on, to see that it is still there.
        Some((offset, event_id)) if offset >= start && offset < next => {
            Plan { from: offset, end, verify: Some((offset, event_id)), finding: None }
        }
        _ => Plan { from: next, end, verify: None, finding: None },
    }
}

/// Reads `log` from `checkpoints` (partitions without one from their start) to the end.
pub(crate) fn read_back_log(
    log: &mut dyn Log,
    checkpoints: &BTreeMap<i32, Checkpoint>,
) -> Result<ReadBack, ReadBackError> {
    let started = Instant::now();
    let mut plans = BTreeMap::new();
    let partitions = log.partitions()?;
    let listed = started.elapsed();
    for (partition, (start, end)) in log.bounds(&partitions)? {
        plans.insert(partition, plan(checkpoints.get(&partition), start, end));
    }
    let bounded = started.elapsed();
    let mut seen = read_plans(log, &plans)?;
    tracing::debug!(?listed, ?bounded, read = ?started.elapsed(), "read-back phases");
    // A last settled record not found at its offset: this is another log. Read it all.
    let replaced: BTreeMap<i32, Finding> = plans
        .iter()
        .filter_map(|(&partition, plan)| {
            let (offset, expected) = plan.verify?;
            let at = seen.get(&partition).and_then(|records| records.iter().find(|record| record.offset >= offset));
            let found = at.filter(|record| record.offset == offset).and_then(|record| record.event_id);
            (found != Some(expected)).then_some((partition, Finding::Replaced { offset, expected, found }))
        })
        .collect();
    if !replaced.is_empty() {
        let mut again = BTreeMap::new();
        let bounds = log.bounds(&replaced.keys().copied().collect::<Vec<_>>())?;
        for (&partition, &finding) in &replaced {
            let (start, end) = bounds[&partition];
            again.insert(partition, Plan { from: start, end, verify: None, finding: Some(finding) });
            plans.insert(partition, Plan { from: start, end, verify: None, finding: Some(finding) });
        }
        seen.extend(read_plans(log, &again)?);
    }
    let mut read_back = ReadBack::default();
    let mut epochs = EpochWatch::default();
    for (&partition, plan) in &plans {
        if let Some(finding) = plan.finding {
            read_back.findings.push((partition, finding));
        }
        let records = seen.remove(&partition).unwrap_or_default();
        // Without a record of ours on this read, the last settled one stays the one to look for,
        // unless it is gone with a lost log or below the log's start.
        let carried = plan.finding.is_none().then(|| checkpoints.get(&partition).and_then(|c| c.last)).flatten();
        let mut end = Checkpoint { next_offset: plan.end, last: carried };
        for record in records {
            read_back.records += 1;
            if let Some(epoch) = record.epoch
                && let Some(newer_epoch) = epochs.see(partition, epoch)
            {
                let stale =
                    StaleRecord { partition, offset: record.offset, event_id: record.event_id, epoch, newer_epoch };
                read_back.stale.push(stale);
            }
            if let Some(event_id) = record.event_id {
                read_back.found.push(event_id);
                end.last = Some((record.offset, event_id));
            }
            end.next_offset = end.next_offset.max(record.offset + 1);
        }
        read_back.ends.insert(partition, end);
    }
    Ok(read_back)
}

/// Reads the partitions of `plans` that have something to read; their records in offset order.
fn read_plans(log: &mut dyn Log, plans: &BTreeMap<i32, Plan>) -> Result<BTreeMap<i32, Vec<Seen>>, ReadBackError> {
    let ranges: BTreeMap<i32, (i64, i64)> = plans
        .iter()
        .filter(|(_, plan)| plan.from < plan.end)
        .map(|(&partition, plan)| (partition, (plan.from, plan.end)))
        .collect();
    let mut seen: BTreeMap<i32, Vec<Seen>> = BTreeMap::new();
    log.read(&ranges, &mut |record| seen.entry(record.partition).or_default().push(record))?;
    for records in seen.values_mut() {
        records.sort_by_key(|record| record.offset);
    }
    Ok(seen)
}

/// The topic on a broker, read with [`kafka_kit::reader`].
struct KafkaLog {
    consumer: BaseConsumer,
    topic: String,
    deadline: Instant,
}

impl Log for KafkaLog {
    fn partitions(&mut self) -> Result<Vec<i32>, ReadBackError> {
        match kafka_kit::topic_partitions(&self.consumer, &self.topic) {
            // A topic that does not exist holds no record yet.
            Err(ReadBackError::UnknownTopic(_)) => Ok(Vec::new()),
            other => other,
        }
    }

    /// Asks for every partition's bounds side by side: each is a round trip of its own.
    fn bounds(&mut self, partitions: &[i32]) -> Result<BTreeMap<i32, (i64, i64)>, ReadBackError> {
        let (consumer, topic) = (&self.consumer, self.topic.as_str());
        std::thread::scope(|scope| {
            let asking: Vec<_> = partitions
                .iter()
                .map(|&partition| {
                    scope.spawn(move || (partition, kafka_kit::partition_bounds(consumer, topic, partition)))
                })
                .collect();
            asking
                .into_iter()
                .map(|asked| {
                    let (partition, bounds) = asked.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    Ok((partition, bounds?))
                })
                .collect()
        })
    }

    fn read(
        &mut self,
        ranges: &BTreeMap<i32, (i64, i64)>,
        on_record: &mut dyn FnMut(Seen),
    ) -> Result<(), ReadBackError> {
        kafka_kit::read_partitions(&self.consumer, &self.topic, ranges, self.deadline, |message| {
            on_record(Seen {
                partition: message.partition(),
                offset: message.offset(),
                event_id: kafka_kit::header_str(message, EVENT_ID_HEADER).and_then(|value| Uuid::parse_str(value).ok()),
                epoch: kafka_kit::relay_epoch(message),
            });
        })
    }
}

/// The consumer read-backs use. A standby connects one ahead ([`Reader::connected`]), so that
/// the read-back of a takeover does not pay for a connection and its first metadata request; a
/// reader is used for every topic of a reconciliation, and dropped off the relay's way (a
/// consumer's destruction takes ~100 ms of librdkafka's teardown).
pub(crate) struct Reader {
    bootstrap_servers: String,
    isolation: kafka_kit::Isolation,
    consumer: Option<BaseConsumer>,
}

impl Reader {
    /// A reader that connects on its first read-back.
    pub(crate) fn new(bootstrap_servers: String, isolation: kafka_kit::Isolation) -> Self {
        Self { bootstrap_servers, isolation, consumer: None }
    }

    /// A reader connected now, having asked the broker about `topic` (a failure only leaves the
    /// connecting to the first read-back, which reports it).
    pub(crate) async fn connected(bootstrap_servers: String, isolation: kafka_kit::Isolation, topic: String) -> Self {
        let servers = bootstrap_servers.clone();
        let consumer = tokio::task::spawn_blocking(move || {
            let consumer = kafka_kit::reader(&servers, READER_GROUP, isolation).ok()?;
            if let Err(error) = kafka_kit::topic_partitions(&consumer, &topic) {
                tracing::debug!(%error, topic, "the read-back consumer connected ahead could not read the topic's metadata yet");
            }
            Some(consumer)
        })
        .await
        .ok()
        .flatten();
        Self { bootstrap_servers, isolation, consumer }
    }

    /// Reads `topic` back from `checkpoints` on a blocking thread. A failed read-back drops the
    /// consumer: the next one starts from a fresh connection.
    pub(crate) async fn read_back(
        &mut self,
        topic: String,
        checkpoints: BTreeMap<i32, Checkpoint>,
    ) -> Result<ReadBack, RelayError> {
        let (servers, isolation, consumer) = (self.bootstrap_servers.clone(), self.isolation, self.consumer.take());
        let (consumer, read_back) = tokio::task::spawn_blocking(move || {
            let consumer = match consumer {
                Some(consumer) => consumer,
                None => kafka_kit::reader(&servers, READER_GROUP, isolation).map_err(ReadBackError::from)?,
            };
            let mut log = KafkaLog { consumer, topic, deadline: Instant::now() + READ_BACK_TIMEOUT };
            let read_back = read_back_log(&mut log, &checkpoints);
            Ok::<_, ReadBackError>((log.consumer, read_back))
        })
        .await??;
        match read_back {
            Ok(read_back) => {
                self.consumer = Some(consumer);
                Ok(read_back)
            }
            Err(error) => {
                drop_off_the_way(consumer);
                Err(error.into())
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            drop_off_the_way(consumer);
        }
    }
}

/// The group id read-backs give (they are assigned partitions, never join the group).
const READER_GROUP: &str = "blog-read-back";

/// Drops `consumer` on a blocking thread when there is a runtime to run it, so that its
/// teardown delays nobody.
fn drop_off_the_way(consumer: BaseConsumer) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(consumer))),
        Err(_) => drop(consumer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition as a broker would show it: records at offsets with holes between them, a start
    /// below which retention removed records, and an end that may lie past the last record
    /// (markers, aborted records).
    #[derive(Default)]
    struct FakePartition {
        start: i64,
        end: i64,
        records: Vec<Seen>,
    }

    #[derive(Default)]
    struct FakeLog {
        partitions: BTreeMap<i32, FakePartition>,
        /// Where each read started, per partition.
        reads: Vec<BTreeMap<i32, i64>>,
    }

    impl FakeLog {
        fn with(partition: i32, start: i64, end: i64, records: &[(i64, Option<Uuid>, Option<i64>)]) -> Self {
            let mut log = Self::default();
            log.add(partition, start, end, records);
            log
        }

        fn add(&mut self, partition: i32, start: i64, end: i64, records: &[(i64, Option<Uuid>, Option<i64>)]) {
            let records =
                records.iter().map(|&(offset, event_id, epoch)| Seen { partition, offset, event_id, epoch }).collect();
            self.partitions.insert(partition, FakePartition { start, end, records });
        }
    }

    impl Log for FakeLog {
        fn partitions(&mut self) -> Result<Vec<i32>, ReadBackError> {
            Ok(self.partitions.keys().copied().collect())
        }

        fn bounds(&mut self, partitions: &[i32]) -> Result<BTreeMap<i32, (i64, i64)>, ReadBackError> {
            Ok(partitions
                .iter()
                .map(|partition| (*partition, (self.partitions[partition].start, self.partitions[partition].end)))
                .collect())
        }

        fn read(
            &mut self,
            ranges: &BTreeMap<i32, (i64, i64)>,
            on_record: &mut dyn FnMut(Seen),
        ) -> Result<(), ReadBackError> {
            self.reads.push(ranges.iter().map(|(&partition, &(from, _))| (partition, from)).collect());
            for (partition, &(from, _)) in ranges {
                let partition = &self.partitions[partition];
                for record in partition.records.iter().filter(|record| record.offset >= from) {
                    on_record(*record);
                }
            }
            Ok(())
        }
    }

    fn ids(count: usize) -> Vec<Uuid> {
        (0..count).map(|_| Uuid::new_v4()).collect()
    }

    #[test]
    fn holes_and_a_marker_at_the_end_neither_stall_the_read_nor_hide_a_record() -> Result<(), ReadBackError> {
        let id = ids(3);
        // Offsets 1 and 3 are transaction markers, 5 the marker of the last transaction.
        let mut log =
            FakeLog::with(0, 0, 6, &[(0, Some(id[0]), Some(1)), (2, Some(id[1]), Some(1)), (4, Some(id[2]), Some(1))]);
        let read_back = read_back_log(&mut log, &BTreeMap::new())?;
        assert_eq!(read_back.found, id);
        assert_eq!(read_back.ends[&0], Checkpoint { next_offset: 6, last: Some((4, id[2])) });
        assert!(read_back.findings.is_empty() && read_back.stale.is_empty());
        Ok(())
    }

    #[test]
    fn a_partition_read_to_its_end_is_not_read_again() -> Result<(), ReadBackError> {
        let id = ids(1);
        let mut log = FakeLog::with(0, 0, 2, &[(0, Some(id[0]), Some(1))]);
        let checkpoints = BTreeMap::from([(0, Checkpoint { next_offset: 2, last: Some((0, id[0])) })]);
        let read_back = read_back_log(&mut log, &checkpoints)?;
        // Only the last settled record is read, to check it is still there.
        assert_eq!(log.reads, [BTreeMap::from([(0, 0)])]);
        assert_eq!(read_back.findings, []);
        assert_eq!(read_back.ends[&0], checkpoints[&0]);
        Ok(())
    }

    #[test]
    fn a_checkpoint_beyond_the_end_is_a_lost_log_and_the_new_log_is_read_from_its_start() -> Result<(), ReadBackError> {
        let id = ids(2);
        let mut log = FakeLog::with(0, 0, 2, &[(0, Some(id[0]), Some(5)), (1, Some(id[1]), Some(5))]);
        let checkpoints = BTreeMap::from([(0, Checkpoint { next_offset: 900, last: Some((899, Uuid::new_v4())) })]);
        let read_back = read_back_log(&mut log, &checkpoints)?;
        assert_eq!(read_back.findings, [(0, Finding::AheadOfLog { checkpoint: 900, end: 2 })]);
        assert_eq!(read_back.found, id, "what the new log holds is found");
        assert_eq!(read_back.ends[&0].next_offset, 2);
        Ok(())
    }

    #[test]
    fn a_replaced_log_that_grew_past_the_checkpoint_is_noticed_by_its_last_settled_record() -> Result<(), ReadBackError>
    {
        let (old, new) = (Uuid::new_v4(), ids(12));
        let records: Vec<_> = new.iter().enumerate().map(|(offset, id)| (offset as i64, Some(*id), Some(7))).collect();
        let mut log = FakeLog::with(0, 0, 12, &records);
        let checkpoints = BTreeMap::from([(0, Checkpoint { next_offset: 5, last: Some((4, old)) })]);
        let read_back = read_back_log(&mut log, &checkpoints)?;
        assert_eq!(read_back.findings, [(0, Finding::Replaced { offset: 4, expected: old, found: Some(new[4]) })]);
        assert_eq!(log.reads.last(), Some(&BTreeMap::from([(0, 0)])), "read again from the start");
        let mut found = read_back.found.clone();
        found.dedup();
        assert_eq!(found.len(), 12, "every record of the new log is found once");
        assert_eq!(read_back.ends[&0], Checkpoint { next_offset: 12, last: Some((11, new[11])) });
        Ok(())
    }

    #[test]
    fn a_last_record_gone_from_its_offset_counts_as_replaced_too() -> Result<(), ReadBackError> {
        let old = Uuid::new_v4();
        // Offset 4 is now a hole (a marker in the new log), the next record is at 6.
        let mut log = FakeLog::with(0, 0, 8, &[(6, None, None)]);
        let checkpoints = BTreeMap::from([(0, Checkpoint { next_offset: 5, last: Some((4, old)) })]);
        let read_back = read_back_log(&mut log, &checkpoints)?;
        assert_eq!(read_back.findings, [(0, Finding::Replaced { offset: 4, expected: old, found: None })]);
        Ok(())
    }

    #[test]
    fn records_removed_by_retention_before_they_were_settled_are_reported() -> Result<(), ReadBackError> {
        let id = ids(1);
        let mut log = FakeLog::with(0, 40, 42, &[(40, Some(id[0]), Some(2))]);
        let checkpoints = BTreeMap::from([(0, Checkpoint { next_offset: 10, last: Some((9, Uuid::new_v4())) })]);
        let read_back = read_back_log(&mut log, &checkpoints)?;
        assert_eq!(read_back.findings, [(0, Finding::Truncated { checkpoint: 10, start: 40 })]);
        assert_eq!(read_back.found, id);
        assert_eq!(read_back.ends[&0], Checkpoint { next_offset: 42, last: Some((40, id[0])) });
        Ok(())
    }

    #[test]
    fn a_deposed_leaders_record_after_its_successors_is_stale() -> Result<(), ReadBackError> {
        let id = ids(4);
        let mut log = FakeLog::with(
            0,
            0,
            4,
            &[
                (0, Some(id[0]), Some(3)),
                (1, Some(id[1]), Some(4)),
                (2, Some(id[2]), Some(3)),
                (3, Some(id[3]), Some(4)),
            ],
        );
        log.add(1, 0, 1, &[(0, Some(Uuid::new_v4()), Some(3))]);
        let read_back = read_back_log(&mut log, &BTreeMap::new())?;
        assert_eq!(
            read_back.stale,
            [StaleRecord { partition: 0, offset: 2, event_id: Some(id[2]), epoch: 3, newer_epoch: 4 }]
        );
        Ok(())
    }

    #[test]
    fn a_partition_without_new_records_of_ours_keeps_its_last_settled_record() -> Result<(), ReadBackError> {
        let ours = Uuid::new_v4();
        let mut log = FakeLog::with(0, 0, 5, &[(2, Some(ours), Some(1)), (3, None, None), (4, None, None)]);
        let checkpoints = BTreeMap::from([(0, Checkpoint { next_offset: 3, last: Some((2, ours)) })]);
        let read_back = read_back_log(&mut log, &checkpoints)?;
        assert_eq!(read_back.ends[&0], Checkpoint { next_offset: 5, last: Some((2, ours)) });
        assert_eq!(read_back.findings, []);
        Ok(())
    }

    #[test]
    fn records_without_our_header_are_counted_but_not_found() -> Result<(), ReadBackError> {
        let ours = Uuid::new_v4();
        let mut log = FakeLog::with(0, 0, 3, &[(0, Some(ours), Some(1)), (1, None, None), (2, None, None)]);
        let read_back = read_back_log(&mut log, &BTreeMap::new())?;
        assert_eq!(read_back.found, [ours]);
        assert_eq!(read_back.records, 3);
        assert_eq!(read_back.ends[&0], Checkpoint { next_offset: 3, last: Some((0, ours)) });
        Ok(())
    }
}
