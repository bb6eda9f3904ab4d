//! Message content on the wire: CRLF normalisation and dot-stuffing (RFC 5321 §4.5.2) without
//! copying the message.
//!
//! The content arrives as [`BodySegment`]s (the contract with herald-mime). The output is a list of
//! slices borrowed from the segments, interleaved with the few static bytes that must be inserted
//! (`.` before a line that starts with one, `\r\n` for a bare CR or LF); the list goes to `writev`.
//! A `dot_safe` segment is passed through as one slice without being looked at. Other segments are
//! scanned with `memchr2` for CR/LF, one call per line; nothing is copied.

use bytes::Bytes;
use memchr::memchr2;

/// One piece of message content. Every segment begins at the start of a line and ends with CRLF;
/// `dot_safe` promises that no line in it starts with `.` and that its line endings are CRLF (base64
/// bodies), so it is sent untouched. Built by herald-mime's composer; the service converts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodySegment {
    pub bytes: Bytes,
    pub dot_safe: bool,
}

impl BodySegment {
    /// A segment that will be scanned (normalised and dot-stuffed).
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        BodySegment {
            bytes: bytes.into(),
            dot_safe: false,
        }
    }

    /// A segment that is sent as it is: the caller guarantees CRLF line ends and no line starting
    /// with `.`.
    pub fn dot_safe(bytes: impl Into<Bytes>) -> Self {
        BodySegment {
            bytes: bytes.into(),
            dot_safe: true,
        }
    }
}

impl From<Bytes> for BodySegment {
    fn from(bytes: Bytes) -> Self {
        BodySegment::new(bytes)
    }
}

const CRLF: &[u8] = b"\r\n";
const DOT: &[u8] = b".";

/// The wire form of a message: borrowed slices in order, and their total length.
#[derive(Debug, Default)]
pub(crate) struct WirePlan<'a> {
    pub slices: Vec<&'a [u8]>,
    pub len: usize,
}

impl<'a> WirePlan<'a> {
    fn push(&mut self, slice: &'a [u8]) {
        if !slice.is_empty() {
            self.len += slice.len();
            self.slices.push(slice);
        }
    }

    /// Plans `parts` (bytes, dot_safe). With `stuff` (DATA) lines starting with `.` get another
    /// `.`; without (BDAT, RFC 3030) only line endings are normalised. The content always ends
    /// with CRLF.
    pub fn build(parts: impl IntoIterator<Item = (&'a [u8], bool)>, stuff: bool) -> Self {
        let mut plan = WirePlan::default();
        let mut ends_with_crlf = true;
        for (bytes, dot_safe) in parts {
            if bytes.is_empty() {
                continue;
            }
            if dot_safe {
                plan.push(bytes);
                ends_with_crlf = bytes.ends_with(CRLF);
            } else {
                ends_with_crlf = plan.scan(bytes, stuff);
            }
        }
        if !ends_with_crlf {
            plan.push(CRLF);
        }
        plan
    }

    /// Appends one segment that must be scanned; returns whether it ended with a line end.
    fn scan(&mut self, s: &'a [u8], stuff: bool) -> bool {
        let len = s.len();
        // `start` is the beginning of the bytes not yet pushed; `at` is where the search resumes.
        let mut start = 0;
        let mut at = 0;
        if stuff && s[0] == b'.' {
            self.push(DOT);
        }
        while let Some(offset) = memchr2(b'\r', b'\n', &s[at..]) {
            let p = at + offset;
            if s[p] == b'\r' && s.get(p + 1) == Some(&b'\n') {
                at = p + 2;
            } else {
                // RFC 5321 §2.3.8: a bare CR or LF becomes CRLF.
                self.push(&s[start..p]);
                self.push(CRLF);
                start = p + 1;
                at = p + 1;
            }
            if stuff && s.get(at) == Some(&b'.') {
                self.push(&s[start..at]);
                self.push(DOT);
                start = at;
            }
        }
        self.push(&s[start..]);
        // A segment that ends in a bare CR or LF got its CRLF above.
        matches!(s[len - 1], b'\n' | b'\r')
    }
}

/// Dot-stuffs and normalises one buffer into an owned copy (for tests and callers that want the
/// exact DATA bytes; the send path never copies).
pub fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let plan = WirePlan::build([(content, false)], true);
    let mut out = Vec::with_capacity(plan.len);
    for slice in plan.slices {
        out.extend_from_slice(slice);
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The obvious byte-at-a-time reference implementation.
    fn naive(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut line_start = true;
        let mut i = 0;
        while i < content.len() {
            let b = content[i];
            if line_start && b == b'.' {
                out.push(b'.');
            }
            line_start = false;
            match b {
                b'\r' if content.get(i + 1) == Some(&b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    i += 1;
                    line_start = true;
                }
                b'\r' | b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    line_start = true;
                }
                _ => out.push(b),
            }
            i += 1;
        }
        if !content.is_empty() && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn stuffs_leading_dots_and_fixes_bare_line_ends() {
        assert_eq!(
            dot_stuff(b".hidden\r\nok\r\n.\r\n..x\r\n"),
            b"..hidden\r\nok\r\n..\r\n...x\r\n"
        );
        assert_eq!(dot_stuff(b"a\nb\rc\r\n.d"), b"a\r\nb\r\nc\r\n..d\r\n");
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n");
        assert_eq!(dot_stuff(b"mid.dot\r\n"), b"mid.dot\r\n");
    }

    #[test]
    fn dot_safe_segments_pass_through_as_one_slice() {
        let base64 = b"QUJD\r\nREVG\r\n".as_slice();
        let plan = WirePlan::build(
            [(b"Subject: x\r\n\r\n".as_slice(), false), (base64, true)],
            true,
        );
        assert_eq!(plan.slices.len(), 2);
        assert!(std::ptr::eq(plan.slices[1], base64));
    }

    #[test]
    fn bdat_plan_normalises_without_stuffing() {
        let plan = WirePlan::build([(b".a\nb".as_slice(), false)], false);
        assert_eq!(plan.slices.concat(), b".a\r\nb\r\n");
    }

    proptest! {
        #[test]
        fn matches_the_naive_reference(content in proptest::collection::vec(
            prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'a'), any::<u8>()], 0..300)) {
            prop_assert_eq!(dot_stuff(&content), naive(&content));
        }

        #[test]
        fn segments_stuff_like_the_concatenation(lines in proptest::collection::vec("[.a-c]{0,4}", 1..20), cut in 0usize..20) {
            // Segments split at line boundaries behave exactly like one segment.
            let all: Vec<String> = lines.iter().map(|line| format!("{line}\r\n")).collect();
            let cut = cut.min(all.len());
            let (a, b) = (all[..cut].concat(), all[cut..].concat());
            let plan = WirePlan::build([(a.as_bytes(), false), (b.as_bytes(), false)], true);
            prop_assert_eq!(plan.slices.concat(), naive(all.concat().as_bytes()));
        }
    }
}
