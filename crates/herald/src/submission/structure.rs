//! The MIME structure of a submitted message, walked without decoding its bodies.
//!
//! Storing a submission needs little of the message: the subject and the To and Cc addresses, one text body
//! for search, and where the large leaf bodies are (they are stored once by content). mail-parser gives all
//! of that, but it decodes every part on the way, base64 attachments included (12% of the server's CPU on
//! the standard notification under `scripts/bench-submission`, measured with perf), and it has no
//! structure-only mode. So the structure is walked here by RFC 2046's delimiters, and mail-parser parses
//! only what is read: the header sections, and the one text part the search index takes.

use mail_parser::{Message, MessageParser, MimeHeaders};

/// Parts nested deeper than this are one opaque leaf (a bound on the work a client can ask for).
const MAX_DEPTH: usize = 16;

/// A part that is not a multipart: its header section starts at `start`, its body at `body`; the body ends
/// at `end`, which is where the CRLF that begins the next delimiter is, or the end of the enclosing region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    pub start: usize,
    pub body: usize,
    pub end: usize,
    /// Whether this is a body text (text/plain or text/html, not an attachment).
    pub text: Option<TextKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    Plain,
    Html,
}

/// What the walk found: the message's own header fields, parsed, and its leaves in order.
pub struct Structure<'a> {
    pub headers: Option<Message<'a>>,
    pub leaves: Vec<Leaf>,
}

/// The content type a part without a Content-Type field has (RFC 2046 §5.1.5: message/rfc822 in a digest).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Default {
    Text,
    Message,
}

impl<'a> Structure<'a> {
    /// Walks `whole`, a message with CRLF line ends (the session refuses bare CR and LF).
    pub fn of(whole: &'a [u8]) -> Self {
        let mut leaves = Vec::new();
        let headers = walk(whole, 0, whole.len(), Default::Text, 0, &mut leaves);
        Structure { headers, leaves }
    }

    /// The body text for search: the first text/plain leaf decoded, or else the first text/html one.
    pub fn text(&self, whole: &[u8]) -> (Option<String>, Option<String>) {
        let first = |kind| self.leaves.iter().find(|leaf| leaf.text == Some(kind));
        let decode = |leaf: &Leaf, kind| {
            let part = MessageParser::default().parse(&whole[leaf.start..leaf.end])?;
            match kind {
                TextKind::Plain => part.body_text(0).map(|t| t.into_owned()),
                TextKind::Html => part.body_html(0).map(|t| t.into_owned()),
            }
        };
        if let Some(leaf) = first(TextKind::Plain) {
            return (decode(leaf, TextKind::Plain), None);
        }
        (
            None,
            first(TextKind::Html).and_then(|leaf| decode(leaf, TextKind::Html)),
        )
    }
}

/// Walks the part in `whole[start..end]`, pushing its leaves; returns its parsed header fields.
fn walk<'a>(
    whole: &'a [u8],
    start: usize,
    end: usize,
    default: Default,
    depth: usize,
    leaves: &mut Vec<Leaf>,
) -> Option<Message<'a>> {
    let region = &whole[start..end];
    let body = if region.starts_with(b"\r\n") {
        start + 2
    } else {
        memchr::memmem::find(region, b"\r\n\r\n").map_or(end, |i| start + i + 4)
    };
    let headers = MessageParser::default().parse_headers(&whole[start..body]);
    let content_type = headers.as_ref().and_then(|h| h.content_type());
    let (ctype, subtype) = match content_type {
        Some(ct) => (
            ct.ctype().to_ascii_lowercase(),
            ct.subtype().unwrap_or_default().to_ascii_lowercase(),
        ),
        None if default == Default::Message => ("message".into(), "rfc822".into()),
        None => ("text".into(), "plain".into()),
    };
    let boundary = content_type
        .and_then(|ct| ct.attribute("boundary"))
        .filter(|b| !b.is_empty());
    if ctype == "multipart"
        && let Some(boundary) = boundary
        && depth < MAX_DEPTH
    {
        let parts = parts(whole, body, end, boundary.as_bytes());
        if !parts.is_empty() {
            let inner = if subtype == "digest" {
                Default::Message
            } else {
                Default::Text
            };
            for (part_start, part_end) in parts {
                walk(whole, part_start, part_end, inner, depth + 1, leaves);
            }
            return headers;
        }
        // No delimiter: the body is one opaque leaf, as mail-parser reads it too.
    }
    let attachment = headers
        .as_ref()
        .and_then(|h| h.content_disposition())
        .is_some_and(|d| d.is_attachment());
    let text = match (ctype.as_str(), subtype.as_str()) {
        _ if attachment => None,
        ("text", "plain") => Some(TextKind::Plain),
        ("text", "html") => Some(TextKind::Html),
        _ => None,
    };
    leaves.push(Leaf {
        start,
        body,
        end,
        text,
    });
    headers
}

