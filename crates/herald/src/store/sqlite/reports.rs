//! Bounce and complaint intake on SQLite (issue 12): a report applied to its recipient through the writer
//! (status and timeline line in one transaction, the same group commit as everything else), and kept mail.

use sqlx::Row as _;

use super::{
    Param, SqliteStore,
    raw_db::{RawDb, Value},
    writer::{WriteOp, WriteResult, event},
};
use crate::store::{
    InboundMail, InboundPage, InboundReason, Millis, RecipientStatus, ReportApplied, ReportUpdate,
    StoreError, Unreadable, reports::report_changes_status, rules::EventLine,
};

impl SqliteStore {
    /// Applies a report to the recipient it names; see [`report_changes_status`].
    pub async fn apply_report(&self, update: &ReportUpdate) -> Result<ReportApplied, StoreError> {
        let update = update.clone();
        self.call(|reply| WriteOp::Report { update, reply }).await
    }

    pub async fn keep_inbound(&self, mail: &InboundMail) -> Result<(), StoreError> {
        let rcpt_to = serde_json::to_string(&mail.rcpt_to).expect("strings are JSON");
        self.execute(
            "INSERT INTO inbound (id, received_at, peer, mail_from, rcpt_to, reason, detail, message_id, size, raw)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            vec![
                mail.id.as_str().into(),
                mail.received_at.into(),
                mail.peer.as_str().into(),
                mail.mail_from.as_str().into(),
                Param::Text(rcpt_to),
                mail.reason.as_str().into(),
                mail.detail.as_str().into(),
                mail.message_id.as_deref().into(),
                (mail.size as i64).into(),
                Param::Blob(mail.raw.clone()),
            ],
        )
        .await?;
        Ok(())
    }

    /// Removes kept mail received before `received_before` (`HERALD_RETENTION`).
    pub async fn prune_inbound(&self, received_before: Millis) -> Result<u64, StoreError> {
        self.execute(
            "DELETE FROM inbound WHERE received_at < ?1",
            vec![received_before.into()],
        )
        .await
    }

    /// Kept mail, newest first, without the bytes.
    pub async fn inbound(
        &self,
        before: Option<&str>,
        limit: u32,
    ) -> Result<InboundPage, StoreError> {
        let rows = sqlx::query(
            "SELECT id, received_at, peer, mail_from, rcpt_to, reason, detail, message_id, size, x''
             FROM inbound WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        let items = rows
            .iter()
            .map(inbound_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next = (items.len() == limit as usize)
            .then(|| items.last().map(|m| m.id.clone()))
            .flatten();
        Ok(InboundPage { items, next })
    }

    /// One kept mail with its bytes.
    pub async fn inbound_mail(&self, id: &str) -> Result<Option<InboundMail>, StoreError> {
        let row = sqlx::query(
            "SELECT id, received_at, peer, mail_from, rcpt_to, reason, detail, message_id, size, raw
             FROM inbound WHERE id = ?1",
        )
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(inbound_row).transpose()
    }
}

fn inbound_row(row: &sqlx::sqlite::SqliteRow) -> Result<InboundMail, StoreError> {
    let reason: String = row.get(5);
    let rcpt_to: String = row.get(4);
    Ok(InboundMail {
        id: row.get(0),
        received_at: row.get(1),
        peer: row.get(2),
        mail_from: row.get(3),
        rcpt_to: serde_json::from_str(&rcpt_to).map_err(|_| Unreadable {
            table: "inbound",
            column: "rcpt_to",
            value: rcpt_to.clone(),
        })?,
        reason: InboundReason::parse(&reason).ok_or(Unreadable {
            table: "inbound",
            column: "reason",
            value: reason.clone(),
        })?,
        detail: row.get(6),
        message_id: row.get(7),
        size: row.get::<i64, _>(8) as u64,
        raw: row.get(9),
    })
}

/// The writer's half of [`SqliteStore::apply_report`].
pub(super) fn apply_report(
    db: &mut RawDb,
    update: &ReportUpdate,
    now: Millis,
) -> WriteResult<ReportApplied> {
    let mut rows = Vec::new();
    {
        let mut q = db.stmt(
            "SELECT position, address, status FROM recipients WHERE message_id = ?1 ORDER BY position",
        )?;
        q.bind([Value::Text(&update.message_id)])?;
        while q.step()? {
            rows.push((q.int(0) as u32, q.text(1), q.text(2)));
        }
    }
    if rows.is_empty() {
        return Ok(ReportApplied::NoMessage);
    }
    let count = rows.len();
    let found = rows
        .into_iter()
        .find(|(position, address, _)| update.recipient.matches(*position, address, count))
        .map(|(position, address, status)| {
            Unreadable::parse::<RecipientStatus>("recipients", "status", &status)
                .map(|status| (position, address, status))
        })
        .transpose()?;
    let Some((position, address, status)) = found else {
        return Ok(ReportApplied::NoRecipient);
    };
    let target = update.kind.status();
    // The same report delivered twice (an MTA retrying its DSN): nothing new to say.
    if target == Some(status) {
        return Ok(ReportApplied::Recipient {
            position,
            address,
            changed: false,
            duplicate: true,
        });
    }
    let changed = target.is_some() && report_changes_status(update.kind, status);
    if let (true, Some(target)) = (changed, target) {
        db.stmt(
            "UPDATE recipients SET status = ?1, smtp_code = ?2, enhanced_status = ?3, reply = ?4
             WHERE message_id = ?5 AND position = ?6",
        )?
        .bind([
            target.as_str().into(),
            update.smtp_code.map(i64::from).into(),
            update.enhanced_status.as_deref().into(),
            update.detail.as_deref().into(),
            Value::Text(&update.message_id),
            i64::from(position).into(),
        ])?
        .execute()?;
    }
    event(
        db,
        &update.message_id,
        now,
        EventLine {
            kind: update.kind.event(),
            recipient: Some(&address),
            detail: update.detail.as_deref(),
        },
    )?;
    Ok(ReportApplied::Recipient {
        position,
        address,
        changed,
        duplicate: false,
    })
}
