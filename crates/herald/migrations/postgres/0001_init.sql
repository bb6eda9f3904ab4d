-- Herald's schema on PostgreSQL: the same tables as migrations/sqlite, in this dialect. Times are Unix
-- milliseconds (BIGINT) in both, so the Rust code compares them the same way.

CREATE TABLE messages (
    seq             BIGSERIAL UNIQUE,
    id              TEXT PRIMARY KEY,
    status          TEXT NOT NULL,
    sender          TEXT NOT NULL,
    subject         TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    send_at         BIGINT,
    -- Due time for scheduled/queued/deferred messages, lease expiry for sending ones, NULL when finished.
    next_attempt_at BIGINT,
    lease_owner     TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT UNIQUE,
    batch_id        TEXT,
    tags            TEXT NOT NULL DEFAULT '[]',
    metadata        TEXT NOT NULL DEFAULT '{}',
    raw             BYTEA,
    raw_size        BIGINT NOT NULL,
    finished_at     BIGINT,
    -- Full text over subject, addresses and text body, folded (lower case, no diacritics) by Herald.
    search          TSVECTOR NOT NULL
);

CREATE INDEX messages_due ON messages (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX messages_created ON messages (created_at, id);
CREATE INDEX messages_status_created ON messages (status, created_at);
CREATE INDEX messages_batch ON messages (batch_id) WHERE batch_id IS NOT NULL;
-- Only messages being sent hold a lease: releasing a node's leases (shutdown) touches just those.
CREATE INDEX messages_lease ON messages (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX messages_search ON messages USING GIN (search);

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
);

CREATE INDEX recipients_address ON recipients (address);

CREATE TABLE events (
    id         BIGSERIAL PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    at         BIGINT NOT NULL,
    type       TEXT NOT NULL,
    recipient  TEXT,
    detail     TEXT
);

CREATE INDEX events_message ON events (message_id, id);

CREATE TABLE blobs (
    hash       BYTEA PRIMARY KEY,
    bytes      BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

-- References per blob, apart from the blob's row so counting never rewrites it.
CREATE TABLE blob_refs (
    hash BYTEA PRIMARY KEY,
    refs BIGINT NOT NULL
);

CREATE TABLE templates (
    name       TEXT PRIMARY KEY,
    subject    TEXT NOT NULL,
    text       TEXT,
    html       TEXT,
    updated_at BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    token_hash BYTEA NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
