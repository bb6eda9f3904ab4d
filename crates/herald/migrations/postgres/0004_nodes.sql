-- Nodes serving this database, each with its heartbeat. A node renews its row and the leases of the messages
-- it is delivering every lease/3; a row older than one lease belongs to a dead node: the others release its
-- leases (recorded as an interrupted attempt) and remove the row. Live rows split the cluster-wide limits.
CREATE TABLE nodes (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
