//! Fuzz composing: arbitrary subjects, names, bodies, file names, headers
//! and part bytes either fail to build with an error or compose into bytes
//! that keep every invariant (CRLF only, lines ≤ 998 octets, 7-bit clean
//! unless 8BITMIME/SMTPUTF8 is reported, the Segment contract), and that
//! mail-parser reads back with the same subject.

#![no_main]

use arbitrary::Arbitrary;
use herald_mime::{Address, ComposeOptions, Mailbox, Message, Part};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    from_name: Option<String>,
    to: Vec<(Option<String>, String)>,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    parts: Vec<(String, String, Vec<u8>, Option<String>, bool)>,
    headers: Vec<(String, String)>,
    shared: bool,
    allow_8bit: bool,
}

fuzz_target!(|input: Input| {
    let Ok(from) = Mailbox::new(input.from_name.as_deref(), Address::parse("from@example.com").unwrap()) else {
        return;
    };
    let mut b = Message::builder().from(from);
    for (name, addr) in &input.to {
        let Ok(a) = Address::parse(addr) else { continue };
        let Ok(m) = Mailbox::new(name.as_deref(), a) else { continue };
        b = b.to(m);
    }
    if input.to.is_empty() {
        b = b.to(Mailbox::parse("to@example.com").unwrap());
    }
    if let Some(s) = &input.subject {
        b = b.subject(s.clone());
    }
    if let Some(t) = &input.text {
        b = b.text(t.clone());
    }
    if let Some(h) = &input.html {
        b = b.html(h.clone());
    }
    for (filename, ct, data, cid, inline) in &input.parts {
        let part = match (inline, cid) {
            (true, Some(cid)) => Part::inline(cid, ct, data.clone()),
            _ => Part::attachment(filename, ct, data.clone()),
        };
        let Ok(part) = part else { continue };
        b = if input.shared { b.shared_part(part.encode()) } else { b.part(part) };
    }
    for (k, v) in &input.headers {
        b = b.header(k.clone(), v.clone());
    }
    let Ok(msg) = b.build() else { return };
    let c = msg.compose(&ComposeOptions { allow_8bit: input.allow_8bit, message_id_domain: None });
    let bytes = c.to_vec();
    assert_eq!(bytes.len(), c.len());
    assert!(bytes.ends_with(b"\r\n"));
    for (i, &x) in bytes.iter().enumerate() {
        if x == b'\n' {
            assert_eq!(bytes[i - 1], b'\r', "bare LF");
        }
        if x == b'\r' {
            assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR");
        }
    }
    assert!(bytes.split(|&x| x == b'\n').all(|l| l.len() <= 999), "line > 998");
    if !c.needs_8bitmime() && !c.needs_smtputf8() {
        assert!(bytes.is_ascii());
    }
    for seg in c.segments() {
        assert!(seg.bytes.ends_with(b"\r\n"));
        if seg.dot_safe {
            assert!(!seg.bytes.starts_with(b".") && !seg.bytes.windows(2).any(|w| w == b"\n."));
        }
    }
    let parsed = mail_parser::MessageParser::default().parse(&bytes[..]).expect("parses");
    if let Some(s) = input.subject.as_deref().filter(|s| !s.is_empty()) {
        assert_eq!(parsed.subject(), Some(s));
    }
});
