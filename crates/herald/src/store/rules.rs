//! The store's rules, once for both dialects: which status a new, recorded, cancelled or given-back message
//! takes, which timeline line each change writes, and how writes are grouped into one transaction.
//!
//! Pure code: the SQLite writer and the PostgreSQL statements call these functions (or splice these SQL
//! fragments, checked against the enums by the tests below) instead of repeating the rules, so the two stores
//! cannot drift apart again (they once did: the per-recipient timeline line named the recipient by its
//! position on SQLite and by its address on PostgreSQL).

use super::{MessageStatus, Millis, RecipientResult, RecipientStatus, SuppressionReason};

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
        "('delivered', 'failed', 'cancelled', 'suppressed', 'bounced', 'complained')"
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

/// How a new message is stored once its recipients were checked against the suppression list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptedState {
    pub status: MessageStatus,
    /// `None`: never due (finished at accept).
    pub next_attempt_at: Option<Millis>,
    pub finished_at: Option<Millis>,
}

/// A new message is [`accepted_status`] and [`first_due`], unless every recipient is suppressed: then there
/// is nobody to send to and it is finished at once, `failed` as [`message_status_from`] says of a message
/// delivered to nobody.
pub fn accepted_state(send_at: Option<Millis>, now: Millis, all_suppressed: bool) -> AcceptedState {
    if all_suppressed {
        AcceptedState {
            status: MessageStatus::Failed,
            next_attempt_at: None,
            finished_at: Some(now),
        }
    } else {
        AcceptedState {
            status: accepted_status(send_at, now),
            next_attempt_at: Some(first_due(send_at, now)),
            finished_at: None,
        }
    }
}

/// The form an address is kept in on the suppression list and compared in: lowercased whole (local part
/// too: RFC 5321 lets a server tell `Ann@` from `ann@`, but no mailbox provider does, and mailing an address
/// that asked not to be mailed is the worse mistake), with the domain in ASCII (IDNA), as recipients are sent.
pub fn suppression_address(address: &str) -> String {
    let address = address.trim();
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let domain = idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_lowercase());
            format!("{}@{domain}", local.to_lowercase())
        }
        None => address.to_lowercase(),
    }
}

/// The `scope` column of a suppression: `''` for one that applies to every message.
pub fn scope_column(scope: Option<&str>) -> &str {
    scope.unwrap_or("")
}

/// A `scope` column read back.
pub fn scope_from_column(scope: String) -> Option<String> {
    (!scope.is_empty()).then_some(scope)
}

/// The scopes whose suppressions apply to a message: its tags and its unsubscribe list (an unscoped
/// suppression applies to every message).
pub fn message_scopes<'a>(tags: &'a [String], unsubscribe_list: Option<&'a str>) -> Vec<&'a str> {
    tags.iter()
        .map(String::as_str)
        .chain(unsubscribe_list)
        .collect()
}

/// Whether a stored suppression (its `scope` column and expiry) applies to a message with `scopes` now.
pub fn suppression_applies(
    scope: &str,
    expires_at: Option<Millis>,
    scopes: &[&str],
    now: Millis,
) -> bool {
    expires_at.is_none_or(|at| at > now) && (scope.is_empty() || scopes.contains(&scope))
}

/// Most expired suppressions deleted per commit by [`crate::store::Store::prune_expired_suppressions`]: a
/// million entries expiring on one date must not hold the SQLite writer (nor one PostgreSQL transaction) for
/// long; the same bound as an import's chunk.
pub const EXPIRED_SUPPRESSIONS_CHUNK: i64 = 5_000;

/// Whether a permanent failure says the mailbox does not exist (RFC 3463 §3.2, the 5.1.x address statuses):
/// such an address is suppressed at once. Not 5.1.7/5.1.8 (the sender's address was refused), not the
/// others of the class (5.1.4 ambiguous, 5.1.5 valid, 5.1.9 relayed), and not 5.7.x (policy: the mailbox may
/// well exist).
pub fn is_bad_mailbox(result: &RecipientResult) -> bool {
    if result.status != RecipientStatus::Failed || result.smtp_code.is_none_or(|c| c < 500) {
        return false;
    }
    let Some(enhanced) = result.enhanced_status.as_deref() else {
        return false;
    };
    matches!(
        enhanced.strip_prefix("5.1."),
        Some("0" | "1" | "2" | "3" | "6" | "10")
    )
}

/// The suppression a bad-mailbox failure ([`is_bad_mailbox`]) of message `id` adds: every message, for good.
pub fn hard_bounce(result: &RecipientResult, id: &str) -> super::NewSuppression {
    super::NewSuppression {
        address: result.address.clone(),
        scope: None,
        reason: SuppressionReason::HardBounce,
        source_message: Some(id.to_owned()),
        expires_at: None,
    }
}

