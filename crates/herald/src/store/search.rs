//! Pieces of archive search shared by both dialects, above all the one tokenizer both stores use.
//!
//! Herald decides what a "word" is itself, for both stores alike, so that a word inside Chinese, Japanese,
//! Korean or Thai text is found (these scripts do not separate words with spaces: SQLite's `unicode61`
//! tokenizer and PostgreSQL's parser took a whole run of such text for one word). The store indexes the
//! terms [`index_terms`] gives and a search asks for the terms [`query_terms`] gives:
//!
//! - a run of a script written without spaces (Han, Hiragana, Katakana, Hangul, Thai, Lao, Khmer, Myanmar,
//!   Bopomofo) is indexed as every character and every pair of neighbouring characters. A query of one
//!   character asks for that character; a longer query asks for all its pairs (`发货` → `发货`, `订单已` →
//!   `订单` and `单已`), which finds the run anywhere inside the text. Pairs are more selective than single
//!   characters, so a query of common characters still narrows down fast.
//! - any other word (Latin, Cyrillic, Greek, …, with digits) is matched whole, as before, folded to lower case
//!   without diacritics. A Cyrillic word is indexed and asked for by its Russian Snowball stem, so `заказ`,
//!   `заказа` and `заказом` find each other. A word of [`COMPOUND_MIN`] or more letters (letters only) is also indexed by
//!   its first and its last part at every split leaving both parts [`PART_MIN`] letters or more, so a German
//!   compound is found by its head or its tail (`Versandbestätigung` by `versand` and by `bestätigung`); words over [`COMPOUND_MAX`] letters are not split.
//! - several query words must all match (AND), in any order.

use std::{collections::HashSet, sync::LazyLock};

use rust_stemmers::{Algorithm, Stemmer};
use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};

use super::{Millis, StoreError};

/// Words at least this long (in characters) are also indexed by their parts (see the module docs).
pub const COMPOUND_MIN: usize = 8;
/// Longer words are not split: they are tokens (hashes, base64), not compounds, and would each add
/// twice their length in terms.
pub const COMPOUND_MAX: usize = 32;
/// The shortest part of a long word that is indexed.
pub const PART_MIN: usize = 4;
/// Terms longer than this (in bytes) are not indexed nor asked for: PostgreSQL refuses lexemes over 2 KB,
/// and nobody searches for a 200-byte token (a base64 line, a long URL).
const TERM_MAX_BYTES: usize = 200;
/// Distinct terms indexed per message at most, which bounds an index entry (PostgreSQL refuses a tsvector
/// over 1 MB; 20,000 terms of CJK pairs is about 200 KB). Text beyond that is not indexed.
pub const TERMS_MAX: usize = 20_000;

static RUSSIAN: LazyLock<Stemmer> = LazyLock::new(|| Stemmer::create(Algorithm::Russian));

/// Lower case without diacritics (`José` → `jose`), so search matches what people type, with compatibility
/// forms unified (full-width `ＡＢＣ` → `abc`, half-width katakana → katakana). Recomposed afterwards: a
/// Hangul syllable or a Japanese `が` stays one character. Only the diacritics of Latin, Greek and Cyrillic
/// letters are dropped (the combining blocks below), not the vowel signs other scripts are written with.
pub fn fold(text: &str) -> String {
    // ASCII is its own NFKD and NFC and has no diacritics: only the case changes. Most alerts and addresses
    // are ASCII, and the Unicode path was about a twentieth of the server's CPU on small alerts (perf).
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    // Text of other scripts goes through the normalizer a run at a time, between the characters that need
    // none of it: ASCII and the unified ideographs of Chinese and Japanese, which most of the text of a
    // Chinese notification is (the normalizer was about a twentieth of the submission server's CPU on
    // the standard notification, perf). Splitting there changes nothing: those characters have no
    // decomposition and no case but ASCII's, and each is a starter that never composes with the character
    // before it, so no step of the normalization looks across them; one composing with a mark after it,
    // as `e` does with U+0301, only composes with diacritics, which are dropped. A test checks this against
    // the whole-text path for every character beside every kind of neighbour.
    let mut out = String::with_capacity(text.len());
    let mut run_start = None;
    for (at, c) in text.char_indices() {
        let inert = c.is_ascii() || matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF);
        match (inert, run_start) {
            (true, Some(start)) => {
                fold_unicode(&text[start..at], &mut out);
                run_start = None;
            }
            (false, None) => run_start = Some(at),
            _ => {}
        }
        if inert {
            out.push(c.to_ascii_lowercase());
        }
    }
    if let Some(start) = run_start {
        fold_unicode(&text[start..], &mut out);
    }
    out
}

