//! The store's rules, once for both dialects: which status a new, recorded, cancelled or given-back message
//! takes, which timeline line each change writes, and how writes are grouped into one transaction.
//!
//! Pure code: the SQLite writer and the PostgreSQL statements call these functions (or splice these SQL
//! fragments, checked against the enums by the tests below) instead of repeating the rules, so the two stores
//! cannot drift apart again (they once did: the per-recipient timeline line named the recipient by its
//! position on SQLite and by its address on PostgreSQL).

use super::{MessageStatus, Millis, RecipientResult, RecipientStatus};

/// The timeline event of an attempt cut short by its node stopping (crash, kill, partition). It does not count
/// as an attempt: the message is due again at once with its attempts unspent.
pub const EVENT_INTERRUPTED: &str = "attempt_interrupted";

/// The timeline event of an outcome reported by a node that had lost the message's lease: it is not applied
/// (the message is someone else's now, or due again), only shown.
pub const EVENT_STALE_OUTCOME: &str = "stale_outcome";

/// Most messages (accepts) or outcomes (records) applied in one group commit; more wait for the next one.
pub const MAX_GROUP: usize = 4_096;

/// The SQL list of the message statuses [`MessageStatus::is_cancellable`] accepts.
macro_rules! cancellable_sql {
    () => {
        "('scheduled', 'queued', 'deferred')"
    };
}

/// The SQL list of the recipient statuses still to be tried (not [`RecipientStatus::is_final`]).
macro_rules! open_recipients_sql {
    () => {
        "('pending', 'deferred')"
    };
}

/// The SQL list of the recipient statuses [`RecipientStatus::is_final`] accepts: never changed again.
macro_rules! final_recipients_sql {
    () => {
        "('delivered', 'failed', 'cancelled', 'bounced', 'complained')"
    };
}

/// The status a message given back (lease released, node dead, process restarted) returns to, as SQL over its
/// `attempts` column: see [`given_back_status`].
macro_rules! given_back_status_sql {
    () => {
        "CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END"
    };
}

pub(super) use cancellable_sql;
pub(super) use final_recipients_sql;
pub(super) use given_back_status_sql;
pub(super) use open_recipients_sql;

/// The status a new message is stored with: scheduled while its `send_at` is ahead.
pub fn accepted_status(send_at: Option<Millis>, now: Millis) -> MessageStatus {
    match send_at {
        Some(at) if at > now => MessageStatus::Scheduled,
        _ => MessageStatus::Queued,
    }
}

/// When a new message is first due: at its `send_at`, never before now.
pub fn first_due(send_at: Option<Millis>, now: Millis) -> Millis {
    send_at.unwrap_or(now).max(now)
}

/// The status a message given back without an outcome returns to: its attempt did not happen, so it is as
/// it was before the claim (deferred once it has been tried, queued before).
pub fn given_back_status(attempts: u32) -> MessageStatus {
    if attempts > 0 {
        MessageStatus::Deferred
    } else {
        MessageStatus::Queued
    }
}

/// Derives a message's status from its recipients' (the API contract's rule): `delivered` when all were
/// accepted, `failed` when none can be, `deferred` while any will be retried. A finished message with some
/// recipients accepted and some failed for good is `delivered` (it left for someone), and its recipients tell
/// which failed, as Postmark and SES report per recipient.
pub fn message_status_from(recipients: &[RecipientStatus]) -> MessageStatus {
    use RecipientStatus as R;
    let any = |wanted: R| recipients.contains(&wanted);
    if any(R::Deferred) {
        MessageStatus::Deferred
    } else if any(R::Pending) {
        MessageStatus::Queued
    } else if any(R::Delivered) || any(R::Complained) {
        // A complaint comes from a mailbox the message reached; a bounce from one it did not.
        MessageStatus::Delivered
    } else if !recipients.is_empty() && recipients.iter().all(|s| *s == R::Cancelled) {
        MessageStatus::Cancelled
    } else {
        MessageStatus::Failed
    }
}

/// What recording an attempt's outcome does to its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub status: MessageStatus,
    /// Recipients still open and no retry time left: they are failed now (the message gave up on them).
    pub gave_up: bool,
    /// `None` once final; otherwise the retry time, or now (a relay found down: due again at once).
    pub next_attempt_at: Option<Millis>,
    pub finished_at: Option<Millis>,
}

