//! Accepting messages on SQLite: the rows of one group of new messages (idempotency keys, shared blobs,
//! tags, counters; the full-text terms are queued for the indexer), written by the writer thread.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use super::{
    SqliteStore,
    indexer::{IndexTerms, PendingDoc, mark_indexed_through},
    profile::{Laps, WriterPhase},
    raw_db::{RawDb, Value},
    suppressions::suppressed,
    writer::{IndexBook, WriteOp, WriteResult, event},
};
use crate::store::{
    Accepted, MessageStatus, Millis, NewMessage, RecipientStatus, StoreError, Unreadable,
    raw::{self, RawSegment, SharedBlob},
    rules,
};

impl SqliteStore {
    /// Stores messages durably; returns when they are committed. Messages whose idempotency key was seen
    /// before are not stored again: their entry says which message the key made.
    pub async fn accept(&self, messages: Vec<NewMessage>) -> Result<Vec<Accepted>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        // The full-text terms are computed here, on the caller's thread, not by the writer every accept waits
        // for; a large group (a batch request) on a blocking thread, so that it holds up no other request.
        // So is each body's stored framing, compressed (`raw::encode_compact`).
        let prepare = |messages: &[NewMessage]| -> Vec<Prepared> {
            messages
                .iter()
                .map(|m| Prepared {
                    terms: IndexTerms::of(m),
                    body: raw::encode_compact(&m.raw),
                })
                .collect()
        };
        let (messages, prepared) = if messages.len() > TERMS_INLINE_MAX {
            tokio::task::spawn_blocking(move || {
                let prepared = prepare(&messages);
                (messages, prepared)
            })
            .await
            .map_err(|_| StoreError::Closed)?
        } else {
            let prepared = prepare(&messages);
            (messages, prepared)
        };
        let accepted = self
            .call(|reply| WriteOp::Accept {
                messages,
                prepared,
                reply,
            })
            .await?;
        // Same process, same database: the engine hears of new work with no polling delay.
        self.work.notify();
        Ok(accepted)
    }
}

/// What the caller works out for each message before the writer stores it.
pub(super) struct Prepared {
    /// The full-text terms (see `indexer`).
    pub(super) terms: IndexTerms,
    /// The body as stored (`raw::encode_compact`).
    pub(super) body: Vec<u8>,
}

/// Messages per accept whose terms are computed on the calling task; more go to a blocking thread.
const TERMS_INLINE_MAX: usize = 16;

/// The writer's watch on creation order: the latest created_at stored, and the flag `search` reads.
pub(super) struct CreatedOrder {
    pub(super) latest: Millis,
    pub(super) in_order: Arc<AtomicBool>,
}

impl CreatedOrder {
    /// Called before storing a message created at `now`: a clock that went back breaks the order for good,
    /// recorded in the same transaction (and at once in memory, so no search relies on it from now on).
    fn check(&mut self, db: &mut RawDb, now: Millis) -> WriteResult<()> {
        if now < self.latest && self.in_order.load(Ordering::Relaxed) {
            self.in_order.store(false, Ordering::Relaxed);
            db.stmt("UPDATE store_facts SET value = 1 WHERE name = 'created_out_of_order'")?
                .execute()?;
        }
        self.latest = self.latest.max(now);
        Ok(())
    }
}

