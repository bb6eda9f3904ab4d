//! Header writing: folding (RFC 5322 §2.2.3), encoded-words (RFC 2047),
//! display-name phrases and RFC 2231 parameters.
//!
//! Every value reaching this module has already been checked for CR, LF and
//! NUL, and everything written here is built from tokens of at most 900
//! octets joined by folding white space, so no header line can exceed 998
//! octets and no value can start a new header.

use crate::{address::Mailbox, encode::base64_plain};

/// Lines are folded before they pass 78 characters (RFC 5322 §2.1.1 SHOULD).
const FOLD_AT: usize = 78;
/// RFC 2047 §2: an encoded-word is at most 75 characters.
const WORD_MAX: usize = 75;
/// A raw (unencoded) word longer than this is encoded instead, so that even
/// an unfoldable word keeps the line under 998 octets.
const RAW_WORD_MAX: usize = 900;

/// Writes one header field, folding between tokens.
pub(crate) struct Fold<'a> {
    out: &'a mut Vec<u8>,
    col: usize,
    empty: bool,
}

impl<'a> Fold<'a> {
    /// Starts `Name: `.
    pub fn start(out: &'a mut Vec<u8>, name: &str) -> Fold<'a> {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        Fold {
            col: name.len() + 2,
            out,
            empty: true,
        }
    }

    /// Writes a token, preceded by `sep` (a space, or nothing); folds before
    /// the token when the line would get too long. A fold replaces the
    /// separator space, so unfolding restores the same text.
    pub fn token(&mut self, sep: bool, token: &[u8]) {
        let need = usize::from(sep) + token.len();
        if !self.empty && self.col + need > FOLD_AT {
            self.out.extend_from_slice(b"\r\n ");
            self.col = 1;
        } else if sep {
            self.out.push(b' ');
            self.col += 1;
        }
        self.out.extend_from_slice(token);
        self.col += token.len();
        self.empty = false;
    }

    /// Writes a token that must stick to the previous one (no fold point).
    pub fn glue(&mut self, token: &[u8]) {
        self.out.extend_from_slice(token);
        self.col += token.len();
        self.empty = false;
    }

    /// Ends the field.
    pub fn finish(self) {
        self.out.extend_from_slice(b"\r\n");
    }
}

/// RFC 2047 §5(3): characters allowed unencoded in a `Q` word that may
/// stand in a phrase (the strictest of the three contexts, so one rule
/// serves subjects and names alike).
fn q_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'!' | b'*' | b'+' | b'-' | b'/')
}

fn q_len(s: &str) -> usize {
    s.bytes()
        .map(|b| if q_plain(b) || b == b' ' { 1 } else { 3 })
        .sum()
}

/// Appends `text` as encoded-words of at most 75 characters each, split on
/// character boundaries, `B` or `Q`, whichever is shorter for the text.
/// Adjacent encoded-words are joined by folding white space, which decoders
/// drop (RFC 2047 §6.2), so spaces live inside the words.
pub(crate) fn encoded_words(fold: &mut Fold<'_>, sep: bool, text: &str) {
    let use_b = text.len().div_ceil(3) * 4 < q_len(text);
    let mut word = Vec::with_capacity(WORD_MAX);
    let mut first = true;
    let mut rest = text;
    const PREFIX: &[u8] = b"=?utf-8?b?";
    let budget = WORD_MAX - PREFIX.len() - 2;
    while !rest.is_empty() {
        // Take as many whole characters as fit in this word.
        let mut take = 0;
        let mut cost = 0;
        for (i, c) in rest.char_indices() {
            let len = c.len_utf8();
            let next = if use_b {
                (i + len).div_ceil(3) * 4
            } else {
                let mut buf = [0u8; 4];
                cost + c
                    .encode_utf8(&mut buf)
                    .bytes()
                    .map(|b| if q_plain(b) || b == b' ' { 1 } else { 3 })
                    .sum::<usize>()
            };
            if next > budget {
                break;
            }
            cost = next;
            take = i + len;
        }
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        word.clear();
        if use_b {
            word.extend_from_slice(b"=?utf-8?b?");
            base64_plain(chunk.as_bytes(), &mut word);
        } else {
            word.extend_from_slice(b"=?utf-8?q?");
            for b in chunk.bytes() {
                if b == b' ' {
                    word.push(b'_');
                } else if q_plain(b) {
                    word.push(b);
                } else {
                    word.extend_from_slice(&[
                        b'=',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 15)],
                    ]);
                }
            }
        }
        word.extend_from_slice(b"?=");
        fold.token(sep || !first, &word);
        first = false;
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// A word that may be written raw in unstructured text: printable ASCII, not
/// looking like an encoded-word, and short enough.
fn raw_ok(word: &str) -> bool {
    !word.is_empty()
        && word.len() <= RAW_WORD_MAX
        && word.bytes().all(|b| b.is_ascii_graphic())
        && !word.contains("=?")
}