/// Settles a message from its recipients' statuses after the outcome's results were applied.
pub fn settle(recipients: &[RecipientStatus], retry_at: Option<Millis>, now: Millis) -> Settled {
    let mut status = message_status_from(recipients);
    let gave_up =
        matches!(status, MessageStatus::Deferred | MessageStatus::Queued) && retry_at.is_none();
    if gave_up {
        status = if recipients.contains(&RecipientStatus::Delivered)
            || recipients.contains(&RecipientStatus::Complained)
        {
            MessageStatus::Delivered
        } else {
            MessageStatus::Failed
        };
    }
    let done = status.is_final();
    Settled {
        status,
        gave_up,
        next_attempt_at: if done { None } else { retry_at.or(Some(now)) },
        finished_at: done.then_some(now),
    }
}

/// One line of a message's timeline as the stores write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLine<'a> {
    pub kind: &'a str,
    pub recipient: Option<&'a str>,
    pub detail: Option<&'a str>,
}

/// A message's own line (accepted, claimed, cancelled): the status it took.
pub fn status_event(status: MessageStatus) -> EventLine<'static> {
    EventLine {
        kind: status.as_str(),
        recipient: None,
        detail: None,
    }
}

/// The line of one recipient's result: its status, the recipient by its address (what a reader of the
/// timeline wants; the position only identifies the row), the server's reply.
pub fn recipient_event(result: &RecipientResult) -> EventLine<'_> {
    EventLine {
        kind: result.status.as_str(),
        recipient: Some(&result.address),
        detail: result.reply.as_deref(),
    }
}

/// The line that ends an attempt: `attempt_<the status the message took>`, with the attempt's detail.
pub fn attempt_event(status: MessageStatus, detail: &str) -> EventLine<'_> {
    let kind = match status {
        MessageStatus::Scheduled => "attempt_scheduled",
        MessageStatus::Queued => "attempt_queued",
        MessageStatus::Sending => "attempt_sending",
        MessageStatus::Deferred => "attempt_deferred",
        MessageStatus::Delivered => "attempt_delivered",
        MessageStatus::Failed => "attempt_failed",
        MessageStatus::Cancelled => "attempt_cancelled",
    };
    EventLine {
        kind,
        recipient: None,
        detail: Some(detail),
    }
}

/// The detail of a [`EVENT_STALE_OUTCOME`] line: who reported what, and that it was not applied.
pub fn stale_outcome_detail(owner: &str, detail: &str) -> String {
    format!("from {owner}, which no longer held the lease (not applied): {detail}")
}

/// A [`EVENT_STALE_OUTCOME`] line, its detail from [`stale_outcome_detail`].
pub fn stale_outcome_event(detail: &str) -> EventLine<'_> {
    EventLine {
        kind: EVENT_STALE_OUTCOME,
        recipient: None,
        detail: Some(detail),
    }
}

/// A [`EVENT_INTERRUPTED`] line, its detail from [`Interruption::detail`].
pub fn interrupted_event(detail: &str) -> EventLine<'_> {
    EventLine {
        kind: EVENT_INTERRUPTED,
        recipient: None,
        detail: Some(detail),
    }
}

/// Why an attempt was cut short without an outcome (an [`EVENT_INTERRUPTED`] line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// SQLite: the previous process serving the file died while delivering it.
    ProcessStopped,
    /// PostgreSQL: another node claimed it after its lease ran out.
    LeaseExpired,
    /// PostgreSQL: a heartbeat found its node dead.
    NodeSilent,
}

impl Interruption {
    /// The line's detail, naming the node that was delivering it (`None`: not known).
    pub fn detail(self, owner: Option<&str>) -> String {
        let owner = owner.unwrap_or("unknown");
        match self {
            Interruption::ProcessStopped => format!(
                "interrupted: node {owner} stopped while delivering it; due again now, not counted as an attempt"
            ),
            Interruption::LeaseExpired => {
                format!("interrupted: the lease of node {owner} ran out; not counted as an attempt")
            }
            Interruption::NodeSilent => format!(
                "interrupted: node {owner} stopped renewing its leases; due again now, not counted as an attempt"
            ),
        }
    }
}

