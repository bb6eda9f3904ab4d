//! Reading rows into the store's values, once for both dialects.
//!
//! Both stores select the same columns in the same order, with every integer as a 64-bit value (PostgreSQL
//! queries cast `INTEGER` columns with `::bigint`), so one mapping serves SQLite and PostgreSQL rows.

use sqlx::{ColumnIndex, Database, Decode, Row, Type};

use std::collections::HashMap;

use super::{
    ActivityBucket, Event, MessageStatus, MessageSummary, MessageView, RecipientView, SearchPage,
    SessionInfo, StoreError, StoredTemplate, Suppression, SuppressionPage, TemplateSource,
    Unreadable, rules,
};

/// What a row type must decode for the mappings below.
pub(super) trait HeraldRow: Row
where
    usize: ColumnIndex<Self>,
{
    fn text(&self, i: usize) -> String;
    fn opt_text(&self, i: usize) -> Option<String>;
    fn int(&self, i: usize) -> i64;
    fn opt_int(&self, i: usize) -> Option<i64>;
}

impl<R> HeraldRow for R
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    R::Database: Database,
{
    fn text(&self, i: usize) -> String {
        self.get(i)
    }
    fn opt_text(&self, i: usize) -> Option<String> {
        self.get(i)
    }
    fn int(&self, i: usize) -> i64 {
        self.get(i)
    }
    fn opt_int(&self, i: usize) -> Option<i64> {
        self.get(i)
    }
}

/// `SELECT id, status, created_at, send_at, sender, subject, attempts, batch_id, tags, metadata, raw_size,
/// source`.
pub(super) fn message_view<R: HeraldRow>(
    row: &R,
    recipients: Vec<RecipientView>,
    events: Vec<Event>,
) -> Result<MessageView, Unreadable>
where
    usize: ColumnIndex<R>,
{
    let json = |text: String| serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    Ok(MessageView {
        id: row.text(0),
        status: Unreadable::parse("messages", "status", &row.text(1))?,
        created_at: row.int(2),
        send_at: row.opt_int(3),
        from: row.text(4),
        subject: row.text(5),
        attempts: row.int(6) as u32,
        batch_id: row.opt_text(7),
        tags: json(row.text(8)),
        metadata: json(row.text(9)),
        raw_size: row.int(10) as u64,
        source: row.text(11),
        recipients,
        events,
    })
}

/// `SELECT address, kind, status, smtp_code, enhanced_status, reply`.
pub(super) fn recipient<R: HeraldRow>(row: &R) -> Result<RecipientView, Unreadable>
where
    usize: ColumnIndex<R>,
{
    Ok(RecipientView {
        address: row.text(0),
        kind: Unreadable::parse("recipients", "kind", &row.text(1))?,
        status: Unreadable::parse("recipients", "status", &row.text(2))?,
        smtp_code: row.opt_int(3).map(|c| c as u16),
        enhanced_status: row.opt_text(4),
        smtp_reply: row.opt_text(5),
    })
}

/// `SELECT at, type, recipient, detail`.
pub(super) fn event<R: HeraldRow>(row: &R) -> Event
where
    usize: ColumnIndex<R>,
{
    Event {
        at: row.int(0),
        kind: row.text(1),
        recipient: row.opt_text(2),
        detail: row.opt_text(3),
    }
}

/// `SELECT id, status, created_at, sender, subject, attempts`.
pub(super) fn summary<R: HeraldRow>(row: &R) -> Result<MessageSummary, Unreadable>
where
    usize: ColumnIndex<R>,
{
    Ok(MessageSummary {
        id: row.text(0),
        status: Unreadable::parse("messages", "status", &row.text(1))?,
        created_at: row.int(2),
        from: row.text(3),
        subject: row.text(4),
        attempts: row.int(5) as u32,
        to: Vec::new(),
        recipient_count: 0,
    })
}

