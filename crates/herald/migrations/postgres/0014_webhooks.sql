-- Webhooks (issue 12): the same tables as migrations/sqlite/0014_webhooks.sql, in this dialect. The outbox
-- rows are written by a trigger on `events`, in the transaction of the state change. Nodes claim them with
-- FOR UPDATE SKIP LOCKED and a lease, row by row: no cursor over `events`, whose bigserial ids can commit
-- out of order (a cursor past id 11 would skip an id 10 committed a moment later).

CREATE TABLE webhooks (
    id              TEXT PRIMARY KEY,
    url             TEXT NOT NULL,
    events          TEXT NOT NULL,
    description     TEXT NOT NULL,
    enabled         BOOLEAN NOT NULL,
    secret          BYTEA NOT NULL,
    sealed          BOOLEAN NOT NULL,
    previous_secret BYTEA,
    previous_until  BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    failing_since   BIGINT,
    disabled_reason TEXT
);

CREATE TABLE webhook_deliveries (
    id               BIGSERIAL PRIMARY KEY,
    webhook_id       TEXT NOT NULL,
    event_id         BIGINT NOT NULL,
    event_type       TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT,
    lease_owner      TEXT,
    last_attempt_at  BIGINT,
    response_status  INTEGER,
    latency_ms       BIGINT,
    response_excerpt TEXT,
    error            TEXT,
    delivered_at     BIGINT
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (webhook_id, next_attempt_at)
    WHERE next_attempt_at IS NOT NULL;
CREATE INDEX webhook_deliveries_recent ON webhook_deliveries (webhook_id, id);

-- The timeline kinds that are webhook events, and their names (store/webhooks.rs checks this against
-- EVENT_TYPES).
CREATE FUNCTION herald_webhook_type(kind TEXT, recipient TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN recipient IS NULL AND kind IN ('queued', 'scheduled') THEN 'message.accepted'
        WHEN recipient IS NULL AND kind = 'cancelled' THEN 'message.cancelled'
        WHEN recipient IS NOT NULL AND kind = 'delivered' THEN 'message.delivered'
        WHEN recipient IS NOT NULL AND kind = 'deferred' THEN 'message.deferred'
        WHEN recipient IS NOT NULL AND kind = 'failed' THEN 'message.failed'
        WHEN recipient IS NOT NULL AND kind = 'bounced' THEN 'message.bounced'
        WHEN recipient IS NOT NULL AND kind = 'complained' THEN 'message.complained'
        WHEN recipient IS NOT NULL AND kind = 'suppressed' THEN 'recipient.suppressed'
    END
$$;

-- Once per statement (an accept of 4,000 messages is one statement): with no enabled endpoint it costs one
-- probe of an empty table.
CREATE FUNCTION herald_events_to_webhooks() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE enabled) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, created_at, status, next_attempt_at)
    SELECT w.id, e.id, t.type, e.at, 'pending', e.at
    FROM new_events e
    CROSS JOIN LATERAL (SELECT herald_webhook_type(e.type, e.recipient) AS type) t
    JOIN webhooks w ON w.enabled AND (w.events = '' OR position(',' || t.type || ',' IN w.events) > 0)
    WHERE t.type IS NOT NULL;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_to_webhooks AFTER INSERT ON events
REFERENCING NEW TABLE AS new_events
FOR EACH STATEMENT EXECUTE FUNCTION herald_events_to_webhooks();