/// Group commit: `first` and whatever `next` yields at once, while the group weighs less than `max`.
pub fn gather<T>(
    first: T,
    weight: impl Fn(&T) -> usize,
    max: usize,
    mut next: impl FnMut() -> Option<T>,
) -> Vec<T> {
    let mut total = weight(&first);
    let mut group = vec![first];
    while total < max {
        match next() {
            Some(more) => {
                total += weight(&more);
                group.push(more);
            }
            None => break,
        }
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statuses an SQL list names, parsed back.
    fn listed<T: std::str::FromStr>(sql: &str) -> Vec<T>
    where
        T::Err: std::fmt::Debug,
    {
        sql.trim_matches(|c| c == '(' || c == ')')
            .split(", ")
            .map(|s| s.trim_matches('\'').parse().expect("a status"))
            .collect()
    }

    #[test]
    fn sql_lists_agree_with_the_enums() {
        let cancellable: Vec<MessageStatus> = listed(cancellable_sql!());
        let expected: Vec<_> = MessageStatus::ALL
            .iter()
            .copied()
            .filter(|s| s.is_cancellable())
            .collect();
        assert_eq!(cancellable, expected);
        let open: Vec<RecipientStatus> = listed(open_recipients_sql!());
        let finals: Vec<RecipientStatus> = listed(final_recipients_sql!());
        for status in RecipientStatus::ALL {
            assert_eq!(open.contains(status), !status.is_final(), "{status}");
            assert_eq!(finals.contains(status), status.is_final(), "{status}");
        }
        assert_eq!(
            given_back_status_sql!(),
            format!(
                "CASE WHEN attempts > 0 THEN '{}' ELSE '{}' END",
                given_back_status(1),
                given_back_status(0)
            )
        );
    }

    #[test]
    fn settling_gives_up_on_open_recipients_without_a_retry_time() {
        use RecipientStatus as R;
        let deferred = settle(&[R::Delivered, R::Deferred], Some(50), 10);
        assert_eq!(
            deferred,
            Settled {
                status: MessageStatus::Deferred,
                gave_up: false,
                next_attempt_at: Some(50),
                finished_at: None
            }
        );
        let gave_up = settle(&[R::Delivered, R::Deferred], None, 10);
        assert_eq!(gave_up.status, MessageStatus::Delivered);
        assert!(gave_up.gave_up);
        assert_eq!(
            (gave_up.next_attempt_at, gave_up.finished_at),
            (None, Some(10))
        );
        assert_eq!(
            settle(&[R::Deferred], None, 10).status,
            MessageStatus::Failed
        );
        // A relay found down leaves recipients pending with a retry time: due again, not final.
        let pending = settle(&[R::Pending], Some(20), 10);
        assert_eq!(
            (pending.status, pending.next_attempt_at),
            (MessageStatus::Queued, Some(20))
        );
    }

    #[test]
    fn a_recipient_line_names_the_address() {
        let result = RecipientResult {
            position: 0,
            address: "ann@example.test".into(),
            status: RecipientStatus::Delivered,
            smtp_code: Some(250),
            enhanced_status: None,
            reply: Some("2.0.0 ok".into()),
        };
        assert_eq!(
            recipient_event(&result),
            EventLine {
                kind: "delivered",
                recipient: Some("ann@example.test"),
                detail: Some("2.0.0 ok")
            }
        );
    }

    #[test]
    fn attempt_kinds_are_attempt_and_the_status() {
        for status in MessageStatus::ALL {
            assert_eq!(attempt_event(*status, "").kind, format!("attempt_{status}"));
        }
    }

    #[test]
    fn gathering_stops_at_the_weight_bound_or_when_nothing_waits() {
        let mut waiting = vec![3, 3, 3].into_iter();
        assert_eq!(gather(2, |n| *n, 6, || waiting.next()), vec![2, 3, 3]);
        assert_eq!(waiting.next(), Some(3));
        assert_eq!(gather(1, |n| *n, 6, || None), vec![1]);
    }
}