/// Fills `to` and `recipient_count` of a page's rows from
/// `SELECT message_id, position, address, <recipients of the message>` over their first recipients.
pub(super) fn attach_recipients<R: HeraldRow>(items: &mut [MessageSummary], rows: &[R])
where
    usize: ColumnIndex<R>,
{
    let index: HashMap<String, usize> = items
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id.clone(), i))
        .collect();
    let mut found: Vec<Vec<(i64, String)>> = vec![Vec::new(); items.len()];
    for row in rows {
        if let Some(&i) = index.get(&row.text(0)) {
            found[i].push((row.int(1), row.text(2)));
            items[i].recipient_count = row.int(3) as u32;
        }
    }
    for (item, mut first) in items.iter_mut().zip(found) {
        first.sort();
        item.to = first
            .into_iter()
            .take(super::SUMMARY_RECIPIENTS)
            .map(|(_, address)| address)
            .collect();
    }
}

/// `SELECT start, accepted, delivered, failed, deferred`.
pub(super) fn activity<R: HeraldRow>(row: &R) -> ActivityBucket
where
    usize: ColumnIndex<R>,
{
    ActivityBucket {
        start: row.int(0),
        accepted: row.int(1).max(0) as u64,
        delivered: row.int(2).max(0) as u64,
        failed: row.int(3).max(0) as u64,
        deferred: row.int(4).max(0) as u64,
    }
}

/// `SELECT name, subject, text, html, updated_at, unsubscribe_list`.
pub(super) fn template<R: HeraldRow>(row: &R) -> StoredTemplate
where
    usize: ColumnIndex<R>,
{
    StoredTemplate {
        source: TemplateSource {
            name: row.text(0),
            subject: row.text(1),
            text: row.opt_text(2),
            html: row.opt_text(3),
        },
        updated_at: row.int(4),
        unsubscribe_list: row.opt_text(5),
    }
}

/// A page from `limit + 1` rows: the extra row only says there is a next page.
pub(super) fn page(mut items: Vec<MessageSummary>, limit: u32) -> SearchPage {
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items
            .last()
            .map(|last| format!("{}_{}", last.created_at, last.id))
    } else {
        None
    };
    SearchPage { items, next_cursor }
}

/// Counts by status from columns in `MessageStatus::ALL` order; statuses with none are left out.
pub(super) fn counts_from(column: impl Fn(usize) -> i64) -> HashMap<MessageStatus, u64> {
    MessageStatus::ALL
        .iter()
        .enumerate()
        .filter_map(|(i, status)| {
            let n = column(i);
            (n > 0).then_some((*status, n as u64))
        })
        .collect()
}

/// A session row; `None` when the stored token hash is not 32 bytes (a row this code did not write).
pub fn session_info(token_hash: Vec<u8>, expires_at: super::Millis) -> Option<SessionInfo> {
    Some(SessionInfo {
        token_hash: token_hash.try_into().ok()?,
        expires_at,
    })
}

/// `SELECT address, scope, reason, source_message, created_at, expires_at` of `suppressions`.
pub(super) fn suppression<R: HeraldRow>(row: &R) -> Result<Suppression, Unreadable>
where
    usize: ColumnIndex<R>,
{
    Ok(Suppression {
        address: row.text(0),
        scope: rules::scope_from_column(row.text(1)),
        reason: Unreadable::parse("suppressions", "reason", &row.text(2))?,
        source_message: row.opt_text(3),
        created_at: row.int(4),
        expires_at: row.opt_int(5),
    })
}

/// The position after which a page of the suppression list starts: the last row's address and scope column
/// (`("", "")`: from the start). A cursor is opaque to clients: base64url of `address\nscope`.
pub(super) fn suppression_cursor(cursor: Option<&str>) -> Result<(String, String), StoreError> {
    use base64::Engine as _;
    let Some(cursor) = cursor.filter(|c| !c.is_empty()) else {
        return Ok((String::new(), String::new()));
    };
    let invalid = || StoreError::InvalidQuery("not a cursor this list gave".into());
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (address, scope) = text.split_once('\n').ok_or_else(invalid)?;
    Ok((address.to_owned(), scope.to_owned()))
}

/// A page from `limit + 1` rows: the extra row only says there is a next page.
pub(super) fn suppression_page(mut items: Vec<Suppression>, limit: u32) -> SuppressionPage {
    use base64::Engine as _;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| {
            let scope = rules::scope_column(last.scope.as_deref());
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!("{}\n{scope}", last.address))
        })
    } else {
        None
    };
    SuppressionPage { items, next_cursor }
}
