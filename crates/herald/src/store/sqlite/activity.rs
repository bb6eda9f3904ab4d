//! Counters on SQLite: messages per status (kept by triggers) and per-minute activity.

use std::collections::HashMap;

use sqlx::Row;

use super::{
    SqliteStore,
    raw_db::{RawDb, Value},
    writer::WriteResult,
};
use crate::store::{
    ActivityBucket, MessageStatus, Millis, StoreError,
    rows::{self, counts_from},
    search::activity_start,
};

/// Status changes a write made itself, counted once at its end rather than by the row trigger (migration
/// 0021): the rows it changed had `writer_counted` flipped, which the trigger skips.
#[derive(Debug, Default)]
pub(super) struct StatusChanges {
    /// Net change per status, in the order of [`MessageStatus::ALL`].
    net: [i64; 7],
    changed: bool,
}

impl StatusChanges {
    /// One message went from `from` to `to` (nothing when they are the same, as the trigger does).
    pub(super) fn moved(&mut self, from: MessageStatus, to: MessageStatus) {
        if from != to {
            self.net[index(from)] -= 1;
            self.net[index(to)] += 1;
            self.changed = true;
        }
    }

    /// Adds the changes to `status_counts`, and the messages that became delivered, failed or deferred to
    /// this minute's activity, as the trigger would have row by row.
    pub(super) fn write(&self, db: &mut RawDb) -> WriteResult<()> {
        if !self.changed {
            return Ok(());
        }
        let net = |status| Value::Int(self.net[index(status)]);
        db.stmt(
            "UPDATE status_counts SET scheduled = scheduled + ?1, queued = queued + ?2, sending = sending + ?3,
             deferred = deferred + ?4, delivered = delivered + ?5, failed = failed + ?6,
             cancelled = cancelled + ?7 WHERE shard = 0",
        )?
        .bind(MessageStatus::ALL.iter().map(|&s| net(s)))?
        .execute()?;
        // Entering a status counts for the chart; a message leaves delivered and failed never, and deferred
        // only into sending, which is not a chart column, so the net change into each is what entered it.
        let entered = |status| self.net[index(status)].max(0);
        let (delivered, failed, deferred) = (
            entered(MessageStatus::Delivered),
            entered(MessageStatus::Failed),
            entered(MessageStatus::Deferred),
        );
        if delivered + failed + deferred > 0 {
            db.stmt(
                "INSERT INTO activity (minute, shard, delivered, failed, deferred)
                 VALUES (CAST(unixepoch('subsec') * 1000 AS INTEGER) / 60000 * 60000, 0, ?1, ?2, ?3)
                 ON CONFLICT (minute, shard) DO UPDATE SET delivered = delivered + excluded.delivered,
                     failed = failed + excluded.failed, deferred = deferred + excluded.deferred",
            )?
            .bind([delivered.into(), failed.into(), deferred.into()])?
            .execute()?;
        }
        Ok(())
    }
}

fn index(status: MessageStatus) -> usize {
    MessageStatus::ALL
        .iter()
        .position(|&s| s == status)
        .expect("every status is in ALL")
}

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
