//! Server replies: framing multi-line replies out of the read buffer (RFC 5321 §4.2) and parsing
//! them with smtp-proto into a code, an RFC 3463 enhanced status and the text.

use std::fmt;

use memchr::memchr;
use smtp_proto::response::parser::ResponseReceiver;

/// Longest reply accepted (all lines together). RFC 5321 §4.5.3.1.5 limits a reply line to 512
/// octets; EHLO replies have many lines, so allow plenty, but never grow without bound.
pub(crate) const MAX_REPLY_LEN: usize = 64 * 1024;

/// An RFC 3463 enhanced status code, e.g. `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    pub class: u8,
    pub subject: u8,
    pub detail: u8,
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// How a reply (or a recipient) ended, in delivery terms (DESIGN.md invariant 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// 2xx: accepted.
    Accepted,
    /// 4xx (or anything unexpected): try again later.
    Transient,
    /// 5xx: give up on this recipient and keep the reply.
    Permanent,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Accepted => "accepted",
            Status::Transient => "transient",
            Status::Permanent => "permanent",
        })
    }
}

/// One complete server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The RFC 3463 enhanced status, when the server sent one.
    pub enhanced: Option<EnhancedStatus>,
    /// The text after the code(s); lines of a multi-line reply are joined with `\n`.
    pub text: String,
}

impl Reply {
    /// Builds a reply by hand (used by tests and by callers that synthesise outcomes).
    pub fn new(code: u16, enhanced: Option<EnhancedStatus>, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The delivery status this reply means when it answers a command that expects 2xx. Anything
    /// that is neither 2xx nor 5xx is transient: an unexpected 1xx/3xx is a server fault, not a
    /// verdict on the recipient.
    pub fn status(&self) -> Status {
        if self.is_positive() {
            Status::Accepted
        } else if self.is_permanent() {
            Status::Permanent
        } else {
            Status::Transient
        }
    }

    /// Parses one complete raw reply (as framed by [`frame`]). smtp-proto does the parsing; a reply
    /// it refuses (longer than its 4 KiB limit) is still reported, with its code and raw text.
    pub(crate) fn parse(raw: &[u8]) -> Reply {
        let mut receiver = ResponseReceiver::default();
        match receiver.parse(&mut raw.iter()) {
            Ok(response) => Reply {
                code: response.code,
                enhanced: (response.esc[0] != 0).then(|| EnhancedStatus {
                    class: response.esc[0],
                    subject: response.esc[1],
                    detail: response.esc[2],
                }),
                text: response.message.trim_end().to_string(),
            },
            Err(_) => {
                let code = raw[..3]
                    .iter()
                    .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
                let text = String::from_utf8_lossy(raw.get(4..).unwrap_or_default());
                Reply {
                    code,
                    enhanced: None,
                    text: text.trim_end().to_string(),
                }
            }
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(enhanced) = self.enhanced {
            write!(f, " {enhanced}")?;
        }
        if !self.text.is_empty() {
            // One line in logs and error messages.
            write!(f, " {}", self.text.replace('\n', " / "))?;
        }
        Ok(())
    }
}

/// Finds the end of the first complete reply in `buf`: `Ok(Some(len))` when one is complete,
/// `Ok(None)` when more bytes are needed, `Err` when the bytes are not an SMTP reply.
///
/// RFC 5321 §4.2.1: every line starts with the same three digits; `-` after them continues the
/// reply, a space (or the end of the line) ends it.
pub(crate) fn frame(buf: &[u8]) -> Result<Option<usize>, String> {
    let mut pos = 0;
    loop {
        let Some(nl) = memchr(b'\n', &buf[pos..]) else {
            if buf.len() > MAX_REPLY_LEN {
                return Err(format!("reply longer than {MAX_REPLY_LEN} bytes"));
            }
            return Ok(None);
        };
        let line = &buf[pos..pos + nl + 1];
        if line.len() < 4 || !line[..3].iter().all(u8::is_ascii_digit) {
            let shown = String::from_utf8_lossy(&line[..line.len().min(80)])
                .trim_end()
                .to_string();
            return Err(format!("malformed reply line {shown:?}"));
        }
        if pos > 0 && line[..3] != buf[..3] {
            return Err("reply lines with different codes".to_string());
        }
        pos += nl + 1;
        if line[3] != b'-' {
            return Ok(Some(pos));
        }
        if pos > MAX_REPLY_LEN {
            return Err(format!("reply longer than {MAX_REPLY_LEN} bytes"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_single_and_multi_line_replies() {
        assert_eq!(frame(b"250 ok\r\n354 go"), Ok(Some(8)));
        assert_eq!(frame(b"250-a\r\n250-b\r\n"), Ok(None));
        assert_eq!(frame(b"250-a\r\n250 b\r\nrest"), Ok(Some(14)));
        assert_eq!(frame(b"250\r\n"), Ok(Some(5)));
        assert!(frame(b"hello\r\n").is_err());
        assert!(frame(b"250-a\r\n251 b\r\n").is_err());
    }

    #[test]
    fn parses_enhanced_status_and_text() {
        let reply = Reply::parse(b"550 5.1.1 <x@y>: Recipient address rejected\r\n");
        assert_eq!(reply.code, 550);
        assert_eq!(
            reply.enhanced,
            Some(EnhancedStatus {
                class: 5,
                subject: 1,
                detail: 1
            })
        );
        assert_eq!(reply.text, "<x@y>: Recipient address rejected");
        assert_eq!(reply.status(), Status::Permanent);
        assert_eq!(
            reply.to_string(),
            "550 5.1.1 <x@y>: Recipient address rejected"
        );

        let reply = Reply::parse(b"250-first\r\n250 second\r\n");
        assert_eq!(reply.text, "first\nsecond");
        assert_eq!(reply.enhanced, None);

        let reply = Reply::parse(b"421 4.4.2 closing\r\n");
        assert_eq!(reply.status(), Status::Transient);
    }
}
