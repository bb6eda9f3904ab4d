//! The message request: the JSON that `herald compose`, `herald send
//! --request` and the HTTP API's `POST /v1/messages` all take.
//!
//! Parsing is strict (`deny_unknown_fields`: a misspelt field is an error,
//! not a silently missing header), and every error names the field it is
//! about, as the API will report it: `to[1]: missing '@'`,
//! `attachments[0].content_base64: invalid base64`.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use herald_mime::{ComposeError, EncodedPart, Mailbox, Message, Part};
use serde::Deserialize;

/// One message to compose, as JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    /// `"Name <addr>"` or `addr`.
    pub from: String,
    /// One address or a list.
    #[serde(default)]
    pub to: OneOrMany,
    /// One address or a list.
    #[serde(default)]
    pub cc: OneOrMany,
    /// One address or a list; envelope only, never written in a header.
    #[serde(default)]
    pub bcc: OneOrMany,
    /// One address or a list.
    #[serde(default)]
    pub reply_to: OneOrMany,
    /// The subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// Plain-text body.
    #[serde(default)]
    pub text: Option<String>,
    /// HTML body.
    #[serde(default)]
    pub html: Option<String>,
    /// Attachments and inline parts.
    #[serde(default)]
    pub attachments: Vec<AttachmentRequest>,
    /// Custom headers, in the order given (a JSON object).
    #[serde(default, deserialize_with = "ordered_map")]
    pub headers: Vec<(String, serde_json::Value)>,
}

/// A JSON object as a list of pairs in document order (serde_json's `Map`
/// sorts its keys unless a crate-wide feature is switched on).
fn ordered_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, serde_json::Value)>, D::Error> {
    struct Pairs;
    impl<'de> serde::de::Visitor<'de> for Pairs {
        type Value = Vec<(String, serde_json::Value)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of header names to string values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(pair) = map.next_entry()? {
                out.push(pair);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Pairs)
}

/// Headers that receiving servers add and that mail clients and filters believe (authentication verdicts,
/// signatures, trace and spam results). A sender writing one could make a message look verified, so they are
/// refused as custom headers; herald-mime refuses the headers Herald writes itself. Case-insensitive; a name
/// ending in `-` is a prefix. The README lists the same names.
pub const TRUST_HEADERS: &[&str] = &[
    "authentication-results",
    "arc-",
    "dkim-signature",
    "domainkey-signature",
    "received-spf",
    "received",
    "return-path",
    "delivered-to",
    "x-original-to",
    "x-spam-",
];

/// Whether `name` is one of [`TRUST_HEADERS`].
pub fn is_trust_header(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    TRUST_HEADERS
        .iter()
        .any(|trusted| match trusted.strip_suffix('-') {
            Some(_) => name.starts_with(trusted),
            None => name == *trusted,
        })
}

/// A file: its bytes inline (`content_base64`) or, for the CLI only, a
/// `path` (relative paths resolve against the request file's directory).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentRequest {
    /// The file name shown to the recipient (any language).
    pub filename: String,
    /// `type/subtype`; guessed from the file name's extension when absent.
    #[serde(default)]
    pub content_type: Option<String>,
    /// The bytes, base64 (standard alphabet, padding optional).
    #[serde(default)]
    pub content_base64: Option<String>,
    /// A file to read instead of `content_base64`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Inline (shown by the HTML through `cid:`) rather than attached.
    #[serde(default)]
    pub inline: bool,
    /// The Content-ID the HTML refers to; defaults to the file name for
    /// inline parts.
    #[serde(default)]
    pub content_id: Option<String>,
}

/// A JSON string or array of strings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// Absent.
    #[default]
    None,
    /// `"a@b.c"`.
    One(String),
    /// `["a@b.c", "Name <d@e.f>"]`.
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }

    pub fn is_many(&self) -> bool {
        matches!(self, OneOrMany::Many(_))
    }
}

/// Turns attachment number `i` into a part encoded once (see [`MessageRequest::into_message_encoding`]).
pub type EncodeAttachment<'a> =
    dyn FnMut(usize, &AttachmentRequest) -> Result<EncodedPart, RequestError> + 'a;

/// A request error, with the JSON path of the field it is about.
#[derive(Debug, thiserror::Error)]
pub struct RequestError {
    /// `to[1]`, `attachments[0].content_base64`, `subject` … (empty when the
    /// error is about the request as a whole).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

fn err(field: impl Into<String>, message: impl fmt::Display) -> RequestError {
    RequestError {
        field: field.into(),
        message: message.to_string(),
    }
}

/// Where attachment `path`s may be read from.
#[derive(Debug, Clone)]
pub enum Files<'a> {
    /// Paths are not allowed (the HTTP API: a client may not read the
    /// server's files).
    Forbidden,
    /// Relative paths resolve against this directory.
    RelativeTo(&'a Path),
}

impl MessageRequest {
    /// Parses JSON, with serde's message (which names the line and column).
    pub fn from_json(json: &[u8]) -> Result<MessageRequest, RequestError> {
        serde_json::from_slice(json).map_err(|e| err("", format!("invalid request JSON: {e}")))
    }

