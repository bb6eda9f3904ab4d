//! The queue on SQLite: claiming due messages under a lease, recording attempt outcomes, cancelling, giving
//! back and renewing leases, and when the next message is due.

use std::{collections::HashSet, time::Duration};

use bytes::Bytes;
use sqlx::Row;

use super::{
    SqliteStore,
    activity::StatusChanges,
    raw_db::{RawDb, Value},
    suppressions::suppress,
    writer::{WriteOp, WriteResult, event},
};
use crate::store::{
    AttemptOutcome, CancelOutcome, ClaimedMessage, ClaimedRecipient, MessageStatus, Millis,
    StoreError, Unreadable, raw,
    rules::{
        self, cancellable_sql, final_recipients_sql, given_back_status_sql, open_recipients_sql,
    },
};

/// A claimed row before its shared blobs are resolved (outside the writer, by the caller's task).
pub(super) struct Claimed {
    pub(super) id: String,
    pub(super) sender: String,
    pub(super) created_at: Millis,
    pub(super) attempts: u32,
    pub(super) raw: Option<Vec<u8>>,
    pub(super) rowid: i64,
    pub(super) recipients: Vec<ClaimedRecipient>,
}

impl SqliteStore {
    /// Takes up to `limit` due messages for `owner` under a lease of `lease`. A message whose lease expires
    /// before its outcome is recorded becomes due again (its worker is presumed dead).
    pub async fn claim(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedMessage>, StoreError> {
        let claimed = self
            .call(|reply| WriteOp::Claim {
                owner: owner.to_owned(),
                lease,
                limit,
                reply,
            })
            .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        // Resolve shared parts once per batch, outside the writer: a batch of 500 messages sharing one PDF reads
        // it once and every message holds the same bytes.
        let mut wanted = HashSet::new();
        for message in &claimed {
            if let Some(framed) = &message.raw {
                let hashes =
                    raw::shared_hashes(framed).map_err(|reason| StoreError::CorruptBody {
                        id: message.id.clone(),
                        reason,
                    })?;
                wanted.extend(hashes);
            }
        }
        let blobs = self.blobs(wanted).await?;
        claimed
            .into_iter()
            .map(|c| {
                let raw = match c.raw {
                    Some(framed) => {
                        raw::decode(&Bytes::from(framed), &blobs).map_err(|reason| {
                            StoreError::CorruptBody {
                                id: c.id.clone(),
                                reason,
                            }
                        })?
                    }
                    None => {
                        return Err(StoreError::CorruptBody {
                            id: c.id,
                            reason: "raw body was pruned".into(),
                        });
                    }
                };
                Ok(ClaimedMessage {
                    id: c.id,
                    sender: c.sender,
                    created_at: c.created_at,
                    attempts: c.attempts,
                    recipients: c.recipients,
                    raw,
                })
            })
            .collect()
    }

    /// Records the end of attempts: recipient results, timeline events, the message's new status and, for
    /// deferred recipients, when to retry. Applied in one commit with whatever else is waiting.
    pub async fn record(
        &self,
        owner: &str,
        outcomes: Vec<AttemptOutcome>,
    ) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        self.call(|reply| WriteOp::Record {
            owner: owner.to_owned(),
            outcomes,
            reply,
        })
        .await
    }

    /// Cancels a message that has not been sent yet (scheduled, queued or deferred).
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, StoreError> {
        self.call(|reply| WriteOp::Cancel {
            id: id.to_owned(),
            reply,
        })
        .await
    }

    /// Gives back every lease `owner` holds (graceful shutdown): those messages are due again at once.
    pub async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        self.call(|reply| WriteOp::Release {
            owner: owner.to_owned(),
            reply,
        })
        .await
    }

    /// Extends the leases `owner` still holds on `ids` to `lease` from now, in one commit; answers how many it
    /// still held (a message recorded meanwhile, or taken over after a lost lease, is left alone).
    pub async fn renew_leases(
        &self,
        owner: &str,
        lease: Duration,
        ids: &[String],
    ) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.call(|reply| WriteOp::Renew {
            owner: owner.to_owned(),
            lease,
            ids: ids.to_vec(),
            reply,
        })
        .await
    }

    /// The earliest time any live message is due, so an idle worker can sleep exactly until then.
    pub async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        Ok(sqlx::query(
            "SELECT MIN(next_attempt_at) FROM messages WHERE next_attempt_at IS NOT NULL",
        )
        .fetch_one(&self.reader)
        .await?
        .get(0))
    }
}

