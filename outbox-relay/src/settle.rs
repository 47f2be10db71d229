//! The relay's own DB1 tables, `relay_leader` (the fencing epoch) and `relay_checkpoints`, and the
//! settle transaction that ties them to the outbox: delete published rows and move checkpoints
//! only while this relay's epoch is still the current one.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use uuid::Uuid;

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

/// Makes this relay the leader of a new epoch and returns it. Called once the advisory lock is held.
pub async fn begin_epoch(client: &tokio_postgres::Client, holder: &str) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "UPDATE relay_leader SET epoch = epoch + 1, holder = $1, since = now() WHERE id = 1 RETURNING epoch",
            &[&holder],
        )
        .await?;
    row.try_get("epoch")
}

/// The checkpoints of `topic`: partition → next offset to read back from.
pub async fn load(client: &impl GenericClient, topic: &str) -> Result<BTreeMap<i32, i64>, tokio_postgres::Error> {
    let statement =
        client.prepare_cached("SELECT partition, next_offset FROM relay_checkpoints WHERE topic = $1").await?;
    let rows = client.query(&statement, &[&topic]).await?;
    rows.iter().map(|row| Ok((row.try_get("partition")?, row.try_get("next_offset")?))).collect()
}

/// In one transaction, fenced by `epoch`: removes the `published` rows and sets the checkpoints.
pub async fn settle(
    client: &mut deadpool_postgres::Object,
    epoch: i64,
    topic: &str,
    published: Published<'_>,
    checkpoints: &BTreeMap<i32, i64>,
) -> Result<u64, SettleError> {
    let transaction = client.transaction().await?;
    let current_epoch = transaction.prepare_cached("SELECT epoch FROM relay_leader WHERE id = 1 FOR SHARE").await?;
    let current: i64 = transaction.query_one(&current_epoch, &[]).await?.try_get("epoch")?;
    still_leading(epoch, current)?;
    let deleted = match published {
        Published::Rows(ids) => outbox::delete_published(&transaction, ids).await?,
        Published::Events(event_ids) => outbox::delete_by_event_ids(&transaction, event_ids).await?,
    };
    if !checkpoints.is_empty() {
        let (partitions, offsets): (Vec<i32>, Vec<i64>) = checkpoints.iter().map(|(&p, &o)| (p, o)).unzip();
        let upsert = transaction
            .prepare_cached(
                "INSERT INTO relay_checkpoints (topic, partition, next_offset) \
                 SELECT $1, partition, next_offset FROM unnest($2::int[], $3::bigint[]) AS c(partition, next_offset) \
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
            )
            .await?;
        transaction.execute(&upsert, &[&topic, &partitions, &offsets]).await?;
    }
    transaction.commit().await?;
    Ok(deleted)
}

/// Only the leader of the current epoch may settle: a relay deposed meanwhile is fenced.
fn still_leading(mine: i64, current: i64) -> Result<(), SettleError> {
    if mine == current { Ok(()) } else { Err(SettleError::Fenced { mine, current }) }
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
}
