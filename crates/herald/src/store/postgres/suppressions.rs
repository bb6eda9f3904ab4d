//! The suppression list on PostgreSQL (issue 12), shared by every node; the store's secrets (the link-token
//! key) and what an unsubscribe link needs of its message.

use std::collections::HashMap;

use sqlx::{Postgres, Row as _, Transaction};

use super::{PgStore, insert_events};
use crate::store::{
    Millis, NewSuppression, StoreError, Suppression, SuppressionPage, SuppressionQuery, rows, rules,
};

impl PgStore {
    /// Puts entries on the suppression list in one transaction; answers how many.
    pub async fn suppress(&self, entries: Vec<NewSuppression>) -> Result<u64, StoreError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        suppress_in(&mut tx, &entries, self.clock.now()).await?;
        tx.commit().await?;
        Ok(entries.len() as u64)
    }

    /// Every entry (all scopes) of one address.
    pub async fn suppressions_of(&self, address: &str) -> Result<Vec<Suppression>, StoreError> {
        let rows = sqlx::query(
            "SELECT address, scope, reason, source_message, created_at, expires_at FROM suppressions
             WHERE address = $1 ORDER BY scope",
        )
        .bind(rules::suppression_address(address))
        .fetch_all(&self.pool)
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
        // COLLATE "C": the same byte order as SQLite, so a cursor means the same on both.
        let found = sqlx::query(
            r#"SELECT address, scope, reason, source_message, created_at, expires_at FROM suppressions
             WHERE (address COLLATE "C", scope COLLATE "C") > ($1 COLLATE "C", $2 COLLATE "C")
               AND ($3::text IS NULL OR strpos(address, $3) > 0)
             ORDER BY address COLLATE "C", scope COLLATE "C" LIMIT $4"#,
        )
        .bind(after_address)
        .bind(after_scope)
        .bind(contains)
        .bind(i64::from(query.limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = found
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
        let done = match scope {
            Some(scope) => {
                sqlx::query("DELETE FROM suppressions WHERE address = $1 AND scope = $2")
                    .bind(address)
                    .bind(scope)
                    .execute(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM suppressions WHERE address = $1")
                    .bind(address)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(done.rows_affected())
    }

    /// Deletes the entries that expired at or before `now` (they no longer apply: see
    /// [`rules::suppression_applies`]), [`rules::EXPIRED_SUPPRESSIONS_CHUNK`] per transaction. The outer
    /// condition is checked again on the row it deletes, so an entry whose expiry a concurrent add extended
    /// stays. Answers how many.
    pub async fn prune_expired_suppressions(&self, now: Millis) -> Result<u64, StoreError> {
        let mut deleted = 0;
        loop {
            let chunk = sqlx::query(
                "DELETE FROM suppressions WHERE (address, scope) IN (
                     SELECT address, scope FROM suppressions
                     WHERE expires_at IS NOT NULL AND expires_at <= $1 LIMIT $2)
                   AND expires_at <= $1",
            )
            .bind(now)
            .bind(rules::EXPIRED_SUPPRESSIONS_CHUNK)
            .execute(&self.pool)
            .await?
            .rows_affected();
            deleted += chunk;
            if chunk < rules::EXPIRED_SUPPRESSIONS_CHUNK as u64 {
                return Ok(deleted);
            }
        }
    }

    /// The secret stored under `name`, storing `candidate` first if there is none: every node, and every
    /// restart, uses the first one stored (two nodes racing at start agree through the primary key).
    pub async fn store_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        sqlx::query(
            "INSERT INTO store_secrets (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query("SELECT value FROM store_secrets WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
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
             JOIN recipients r ON r.message_id = m.id AND r.position = 0 WHERE m.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| (row.get(0), row.get(1))))
    }
}

/// Writes entries in `tx`, each with its `suppressed` timeline line when it names a message that exists.
pub(super) async fn suppress_in(
    tx: &mut Transaction<'_, Postgres>,
    entries: &[NewSuppression],
    now: Millis,
) -> Result<(), sqlx::Error> {
    // One row per key: two entries for the same address and scope in one statement would be an error
    // (ON CONFLICT cannot touch a row twice); the later one wins, as it would one statement after the other.
    let mut unique: HashMap<(String, &str), &NewSuppression> = HashMap::new();
    for entry in entries {
        let key = (
            rules::suppression_address(&entry.address),
            rules::scope_column(entry.scope.as_deref()),
        );
        unique.insert(key, entry);
    }
    let (mut addresses, mut scopes, mut reasons, mut sources, mut expiries) =
        (vec![], vec![], vec![], vec![], vec![]);
    for ((address, scope), entry) in &unique {
        addresses.push(address.as_str());
        scopes.push(*scope);
        reasons.push(entry.reason.as_str());
        sources.push(entry.source_message.as_deref());
        expiries.push(entry.expires_at);
    }
    sqlx::query(
        "INSERT INTO suppressions AS s (address, scope, reason, source_message, created_at, expires_at)
         SELECT address, scope, reason, source, $6, expires
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
              AS t(address, scope, reason, source, expires)
         ON CONFLICT (address, scope) DO UPDATE SET reason = EXCLUDED.reason,
             source_message = EXCLUDED.source_message, created_at = EXCLUDED.created_at,
             expires_at = CASE WHEN s.expires_at IS NULL OR EXCLUDED.expires_at IS NULL THEN NULL
                               ELSE GREATEST(s.expires_at, EXCLUDED.expires_at) END",
    )
    .bind(&addresses)
    .bind(&scopes)
    .bind(&reasons)
    .bind(&sources)
    .bind(&expiries)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let named: Vec<&NewSuppression> = entries
        .iter()
        .filter(|e| e.source_message.is_some())
        .collect();
    if named.is_empty() {
        return Ok(());
    }
    // Only lines of messages that exist (a bounce may name a pruned one; events reference messages).
    let ids: Vec<&str> = named
        .iter()
        .filter_map(|e| e.source_message.as_deref())
        .collect();
    let existing: std::collections::HashSet<String> =
        sqlx::query("SELECT id FROM messages WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
    let lines: Vec<(String, &str, String)> = named
        .iter()
        .filter_map(|e| {
            let id = e.source_message.as_deref()?;
            existing.contains(id).then(|| {
                (
                    rules::suppression_address(&e.address),
                    id,
                    rules::suppression_detail(e.reason, e.scope.as_deref()),
                )
            })
        })
        .collect();
    insert_events(
        tx,
        now,
        lines
            .iter()
            .map(|(address, id, detail)| (*id, rules::suppressed_event(address, detail))),
    )
    .await
}

/// The recipients (by `(message index, position)`) of `messages` that an applicable suppression stops,
/// looked up in one statement for the whole group.
pub(super) async fn suppressed_recipients(
    tx: &mut Transaction<'_, Postgres>,
    messages: &[&crate::store::NewMessage],
    now: Millis,
) -> Result<Vec<Vec<usize>>, sqlx::Error> {
    let mut wanted: Vec<String> = Vec::new();
    let mut forms: Vec<Vec<String>> = Vec::with_capacity(messages.len());
    for m in messages {
        let list: Vec<String> = if m.ignore_suppressions {
            Vec::new()
        } else {
            m.recipients
                .iter()
                .map(|r| rules::suppression_address(&r.address))
                .collect()
        };
        wanted.extend(list.iter().cloned());
        forms.push(list);
    }
    let mut found: HashMap<String, Vec<(String, Option<Millis>)>> = HashMap::new();
    if !wanted.is_empty() {
        wanted.sort_unstable();
        wanted.dedup();
        for row in sqlx::query(
            "SELECT address, scope, expires_at FROM suppressions WHERE address = ANY($1)",
        )
        .bind(&wanted)
        .fetch_all(&mut **tx)
        .await?
        {
            found
                .entry(row.get(0))
                .or_default()
                .push((row.get(1), row.get(2)));
        }
    }
    Ok(messages
        .iter()
        .zip(forms)
        .map(|(m, addresses)| {
            let scopes = rules::message_scopes(&m.tags, m.unsubscribe_list.as_deref());
            addresses
                .iter()
                .enumerate()
                .filter(|(_, address)| {
                    found.get(*address).is_some_and(|entries| {
                        entries.iter().any(|(scope, expires)| {
                            rules::suppression_applies(scope, *expires, &scopes, now)
                        })
                    })
                })
                .map(|(position, _)| position)
                .collect()
        })
        .collect())
}
