-- Herald's schema on SQLite. Times are Unix milliseconds (INTEGER) so that both dialects compare them the same way.

CREATE TABLE messages (
    id              TEXT PRIMARY KEY,
    status          TEXT NOT NULL,
    sender          TEXT NOT NULL,
    subject         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    send_at         INTEGER,
    -- When the queue should look at this message next: the due time for scheduled/queued/deferred messages and
    -- the lease expiry for messages being sent (an expired lease makes the message due again with no extra
    -- bookkeeping). NULL once the message is finished, so the partial index below holds only live work.
    next_attempt_at INTEGER,
    lease_owner     TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT UNIQUE,
    batch_id        TEXT,
    tags            TEXT NOT NULL DEFAULT '[]',
    metadata        TEXT NOT NULL DEFAULT '{}',
    -- The composed message as framed segments (see store::raw); NULL after retention pruned it.
    raw             BLOB,
    raw_size        INTEGER NOT NULL,
    finished_at     INTEGER
);

CREATE INDEX messages_due ON messages (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX messages_created ON messages (created_at, id);
CREATE INDEX messages_status_created ON messages (status, created_at);
CREATE INDEX messages_batch ON messages (batch_id) WHERE batch_id IS NOT NULL;
-- Only messages being sent hold a lease: releasing a node's leases (shutdown) touches just those.
CREATE INDEX messages_lease ON messages (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE recipients (
    message_id      TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    position        INTEGER NOT NULL,
    address         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    status          TEXT NOT NULL,
    smtp_code       INTEGER,
    enhanced_status TEXT,
    reply           TEXT,
    PRIMARY KEY (message_id, position)
) WITHOUT ROWID;

CREATE INDEX recipients_address ON recipients (address);

CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    at         INTEGER NOT NULL,
    type       TEXT NOT NULL,
    recipient  TEXT,
    detail     TEXT
);

CREATE INDEX events_message ON events (message_id, id);

-- Parts shared by many messages (the same attachment for a whole batch), stored once by content hash.
CREATE TABLE blobs (
    hash       BLOB PRIMARY KEY,
    bytes      BLOB NOT NULL,
    created_at INTEGER NOT NULL
);

-- How many stored raw bodies refer to each blob; at 0 (all pruned) the blob goes too. A table of its own so
-- that counting a reference never rewrites the blob's row (and its 50 KB of overflow pages).
CREATE TABLE blob_refs (
    hash BLOB PRIMARY KEY,
    refs INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE templates (
    name       TEXT PRIMARY KEY,
    subject    TEXT NOT NULL,
    text       TEXT,
    html       TEXT,
    updated_at INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    token_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

-- Full text over subject, addresses and text body. Contentless: the text lives in the archive already, the
-- index only maps words to messages.rowid.
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    subject, addresses, body,
    content = '',
    contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 2'
);
