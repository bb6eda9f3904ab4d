-- Suppression list and one-click unsubscribe (issue 12). One row per address and scope: `address` is stored
-- lowercased (see store::rules::suppression_address), `scope` '' means every message, otherwise a tag or
-- unsubscribe list. The primary key is what the accept-time check looks up, one range per recipient.
CREATE TABLE suppressions (
    address        TEXT NOT NULL,
    scope          TEXT NOT NULL DEFAULT '',
    reason         TEXT NOT NULL CHECK (reason IN ('hard_bounce', 'complaint', 'unsubscribe', 'manual')),
    source_message TEXT,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT,
    PRIMARY KEY (address, scope)
);

-- Secrets the store keeps for every node (the link-token key when HERALD_SECRET_KEY is not set).
CREATE TABLE store_secrets (
    name       TEXT PRIMARY KEY,
    value      BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

-- The unsubscribe list a message's List-Unsubscribe link suppresses its recipient for.
ALTER TABLE messages ADD COLUMN unsubscribe_list TEXT;
