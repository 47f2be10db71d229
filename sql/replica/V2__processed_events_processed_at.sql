-- DB2: the sink prunes processed_events past SINK_PROCESSED_RETENTION, oldest first, in small
-- batches (replica-sink/src/prune.rs); this index keeps each batch from scanning the table.
CREATE INDEX IF NOT EXISTS processed_events_processed_at ON processed_events (processed_at);
