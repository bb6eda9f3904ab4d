-- Issue 14: messages are indexed for full-text search beside the accept commit, by the store's indexer, in
-- transactions of their own. This records how far the index goes: every message whose rowid is at or below
-- it is indexed. Messages above it (the process stopped before indexing them) are indexed at the next start.
-- Every message stored before this migration was indexed in its accept commit.
INSERT INTO store_facts (name, value) SELECT 'fts_indexed_through', COALESCE(MAX(rowid), 0) FROM messages;