    /// Validates the request and builds the message.
    pub fn into_message(self, files: Files<'_>) -> Result<Message, RequestError> {
        self.into_message_with(files, &[])
    }

    /// Like [`into_message`](Self::into_message), adding parts encoded once for a whole batch (see
    /// `herald_mime::Part::encode`) after the request's own attachments.
    pub fn into_message_with(
        self,
        files: Files<'_>,
        shared: &[EncodedPart],
    ) -> Result<Message, RequestError> {
        self.build(files, shared, None)
    }

    /// Like [`into_message`](Self::into_message), but each attachment is turned into a part encoded once by
    /// `encode` (given its index and request), so that a part seen before can be reused as it is. The
    /// message's bytes are the same as `into_message`'s: an encoded part is what composing writes for it.
    pub fn into_message_encoding(
        self,
        files: Files<'_>,
        encode: &mut EncodeAttachment<'_>,
    ) -> Result<Message, RequestError> {
        self.build(files, &[], Some(encode))
    }

    fn build(
        self,
        files: Files<'_>,
        shared: &[EncodedPart],
        mut encode: Option<&mut EncodeAttachment<'_>>,
    ) -> Result<Message, RequestError> {
        // Checked after every other field, so that their errors come first; without it a request with no
        // body was accepted and sent as an empty message. A message of attachments alone ("the report is
        // attached") is not empty.
        let is_empty = |part: &Option<String>| part.as_deref().is_none_or(str::is_empty);
        let no_body = is_empty(&self.text)
            && is_empty(&self.html)
            && self.attachments.is_empty()
            && shared.is_empty();
        let mut b =
            Message::builder().from(Mailbox::parse(&self.from).map_err(|e| err("from", e))?);
        for (field, list) in [
            ("to", &self.to),
            ("cc", &self.cc),
            ("bcc", &self.bcc),
            ("reply_to", &self.reply_to),
        ] {
            for (i, s) in list.items().into_iter().enumerate() {
                let name = if list.is_many() {
                    format!("{field}[{i}]")
                } else {
                    field.to_owned()
                };
                let mb = Mailbox::parse(s).map_err(|e| err(name, e))?;
                b = match field {
                    "to" => b.to(mb),
                    "cc" => b.cc(mb),
                    "bcc" => b.bcc(mb),
                    _ => b.reply_to(mb),
                };
            }
        }
        if let Some(s) = self.subject {
            b = b.subject(s);
        }
        if let Some(t) = self.text {
            b = b.text(t);
        }
        if let Some(h) = self.html {
            b = b.html(h);
        }
        for (i, a) in self.attachments.iter().enumerate() {
            b = match encode.as_mut() {
                Some(encode) => b.shared_part(encode(i, a)?),
                None => b.part(a.to_part(i, &files)?),
            };
        }
        for part in shared {
            b = b.shared_part(part.clone());
        }
        for (name, value) in self.headers {
            let value = match value {
                serde_json::Value::String(s) => s,
                _ => return Err(err(format!("headers.{name}"), "value must be a string")),
            };
            if is_trust_header(&name) {
                return Err(err(
                    format!("headers.{name}"),
                    "is a trace or authentication header that receiving servers write and trust; a sender may not set it",
                ));
            }
            b = b.header(name, value);
        }
        let message = b.build().map_err(|e| {
            let field = match &e {
                ComposeError::MissingFrom => "from".to_owned(),
                ComposeError::NoRecipients => "to".to_owned(),
                ComposeError::ControlCharacter { field, .. } => field.clone(),
                ComposeError::InvalidHeaderName(n) | ComposeError::ReservedHeader(n) => {
                    format!("headers.{n}")
                }
                ComposeError::MissingContentId(_) => "html".to_owned(),
                ComposeError::DuplicateContentId(_) => "attachments".to_owned(),
                _ => String::new(),
            };
            let message = match &e {
                ComposeError::ControlCharacter { ch, .. } => {
                    format!("control character {ch:?} not allowed")
                }
                other => other.to_string(),
            };
            RequestError { field, message }
        })?;
        if no_body {
            return Err(err(
                "text",
                "the message has no body: give `text`, `html` or both (or `template` with `data`), or an \
                 attachment",
            ));
        }
        Ok(message)
    }
}

impl AttachmentRequest {
    /// Reads and checks attachment number `i`, naming its fields in errors (`attachments[0].content_type`).
    pub fn to_part(&self, i: usize, files: &Files<'_>) -> Result<Part, RequestError> {
        let a = self;
        let at = |f: &str| format!("attachments[{i}].{f}");
        let data: Vec<u8> = match (&a.content_base64, &a.path) {
            (Some(_), Some(_)) => {
                return Err(err(
                    format!("attachments[{i}]"),
                    "give content_base64 or path, not both",
                ));
            }
            (None, None) => {
                return Err(err(
                    format!("attachments[{i}]"),
                    "missing content_base64 (or path)",
                ));
            }
            (Some(b64), None) => {
                decode_base64(b64).ok_or_else(|| err(at("content_base64"), "invalid base64"))?
            }
            (None, Some(p)) => match files {
                Files::Forbidden => {
                    return Err(err(at("path"), "not allowed here: use content_base64"));
                }
                Files::RelativeTo(dir) => {
                    let full = if p.is_absolute() {
                        p.clone()
                    } else {
                        dir.join(p)
                    };
                    std::fs::read(&full).map_err(|e| {
                        err(at("path"), format!("cannot read {}: {e}", full.display()))
                    })?
                }
            },
        };
        let ct = a
            .content_type
            .clone()
            .unwrap_or_else(|| guess_content_type(&a.filename).to_owned());
        let field_of = |e: &ComposeError| match e {
            ComposeError::InvalidContentType { .. } => at("content_type"),
            ComposeError::InvalidContentId(_) => at("content_id"),
            _ => at("filename"),
        };
        if a.inline {
            let cid = a.content_id.as_deref().unwrap_or(&a.filename);
            Part::inline(cid, &ct, data).and_then(|p| p.with_filename(&a.filename))
        } else {
            Part::attachment(&a.filename, &ct, data).and_then(|p| match &a.content_id {
                Some(c) => p.with_content_id(c),
                None => Ok(p),
            })
        }
        .map_err(|e| match e {
            // The Content-ID defaulted to the file name, which cannot serve.
            ComposeError::InvalidContentId(_) if a.inline && a.content_id.is_none() => err(
                at("content_id"),
                format!(
                    "missing: the filename {:?} cannot serve as a Content-ID; give content_id \
                     (e.g. logo@example.com) and refer to it as cid:… in the html",
                    a.filename
                ),
            ),
            e => err(field_of(&e), e),
        })
    }
}

/// Standard base64, padding optional, whitespace (line breaks) ignored.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(clean).ok()
}

