//! Body encoders: base64 in 76-column lines, quoted-printable, and the
//! choice between them and 7bit/8bit.
//!
//! These are the hot loops of composing (a standard notification is 60 KB of
//! attachment per message), so they write straight into the output buffer
//! with no intermediate copies: base64 through a 4096-entry table that maps
//! 12 input bits to two output characters, QP through a 256-entry class table.

/// RFC 2045 §6.8: base64 lines hold at most 76 characters; 57 input bytes
/// fill one line exactly.
const B64_LINE_IN: usize = 57;
const B64_LINE_OUT: usize = 76;
const B64_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Every 12-bit value → its two base64 characters.
static B64_PAIRS: [[u8; 2]; 4096] = {
    let mut t = [[0u8; 2]; 4096];
    let mut i = 0;
    while i < 4096 {
        t[i] = [B64_ALPHABET[i >> 6], B64_ALPHABET[i & 63]];
        i += 1;
    }
    t
};

/// Size of `n` input bytes as MIME base64 with CRLF after every line.
pub(crate) fn base64_mime_len(n: usize) -> usize {
    let chars = n.div_ceil(3) * 4;
    chars + chars.div_ceil(B64_LINE_OUT) * 2
}

#[inline(always)]
fn encode_group(src: &[u8], dst: &mut [u8]) {
    let n = (u32::from(src[0]) << 16) | (u32::from(src[1]) << 8) | u32::from(src[2]);
    let hi = B64_PAIRS[(n >> 12) as usize];
    let lo = B64_PAIRS[(n & 0xfff) as usize];
    dst[0] = hi[0];
    dst[1] = hi[1];
    dst[2] = lo[0];
    dst[3] = lo[1];
}

/// Appends `input` as base64 in lines of 76 characters, each ending in CRLF
/// (the last line too; an empty input appends nothing).
pub(crate) fn base64_mime(input: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let total = base64_mime_len(input.len());
    out.resize(start + total, 0);
    let dst = &mut out[start..];
    let full = input.len() / B64_LINE_IN;
    let (lines_in, rest) = input.split_at(full * B64_LINE_IN);
    let (lines_out, rest_out) = dst.split_at_mut(full * (B64_LINE_OUT + 2));
    for (src, line) in lines_in
        .chunks_exact(B64_LINE_IN)
        .zip(lines_out.chunks_exact_mut(B64_LINE_OUT + 2))
    {
        for (g, o) in src.chunks_exact(3).zip(line.chunks_exact_mut(4)) {
            encode_group(g, o);
        }
        line[B64_LINE_OUT] = b'\r';
        line[B64_LINE_OUT + 1] = b'\n';
    }
    if rest.is_empty() {
        return;
    }
    let groups = rest.len() / 3;
    let (g_in, tail) = rest.split_at(groups * 3);
    for (g, o) in g_in.chunks_exact(3).zip(rest_out.chunks_exact_mut(4)) {
        encode_group(g, o);
    }
    let mut p = groups * 4;
    match *tail {
        [a] => {
            rest_out[p] = B64_ALPHABET[usize::from(a >> 2)];
            rest_out[p + 1] = B64_ALPHABET[usize::from((a & 3) << 4)];
            rest_out[p + 2] = b'=';
            rest_out[p + 3] = b'=';
            p += 4;
        }
        [a, b] => {
            rest_out[p] = B64_ALPHABET[usize::from(a >> 2)];
            rest_out[p + 1] = B64_ALPHABET[usize::from(((a & 3) << 4) | (b >> 4))];
            rest_out[p + 2] = B64_ALPHABET[usize::from((b & 15) << 2)];
            rest_out[p + 3] = b'=';
            p += 4;
        }
        _ => {}
    }
    rest_out[p] = b'\r';
    rest_out[p + 1] = b'\n';
    debug_assert_eq!(p + 2, rest_out.len());
}

