-- The notifier's own database (the seed's email service): one row per notification it asked
-- for, and the events it has handled. History table: `notifier_schema_history`. Its outbox and
-- the relay's tables come from the outbox contract's own set (`outbox_schema_history`).

-- One row per published article: the email to send. `source_event_id` is the article.published
-- event it answers, so a redelivered event can never ask twice.
CREATE TABLE IF NOT EXISTS notifications (
    id              BIGSERIAL    PRIMARY KEY,
    article_id      BIGINT       NOT NULL,
    author          TEXT         NOT NULL,
    title           TEXT         NOT NULL,
    source_event_id VARCHAR(255) NOT NULL UNIQUE,
    published_at    TIMESTAMPTZ,
    created_at      TIMESTAMPTZ  NOT NULL DEFAULT now()
);

-- The seed's idempotence table, as the replica keeps it: every event id the notifier handled,
-- recorded in the transaction of its effect.
CREATE TABLE IF NOT EXISTS processed_events (
    event_id     VARCHAR(255) PRIMARY KEY,
    event_type   VARCHAR(50)  NOT NULL,
    article_id   BIGINT,
    processed_at TIMESTAMPTZ  NOT NULL DEFAULT now()
);
