//! Mail received at the bounce domain → what it says, applied to the message and recipient it is about.
//!
//! The recipient of the report decides first: `bounces+TOKEN@` names the message (and, for a message sent
//! to one recipient, the recipient) by a signed token, so a bounce is matched however little its body says;
//! a token whose signature is wrong is never applied (the mail is kept as `forged`). Mail to any other
//! address at the bounce domain (a feedback-loop address registered with a mailbox provider, say) is matched
//! by what the report carries: the envelope sender it names (`X-Postfix-Sender`, ARF's
//! `Original-Mail-From`) or the returned copy's `Return-Path`, each of which is our signed VERP address when
//! the mail was ours. Each DSN recipient is then found among the message's recipients by position (the
//! token's) or by address (`Final-Recipient`, `Original-Recipient`).
//!
//! Whatever cannot be read or matched is kept in the store (`/v1/inbound`), never dropped.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::{
    report::{self, Action, ReportBody},
    verp::{BOUNCE_PREFIX, UNSUBSCRIBE_PREFIX, Verp, VerpTarget, strip_prefix_ignore_case},
};
use crate::{
    link_tokens::LinkTokens,
    service::{Service, SuppressionError},
    store::{
        InboundMail, InboundReason, RecipientRef, ReportApplied, ReportKind, ReportUpdate,
        StoreError, SuppressionReason,
    },
};

/// Default of `HERALD_BOUNCE_MAX_SIZE`: the bytes of one received report that are kept. Reports put their
/// machine-readable part before the returned message, so a longer one is read from its beginning.
pub const DEFAULT_MAX_SIZE: usize = 1024 * 1024;
/// Default of `HERALD_BOUNCE_RATE`: reports one client address may send per minute.
pub const DEFAULT_RATE_PER_MINUTE: u32 = 600;

/// `HERALD_BOUNCE_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeSettings {
    pub domain: String,
    pub max_size: usize,
    pub rate_per_minute: u32,
}

impl IntakeSettings {
    /// Reads `HERALD_BOUNCE_*` through `get`; `None` without `HERALD_BOUNCE_DOMAIN`.
    pub fn from_values<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Option<Self>, crate::config::ConfigError> {
        let Some(domain) = get("HERALD_BOUNCE_DOMAIN") else {
            return Ok(None);
        };
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let valid = !domain.is_empty()
            && domain.len() <= 253
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !valid {
            return Err(crate::config::ConfigError::Invalid {
                key: "HERALD_BOUNCE_DOMAIN".into(),
                message: format!(
                    "{domain:?} is not a domain name (ASCII letters, digits and hyphens; punycode for others)"
                ),
            });
        }
        let max_size = crate::config::positive_number(
            "HERALD_BOUNCE_MAX_SIZE",
            get("HERALD_BOUNCE_MAX_SIZE"),
            DEFAULT_MAX_SIZE,
        )?;
        let rate = crate::config::positive_number(
            "HERALD_BOUNCE_RATE",
            get("HERALD_BOUNCE_RATE"),
            DEFAULT_RATE_PER_MINUTE as usize,
        )?;
        Ok(Some(Self {
            domain,
            max_size,
            rate_per_minute: u32::try_from(rate).unwrap_or(u32::MAX),
        }))
    }
}

/// The bounce intake one node runs: the VERP signer and the per-client rate limit.
pub struct Intake {
    pub verp: Verp,
    pub max_size: usize,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("verp", &self.verp)
            .field("max_size", &self.max_size)
            .finish_non_exhaustive()
    }
}

/// One received mail, as the SMTP listener hands it over.
#[derive(Debug, Clone)]
pub struct Received {
    pub peer: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub bytes: Vec<u8>,
    /// The mail was longer than `max_size`; `bytes` is its beginning.
    pub truncated: bool,
}

/// What the intake did with one received mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to this many recipients (status changes and timeline lines).
    Applied { recipients: usize },
    /// Kept for inspection, for this reason.
    Kept { id: String, reason: InboundReason },
}

