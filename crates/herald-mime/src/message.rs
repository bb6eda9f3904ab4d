//! The message model, its builder, and the writer that turns it into
//! segments of RFC 5322 bytes.

use std::{
    collections::HashSet,
    fmt::Write as _,
    ops::Range,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use rand::Rng as _;

use crate::{
    address::{Address, Mailbox},
    encode::{self, TransferEncoding},
    error::ComposeError,
    header::{self, Fold},
    part::{self, EncodedPart, Part, PartMeta},
};

/// A run of message bytes the SMTP writer can send as is.
///
/// **Contract with herald-smtp:** every segment starts at the beginning of
/// a line and ends with CRLF, so segments can be written back to back
/// without joining them. `dot_safe == true` promises that no line in the
/// segment starts with `.`, so the DATA writer can skip dot-stuffing
/// (RFC 5321 §4.5.2) for it; base64 and quoted-printable bodies and all
/// headers are dot-safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The bytes (reference-counted: shared parts are the same allocation in
    /// every message of a batch).
    pub bytes: Bytes,
    /// No line of `bytes` starts with `.`.
    pub dot_safe: bool,
}

/// Options that depend on the transport or the deployment, not the message.
#[derive(Debug, Clone, Default)]
pub struct ComposeOptions {
    /// The transport offers 8BITMIME (RFC 6152): UTF-8 text may go out as
    /// `8bit` when its lines fit, which is smaller than QP or base64.
    pub allow_8bit: bool,
    /// Domain for generated Message-IDs; defaults to the sender's domain.
    pub message_id_domain: Option<String>,
}

/// Who the SMTP transaction is from and to, and which extensions it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `MAIL FROM`: the envelope sender if one was set, else the From address.
    pub sender: Address,
    /// `RCPT TO`: To, Cc and Bcc, in that order, without duplicates.
    pub recipients: Vec<Address>,
    /// Some part is `8bit`: send with `BODY=8BITMIME`.
    pub needs_8bitmime: bool,
    /// Some address has a non-ASCII local part: needs `SMTPUTF8`
    /// (RFC 6531); such a message cannot go through a server without it.
    pub needs_smtputf8: bool,
}

/// A composed message: its bytes as segments, and its envelope.
#[derive(Debug, Clone)]
pub struct Composed {
    segments: Vec<Segment>,
    len: usize,
    envelope: Envelope,
    message_id: String,
}

impl Composed {
    /// The message bytes, in order; see [`Segment`] for the contract.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Total size in bytes (CRLF line endings, before dot-stuffing).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true for a composed message (it always has headers); here
    /// because `len` is.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole message in one buffer (copies; the SMTP writer should use
    /// [`Composed::segments`] instead).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for s in &self.segments {
            v.extend_from_slice(&s.bytes);
        }
        v
    }

    /// Sender, recipients and needed SMTP extensions.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The Message-ID written, without angle brackets.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// Some part went out as `8bit`.
    pub fn needs_8bitmime(&self) -> bool {
        self.envelope.needs_8bitmime
    }

    /// Some address needs SMTPUTF8.
    pub fn needs_smtputf8(&self) -> bool {
        self.envelope.needs_smtputf8
    }
}

/// A part of a message: raw (encoded when the message is composed) or
/// encoded once and shared.
#[derive(Debug, Clone)]
enum AnyPart {
    Raw(Part),
    Shared(EncodedPart),
}

impl AnyPart {
    fn meta(&self) -> &PartMeta {
        match self {
            AnyPart::Raw(p) => &p.meta,
            AnyPart::Shared(p) => &p.meta,
        }
    }
}

/// A validated message, ready to compose any number of times (each time
/// with a fresh Date, Message-ID and boundaries unless they were fixed).
#[derive(Debug, Clone)]
pub struct Message {
    from: Mailbox,
    envelope_from: Option<Address>,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    bcc: Vec<Mailbox>,
    reply_to: Vec<Mailbox>,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    parts: Vec<AnyPart>,
    headers: Vec<(String, String)>,
    message_id: Option<String>,
    date: Option<SystemTime>,
}

