-- Issue 12: expired suppressions are deleted by the hourly housekeeping, a chunk at a time; this index lets
-- each chunk find them without reading the whole list. Partial: most entries never expire, and they cost
-- nothing here.
CREATE INDEX suppressions_expiry ON suppressions (expires_at) WHERE expires_at IS NOT NULL;
