//! Reading the reports mail systems send back: delivery status notifications (RFC 3464,
//! `multipart/report; report-type=delivery-status`, and RFC 6533's `global-delivery-status`) and complaint
//! feedback reports (ARF, RFC 5965, `report-type=feedback-report`).
//!
//! The MIME structure is parsed by mail-parser; the machine-readable parts (`message/delivery-status`,
//! `message/feedback-report`) are header-like fields in groups separated by blank lines (RFC 3464 §2.1), which
//! mail-parser hands over as bytes and [`fields`] reads. Only what matching and recording need is kept: each
//! recipient's action, status and diagnostic, and what identifies the original message (its envelope id, its
//! envelope sender, its `Message-ID` and `Return-Path` in the returned copy).

use mail_parser::{Message, MessageParser, MimeHeaders as _, PartType};

/// What a DSN says happened for one recipient (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
}

impl Action {
    fn parse(text: &str) -> Option<Self> {
        // RFC 3464 §2.3.3: the keyword, possibly followed by a comment.
        let word = text.split(|c: char| !c.is_ascii_alphabetic()).next()?;
        Some(match word.to_ascii_lowercase().as_str() {
            "failed" => Action::Failed,
            "delayed" => Action::Delayed,
            "delivered" => Action::Delivered,
            "relayed" => Action::Relayed,
            "expanded" => Action::Expanded,
            _ => return None,
        })
    }
}

/// One per-recipient group of a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    /// `Final-Recipient`, without its address type (`rfc822;`).
    pub final_recipient: Option<String>,
    /// `Original-Recipient`: the address as first given (RFC 3461 ORCPT), when the MTA kept it.
    pub original_recipient: Option<String>,
    pub action: Action,
    /// `Status`: the RFC 3463 enhanced status (`5.1.1`).
    pub status: Option<String>,
    /// `Diagnostic-Code`, without its type (`smtp;`): the remote server's reply.
    pub diagnostic: Option<String>,
}

impl DsnRecipient {
    /// A permanent failure: `failed` with a 5.x.x status (or no status at all, which RFC 3464 forbids but
    /// `failed` alone means permanent).
    pub fn is_permanent(&self) -> bool {
        self.action == Action::Failed && self.status.as_deref().is_none_or(|s| s.starts_with('5'))
    }

    /// The SMTP reply code in the diagnostic (`smtp; 550 5.1.1 …` → 550), when there is one.
    pub fn smtp_code(&self) -> Option<u16> {
        let text = self.diagnostic.as_deref()?.trim_start();
        let code = text.get(..3)?.parse::<u16>().ok()?;
        ((200..600).contains(&code) && !text[3..].starts_with(|c: char| c.is_ascii_digit()))
            .then_some(code)
    }
}

/// A complaint report (RFC 5965 §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    /// `Feedback-Type`: `abuse`, `fraud`, `virus`, `other`, `not-spam` …
    pub feedback_type: String,
    pub user_agent: Option<String>,
    /// `Original-Mail-From`: the envelope sender of the reported message (our VERP address, if it was ours).
    pub original_mail_from: Option<String>,
    /// `Original-Rcpt-To`: the complaining recipient, where the reporter does not redact it.
    pub original_rcpt_to: Vec<String>,
}

/// What kind of report a message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportBody {
    Delivery(Vec<DsnRecipient>),
    Feedback(Feedback),
}

/// A parsed report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub body: ReportBody,
    /// `Original-Envelope-Id` (RFC 3464 §2.2.1): the ENVID given at submission.
    pub envelope_id: Option<String>,
    /// The envelope sender the reporting MTA saw, where it says (Postfix's `X-Postfix-Sender`).
    pub envelope_sender: Option<String>,
    /// The returned copy's `Message-ID` (from `message/rfc822` or `text/rfc822-headers`), without brackets.
    pub returned_message_id: Option<String>,
    /// The returned copy's `Return-Path`: the envelope sender as the final MTA recorded it (our VERP address
    /// in a complaint about our mail).
    pub returned_return_path: Option<String>,
}

/// Why a received message is not a report Herald can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("not a MIME message")]
    NotMime,
    #[error("not a multipart/report (content type {0})")]
    NotReport(String),
    #[error("unknown report type {0:?}")]
    UnknownReportType(String),
    #[error("the report has no {0} part")]
    MissingPart(&'static str),
    #[error("the delivery-status part names no recipient with an action")]
    NoRecipients,
    #[error("the feedback report has no Feedback-Type")]
    NoFeedbackType,
}