/// Builds a [`Message`]; every check runs in [`MessageBuilder::build`].
#[derive(Debug, Clone, Default)]
pub struct MessageBuilder {
    from: Option<Mailbox>,
    envelope_from: Option<Address>,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    bcc: Vec<Mailbox>,
    reply_to: Vec<Mailbox>,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    parts: Vec<AnyPart>,
    headers: Vec<(String, String)>,
    message_id: Option<String>,
    date: Option<SystemTime>,
}

/// Headers Herald writes itself; a custom header may not replace them.
const RESERVED: &[&str] = &[
    "from",
    "sender",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "content-id",
    "return-path",
    "received",
];

impl Message {
    /// Starts a message.
    pub fn builder() -> MessageBuilder {
        MessageBuilder::default()
    }

    /// The From mailbox.
    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    /// The To mailboxes.
    pub fn to(&self) -> &[Mailbox] {
        &self.to
    }

    /// The Cc mailboxes.
    pub fn cc(&self) -> &[Mailbox] {
        &self.cc
    }

    /// The Bcc mailboxes (envelope only; the store records them as recipients).
    pub fn bcc(&self) -> &[Mailbox] {
        &self.bcc
    }

    /// The Reply-To mailboxes.
    pub fn reply_to(&self) -> &[Mailbox] {
        &self.reply_to
    }

    /// The subject, if any.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The envelope sender (`MAIL FROM`): the one set with
    /// [`MessageBuilder::envelope_from`], else the From address.
    pub fn envelope_sender(&self) -> &Address {
        self.envelope_from.as_ref().unwrap_or(self.from.address())
    }

    /// The envelope recipients: To, Cc and Bcc in that order, without
    /// duplicates (local parts compared exactly, domains case-insensitively).
    pub fn envelope_recipients(&self) -> Vec<Address> {
        let mut seen = HashSet::new();
        self.to
            .iter()
            .chain(&self.cc)
            .chain(&self.bcc)
            .map(|m| m.address())
            .filter(|a| seen.insert(a.dedup_key()))
            .cloned()
            .collect()
    }

    /// Composes the message.
    ///
    /// Cannot fail: everything was checked by [`MessageBuilder::build`].
    pub fn compose(&self, opts: &ComposeOptions) -> Composed {
        Writer::new(self, opts).write()
    }
}

impl MessageBuilder {
    /// The From mailbox (also the envelope sender unless
    /// [`MessageBuilder::envelope_from`] is set).
    pub fn from(mut self, mailbox: Mailbox) -> Self {
        self.from = Some(mailbox);
        self
    }

    /// A different envelope sender (`MAIL FROM`), e.g. a bounce address.
    pub fn envelope_from(mut self, address: Address) -> Self {
        self.envelope_from = Some(address);
        self
    }

    /// Adds a To recipient.
    pub fn to(mut self, mailbox: Mailbox) -> Self {
        self.to.push(mailbox);
        self
    }

    /// Adds a Cc recipient.
    pub fn cc(mut self, mailbox: Mailbox) -> Self {
        self.cc.push(mailbox);
        self
    }

    /// Adds a Bcc recipient: in the envelope only, never in a header.
    pub fn bcc(mut self, mailbox: Mailbox) -> Self {
        self.bcc.push(mailbox);
        self
    }

    /// Adds a Reply-To mailbox.
    pub fn reply_to(mut self, mailbox: Mailbox) -> Self {
        self.reply_to.push(mailbox);
        self
    }

    /// The subject (encoded only where it has to be).
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// The plain-text body (any line endings; written as CRLF).
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// The HTML body.
    pub fn html(mut self, html: impl Into<String>) -> Self {
        self.html = Some(html.into());
        self
    }

    /// Adds an attachment or inline part, encoded when composing.
    pub fn part(mut self, part: Part) -> Self {
        self.parts.push(AnyPart::Raw(part));
        self
    }

    /// Adds a part encoded once for a whole batch (see [`Part::encode`]).
    pub fn shared_part(mut self, part: EncodedPart) -> Self {
        self.parts.push(AnyPart::Shared(part));
        self
    }

    /// Adds a custom header (validated in `build`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Fixes the Message-ID (angle brackets optional), e.g. when an earlier
    /// attempt must be resent identically.
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Fixes the Date (default: the time of composing).
    pub fn date(mut self, date: SystemTime) -> Self {
        self.date = Some(date);
        self
    }