/// [`fold`] by the Unicode algorithms alone: NFKD, lower case, diacritics dropped, NFC.
fn fold_unicode(text: &str, out: &mut String) {
    out.extend(
        text.nfkd()
            .flat_map(char::to_lowercase)
            .filter(|c| !is_diacritic(*c))
            .nfc(),
    );
}

fn is_diacritic(c: char) -> bool {
    matches!(c as u32, 0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F)
}

/// Scripts written without spaces between words (or, for Korean, with particles glued to words), searched by
/// characters and pairs of characters.
fn is_unspaced(c: char) -> bool {
    matches!(c as u32,
        0x0E00..=0x0EFF     // Thai, Lao
        | 0x1000..=0x109F   // Myanmar
        | 0x1100..=0x11FF   // Hangul Jamo
        | 0x1780..=0x17FF   // Khmer
        | 0x3040..=0x30FF   // Hiragana, Katakana
        | 0x3100..=0x312F   // Bopomofo
        | 0x3130..=0x318F   // Hangul compatibility Jamo
        | 0x31F0..=0x31FF   // Katakana phonetic extensions
        | 0x3400..=0x4DBF   // CJK extension A
        | 0x4E00..=0x9FFF   // CJK unified ideographs
        | 0xAC00..=0xD7AF   // Hangul syllables
        | 0xF900..=0xFAFF   // CJK compatibility ideographs
        | 0x20000..=0x3134F // CJK extensions B–G
    )
}

fn is_word_char(c: char) -> bool {
    // ASCII first: no ASCII character is a combining mark, and most text of most messages is ASCII.
    if c.is_ascii() {
        return c.is_ascii_alphanumeric();
    }
    c.is_alphanumeric() || is_combining_mark(c)
}

/// One piece of text between separators: a word, or a run of an unspaced script.
enum Piece<'a> {
    Word(&'a str),
    /// The run's characters, without the combining marks (Thai tone and vowel marks) that some tokenizers
    /// treat as separators: a pair is two base letters.
    Run(Vec<char>),
}

fn pieces(folded: &str) -> impl Iterator<Item = Piece<'_>> {
    let mut rest = folded;
    std::iter::from_fn(move || {
        let start = rest.find(is_word_char)?;
        rest = &rest[start..];
        let unspaced = rest.chars().next().is_some_and(is_unspaced);
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                !is_word_char(c) || (is_unspaced(c) != unspaced && !is_combining_mark(c))
            })
            .map_or(rest.len(), |(i, _)| i);
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(if unspaced {
            Piece::Run(piece.chars().filter(|c| !is_combining_mark(*c)).collect())
        } else {
            Piece::Word(piece)
        })
    })
}

/// The term a word is indexed and searched by: its Russian stem for a Cyrillic word, else the word.
fn word_term(word: &str) -> std::borrow::Cow<'_, str> {
    if !word.is_ascii() && word.chars().any(|c| matches!(c as u32, 0x0400..=0x04FF)) {
        std::borrow::Cow::Owned(RUSSIAN.stem(word).into_owned())
    } else {
        std::borrow::Cow::Borrowed(word)
    }
}

