//! The readiness probe's Kafka client: it remembers what the broker connection last failed with
//! (librdkafka reports authentication and TLS failures through its error callback, while the
//! metadata request that failed only says the transport failed), so that `/ready` and the logs
//! say "SASL authentication error" or "SSL handshake failed" rather than "broker unavailable".

use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;

/// A client context that logs client errors and keeps the last one.
#[derive(Debug, Clone, Default)]
pub struct LastError(Arc<Mutex<Option<String>>>);

impl LastError {
    /// The last client error librdkafka reported, if any.
    pub fn last(&self) -> Option<String> {
        self.0.lock().ok().and_then(|last| last.clone())
    }
}

impl ClientContext for LastError {
    /// librdkafka logs an authentication or TLS failure (it raises no error event for it).
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel;
        let lower = log_message.to_ascii_lowercase();
        let severe = (level as i32) <= (RDKafkaLogLevel::Error as i32);
        let cause = severe || ["authentication", "sasl", "ssl", "certificate"].iter().any(|word| lower.contains(word));
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            tracing::warn!(facility = fac, "librdkafka: {log_message}");
        }
        if cause && let Ok(mut last) = self.0.lock() {
            *last = Some(log_message.to_owned());
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // "1/1 brokers are down" follows every cause; the cause is what an operator needs.
        let all_down = matches!(error.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown));
        tracing::warn!(%error, reason, "Kafka client error");
        if !all_down && let Ok(mut last) = self.0.lock() {
            *last = Some(reason.to_owned());
        }
    }
}

impl ConsumerContext for LastError {}

/// Serves the client's pending events, so that the errors librdkafka queued (authentication,
/// TLS) reach [`LastError`]; a metadata request does not serve them.
pub fn serve_errors(client: &BaseConsumer<LastError>) {
    for _ in 0..10 {
        if client.poll(std::time::Duration::ZERO).is_none() {
            break;
        }
    }
}

/// Why the broker did not answer the probe.
#[derive(Debug, thiserror::Error)]
#[error("{source}{}", last.as_ref().map_or_else(String::new, |last| format!("; the broker connection last failed with: {last}")))]
pub struct ProbeError {
    #[source]
    source: KafkaError,
    last: Option<String>,
}

/// A metadata client for readiness, with the operator's consumer settings (security included).
#[derive(Clone)]
pub struct BrokerProbe {
    client: Arc<BaseConsumer<LastError>>,
    context: LastError,
}

impl std::fmt::Debug for BrokerProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerProbe").field("last_error", &self.context.last()).finish_non_exhaustive()
    }
}

impl BrokerProbe {
    pub fn new(bootstrap_servers: &str) -> Result<Self, KafkaError> {
        let context = LastError::default();
        let client = crate::configured(&crate::client_config(bootstrap_servers), crate::Role::Consumer)?
            .create_with_context(context.clone())?;
        Ok(Self { client: Arc::new(client), context })
    }

    /// The partition count of `topic` (0 if the broker does not know it). Blocking.
    pub fn partition_count(&self, topic: &str) -> Result<usize, ProbeError> {
        use rdkafka::consumer::Consumer as _;
        crate::partition_count(self.client.client(), topic).map_err(|source| self.failure(source))
    }

    /// `source`, with the connection's last failure.
    fn failure(&self, source: KafkaError) -> ProbeError {
        serve_errors(&self.client);
        ProbeError { source, last: self.context.last() }
    }

    /// Whether the broker answers a metadata request for `topic` (which also auto-creates it
    /// on brokers that do so). Blocking: call from `spawn_blocking`.
    pub fn topic_reachable(&self, topic: &str) -> Result<(), ProbeError> {
        use rdkafka::consumer::Consumer as _;
        self.client.fetch_metadata(Some(topic), crate::METADATA_TIMEOUT).map(|_| ()).map_err(|source| {
            serve_errors(&self.client);
            ProbeError { source, last: self.context.last() }
        })
    }
}
