-- Dashboard logins. The cookie holds a random secret; only its SHA-256 is stored (like API tokens), with the
-- hash of the token the person signed in with, so that revoking that token ends its sessions too.
CREATE TABLE dashboard_sessions (
    hash       BLOB PRIMARY KEY,
    token_hash BLOB NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
