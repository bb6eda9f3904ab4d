//! Delivery through an SMTP relay, on herald-smtp's pool.

use herald_smtp::{BodySegment, Delivery as SmtpDelivery, Error, Pool, RelayFault, Status};

use super::{Delivery, Envelope, RecipientReply, RelayProblem, Transport, Verdict};
use crate::store::RawSegment;

/// One relay: a pool with a hard connection cap, reused across messages.
pub struct SmtpTransport {
    pool: Pool,
    name: String,
}

impl SmtpTransport {
    /// `name` is how the relay appears in events and logs (never with credentials).
    pub fn new(pool: Pool, name: impl Into<String>) -> Self {
        Self {
            pool,
            name: name.into(),
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// The herald-smtp form of one message.
fn smtp_message(
    envelope: Envelope,
    body: Vec<RawSegment>,
) -> (herald_smtp::Envelope, Vec<BodySegment>) {
    let mut smtp_envelope = herald_smtp::Envelope::new(envelope.sender, envelope.recipients);
    // Base64 segments (dot_safe) are ASCII by construction; only the others can carry 8-bit text.
    smtp_envelope.eight_bit = body.iter().any(|s| !s.dot_safe() && !s.bytes().is_ascii());
    let segments = body
        .into_iter()
        .map(|segment| match segment {
            RawSegment::Literal {
                bytes,
                dot_safe: true,
            } => BodySegment::dot_safe(bytes),
            RawSegment::Literal {
                bytes,
                dot_safe: false,
            } => BodySegment::new(bytes),
            RawSegment::Shared {
                blob,
                dot_safe: true,
            } => BodySegment::dot_safe(blob.bytes.clone()),
            RawSegment::Shared {
                blob,
                dot_safe: false,
            } => BodySegment::new(blob.bytes.clone()),
        })
        .collect();
    (smtp_envelope, segments)
}

fn delivery_of(result: Result<SmtpDelivery, Error>) -> Delivery {
    match result {
        Ok(delivery) => Delivery::Replies(
            delivery
                .recipients
                .into_iter()
                .map(|outcome| RecipientReply {
                    verdict: match outcome.status {
                        Status::Accepted => Verdict::Accepted,
                        Status::Transient => Verdict::Transient,
                        Status::Permanent => Verdict::Permanent,
                    },
                    code: Some(outcome.reply.code),
                    enhanced_status: outcome.reply.enhanced.map(|e| e.to_string()),
                    text: outcome.reply.to_string(),
                })
                .collect(),
        ),
        Err(error) => {
            let problem = relay_problem(&error);
            Delivery::Failed {
                // A relay-level failure says nothing about the message: it waits for the relay, whatever
                // the reply code (a 535 is permanent for the credentials, not for the mail).
                transient: problem.is_some() || error.is_transient(),
                problem,
                reason: error.to_string(),
            }
        }
    }
}

impl Transport for SmtpTransport {
    async fn deliver(&self, envelope: Envelope, body: Vec<RawSegment>) -> Delivery {
        let (envelope, segments) = smtp_message(envelope, body);
        delivery_of(self.pool.send(&envelope, &segments).await)
    }

    /// One pooled session, the messages pipelined (each message's content goes out with the next one's
    /// MAIL/RCPT/DATA); a result per message, per recipient, as with `deliver`.
    async fn deliver_batch(&self, messages: Vec<(Envelope, Vec<RawSegment>)>) -> Vec<Delivery> {
        if messages.len() == 1 {
            let (envelope, body) = messages.into_iter().next().expect("one message");
            return vec![self.deliver(envelope, body).await];
        }
        let messages: Vec<_> = messages
            .into_iter()
            .map(|(envelope, body)| smtp_message(envelope, body))
            .collect();
        let borrowed: Vec<(&herald_smtp::Envelope, &[BodySegment])> = messages
            .iter()
            .map(|(envelope, segments)| (envelope, segments.as_slice()))
            .collect();
        self.pool
            .send_batch(&borrowed)
            .await
            .into_iter()
            .map(delivery_of)
            .collect()
    }

    fn sessions(&self) -> usize {
        self.pool.config().max_connections
    }

    fn set_sessions(&self, sessions: usize) {
        self.pool.set_max_connections(sessions);
    }

    fn open_sessions(&self) -> usize {
        self.pool.stats().open
    }

    async fn maintain(&self) {
        self.pool.close_expired().await;
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// The engine's name for a failure that is the relay's, not the message's (herald-smtp decides which are):
/// the engine pauses the relay instead of spending the message's attempts.
fn relay_problem(error: &Error) -> Option<RelayProblem> {
    Some(match error.relay_fault()? {
        RelayFault::Unreachable => RelayProblem::Unreachable,
        RelayFault::Authentication => RelayProblem::Authentication,
        RelayFault::Certificate => RelayProblem::Certificate,
        RelayFault::StartTls => RelayProblem::StartTls,
    })
}