impl Intake {
    /// `tokens`: the installation's link-token key (`Service::link_tokens`), which also checks the
    /// `unsub+` tokens.
    pub fn new(settings: &IntakeSettings, tokens: LinkTokens) -> Arc<Self> {
        let rate = NonZeroU32::new(settings.rate_per_minute.max(1)).expect("at least 1");
        Arc::new(Self {
            verp: Verp::new(&settings.domain, tokens),
            max_size: settings.max_size,
            limiter: RateLimiter::keyed(Quota::per_minute(rate)),
        })
    }

    /// Whether the client at `ip` may hand over one more report now.
    pub fn admit(&self, ip: IpAddr) -> bool {
        self.limiter.check_key(&ip).is_ok()
    }

    /// Reads `mail` and applies it, or keeps it. Errors are the store's: the listener answers 451 and the
    /// sending MTA tries again later.
    pub async fn receive(&self, service: &Service, mail: Received) -> Result<Outcome, StoreError> {
        let store = service.store();
        let mut forged = false;
        let mut target: Option<VerpTarget> = None;
        for rcpt in &mail.rcpt_to {
            let local = rcpt.rsplit_once('@').map_or(rcpt.as_str(), |(l, _)| l);
            if let Some(token) = strip_prefix_ignore_case(local, BOUNCE_PREFIX) {
                match self.verp.verify(token) {
                    Some(found) => target = target.or(Some(found)),
                    None => forged = true,
                }
            } else if strip_prefix_ignore_case(local, UNSUBSCRIBE_PREFIX).is_some() {
                // `List-Unsubscribe: <mailto:unsub+TOKEN@…>` (RFC 2369): the token is the suppress
                // module's; see `unsubscribe`.
                let token = strip_prefix_ignore_case(local, UNSUBSCRIBE_PREFIX).unwrap_or_default();
                match service.unsubscribe(token).await {
                    Ok(done) => {
                        metrics::counter!("herald_reports_applied_total", "kind" => "unsubscribe")
                            .increment(1);
                        tracing::info!(message = %done.message_id, list = ?done.list, "unsubscribed by mail");
                        return Ok(Outcome::Applied { recipients: 1 });
                    }
                    Err(SuppressionError::Store(error)) => return Err(error),
                    Err(SuppressionError::UnknownMessage) => {
                        return self
                            .keep(
                                service,
                                &mail,
                                InboundReason::Unmatched,
                                "the unsubscribe token's message no longer exists".into(),
                                None,
                            )
                            .await;
                    }
                    Err(_) => forged = true,
                }
            }
        }
        if forged && target.is_none() {
            return self
                .keep(
                    service,
                    &mail,
                    InboundReason::Forged,
                    "the token in the recipient address does not verify".into(),
                    None,
                )
                .await;
        }
        let parsed = match report::parse(&mail.bytes) {
            Ok(parsed) => parsed,
            Err(error) => {
                let detail = truncated_note(&mail, error.to_string());
                let message_id = target.map(|t| t.message_id);
                return self
                    .keep(
                        service,
                        &mail,
                        InboundReason::Unparseable,
                        detail,
                        message_id,
                    )
                    .await;
            }
        };
        // No token in the envelope: the report's own account of the envelope sender, or the returned copy's
        // Return-Path, which is our VERP address when the mail was ours.
        let target = target.or_else(|| {
            [
                parsed.envelope_sender.as_deref(),
                parsed.returned_return_path.as_deref(),
            ]
            .into_iter()
            .flatten()
            .find_map(|address| self.verp.target_of(address))
        });
        // RFC 3464 §2.2.1: the ENVID a submitter gave; Herald's message ids are UUIDs.
        let target = target.or_else(|| {
            parsed
                .envelope_id
                .as_deref()
                .filter(|id| uuid::Uuid::parse_str(id).is_ok())
                .map(|id| VerpTarget {
                    message_id: id.to_owned(),
                    position: None,
                })
        });
        let Some(target) = target else {
            let detail = if forged {
                "the token in the recipient address does not verify"
            } else {
                "no VERP token, envelope sender or returned Return-Path names a message of this Herald"
            };
            let reason = if forged {
                InboundReason::Forged
            } else {
                InboundReason::Unmatched
            };
            return self.keep(service, &mail, reason, detail.into(), None).await;
        };
        let updates = updates_for(&parsed.body, &target);
        if updates.is_empty() {
            // Only positive DSNs (delivered, relayed, expanded), or a feedback type that is no complaint.
            let detail = match &parsed.body {
                ReportBody::Feedback(f) => {
                    format!("feedback type {:?} is not a complaint", f.feedback_type)
                }
                ReportBody::Delivery(_) => "the DSN reports no failure or delay".into(),
            };
            return self
                .keep(
                    service,
                    &mail,
                    InboundReason::Unmatched,
                    detail,
                    Some(target.message_id),
                )
                .await;
        }
        let mut applied = 0;
        let mut misses = Vec::new();
        for update in updates {
            match store.apply_report(&update).await? {
                ReportApplied::Recipient {
                    address,
                    changed,
                    duplicate,
                    ..
                } => {
                    applied += 1;
                    metrics::counter!("herald_reports_applied_total", "kind" => update.kind.event())
                        .increment(1);
                    tracing::info!(
                        message = %update.message_id,
                        recipient = %address,
                        kind = update.kind.event(),
                        changed,
                        duplicate,
                        "report applied"
                    );
                    let reason = match update.kind {
                        ReportKind::Bounced => Some(SuppressFor::HardBounce),
                        ReportKind::Complained => Some(SuppressFor::Complaint),
                        ReportKind::SoftBounced | ReportKind::Delayed => None,
                    };
                    if let Some(reason) = reason {
                        suppress(service, &address, reason, &update.message_id).await?;
                    }
                }
                ReportApplied::NoMessage => {
                    misses.push(format!("message {} is not in the store", update.message_id))
                }
                ReportApplied::NoRecipient => misses.push(format!(
                    "message {} has no recipient {}",
                    update.message_id,
                    describe(&update.recipient)
                )),
            }
        }
        if applied == 0 {
            return self
                .keep(
                    service,
                    &mail,
                    InboundReason::Unmatched,
                    misses.join("; "),
                    Some(target.message_id),
                )
                .await;
        }
        Ok(Outcome::Applied {
            recipients: applied,
        })
    }

