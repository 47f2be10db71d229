//! The broker itself, in the component tier (the run's shared broker, a topic of its own): what
//! the exactly-once design relies on from Kafka's transactions, checked on each broker we run.

use std::time::{Duration, Instant};

use e2e::broker::BrokerKind;
use e2e::component::Fixtures;

/// Reads partition 0 of `topic` from the start to its end with `isolation.level` set as given, and
/// returns the values. Ends on the consumer's position, not on the last record: transaction
/// markers take offsets that no consumer ever receives.
fn read_partition_zero(bootstrap: &str, topic: &str, isolation: &str) -> anyhow::Result<Vec<String>> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::Message as _;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = kafka_kit::client_config(bootstrap)
        .set("group.id", "transactions-test-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()?;
    let (_, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut values = Vec::new();
    loop {
        let position = consumer.position()?.find_partition(topic, 0).and_then(|element| match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        });
        if position.is_some_and(|position| position >= high) {
            return Ok(values);
        }
        anyhow::ensure!(Instant::now() < deadline, "{isolation}: stuck at {position:?} of {high}; read {values:?}");
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            values.push(String::from_utf8_lossy(message?.payload().unwrap_or_default()).into_owned());
        }
    }
}

/// What the stand-in broker could not show (docs/guarantees.md): on Apache Kafka a `read_committed`
/// consumer never sees the records of an aborted transaction, and a producer is fenced once a newer
/// one registers the same `transactional.id`. On nisshi the fencing holds and the aborted records
/// do reach a `read_committed` consumer (a known gap, printed rather than asserted).
#[tokio::test(flavor = "multi_thread")]
async fn read_committed_hides_aborted_transactions_and_a_newer_producer_fences_the_old() -> anyhow::Result<()> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    let fixtures = Fixtures::start().await?;
    let (bootstrap, topic, broker) =
        (fixtures.bootstrap_servers().to_owned(), Fixtures::unique("articles.txn"), BrokerKind::from_env()?);
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let timeout = Duration::from_secs(30);
        let transactional = |id: &str| -> anyhow::Result<BaseProducer> {
            let producer: BaseProducer = kafka_kit::client_config(&bootstrap).set("transactional.id", id).create()?;
            producer.init_transactions(timeout)?;
            Ok(producer)
        };
        let send = |producer: &BaseProducer, value: &str| {
            producer.send(BaseRecord::<str, str>::to(&topic).partition(0).key("k").payload(value)).map_err(|(e, _)| e)
        };
        let txn_id = format!("{topic}-producer");

        let first = transactional(&txn_id)?;
        first.begin_transaction()?;
        send(&first, "aborted-1")?;
        send(&first, "aborted-2")?;
        first.flush(timeout)?; // the aborted records are in the log, not only in a buffer
        first.abort_transaction(timeout)?;
        first.begin_transaction()?;
        send(&first, "committed-1")?;
        send(&first, "committed-2")?;
        first.commit_transaction(timeout)?;

        let uncommitted = read_partition_zero(&bootstrap, &topic, "read_uncommitted")?;
        assert_eq!(uncommitted, ["aborted-1", "aborted-2", "committed-1", "committed-2"], "all four are in the log");
        let committed = read_partition_zero(&bootstrap, &topic, "read_committed")?;
        match broker {
            BrokerKind::Kafka => {
                assert_eq!(committed, ["committed-1", "committed-2"], "read_committed skips the aborted transaction");
            }
            BrokerKind::Nisshi => println!("nisshi, read_committed (known gap): {committed:?}"),
        }

        // A newer producer with the same transactional.id fences the first: its next transaction
        // fails with a fatal error and none of its records become visible.
        let second = transactional(&txn_id)?;
        let fenced = first.begin_transaction().and_then(|()| {
            send(&first, "from-the-fenced-producer")?;
            first.commit_transaction(timeout)
        });
        let error = fenced.expect_err("the fenced producer cannot commit");
        let code = match &error {
            KafkaError::Transaction(error) => Some((error.code(), error.is_fatal())),
            other => other.rdkafka_error_code().map(|code| (code, true)),
        };
        println!("the fenced producer got: {error} ({code:?})");
        assert!(
            matches!(
                code,
                Some((
                    RDKafkaErrorCode::Fenced
                        | RDKafkaErrorCode::ProducerFenced
                        | RDKafkaErrorCode::InvalidProducerEpoch,
                    _
                ))
            ),
            "fenced: {error}"
        );
        second.begin_transaction()?;
        send(&second, "from-the-new-producer")?;
        second.commit_transaction(timeout)?;
        let committed = read_partition_zero(&bootstrap, &topic, "read_committed")?;
        assert!(!committed.iter().any(|value| value == "from-the-fenced-producer"), "{committed:?}");
        assert_eq!(committed.last().map(String::as_str), Some("from-the-new-producer"));
        Ok(())
    })
    .await??;
    Ok(())
}

/// The relay places each record on a partition itself (so that each shard of partitions has its
/// own transaction): for every partitioner it supports, the partition it computes for a key is
/// the one librdkafka picks for that key when left to choose, so upgrading the relay keeps every
/// article on the partition its earlier events are in.
#[tokio::test(flavor = "multi_thread")]
async fn the_partition_computed_for_a_key_is_the_one_librdkafka_picks() -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let fixtures = Fixtures::start().await?;
    // An odd count, and more partitions than the stack's, so that a wrong hash cannot pass by luck.
    const PARTITIONS: usize = 7;
    let keys: Vec<String> = (0..60)
        .map(|i| i.to_string())
        .chain((0..20).map(|i| uuid::Uuid::from_u128(0x1234_5678_9abc_def0 * (i + 1)).to_string()))
        .chain(["", "ünïcödé", "a key with spaces", "x"].map(str::to_owned))
        .collect();
    for name in ["consistent_random", "consistent", "murmur2_random", "murmur2", "fnv1a_random", "fnv1a"] {
        let topic = Fixtures::unique(&format!("partitioner.{name}"));
        e2e::topics::create(fixtures.bootstrap_servers(), &topic, PARTITIONS as i32, &[]).await?;
        let producer: FutureProducer =
            kafka_kit::client_config(fixtures.bootstrap_servers()).set("partitioner", name).create()?;
        let computed = kafka_kit::Partitioner::named(name)?;
        for key in &keys {
            if key.is_empty() && name.ends_with("_random") {
                // librdkafka picks a random partition for an empty key under these; the relay
                // hashes it like any other (an aggregate id is never empty in practice).
                continue;
            }
            let partition = producer
                .send(FutureRecord::to(&topic).key(key).payload("x"), Duration::from_secs(30))
                .await
                .map_err(|(error, _)| error)?
                .partition;
            assert_eq!(
                computed.partition(key.as_bytes(), PARTITIONS),
                partition,
                "{name}: key {key:?} went to partition {partition}"
            );
        }
    }
    Ok(())
}