pub(super) fn claim(
    db: &mut RawDb,
    owner: &str,
    now: Millis,
    lease_until: Millis,
    limit: u32,
) -> WriteResult<Vec<Claimed>> {
    // Due = next_attempt_at passed: queued, deferred, scheduled whose time came, or sending with an expired
    // lease (its worker died). The partial index makes this a range scan whatever the queue length.
    let mut due = Vec::new();
    {
        let mut q = db.stmt(
            "SELECT rowid, status FROM messages WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= ?1
             ORDER BY next_attempt_at LIMIT ?2",
        )?;
        q.bind([now.into(), i64::from(limit).into()])?;
        while q.step()? {
            due.push((
                q.int(0),
                Unreadable::parse::<MessageStatus>("messages", "status", &q.str(1))?,
            ));
        }
    }
    // Counted here, once for the claim, not by the row trigger (migration 0021).
    let mut changes = StatusChanges::default();
    let mut claimed = Vec::with_capacity(due.len());
    for (rowid, status) in due {
        let mut q = db.stmt(
            "UPDATE messages SET status = 'sending', lease_owner = ?1, next_attempt_at = ?2,
             writer_counted = 1 - writer_counted WHERE rowid = ?3
             RETURNING id, sender, created_at, attempts",
        )?;
        q.bind([owner.into(), lease_until.into(), rowid.into()])?;
        if q.step()? {
            changes.moved(status, MessageStatus::Sending);
            claimed.push(Claimed {
                id: q.text(0),
                sender: q.text(1),
                created_at: q.int(2),
                attempts: q.int(3) as u32,
                raw: None,
                rowid,
                recipients: Vec::new(),
            });
        }
    }
    changes.write(db)?;
    for message in &mut claimed {
        {
            let mut q = db.stmt("SELECT raw FROM message_bodies WHERE message_rowid = ?1")?;
            q.bind([message.rowid.into()])?;
            if q.step()? {
                message.raw = Some(q.bytes(0).to_vec());
            }
        }
        {
            let mut q = db.stmt(concat!(
                "SELECT position, address FROM recipients
                 WHERE message_id = ?1 AND status IN ",
                open_recipients_sql!(),
                " ORDER BY position"
            ))?;
            q.bind([Value::Text(&message.id)])?;
            while q.step()? {
                message.recipients.push(ClaimedRecipient {
                    position: q.int(0) as u32,
                    address: q.text(1),
                });
            }
        }
        event(
            db,
            &message.id,
            now,
            rules::status_event(MessageStatus::Sending),
        )?;
    }
    Ok(claimed)
}