/// Reads `bytes` as a DSN or an ARF report.
pub fn parse(bytes: &[u8]) -> Result<Report, ReportError> {
    let message = MessageParser::default()
        .parse(bytes)
        .ok_or(ReportError::NotMime)?;
    let root = message.root_part();
    let content_type = root
        .content_type()
        .ok_or(ReportError::NotReport("none".into()))?;
    let full_type = format!(
        "{}/{}",
        content_type.ctype(),
        content_type.subtype().unwrap_or_default()
    )
    .to_ascii_lowercase();
    if full_type != "multipart/report" {
        return Err(ReportError::NotReport(full_type));
    }
    let report_type = content_type
        .attribute("report-type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut report = Report {
        body: ReportBody::Delivery(Vec::new()),
        envelope_id: None,
        envelope_sender: None,
        returned_message_id: None,
        returned_return_path: None,
    };
    let part_of = |subtypes: &[&str]| {
        message.parts.iter().find(|part| {
            part.content_type().is_some_and(|ct| {
                ct.ctype().eq_ignore_ascii_case("message")
                    && ct
                        .subtype()
                        .is_some_and(|s| subtypes.iter().any(|w| s.eq_ignore_ascii_case(w)))
            })
        })
    };
    match report_type.as_str() {
        "delivery-status" | "global-delivery-status" => {
            let part = part_of(&["delivery-status", "global-delivery-status"])
                .ok_or(ReportError::MissingPart("message/delivery-status"))?;
            let groups = fields(part.contents());
            let (per_message, per_recipient) =
                groups.split_first().ok_or(ReportError::NoRecipients)?;
            report.envelope_id = field(per_message, "original-envelope-id");
            report.envelope_sender = field(per_message, "x-postfix-sender").map(strip_type);
            let recipients: Vec<DsnRecipient> = per_recipient
                .iter()
                .filter_map(|group| {
                    Some(DsnRecipient {
                        action: Action::parse(&field(group, "action")?)?,
                        final_recipient: field(group, "final-recipient").map(strip_type),
                        original_recipient: field(group, "original-recipient").map(strip_type),
                        status: field(group, "status")
                            .and_then(|s| s.split_whitespace().next().map(str::to_owned)),
                        diagnostic: field(group, "diagnostic-code").map(strip_diagnostic_type),
                    })
                })
                .collect();
            if recipients.is_empty() {
                return Err(ReportError::NoRecipients);
            }
            report.body = ReportBody::Delivery(recipients);
        }
        "feedback-report" => {
            let part = part_of(&["feedback-report"])
                .ok_or(ReportError::MissingPart("message/feedback-report"))?;
            let groups = fields(part.contents());
            let all: Vec<(String, String)> = groups.into_iter().flatten().collect();
            let feedback = Feedback {
                feedback_type: field(&all, "feedback-type")
                    .map(|t| t.to_ascii_lowercase())
                    .ok_or(ReportError::NoFeedbackType)?,
                user_agent: field(&all, "user-agent"),
                original_mail_from: field(&all, "original-mail-from").map(|a| unbracket(&a)),
                original_rcpt_to: all
                    .iter()
                    .filter(|(name, _)| name == "original-rcpt-to")
                    .map(|(_, value)| unbracket(value))
                    .collect(),
            };
            report.envelope_sender = feedback.original_mail_from.clone();
            report.body = ReportBody::Feedback(feedback);
        }
        other => return Err(ReportError::UnknownReportType(other.to_owned())),
    }
    returned_headers(&message, &mut report);
    Ok(report)
}

/// The returned copy's identifying headers: a `message/rfc822` part, or `text/rfc822-headers` (headers only).
fn returned_headers(message: &Message<'_>, report: &mut Report) {
    for part in &message.parts {
        let returned = match &part.body {
            PartType::Message(inner) => Some(inner.clone()),
            _ if part.content_type().is_some_and(|ct| {
                ct.subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("rfc822-headers"))
            }) =>
            {
                // The headers alone, then a blank line so that the parser takes them as a whole message.
                let mut headers = part.contents().to_vec();
                headers.extend_from_slice(b"\r\n\r\n");
                MessageParser::default()
                    .parse(&headers)
                    .map(|m| m.into_owned())
            }
            _ => None,
        };
        if let Some(returned) = returned {
            report.returned_message_id = returned.message_id().map(str::to_owned);
            report.returned_return_path = returned
                .header_raw("Return-Path")
                .map(unbracket)
                .filter(|a| !a.is_empty());
            return;
        }
    }
}

