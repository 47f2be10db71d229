//! Why a relay round failed. Every error leaves the rows in the outbox; the loop decides from the
//! kind whether the producer session is over and whether this relay was deposed.

use rdkafka::error::KafkaError;

use crate::publish::is_producer_fenced;
use crate::settle::SettleError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    #[error("DB1 unavailable")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("DB1 query failed")]
    Database(#[from] tokio_postgres::Error),
    #[error("cannot start or use the producer session")]
    Session(#[source] KafkaError),
    #[error("no producer session")]
    NoSession,
    #[error("cannot hand a record to the producer")]
    Enqueue(#[source] KafkaError),
    #[error("{failed} of {attempted} records were not acknowledged by the broker")]
    Delivery {
        failed: usize,
        attempted: usize,
        #[source]
        first: KafkaError,
    },
    #[error("cannot commit the batch's transaction")]
    Commit(#[source] KafkaError),
    #[error("the leader's lease lapsed")]
    LeaseLapsed,
    #[error("cannot settle published rows")]
    Settle(#[from] SettleError),
    #[error("cannot read the topic back")]
    ReadBack(#[from] kafka_kit::ReadBackError),
    #[error("a blocking task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl RelayError {
    /// Whether a newer leader took over: DB1's epoch moved on, or the broker refused this
    /// producer because a newer one registered the outbox's transactional id.
    pub(crate) fn is_fenced(&self) -> bool {
        match self {
            Self::Settle(SettleError::Fenced { .. }) => true,
            Self::Session(error) | Self::Commit(error) | Self::Enqueue(error) => is_producer_fenced(error),
            Self::Delivery { first, .. } => is_producer_fenced(first),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaErrorCode;

    use super::*;

    #[test]
    fn a_newer_epoch_in_db1_or_a_fenced_producer_both_mean_deposed() {
        assert!(RelayError::Settle(SettleError::Fenced { mine: 1, current: 2 }).is_fenced());
        let fenced = KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced);
        assert!(RelayError::Commit(fenced.clone()).is_fenced());
        assert!(RelayError::Delivery { failed: 1, attempted: 3, first: fenced }.is_fenced());
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert!(!RelayError::Delivery { failed: 1, attempted: 3, first: timed_out }.is_fenced());
        assert!(!RelayError::LeaseLapsed.is_fenced());
    }
}
