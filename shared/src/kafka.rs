//! Kafka client settings shared by the relay, the sink and `blogctl`, and the record headers
//! the pipeline writes.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Headers, Message};

/// Header carrying the outbox row's event id.
pub const EVENT_ID_HEADER: &str = "event_id";
/// Header carrying the event type.
pub const EVENT_TYPE_HEADER: &str = "event_type";

/// How long a metadata request may take before the broker counts as unreachable.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// The settings every client gets: where the brokers are, IPv4 first, quick reconnects.
pub fn client_config(bootstrap_servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("broker.address.family", "v4")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "2000")
        .set("log_level", "4");
    config
}

/// Consumer settings: a group member that stores offsets only when told to (after its effect
/// is committed), and joins its group quickly (see docs/architecture.md on `max.poll.interval.ms`).
pub fn consumer_config(bootstrap_servers: &str, group_id: &str) -> ClientConfig {
    let mut config = client_config(bootstrap_servers);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("max.poll.interval.ms", "60000")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("topic.metadata.refresh.interval.ms", "5000");
    config
}

/// The value of header `name` as UTF-8, if present.
pub fn header_str<'a, M: Message>(message: &'a M, name: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|header| header.key == name)
        .and_then(|header| header.value)
        .and_then(|value| std::str::from_utf8(value).ok())
}

/// Whether the broker answers a metadata request for `topic` (which also auto-creates it on
/// brokers that do so). Blocking: call from `spawn_blocking`.
pub fn topic_reachable<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<(), String> {
    client
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map(|_| ())
        .map_err(|error| format!("broker unavailable: {error}"))
}
