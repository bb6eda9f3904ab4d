-- What the dashboard reads, maintained as messages change so that reading it never scans `messages`.
--
-- Several nodes write at once, so the counters must not be one hot row that every transaction queues on:
-- each backend writes the shard `pg_backend_pid() % 16` and readers sum the shards. The triggers are
-- statement-level with transition tables, so a statement touching 500 messages (an accept group, a claim)
-- makes one aggregated upsert, not 500. Every status lives in a column of ONE row per shard, and now() is
-- fixed for a transaction, so a transaction locks at most one counts row and one activity row, always in that
-- order: two transactions on the same shard wait for each other but cannot deadlock over the counters.

-- Messages per status, one column per status (the same shape as on SQLite).
CREATE TABLE status_counts (
    shard     SMALLINT PRIMARY KEY,
    scheduled BIGINT NOT NULL DEFAULT 0,
    queued    BIGINT NOT NULL DEFAULT 0,
    sending   BIGINT NOT NULL DEFAULT 0,
    deferred  BIGINT NOT NULL DEFAULT 0,
    delivered BIGINT NOT NULL DEFAULT 0,
    failed    BIGINT NOT NULL DEFAULT 0,
    cancelled BIGINT NOT NULL DEFAULT 0
);

INSERT INTO status_counts (shard, scheduled, queued, sending, deferred, delivered, failed, cancelled)
    SELECT 0, COUNT(*) FILTER (WHERE status = 'scheduled'), COUNT(*) FILTER (WHERE status = 'queued'),
           COUNT(*) FILTER (WHERE status = 'sending'), COUNT(*) FILTER (WHERE status = 'deferred'),
           COUNT(*) FILTER (WHERE status = 'delivered'), COUNT(*) FILTER (WHERE status = 'failed'),
           COUNT(*) FILTER (WHERE status = 'cancelled')
    FROM messages;

-- Per-minute outcomes for the throughput chart: `minute` is the start of the minute (Unix milliseconds) of
-- the writing transaction's now(). `deferred` counts messages becoming deferred.
CREATE TABLE activity (
    minute    BIGINT NOT NULL,
    shard     SMALLINT NOT NULL,
    accepted  BIGINT NOT NULL DEFAULT 0,
    delivered BIGINT NOT NULL DEFAULT 0,
    failed    BIGINT NOT NULL DEFAULT 0,
    deferred  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, shard)
);

-- One row per (tag, message), filled at accept; created_at is copied so that a page of a common tag walks
-- the primary key newest first and reads 50 rows.
CREATE TABLE message_tags (
    tag        TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    PRIMARY KEY (tag, created_at, message_id)
);
-- For the cascade: deleting a message finds its tags without scanning.
CREATE INDEX message_tags_message ON message_tags (message_id);

INSERT INTO message_tags (tag, created_at, message_id)
    SELECT DISTINCT t.tag, m.created_at, m.id
    FROM messages m, jsonb_array_elements_text(m.tags::jsonb) AS t (tag)
    WHERE jsonb_typeof(m.tags::jsonb) = 'array';

CREATE FUNCTION herald_shard() RETURNS SMALLINT LANGUAGE sql STABLE
    AS $$ SELECT (pg_backend_pid() % 16)::smallint $$;

CREATE FUNCTION herald_minute() RETURNS BIGINT LANGUAGE sql STABLE
    AS $$ SELECT (floor(extract(epoch FROM now()) * 1000)::bigint / 60000) * 60000 $$;

-- Adds a per-status delta to this backend's shard.
CREATE FUNCTION herald_count(d_scheduled BIGINT, d_queued BIGINT, d_sending BIGINT, d_deferred BIGINT,
                             d_delivered BIGINT, d_failed BIGINT, d_cancelled BIGINT) RETURNS VOID
LANGUAGE sql AS $$
    INSERT INTO status_counts AS c (shard, scheduled, queued, sending, deferred, delivered, failed, cancelled)
    VALUES (herald_shard(), d_scheduled, d_queued, d_sending, d_deferred, d_delivered, d_failed, d_cancelled)
    ON CONFLICT (shard) DO UPDATE SET
        scheduled = c.scheduled + EXCLUDED.scheduled, queued = c.queued + EXCLUDED.queued,
        sending = c.sending + EXCLUDED.sending, deferred = c.deferred + EXCLUDED.deferred,
        delivered = c.delivered + EXCLUDED.delivered, failed = c.failed + EXCLUDED.failed,
        cancelled = c.cancelled + EXCLUDED.cancelled
$$;

