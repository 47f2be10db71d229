//! The memory budget of the records the sink holds between receiving them and storing their
//! offsets. Lanes and their queues bound how many records wait per partition, but not in total:
//! six partitions' lanes, each with a full queue and a batch in a transaction, hold 12,000 records
//! whatever their size, and 12,000 records of 1 MB would be 12 GB. A record in hand costs its
//! payload twice (the detached record, kept for the dead-letter topic, and the decoded event), its
//! key, and a fixed overhead for its consumer span, headers and bookkeeping; when the budget is
//! spent, receiving waits until a lane has applied its batch.

use std::sync::Arc;

use rdkafka::message::{Message as _, OwnedMessage};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What one record costs beyond its payload and key: its span (with its attributes and the
/// trace context), headers, the detached record's own allocations and the queue's slot; a
/// generous round figure (docs/performance.md, 2026-12-07: the sink's RSS grew by less than
/// 1 KB per record in hand, payload included, with ~600-byte records).
const RECORD_OVERHEAD_BYTES: usize = 1024;

/// The budget's unit: a permit is one KiB.
const PERMIT_BYTES: usize = 1024;

#[derive(Clone)]
pub(crate) struct InHandBudget {
    permits: Arc<Semaphore>,
    total: u32,
}

impl InHandBudget {
    /// A budget of `mib` MiB (at least one record always fits, however large).
    pub(crate) fn new(mib: u32) -> Self {
        let total = mib.saturating_mul(1024).max(1);
        Self { permits: Arc::new(Semaphore::new(total as usize)), total }
    }

    /// Waits until `message` fits in the budget; the permit gives its share back when dropped.
    pub(crate) async fn reserve(&self, message: &OwnedMessage) -> OwnedSemaphorePermit {
        let cost = self.cost(message);
        self.permits.clone().acquire_many_owned(cost).await.expect("the budget's semaphore is never closed")
    }

    /// A record's estimated cost in permits, capped at the whole budget so that a record larger
    /// than the budget still goes through, alone.
    fn cost(&self, message: &OwnedMessage) -> u32 {
        let payload = message.payload().map_or(0, <[u8]>::len);
        let key = message.key().map_or(0, <[u8]>::len);
        let bytes = RECORD_OVERHEAD_BYTES + 2 * payload + key;
        u32::try_from(bytes.div_ceil(PERMIT_BYTES)).unwrap_or(u32::MAX).min(self.total)
    }

    /// KiB of the budget held by records in hand now.
    pub(crate) fn held_kib(&self) -> u32 {
        self.total - u32::try_from(self.permits.available_permits()).unwrap_or(self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn record(payload_bytes: usize) -> OwnedMessage {
        OwnedMessage::new(
            Some(vec![b'x'; payload_bytes]),
            Some(b"42".to_vec()),
            "articles".into(),
            Timestamp::NotAvailable,
            0,
            0,
            None,
        )
    }

    #[tokio::test]
    async fn a_record_holds_its_share_until_dropped() {
        let budget = InHandBudget::new(1);
        let permit = budget.reserve(&record(1000)).await;
        assert_eq!(budget.held_kib(), 3, "1 KiB of overhead, the payload twice and the key (3,026 bytes), rounded up");
        drop(permit);
        assert_eq!(budget.held_kib(), 0);
    }

    #[tokio::test]
    async fn receiving_waits_when_the_budget_is_spent_and_a_huge_record_still_goes_alone() {
        let budget = InHandBudget::new(1);
        let huge = budget.reserve(&record(10 * 1024 * 1024)).await;
        assert_eq!(budget.held_kib(), 1024, "capped at the whole budget");
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(&record(100)).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "nothing fits while the huge record is in hand");
        drop(huge);
        let small = waiting.await.expect("the waiting record gets its share");
        assert_eq!(budget.held_kib(), 2);
        drop(small);
    }
}
