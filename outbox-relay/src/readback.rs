//! Reading the topic back: every partition from its checkpoint to the high watermark, collecting
//! the event ids of our records. Rows whose events are found there were published by an earlier
//! session and are settled without being published again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_kit::EVENT_ID_HEADER;
use uuid::Uuid;

use crate::error::RelayError;

/// How long a read-back may take.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(120);

/// What a read-back saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ReadBack {
    /// Event ids of the records that carry our header.
    pub(crate) found: Vec<Uuid>,
    /// Per partition, the high watermark the read stopped at: the new checkpoints.
    pub(crate) ends: BTreeMap<i32, i64>,
    /// Records read, ours or not.
    pub(crate) records: u64,
}

impl ReadBack {
    /// Counts one record and keeps its event id when it is one of ours. Records without our
    /// header, or with one that is not a UUID, were produced by someone else and are ignored.
    fn saw(&mut self, event_id_header: Option<&str>) {
        self.records += 1;
        if let Some(event_id) = event_id_header.and_then(|value| Uuid::parse_str(value).ok()) {
            self.found.push(event_id);
        }
    }
}

/// Reads `topic` from `checkpoints` (partitions without one from their start) to the end.
/// Runs the blocking consumer on a blocking thread.
pub(crate) async fn read_back(
    bootstrap_servers: String,
    topic: String,
    checkpoints: BTreeMap<i32, i64>,
) -> Result<ReadBack, RelayError> {
    let blocking = tokio::task::spawn_blocking(move || {
        let mut read_back = ReadBack::default();
        read_back.ends = kafka_kit::read_to_end(
            &bootstrap_servers,
            &topic,
            |partition| checkpoints.get(&partition).copied(),
            Instant::now() + READ_BACK_TIMEOUT,
            |message| read_back.saw(kafka_kit::header_str(message, EVENT_ID_HEADER)),
        )?;
        Ok::<_, kafka_kit::ReadBackError>(read_back)
    });
    Ok(blocking.await??)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_records_that_carry_an_event_id_of_ours() {
        let ours = Uuid::new_v4();
        let mut read_back = ReadBack::default();
        read_back.saw(Some(&ours.to_string()));
        read_back.saw(None);
        read_back.saw(Some("typed by hand"));
        assert_eq!(read_back.found, [ours]);
        assert_eq!(read_back.records, 3);
    }
}
