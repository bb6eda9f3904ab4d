-- DKIM keys (issue 13), per signing domain and selector. private_key is PKCS #8 DER, sealed with
-- HERALD_SECRET_KEY when encrypted. The active key of a domain is its newest row not retired.
CREATE TABLE dkim_keys (
    domain      TEXT NOT NULL,
    selector    TEXT NOT NULL,
    algorithm   TEXT NOT NULL CHECK (algorithm IN ('ed25519', 'rsa')),
    public_key  TEXT NOT NULL,
    private_key BYTEA NOT NULL,
    encrypted   BOOLEAN NOT NULL,
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT,
    PRIMARY KEY (domain, selector)
);