/// Writes unstructured text (Subject, custom headers): readable ASCII words
/// stay as they are, runs of words that need it become encoded-words.
pub(crate) fn unstructured(fold: &mut Fold<'_>, text: &str) {
    // Anything but single spaces between words cannot be kept exactly by
    // folding, so such text is encoded whole.
    let simple = !text.is_empty()
        && !text.starts_with(' ')
        && !text.ends_with(' ')
        && !text.contains("  ")
        && !text.contains('\t');
    if !simple {
        if !text.is_empty() {
            encoded_words(fold, false, text);
        }
        return;
    }
    let words: Vec<&str> = text.split(' ').collect();
    let mut i = 0;
    let mut first = true;
    while i < words.len() {
        if raw_ok(words[i]) {
            fold.token(!first, words[i].as_bytes());
            i += 1;
        } else {
            // A run of words to encode, with the spaces between them.
            let start = i;
            while i < words.len() && !raw_ok(words[i]) {
                i += 1;
            }
            // The space before a following raw word stays outside, and is
            // significant there (RFC 2047 §6.2 only drops space between
            // two encoded-words).
            let run = words[start..i].join(" ");
            encoded_words(fold, !first, &run);
        }
        first = false;
    }
}

/// RFC 5322 §3.2.3 atext.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// Writes a display name as a phrase: atoms as they are, ASCII with
/// specials as a quoted string, anything else as encoded-words.
pub(crate) fn phrase(fold: &mut Fold<'_>, sep: bool, name: &str) {
    let ascii = name.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
    if ascii && !name.contains("=?") {
        let atoms = !name.contains("  ")
            && name
                .split(' ')
                .all(|w| !w.is_empty() && w.bytes().all(is_atext));
        if atoms && name.len() <= RAW_WORD_MAX {
            for (i, w) in name.split(' ').enumerate() {
                fold.token(sep || i > 0, w.as_bytes());
            }
            return;
        }
        if name.len() <= 70 {
            let mut q = Vec::with_capacity(name.len() + 4);
            q.push(b'"');
            for b in name.bytes() {
                if b == b'"' || b == b'\\' {
                    q.push(b'\\');
                }
                q.push(b);
            }
            q.push(b'"');
            fold.token(sep, &q);
            return;
        }
    }
    encoded_words(fold, sep, name);
}

/// Writes `From:`/`To:`-style address lists.
pub(crate) fn address_list(out: &mut Vec<u8>, name: &str, list: &[Mailbox]) {
    let mut fold = Fold::start(out, name);
    for (i, mb) in list.iter().enumerate() {
        let addr = mb.address().header_form();
        match mb.name() {
            Some(n) => {
                phrase(&mut fold, i > 0, n);
                fold.token(true, format!("<{addr}>").as_bytes());
            }
            None => fold.token(i > 0, addr.as_bytes()),
        }
        if i + 1 < list.len() {
            fold.glue(b",");
        }
    }
    fold.finish();
}

/// RFC 2045 §5.1 `token` characters, safe unquoted in a parameter value.
fn is_token(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b)
}

/// RFC 2231 §7 `attribute-char`, written as is in an extended value.
fn is_attr_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b)
}

