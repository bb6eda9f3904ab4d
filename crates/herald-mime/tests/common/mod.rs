//! Shared checks: decode what we encode with mail-parser and compare, and
//! the byte-level invariants every output must keep.

#![allow(dead_code)] // Each test file uses a different subset.

use herald_mime::{ComposeOptions, Composed, Mailbox, Message, Part};
use mail_parser::{MessageParser, MimeHeaders, PartType};

/// What a test puts into a message, to compare with what comes out.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub from: (Option<String>, String),
    pub to: Vec<(Option<String>, String)>,
    pub cc: Vec<(Option<String>, String)>,
    pub bcc: Vec<(Option<String>, String)>,
    pub reply_to: Vec<(Option<String>, String)>,
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
    /// (filename, content type, bytes, inline content id)
    pub parts: Vec<(String, String, Vec<u8>, Option<String>)>,
    pub headers: Vec<(String, String)>,
}

pub fn mb(name: Option<&str>, addr: &str) -> (Option<String>, String) {
    (name.map(str::to_owned), addr.to_owned())
}

fn mailbox((name, addr): &(Option<String>, String)) -> Mailbox {
    Mailbox::new(name.as_deref(), addr.parse().expect("test address")).expect("test mailbox")
}

impl Spec {
    pub fn message(&self) -> Message {
        let mut b = Message::builder().from(mailbox(&self.from));
        for m in &self.to {
            b = b.to(mailbox(m));
        }
        for m in &self.cc {
            b = b.cc(mailbox(m));
        }
        for m in &self.bcc {
            b = b.bcc(mailbox(m));
        }
        for m in &self.reply_to {
            b = b.reply_to(mailbox(m));
        }
        if let Some(s) = &self.subject {
            b = b.subject(s.clone());
        }
        if let Some(t) = &self.text {
            b = b.text(t.clone());
        }
        if let Some(h) = &self.html {
            b = b.html(h.clone());
        }
        for (name, ct, data, cid) in &self.parts {
            let p = match cid {
                Some(cid) => Part::inline(cid, ct, data.clone())
                    .and_then(|p| p.with_filename(name))
                    .expect("inline part"),
                None => Part::attachment(name, ct, data.clone()).expect("attachment"),
            };
            b = b.part(p);
        }
        for (k, v) in &self.headers {
            b = b.header(k.clone(), v.clone());
        }
        b.build().expect("valid spec")
    }
}

/// Text as a reader sees it: line breaks normalized.
pub fn norm(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

/// Checks the byte-level invariants of one composed message.
pub fn check_invariants(c: &Composed) {
    let bytes = c.to_vec();
    assert_eq!(bytes.len(), c.len());
    assert!(bytes.ends_with(b"\r\n"), "message ends with CRLF");
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
    for line in bytes.split(|&b| b == b'\n') {
        assert!(line.len() <= 999, "line of {} octets", line.len() - 1);
    }
    if !c.needs_8bitmime() && !c.needs_smtputf8() {
        assert!(bytes.is_ascii(), "7-bit clean without 8BITMIME/SMTPUTF8");
    }
    // Header section: every line is a field or a continuation.
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header/body separator");
    for line in bytes[..end].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            line.starts_with(b" ") || line.iter().position(|&b| b == b':').is_some_and(|p| p > 0),
            "header line {:?}",
            String::from_utf8_lossy(line)
        );
    }
    assert!(
        !bytes[..end]
            .windows(5)
            .any(|w| w.eq_ignore_ascii_case(b"\nbcc:"))
            && !bytes.starts_with(b"Bcc:"),
        "no Bcc header"
    );
    // Segment contract with herald-smtp.
    for seg in c.segments() {
        assert!(!seg.bytes.is_empty());
        assert!(seg.bytes.ends_with(b"\r\n"), "segment ends with CRLF");
        if seg.dot_safe {
            assert!(!seg.bytes.starts_with(b"."));
            assert!(
                !seg.bytes.windows(2).any(|w| w == b"\n."),
                "dot_safe segment has a line starting with '.'"
            );
        }
    }
}

fn tree(msg: &mail_parser::Message<'_>, id: u32) -> String {
    let part = msg.part(id).expect("part");
    let ct = part
        .content_type()
        .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")))
        .unwrap_or_else(|| "text/plain".into());
    match part.sub_parts() {
        Some(children) => {
            let inner: Vec<String> = children.iter().map(|&c| tree(msg, c)).collect();
            format!(
                "{}[{}]",
                ct.trim_start_matches("multipart/"),
                inner.join(",")
            )
        }
        None => ct,
    }
}

/// The expected tree for a spec, in the same notation as `tree`.
pub fn expected_tree(spec: &Spec) -> String {
    let leaf = |html: bool| if html { "text/html" } else { "text/plain" }.to_owned();
    let body = match (&spec.text, &spec.html) {
        (Some(_), Some(_)) => Some(format!("alternative[{},{}]", leaf(false), leaf(true))),
        (Some(_), None) => Some(leaf(false)),
        (None, Some(_)) => Some(leaf(true)),
        (None, None) if spec.parts.is_empty() => Some(leaf(false)),
        (None, None) => None,
    };
    let related = spec.html.is_some();
    let inline: Vec<String> = spec
        .parts
        .iter()
        .filter(|p| related && p.3.is_some())
        .map(|p| p.1.clone())
        .collect();
    let attached: Vec<String> = spec
        .parts
        .iter()
        .filter(|p| !(related && p.3.is_some()))
        .map(|p| p.1.clone())
        .collect();
    let body = match body {
        Some(b) if !inline.is_empty() => Some(format!("related[{b},{}]", inline.join(","))),
        b => b,
    };
    if attached.is_empty() {
        return body.expect("body");
    }
    let mut all: Vec<String> = body.into_iter().collect();
    all.extend(attached);
    format!("mixed[{}]", all.join(","))
}

