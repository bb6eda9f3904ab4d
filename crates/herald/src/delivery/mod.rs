//! The delivery engine: claims due messages, hands them to a transport, records what happened.
//!
//! One loop claims bounded batches under a lease (never more than there are free delivery slots, so memory is
//! bounded by configuration, not by the queue: DESIGN.md invariant 6); each message is delivered in its own
//! task; outcomes are recorded through the store's group commit. No database transaction spans network I/O
//! (invariant 2): the claim commits before the first byte goes out.

mod capture;
mod smtp;

use std::{sync::Arc, time::Duration};

use rand::{SeedableRng, rngs::StdRng};
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};

pub use capture::CaptureTransport;
pub use smtp::SmtpTransport;

use crate::{
    queue::RetryPolicy,
    store::{
        AttemptOutcome, ClaimedMessage, Millis, RawSegment, RecipientResult, RecipientStatus, Store,
    },
};

/// Who a message goes to and from, for the SMTP envelope.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub sender: String,
    pub recipients: Vec<String>,
}

/// How one recipient fared in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReply {
    pub verdict: Verdict,
    pub code: Option<u16>,
    pub enhanced_status: Option<String>,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Transient,
    Permanent,
}

/// The result of handing one message to a transport.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// The transaction ran: one reply per envelope recipient, in envelope order.
    Replies(Vec<RecipientReply>),
    /// The relay itself could not be used (connection refused, 421, TLS failure …). Nothing was decided for any
    /// recipient; `relay_down` asks the engine to pause the relay instead of burning the message's attempts.
    Failed {
        transient: bool,
        relay_down: bool,
        reason: String,
    },
}

/// Something that can carry a message to its recipients: an SMTP relay pool, or the built-in capture inbox.
pub trait Transport: Send + Sync + 'static {
    fn deliver(
        &self,
        envelope: Envelope,
        body: Vec<RawSegment>,
    ) -> impl std::future::Future<Output = Delivery> + Send;

    /// A short name for logs and events (`smtp://relay.example:587`, `capture`).
    fn describe(&self) -> String;
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// This node's name in leases.
    pub owner: String,
    /// Messages in flight at once (bounds memory and connections).
    pub concurrency: usize,
    /// How long a claim holds a message before another worker may take it over.
    pub lease: Duration,
    pub retry: RetryPolicy,
    /// How long a relay found down is left alone before the next try.
    pub relay_pause: Duration,
    /// On shutdown, how long in-flight transactions may take to finish.
    pub shutdown_grace: Duration,
    /// Longest idle sleep (a scheduled message's time is found by polling no later than this).
    pub idle_poll: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            owner: format!("node-{}", uuid::Uuid::now_v7()),
            concurrency: 64,
            lease: Duration::from_secs(15 * 60),
            retry: RetryPolicy::default(),
            relay_pause: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            idle_poll: Duration::from_secs(1),
        }
    }
}

/// The engine. `run` until the shutdown signal turns true.
pub struct Engine<T: Transport> {
    store: Store,
    transport: Arc<T>,
    options: EngineOptions,
}

impl<T: Transport> Engine<T> {
    pub fn new(store: Store, transport: T, options: EngineOptions) -> Self {
        Self {
            store,
            transport: Arc::new(transport),
            options,
        }
    }

