//! Counters on PostgreSQL: messages per status and per-minute activity, each summed over its shards.

use std::collections::HashMap;

use sqlx::Row;

use super::PgStore;
use crate::store::{
    ActivityBucket, MessageStatus, Millis, StoreError,
    rows::{self, counts_from},
    search::activity_start,
};

impl PgStore {
    /// Messages per status: the sum of the 16 shards the triggers keep.
    pub async fn counts(&self) -> Result<HashMap<MessageStatus, u64>, StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(scheduled), 0)::bigint, COALESCE(SUM(queued), 0)::bigint,
                    COALESCE(SUM(sending), 0)::bigint, COALESCE(SUM(deferred), 0)::bigint,
                    COALESCE(SUM(delivered), 0)::bigint, COALESCE(SUM(failed), 0)::bigint,
                    COALESCE(SUM(cancelled), 0)::bigint
             FROM status_counts",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(counts_from(|i| row.get::<i64, _>(i)))
    }

    /// Activity per bucket (see `SqliteStore::activity`), summed over the shards.
    pub async fn activity(
        &self,
        since: Millis,
        bucket_ms: i64,
    ) -> Result<Vec<ActivityBucket>, StoreError> {
        let from = activity_start(since, bucket_ms)?;
        let rows = sqlx::query(
            "SELECT minute / $1 * $1 AS start, SUM(accepted)::bigint, SUM(delivered)::bigint,
                    SUM(failed)::bigint, SUM(deferred)::bigint
             FROM activity WHERE minute >= $2 GROUP BY start ORDER BY start",
        )
        .bind(bucket_ms)
        .bind(from)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(rows::activity).collect())
    }

    pub async fn prune_activity(&self, before: Millis) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM activity WHERE minute < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}
