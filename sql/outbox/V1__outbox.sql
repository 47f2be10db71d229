-- DB1: the transactional outbox (the outbox crate's contract), written by any service in the
-- transaction of its change and drained by the relay. This set has its own history table
-- (`outbox_schema_history`). IF NOT EXISTS: databases created before the sets were split already
-- hold these objects.

-- One row per article change, written in the same transaction as the change.
-- `id` orders rows (per article, ids follow commit order because the article row lock is held
-- until commit); the relay deletes a row once the broker has acknowledged it, so the table only
-- holds the backlog.
CREATE TABLE IF NOT EXISTS outbox (
    id          BIGSERIAL PRIMARY KEY,
    event_id    UUID        NOT NULL UNIQUE,
    article_id  BIGINT      NOT NULL,
    event_type  TEXT        NOT NULL,
    -- The exact bytes published as the Kafka record value.
    payload     TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
