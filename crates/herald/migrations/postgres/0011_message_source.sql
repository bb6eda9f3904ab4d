-- Where a message came from (issue 11): 'api' (HTTP API, CLI, dashboard) or 'smtp' (SMTP submission).
ALTER TABLE messages ADD COLUMN source TEXT NOT NULL DEFAULT 'api';
