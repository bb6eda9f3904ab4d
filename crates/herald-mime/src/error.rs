//! Errors of building a message: everything is checked when the message is
//! built, so composing it afterwards cannot fail.

use crate::address::AddressError;

/// Why a message cannot be built. Each variant names what the caller gave
/// wrong, in the caller's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    /// An address or mailbox did not parse.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// No `from`.
    #[error("missing sender (from)")]
    MissingFrom,
    /// Nobody to send to.
    #[error("no recipients: give at least one of to, cc or bcc")]
    NoRecipients,
    /// A header value, file name or other header-bound text holds CR, LF,
    /// NUL or another control character (header injection).
    #[error("{field}: control character {ch:?} not allowed")]
    ControlCharacter {
        /// Which value (`subject`, `headers.X-Tag`, `filename` …).
        field: String,
        /// The offending character.
        ch: char,
    },
    /// RFC 5322 §3.6.8: a field name is 1–76 printable ASCII characters
    /// other than `:` (76 so that `Name: ` still fits a 78-column line).
    #[error("invalid header name {0:?}: use printable ASCII without ':' or spaces")]
    InvalidHeaderName(String),
    /// A header Herald writes itself (From, Subject, Content-Type …).
    #[error("header {0:?} is written by Herald: set it through its own field")]
    ReservedHeader(String),
    /// The HTML refers to `cid:x` and no inline part has Content-ID `x`.
    #[error("html references cid:{0} but no inline part has that content_id")]
    MissingContentId(String),
    /// Two inline parts share a Content-ID.
    #[error("two parts have the same content_id {0:?}")]
    DuplicateContentId(String),
    /// A Content-ID that is not a valid `msg-id`.
    #[error("invalid content_id {0:?}: use printable ASCII such as logo@example.com")]
    InvalidContentId(String),
    /// A Message-ID that is not a valid `msg-id`.
    #[error("invalid message_id {0:?}: use left@right in printable ASCII")]
    InvalidMessageId(String),
    /// A content type that is not `type/subtype[; param=value]`.
    #[error("invalid content_type {value:?}: {reason}")]
    InvalidContentType {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An attachment with an empty file name.
    #[error("empty filename")]
    EmptyFilename,
}