/// The distinct terms to index for `text` (subject, addresses, body), joined by spaces (no term contains
/// one), at most [`TERMS_MAX`] of them.
pub fn index_terms(text: &str) -> String {
    let folded = fold(text);
    // Sized for the text at once: growing the set was a visible part of indexing a small alert (perf).
    let mut seen = HashSet::with_capacity((folded.len() / 4).min(TERMS_MAX));
    let mut out = String::with_capacity(folded.len() * 2);
    let mut add = |term: &str| {
        if term.is_empty() || term.len() > TERM_MAX_BYTES || seen.len() >= TERMS_MAX {
            return;
        }
        if seen.insert(term.to_owned()) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(term);
        }
    };
    for piece in pieces(&folded) {
        match piece {
            Piece::Word(word) => {
                add(&word_term(word));
                let chars: Vec<(usize, char)> = word.char_indices().collect();
                // Letters only: a compound is made of words, while splitting every `customer181261` or
                // order number would triple the index (measured: x3.3 against unicode61 on the bench).
                if (COMPOUND_MIN..=COMPOUND_MAX).contains(&chars.len())
                    && chars.iter().all(|(_, c)| c.is_alphabetic())
                {
                    for &(at, _) in &chars[PART_MIN..=chars.len() - PART_MIN] {
                        add(&word[..at]);
                        add(&word[at..]);
                    }
                }
            }
            Piece::Run(chars) => {
                let mut pair = String::new();
                for (i, c) in chars.iter().enumerate() {
                    add(c.encode_utf8(&mut [0; 4]));
                    if let Some(next) = chars.get(i + 1) {
                        pair.clear();
                        pair.push(*c);
                        pair.push(*next);
                        add(&pair);
                    }
                }
            }
        }
    }
    out
}

/// The terms a search for `input` asks for, all of which a message must have; empty when the input has no
/// word at all (then there is no text filter).
pub fn query_terms(input: &str) -> Vec<String> {
    let folded = fold(input);
    let mut terms: Vec<String> = Vec::new();
    for piece in pieces(&folded) {
        match piece {
            Piece::Word(word) => terms.push(word_term(word).into_owned()),
            Piece::Run(chars) if chars.len() == 1 => terms.push(chars[0].to_string()),
            Piece::Run(chars) => terms.extend(chars.windows(2).map(|w| w.iter().collect())),
        }
    }
    let mut seen = HashSet::new();
    terms.retain(|t| !t.is_empty() && t.len() <= TERM_MAX_BYTES && seen.insert(t.clone()));
    terms
}

