//! Counters on SQLite: messages per status (kept by triggers) and per-minute activity.

use std::collections::HashMap;

use sqlx::Row;

use super::SqliteStore;
use crate::store::{
    ActivityBucket, MessageStatus, Millis, StoreError,
    rows::{self, counts_from},
    search::activity_start,
};

impl SqliteStore {
    /// Messages per status, from the counters the triggers keep (one row: as fast at a million as at ten).
    pub async fn counts(&self) -> Result<HashMap<MessageStatus, u64>, StoreError> {
        let row = sqlx::query(
            "SELECT scheduled, queued, sending, deferred, delivered, failed, cancelled
             FROM status_counts WHERE shard = 0",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(counts_from(|i| row.get::<i64, _>(i)))
    }

    /// Messages accepted, delivered, failed and deferred per `bucket_ms` (a multiple of a minute), for the
    /// buckets from the one holding `since` on that have any; ascending.
    pub async fn activity(
        &self,
        since: Millis,
        bucket_ms: i64,
    ) -> Result<Vec<ActivityBucket>, StoreError> {
        let from = activity_start(since, bucket_ms)?;
        let rows = sqlx::query(
            "SELECT minute / ?1 * ?1 AS start, SUM(accepted), SUM(delivered), SUM(failed), SUM(deferred)
             FROM activity WHERE minute >= ?2 GROUP BY start ORDER BY start",
        )
            .bind(bucket_ms)
            .bind(from)
            .fetch_all(&self.reader)
            .await?;
        Ok(rows.iter().map(rows::activity).collect())
    }

    /// Drops per-minute activity older than `before`; returns the minutes dropped.
    pub async fn prune_activity(&self, before: Millis) -> Result<u64, StoreError> {
        self.execute(
            "DELETE FROM activity WHERE minute < ?1",
            vec![before.into()],
        )
        .await
    }
}
