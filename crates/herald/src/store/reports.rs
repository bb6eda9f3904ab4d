//! Issue 12: what the bounce intake asks of the store, for both dialects: a report applied to one recipient
//! (its status, the timeline line, in one transaction), and received mail kept for inspection when it could
//! not be read or matched.

use serde::Serialize;

use super::{Millis, RecipientStatus};

/// One report about one recipient of one message.
#[derive(Debug, Clone)]
pub struct ReportUpdate {
    pub message_id: String,
    /// Which recipient: by position (a per-recipient VERP token), else by address.
    pub recipient: RecipientRef,
    pub kind: ReportKind,
    pub smtp_code: Option<u16>,
    pub enhanced_status: Option<String>,
    /// The remote server's diagnostic, or the complaint's feedback type and agent.
    pub detail: Option<String>,
}

#[derive(Debug, Clone)]
pub enum RecipientRef {
    Position(u32),
    /// Any of these addresses (the DSN's Final-Recipient and Original-Recipient); compared without case.
    Address(Vec<String>),
    /// The message's only recipient (a complaint whose reporter redacted the address); none when it has
    /// several.
    Sole,
}

impl RecipientRef {
    /// Whether the recipient at `position` with `address`, of a message with `count` recipients, is this one.
    pub fn matches(&self, position: u32, address: &str, count: usize) -> bool {
        match self {
            RecipientRef::Position(p) => *p == position,
            RecipientRef::Address(addresses) => {
                addresses.iter().any(|a| a.eq_ignore_ascii_case(address))
            }
            RecipientRef::Sole => count == 1,
        }
    }
}

/// What a report says about its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// A permanent failure after the relay had accepted the message: the recipient becomes `bounced`.
    Bounced,
    /// A failure the report calls temporary (`Action: failed` with a 4.x.x status): only the timeline line,
    /// since the remote MTA says it gave up but not that the address is bad.
    SoftBounced,
    /// `Action: delayed`: only the timeline line; the remote MTA is still trying.
    Delayed,
    /// A complaint (ARF): the recipient becomes `complained`.
    Complained,
}

impl ReportKind {
    /// The timeline event's kind.
    pub fn event(self) -> &'static str {
        match self {
            ReportKind::Bounced => "bounced",
            ReportKind::SoftBounced => "soft_bounced",
            ReportKind::Delayed => "delayed",
            ReportKind::Complained => "complained",
        }
    }

    /// The status the recipient takes, if any.
    pub fn status(self) -> Option<RecipientStatus> {
        match self {
            ReportKind::Bounced => Some(RecipientStatus::Bounced),
            ReportKind::Complained => Some(RecipientStatus::Complained),
            ReportKind::SoftBounced | ReportKind::Delayed => None,
        }
    }
}

/// Whether a recipient in `from` takes `kind`'s status: only a recipient the relay accepted can bounce
/// later, and a complaint is about mail that arrived (also after a bounce from another hop). A recipient
/// still being tried, failed at delivery or cancelled keeps its status: the report is only written to the
/// timeline, where a person can see it.
pub fn report_changes_status(kind: ReportKind, from: RecipientStatus) -> bool {
    use RecipientStatus as R;
    match kind {
        ReportKind::Bounced => from == R::Delivered,
        ReportKind::Complained => matches!(from, R::Delivered | R::Bounced),
        ReportKind::SoftBounced | ReportKind::Delayed => false,
    }
}

/// What applying a report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportApplied {
    /// The recipient was found; `changed`: its status became the report's (false for delays, duplicates and
    /// recipients not in a state the report can change). The timeline line is written unless `duplicate`.
    Recipient {
        position: u32,
        address: String,
        changed: bool,
        duplicate: bool,
    },
    /// No such message (pruned, or a token for a message of another installation with the same key).
    NoMessage,
    /// The message exists but none of its recipients is the one the report names.
    NoRecipient,
}

/// Why received mail was kept instead of applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundReason {
    /// Not a DSN or ARF report Herald can read.
    Unparseable,
    /// A report, but for no message or recipient Herald knows.
    Unmatched,
    /// Addressed with a VERP or unsubscribe token whose signature is wrong.
    Forged,
}

impl InboundReason {
    pub fn as_str(self) -> &'static str {
        match self {
            InboundReason::Unparseable => "unparseable",
            InboundReason::Unmatched => "unmatched",
            InboundReason::Forged => "forged",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "unparseable" => InboundReason::Unparseable,
            "unmatched" => InboundReason::Unmatched,
            "forged" => InboundReason::Forged,
            _ => return None,
        })
    }
}

/// Mail received at the bounce domain and kept for inspection (`/v1/inbound`).
#[derive(Debug, Clone, Serialize)]
pub struct InboundMail {
    pub id: String,
    pub received_at: Millis,
    /// The client's address (`ip:port`).
    pub peer: String,
    /// The envelope: MAIL FROM (empty for a bounce) and RCPT TO.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub reason: InboundReason,
    /// What was wrong, in words.
    pub detail: String,
    /// The message the mail seemed to be about, when one was found.
    pub message_id: Option<String>,
    pub size: u64,
    #[serde(skip)]
    pub raw: Vec<u8>,
}

/// A page of kept mail, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct InboundPage {
    pub items: Vec<InboundMail>,
    /// Pass as `before` for the next page; absent on the last.
    pub next: Option<String>,
}
