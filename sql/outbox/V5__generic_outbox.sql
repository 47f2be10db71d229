-- One outbox for any service (docs/architecture.md, "The outbox contract"): a row names its
-- aggregate (type and id; the id is the record key, so one aggregate's events keep their order on
-- the topic), may name its destination topic (NULL: the relay's KAFKA_TOPIC) and may carry extra
-- record headers (a JSON object of strings).
ALTER TABLE outbox RENAME COLUMN article_id TO aggregate_id;
ALTER TABLE outbox ALTER COLUMN aggregate_id TYPE TEXT USING aggregate_id::text;
-- Rows already waiting were written by the contract's only writer before this version, the
-- articles API: they keep their place (their id) and are published as before.
ALTER TABLE outbox ADD COLUMN aggregate_type TEXT NOT NULL DEFAULT 'article';
ALTER TABLE outbox ALTER COLUMN aggregate_type DROP DEFAULT;
-- A topic name Kafka accepts, and headers that are a JSON object: a writer's bad row is refused in
-- its own transaction rather than reaching the relay.
ALTER TABLE outbox ADD COLUMN topic TEXT
    CONSTRAINT outbox_topic_is_a_kafka_topic_name
    CHECK (topic ~ '^[A-Za-z0-9._-]{1,249}$' AND topic NOT IN ('.', '..'));
ALTER TABLE outbox ADD COLUMN headers TEXT
    CONSTRAINT outbox_headers_are_a_json_object CHECK (json_typeof(headers::json) = 'object');

ALTER TABLE outbox_dead_letters RENAME COLUMN article_id TO aggregate_id;
ALTER TABLE outbox_dead_letters ALTER COLUMN aggregate_id TYPE TEXT USING aggregate_id::text;
ALTER TABLE outbox_dead_letters ADD COLUMN aggregate_type TEXT NOT NULL DEFAULT 'article';
ALTER TABLE outbox_dead_letters ALTER COLUMN aggregate_type DROP DEFAULT;
ALTER TABLE outbox_dead_letters ADD COLUMN topic TEXT;
ALTER TABLE outbox_dead_letters ADD COLUMN headers TEXT;
DROP INDEX IF EXISTS outbox_dead_letters_article;
CREATE INDEX outbox_dead_letters_aggregate ON outbox_dead_letters (aggregate_type, aggregate_id);