/// An FTS5 query matching all of `terms`, each a quoted string, so that `"`, `*`, `NEAR`, `OR` and column
/// filters in user input are just text.
pub fn fts5_query(terms: &[String]) -> String {
    terms
        .iter()
        .map(|term| format!("\"{}\"", term.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A PostgreSQL `tsquery` literal matching all of `terms` (cast with `::tsquery`): each term is a quoted
/// lexeme, quotes and backslashes escaped, so that `&`, `|`, `!`, `:*` in user input are just text.
pub fn tsquery(terms: &[String]) -> String {
    terms
        .iter()
        .map(|term| format!("'{}'", term.replace('\\', "\\\\").replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(" & ")
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
    fn ascii_folds_as_the_unicode_path_does() {
        let all: String = (0u8..=127).map(char::from).collect();
        for text in [
            all.as_str(),
            "Order ORD-1042 Shipped",
            "ALERT: disk /dev/sda1 at 97%",
            "",
        ] {
            let unicode: String = text
                .nfkd()
                .flat_map(char::to_lowercase)
                .filter(|c| !is_diacritic(*c))
                .nfc()
                .collect();
            assert_eq!(fold(text), unicode, "{text:?}");
        }
    }

    /// The run-at-a-time path of [`fold`] against the whole text through the normalizer: every character of
    /// the Basic Multilingual Plane and of the supplementary ideographs, before and after each kind of
    /// neighbour the split could matter to (ASCII that composes with marks, an ideograph, a mark, Hangul,
    /// kana that compose with voicing marks).
    #[test]
    fn folding_run_by_run_is_folding_the_whole_text() {
        let whole = |text: &str| {
            let mut out = String::new();
            fold_unicode(text, &mut out);
            out
        };
        let neighbours = [
            "e",
            "A",
            "中",
            "\u{0301}",
            "a\u{0301}",
            "가",
            "か",
            "\u{3099}",
            "ﬁ",
        ];
        let chars = (0..=0x2FFFF_u32).filter_map(char::from_u32);
        let mut checked = 0;
        for c in chars {
            for n in neighbours {
                for text in [format!("{n}{c}"), format!("{c}{n}"), format!("{n}{c}{n}")] {
                    assert_eq!(fold(&text), whole(&text), "{text:?} {:X}", c as u32);
                    checked += 1;
                }
            }
        }
        assert!(checked > 1_000_000);
    }

    #[test]
    fn folding_drops_diacritics_and_case_but_keeps_other_scripts() {
        assert_eq!(fold("José GARCÍA Übersicht"), "jose garcia ubersicht");
        assert_eq!(fold("订单 📦"), "订单 📦");
        // Recomposed: Hangul syllables and kana with voicing marks stay single characters.
        assert_eq!(fold("주문 が ＡＢＣ"), "주문 が abc");
    }

    #[test]
    fn unspaced_runs_are_indexed_by_characters_and_pairs() {
        assert_eq!(index_terms("已发货 📦"), "已 已发 发 发货 货");
        assert_eq!(
            query_terms("您的订单已发货"),
            ["您的", "的订", "订单", "单已", "已发", "发货"]
        );
        assert_eq!(query_terms("货"), ["货"]);
        // A Latin word glued to CJK text is a word of its own.
        assert_eq!(query_terms("iPhone15发货"), ["iphone15", "发货"]);
        // Thai marks are left out of pairs: ส่ง is searched as สง.
        assert_eq!(query_terms("ส่ง"), ["สง"]);
    }

    #[test]
    fn russian_words_meet_by_stem_and_compounds_by_their_parts() {
        assert_eq!(query_terms("заказом"), query_terms("Заказ"));
        assert_eq!(query_terms("заказа"), query_terms("заказы"));
        let terms = index_terms("Versandbestätigung");
        let terms: Vec<&str> = terms.split(' ').collect();
        for part in [
            "versandbestatigung",
            "versand",
            "bestatigung",
            "versandbe",
            "tigung",
        ] {
            assert!(terms.contains(&part), "{part} in {terms:?}");
        }
        assert!(
            !terms.contains(&"ver"),
            "parts have at least {PART_MIN} letters"
        );
        // Short words, and words with digits, have no parts.
        assert_eq!(index_terms("Paket"), "paket");
        assert_eq!(index_terms("customer181261"), "customer181261");
    }

    #[test]
    fn terms_are_distinct_and_bounded() {
        assert_eq!(index_terms("order Order ORDER"), "order");
        assert_eq!(
            index_terms(&"x".repeat(300)),
            "",
            "a term over 200 bytes is not indexed"
        );
        let many: String = (0..30_000).map(|i| format!("w{i} ")).collect();
        assert_eq!(index_terms(&many).split(' ').count(), TERMS_MAX);
        assert!(query_terms("  \"*( ").is_empty());
    }

    #[test]
    fn queries_quote_every_term() {
        let terms = query_terms(r#"a "b" OR*"#);
        assert_eq!(fts5_query(&terms), r#""a" "b" "or""#);
        let odd = vec!["it's".to_owned(), "a\\b".to_owned()];
        assert_eq!(fts5_query(&odd), r#""it's" "a\b""#);
        assert_eq!(tsquery(&odd), r"'it''s' & 'a\\b'");
    }
}
