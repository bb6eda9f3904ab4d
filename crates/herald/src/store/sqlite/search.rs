//! Searching the archive on SQLite: FTS5 for words, the tag and creation indexes otherwise, keyset pages.

use std::sync::atomic::Ordering;

use sqlx::{QueryBuilder, Row, Sqlite};

use super::SqliteStore;
use crate::store::{
    MessageSummary, Millis, SUMMARY_RECIPIENTS, SearchPage, SearchQuery, StoreError, rows,
    search::{fts5_query, parse_cursor, query_terms},
};

impl SqliteStore {
    /// Searches the archive, newest first, with keyset pagination (stable and fast at any depth).
    ///
    /// Three plans, one result: with words, FTS5 yields matches in descending rowid order and the first page
    /// stops after `limit + 1` of them (while rowid order is creation order: see `search_text`); with a tag,
    /// one tag's rows of `message_tags` are walked newest first; otherwise the `messages_created` index is.
    pub async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        let limit = query.limit.clamp(1, 1_000);
        let want = i64::from(limit) + 1;
        let cursor = query.cursor.as_deref().map(parse_cursor).transpose()?;
        let text = query
            .text
            .as_deref()
            .map(query_terms)
            .filter(|terms| !terms.is_empty())
            .map(|terms| fts5_query(&terms));
        if text.is_some() {
            // Read-your-writes for words: what was committed before this search is indexed first.
            self.index.caught_up().await;
        }
        let busy = match &query.to {
            Some(to) => self.is_busy_address(to).await?,
            None => false,
        };
        let mut items = match text {
            Some(text) if self.created_in_order.load(Ordering::Relaxed) => {
                self.search_text(query, &text, cursor.as_ref(), want, busy)
                    .await?
            }
            text => {
                let mut sql = QueryBuilder::<Sqlite>::new(format!("SELECT {SUMMARY_COLUMNS} "));
                let order = if let Some(tag) = &query.tag {
                    // message_tags holds created_at so that this walks its primary key newest first.
                    sql.push(
                        "FROM message_tags t JOIN messages m ON m.id = t.message_id WHERE t.tag = ",
                    )
                    .push_bind(tag.clone());
                    push_time_filters(
                        &mut sql,
                        query,
                        cursor.as_ref(),
                        "t.created_at",
                        "t.message_id",
                    );
                    " ORDER BY t.created_at DESC, t.message_id DESC LIMIT "
                } else {
                    sql.push("FROM messages m WHERE 1 = 1");
                    push_time_filters(&mut sql, query, cursor.as_ref(), "m.created_at", "m.id");
                    " ORDER BY m.created_at DESC, m.id DESC LIMIT "
                };
                push_filters(&mut sql, query, busy);
                if let Some(text) = text {
                    sql.push(
                        " AND m.rowid IN (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ",
                    )
                    .push_bind(text)
                    .push(")");
                }
                sql.push(order).push_bind(want);
                let rows = sql.build().fetch_all(&self.reader).await?;
                rows.iter().map(rows::summary).collect::<Result<_, _>>()?
            }
        };
        items.truncate(want as usize);
        let mut page = rows::page(items, limit);
        self.attach_recipients(&mut page.items).await?;
        Ok(page)
    }

    /// Whether `address` has more than [`BUSY_ADDRESS`] messages (counted on the index, stopping there).
    async fn is_busy_address(&self, address: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT 1 FROM recipients WHERE address = ? LIMIT ?)",
        )
        .bind(address)
        .bind(BUSY_ADDRESS + 1)
        .fetch_one(&self.reader)
        .await?;
        Ok(n > BUSY_ADDRESS)
    }

    /// Full-text search for a database whose rowid order is creation order (created_at never decreases as
    /// rowids grow; `CreatedOrder` keeps watch). Ordering a common word's matches by created_at would read
    /// every match (a million for a word in every message); FTS5 instead yields them by descending rowid,
    /// newest first, and the query stops after `want` rows that pass the other filters. Those are the newest
    /// matches except for ties: messages created in the same millisecond as the last row and not yet read,
    /// which a second query fetches (bounded to the rowids stored in that millisecond, one or two group
    /// commits) before sorting by (created_at, id).
    /// Time bounds and the cursor become rowid bounds too, so a later page does not re-read earlier ones.
    async fn search_text(
        &self,
        query: &SearchQuery,
        text: &str,
        cursor: Option<&(Millis, String)>,
        want: i64,
        busy: bool,
    ) -> Result<Vec<MessageSummary>, StoreError> {
        let build = |extra: &dyn Fn(&mut QueryBuilder<Sqlite>)| {
            let mut sql = QueryBuilder::<Sqlite>::new(format!(
                "SELECT {SUMMARY_COLUMNS}, m.rowid FROM messages_fts JOIN messages m ON m.rowid = messages_fts.rowid
                 WHERE messages_fts MATCH "
            ));
            sql.push_bind(text.to_owned());
            // Rowid bounds (exact while rowid order is creation order); the exact filters follow.
            if let Some((at, _)) = cursor {
                sql.push(
                    " AND messages_fts.rowid <= (SELECT MAX(rowid) FROM messages WHERE created_at =
                      (SELECT MAX(created_at) FROM messages WHERE created_at <= ",
                )
                .push_bind(*at)
                .push("))");
            }
            if let Some(until) = query.until {
                sql.push(
                    " AND messages_fts.rowid <= (SELECT MAX(rowid) FROM messages WHERE created_at =
                      (SELECT MAX(created_at) FROM messages WHERE created_at < ",
                )
                .push_bind(until)
                .push("))");
            }
            if let Some(since) = query.since {
                sql.push(
                    " AND messages_fts.rowid >= (SELECT MIN(rowid) FROM messages WHERE created_at =
                      (SELECT MIN(created_at) FROM messages WHERE created_at >= ",
                )
                .push_bind(since)
                .push("))");
            }
            push_time_filters(&mut sql, query, cursor, "m.created_at", "m.id");
            push_filters(&mut sql, query, busy);
            if let Some(tag) = &query.tag {
                sql.push(" AND EXISTS (SELECT 1 FROM message_tags t WHERE t.tag = ")
                    .push_bind(tag.clone())
                    .push(" AND t.created_at = m.created_at AND t.message_id = m.id)");
            }
            extra(&mut sql);
            sql
        };
        let mut sql = build(&|sql| {
            sql.push(" ORDER BY messages_fts.rowid DESC LIMIT ")
                .push_bind(want);
        });
        let rows = sql.build().fetch_all(&self.reader).await?;
        let mut items: Vec<MessageSummary> =
            rows.iter().map(rows::summary).collect::<Result<_, _>>()?;
        if rows.len() as i64 == want {
            let last = &rows[rows.len() - 1];
            let (last_at, last_rowid): (Millis, i64) = (last.get(2), last.get(6));
            // `+m.created_at`: not through messages_created, which would probe FTS5 once per message of that
            // millisecond (measured ~40 µs each); FTS5 walks just that rowid range of its doclist instead.
            let mut ties = build(&|sql| {
                sql.push(" AND +m.created_at = ")
                    .push_bind(last_at)
                    .push(" AND messages_fts.rowid < ")
                    .push_bind(last_rowid)
                    .push(
                        " AND messages_fts.rowid >= (SELECT MIN(rowid) FROM messages WHERE created_at = ",
                    )
                    .push_bind(last_at)
                    .push(") ORDER BY messages_fts.rowid DESC");
            });
            let more = ties.build().fetch_all(&self.reader).await?;
            for row in &more {
                items.push(rows::summary(row)?);
            }
        }
        items.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        Ok(items)
    }

    /// Fills each row's first recipients and recipient count: one query for the page.
    async fn attach_recipients(&self, items: &mut [MessageSummary]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let ids = serde_json::to_string(&items.iter().map(|m| &m.id).collect::<Vec<_>>())
            .unwrap_or_else(|_| "[]".into());
        let rows = sqlx::query(
            "SELECT r.message_id, r.position, r.address,
                    (SELECT COUNT(*) FROM recipients c WHERE c.message_id = r.message_id)
             FROM recipients r WHERE r.message_id IN (SELECT value FROM json_each(?1)) AND r.position < ?2",
        )
        .bind(ids)
        .bind(SUMMARY_RECIPIENTS as i64)
        .fetch_all(&self.reader)
        .await?;
        rows::attach_recipients(items, &rows);
        Ok(())
    }
}

/// The columns `rows::summary` reads, from `messages m`.
const SUMMARY_COLUMNS: &str = "m.id, m.status, m.created_at, m.sender, m.subject, m.attempts";

/// The status and recipient filters, on `messages m`.
/// Status and recipient filters. A recipient's messages are gathered by the address index and sorted, unless
/// the address is `busy` (a shared mailbox in a large share of the archive: sorting its 50,000 messages took
/// 330 ms at 1M); then the archive is walked newest first and each message's few recipient rows are probed,
/// which finds a page after a few thousand rows at most.
pub(super) fn push_filters(sql: &mut QueryBuilder<Sqlite>, query: &SearchQuery, busy: bool) {
    if let Some(status) = query.status {
        sql.push(" AND m.status = ").push_bind(status.as_str());
    }
    if let Some(to) = &query.to {
        if busy {
            sql.push(" AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.address = ")
                .push_bind(to.clone())
                .push(")");
        } else {
            sql.push(" AND m.id IN (SELECT message_id FROM recipients WHERE address = ")
                .push_bind(to.clone())
                .push(")");
        }
    }
}

/// Messages to one address above which [`push_filters`] walks the archive instead of sorting them all.
const BUSY_ADDRESS: i64 = 2_000;

/// since / until / cursor on the given created_at and id columns.
pub(super) fn push_time_filters(
    sql: &mut QueryBuilder<Sqlite>,
    query: &SearchQuery,
    cursor: Option<&(Millis, String)>,
    created_at: &str,
    id: &str,
) {
    if let Some(since) = query.since {
        sql.push(format!(" AND {created_at} >= ")).push_bind(since);
    }
    if let Some(until) = query.until {
        sql.push(format!(" AND {created_at} < ")).push_bind(until);
    }
    if let Some((at, cursor_id)) = cursor {
        // A row value, which SQLite turns into a range of the (created_at, id) index: the equivalent
        // `created_at < ? OR (created_at = ? AND id < ?)` was a scan from the newest row down (33 ms half
        // way through a million messages).
        sql.push(format!(" AND ({created_at}, {id}) < ("))
            .push_bind(*at)
            .push(", ")
            .push_bind(cursor_id.clone())
            .push(")");
    }
}