CREATE FUNCTION herald_activity(d_accepted BIGINT, d_delivered BIGINT, d_failed BIGINT, d_deferred BIGINT)
RETURNS VOID LANGUAGE sql AS $$
    INSERT INTO activity AS a (minute, shard, accepted, delivered, failed, deferred)
    VALUES (herald_minute(), herald_shard(), d_accepted, d_delivered, d_failed, d_deferred)
    ON CONFLICT (minute, shard) DO UPDATE SET
        accepted = a.accepted + EXCLUDED.accepted, delivered = a.delivered + EXCLUDED.delivered,
        failed = a.failed + EXCLUDED.failed, deferred = a.deferred + EXCLUDED.deferred
$$;

CREATE FUNCTION herald_messages_inserted() RETURNS TRIGGER LANGUAGE plpgsql AS $$
DECLARE
    d RECORD;
BEGIN
    SELECT COUNT(*) AS total,
           COUNT(*) FILTER (WHERE status = 'scheduled') AS scheduled, COUNT(*) FILTER (WHERE status = 'queued') AS queued,
           COUNT(*) FILTER (WHERE status = 'sending') AS sending, COUNT(*) FILTER (WHERE status = 'deferred') AS deferred,
           COUNT(*) FILTER (WHERE status = 'delivered') AS delivered, COUNT(*) FILTER (WHERE status = 'failed') AS failed,
           COUNT(*) FILTER (WHERE status = 'cancelled') AS cancelled
      INTO d FROM inserted;
    IF d.total > 0 THEN
        PERFORM herald_count(d.scheduled, d.queued, d.sending, d.deferred, d.delivered, d.failed, d.cancelled);
        PERFORM herald_activity(d.total, 0, 0, 0);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION herald_messages_updated() RETURNS TRIGGER LANGUAGE plpgsql AS $$
DECLARE
    d RECORD;
BEGIN
    -- Only rows whose status changed count (pruning a body, say, changes none).
    SELECT COUNT(*) AS total,
           COUNT(*) FILTER (WHERE n.status = 'scheduled') - COUNT(*) FILTER (WHERE o.status = 'scheduled') AS scheduled,
           COUNT(*) FILTER (WHERE n.status = 'queued') - COUNT(*) FILTER (WHERE o.status = 'queued') AS queued,
           COUNT(*) FILTER (WHERE n.status = 'sending') - COUNT(*) FILTER (WHERE o.status = 'sending') AS sending,
           COUNT(*) FILTER (WHERE n.status = 'deferred') - COUNT(*) FILTER (WHERE o.status = 'deferred') AS deferred,
           COUNT(*) FILTER (WHERE n.status = 'delivered') - COUNT(*) FILTER (WHERE o.status = 'delivered') AS delivered,
           COUNT(*) FILTER (WHERE n.status = 'failed') - COUNT(*) FILTER (WHERE o.status = 'failed') AS failed,
           COUNT(*) FILTER (WHERE n.status = 'cancelled') - COUNT(*) FILTER (WHERE o.status = 'cancelled') AS cancelled,
           COUNT(*) FILTER (WHERE n.status = 'delivered') AS became_delivered,
           COUNT(*) FILTER (WHERE n.status = 'failed') AS became_failed,
           COUNT(*) FILTER (WHERE n.status = 'deferred') AS became_deferred
      INTO d
      FROM old_rows o JOIN new_rows n ON n.id = o.id
     WHERE o.status IS DISTINCT FROM n.status;
    IF d.total > 0 THEN
        PERFORM herald_count(d.scheduled, d.queued, d.sending, d.deferred, d.delivered, d.failed, d.cancelled);
        IF d.became_delivered + d.became_failed + d.became_deferred > 0 THEN
            PERFORM herald_activity(0, d.became_delivered, d.became_failed, d.became_deferred);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION herald_messages_deleted() RETURNS TRIGGER LANGUAGE plpgsql AS $$
DECLARE
    d RECORD;
BEGIN
    SELECT COUNT(*) AS total,
           COUNT(*) FILTER (WHERE status = 'scheduled') AS scheduled, COUNT(*) FILTER (WHERE status = 'queued') AS queued,
           COUNT(*) FILTER (WHERE status = 'sending') AS sending, COUNT(*) FILTER (WHERE status = 'deferred') AS deferred,
           COUNT(*) FILTER (WHERE status = 'delivered') AS delivered, COUNT(*) FILTER (WHERE status = 'failed') AS failed,
           COUNT(*) FILTER (WHERE status = 'cancelled') AS cancelled
      INTO d FROM deleted;
    IF d.total > 0 THEN
        PERFORM herald_count(-d.scheduled, -d.queued, -d.sending, -d.deferred, -d.delivered, -d.failed, -d.cancelled);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER messages_counted_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION herald_messages_inserted();
CREATE TRIGGER messages_counted_update AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION herald_messages_updated();
CREATE TRIGGER messages_counted_delete AFTER DELETE ON messages
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION herald_messages_deleted();