    async fn keep(
        &self,
        service: &Service,
        mail: &Received,
        reason: InboundReason,
        detail: String,
        message_id: Option<String>,
    ) -> Result<Outcome, StoreError> {
        let id = uuid::Uuid::now_v7().to_string();
        metrics::counter!("herald_inbound_kept_total", "reason" => reason.as_str()).increment(1);
        tracing::info!(%id, reason = reason.as_str(), %detail, peer = %mail.peer, "received mail kept for inspection");
        service
            .store()
            .keep_inbound(&InboundMail {
                id: id.clone(),
                received_at: service.store().clock().now(),
                peer: mail.peer.clone(),
                mail_from: mail.mail_from.clone(),
                rcpt_to: mail.rcpt_to.clone(),
                reason,
                detail,
                message_id,
                size: mail.bytes.len() as u64,
                raw: mail.bytes.clone(),
            })
            .await?;
        Ok(Outcome::Kept { id, reason })
    }
}

fn truncated_note(mail: &Received, detail: String) -> String {
    if mail.truncated {
        format!(
            "{detail} (only the first {} bytes were kept)",
            mail.bytes.len()
        )
    } else {
        detail
    }
}

fn describe(recipient: &RecipientRef) -> String {
    match recipient {
        RecipientRef::Position(p) => format!("at position {p}"),
        RecipientRef::Address(addresses) => addresses.join(" or "),
        RecipientRef::Sole => "(the report names none, and the message has several)".into(),
    }
}

