//! Pieces of archive search shared by both dialects.

use unicode_normalization::UnicodeNormalization;

use super::{Millis, StoreError};

/// Lower case without diacritics (`José` → `jose`), so search matches what people type. SQLite's FTS5
/// tokenizer does the same with `remove_diacritics 2`; on PostgreSQL Herald folds the text itself rather than
/// rely on the `unaccent` extension, which not every installation may create.
pub fn fold(text: &str) -> String {
    text.nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

fn is_combining_mark(c: char) -> bool {
    matches!(c as u32, 0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F)
}

/// Turns user words into an FTS5 query that matches all of them, with FTS syntax neutralised: each word
/// becomes a quoted string, so `"`, `*`, `NEAR`, `OR` and column filters in user input are just text.
pub fn fts5_query(input: &str) -> String {
    input
        .split_whitespace()
        .map(|word| format!("\"{}\"", word.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks an activity query and gives the first bucket's start: buckets are aligned to multiples of
/// `bucket_ms` since the epoch, and the one holding `since` is included whole.
pub fn activity_start(since: Millis, bucket_ms: i64) -> Result<Millis, StoreError> {
    if bucket_ms <= 0 || bucket_ms % super::ACTIVITY_MINUTE != 0 {
        return Err(StoreError::InvalidQuery(format!(
            "activity bucket of {bucket_ms} ms: must be a positive multiple of 60000 (one minute)"
        )));
    }
    Ok(since.div_euclid(bucket_ms) * bucket_ms)
}

/// Reads a `next_cursor` this server gave: `<created_at>_<id>` of the last row of the previous page.
pub fn parse_cursor(cursor: &str) -> Result<(Millis, String), StoreError> {
    let invalid =
        || StoreError::InvalidQuery(format!("cursor {cursor:?} is not one this server gave"));
    let (at, id) = cursor.split_once('_').ok_or_else(invalid)?;
    Ok((at.parse().map_err(|_| invalid())?, id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_drops_diacritics_and_case_but_keeps_other_scripts() {
        assert_eq!(fold("José GARCÍA Übersicht"), "jose garcia ubersicht");
        assert_eq!(fold("订单 📦"), "订单 📦");
    }

    #[test]
    fn fts5_queries_quote_every_word() {
        assert_eq!(fts5_query(r#"a "b" OR*"#), r#""a" """b""" "OR*""#);
    }
}
