//! The archive on PostgreSQL: raw bodies (with their shared blobs) and their pruning, one message with its
//! recipients and timeline, and timeline lines added from outside delivery.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use bytes::Bytes;
use sqlx::Row;

use super::PgStore;
use crate::store::{
    MessageView, Millis, StoreError,
    raw::{self, RawSegment, SharedBlob},
    rows,
};

impl PgStore {
    pub(super) async fn blobs(
        &self,
        hashes: HashSet<[u8; 32]>,
    ) -> Result<HashMap<[u8; 32], Arc<SharedBlob>>, StoreError> {
        if hashes.is_empty() {
            return Ok(HashMap::new());
        }
        let keys: Vec<Vec<u8>> = hashes.iter().map(|h| h.to_vec()).collect();
        let mut found = HashMap::new();
        for row in sqlx::query("SELECT hash, bytes FROM blobs WHERE hash = ANY($1)")
            .bind(&keys)
            .fetch_all(&self.pool)
            .await?
        {
            let hash: Vec<u8> = row.get(0);
            if let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) {
                let bytes: Vec<u8> = row.get(1);
                found.insert(hash, SharedBlob::stored(hash, Bytes::from(bytes)));
            }
        }
        Ok(found)
    }

    pub async fn prune_raw(&self, finished_before: Millis) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT id, raw FROM messages WHERE raw IS NOT NULL AND finished_at IS NOT NULL AND finished_at < $1
             FOR UPDATE",
        )
        .bind(finished_before)
        .fetch_all(&mut *tx)
        .await?;
        let mut released: HashMap<[u8; 32], i64> = HashMap::new();
        for row in &rows {
            for hash in raw::shared_hashes(row.get::<&[u8], _>(1)).unwrap_or_default() {
                *released.entry(hash).or_default() += 1;
            }
        }
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        sqlx::query("UPDATE messages SET raw = NULL WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        for (hash, count) in released {
            sqlx::query("UPDATE blob_refs SET refs = refs - $1 WHERE hash = $2")
                .bind(count)
                .bind(&hash[..])
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM blobs WHERE hash IN (SELECT hash FROM blob_refs WHERE refs <= 0)")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM blob_refs WHERE refs <= 0")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    pub async fn raw(&self, id: &str) -> Result<Option<Vec<RawSegment>>, StoreError> {
        let row = sqlx::query("SELECT raw FROM messages WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(framed) = row.and_then(|r| r.get::<Option<Vec<u8>>, _>(0)) else {
            return Ok(None);
        };
        raw::resolve(id, framed, |hashes| self.blobs(hashes))
            .await
            .map(Some)
    }

    pub async fn message(&self, id: &str) -> Result<Option<MessageView>, StoreError> {
        // One snapshot for the message, its recipients and its events (REPEATABLE READ: a commit between the
        // reads could otherwise show a queued message whose recipients are delivered).
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        // The columns rows::message_view reads, in its order.
        let Some(row) = sqlx::query(
            "SELECT id, status, created_at, send_at, sender, subject, attempts::bigint, batch_id, tags, metadata, raw_size,
                    source
             FROM messages WHERE id = $1",
        )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let recipients = sqlx::query(
            "SELECT address, kind, status, smtp_code::bigint, enhanced_status, reply FROM recipients
             WHERE message_id = $1 ORDER BY position",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let events = sqlx::query(
            "SELECT at, type, recipient, detail FROM events WHERE message_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let recipients = recipients
            .iter()
            .map(rows::recipient)
            .collect::<Result<_, _>>()?;
        Ok(Some(rows::message_view(
            &row,
            recipients,
            events.iter().map(rows::event).collect(),
        )?))
    }

    pub async fn append_event(
        &self,
        id: &str,
        kind: &str,
        detail: Option<String>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO events (message_id, at, type, recipient, detail)
             SELECT $1, $2, $3, NULL, $4 WHERE EXISTS (SELECT 1 FROM messages WHERE id = $1)",
        )
        .bind(id)
        .bind(self.clock.now())
        .bind(kind)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}