/// The store updates a report asks for.
fn updates_for(body: &ReportBody, target: &VerpTarget) -> Vec<ReportUpdate> {
    match body {
        ReportBody::Delivery(recipients) => {
            let reported: Vec<_> = recipients
                .iter()
                .filter_map(|r| {
                    let kind = match r.action {
                        Action::Failed if r.is_permanent() => ReportKind::Bounced,
                        Action::Failed => ReportKind::SoftBounced,
                        Action::Delayed => ReportKind::Delayed,
                        Action::Delivered | Action::Relayed | Action::Expanded => return None,
                    };
                    Some((r, kind))
                })
                .collect();
            let by_position = reported.len() == 1 && target.position.is_some();
            reported
                .into_iter()
                .map(|(r, kind)| ReportUpdate {
                    message_id: target.message_id.clone(),
                    recipient: match target.position {
                        // The token names the recipient: the DSN's address may be a forward of it.
                        Some(position) if by_position => RecipientRef::Position(position),
                        _ => RecipientRef::Address(
                            [&r.final_recipient, &r.original_recipient]
                                .into_iter()
                                .flatten()
                                .cloned()
                                .collect(),
                        ),
                    },
                    kind,
                    smtp_code: r.smtp_code(),
                    enhanced_status: r.status.clone(),
                    detail: r.diagnostic.clone().or_else(|| r.status.clone()),
                })
                .collect()
        }
        ReportBody::Feedback(feedback) => {
            // RFC 5965 §3.1 types; `not-spam` and unknown types are not complaints.
            if !matches!(
                feedback.feedback_type.as_str(),
                "abuse" | "fraud" | "virus" | "other"
            ) {
                return Vec::new();
            }
            let recipient = match target.position {
                Some(position) => RecipientRef::Position(position),
                None if !feedback.original_rcpt_to.is_empty() => {
                    RecipientRef::Address(feedback.original_rcpt_to.clone())
                }
                // Providers redact the recipient (Yahoo, AOL): the message's only recipient, if it has one.
                None => RecipientRef::Sole,
            };
            let detail = match &feedback.user_agent {
                Some(agent) => format!("feedback-type {} from {agent}", feedback.feedback_type),
                None => format!("feedback-type {}", feedback.feedback_type),
            };
            vec![ReportUpdate {
                message_id: target.message_id.clone(),
                recipient,
                kind: ReportKind::Complained,
                smtp_code: None,
                enhanced_status: None,
                detail: Some(detail),
            }]
        }
    }
}

/// Why an address is suppressed after a report.
#[derive(Debug, Clone, Copy)]
enum SuppressFor {
    HardBounce,
    Complaint,
}

/// Adds the suppression a report calls for, unscoped (a bad mailbox or a complaint is about every list),
/// with the `suppressed` line on the message's timeline.
async fn suppress(
    service: &Service,
    address: &str,
    reason: SuppressFor,
    message_id: &str,
) -> Result<(), StoreError> {
    let reason = match reason {
        SuppressFor::HardBounce => SuppressionReason::HardBounce,
        SuppressFor::Complaint => SuppressionReason::Complaint,
    };
    match service
        .suppress(address, None, reason, Some(message_id), None)
        .await
    {
        Ok(()) => Ok(()),
        Err(SuppressionError::Store(error)) => Err(error),
        // An address the store holds is one the list takes; should it not be, the report still stands.
        Err(error) => {
            tracing::warn!(%error, %address, "the reported address could not be suppressed");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Option<IntakeSettings>, String> {
        let values: HashMap<&str, &str> = pairs.iter().copied().collect();
        IntakeSettings::from_values(|key| values.get(key).copied()).map_err(|e| e.to_string())
    }

    #[test]
    fn unset_is_off_and_the_defaults_apply() {
        assert_eq!(settings(&[]), Ok(None));
        assert_eq!(
            settings(&[("HERALD_BOUNCE_DOMAIN", "Bounces.Shop.Example.")]),
            Ok(Some(IntakeSettings {
                domain: "bounces.shop.example".into(),
                max_size: DEFAULT_MAX_SIZE,
                rate_per_minute: DEFAULT_RATE_PER_MINUTE,
            }))
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        for (pairs, key) in [
            (
                vec![("HERALD_BOUNCE_DOMAIN", "not a domain")],
                "HERALD_BOUNCE_DOMAIN",
            ),
            (
                vec![("HERALD_BOUNCE_DOMAIN", "-x.example")],
                "HERALD_BOUNCE_DOMAIN",
            ),
            (
                vec![
                    ("HERALD_BOUNCE_DOMAIN", "b.example"),
                    ("HERALD_BOUNCE_MAX_SIZE", "0"),
                ],
                "HERALD_BOUNCE_MAX_SIZE",
            ),
            (
                vec![
                    ("HERALD_BOUNCE_DOMAIN", "b.example"),
                    ("HERALD_BOUNCE_RATE", "fast"),
                ],
                "HERALD_BOUNCE_RATE",
            ),
        ] {
            let error = settings(&pairs).unwrap_err();
            assert!(error.starts_with(key), "{error}");
        }
    }
}