pub(super) fn accept(
    db: &mut RawDb,
    order: &mut CreatedOrder,
    index: &mut IndexBook,
    laps: &mut Laps<'_>,
    messages: &[NewMessage],
    prepared: &mut [Prepared],
    now: Millis,
) -> WriteResult<Vec<Accepted>> {
    let mut results = Vec::with_capacity(messages.len());
    // Shared parts used by the messages stored now, with how many use each (one write per blob per op).
    let mut blob_refs: HashMap<[u8; 32], (&SharedBlob, i64)> = HashMap::new();
    // Keys made earlier in this same group (not yet visible to a SELECT of other rows' keys).
    let mut made_here: HashMap<&str, (String, MessageStatus)> = HashMap::new();
    for (message, prepared) in messages.iter().zip(prepared.iter_mut()) {
        if let Some(key) = message.idempotency_key.as_deref() {
            // Idempotency: a key seen before returns the message it made; nothing new is queued.
            let existing = made_here.get(key).cloned().map_or_else(
                || -> WriteResult<Option<(String, MessageStatus)>> {
                    let mut q =
                        db.stmt("SELECT id, status FROM messages WHERE idempotency_key = ?1")?;
                    q.bind([key.into()])?;
                    Ok(if q.step()? {
                        Some((
                            q.text(0),
                            Unreadable::parse("messages", "status", &q.str(1))?,
                        ))
                    } else {
                        None
                    })
                },
                |found| Ok(Some(found)),
            )?;
            if let Some((id, status)) = existing {
                results.push(Accepted::Existing { id, status });
                continue;
            }
        }
        // The suppression check (issue 12), in the accepting transaction: one primary-key range per recipient.
        let mut suppressed_at = Vec::new();
        if !message.ignore_suppressions {
            let scopes = rules::message_scopes(&message.tags, message.unsubscribe_list.as_deref());
            for (position, recipient) in message.recipients.iter().enumerate() {
                let address = rules::suppression_address(&recipient.address);
                if suppressed(db, &address, &scopes, now)? {
                    suppressed_at.push(position);
                }
            }
        }
        let all_suppressed =
            !message.recipients.is_empty() && suppressed_at.len() == message.recipients.len();
        let state = rules::accepted_state(message.send_at, now, all_suppressed);
        let status = state.status;
        if let Some(key) = message.idempotency_key.as_deref() {
            made_here.insert(key, (message.id.clone(), status));
        }
        order.check(db, now)?;

        for segment in &message.raw {
            if let RawSegment::Shared { blob, .. } = segment {
                blob_refs.entry(blob.hash).or_insert((blob, 0)).1 += 1;
            }
        }
        let tags = serde_json::to_string(&message.tags).unwrap_or_else(|_| "[]".into());
        let metadata = message.metadata.to_string();
        db.stmt(
            "INSERT INTO messages (id, status, sender, subject, created_at, send_at, next_attempt_at, attempts,
             idempotency_key, batch_id, tags, metadata, raw_size, source, finished_at, unsubscribe_list)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?
        .bind([
            Value::Text(&message.id),
            status.as_str().into(),
            Value::Text(&message.sender),
            Value::Text(&message.subject),
            now.into(),
            message.send_at.into(),
            state.next_attempt_at.into(),
            message.idempotency_key.as_deref().into(),
            message.batch_id.as_deref().into(),
            Value::Text(&tags),
            Value::Text(&metadata),
            (raw::wire_size(&message.raw) as i64).into(),
            message.source.as_str().into(),
            state.finished_at.into(),
            message.unsubscribe_list.as_deref().into(),
        ])?
        .execute()?;
        let rowid = db.last_insert_rowid();
        // Its own table, so that the claim and the outcome do not write it again (migration 0020).
        db.stmt("INSERT INTO message_bodies (message_rowid, raw) VALUES (?1, ?2)")?
            .bind([rowid.into(), Value::Blob(&prepared.body)])?
            .execute()?;
        laps.lap(WriterPhase::Messages);

        if rowid <= index.indexed_through {
            // SQLite reuses the largest rowid once its row is gone; every row left is below this one, so the
            // index still covers everything up to it.
            index.indexed_through = rowid - 1;
            mark_indexed_through(db, index.indexed_through)?;
        }
        index.fresh.push(PendingDoc {
            rowid,
            id: message.id.clone(),
            terms: std::mem::take(&mut prepared.terms),
            committed: Instant::now(),
        });
        laps.lap(WriterPhase::Other);
        for (position, recipient) in message.recipients.iter().enumerate() {
            let status = if suppressed_at.contains(&position) {
                RecipientStatus::Suppressed
            } else {
                RecipientStatus::Pending
            };
            db.stmt(
                "INSERT INTO recipients (message_id, position, address, kind, status) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .bind([
                Value::Text(&message.id),
                (position as i64).into(),
                Value::Text(&recipient.address),
                recipient.kind.as_str().into(),
                status.as_str().into(),
            ])?
            .execute()?;
        }
        laps.lap(WriterPhase::Recipients);
        for tag in &message.tags {
            // OR IGNORE: a tag listed twice is one row.
            db.stmt(
                "INSERT OR IGNORE INTO message_tags (tag, created_at, message_id) VALUES (?1, ?2, ?3)",
            )?
            .bind([Value::Text(tag), now.into(), Value::Text(&message.id)])?
            .execute()?;
        }
        laps.lap(WriterPhase::Tags);
        event(db, &message.id, now, rules::status_event(status))?;
        let suppressed: Vec<String> = suppressed_at
            .iter()
            .map(|&i| message.recipients[i].address.clone())
            .collect();
        for address in &suppressed {
            let line = rules::suppressed_event(address, rules::SUPPRESSED_AT_ACCEPT);
            event(db, &message.id, now, line)?;
        }
        laps.lap(WriterPhase::Events);
        results.push(Accepted::New {
            id: message.id.clone(),
            status,
            suppressed,
        });
    }
    // What the INSERT trigger on PostgreSQL counts, once per group here (see migrations/sqlite/0002).
    let new = |wanted: MessageStatus| {
        results
            .iter()
            .filter(|a| matches!(a, Accepted::New { status, .. } if *status == wanted))
            .count() as i64
    };
    let (queued, scheduled) = (new(MessageStatus::Queued), new(MessageStatus::Scheduled));
    // Every recipient suppressed: finished at accept (see rules::accepted_state).
    let failed = new(MessageStatus::Failed);
    if queued + scheduled + failed > 0 {
        db.stmt("UPDATE status_counts SET queued = queued + ?1, scheduled = scheduled + ?2, failed = failed + ?3 WHERE shard = 0")?
            .bind([queued.into(), scheduled.into(), failed.into()])?
            .execute()?;
        db.stmt(
            "INSERT INTO activity (minute, shard, accepted)
             VALUES (CAST(unixepoch('subsec') * 1000 AS INTEGER) / 60000 * 60000, 0, ?1)
             ON CONFLICT (minute, shard) DO UPDATE SET accepted = accepted + excluded.accepted",
        )?
        .bind([(queued + scheduled + failed).into()])?
        .execute()?;
    }
    laps.lap(WriterPhase::Counters);
    for (hash, (blob, refs)) in blob_refs {
        // Stored once; `blob_refs` counts the bodies that use it, so pruning knows when it is unused. A
        // `blob_refs` row exists exactly while its blob does (pruning deletes both in one transaction), so
        // counting one more use is the whole write when the blob is stored already: the attachment every
        // single-message call carries costs an index lookup, not its bytes.
        let counted = db
            .stmt("UPDATE blob_refs SET refs = refs + ?2 WHERE hash = ?1")?
            .bind([Value::Blob(&hash), refs.into()])?
            .execute()?;
        if counted == 0 {
            db.stmt("INSERT INTO blobs (hash, bytes, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (hash) DO NOTHING")?
                .bind([Value::Blob(&hash), Value::Blob(&blob.bytes), now.into()])?
                .execute()?;
            db.stmt("INSERT INTO blob_refs (hash, refs) VALUES (?1, ?2)")?
                .bind([Value::Blob(&hash), refs.into()])?
                .execute()?;
        }
    }
    laps.lap(WriterPhase::Blobs);
    Ok(results)
}
