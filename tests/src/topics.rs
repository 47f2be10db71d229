//! Topic administration for tests: create a topic with settings of its own, change them, delete
//! it (a lost log, as an operator or a broker failure makes one).

use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

const TIMEOUT: Duration = Duration::from_secs(30);

fn admin(bootstrap_servers: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    kafka_kit::client_config(bootstrap_servers).create().context("cannot create a Kafka admin client")
}

fn options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(TIMEOUT)).request_timeout(Some(TIMEOUT))
}

/// Creates `topic` with `partitions` and topic `configs`, retrying while a deleted topic of the
/// same name is still going away.
pub async fn create(
    bootstrap_servers: &str,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> anyhow::Result<()> {
    let admin = admin(bootstrap_servers)?;
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (name, value) in configs {
        new = new.set(name, value);
    }
    crate::wait::until("the topic to be created", TIMEOUT, || async {
        let results = admin.create_topics([&new], &options()).await?;
        match results.into_iter().next() {
            Some(Ok(_)) => Ok(true),
            // Still being deleted: try again.
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(false),
            Some(Err((name, code))) => bail!("cannot create topic {name}: {code}"),
            None => bail!("no answer creating {topic}"),
        }
    })
    .await
}

/// Deletes `topic` and waits until the broker no longer lists it.
pub async fn delete(bootstrap_servers: &str, topic: &str) -> anyhow::Result<()> {
    let admin = admin(bootstrap_servers)?;
    if let Some(Err((name, code))) = admin.delete_topics(&[topic], &options()).await?.into_iter().next() {
        bail!("cannot delete topic {name}: {code}");
    }
    crate::wait::until("the topic to be gone", TIMEOUT, || async {
        // All topics: a request naming the topic would have the broker create it again.
        let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(5))?;
        Ok(!metadata.topics().iter().any(|listed| listed.name() == topic))
    })
    .await
}

/// Sets topic `configs` on `topic`.
pub async fn alter(bootstrap_servers: &str, topic: &str, configs: &[(&str, &str)]) -> anyhow::Result<()> {
    let admin = admin(bootstrap_servers)?;
    let mut change = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (name, value) in configs {
        change = change.set(name, value);
    }
    for result in admin.alter_configs([&change], &options()).await? {
        if let Err((resource, code)) = result {
            bail!("cannot change {resource:?}: {code}");
        }
    }
    Ok(())
}
