//! Why a relay round failed. Every error leaves the rows in the outbox; the loop decides from the
//! kind whether the producer session is over and whether this relay was deposed.

use rdkafka::error::KafkaError;

use crate::settle::SettleError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    #[error("DB1 unavailable")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("DB1 query failed")]
    Database(#[from] tokio_postgres::Error),
    #[error("cannot hand a record to the producer")]
    Enqueue(#[source] KafkaError),
    #[error("{failed} of {attempted} records were not acknowledged by the broker")]
    Delivery {
        failed: usize,
        attempted: usize,
        #[source]
        first: KafkaError,
    },
    #[error("cannot settle published rows")]
    Settle(#[from] SettleError),
    #[error("cannot read the topic back")]
    ReadBack(#[from] kafka_kit::ReadBackError),
    #[error("the read-back task failed")]
    ReadBackTask(#[from] tokio::task::JoinError),
}

impl RelayError {
    pub(crate) fn is_fenced(&self) -> bool {
        matches!(self, Self::Settle(SettleError::Fenced { .. }))
    }
}
