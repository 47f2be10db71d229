-- Exactly-once publication (docs/guarantees.md).

-- The leader relay's fencing token. A relay that takes the leadership advisory lock increments
-- `epoch`; every transaction that settles published rows first reads the epoch FOR SHARE and gives
-- up if it changed, so a deposed leader can neither delete rows nor move checkpoints.
CREATE TABLE IF NOT EXISTS relay_leader (
    id     SMALLINT    PRIMARY KEY CHECK (id = 1),
    epoch  BIGINT      NOT NULL,
    holder TEXT,
    since  TIMESTAMPTZ
);
INSERT INTO relay_leader (id, epoch) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;

-- Per partition, the offset up to which every record the relay published is settled (its outbox
-- row deleted). Reconciliation reads the topic back from here to the high watermark.
CREATE TABLE IF NOT EXISTS relay_checkpoints (
    topic       TEXT        NOT NULL,
    partition   INT         NOT NULL,
    next_offset BIGINT      NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
