-- What the dashboard reads, maintained as messages change so that reading it never scans `messages`.
-- SQLite has one writer (the store's writer thread), so plain row triggers cannot contend with each other.

-- Messages per status: `counts()` reads this one row instead of counting a million. One column per status
-- and a `shard` key, the same shape as on PostgreSQL (where concurrent transactions spread over 16 rows).
CREATE TABLE status_counts (
    shard     INTEGER PRIMARY KEY,
    scheduled INTEGER NOT NULL DEFAULT 0,
    queued    INTEGER NOT NULL DEFAULT 0,
    sending   INTEGER NOT NULL DEFAULT 0,
    deferred  INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    failed    INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0
);

INSERT INTO status_counts (shard, scheduled, queued, sending, deferred, delivered, failed, cancelled)
    SELECT 0, COUNT(*) FILTER (WHERE status = 'scheduled'), COUNT(*) FILTER (WHERE status = 'queued'),
           COUNT(*) FILTER (WHERE status = 'sending'), COUNT(*) FILTER (WHERE status = 'deferred'),
           COUNT(*) FILTER (WHERE status = 'delivered'), COUNT(*) FILTER (WHERE status = 'failed'),
           COUNT(*) FILTER (WHERE status = 'cancelled')
    FROM messages;

-- Per-minute outcomes for the throughput chart. `minute` is the minute's start in Unix milliseconds, of the
-- real time the change was written (not the store's injectable clock: the chart is about wall time).
-- `deferred` counts messages becoming deferred (an attempt ended with recipients to retry).
CREATE TABLE activity (
    minute    INTEGER NOT NULL,
    shard     INTEGER NOT NULL DEFAULT 0,
    accepted  INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    failed    INTEGER NOT NULL DEFAULT 0,
    deferred  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, shard)
) WITHOUT ROWID;

-- One row per (tag, message), filled at accept: the tag filter walks one tag's rows newest first (created_at
-- is copied here so that a page of a common tag reads 50 rows, not every message with the tag).
CREATE TABLE message_tags (
    tag        TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    PRIMARY KEY (tag, created_at, message_id)
) WITHOUT ROWID;

INSERT OR IGNORE INTO message_tags (tag, created_at, message_id)
    SELECT j.value, m.created_at, m.id FROM messages m, json_each(m.tags) j WHERE j.type = 'text';

-- The counters move by (status = 'x') terms: 1 for the status entered, -1 for the one left.
-- Inserts have no trigger: the writer's accept adds each group's new messages with one statement, because a row
-- trigger on INSERT cost about 25 µs per accepted message (measured with `herald bench store`: 32 -> 57 µs
-- of writer CPU per message for the counts alone) and the writer is the only code that inserts messages.
CREATE TRIGGER messages_counted_update AFTER UPDATE OF status ON messages
WHEN OLD.status IS NOT NEW.status BEGIN
    UPDATE status_counts SET
        scheduled = scheduled + (NEW.status = 'scheduled') - (OLD.status = 'scheduled'),
        queued = queued + (NEW.status = 'queued') - (OLD.status = 'queued'),
        sending = sending + (NEW.status = 'sending') - (OLD.status = 'sending'),
        deferred = deferred + (NEW.status = 'deferred') - (OLD.status = 'deferred'),
        delivered = delivered + (NEW.status = 'delivered') - (OLD.status = 'delivered'),
        failed = failed + (NEW.status = 'failed') - (OLD.status = 'failed'),
        cancelled = cancelled + (NEW.status = 'cancelled') - (OLD.status = 'cancelled')
    WHERE shard = 0;
    INSERT INTO activity (minute, shard, delivered, failed, deferred)
        SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) / 60000 * 60000, 0,
               NEW.status = 'delivered', NEW.status = 'failed', NEW.status = 'deferred'
        WHERE NEW.status IN ('delivered', 'failed', 'deferred')
        ON CONFLICT (minute, shard) DO UPDATE SET delivered = delivered + excluded.delivered,
            failed = failed + excluded.failed, deferred = deferred + excluded.deferred;
END;

-- Foreign keys are off on Herald's SQLite connections, so nothing cascades by itself: this trigger also does
-- what ON DELETE CASCADE does for message_tags on PostgreSQL.
CREATE TRIGGER messages_counted_delete AFTER DELETE ON messages BEGIN
    UPDATE status_counts SET
        scheduled = scheduled - (OLD.status = 'scheduled'), queued = queued - (OLD.status = 'queued'),
        sending = sending - (OLD.status = 'sending'), deferred = deferred - (OLD.status = 'deferred'),
        delivered = delivered - (OLD.status = 'delivered'), failed = failed - (OLD.status = 'failed'),
        cancelled = cancelled - (OLD.status = 'cancelled')
    WHERE shard = 0;
    DELETE FROM message_tags WHERE tag IN (SELECT value FROM json_each(OLD.tags))
        AND created_at = OLD.created_at AND message_id = OLD.id;
END;

-- Facts about the store the code relies on. `created_out_of_order` = 1 once some message has a smaller
-- created_at than a message inserted before it (the clock went back): full-text search may then no longer
-- take rowid order for creation order (see SqliteStore::search).
CREATE TABLE store_facts (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO store_facts (name, value)
    SELECT 'created_out_of_order', EXISTS (
        SELECT 1 FROM (SELECT created_at, LAG(created_at) OVER (ORDER BY rowid) AS previous FROM messages)
        WHERE created_at < previous);
