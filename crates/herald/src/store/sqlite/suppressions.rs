//! The suppression list on SQLite (issue 12): writes through the writer thread (so an entry and the timeline
//! line of the message it comes from are one commit), reads from the pool. Also the store's secrets (the
//! link-token key) and what an unsubscribe link needs of its message.

use sqlx::Row as _;

use super::{
    Param, SqliteStore,
    raw_db::{RawDb, Value},
    writer::{WriteOp, WriteResult},
};
use crate::store::{
    Millis, NewSuppression, StoreError, Suppression, SuppressionPage, SuppressionQuery, rows,
    rules::{self, EventLine},
};

impl SqliteStore {
    /// Puts entries on the suppression list in one commit; answers how many.
    pub async fn suppress(&self, entries: Vec<NewSuppression>) -> Result<u64, StoreError> {
        if entries.is_empty() {
            return Ok(0);
        }
        self.call(|reply| WriteOp::Suppress { entries, reply })
            .await
    }

    /// Every entry (all scopes) of one address.
    pub async fn suppressions_of(&self, address: &str) -> Result<Vec<Suppression>, StoreError> {
        let rows = sqlx::query(
            "SELECT address, scope, reason, source_message, created_at, expires_at FROM suppressions
             WHERE address = ?1 ORDER BY scope",
        )
        .bind(rules::suppression_address(address))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| rows::suppression(r).map_err(StoreError::from))
            .collect()
    }

    /// A page of the list by address and scope, after `cursor`, optionally only addresses containing text.
    pub async fn suppressions(
        &self,
        query: &SuppressionQuery,
    ) -> Result<SuppressionPage, StoreError> {
        let (after_address, after_scope) = rows::suppression_cursor(query.cursor.as_deref())?;
        let contains = query.contains.as_deref().map(|c| c.trim().to_lowercase());
        let rows = sqlx::query(
            "SELECT address, scope, reason, source_message, created_at, expires_at FROM suppressions
             WHERE (address, scope) > (?1, ?2) AND (?3 IS NULL OR instr(address, ?3) > 0)
             ORDER BY address, scope LIMIT ?4",
        )
        .bind(after_address)
        .bind(after_scope)
        .bind(contains)
        .bind(i64::from(query.limit) + 1)
        .fetch_all(&self.reader)
        .await?;
        let items = rows
            .iter()
            .map(rows::suppression)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows::suppression_page(items, query.limit))
    }

    /// Removes the entries of `address`: the one of `scope` (`Some("")`: the unscoped one), or all of them.
    pub async fn delete_suppression(
        &self,
        address: &str,
        scope: Option<&str>,
    ) -> Result<u64, StoreError> {
        let address = rules::suppression_address(address);
        match scope {
            Some(scope) => {
                self.execute(
                    "DELETE FROM suppressions WHERE address = ?1 AND scope = ?2",
                    vec![address.as_str().into(), scope.into()],
                )
                .await
            }
            None => {
                self.execute(
                    "DELETE FROM suppressions WHERE address = ?1",
                    vec![address.as_str().into()],
                )
                .await
            }
        }
    }

    /// Deletes the entries that expired at or before `now` (they no longer apply: see
    /// [`rules::suppression_applies`]), [`rules::EXPIRED_SUPPRESSIONS_CHUNK`] per writer commit, so accepts
    /// go on between the chunks. Answers how many.
    pub async fn prune_expired_suppressions(&self, now: Millis) -> Result<u64, StoreError> {
        let mut deleted = 0;
        loop {
            let chunk = self
                .execute(
                    "DELETE FROM suppressions WHERE (address, scope) IN (
                         SELECT address, scope FROM suppressions
                         WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)",
                    vec![now.into(), rules::EXPIRED_SUPPRESSIONS_CHUNK.into()],
                )
                .await?;
            deleted += chunk;
            if chunk < rules::EXPIRED_SUPPRESSIONS_CHUNK as u64 {
                return Ok(deleted);
            }
        }
    }

    /// The secret stored under `name`, storing `candidate` first if there is none (every node and restart
    /// then uses the first one stored).
    pub async fn store_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.execute(
            "INSERT INTO store_secrets (name, value, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            vec![
                name.into(),
                Param::Blob(candidate.to_vec()),
                self.clock.now().into(),
            ],
        )
        .await?;
        Ok(
            sqlx::query("SELECT value FROM store_secrets WHERE name = ?1")
                .bind(name)
                .fetch_one(&self.reader)
                .await?
                .get(0),
        )
    }

    /// What an unsubscribe link of message `id` suppresses: its (one) recipient and its unsubscribe list.
    pub async fn unsubscribe_target(
        &self,
        id: &str,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        Ok(sqlx::query(
            "SELECT r.address, m.unsubscribe_list FROM messages m
             JOIN recipients r ON r.message_id = m.id AND r.position = 0 WHERE m.id = ?1",
        )
        .bind(id)
        .fetch_optional(&self.reader)
        .await?
        .map(|row| (row.get(0), row.get(1))))
    }
}

/// Writes entries (in the writer's transaction), each with its `suppressed` timeline line when it names a
/// message that exists.
pub(super) fn suppress(
    db: &mut RawDb,
    entries: &[NewSuppression],
    now: Millis,
) -> WriteResult<u64> {
    for entry in entries {
        let address = rules::suppression_address(&entry.address);
        let scope = rules::scope_column(entry.scope.as_deref());
        db.stmt(
            "INSERT INTO suppressions (address, scope, reason, source_message, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (address, scope) DO UPDATE SET reason = excluded.reason,
                 source_message = excluded.source_message, created_at = excluded.created_at,
                 expires_at = CASE WHEN suppressions.expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL
                                   ELSE MAX(suppressions.expires_at, excluded.expires_at) END",
        )?
        .bind([
            Value::Text(&address),
            Value::Text(scope),
            entry.reason.as_str().into(),
            entry.source_message.as_deref().into(),
            now.into(),
            entry.expires_at.into(),
        ])?
        .execute()?;
        if let Some(message) = entry.source_message.as_deref() {
            let detail = rules::suppression_detail(entry.reason, entry.scope.as_deref());
            suppressed_line(db, message, now, rules::suppressed_event(&address, &detail))?;
        }
    }
    Ok(entries.len() as u64)
}

/// A timeline line for a message that may not exist (a bounce naming a pruned one): written only if it does.
fn suppressed_line(db: &mut RawDb, id: &str, now: Millis, line: EventLine<'_>) -> WriteResult<()> {
    db.stmt(
        "INSERT INTO events (message_id, at, type, recipient, detail)
         SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM messages WHERE id = ?1)",
    )?
    .bind([
        id.into(),
        now.into(),
        line.kind.into(),
        line.recipient.into(),
        line.detail.into(),
    ])?
    .execute()?;
    Ok(())
}

/// The applicable suppressions of one recipient address (in suppression form) for a message with `scopes`.
pub(super) fn suppressed(
    db: &mut RawDb,
    address: &str,
    scopes: &[&str],
    now: Millis,
) -> WriteResult<bool> {
    let mut q = db.stmt("SELECT scope, expires_at FROM suppressions WHERE address = ?1")?;
    q.bind([Value::Text(address)])?;
    while q.step()? {
        let expires_at = (!q.is_null(1)).then(|| q.int(1));
        if rules::suppression_applies(&q.str(0), expires_at, scopes, now) {
            return Ok(true);
        }
    }
    Ok(false)
}
