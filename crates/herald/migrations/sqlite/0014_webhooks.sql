-- Webhooks (issue 12). An endpoint, and its outbox: one delivery row per (endpoint, event) it wants, written
-- by a trigger on `events`. Every state change writes its timeline line in its own transaction, so the
-- delivery row is committed with the change it reports (never lost, never invented by a crash), for every
-- kind of change, including the ones added later, without the writers knowing about webhooks.

CREATE TABLE webhooks (
    id              TEXT PRIMARY KEY,
    url             TEXT NOT NULL,
    -- The event types wanted, as ',message.delivered,message.failed,' (commas around each, so the trigger
    -- matches with instr); '' is every type.
    events          TEXT NOT NULL,
    description     TEXT NOT NULL,
    enabled         INTEGER NOT NULL,
    -- The signing key (the bytes after `whsec_`), sealed with HERALD_SECRET_KEY when `sealed`.
    secret          BLOB NOT NULL,
    sealed          INTEGER NOT NULL,
    -- The key before the last rotation, still signing beside the new one until previous_until.
    previous_secret BLOB,
    previous_until  INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    -- Since when every attempt failed (NULL after a success); past HERALD_WEBHOOK_DISABLE_AFTER the
    -- endpoint is disabled, with disabled_reason saying so.
    failing_since   INTEGER,
    disabled_reason TEXT
);

CREATE TABLE webhook_deliveries (
    id               INTEGER PRIMARY KEY,
    webhook_id       TEXT NOT NULL,
    event_id         INTEGER NOT NULL,
    event_type       TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    -- pending | delivered | failed (gave up after HERALD_WEBHOOK_MAX_AGE)
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    -- The due time while pending, the lease expiry while a node is sending it (an expired lease makes it due
    -- again), NULL when finished: the partial index holds live work only.
    next_attempt_at  INTEGER,
    lease_owner      TEXT,
    last_attempt_at  INTEGER,
    response_status  INTEGER,
    latency_ms       INTEGER,
    response_excerpt TEXT,
    error            TEXT,
    delivered_at     INTEGER
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (webhook_id, next_attempt_at)
    WHERE next_attempt_at IS NOT NULL;
CREATE INDEX webhook_deliveries_recent ON webhook_deliveries (webhook_id, id);

-- The timeline kinds that are webhook events, and their names (store/webhooks.rs checks this against
-- EVENT_TYPES). A line without a recipient is the message's own; recipient lines report one recipient.
CREATE TRIGGER events_to_webhooks AFTER INSERT ON events
WHEN EXISTS (SELECT 1 FROM webhooks WHERE enabled = 1)
BEGIN
    INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, created_at, status, next_attempt_at)
    SELECT w.id, NEW.id, t.type, NEW.at, 'pending', NEW.at
    FROM (SELECT CASE
            WHEN NEW.recipient IS NULL AND NEW.type IN ('queued', 'scheduled') THEN 'message.accepted'
            WHEN NEW.recipient IS NULL AND NEW.type = 'cancelled' THEN 'message.cancelled'
            WHEN NEW.recipient IS NOT NULL AND NEW.type = 'delivered' THEN 'message.delivered'
            WHEN NEW.recipient IS NOT NULL AND NEW.type = 'deferred' THEN 'message.deferred'
            WHEN NEW.recipient IS NOT NULL AND NEW.type = 'failed' THEN 'message.failed'
            WHEN NEW.recipient IS NOT NULL AND NEW.type = 'bounced' THEN 'message.bounced'
            WHEN NEW.recipient IS NOT NULL AND NEW.type = 'complained' THEN 'message.complained'
            WHEN NEW.recipient IS NOT NULL AND NEW.type = 'suppressed' THEN 'recipient.suppressed'
          END AS type) AS t, webhooks AS w
    WHERE t.type IS NOT NULL AND w.enabled = 1
      AND (w.events = '' OR instr(w.events, ',' || t.type || ',') > 0);
END;