    /// Checks everything and returns the message.
    pub fn build(self) -> Result<Message, ComposeError> {
        let from = self.from.ok_or(ComposeError::MissingFrom)?;
        if self.to.is_empty() && self.cc.is_empty() && self.bcc.is_empty() {
            return Err(ComposeError::NoRecipients);
        }
        if let Some(s) = &self.subject {
            check_header_text("subject", s)?;
        }
        for (name, value) in &self.headers {
            check_header_name(name)?;
            check_header_text(&format!("headers.{name}"), value)?;
        }
        let message_id = match self.message_id {
            Some(id) => Some(check_message_id(&id)?),
            None => None,
        };
        let mut cids = HashSet::new();
        for p in &self.parts {
            if let Some(cid) = &p.meta().content_id
                && !cids.insert(cid.clone())
            {
                return Err(ComposeError::DuplicateContentId(cid.clone()));
            }
        }
        if let Some(html) = &self.html {
            for cid in html_cids(html) {
                let inline = self
                    .parts
                    .iter()
                    .any(|p| p.meta().inline && p.meta().content_id.as_deref() == Some(&cid));
                if !inline {
                    return Err(ComposeError::MissingContentId(cid));
                }
            }
        }
        Ok(Message {
            from,
            envelope_from: self.envelope_from,
            to: self.to,
            cc: self.cc,
            bcc: self.bcc,
            reply_to: self.reply_to,
            subject: self.subject,
            text: self.text,
            html: self.html,
            parts: self.parts,
            headers: self.headers,
            message_id,
            date: self.date,
        })
    }
}

fn check_header_text(field: &str, value: &str) -> Result<(), ComposeError> {
    match value.chars().find(|&c| c.is_control() && c != '\t') {
        Some(ch) => Err(ComposeError::ControlCharacter {
            field: field.to_owned(),
            ch,
        }),
        None => Ok(()),
    }
}

/// RFC 5322 §3.6.8 field name (`ftext`), and not one Herald writes.
fn check_header_name(name: &str) -> Result<(), ComposeError> {
    let ok = !name.is_empty()
        && name.len() <= 76
        && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if !ok {
        return Err(ComposeError::InvalidHeaderName(name.to_owned()));
    }
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Err(ComposeError::ReservedHeader(name.to_owned()));
    }
    Ok(())
}

fn check_message_id(id: &str) -> Result<String, ComposeError> {
    let inner = id.trim();
    let inner = inner
        .strip_prefix('<')
        .and_then(|i| i.strip_suffix('>'))
        .unwrap_or(inner);
    let ok = inner.len() <= 250
        && inner
            .split_once('@')
            .is_some_and(|(l, r)| !l.is_empty() && !r.is_empty())
        && inner
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>\"\\()[],;:".contains(&b));
    if ok {
        Ok(inner.to_owned())
    } else {
        Err(ComposeError::InvalidMessageId(id.to_owned()))
    }
}