/// Plain base64 (no line breaks), for RFC 2047 `B` words.
pub(crate) fn base64_plain(input: &[u8], out: &mut Vec<u8>) {
    let mut chunks = input.chunks_exact(3);
    for g in &mut chunks {
        let mut o = [0u8; 4];
        encode_group(g, &mut o);
        out.extend_from_slice(&o);
    }
    match *chunks.remainder() {
        [a] => out.extend_from_slice(&[
            B64_ALPHABET[usize::from(a >> 2)],
            B64_ALPHABET[usize::from((a & 3) << 4)],
            b'=',
            b'=',
        ]),
        [a, b] => out.extend_from_slice(&[
            B64_ALPHABET[usize::from(a >> 2)],
            B64_ALPHABET[usize::from(((a & 3) << 4) | (b >> 4))],
            B64_ALPHABET[usize::from((b & 15) << 2)],
            b'=',
        ]),
        _ => {}
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// RFC 2045 §6.7: at most 76 characters per encoded line, the soft-break
/// `=` included, so at most 75 characters of content.
const QP_MAX: usize = 75;

/// QP byte classes: 0 = literal, 1 = must be escaped, 2 = space/tab
/// (literal unless it ends a line), 3 = CR/LF.
static QP_CLASS: [u8; 256] = {
    let mut t = [1u8; 256];
    let mut b = 33;
    while b < 127 {
        t[b] = 0;
        b += 1;
    }
    t[b'=' as usize] = 1;
    t[b' ' as usize] = 2;
    t[b'\t' as usize] = 2;
    t[b'\r' as usize] = 3;
    t[b'\n' as usize] = 3;
    t
};

/// Appends `input` as quoted-printable and returns `false` (after undoing
/// its output) as soon as it grows past `limit` bytes.
///
/// In text mode `input` must already be in canonical form (every line break
/// a CRLF, see [`normalize_newlines`]) and CRLF is written as a hard line
/// break; in binary mode every CR and LF is escaped, so the decoded bytes are
/// exactly the input (a decoder may turn hard breaks into local newlines).
///
/// Every output line that starts with `.` or `From ` gets that first
/// character escaped, so QP output never needs SMTP dot-stuffing (RFC 5321
/// §4.5.2) and survives mbox `From ` quoting. The last line is not
/// terminated: the caller adds the CRLF that precedes the next boundary.
pub(crate) fn quoted_printable(input: &[u8], text: bool, limit: usize, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let n = input.len();
    // Write into a zeroed region sized for the worst case (or the limit):
    // plain runs are copied eight bytes at a time, which may write up to
    // eight bytes past the run; the slack absorbs that and what one step
    // can add before the limit is checked.
    let worst = 3 * n + 3 * (3 * n / QP_MAX + 1);
    out.resize(start + worst.min(limit) + 128, 0);
    let buf = &mut out[start..];
    let mut pos = 0;
    let mut col = 0usize;
    let mut i = 0;
    // Trailing white space is stripped by gateways (RFC 2045 §6.7 rule 3),
    // so a space or tab right before a line break or the end is escaped.
    let ends_line = |at: usize| at == n || (text && input[at] == b'\r');
    let escape = |buf: &mut [u8], pos: usize, b: u8| {
        buf[pos] = b'=';
        buf[pos + 1] = HEX[usize::from(b >> 4)];
        buf[pos + 2] = HEX[usize::from(b & 15)];
    };
    while i < n {
        if pos > limit {
            out.truncate(start);
            return false;
        }
        let b = input[i];
        if text && b == b'\r' && input.get(i + 1) == Some(&b'\n') {
            buf[pos] = b'\r';
            buf[pos + 1] = b'\n';
            pos += 2;
            col = 0;
            i += 2;
            continue;
        }
        if col == 0 && (b == b'.' || (b == b'F' && input[i + 1..].starts_with(b"rom "))) {
            escape(buf, pos, b);
            pos += 3;
            col = 3;
            i += 1;
            continue;
        }
        if PLAIN[usize::from(b)] {
            let room = QP_MAX - col;
            if room == 0 {
                buf[pos..pos + 3].copy_from_slice(b"=\r\n");
                pos += 3;
                col = 0;
                continue;
            }
            let max = room.min(n - i);
            let mut run = 0;
            while run < max {
                if i + run + 8 <= n {
                    let w = load(input, i + run);
                    buf[pos + run..pos + run + 8].copy_from_slice(&w.to_le_bytes());
                    let m = special_mask(w);
                    if m == 0 {
                        run += 8;
                        continue;
                    }
                    run += (m.trailing_zeros() / 8) as usize;
                    break;
                }
                let c = input[i + run];
                if !PLAIN[usize::from(c)] {
                    break;
                }
                buf[pos + run] = c;
                run += 1;
            }
            let mut run = run.min(max);
            if matches!(input[i + run - 1], b' ' | b'\t') && ends_line(i + run) {
                run -= 1;
            }
            if run > 0 {
                pos += run;
                col += run;
                i += run;
                continue;
            }
        }
        let literal_tab = b == b'\t' && !ends_line(i + 1);
        let width = if literal_tab { 1 } else { 3 };
        if col + width > QP_MAX {
            buf[pos..pos + 3].copy_from_slice(b"=\r\n");
            pos += 3;
            col = 0;
            continue;
        }
        if literal_tab {
            buf[pos] = b;
        } else {
            escape(buf, pos, b);
        }
        pos += width;
        col += width;
        i += 1;
    }
    if pos > limit {
        out.truncate(start);
        return false;
    }
    out.truncate(start + pos);
    true
}

/// Bytes QP writes as they are (in the middle of a line): printable ASCII
/// and space, except `=`.
static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 32;
    while b < 127 {
        t[b] = b != b'=' as usize;
        b += 1;
    }
    t
};

const fn splat(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// One bit (the top bit of the byte) per byte of `w` that QP cannot write
/// as is in the middle of a line: below 32, 127 and above, or `=`. Exact per
/// byte (no carries cross byte lanes), so `trailing_zeros() / 8` of a
/// little-endian load is the index of the first such byte.
#[inline(always)]
fn special_mask(w: u64) -> u64 {
    const H: u64 = splat(0x80);
    let low7 = w & splat(0x7f);
    let ge32 = low7.wrapping_add(splat(0x60)) & H;
    let is127 = low7.wrapping_add(splat(0x01)) & H;
    let not_eq = (low7 ^ splat(b'=')).wrapping_add(splat(0x7f)) & H;
    (w & H) | (ge32 ^ H) | is127 | (not_eq ^ H)
}

#[inline(always)]
fn load(s: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"))
}

/// Length of the run of `PLAIN` bytes at `input[i..]`, at most `max` (the
/// reference for the word-at-a-time copy in `quoted_printable`).
#[cfg(test)]
fn plain_run(input: &[u8], i: usize, max: usize) -> usize {
    let mut j = 0;
    while j < max {
        if i + j + 8 <= input.len() {
            let m = special_mask(load(input, i + j));
            if m == 0 {
                j += 8;
                continue;
            }
            return (j + (m.trailing_zeros() / 8) as usize).min(max);
        }
        if !PLAIN[usize::from(input[i + j])] {
            return j;
        }
        j += 1;
    }
    max
}

/// Rewrites every CR, LF or CRLF as CRLF (the canonical form of text,
/// RFC 2046 §4.1.1). Returns `None` when the text is already canonical.
pub(crate) fn normalize_newlines(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let n = bytes.len();
    // Find the first CR or LF that is not part of a CRLF.
    let mut i = 0;
    let first_bad = loop {
        i = next_newline(bytes, i)?;
        if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            i += 2;
        } else {
            break i;
        }
    };
    let mut out = Vec::with_capacity(n + n / 16 + 16);
    out.extend_from_slice(&bytes[..first_bad]);
    let mut i = first_bad;
    while i < n {
        let next = next_newline(bytes, i).unwrap_or(n);
        out.extend_from_slice(&bytes[i..next]);
        if next == n {
            break;
        }
        out.extend_from_slice(b"\r\n");
        i = next
            + if bytes[next] == b'\r' && bytes.get(next + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
    }
    Some(out)
}

/// Index of the next `c` (ASCII) at or after `from`, eight bytes at a time.
pub(crate) fn next_byte(s: &[u8], from: usize, c: u8) -> Option<usize> {
    const H: u64 = splat(0x80);
    let mut i = from;
    while i + 8 <= s.len() {
        let w = load(s, i);
        let not_c = ((w & splat(0x7f)) ^ splat(c)).wrapping_add(splat(0x7f));
        let m = !(not_c | w) & H;
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    s[i..].iter().position(|&b| b == c).map(|p| i + p)
}

/// Index of the next CR or LF at or after `from`, eight bytes at a time.
fn next_newline(s: &[u8], from: usize) -> Option<usize> {
    const H: u64 = splat(0x80);
    let mut i = from;
    while i + 8 <= s.len() {
        let w = load(s, i);
        let low7 = w & splat(0x7f);
        // Exact per byte: top bit set where the byte equals CR or LF.
        let not_lf = (low7 ^ splat(b'\n')).wrapping_add(splat(0x7f));
        let not_cr = (low7 ^ splat(b'\r')).wrapping_add(splat(0x7f));
        let m = !(not_lf & not_cr | w) & H;
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    s[i..]
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .map(|p| i + p)
}

/// What a body needs, found in one pass.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Scan {
    /// Any byte ≥ 0x80.
    pub high: bool,
    /// NUL or another control character that 7bit/8bit data should not
    /// carry (RFC 2045 §2.7/2.8), or a bare CR or LF.
    pub unsafe_ctl: bool,
    /// Longest line in octets, CRLF excluded.
    pub max_line: usize,
    /// A line starts with `.` (needs SMTP dot-stuffing if sent as is).
    pub dot_line: bool,
    /// A line starts with `From ` (mangled by mbox tools) or with `--=_`
    /// (could be mistaken for one of our boundaries).
    pub risky_line: bool,
    /// Bytes that QP has to escape (for estimating the QP size).
    pub qp_escapes: usize,
}

/// Scans data in canonical form (line breaks are CRLF; a bare CR or LF
/// counts as unsafe, so such data never goes out as 7bit/8bit).
///
/// With `stop_if_binary`, the scan gives up as soon as a 512-byte prefix
/// shows more than 3/16 of bytes that QP would escape: QP then costs more
/// than base64's 4/3, so base64 is the answer and compressed images and
/// archives are not scanned to the end. The result then has `high` and
/// `unsafe_ctl` set and a `qp_escapes` that rules QP out.
pub(crate) fn scan(data: &[u8], stop_if_binary: bool) -> Scan {
    let mut s = Scan::default();
    let mut line_start = 0;
    let n = data.len();
    let check_line_start = |at: usize, s: &mut Scan| match data[at] {
        b'.' => s.dot_line = true,
        b'F' => s.risky_line |= data[at..].starts_with(b"From "),
        b'-' => s.risky_line |= data[at..].starts_with(b"--=_"),
        _ => {}
    };
    if n > 0 {
        check_line_start(0, &mut s);
    }
    let mut i = 0;
    let mut next_check = 512;
    while i < n {
        if stop_if_binary && i >= next_check {
            if s.qp_escapes * 16 > i * 3 {
                s.high = true;
                s.unsafe_ctl = true;
                s.qp_escapes = n;
                s.max_line = usize::MAX;
                return s;
            }
            next_check += 512;
        }
        if i + 8 <= n {
            // Skip straight to the next byte that needs a look.
            let m = special_mask(load(data, i));
            if m == 0 {
                i += 8;
                continue;
            }
            i += (m.trailing_zeros() / 8) as usize;
        }
        let b = data[i];
        match QP_CLASS[usize::from(b)] {
            0 | 2 => {}
            3 => {
                if b == b'\r' && data.get(i + 1) == Some(&b'\n') {
                    s.max_line = s.max_line.max(i - line_start);
                    i += 2;
                    line_start = i;
                    if i < n {
                        check_line_start(i, &mut s);
                    }
                    continue;
                }
                s.unsafe_ctl = true;
                s.qp_escapes += 1;
            }
            _ => {
                s.qp_escapes += 1;
                if b >= 0x80 {
                    s.high = true;
                } else if b != b'=' {
                    s.unsafe_ctl = true;
                }
            }
        }
        i += 1;
    }
    s.max_line = s.max_line.max(n - line_start);
    s
}

/// Content transfer encodings Herald writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferEncoding {
    /// ASCII, lines ≤ 998 octets: written as is.
    SevenBit,
    /// UTF-8 text written as is; needs the 8BITMIME extension.
    EightBit,
    /// RFC 2045 §6.7.
    QuotedPrintable,
    /// RFC 2045 §6.8.
    Base64,
}

impl TransferEncoding {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferEncoding::SevenBit => "7bit",
            TransferEncoding::EightBit => "8bit",
            TransferEncoding::QuotedPrintable => "quoted-printable",
            TransferEncoding::Base64 => "base64",
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    #[test]
    fn base64_matches_reference() {
        for n in 0..400 {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
            let mut out = Vec::new();
            base64_mime(&data, &mut out);
            assert_eq!(out.len(), base64_mime_len(n));
            let joined: Vec<u8> = out
                .split(|&b| b == b'\n')
                .flat_map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
                .collect();
            assert_eq!(
                joined,
                base64::engine::general_purpose::STANDARD
                    .encode(&data)
                    .into_bytes()
            );
            for line in out.split(|&b| b == b'\n') {
                assert!(line.len() <= 77);
            }
            let mut plain = Vec::new();
            base64_plain(&data, &mut plain);
            assert_eq!(
                plain,
                base64::engine::general_purpose::STANDARD
                    .encode(&data)
                    .into_bytes()
            );
        }
    }

    #[test]
    fn qp_escapes_dots_and_from_at_line_start() {
        let mut out = Vec::new();
        assert!(quoted_printable(
            b".hidden\r\nFrom me\r\nx=y \r\nend ",
            true,
            usize::MAX,
            &mut out
        ));
        assert_eq!(out, b"=2Ehidden\r\n=46rom me\r\nx=3Dy=20\r\nend=20");
    }

    #[test]
    fn qp_soft_breaks_keep_lines_short() {
        let data = "é".repeat(500) + &".".repeat(300);
        let mut out = Vec::new();
        assert!(quoted_printable(
            data.as_bytes(),
            true,
            usize::MAX,
            &mut out
        ));
        for line in out.split(|&b| b == b'\n') {
            assert!(line.len() <= 77, "{}", line.len());
            assert!(!line.starts_with(b"."));
        }
    }

    #[test]
    fn special_mask_is_exact_per_byte() {
        for b in 0..=255u8 {
            for lane in 0..8 {
                let mut w = [b'a'; 8];
                w[lane] = b;
                let m = special_mask(u64::from_le_bytes(w));
                assert_eq!(m != 0, !PLAIN[usize::from(b)], "byte {b}");
                if m != 0 {
                    assert_eq!((m.trailing_zeros() / 8) as usize, lane);
                }
            }
        }
        assert_eq!(plain_run(b"abc=def", 0, 7), 3);
        assert_eq!(plain_run(b"abcdefghijklmnop", 0, 10), 10);
        assert_eq!(plain_run(b"abcdefghijk\nmnop", 2, 20), 9);
    }

    #[test]
    fn normalizes_newlines() {
        assert_eq!(normalize_newlines("a\r\nb"), None);
        assert_eq!(normalize_newlines("ab"), None);
        assert_eq!(
            normalize_newlines("a\nb\rc\r\n").unwrap(),
            b"a\r\nb\r\nc\r\n"
        );
        assert_eq!(normalize_newlines("a\nb\n").unwrap(), b"a\r\nb\r\n");
        assert_eq!(normalize_newlines("\n\r").unwrap(), b"\r\n\r\n");
        let long = "0123456789abcdef\r\n".repeat(3) + "x\ny\r\n\rz" + &"q".repeat(20) + "\n";
        assert_eq!(
            normalize_newlines(&long).unwrap(),
            long.replace("\r\n", "\n")
                .replace('\r', "\n")
                .replace('\n', "\r\n")
                .into_bytes()
        );
        assert_eq!(normalize_newlines(&"abcdefgh\r\n".repeat(9)), None);
    }
}
