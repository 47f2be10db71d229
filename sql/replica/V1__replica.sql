-- DB2 (replica): a copy of DB1's articles, kept by the replica sink. History table:
-- `replica_schema_history`. IF NOT EXISTS: databases created before the sets were split already
-- hold these objects.

CREATE TABLE IF NOT EXISTS articles (
    id           BIGINT      PRIMARY KEY,
    title        TEXT        NOT NULL,
    content      TEXT        NOT NULL,
    author       TEXT        NOT NULL,
    category     TEXT,
    tags         TEXT[]      NOT NULL DEFAULT '{}',
    status       TEXT        NOT NULL DEFAULT 'draft',
    views_count  BIGINT      NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    published_at TIMESTAMPTZ,
    version      BIGINT      NOT NULL DEFAULT 0
);

CREATE INDEX IF NOT EXISTS articles_author_idx ON articles (author);

-- The seed's idempotence table. `article_id` is BIGINT (the seed says INTEGER) so that an
-- article id above 2^31 can never turn into an event the sink cannot record.
CREATE TABLE IF NOT EXISTS processed_events (
    event_id     VARCHAR(255) PRIMARY KEY,
    event_type   VARCHAR(50)  NOT NULL,
    article_id   BIGINT,
    processed_at TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- Remembers deletions so that a late or replayed older event cannot resurrect a deleted article.
CREATE TABLE IF NOT EXISTS article_tombstones (
    id         BIGINT      PRIMARY KEY,
    version    BIGINT      NOT NULL,
    deleted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
