//! Bounce and complaint intake on PostgreSQL (issue 12): the same rules as on SQLite (`store/reports.rs`),
//! in one transaction that locks the recipient's row, so two nodes taking the same report at once write
//! one status change and one timeline line.

use sqlx::Row as _;

use super::{PgStore, insert_events};
use crate::store::{
    InboundMail, InboundPage, InboundReason, Millis, RecipientStatus, ReportApplied, ReportUpdate,
    StoreError, Unreadable, reports::report_changes_status, rules::EventLine,
};

impl PgStore {
    pub async fn apply_report(&self, update: &ReportUpdate) -> Result<ReportApplied, StoreError> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT position, address, status FROM recipients WHERE message_id = $1 ORDER BY position FOR UPDATE",
        )
        .bind(&update.message_id)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(ReportApplied::NoMessage);
        }
        let found = rows.iter().find(|row| {
            update
                .recipient
                .matches(row.get::<i32, _>(0) as u32, row.get(1), rows.len())
        });
        let Some(row) = found else {
            return Ok(ReportApplied::NoRecipient);
        };
        let position = row.get::<i32, _>(0) as u32;
        let address: String = row.get(1);
        let status: RecipientStatus =
            Unreadable::parse("recipients", "status", row.get::<&str, _>(2))?;
        let target = update.kind.status();
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
            sqlx::query(
                "UPDATE recipients SET status = $1, smtp_code = $2, enhanced_status = $3, reply = $4
                 WHERE message_id = $5 AND position = $6",
            )
            .bind(target.as_str())
            .bind(update.smtp_code.map(i32::from))
            .bind(update.enhanced_status.as_deref())
            .bind(update.detail.as_deref())
            .bind(&update.message_id)
            .bind(position as i32)
            .execute(&mut *tx)
            .await?;
        }
        let line = EventLine {
            kind: update.kind.event(),
            recipient: Some(&address),
            detail: update.detail.as_deref(),
        };
        insert_events(&mut tx, now, [(update.message_id.as_str(), line)]).await?;
        tx.commit().await?;
        Ok(ReportApplied::Recipient {
            position,
            address,
            changed,
            duplicate: false,
        })
    }

    pub async fn keep_inbound(&self, mail: &InboundMail) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO inbound (id, received_at, peer, mail_from, rcpt_to, reason, detail, message_id, size, raw)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&mail.id)
        .bind(mail.received_at)
        .bind(&mail.peer)
        .bind(&mail.mail_from)
        .bind(&mail.rcpt_to)
        .bind(mail.reason.as_str())
        .bind(&mail.detail)
        .bind(mail.message_id.as_deref())
        .bind(mail.size as i64)
        .bind(&mail.raw)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn prune_inbound(&self, received_before: Millis) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM inbound WHERE received_at < $1")
            .bind(received_before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    pub async fn inbound(
        &self,
        before: Option<&str>,
        limit: u32,
    ) -> Result<InboundPage, StoreError> {
        let rows = sqlx::query(
            "SELECT id, received_at, peer, mail_from, rcpt_to, reason, detail, message_id, size, ''::bytea
             FROM inbound WHERE ($1::text IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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

    pub async fn inbound_mail(&self, id: &str) -> Result<Option<InboundMail>, StoreError> {
        let row = sqlx::query(
            "SELECT id, received_at, peer, mail_from, rcpt_to, reason, detail, message_id, size, raw
             FROM inbound WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(inbound_row).transpose()
    }
}

fn inbound_row(row: &sqlx::postgres::PgRow) -> Result<InboundMail, StoreError> {
    let reason: String = row.get(5);
    Ok(InboundMail {
        id: row.get(0),
        received_at: row.get(1),
        peer: row.get(2),
        mail_from: row.get(3),
        rcpt_to: row.get(4),
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
