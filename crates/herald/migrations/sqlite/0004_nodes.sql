-- Nodes serving this database, each with its heartbeat. SQLite has one serving process (it holds an exclusive
-- lock beside the database file), so this table stays empty here; it exists so both dialects share a schema.
CREATE TABLE nodes (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
) WITHOUT ROWID;