fn addr_list(a: Option<&mail_parser::Address<'_>>) -> Vec<(Option<String>, String)> {
    a.map(|a| {
        a.iter()
            .map(|x| {
                (
                    x.name().map(str::to_owned),
                    x.address().unwrap_or("").to_owned(),
                )
            })
            .collect()
    })
    .unwrap_or_default()
}

fn expect_list(l: &[(Option<String>, String)]) -> Vec<(Option<String>, String)> {
    l.iter()
        .map(|(n, a)| {
            let addr: herald_mime::Address = a.parse().unwrap();
            let header = if addr.needs_smtputf8() {
                addr.to_string()
            } else {
                addr.to_ascii().unwrap()
            };
            (
                n.as_ref()
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty()),
                header,
            )
        })
        .collect()
}

/// Composes `spec`, checks the invariants, parses it back with mail-parser
/// and compares every field.
pub fn roundtrip(spec: &Spec, opts: &ComposeOptions) -> Composed {
    let c = spec.message().compose(opts);
    check_invariants(&c);
    let bytes = c.to_vec();
    let parsed = MessageParser::default()
        .parse(&bytes[..])
        .expect("mail-parser parses it");
    let ctx = || String::from_utf8_lossy(&bytes[..bytes.len().min(3000)]).into_owned();

    assert_eq!(
        parsed.subject().map(str::to_owned),
        spec.subject.clone().filter(|s| !s.is_empty()),
        "subject\n{}",
        ctx()
    );
    assert_eq!(
        addr_list(parsed.from()),
        expect_list(std::slice::from_ref(&spec.from)),
        "from\n{}",
        ctx()
    );
    assert_eq!(
        addr_list(parsed.to()),
        expect_list(&spec.to),
        "to\n{}",
        ctx()
    );
    assert_eq!(
        addr_list(parsed.cc()),
        expect_list(&spec.cc),
        "cc\n{}",
        ctx()
    );
    assert_eq!(
        addr_list(parsed.reply_to()),
        expect_list(&spec.reply_to),
        "reply-to\n{}",
        ctx()
    );
    assert!(parsed.bcc().is_none(), "no Bcc header");
    assert_eq!(parsed.message_id(), Some(c.message_id()));
    assert!(parsed.date().is_some());
    for (k, v) in &spec.headers {
        // Decode the raw value as an unstructured field, as a reader would.
        let raw = parsed.header_raw(k.as_str()).unwrap_or_default();
        let as_subject = format!("Subject:{raw}\r\n\r\n");
        let reparsed = MessageParser::default()
            .parse(as_subject.as_bytes())
            .unwrap();
        let got = reparsed.subject();
        assert_eq!(got, Some(v.as_str()), "header {k}\n{}", ctx());
    }
    assert_eq!(tree(&parsed, 0), expected_tree(spec), "tree\n{}", ctx());

    // Leaves in document order: text, html, then parts as the tree orders them.
    let mut texts = Vec::new();
    let mut htmls = Vec::new();
    let mut files = Vec::new();
    for p in parsed.parts.iter() {
        if p.sub_parts().is_some() {
            continue;
        }
        let is_file = p.content_disposition().is_some();
        match (&p.body, is_file) {
            (PartType::Text(t), false) => texts.push(t.to_string()),
            (PartType::Html(h), false) => htmls.push(h.to_string()),
            _ => files.push((
                p.attachment_name().map(str::to_owned),
                p.contents().to_vec(),
                p.content_id().map(str::to_owned),
            )),
        }
    }
    let want_text: Vec<String> = match (&spec.text, &spec.html) {
        (Some(t), _) => vec![norm(t)],
        (None, None) if spec.parts.is_empty() => vec![String::new()],
        _ => vec![],
    };
    assert_eq!(
        texts.iter().map(|t| norm(t)).collect::<Vec<_>>(),
        want_text,
        "text\n{}",
        ctx()
    );
    let want_html: Vec<String> = spec.html.iter().map(|h| norm(h)).collect();
    assert_eq!(
        htmls.iter().map(|t| norm(t)).collect::<Vec<_>>(),
        want_html,
        "html"
    );
    assert_eq!(files.len(), spec.parts.len(), "number of files\n{}", ctx());
    for (name, _ct, data, cid) in &spec.parts {
        let found = files
            .iter()
            .find(|f| f.0.as_deref() == Some(name.as_str()) && f.2.as_deref() == cid.as_deref())
            .unwrap_or_else(|| {
                panic!(
                    "file {name:?} (cid {cid:?}) not found in {:?}\n{}",
                    files.iter().map(|f| (&f.0, &f.2)).collect::<Vec<_>>(),
                    ctx()
                )
            });
        assert!(
            found.1 == *data,
            "bytes of {name:?} differ ({} vs {} bytes)",
            found.1.len(),
            data.len()
        );
    }
    c
}