/// The timeline kind of a recipient put on (or found on) the suppression list.
pub const EVENT_SUPPRESSED: &str = "suppressed";

/// The detail of a [`EVENT_SUPPRESSED`] line: why, and for which list.
pub fn suppression_detail(reason: SuppressionReason, scope: Option<&str>) -> String {
    match scope {
        Some(scope) => format!("{reason} (scope {scope})"),
        None => reason.to_string(),
    }
}

/// A [`EVENT_SUPPRESSED`] line for `address`, its detail from [`suppression_detail`] (or, at accept,
/// that the recipient was on the list).
pub fn suppressed_event<'a>(address: &'a str, detail: &'a str) -> EventLine<'a> {
    EventLine {
        kind: EVENT_SUPPRESSED,
        recipient: Some(address),
        detail: Some(detail),
    }
}

/// The detail of the line an accept writes for a recipient found on the suppression list.
pub const SUPPRESSED_AT_ACCEPT: &str = "on the suppression list: not sent";

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

/// The detail of the line of a recipient failed because its message gave up (no retry time left).
pub const GAVE_UP_DETAIL: &str = "gave up: no retry left within HERALD_MAX_AGE";

/// The line of a recipient still open when its message gave up: it is failed now, and says so on the
/// timeline like any other recipient's result (so the `message.failed` webhook is sent for it too).
pub fn gave_up_event(address: &str) -> EventLine<'_> {
    EventLine {
        kind: RecipientStatus::Failed.as_str(),
        recipient: Some(address),
        detail: Some(GAVE_UP_DETAIL),
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
    fn suppression_addresses_fold_case_and_idn_domains() {
        assert_eq!(suppression_address(" Ann@Example.COM "), "ann@example.com");
        assert_eq!(
            suppression_address("Jo@Bücher.example"),
            "jo@xn--bcher-kva.example"
        );
        assert_eq!(
            suppression_address("jo@xn--bcher-kva.example"),
            "jo@xn--bcher-kva.example"
        );
    }

    #[test]
    fn a_suppression_applies_within_its_scope_until_it_expires() {
        let tags = ["news".to_owned()];
        let scopes = message_scopes(&tags, Some("weekly"));
        assert!(suppression_applies("", None, &scopes, 10));
        assert!(suppression_applies("news", None, &scopes, 10));
        assert!(suppression_applies("weekly", Some(11), &scopes, 10));
        assert!(!suppression_applies("weekly", Some(10), &scopes, 10));
        assert!(!suppression_applies("billing", None, &scopes, 10));
        assert!(!suppression_applies("", Some(5), &[], 10));
    }

    #[test]
    fn only_bad_mailbox_failures_suppress() {
        let result = |status, code, enhanced: &str| RecipientResult {
            position: 0,
            address: "a@b.example".into(),
            status,
            smtp_code: Some(code),
            enhanced_status: Some(enhanced.into()),
            reply: None,
        };
        use RecipientStatus as R;
        for enhanced in ["5.1.1", "5.1.2", "5.1.10", "5.1.0", "5.1.3", "5.1.6"] {
            assert!(
                is_bad_mailbox(&result(R::Failed, 550, enhanced)),
                "{enhanced}"
            );
        }
        for enhanced in ["5.7.1", "5.1.7", "5.1.8", "5.2.2", "5.1.1x", "5.1.11"] {
            assert!(
                !is_bad_mailbox(&result(R::Failed, 550, enhanced)),
                "{enhanced}"
            );
        }
        assert!(!is_bad_mailbox(&result(R::Deferred, 450, "4.1.1")));
        assert!(!is_bad_mailbox(&result(R::Failed, 450, "5.1.1")));
    }

    #[test]
    fn a_message_with_every_recipient_suppressed_is_finished_at_accept() {
        let done = accepted_state(Some(99), 10, true);
        assert_eq!(
            (done.status, done.next_attempt_at, done.finished_at),
            (MessageStatus::Failed, None, Some(10))
        );
        let later = accepted_state(Some(99), 10, false);
        assert_eq!(
            (later.status, later.next_attempt_at, later.finished_at),
            (MessageStatus::Scheduled, Some(99), None)
        );
        use RecipientStatus as R;
        assert_eq!(
            message_status_from(&[R::Suppressed, R::Delivered]),
            MessageStatus::Delivered
        );
        assert_eq!(
            message_status_from(&[R::Suppressed, R::Pending]),
            MessageStatus::Queued
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