/// The field groups of a `message/delivery-status` or `message/feedback-report` body: names lower-cased,
/// folded lines unfolded, values trimmed. Lines that are not fields are skipped.
fn fields(body: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = String::from_utf8_lossy(body);
    let mut groups = Vec::new();
    let mut group: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !group.is_empty() {
                groups.push(std::mem::take(&mut group));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = group.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            group.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

fn field(group: &[(String, String)], name: &str) -> Option<String> {
    group
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

/// `rfc822; ann@example.net` → `ann@example.net` (RFC 3464 §2.1.2: an address or diagnostic type, then `;`).
fn strip_type(value: String) -> String {
    match value.split_once(';') {
        Some((kind, rest)) if !kind.contains(['@', ' ']) => unbracket(rest),
        _ => unbracket(&value),
    }
}

/// `smtp; 550 5.1.1 …` → `550 5.1.1 …`: the diagnostic type removed, the text kept whole.
fn strip_diagnostic_type(value: String) -> String {
    match value.split_once(';') {
        Some((kind, rest)) if !kind.contains(' ') => rest.trim().to_owned(),
        _ => value,
    }
}

fn unbracket(value: &str) -> String {
    value
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/bounces/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .replace("{{RETURN_PATH}}", "bounces+abc@bounce.test")
            .replace("{{RECIPIENT}}", "gone@example.net")
            .replace("{{MESSAGE_ID}}", "m1@shop.example")
            .replace("{{TO}}", "fbl@bounce.test")
            .replace('\n', "\r\n")
            .into_bytes()
    }

    fn failed(report: &Report) -> &DsnRecipient {
        match &report.body {
            ReportBody::Delivery(recipients) => &recipients[0],
            other => panic!("not a DSN: {other:?}"),
        }
    }

    #[test]
    fn the_common_dsns_are_read() {
        for (name, status, code) in [
            ("postfix.eml", "5.1.1", Some(550)),
            ("exim.eml", "5.0.0", Some(550)),
            ("gmail.eml", "5.1.1", Some(550)),
            ("office365.eml", "5.1.10", Some(550)),
        ] {
            let report = parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            let recipient = failed(&report);
            assert_eq!(recipient.action, Action::Failed, "{name}");
            assert_eq!(recipient.status.as_deref(), Some(status), "{name}");
            assert_eq!(recipient.smtp_code(), code, "{name}");
            assert!(recipient.is_permanent(), "{name}");
            assert_eq!(
                recipient.final_recipient.as_deref(),
                Some("gone@example.net"),
                "{name}"
            );
            assert_eq!(
                report.returned_message_id.as_deref(),
                Some("m1@shop.example"),
                "{name}"
            );
        }
        let postfix = parse(&fixture("postfix.eml")).unwrap();
        assert_eq!(
            postfix.envelope_sender.as_deref(),
            Some("bounces+abc@bounce.test")
        );
        assert_eq!(
            postfix.returned_return_path.as_deref(),
            Some("bounces+abc@bounce.test")
        );
        let gmail = parse(&fixture("gmail.eml")).unwrap();
        assert!(
            failed(&gmail)
                .diagnostic
                .as_deref()
                .unwrap()
                .ends_with("gsmtp"),
            "folded lines are unfolded: {:?}",
            failed(&gmail).diagnostic
        );
    }

    #[test]
    fn complaints_are_read() {
        let yahoo = parse(&fixture("yahoo-arf.eml")).unwrap();
        let ReportBody::Feedback(feedback) = &yahoo.body else {
            panic!("{yahoo:?}")
        };
        assert_eq!(feedback.feedback_type, "abuse");
        assert_eq!(feedback.original_rcpt_to, ["gone@example.net"]);
        assert_eq!(
            yahoo.envelope_sender.as_deref(),
            Some("bounces+abc@bounce.test")
        );
        let aol = parse(&fixture("aol-arf.eml")).unwrap();
        let ReportBody::Feedback(feedback) = &aol.body else {
            panic!("{aol:?}")
        };
        assert_eq!(feedback.user_agent.as_deref(), Some("AOL SComp"));
        assert!(feedback.original_rcpt_to.is_empty());
        assert_eq!(
            aol.returned_return_path.as_deref(),
            Some("bounces+abc@bounce.test")
        );
    }

    #[test]
    fn what_is_not_a_report_says_why() {
        assert_eq!(
            parse(&fixture("gmail-legacy-text.eml")),
            Err(ReportError::NotReport("text/plain".into()))
        );
        assert_eq!(
            parse(&fixture("google-workspace-empty-status.eml")),
            Err(ReportError::NoRecipients)
        );
        assert!(parse(b"").is_err());
    }

    #[test]
    fn a_delay_is_not_permanent() {
        let delayed = DsnRecipient {
            final_recipient: None,
            original_recipient: None,
            action: Action::parse("delayed").unwrap(),
            status: Some("4.4.1".into()),
            diagnostic: Some("451 4.4.1 try later".into()),
        };
        assert!(!delayed.is_permanent());
        assert_eq!(delayed.smtp_code(), Some(451));
        let soft = DsnRecipient {
            action: Action::Failed,
            ..delayed
        };
        assert!(!soft.is_permanent());
    }
}