    /// Delivers until `shutdown` becomes true; then stops claiming, lets in-flight transactions finish within
    /// the grace period, records their outcomes and gives back every lease it still holds.
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), crate::store::StoreError> {
        let slots = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let (outcomes_tx, mut outcomes_rx) = mpsc::unbounded_channel::<AttemptOutcome>();
        let recorder = {
            let store = self.store.clone();
            let owner = self.options.owner.clone();
            tokio::spawn(async move {
                // Outcomes that finish together are recorded in one commit.
                while let Some(first) = outcomes_rx.recv().await {
                    let mut batch = vec![first];
                    while let Ok(more) = outcomes_rx.try_recv() {
                        batch.push(more);
                    }
                    if let Err(error) = store.record(&owner, batch).await {
                        // The leases expire and the messages are retried: at-least-once (invariant 3).
                        tracing::error!(%error, "could not record delivery outcomes");
                    }
                }
            })
        };
        let mut in_flight = JoinSet::new();
        let mut relay_paused_until: Option<tokio::time::Instant> = None;
        let (relay_down_tx, mut relay_down_rx) = mpsc::unbounded_channel::<()>();

        loop {
            if *shutdown.borrow() {
                break;
            }
            while relay_down_rx.try_recv().is_ok() {
                relay_paused_until = Some(tokio::time::Instant::now() + self.options.relay_pause);
            }
            while in_flight.try_join_next().is_some() {}
            if let Some(until) = relay_paused_until {
                if tokio::time::Instant::now() < until {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
                relay_paused_until = None;
            }
            let free = slots.available_permits() as u32;
            if free == 0 {
                // Every slot busy: wait for one to free up.
                tokio::select! {
                    _ = in_flight.join_next() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let claimed = self
                .store
                .claim(&self.options.owner, self.options.lease, free)
                .await?;
            if claimed.is_empty() {
                let now = self.store.clock().now();
                let wait = match self.store.next_due().await? {
                    Some(due) if due > now => {
                        Duration::from_millis((due - now) as u64).min(self.options.idle_poll)
                    }
                    Some(_) => Duration::from_millis(10),
                    None => self.options.idle_poll,
                };
                tokio::select! {
                    _ = self.store.work_signal().notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            for message in claimed {
                let permit = slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let transport = self.transport.clone();
                let outcomes = outcomes_tx.clone();
                let relay_down = relay_down_tx.clone();
                let retry = self.options.retry.clone();
                let clock = self.store.clock().clone();
                let relay_pause = self.options.relay_pause.as_millis() as Millis;
                in_flight.spawn(async move {
                    let _permit = permit;
                    let created_at = message.created_at;
                    let attempts = message.attempts;
                    let (mut outcome, was_relay_down) = attempt(&*transport, message, |failed| {
                        let mut rng = StdRng::from_os_rng();
                        retry.next_attempt(attempts + failed, created_at, clock.now(), &mut rng)
                    })
                    .await;
                    if was_relay_down {
                        let _ = relay_down.send(());
                        // Not the message's fault: wait for the relay without counting an attempt, up to the
                        // maximum age like any retry.
                        let now = clock.now();
                        let deadline = created_at + retry.max_age.as_millis() as Millis;
                        outcome.counts_attempt = false;
                        outcome.retry_at =
                            (now + relay_pause <= deadline).then_some(now + relay_pause);
                    }
                    let _ = outcomes.send(outcome);
                });
            }
        }

        // Shutdown: no new claims; in-flight transactions get the grace period.
        let grace = tokio::time::sleep(self.options.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = in_flight.join_next() => if next.is_none() { break },
                _ = &mut grace => {
                    tracing::warn!(left = in_flight.len(), "shutdown grace over; abandoning in-flight deliveries");
                    in_flight.abort_all();
                    break;
                }
            }
        }
        drop(outcomes_tx);
        let _ = recorder.await;
        let released = self.store.release_leases(&self.options.owner).await?;
        tracing::info!(released, "delivery engine stopped");
        Ok(())
    }
}

/// One attempt of one message: deliver, then turn the transport's answer into per-recipient results.
/// `retry_at(extra_failures)` gives the next try time (or `None`: give up) for transient results.
async fn attempt<T: Transport>(
    transport: &T,
    message: ClaimedMessage,
    retry_at: impl Fn(u32) -> Option<Millis>,
) -> (AttemptOutcome, bool) {
    let envelope = Envelope {
        sender: message.sender.clone(),
        recipients: message
            .recipients
            .iter()
            .map(|r| r.address.clone())
            .collect(),
    };
    let delivery = transport.deliver(envelope, message.raw).await;
    let mut relay_down = false;
    let results: Vec<RecipientResult> = match &delivery {
        Delivery::Replies(replies) => message
            .recipients
            .iter()
            .zip(replies)
            .map(|(recipient, reply)| RecipientResult {
                position: recipient.position,
                address: recipient.address.clone(),
                status: match reply.verdict {
                    Verdict::Accepted => RecipientStatus::Delivered,
                    Verdict::Transient => RecipientStatus::Deferred,
                    Verdict::Permanent => RecipientStatus::Failed,
                },
                smtp_code: reply.code,
                enhanced_status: reply.enhanced_status.clone(),
                reply: Some(reply.text.clone()),
            })
            .collect(),
        Delivery::Failed {
            transient,
            relay_down: down,
            reason,
        } => {
            relay_down = *down;
            message
                .recipients
                .iter()
                .map(|recipient| RecipientResult {
                    position: recipient.position,
                    address: recipient.address.clone(),
                    status: if *transient {
                        RecipientStatus::Deferred
                    } else {
                        RecipientStatus::Failed
                    },
                    smtp_code: None,
                    enhanced_status: None,
                    reply: Some(reason.clone()),
                })
                .collect()
        }
    };
    let deferred = results
        .iter()
        .filter(|r| r.status == RecipientStatus::Deferred)
        .count();
    let retry_at = if deferred > 0 { retry_at(1) } else { None };
    let delivered = results
        .iter()
        .filter(|r| r.status == RecipientStatus::Delivered)
        .count();
    let failed = results.len() - delivered - deferred;
    let mut detail = format!(
        "via {}: {delivered} delivered, {deferred} deferred, {failed} failed",
        transport.describe()
    );
    if deferred > 0 && retry_at.is_none() {
        detail.push_str("; gave up: the next retry would pass the maximum age");
    }
    if let Delivery::Failed { reason, .. } = &delivery {
        detail.push_str(": ");
        detail.push_str(reason);
    }
    (
        AttemptOutcome {
            id: message.id,
            recipients: results,
            retry_at,
            detail,
            counts_attempt: true,
        },
        relay_down,
    )
}
