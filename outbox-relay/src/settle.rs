//! The relay's own DB1 tables, `relay_leader` (the fencing epoch and what each leader declares
//! for its successor) and `relay_checkpoints`, and the transactions that tie them to the outbox:
//! delete published rows, move refused ones to the dead letters and move checkpoints, only while
//! this relay's epoch is still the current one.

use std::collections::BTreeMap;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Transaction};
use uuid::Uuid;

use crate::publish::Checkpoints;
use crate::readback::Checkpoint;

/// Why settling failed.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("fenced: a newer leader (epoch {current}) took over from epoch {mine}")]
    Fenced { mine: i64, current: i64 },
    #[error("DB1 unavailable")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("DB1 query failed")]
    Database(#[from] tokio_postgres::Error),
}

/// Which outbox rows a settle removes.
#[derive(Debug, Clone, Copy)]
pub enum Published<'a> {
    /// Rows acknowledged by the broker in this session, by outbox id.
    Rows(&'a [i64]),
    /// Rows whose events reconciliation found on the topic, by event id.
    Events(&'a [Uuid]),
}

/// What the previous leader left in `relay_leader` for its successor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Predecessor {
    /// It stopped cleanly with nothing in flight.
    pub(crate) clean_stop: bool,
    /// How long after losing the lead nothing it handed to its producer can still land.
    pub(crate) delivery_bound: Option<Duration>,
}

/// What a new leader gets: its epoch, the Kafka transactional id of this outbox and what its
/// predecessor declared.
#[derive(Debug, Clone)]
pub(crate) struct Epoch {
    pub(crate) epoch: i64,
    pub(crate) transactional_id: String,
    pub(crate) predecessor: Predecessor,
}

/// Makes this relay the leader of a new epoch, declaring `delivery_bound`. Called once the
/// advisory lock is held.
pub(crate) async fn begin_epoch(
    client: &tokio_postgres::Client,
    holder: &str,
    delivery_bound: Duration,
) -> Result<Epoch, tokio_postgres::Error> {
    let bound_ms = i64::try_from(delivery_bound.as_millis()).unwrap_or(i64::MAX);
    // One statement (one round trip on the takeover's way): `previous` is the row as it was
    // before this update, what the predecessor declared.
    let row = client
        .query_one(
            "UPDATE relay_leader leader SET epoch = leader.epoch + 1, holder = $1, since = now(), \
             delivery_bound_ms = $2, clean_stop = false FROM relay_leader previous \
             WHERE leader.id = 1 AND previous.id = 1 RETURNING leader.epoch, leader.transactional_id, \
             previous.clean_stop, previous.delivery_bound_ms",
            &[&holder, &bound_ms],
        )
        .await?;
    let predecessor = Predecessor {
        clean_stop: row.try_get("clean_stop")?,
        delivery_bound: row
            .try_get::<_, Option<i64>>("delivery_bound_ms")?
            .map(|ms| Duration::from_millis(ms.max(0).unsigned_abs())),
    };
    Ok(Epoch { epoch: row.try_get("epoch")?, transactional_id: row.try_get("transactional_id")?, predecessor })
}

/// The Kafka transactional id of this outbox, as a standby reads it before it leads (it never
/// changes once the migration set it).
pub(crate) async fn transactional_id(client: &impl GenericClient) -> Result<String, tokio_postgres::Error> {
    client.query_one("SELECT transactional_id FROM relay_leader WHERE id = 1", &[]).await?.try_get(0)
}

/// Records that the leader of `epoch` stopped with nothing in flight, so its successor need not
/// wait. Fenced like a settle: a deposed leader records nothing.
pub(crate) async fn record_clean_stop(client: &mut deadpool_postgres::Object, epoch: i64) -> Result<(), SettleError> {
    let transaction = fenced(client, epoch).await?;
    transaction.execute("UPDATE relay_leader SET clean_stop = true WHERE id = 1", &[]).await?;
    transaction.commit().await?;
    Ok(())
}

/// The checkpoints of `topic` by partition.
pub(crate) async fn load(
    client: &impl GenericClient,
    topic: &str,
) -> Result<BTreeMap<i32, Checkpoint>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT partition, next_offset, last_offset, last_event_id FROM relay_checkpoints WHERE topic = $1",
        )
        .await?;
    let rows = client.query(&statement, &[&topic]).await?;
    rows.iter()
        .map(|row| {
            let last_offset: Option<i64> = row.try_get("last_offset")?;
            let last_event_id: Option<Uuid> = row.try_get("last_event_id")?;
            let checkpoint =
                Checkpoint { next_offset: row.try_get("next_offset")?, last: last_offset.zip(last_event_id) };
            Ok((row.try_get("partition")?, checkpoint))
        })
        .collect()
}

/// A checkpoint a settle moved down: the log it described is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lowered {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) from: i64,
    pub(crate) to: i64,
}

/// What a settle did.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    pub(crate) deleted: u64,
    /// Checkpoints that went down (never silently: the relay raises an alarm for each).
    pub(crate) lowered: Vec<Lowered>,
}

