-- DB1 (primary): the articles the API owns, and the transactional outbox the relay drains.

CREATE TABLE articles (
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

CREATE INDEX articles_status_idx ON articles (status);
CREATE INDEX articles_author_idx ON articles (author);
CREATE INDEX articles_category_idx ON articles (category);

-- One row per article change, written in the same transaction as the change.
-- `id` orders rows (per article, ids follow commit order because the article row lock is held
-- until commit); the relay deletes a row once the broker has acknowledged it, so the table only
-- holds the backlog.
CREATE TABLE outbox (
    id          BIGSERIAL PRIMARY KEY,
    event_id    UUID        NOT NULL UNIQUE,
    article_id  BIGINT      NOT NULL,
    event_type  TEXT        NOT NULL,
    -- The exact bytes published as the Kafka record value.
    payload     TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
