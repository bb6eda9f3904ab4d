//! The archive on SQLite: raw bodies (with their shared blobs) and their pruning, one message with its
//! recipients and timeline, and timeline lines added from outside delivery.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use bytes::Bytes;
use sqlx::Row;

use super::{
    Param, SqliteStore,
    raw_db::{RawDb, Value},
    writer::{WriteOp, WriteResult},
};
use crate::store::{
    MessageView, Millis, StoreError,
    raw::{self, RawSegment, SharedBlob},
    rows,
};

impl SqliteStore {
    pub(super) async fn blobs(
        &self,
        hashes: HashSet<[u8; 32]>,
    ) -> Result<HashMap<[u8; 32], Arc<SharedBlob>>, StoreError> {
        let mut found = HashMap::new();
        for hash in hashes {
            let row = sqlx::query("SELECT bytes FROM blobs WHERE hash = ?")
                .bind(&hash[..])
                .fetch_optional(&self.reader)
                .await?;
            if let Some(row) = row {
                let bytes: Vec<u8> = row.get(0);
                found.insert(hash, SharedBlob::stored(hash, Bytes::from(bytes)));
            }
        }
        Ok(found)
    }

    /// Drops the raw bodies of messages finished before `finished_before` (status and events are kept), and
    /// the shared blobs no longer referenced. Returns how many bodies were pruned.
    pub async fn prune_raw(&self, finished_before: Millis) -> Result<u64, StoreError> {
        self.call(|reply| WriteOp::Prune {
            finished_before,
            reply,
        })
        .await
    }

    /// The exact bytes of a message as segments (shared parts resolved), or `None` if unknown or pruned.
    pub async fn raw(&self, id: &str) -> Result<Option<Vec<RawSegment>>, StoreError> {
        let row = sqlx::query(
            "SELECT b.raw FROM messages m JOIN message_bodies b ON b.message_rowid = m.rowid WHERE m.id = ?",
        )
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        let Some(framed) = row.and_then(|r| r.get::<Option<Vec<u8>>, _>(0)) else {
            return Ok(None);
        };
        raw::resolve(id, framed, |hashes| self.blobs(hashes))
            .await
            .map(Some)
    }

    /// One message with its recipients and timeline.
    pub async fn message(&self, id: &str) -> Result<Option<MessageView>, StoreError> {
        // One read transaction: the message, its recipients and its events from the same snapshot (a commit
        // between two reads could otherwise show a queued message whose recipients are delivered).
        let mut tx = self.reader.begin().await?;
        // The columns rows::message_view reads, in its order.
        let Some(row) = sqlx::query(
            "SELECT id, status, created_at, send_at, sender, subject, attempts, batch_id, tags, metadata, raw_size,
                    source
             FROM messages WHERE id = ?",
        )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let recipients = sqlx::query(
            "SELECT address, kind, status, smtp_code, enhanced_status, reply FROM recipients
             WHERE message_id = ? ORDER BY position",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let events = sqlx::query(
            "SELECT at, type, recipient, detail FROM events WHERE message_id = ? ORDER BY id",
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

    /// Adds a line to a message's timeline, at the store's clock; `false` when there is no such message.
    pub async fn append_event(
        &self,
        id: &str,
        kind: &str,
        detail: Option<String>,
    ) -> Result<bool, StoreError> {
        let added = self
            .execute(
                "INSERT INTO events (message_id, at, type, recipient, detail)
                 SELECT ?1, ?2, ?3, NULL, ?4 WHERE EXISTS (SELECT 1 FROM messages WHERE id = ?1)",
                vec![
                    id.into(),
                    self.clock.now().into(),
                    kind.into(),
                    detail.map_or(Param::Null, Param::Text),
                ],
            )
            .await?;
        Ok(added > 0)
    }
}

pub(super) fn prune(db: &mut RawDb, finished_before: Millis) -> WriteResult<u64> {
    let mut pruned = Vec::new();
    {
        let mut q = db.stmt(
            "SELECT m.rowid, b.raw FROM messages m JOIN message_bodies b ON b.message_rowid = m.rowid
             WHERE m.finished_at IS NOT NULL AND m.finished_at < ?1",
        )?;
        q.bind([finished_before.into()])?;
        while q.step()? {
            // A corrupt frame cannot hold a valid reference; pruning it releases nothing rather than failing.
            pruned.push((q.int(0), raw::shared_hashes(q.bytes(1)).unwrap_or_default()));
        }
    }
    for (id, hashes) in &pruned {
        db.stmt("DELETE FROM message_bodies WHERE message_rowid = ?1")?
            .bind([(*id).into()])?
            .execute()?;
        for hash in hashes {
            db.stmt("UPDATE blob_refs SET refs = refs - 1 WHERE hash = ?1")?
                .bind([Value::Blob(hash)])?
                .execute()?;
        }
    }
    db.stmt("DELETE FROM blobs WHERE hash IN (SELECT hash FROM blob_refs WHERE refs <= 0)")?
        .execute()?;
    db.stmt("DELETE FROM blob_refs WHERE refs <= 0")?
        .execute()?;
    Ok(pruned.len() as u64)
}