/// In one transaction, fenced by `epoch`: removes the `published` rows and sets the checkpoints
/// of every topic in `checkpoints`.
pub(crate) async fn settle(
    client: &mut deadpool_postgres::Object,
    epoch: i64,
    published: Published<'_>,
    checkpoints: &Checkpoints,
) -> Result<Settled, SettleError> {
    let transaction = fenced(client, epoch).await?;
    let deleted = match published {
        Published::Rows(ids) => outbox::delete_published(&transaction, ids).await?,
        Published::Events(event_ids) => outbox::delete_by_event_ids(&transaction, event_ids).await?,
    };
    let mut lowered = Vec::new();
    for (topic, partitions) in checkpoints {
        lowered.extend(move_checkpoints(&transaction, topic, partitions).await?);
    }
    transaction.commit().await?;
    Ok(Settled { deleted, lowered })
}

/// Sets `topic`'s checkpoints on `transaction`; returns those that went down.
async fn move_checkpoints(
    transaction: &Transaction<'_>,
    topic: &str,
    checkpoints: &BTreeMap<i32, Checkpoint>,
) -> Result<Vec<Lowered>, tokio_postgres::Error> {
    if checkpoints.is_empty() {
        return Ok(Vec::new());
    }
    let current = transaction
        .prepare_cached("SELECT partition, next_offset FROM relay_checkpoints WHERE topic = $1 FOR UPDATE")
        .await?;
    let stored: BTreeMap<i32, i64> = transaction
        .query(&current, &[&topic])
        .await?
        .iter()
        .map(|row| Ok((row.try_get("partition")?, row.try_get("next_offset")?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let lowered = lowered_checkpoints(topic, &stored, checkpoints);
    {
        let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (&partition, checkpoint) in checkpoints {
            columns.0.push(partition);
            columns.1.push(checkpoint.next_offset);
            columns.2.push(checkpoint.last.map(|(offset, _)| offset));
            columns.3.push(checkpoint.last.map(|(_, event_id)| event_id));
        }
        let upsert = transaction
            .prepare_cached(
                "INSERT INTO relay_checkpoints (topic, partition, next_offset, last_offset, last_event_id) \
                 SELECT $1, * FROM unnest($2::int[], $3::bigint[], $4::bigint[], $5::uuid[]) \
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, \
                 last_offset = EXCLUDED.last_offset, last_event_id = EXCLUDED.last_event_id, updated_at = now()",
            )
            .await?;
        transaction.execute(&upsert, &[&topic, &columns.0, &columns.1, &columns.2, &columns.3]).await?;
    }
    Ok(lowered)
}

/// Moves outbox row `id`, which the broker refuses for what it is, to the dead letters, fenced
/// by `epoch`. Returns whether the row was still there.
pub(crate) async fn dead_letter(
    client: &mut deadpool_postgres::Object,
    epoch: i64,
    id: i64,
    error: &str,
) -> Result<bool, SettleError> {
    let transaction = fenced(client, epoch).await?;
    let moved = outbox::dead_letter(&transaction, id, error).await?;
    transaction.commit().await?;
    Ok(moved)
}

/// Opens a transaction that holds the epoch `FOR SHARE`, or fails if `epoch` is not current.
async fn fenced(client: &mut deadpool_postgres::Object, epoch: i64) -> Result<Transaction<'_>, SettleError> {
    let transaction = client.transaction().await?;
    let current_epoch = transaction.prepare_cached("SELECT epoch FROM relay_leader WHERE id = 1 FOR SHARE").await?;
    let current: i64 = transaction.query_one(&current_epoch, &[]).await?.try_get("epoch")?;
    still_leading(epoch, current)?;
    Ok(transaction)
}

/// Only the leader of the current epoch may settle: a relay deposed meanwhile is fenced.
fn still_leading(mine: i64, current: i64) -> Result<(), SettleError> {
    if mine == current { Ok(()) } else { Err(SettleError::Fenced { mine, current }) }
}

/// The partitions of `topic` whose new checkpoint is below the stored one.
fn lowered_checkpoints(topic: &str, stored: &BTreeMap<i32, i64>, new: &BTreeMap<i32, Checkpoint>) -> Vec<Lowered> {
    new.iter()
        .filter_map(|(&partition, checkpoint)| {
            let &from = stored.get(&partition)?;
            (checkpoint.next_offset < from).then(|| Lowered {
                topic: topic.to_owned(),
                partition,
                from,
                to: checkpoint.next_offset,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deposed_leader_is_fenced_and_told_by_whom() {
        assert!(still_leading(3, 3).is_ok());
        let error = still_leading(3, 4).expect_err("a newer epoch fences");
        assert!(matches!(error, SettleError::Fenced { mine: 3, current: 4 }));
        assert_eq!(error.to_string(), "fenced: a newer leader (epoch 4) took over from epoch 3");
    }

    #[test]
    fn only_a_checkpoint_that_goes_down_is_reported() {
        let stored = BTreeMap::from([(0, 10), (1, 20), (2, 5)]);
        let at = |next_offset| Checkpoint { next_offset, last: None };
        let new = BTreeMap::from([(0, at(12)), (1, at(3)), (2, at(5)), (3, at(1))]);
        assert_eq!(
            lowered_checkpoints("t", &stored, &new),
            [Lowered { topic: "t".into(), partition: 1, from: 20, to: 3 }]
        );
    }
}