/// Appends `; attr=value` to a Content-Type/Content-Disposition field.
///
/// Short printable ASCII is a token or quoted string. Anything else uses
/// RFC 2231: `attr*=utf-8''%XX…`, split into `attr*0*`, `attr*1*`, … when
/// long (each piece on its own folded line). When `fallback_2047` is set
/// (the `name` parameter of Content-Type), non-ASCII values are written as
/// a quoted string of RFC 2047 encoded-words instead, which is what older
/// clients that ignore RFC 2231 understand.
pub(crate) fn param(fold: &mut Fold<'_>, attr: &str, value: &str, fallback_2047: bool) {
    fold.glue(b";");
    let printable = value.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
    if printable && value.len() <= 60 {
        let mut t = Vec::with_capacity(attr.len() + value.len() + 4);
        t.extend_from_slice(attr.as_bytes());
        t.push(b'=');
        if !value.is_empty() && value.bytes().all(is_token) {
            t.extend_from_slice(value.as_bytes());
        } else {
            t.push(b'"');
            for b in value.bytes() {
                if b == b'"' || b == b'\\' {
                    t.push(b'\\');
                }
                t.push(b);
            }
            t.push(b'"');
        }
        fold.token(true, &t);
        return;
    }
    if fallback_2047 {
        // name="=?utf-8?b?...?= =?utf-8?b?...?=": the words are folded
        // inside the quoted string, where folding white space is allowed.
        let mut words = Vec::new();
        let mut inner = Fold {
            out: &mut words,
            col: 0,
            empty: true,
        };
        encoded_words(&mut inner, false, value);
        // Re-emit each word as a token so the outer fold can break lines;
        // the opening quote sticks to the first word, the closing to the last.
        let text = String::from_utf8_lossy(&words).replace("\r\n ", " ");
        let words: Vec<&str> = text.split(' ').collect();
        let last = words.len() - 1;
        for (i, w) in words.into_iter().enumerate() {
            let mut t = Vec::with_capacity(w.len() + attr.len() + 3);
            if i == 0 {
                t.extend_from_slice(attr.as_bytes());
                t.extend_from_slice(b"=\"");
            }
            t.extend_from_slice(w.as_bytes());
            if i == last {
                t.push(b'"');
            }
            fold.token(true, &t);
        }
        return;
    }
    // RFC 2231 extended value, percent-encoded, in pieces of ≤ 60 chars.
    let mut pieces: Vec<Vec<u8>> = vec![Vec::new()];
    for c in value.chars() {
        let mut buf = [0u8; 4];
        let mut enc = Vec::with_capacity(12);
        for &b in c.encode_utf8(&mut buf).as_bytes() {
            if is_attr_char(b) {
                enc.push(b);
            } else {
                enc.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
        }
        let last = pieces.last_mut().expect("one piece");
        if !last.is_empty() && last.len() + enc.len() > 60 {
            pieces.push(enc);
        } else {
            last.extend_from_slice(&enc);
        }
    }
    if pieces.len() == 1 {
        let mut t = format!("{attr}*=utf-8''").into_bytes();
        t.extend_from_slice(&pieces[0]);
        fold.token(true, &t);
    } else {
        let n = pieces.len();
        for (i, p) in pieces.into_iter().enumerate() {
            let mut t = if i == 0 {
                format!("{attr}*0*=utf-8''").into_bytes()
            } else {
                format!("{attr}*{i}*=").into_bytes()
            };
            t.extend_from_slice(&p);
            fold.token(true, &t);
            if i + 1 < n {
                fold.glue(b";");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(f: impl FnOnce(&mut Fold<'_>)) -> String {
        let mut out = Vec::new();
        let mut fold = Fold::start(&mut out, "Subject");
        f(&mut fold);
        fold.finish();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ascii_subject_stays_readable_and_folds() {
        let s = field(|f| unstructured(f, "Your order has shipped"));
        assert_eq!(s, "Subject: Your order has shipped\r\n");
        let long = "word ".repeat(40);
        let s = field(|f| unstructured(f, long.trim_end()));
        assert!(s.lines().all(|l| l.len() <= 78));
        assert!(!s.contains("=?"));
    }

    #[test]
    fn non_ascii_runs_are_encoded() {
        let s = field(|f| unstructured(f, "Order ORD-1 已发货 📦"));
        assert!(s.starts_with("Subject: Order ORD-1 =?utf-8?"), "{s}");
        for l in s.split("\r\n") {
            assert!(l.len() <= 78, "{l}");
        }
    }

    #[test]
    fn rfc2231_continuations() {
        let name = "订单发票".repeat(10) + ".pdf";
        let mut out = Vec::new();
        let mut fold = Fold::start(&mut out, "Content-Disposition");
        fold.token(false, b"attachment");
        param(&mut fold, "filename", &name, false);
        fold.finish();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("filename*0*=utf-8''%E8"), "{s}");
        assert!(s.contains("filename*1*="), "{s}");
    }
}
