//! Committing a transaction without rdkafka's 100 ms stall.
//!
//! rdkafka's `commit_transaction` first flushes in Rust: `rd_kafka_flush(rk, 0)`, and while that
//! still counts records it serves the producer's event queue for up to 100 ms. A `FutureProducer`
//! has its own polling thread serving that same queue, so once the polling thread has taken the last
//! delivery report that wait finds nothing and lasts the full 100 ms. The delivery futures resolve
//! inside that report's callback, before librdkafka forgets the records, so a caller that awaited
//! every delivery and commits at once lands in this window often: it was the ~100 ms tail of every
//! transactional round (measured against a Python client with the same librdkafka: p99 114 ms
//! against 24–46 ms, docs/performance.md). [`commit`] waits for the count to reach zero first,
//! which takes microseconds once every delivery is in, and commits then.

use std::time::{Duration, Instant};

use rdkafka::error::KafkaResult;
use rdkafka::producer::{FutureProducer, Producer as _};

/// How long [`commit`] waits for the records it was handed to be forgotten before it lets
/// rdkafka's own flush wait for them (records not yet delivered: that flush is then the wait).
const SETTLE_BOUND: Duration = Duration::from_millis(50);
/// How often it looks.
const SETTLE_STEP: Duration = Duration::from_micros(100);

/// Commits `producer`'s open transaction, waiting at most `timeout`. Blocking: call from
/// `spawn_blocking`.
pub fn commit(producer: &FutureProducer, timeout: Duration) -> KafkaResult<()> {
    let started = Instant::now();
    while producer.in_flight_count() > 0 && started.elapsed() < SETTLE_BOUND.min(timeout) {
        std::thread::sleep(SETTLE_STEP);
    }
    producer.commit_transaction(timeout.saturating_sub(started.elapsed()))
}
