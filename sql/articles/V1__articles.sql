-- DB1: the articles the API owns. This set has its own history table (`api_schema_history`); the
-- outbox and the relay's tables are another set (sql/outbox), applied by whoever uses the outbox.
-- IF NOT EXISTS: databases created before the sets were split already hold these objects.

CREATE TABLE IF NOT EXISTS articles (
    id           BIGSERIAL PRIMARY KEY,
    title        TEXT        NOT NULL,
    content      TEXT        NOT NULL,
    author       TEXT        NOT NULL,
    category     TEXT,
    tags         TEXT[]      NOT NULL DEFAULT '{}',
    status       TEXT        NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'published')),
    views_count  BIGINT      NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ,
    -- Incremented by every change; the replica refuses events older than what it holds.
    version      BIGINT      NOT NULL DEFAULT 1
);

CREATE INDEX IF NOT EXISTS articles_status_idx ON articles (status);
CREATE INDEX IF NOT EXISTS articles_author_idx ON articles (author);
CREATE INDEX IF NOT EXISTS articles_category_idx ON articles (category);
