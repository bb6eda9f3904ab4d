-- Issue 14: a message's body (its framed segments, see store::raw) in a table of its own, keyed by the
-- message's rowid. In the messages row it was written again by every claim and every outcome: SQLite
-- rewrites a row's overflow pages whenever the row's size changes, and a status or lease change does, so
-- a standard notification's ~10 KB body went to the WAL three times and left freed pages behind. Messages
-- are never deleted and the store is never vacuumed, so a message's rowid does not change (the full-text
-- index relies on that too). Pruning a body (retention) deletes its row here.
CREATE TABLE message_bodies (
    message_rowid INTEGER PRIMARY KEY,
    raw           BLOB NOT NULL
);
INSERT INTO message_bodies (message_rowid, raw) SELECT rowid, raw FROM messages WHERE raw IS NOT NULL;
ALTER TABLE messages DROP COLUMN raw;