/// The Content-IDs the HTML refers to: `cid:` URLs (RFC 2392) in attribute
/// values or CSS `url(...)`, percent-decoded.
pub(crate) fn html_cids(html: &str) -> Vec<String> {
    let bytes = html.as_bytes();
    let mut out = Vec::new();
    // Every ':' is found eight bytes at a time; "cid" before it is compared
    // by hand (HTML with CSS has many colons, few of them after "cid").
    let mut from = 0;
    while let Some(colon) = encode::next_byte(bytes, from, b':') {
        from = colon + 1;
        if colon < 4
            || !bytes[colon - 3..colon].eq_ignore_ascii_case(b"cid")
            || !matches!(bytes[colon - 4], b'"' | b'\'' | b'(' | b'=')
        {
            continue;
        }
        let start = colon + 1;
        let end = bytes[start..]
            .iter()
            .position(|&b| {
                matches!(b, b'"' | b'\'' | b')' | b'>' | b'<') || b.is_ascii_whitespace()
            })
            .map_or(bytes.len(), |p| start + p);
        out.push(percent_decode(&html[start..end]));
    }
    out.sort();
    out.dedup();
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The shape of the tree, decided from what the message has.
enum Node<'m> {
    Text(&'m str, bool),
    Part(&'m AnyPart),
    Multi(&'static str, Vec<Node<'m>>),
}

/// Per-process counter mixed into Message-IDs, so two ids made in the same
/// microsecond by the same process still differ even if the random parts
/// were to collide.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Writes one message into a single buffer, remembering where the shared
/// segments go; the buffer becomes one `Bytes` that the own segments slice.
struct Writer<'m> {
    msg: &'m Message,
    opts: &'m ComposeOptions,
    buf: Vec<u8>,
    /// Own ranges of `buf` and shared segments, in order.
    pieces: Vec<Piece>,
    /// Start of the current own range.
    own_start: usize,
    own_dot_safe: bool,
    eight_bit: bool,
    boundary: [u8; 24],
}

enum Piece {
    Own(Range<usize>, bool),
    Shared(Segment),
}

const BOUNDARY_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

impl<'m> Writer<'m> {
    fn new(msg: &'m Message, opts: &'m ComposeOptions) -> Self {
        let mut est = 2048
            + msg.text.as_ref().map_or(0, |t| t.len() * 3 / 2)
            + msg.html.as_ref().map_or(0, |t| t.len() * 3 / 2);
        for p in &msg.parts {
            if let AnyPart::Raw(p) = p {
                est += encode::base64_mime_len(p.data.len()) + 512;
            }
        }
        // "=_" + 20 random characters; the depth digit is appended per
        // multipart. Every boundary starts with "=_", which no QP or base64
        // line can contain and which literal parts are checked against.
        let mut boundary = [0u8; 24];
        boundary[0] = b'=';
        boundary[1] = b'_';
        let mut rng = rand::rng();
        let r: u128 = rng.random();
        for (i, slot) in boundary[2..22].iter_mut().enumerate() {
            *slot = BOUNDARY_ALPHABET[((r >> (i * 6)) & 63) as usize];
        }
        boundary[22] = b'_';
        Writer {
            msg,
            opts,
            buf: Vec::with_capacity(est),
            pieces: Vec::with_capacity(8),
            own_start: 0,
            own_dot_safe: true,
            eight_bit: false,
            boundary,
        }
    }

    fn write(mut self) -> Composed {
        let msg = self.msg;
        let message_id = match &msg.message_id {
            Some(id) => id.clone(),
            // A configured domain that could not stand in a msg-id (it is
            // configuration, not checked anywhere else) falls back to the
            // sender's: composing cannot fail and must not inject.
            None => new_message_id(
                self.opts
                    .message_id_domain
                    .as_deref()
                    .filter(|d| check_message_id(&format!("x@{d}")).is_ok())
                    .unwrap_or(msg.from.address().ascii_domain()),
            ),
        };
        header::address_list(&mut self.buf, "From", std::slice::from_ref(&msg.from));
        if !msg.to.is_empty() {
            header::address_list(&mut self.buf, "To", &msg.to);
        }
        if !msg.cc.is_empty() {
            header::address_list(&mut self.buf, "Cc", &msg.cc);
        }
        if !msg.reply_to.is_empty() {
            header::address_list(&mut self.buf, "Reply-To", &msg.reply_to);
        }
        if let Some(s) = &msg.subject {
            let mut f = Fold::start(&mut self.buf, "Subject");
            header::unstructured(&mut f, s);
            f.finish();
        }
        self.buf.extend_from_slice(b"Date: ");
        write_date(&mut self.buf, msg.date.unwrap_or_else(SystemTime::now));
        self.buf.extend_from_slice(b"\r\nMessage-ID: <");
        self.buf.extend_from_slice(message_id.as_bytes());
        self.buf.extend_from_slice(b">\r\n");
        for (name, value) in &msg.headers {
            // RFC 5322 ftext allows a field name such as ".x"; its line then
            // starts with '.', which SMTP must stuff (found by fuzzing).
            self.own_dot_safe &= !name.starts_with('.');
            let mut f = Fold::start(&mut self.buf, name);
            header::unstructured(&mut f, value);
            f.finish();
        }
        self.buf.extend_from_slice(b"MIME-Version: 1.0\r\n");

        let tree = self.tree();
        self.entity(&tree, 0);
        self.flush_own();

        let bytes = Bytes::from(self.buf);
        let mut len = 0;
        let segments: Vec<Segment> = self
            .pieces
            .into_iter()
            .map(|p| match p {
                Piece::Own(r, dot_safe) => Segment {
                    bytes: bytes.slice(r),
                    dot_safe,
                },
                Piece::Shared(s) => s,
            })
            .inspect(|s| len += s.bytes.len())
            .collect();
        let sender = msg.envelope_sender().clone();
        let recipients = msg.envelope_recipients();
        let needs_smtputf8 = sender.needs_smtputf8()
            || recipients.iter().any(Address::needs_smtputf8)
            || msg.from.address().needs_smtputf8()
            || msg.reply_to.iter().any(|m| m.address().needs_smtputf8());
        Composed {
            segments,
            len,
            envelope: Envelope {
                sender,
                recipients,
                needs_8bitmime: self.eight_bit,
                needs_smtputf8,
            },
            message_id,
        }
    }

    fn tree(&self) -> Node<'m> {
        let msg = self.msg;
        let body = match (&msg.text, &msg.html) {
            (Some(t), Some(h)) => Some(Node::Multi(
                "alternative",
                vec![Node::Text(t, false), Node::Text(h, true)],
            )),
            (Some(t), None) => Some(Node::Text(t, false)),
            (None, Some(h)) => Some(Node::Text(h, true)),
            (None, None) if msg.parts.is_empty() => Some(Node::Text("", false)),
            (None, None) => None,
        };
        // Inline parts belong in multipart/related around the HTML; without
        // HTML there is nothing to relate them to, so they go into
        // multipart/mixed (still marked inline).
        let related = msg.html.is_some();
        let inline: Vec<Node<'m>> = msg
            .parts
            .iter()
            .filter(|p| related && p.meta().inline)
            .map(Node::Part)
            .collect();
        let attached: Vec<Node<'m>> = msg
            .parts
            .iter()
            .filter(|p| !(related && p.meta().inline))
            .map(Node::Part)
            .collect();
        let body = match body {
            Some(b) if !inline.is_empty() => {
                let mut children = vec![b];
                children.extend(inline);
                Some(Node::Multi("related", children))
            }
            other => other,
        };
        if attached.is_empty() {
            return body.expect("a message without parts always has a body");
        }
        let mut children: Vec<Node<'m>> = body.into_iter().collect();
        children.extend(attached);
        Node::Multi("mixed", children)
    }

    /// Writes one entity: its headers, a blank line, its body, and a final
    /// CRLF that belongs to the following delimiter.
    fn entity(&mut self, node: &Node<'m>, depth: u8) {
        match node {
            Node::Text(text, html) => self.text_entity(text, *html, depth == 0),
            Node::Part(AnyPart::Raw(p)) => {
                let enc = part::write_part(&p.meta, &p.data, &mut self.buf);
                debug_assert_ne!(enc, TransferEncoding::EightBit);
            }
            Node::Part(AnyPart::Shared(p)) => {
                self.flush_own();
                self.pieces.push(Piece::Shared(p.segment.clone()));
            }
            Node::Multi(kind, children) => {
                let mut b = self.boundary;
                b[23] = b'0' + depth;
                self.buf.extend_from_slice(b"Content-Type: multipart/");
                self.buf.extend_from_slice(kind.as_bytes());
                self.buf.extend_from_slice(b";\r\n boundary=\"");
                self.buf.extend_from_slice(&b);
                self.buf.extend_from_slice(b"\"\r\n\r\n");
                for child in children {
                    self.buf.extend_from_slice(b"--");
                    self.buf.extend_from_slice(&b);
                    self.buf.extend_from_slice(b"\r\n");
                    self.entity(child, depth + 1);
                }
                self.buf.extend_from_slice(b"--");
                self.buf.extend_from_slice(&b);
                self.buf.extend_from_slice(b"--\r\n");
            }
        }
    }

    /// `root`: the text is the whole body, so no delimiter follows it and
    /// its final CRLF would be read as part of the text. Literal text is
    /// then only used when it ends with a line break anyway; QP ends with a
    /// soft line break, so the decoded text is exactly the input.
    fn text_entity(&mut self, text: &str, html: bool, root: bool) {
        let canon = encode::normalize_newlines(text);
        let data: &[u8] = canon.as_deref().unwrap_or(text.as_bytes());
        let s = encode::scan(data, !self.opts.allow_8bit);
        let literal = !s.unsafe_ctl
            && !s.risky_line
            && s.max_line <= 998
            && (!root || data.is_empty() || data.ends_with(b"\r\n"));
        let b64 = encode::base64_mime_len(data.len());
        let qp_est = data.len() + 2 * s.qp_escapes + 3 * (data.len() / 75);
        let mut enc = if literal && !s.high {
            TransferEncoding::SevenBit
        } else if literal && self.opts.allow_8bit {
            TransferEncoding::EightBit
        } else if qp_est <= b64 + b64 / 16 {
            TransferEncoding::QuotedPrintable
        } else {
            TransferEncoding::Base64
        };
        let start = self.buf.len();
        loop {
            self.buf.extend_from_slice(if html {
                b"Content-Type: text/html; charset=utf-8\r\n"
            } else {
                b"Content-Type: text/plain; charset=utf-8\r\n"
            });
            if enc != TransferEncoding::SevenBit {
                self.buf.extend_from_slice(b"Content-Transfer-Encoding: ");
                self.buf.extend_from_slice(enc.as_str().as_bytes());
                self.buf.extend_from_slice(b"\r\n");
            }
            self.buf.extend_from_slice(b"\r\n");
            match enc {
                TransferEncoding::SevenBit | TransferEncoding::EightBit => {
                    self.buf.extend_from_slice(data);
                    if !root {
                        self.buf.extend_from_slice(b"\r\n");
                    }
                    self.own_dot_safe &= !s.dot_line;
                    self.eight_bit |= enc == TransferEncoding::EightBit;
                }
                TransferEncoding::QuotedPrintable => {
                    if !encode::quoted_printable(data, true, b64, &mut self.buf) {
                        self.buf.truncate(start);
                        enc = TransferEncoding::Base64;
                        continue;
                    }
                    if !root {
                        self.buf.extend_from_slice(b"\r\n");
                    } else if !data.ends_with(b"\r\n") && !data.is_empty() {
                        // RFC 2045 §6.7 rule 5: a soft line break adds nothing.
                        self.buf.extend_from_slice(b"=\r\n");
                    }
                }
                TransferEncoding::Base64 => {
                    encode::base64_mime(data, &mut self.buf);
                    if data.is_empty() {
                        self.buf.extend_from_slice(b"\r\n");
                    }
                }
            }
            return;
        }
    }

    fn flush_own(&mut self) {
        let end = self.buf.len();
        if end > self.own_start {
            self.pieces
                .push(Piece::Own(self.own_start..end, self.own_dot_safe));
        }
        self.own_start = end;
        self.own_dot_safe = true;
    }
}