/// The media type for a file name's extension (the common ones; anything
/// else is `application/octet-stream`).
pub fn guess_content_type(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "txt" | "log" => "text/plain",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "csv" => "text/csv",
        "ics" => "text/calendar",
        "md" => "text/markdown",
        "json" => "application/json",
        "xml" => "application/xml",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "ppt" => "application/vnd.ms-powerpoint",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "odt" => "application/vnd.oasis.opendocument.text",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "eml" => "message/rfc822",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(json: &str) -> Result<Message, RequestError> {
        MessageRequest::from_json(json.as_bytes())?.into_message(Files::Forbidden)
    }

    #[test]
    fn errors_name_the_field() {
        let e = build(r#"{"from":"a@b.c","to":["x@y.z","nope"]}"#).unwrap_err();
        assert_eq!(e.to_string(), "to[1]: missing '@'");
        let e = build(r#"{"from":"a@b.c","to":"x@y.z","attachments":[{"filename":"a.pdf","content_base64":"!!"}]}"#)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "attachments[0].content_base64: invalid base64"
        );
        let e =
            build(r#"{"from":"a@b.c","to":"x@y.z","subject":"a\r\nBcc: evil@x.y"}"#).unwrap_err();
        assert_eq!(e.field, "subject");
        let e = build(r#"{"from":"a@b.c","to":"x@y.z","headers":{"Bcc":"evil@x.y"}}"#).unwrap_err();
        assert_eq!(e.field, "headers.Bcc");
        for name in [
            "Authentication-Results",
            "ARC-Seal",
            "arc-message-signature",
            "DKIM-Signature",
            "Received-SPF",
            "X-Spam-Status",
        ] {
            let body = format!(r#"{{"from":"a@b.c","to":"x@y.z","headers":{{"{name}":"pass"}}}}"#);
            let e = build(&body).unwrap_err();
            assert_eq!(e.field, format!("headers.{name}"));
        }
        assert!(
            build(r#"{"from":"a@b.c","to":"x@y.z","text":"t","headers":{"X-Archive":"1"}}"#)
                .is_ok()
        );
        let e =
            build(r#"{"from":"a@b.c","to":"x@y.z","html":"<img src=\"cid:nope\">"}"#).unwrap_err();
        assert_eq!(e.field, "html");
        let e = build(r#"{"from":"a@b.c","too":"x@y.z"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `too`"), "{e}");
        let e = build(r#"{"from":"a@b.c","to":"x@y.z","attachments":[{"filename":"a","path":"/etc/passwd"}]}"#)
            .unwrap_err();
        assert_eq!(e.field, "attachments[0].path");
    }

    #[test]
    fn inline_parts_default_their_content_id_to_the_file_name() {
        let ok = build(
            r#"{"from":"a@b.c","to":"x@y.z","html":"<img src=\"cid:logo.png\">","attachments":[{"filename":"logo.png","content_base64":"AAAA","inline":true}]}"#,
        );
        assert!(ok.is_ok(), "{:?}", ok.err());
        let e = build(
            r#"{"from":"a@b.c","to":"x@y.z","html":"x","attachments":[{"filename":"my logo.png","content_base64":"AAAA","inline":true}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "attachments[0].content_id");
        assert!(e.message.starts_with("missing: the filename"), "{e}");
    }

    #[test]
    fn guesses_types() {
        assert_eq!(guess_content_type("发票.PDF"), "application/pdf");
        assert_eq!(guess_content_type("noext"), "application/octet-stream");
    }
}
