-- Issue 12: mail received at the bounce domain that could not be read or matched, kept for inspection
-- (never silently dropped). Ids are UUIDv7, so their order is the order of arrival.
CREATE TABLE inbound (
    id          TEXT PRIMARY KEY,
    received_at BIGINT NOT NULL,
    peer        TEXT NOT NULL,
    mail_from   TEXT NOT NULL,
    rcpt_to     TEXT[] NOT NULL,
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    message_id  TEXT,
    size        BIGINT NOT NULL,
    raw         BYTEA NOT NULL
);

-- Retention pruning deletes by arrival time.
CREATE INDEX inbound_received ON inbound (received_at);