/// The regions of the body parts of a multipart whose body is `whole[body..end]` (RFC 2046 §5.1.1): each
/// from after a delimiter line to the CRLF that begins the next delimiter; the preamble and the epilogue
/// are left out. A part without a close delimiter runs to `end`.
fn parts(whole: &[u8], body: usize, end: usize, boundary: &[u8]) -> Vec<(usize, usize)> {
    let mut delimiter = Vec::with_capacity(boundary.len() + 4);
    delimiter.extend_from_slice(b"\r\n--");
    delimiter.extend_from_slice(boundary);
    let finder = memchr::memmem::Finder::new(&delimiter);
    let mut parts = Vec::new();
    // The CRLF before the first delimiter may be the one that ends the header section.
    let mut from = body.saturating_sub(2);
    if !whole[from..].starts_with(b"\r\n") {
        from = body;
    }
    let mut open: Option<usize> = None;
    while from < end {
        let Some(found) = finder.find(&whole[from..end]) else {
            break;
        };
        let at = from + found;
        let after = at + delimiter.len();
        if whole[after..end].starts_with(b"--") {
            if let Some(part_start) = open.take() {
                parts.push((part_start, at));
            }
            return parts;
        }
        // The rest of a delimiter line is transport padding; anything else means the boundary is only the
        // start of a longer line.
        let line_end = memchr::memmem::find(&whole[after..end], b"\r\n").map_or(end, |i| after + i);
        if !whole[after..line_end]
            .iter()
            .all(|&b| b == b' ' || b == b'\t')
        {
            from = at + 2;
            continue;
        }
        if let Some(part_start) = open.take() {
            parts.push((part_start, at));
        }
        let next = (line_end + 2).min(end);
        open = Some(next);
        from = next;
    }
    if let Some(part_start) = open {
        parts.push((part_start, end));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(message: &str) -> Vec<(String, Option<TextKind>)> {
        let whole = message.as_bytes();
        Structure::of(whole)
            .leaves
            .iter()
            .map(|l| {
                (
                    String::from_utf8_lossy(&whole[l.body..l.end]).into_owned(),
                    l.text,
                )
            })
            .collect()
    }

    #[test]
    fn nested_multiparts_give_their_leaves_in_order_without_preamble_or_epilogue() {
        let message = "Subject: s\r\nContent-Type: multipart/mixed; boundary=\"out\"\r\n\r\n\
            preamble\r\n--out\r\nContent-Type: multipart/alternative; boundary=in\r\n\r\n\
            --in\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain\r\n\
            --in  \r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--in--\r\n\
            --out\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt\r\n\r\n\
            --outer is not a delimiter\r\nattached\r\n--out--\r\nepilogue\r\n";
        assert_eq!(
            kinds(message),
            [
                ("plain".to_owned(), Some(TextKind::Plain)),
                ("<p>html</p>".to_owned(), Some(TextKind::Html)),
                ("--outer is not a delimiter\r\nattached".to_owned(), None),
            ]
        );
    }

    #[test]
    fn malformed_structures_end_at_the_region() {
        // No close delimiter: the last part runs to the end.
        let open = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nbody\r\n";
        assert_eq!(
            kinds(open),
            [("body\r\n".to_owned(), Some(TextKind::Plain))]
        );
        // No delimiter at all: one opaque leaf.
        let none = "Content-Type: multipart/mixed; boundary=b\r\n\r\nno parts\r\n";
        assert_eq!(kinds(none), [("no parts\r\n".to_owned(), None)]);
        // No header section end.
        assert_eq!(
            kinds("Subject: x\r\n"),
            [(String::new(), Some(TextKind::Plain))]
        );
        // A digest's parts default to message/rfc822, which is not a body text.
        let digest = "Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: in\r\n\r\nx\r\n--d--\r\n";
        assert_eq!(kinds(digest), [("Subject: in\r\n\r\nx".to_owned(), None)]);
        // Nesting beyond the bound is one leaf, not a stack overflow.
        let mut deep = String::new();
        for i in 0..200 {
            deep.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"
            ));
        }
        deep.push_str("\r\nleaf\r\n");
        assert_eq!(Structure::of(deep.as_bytes()).leaves.len(), 1);
    }

    #[test]
    fn the_text_is_the_first_plain_part_decoded_else_the_first_html_part() {
        let both = "Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n\
            Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n5L2g5aW9\r\n\
            --b\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--b--\r\n";
        let structure = Structure::of(both.as_bytes());
        assert_eq!(
            structure.text(both.as_bytes()),
            (Some("你好".to_owned()), None)
        );
        let html = "Content-Type: text/html; charset=iso-8859-1\r\n\
            Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>Gr=FC=DFe</p>\r\n";
        let structure = Structure::of(html.as_bytes());
        assert_eq!(
            structure.text(html.as_bytes()),
            (None, Some("<p>Grüße</p>\r\n".to_owned()))
        );
    }

    /// The ranges the submission stores as shared segments, as mail-parser's full parse located them before
    /// this walk replaced it (the reference for the differential test below).
    fn reference_ranges(whole: &[u8]) -> Vec<(usize, usize)> {
        let Some(parsed) = MessageParser::default().parse(whole) else {
            return Vec::new();
        };
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for part in &parsed.parts {
            if matches!(
                part.body,
                mail_parser::PartType::Multipart(_) | mail_parser::PartType::Message(_)
            ) {
                continue;
            }
            let start = part.offset_body as usize;
            let limit = (part.offset_end as usize)
                .saturating_add(2)
                .min(whole.len());
            if start == 0 || start >= limit || whole[start - 1] != b'\n' {
                continue;
            }
            let Some(last) = memchr::memmem::rfind(&whole[start..limit], b"\r\n") else {
                continue;
            };
            let end = start + last + 2;
            if end - start >= 4096 && ranges.last().is_none_or(|&(_, p)| start >= p) {
                ranges.push((start, end));
            }
        }
        ranges
    }

    fn ranges(whole: &[u8]) -> Vec<(usize, usize)> {
        crate::submission::message::shareable_ranges(&Structure::of(whole).leaves, whole)
    }

    #[derive(Debug, Clone)]
    enum Tree {
        Leaf {
            ctype: &'static str,
            base64: bool,
            lines: usize,
            attachment: bool,
        },
        Multi {
            subtype: &'static str,
            boundary: String,
            children: Vec<Tree>,
        },
    }

    fn tree() -> impl proptest::strategy::Strategy<Value = Tree> {
        use proptest::prelude::*;
        let leaf = (
            prop::sample::select(vec![
                "text/plain",
                "text/html",
                "application/pdf",
                "image/png",
            ]),
            any::<bool>(),
            0usize..160,
            any::<bool>(),
        )
            .prop_map(|(ctype, base64, lines, attachment)| Tree::Leaf {
                ctype,
                base64,
                lines,
                attachment,
            });
        leaf.prop_recursive(3, 12, 4, |inner| {
            (
                prop::sample::select(vec!["mixed", "alternative", "related"]),
                "[a-zA-Z0-9'()+_,-./=?]{1,40}",
                prop::collection::vec(inner, 1..4),
            )
                .prop_map(|(subtype, boundary, children)| Tree::Multi {
                    subtype,
                    boundary,
                    children,
                })
        })
    }

    fn write(tree: &Tree, out: &mut String) {
        match tree {
            Tree::Leaf {
                ctype,
                base64,
                lines,
                attachment,
            } => {
                out.push_str(&format!("Content-Type: {ctype}; charset=utf-8\r\n"));
                if *base64 {
                    out.push_str("Content-Transfer-Encoding: base64\r\n");
                }
                if *attachment {
                    out.push_str("Content-Disposition: attachment; filename=\"f\"\r\n");
                }
                out.push_str("\r\n");
                for i in 0..*lines {
                    if *base64 {
                        out.push_str(&format!(
                            "{:0>76}\r\n",
                            format!("QUJD{i}").replace(char::is_numeric, "A")
                        ));
                    } else {
                        out.push_str(&format!("line {i} of the body, -- with dashes --\r\n"));
                    }
                }
            }
            Tree::Multi {
                subtype,
                boundary,
                children,
            } => {
                out.push_str(&format!(
                    "Content-Type: multipart/{subtype}; boundary=\"{boundary}\"\r\n\r\n"
                ));
                out.push_str("This is a multi-part message in MIME format.\r\n");
                for child in children {
                    out.push_str(&format!("--{boundary}\r\n"));
                    write(child, out);
                    out.push_str("\r\n");
                }
                out.push_str(&format!("--{boundary}--\r\n"));
            }
        }
    }

    proptest::proptest! {
        /// Well-formed messages of any shape: the walk finds the ranges mail-parser's full parse found.
        #[test]
        fn the_walk_finds_the_shared_ranges_mail_parser_finds(tree in tree()) {
            let mut message = String::from("From: a@example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\n");
            write(&tree, &mut message);
            proptest::prop_assert_eq!(ranges(message.as_bytes()), reference_ranges(message.as_bytes()));
        }
    }

    /// The standard notification of ../shared/bench as Python's email package writes it (`bench_py.py
    /// sample`, both of its APIs), as the submission benchmark sends it.
    #[test]
    fn the_standard_notification_has_the_ranges_and_the_text_mail_parser_finds() {
        let bench = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/bench/bench_py.py");
        if !bench.exists() {
            eprintln!("{} is absent: skipped", bench.display());
            return;
        }
        let python = std::env::var("HERALD_PYTHON").unwrap_or_else(|_| "python3".into());
        let dir = tempfile::tempdir().unwrap();
        for api in ["legacy", "modern"] {
            let out = dir.path().join(format!("{api}.eml"));
            let status = std::process::Command::new(&python)
                .arg(&bench)
                .args(["sample", "--api", api, "--out"])
                .arg(&out)
                .status()
                .unwrap();
            assert!(
                status.success(),
                "{python} {} sample --api {api}",
                bench.display()
            );
            // CRLF line ends, as the session hands them over.
            let text = String::from_utf8(std::fs::read(&out).unwrap()).unwrap();
            let text = text.replace("\r\n", "\n").replace('\n', "\r\n");
            let whole = text.as_bytes();
            let found = ranges(whole);
            assert_eq!(found, reference_ranges(whole), "{api}");
            // The PDF and the PNG at least.
            assert!(found.len() >= 2, "{api}: {found:?}");
            let parsed = MessageParser::default().parse(whole).unwrap();
            let (plain, _) = Structure::of(whole).text(whole);
            assert!(plain.is_some(), "{api}");
            assert_eq!(plain.as_deref(), parsed.body_text(0).as_deref(), "{api}");
        }
    }
}
