//! Searching the archive on PostgreSQL: tsvector words, rare filters driving the query and common ones
//! probed, keyset pages.

use sqlx::{Postgres, QueryBuilder};

use super::PgStore;
use crate::store::{
    MessageSummary, SUMMARY_RECIPIENTS, SearchPage, SearchQuery, StoreError, rows,
    search::{parse_cursor, query_terms, tsquery},
};

/// Matches above which a search filter is common enough to walk the archive newest first (see `search`).
pub(super) const SELECTIVE: i64 = 2_000;

/// A search filter whose matches can be counted on an index.
pub(super) enum Filter<'a> {
    /// A tsquery literal of search terms.
    Words(&'a str),
    /// A recipient address.
    Address(&'a str),
}

impl PgStore {
    /// Searches the archive, newest first, with keyset pagination. With a tag, one tag's rows of
    /// `message_tags` are walked newest first (its primary key holds created_at for that).
    pub async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        let limit = query.limit.clamp(1, 1_000);
        // A tsquery literal of Herald's own terms (see store::search), every term quoted.
        let text = query
            .text
            .as_deref()
            .map(query_terms)
            .filter(|terms| !terms.is_empty())
            .map(|terms| tsquery(&terms));
        // Walking `messages_created` newest first and filtering finds a page of a common word or a busy
        // address at once, but reads the whole archive for a rare one (a word in 0.01% of 1M messages: 315
        // ms), and sorting every message of a busy address is as slow (50,000 messages: 459 ms). So rare words
        // drive the query (their matches, at most SELECTIVE, are sorted), and a busy address is probed per
        // message instead of gathered.
        let rare_text = match (&text, &query.tag) {
            (Some(text), None) => !self.is_common(Filter::Words(text)).await?,
            _ => false,
        };
        let busy_to = match &query.to {
            Some(to) => self.is_common(Filter::Address(to)).await?,
            None => false,
        };
        let mut sql = QueryBuilder::<Postgres>::new("");
        if let (true, Some(text)) = (rare_text, &text) {
            // MATERIALIZED: the planner may not fold the matches back into a walk of the whole archive.
            sql.push("WITH hits AS MATERIALIZED (SELECT id FROM messages WHERE search @@ ")
                .push_bind(text.clone())
                .push("::tsquery) ");
        }
        sql.push("SELECT m.id, m.status, m.created_at, m.sender, m.subject, m.attempts::bigint ");
        let (created_at, id) = if let Some(tag) = &query.tag {
            sql.push("FROM message_tags t JOIN messages m ON m.id = t.message_id WHERE t.tag = ")
                .push_bind(tag.clone());
            ("t.created_at", "t.message_id")
        } else if rare_text {
            sql.push("FROM hits h JOIN messages m ON m.id = h.id WHERE TRUE");
            ("m.created_at", "m.id")
        } else {
            sql.push("FROM messages m WHERE TRUE");
            ("m.created_at", "m.id")
        };
        if let Some(status) = query.status {
            sql.push(" AND m.status = ").push_bind(status.as_str());
        }
        if let Some(to) = &query.to {
            if busy_to {
                sql.push(" AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.address = ")
                    .push_bind(to.clone())
                    .push(")");
            } else {
                sql.push(" AND m.id IN (SELECT message_id FROM recipients WHERE address = ")
                    .push_bind(to.clone())
                    .push(")");
            }
        }
        if let (false, Some(text)) = (rare_text, text) {
            sql.push(" AND m.search @@ ")
                .push_bind(text)
                .push("::tsquery");
        }
        if let Some(since) = query.since {
            sql.push(format!(" AND {created_at} >= ")).push_bind(since);
        }
        if let Some(until) = query.until {
            sql.push(format!(" AND {created_at} < ")).push_bind(until);
        }
        if let Some(cursor) = &query.cursor {
            let (at, cursor_id) = parse_cursor(cursor)?;
            sql.push(format!(" AND ({created_at}, {id}) < ("))
                .push_bind(at)
                .push(", ")
                .push_bind(cursor_id)
                .push(")");
        }
        sql.push(format!(" ORDER BY {created_at} DESC, {id} DESC LIMIT "))
            .push_bind(i64::from(limit) + 1);
        // Not a prepared statement: after five runs PostgreSQL may keep a generic plan made without the
        // values, and for a busy address that plan took 0.5 s where the planned-for-the-value one takes 5 ms.
        let rows = sql.build().persistent(false).fetch_all(&self.pool).await?;
        let items = rows.iter().map(rows::summary).collect::<Result<_, _>>()?;
        let mut page = rows::page(items, limit);
        self.attach_recipients(&mut page.items).await?;
        Ok(page)
    }

    /// Whether `filter` matches more than [`SELECTIVE`] messages, counted on its index and stopping there.
    async fn is_common(&self, filter: Filter<'_>) -> Result<bool, StoreError> {
        let (sql, value) = match filter {
            Filter::Words(words) => (
                "SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE search @@ $1::tsquery LIMIT $2) s",
                words,
            ),
            Filter::Address(address) => (
                "SELECT COUNT(*) FROM (SELECT 1 FROM recipients WHERE address = $1 LIMIT $2) s",
                address,
            ),
        };
        let n: i64 = sqlx::query_scalar(sql)
            .bind(value)
            .bind(SELECTIVE + 1)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > SELECTIVE)
    }

    /// Fills each row's first recipients and recipient count: one query for the page.
    async fn attach_recipients(&self, items: &mut [MessageSummary]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = items.iter().map(|m| m.id.as_str()).collect();
        let rows = sqlx::query(
            "SELECT r.message_id, r.position::bigint, r.address,
                    (SELECT COUNT(*) FROM recipients c WHERE c.message_id = r.message_id)
             FROM recipients r WHERE r.message_id = ANY($1) AND r.position < $2",
        )
        .bind(&ids)
        .bind(SUMMARY_RECIPIENTS as i32)
        .fetch_all(&self.pool)
        .await?;
        rows::attach_recipients(items, &rows);
        Ok(())
    }
}
