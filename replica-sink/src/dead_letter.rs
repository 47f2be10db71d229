//! The dead-letter topic (`articles.dlq` by default): where a record that can never be applied
//! goes, with everything needed to understand and replay it, so that poison never stops the sink.

use std::time::Duration;

use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use service_kit::backoff::Backoff;
use tokio_util::sync::CancellationToken;

/// Whether a record is done with (its offset may be stored) or the sink is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handled {
    Done,
    Interrupted,
}

/// The producer and topic for records that can never be applied.
pub(crate) struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub(crate) fn new(producer: FutureProducer, topic: String) -> Self {
        Self { producer, topic }
    }

    /// Copies a record that can never be applied to the dead-letter topic, with its key, value and
    /// headers plus `dlq.reason`, `dlq.error` and its source (`dlq.source.topic`, `.partition`,
    /// `.offset`). Retries until the broker acknowledges it: the offset only moves on after that.
    pub(crate) async fn send(
        &self,
        message: &impl Message,
        reason: &str,
        error: &str,
        shutdown: &CancellationToken,
    ) -> Handled {
        let (partition, offset) = (message.partition().to_string(), message.offset().to_string());
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(Header { key: header.key, value: header.value });
            }
        }
        for (key, value) in [
            ("dlq.reason", reason),
            ("dlq.error", error),
            ("dlq.source.topic", message.topic()),
            ("dlq.source.partition", partition.as_str()),
            ("dlq.source.offset", offset.as_str()),
        ] {
            headers = headers.insert(Header { key, value: Some(value) });
        }
        let mut backoff = Backoff::default();
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers.clone());
            if let Some(value) = message.payload() {
                record = record.payload(value);
            }
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            match self.producer.send(record, Duration::from_secs(10)).await {
                Ok(_) => {
                    tracing::warn!(topic = %self.topic, reason, "record sent to the dead-letter topic");
                    return Handled::Done;
                }
                Err((error, _)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, ?delay, "cannot write to the dead-letter topic; retrying");
                    if !service_kit::shutdown::sleep_unless_cancelled(shutdown, delay).await {
                        return Handled::Interrupted;
                    }
                }
            }
        }
    }
}