fn new_message_id(domain: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let r: u64 = rand::rng().random();
    let mut id = String::with_capacity(48 + domain.len());
    let _ = write!(id, "{now:x}.{seq:x}.{r:016x}@{domain}");
    id
}

/// RFC 5322 §3.3 date-time in UTC: `Thu, 26 Nov 2026 01:02:07 +0000`.
pub(crate) fn write_date(out: &mut Vec<u8>, t: SystemTime) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mon = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mon <= 2);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let wd = DAYS[days.rem_euclid(7) as usize];
    let s = format!(
        "{wd}, {d} {} {y} {h:02}:{m:02}:{s:02} +0000",
        MONTHS[(mon - 1) as usize]
    );
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn dates() {
        let mut v = Vec::new();
        write_date(&mut v, UNIX_EPOCH + Duration::from_secs(1_795_655_000));
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "Thu, 26 Nov 2026 01:03:20 +0000"
        );
        let mut v = Vec::new();
        write_date(&mut v, UNIX_EPOCH);
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "Thu, 1 Jan 1970 00:00:00 +0000"
        );
    }

    #[test]
    fn finds_cids() {
        let html = r#"<img src="cid:logo@x"><div style="background:url(cid:bg%40x)">cid: prose</div><img src='CID:logo@x'>"#;
        assert_eq!(
            html_cids(html),
            vec!["bg@x".to_owned(), "logo@x".to_owned()]
        );
    }
}
