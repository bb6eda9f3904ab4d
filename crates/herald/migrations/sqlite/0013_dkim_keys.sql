-- DKIM keys (issue 13), per signing domain and selector. private_key is PKCS #8 DER, sealed with
-- HERALD_SECRET_KEY when encrypted = 1. The active key of a domain is its newest row not retired.
CREATE TABLE dkim_keys (
    domain      TEXT NOT NULL,
    selector    TEXT NOT NULL,
    algorithm   TEXT NOT NULL CHECK (algorithm IN ('ed25519', 'rsa')),
    public_key  TEXT NOT NULL,
    private_key BLOB NOT NULL,
    encrypted   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER,
    PRIMARY KEY (domain, selector)
) WITHOUT ROWID;
