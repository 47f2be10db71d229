-- Exactly once without timing luck (docs/guarantees.md, "Leadership").

-- What a leader declares about itself, for its successor:
-- `transactional_id` is the Kafka transactional.id every relay of this outbox uses, so that a new
-- leader's producer fences the previous one at the broker. One per outbox database (two services
-- sharing a topic must not fence each other), chosen once here.
-- `delivery_bound_ms`: after losing its lease, how long until nothing this leader handed to its
-- producer can still land; a successor waits this long after a crash.
-- `clean_stop`: the leader stopped cleanly (SIGTERM) with nothing in flight; its successor
-- publishes at once.
ALTER TABLE relay_leader ADD COLUMN IF NOT EXISTS transactional_id TEXT NOT NULL
    DEFAULT 'outbox-relay-' || gen_random_uuid()::text;
ALTER TABLE relay_leader ADD COLUMN IF NOT EXISTS delivery_bound_ms BIGINT;
ALTER TABLE relay_leader ADD COLUMN IF NOT EXISTS clean_stop BOOLEAN NOT NULL DEFAULT false;

-- The last record settled in each partition (its offset and event id): a read-back checks that it
-- is still there, so a log replaced by another one (topic recreated, broker data wiped) is noticed
-- even after the new log has grown past the checkpoint.
ALTER TABLE relay_checkpoints ADD COLUMN IF NOT EXISTS last_offset BIGINT;
ALTER TABLE relay_checkpoints ADD COLUMN IF NOT EXISTS last_event_id UUID;

-- Rows the broker refuses for what they are (too large, invalid), moved out of `outbox` in the
-- transaction that removes them there, with their original id so that a requeue puts them back
-- in order. While an article has a dead letter, its later rows wait in `outbox` (the relay's
-- pending query skips them), so its events are never published out of order.
CREATE TABLE IF NOT EXISTS outbox_dead_letters (
    id            BIGINT      PRIMARY KEY,
    event_id      UUID        NOT NULL UNIQUE,
    article_id    BIGINT      NOT NULL,
    event_type    TEXT        NOT NULL,
    payload       TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    trace_context TEXT,
    error         TEXT        NOT NULL,
    failed_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS outbox_dead_letters_article ON outbox_dead_letters (article_id);