pub(super) fn record(
    db: &mut RawDb,
    owner: &str,
    outcomes: &[AttemptOutcome],
    now: Millis,
) -> WriteResult<()> {
    let mut statuses = Vec::new();
    // Counted once for the whole record, not by the row trigger (migration 0021).
    let mut changes = StatusChanges::default();
    for outcome in outcomes {
        let id = outcome.id.as_str();
        // Only the lease holder records: a node that lost the lease (taken over, or released as dead) would
        // otherwise overwrite what the new owner is doing. Its report stays visible on the timeline.
        let holds_lease = db
            .stmt(
                "SELECT 1 FROM messages WHERE id = ?1 AND lease_owner = ?2 AND status = 'sending'",
            )?
            .bind([id.into(), owner.into()])?
            .step()?;
        if !holds_lease {
            let detail = rules::stale_outcome_detail(owner, &outcome.detail);
            event(db, id, now, rules::stale_outcome_event(&detail))?;
            continue;
        }
        for r in &outcome.recipients {
            db.stmt(concat!(
                "UPDATE recipients SET status = ?1, smtp_code = ?2, enhanced_status = ?3, reply = ?4
                 WHERE message_id = ?5 AND position = ?6 AND status NOT IN ",
                final_recipients_sql!()
            ))?
            .bind([
                r.status.as_str().into(),
                r.smtp_code.map(i64::from).into(),
                r.enhanced_status.as_deref().into(),
                r.reply.as_deref().into(),
                id.into(),
                i64::from(r.position).into(),
            ])?
            .execute()?;
            event(db, id, now, rules::recipient_event(r))?;
            // The mailbox does not exist: never mailed again, decided with the outcome (issue 12).
            if rules::is_bad_mailbox(r) {
                suppress(db, &[rules::hard_bounce(r, id)], now)?;
            }
        }
        statuses.clear();
        {
            let mut q = db.stmt("SELECT status FROM recipients WHERE message_id = ?1")?;
            q.bind([id.into()])?;
            while q.step()? {
                statuses.push(Unreadable::parse("recipients", "status", &q.str(0))?);
            }
        }
        let settled = rules::settle(&statuses, outcome.retry_at, now);
        if settled.gave_up {
            let mut failed = Vec::new();
            {
                let mut q = db.stmt(concat!(
                    "UPDATE recipients SET status = 'failed' WHERE message_id = ?1 AND status IN ",
                    open_recipients_sql!(),
                    " RETURNING address"
                ))?;
                q.bind([id.into()])?;
                while q.step()? {
                    failed.push(q.text(0));
                }
            }
            for address in &failed {
                event(db, id, now, rules::gave_up_event(address))?;
            }
        }
        let updated = db
            .stmt(
                "UPDATE messages SET status = ?1, attempts = attempts + ?6, next_attempt_at = ?2, lease_owner = NULL,
                 finished_at = ?3, writer_counted = 1 - writer_counted WHERE id = ?4 AND lease_owner = ?5",
            )?
        .bind([
            settled.status.as_str().into(),
            settled.next_attempt_at.into(),
            settled.finished_at.into(),
            id.into(),
            owner.into(),
            i64::from(outcome.counts_attempt).into(),
        ])?
        .execute()?;
        if updated == 1 {
            // The lease check above read `sending` in this same transaction.
            changes.moved(MessageStatus::Sending, settled.status);
        }
        event(
            db,
            id,
            now,
            rules::attempt_event(settled.status, &outcome.detail),
        )?;
    }
    changes.write(db)
}

pub(super) fn cancel(db: &mut RawDb, id: &str, now: Millis) -> WriteResult<CancelOutcome> {
    let done = db
        .stmt(concat!(
            "UPDATE messages SET status = 'cancelled', next_attempt_at = NULL, finished_at = ?1
             WHERE id = ?2 AND status IN ",
            cancellable_sql!()
        ))?
        .bind([now.into(), id.into()])?
        .execute()?;
    if done == 1 {
        db.stmt(concat!(
            "UPDATE recipients SET status = 'cancelled' WHERE message_id = ?1 AND status IN ",
            open_recipients_sql!()
        ))?
        .bind([id.into()])?
        .execute()?;
        event(db, id, now, rules::status_event(MessageStatus::Cancelled))?;
        return Ok(CancelOutcome::Cancelled);
    }
    let mut q = db.stmt("SELECT status FROM messages WHERE id = ?1")?;
    q.bind([id.into()])?;
    Ok(if q.step()? {
        CancelOutcome::NotCancellable(Unreadable::parse("messages", "status", &q.str(0))?)
    } else {
        CancelOutcome::NotFound
    })
}

/// Gives back every lease `owner` holds: those messages are due again at once, as they were before the claim.
pub(super) fn release(db: &mut RawDb, owner: &str, now: Millis) -> WriteResult<u64> {
    Ok(db
        .stmt(concat!(
            "UPDATE messages SET status = ",
            given_back_status_sql!(),
            ", lease_owner = NULL, next_attempt_at = ?1 WHERE lease_owner = ?2 AND status = 'sending'"
        ))?
        .bind([now.into(), owner.into()])?
        .execute()?)
}

/// Extends the leases `owner` still holds on `ids` to `until`.
pub(super) fn renew(
    db: &mut RawDb,
    owner: &str,
    until: Millis,
    ids: &[String],
) -> WriteResult<u64> {
    let ids = serde_json::to_string(ids).expect("a list of strings is JSON");
    Ok(db
        .stmt(
            "UPDATE messages SET next_attempt_at = ?1
             WHERE id IN (SELECT value FROM json_each(?3)) AND lease_owner = ?2 AND status = 'sending'",
        )?
        .bind([until.into(), owner.into(), Value::Text(&ids)])?
        .execute()?)
}
