//! The delivery engine: claims due messages, routes each to its relay, delivers, records what happened.
//!
//! One loop claims bounded batches under a lease (never more than there are free delivery slots, so memory is
//! bounded by configuration, not by the queue: DESIGN.md invariant 6) and routes each message by its sender's
//! domain to a relay (`route.rs`). Each relay has its own queue and lanes (`lane.rs`): a lane pipelines a
//! batch of messages on one pooled session, within the relay's rate and per-domain limits (`limits.rs`).
//! Outcomes, one per recipient, are recorded through the store's group commit. No database transaction spans
//! network I/O (invariant 2): the claim commits before the first byte goes out.

mod capture;
mod health;
mod heartbeat;
mod lane;
mod limits;
mod route;
mod smtp;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use rand::{SeedableRng, rngs::StdRng};
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};

pub use capture::CaptureTransport;
pub use health::{RelayBoard, RelayProblem, RelaySnapshot, RelayState};
pub use heartbeat::{host_name, run_heartbeat};
pub use limits::{DEFAULT_BATCH, RateLimit, RelayLimits, TokioClock};
pub use route::{Route, RouteError, Routes};
pub use smtp::SmtpTransport;

use crate::{
    clock::Clock,
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
    /// The transaction failed as a whole. Nothing was decided for any recipient. With a `problem`, the relay
    /// itself could not be used (connection refused, 421, credentials refused, certificate not trusted,
    /// STARTTLS missing): the engine pauses the relay instead of spending the message's attempts.
    Failed {
        transient: bool,
        problem: Option<RelayProblem>,
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

    /// Several messages in one go, one result per message in order. A relay pipelines them on one session
    /// (one round trip per message instead of two); the default sends them one after another.
    fn deliver_batch(
        &self,
        messages: Vec<(Envelope, Vec<RawSegment>)>,
    ) -> impl std::future::Future<Output = Vec<Delivery>> + Send {
        async move {
            let mut results = Vec::with_capacity(messages.len());
            for (envelope, body) in messages {
                results.push(self.deliver(envelope, body).await);
            }
            results
        }
    }

    /// How many batches may be in flight at once: an SMTP pool's connection cap.
    fn sessions(&self) -> usize {
        1
    }

    /// Lowers or raises the cap on sessions at once (an SMTP pool's hard connection cap) to this node's
    /// share of [`Transport::sessions`]; sessions busy now finish first.
    fn set_sessions(&self, _sessions: usize) {}

    /// Sessions open now (an SMTP pool's idle and busy connections); a transport without sessions has none.
    fn open_sessions(&self) -> usize {
        0
    }

    /// Housekeeping the engine runs now and then (an SMTP pool closes sessions past their idle time).
    fn maintain(&self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }

    /// Called once when the engine stops, after the last delivery (an SMTP pool says QUIT).
    fn close(&self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }

    /// A short name for logs and events (`smtp://relay.example:587`, `capture`).
    fn describe(&self) -> String;
}

/// How long the engine waits after a failed claim before the next.
const CLAIM_RETRY: Duration = Duration::from_millis(200);

/// Default of [`EngineOptions::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 256;

/// Default of [`EngineOptions::lease`]: short, because a live node renews its leases every third of it; a
/// node that dies gives its messages back within this time.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// This node's name in leases.
    pub owner: String,
    /// Messages claimed and not yet finished, across all relays (bounds memory; connections are bounded by
    /// each relay's pool).
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
    /// How often transports do their housekeeping (closing idle sessions past their time).
    pub maintenance: Duration,
    /// Where the engine shows each relay's state (the dashboard reads it).
    pub board: RelayBoard,
    /// How many nodes are delivering from this database now, counting this one (from the nodes' heartbeat
    /// rows; always 1 on SQLite). Each relay's `pool=`, `rate=` and `domain_concurrency=` are cluster totals
    /// that live nodes split (`limits::Share`).
    pub live_nodes: watch::Receiver<u32>,
    /// With `HERALD_BOUNCE_DOMAIN` (issue 12): each transaction's envelope sender is a signed VERP address
    /// naming the message (and its recipient, when it has one), instead of the message's sender.
    pub verp: Option<Arc<crate::bounce::Verp>>,
}

/// A live-node count that always says 1: one process alone keeps its limits whole.
pub fn single_node() -> watch::Receiver<u32> {
    // A receiver whose sender is gone keeps its last value; its `changed()` answers `Err` at once, which a
    // reader takes as "no change will ever come".
    watch::channel(1).1
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            owner: format!("node-{}", uuid::Uuid::now_v7()),
            concurrency: DEFAULT_CONCURRENCY,
            lease: DEFAULT_LEASE,
            retry: RetryPolicy::default(),
            relay_pause: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            idle_poll: Duration::from_secs(1),
            maintenance: Duration::from_secs(10),
            board: RelayBoard::default(),
            live_nodes: single_node(),
            verp: None,
        }
    }
}

/// The engine. `run` until the shutdown signal turns true.
pub struct Engine<T: Transport> {
    store: Store,
    routes: Routes<T>,
    options: EngineOptions,
}

impl<T: Transport> Engine<T> {
    /// One transport for all mail, without rate or domain limits.
    pub fn new(store: Store, transport: T, options: EngineOptions) -> Self {
        let name = transport.describe();
        Self::with_routes(
            store,
            Routes::single(Route::new(name, transport, RelayLimits::default())),
            options,
        )
    }

    /// Several relays, chosen per message by the sender's domain, each with its own limits.
    pub fn with_routes(store: Store, routes: Routes<T>, options: EngineOptions) -> Self {
        Self {
            store,
            routes,
            options,
        }
    }

    /// Delivers until `shutdown` becomes true; then stops claiming, lets in-flight transactions finish within
    /// the grace period, records their outcomes and gives back every lease it still holds.
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), crate::store::StoreError> {
        let Engine {
            store,
            routes,
            options,
        } = self;
        let concurrency = options.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(concurrency));
        let claim_at_least = (concurrency / 4).clamp(1, 256);
        let (outcomes_tx, mut outcomes_rx) = mpsc::unbounded_channel::<AttemptOutcome>();
        let in_flight = InFlight::default();
        let recorder = {
            let store = store.clone();
            let owner = options.owner.clone();
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                // Outcomes that finish together are recorded in one commit, at once: every message whose relay
                // said 250 but whose outcome is not committed yet would be sent again if this node died now.
                while let Some(first) = outcomes_rx.recv().await {
                    let mut batch = vec![first];
                    while let Ok(more) = outcomes_rx.try_recv() {
                        batch.push(more);
                    }
                    let ids: Vec<String> = batch.iter().map(|o| o.id.clone()).collect();
                    if let Err(error) = store.record(&owner, batch).await {
                        // No longer renewed: the leases run out and the messages are retried, at-least-once
                        // (invariant 3).
                        tracing::error!(
                            error = &error as &dyn std::error::Error,
                            "could not record delivery outcomes"
                        );
                    }
                    in_flight.remove(&ids);
                }
            })
        };
        let renewal = tokio::spawn(renew_leases(
            store.clone(),
            options.owner.clone(),
            options.lease,
            in_flight.clone(),
        ));
        let outcomes = Arc::new(Outcomes {
            tx: outcomes_tx,
            clock: store.clock().clone(),
            retry: options.retry.clone(),
            relay_pause: options.relay_pause,
        });
        let (relays, route_table) = routes.into_parts();
        let workers: Vec<Arc<lane::RelayWorker<T>>> = relays
            .into_iter()
            .map(|route| Arc::new(lane::RelayWorker::new(route, &options.board)))
            .collect();
        let cluster = tokio::spawn(lane::follow_live_nodes(
            workers.clone(),
            options.live_nodes.clone(),
            shutdown.clone(),
        ));
        let mut lanes = JoinSet::new();
        for worker in &workers {
            for _ in 0..worker.lanes() {
                lanes.spawn(lane::run_lane(
                    worker.clone(),
                    outcomes.clone(),
                    options.verp.clone(),
                    shutdown.clone(),
                ));
            }
        }
        let maintenance = {
            let workers = workers.clone();
            let every = options.maintenance;
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    }
                    for worker in &workers {
                        worker.transport.maintain().await;
                        worker
                            .health
                            .set_open_sessions(worker.transport.open_sessions());
                    }
                }
            })
        };

        loop {
            if *shutdown.borrow() {
                break;
            }
            let free = slots.available_permits();
            if free < claim_at_least {
                // Most slots busy: wait until a quarter of them are free, so that a claim (one commit) takes a
                // batch worth a commit instead of one message per freed slot.
                tokio::select! {
                    permits = slots.acquire_many(claim_at_least as u32) => drop(permits),
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            // A failed claim (PostgreSQL aborting a transaction as a deadlock victim, a dropped connection)
            // changed nothing: log it and try again shortly. Ending the engine here would stop delivery
            // for good while the API kept accepting mail.
            let claimed = match store
                .claim(&options.owner, options.lease, free as u32)
                .await
            {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "claiming due messages failed; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(CLAIM_RETRY) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            if claimed.is_empty() {
                let now = store.clock().now();
                let next_due = store.next_due().await.unwrap_or_else(|error| {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "reading the next due time failed; polling"
                    );
                    None
                });
                let wait = match next_due {
                    Some(due) if due > now => {
                        Duration::from_millis((due - now) as u64).min(options.idle_poll)
                    }
                    Some(_) => Duration::from_millis(10),
                    None => options.idle_poll,
                };
                tokio::select! {
                    _ = store.work_signal().notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            in_flight.insert(claimed.iter().map(|m| m.id.clone()));
            let mut per_relay: Vec<Vec<_>> = workers.iter().map(|_| Vec::new()).collect();
            for message in claimed {
                let permit = slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let index = route_table.pick(&message.sender);
                let worker = &workers[index];
                match worker.paused_for() {
                    // A paused relay's mail waits in the store, not in memory, so it holds no slot that
                    // another relay's mail could use.
                    Some(left) => outcomes.send(outcomes.relay_paused(&worker.name, message, left)),
                    None => per_relay[index].push((message, permit)),
                }
            }
            for (worker, messages) in workers.iter().zip(per_relay) {
                if !messages.is_empty() {
                    worker.push(messages);
                }
            }
        }

        // Shutdown: no new claims or batches; in-flight transactions get the grace period.
        for worker in &workers {
            worker.close();
        }
        let grace = tokio::time::sleep(options.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = lanes.join_next() => if next.is_none() { break },
                _ = &mut grace => {
                    tracing::warn!(left = lanes.len(), "shutdown grace over; abandoning in-flight deliveries");
                    lanes.abort_all();
                    while lanes.join_next().await.is_some() {}
                    break;
                }
            }
        }
        maintenance.abort();
        let _ = maintenance.await;
        cluster.abort();
        let _ = cluster.await;
        for worker in &workers {
            worker.transport.close().await;
        }
        drop(workers);
        drop(outcomes);
        let _ = recorder.await;
        // Renewed until now: a transaction still finishing in the grace period keeps its lease.
        renewal.abort();
        let _ = renewal.await;
        let released = store.release_leases(&options.owner).await?;
        tracing::info!(released, "delivery engine stopped");
        Ok(())
    }
}

/// The messages this node claimed and has not recorded yet: the leases its renewals extend. A message leaves
/// when its outcome was recorded, or when recording failed (then its lease runs out and it is retried).
#[derive(Debug, Clone, Default)]
struct InFlight(Arc<Mutex<HashSet<String>>>);

impl InFlight {
    fn insert(&self, ids: impl IntoIterator<Item = String>) {
        self.0.lock().expect("in-flight lock").extend(ids);
    }

    fn remove(&self, ids: &[String]) {
        let mut held = self.0.lock().expect("in-flight lock");
        for id in ids {
            held.remove(id);
        }
    }

    fn snapshot(&self) -> Vec<String> {
        self.0
            .lock()
            .expect("in-flight lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// Every third of a lease, extends the leases of every message still in flight, in one commit per renewal: a
/// live node never loses a message however slow its relay is, while a node that stops (crash, partition) loses
/// them within one lease. Two renewals in a row may fail before a lease runs out.
async fn renew_leases(store: Store, owner: String, lease: Duration, in_flight: InFlight) {
    let every = (lease / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ids = in_flight.snapshot();
        if ids.is_empty() {
            continue;
        }
        match store.renew_leases(&owner, lease, &ids).await {
            Ok(renewed) => {
                metrics::counter!("herald_lease_renewals_total").increment(renewed);
                tracing::debug!(renewed, held = ids.len(), "leases renewed");
            }
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    held = ids.len(),
                    "renewing leases failed; retrying at the next renewal"
                )
            }
        }
    }
}

/// Where lanes send finished attempts, with what they need to schedule the next one.
pub(crate) struct Outcomes {
    tx: mpsc::UnboundedSender<AttemptOutcome>,
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
    relay_pause: Duration,
}

impl Outcomes {
    fn send(&self, outcome: AttemptOutcome) {
        // The recorder only stops after every sender is gone.
        let _ = self.tx.send(outcome);
    }

    /// When a message waiting for its relay should be tried again: `wait` from now, unless that passes the
    /// maximum age (then `None`: give up, like any retry).
    fn wait_for_relay(&self, created_at: Millis, wait: Duration) -> Option<Millis> {
        let retry_at = self.clock.now() + wait.as_millis() as Millis;
        let deadline = created_at + self.retry.max_age.as_millis() as Millis;
        (retry_at <= deadline).then_some(retry_at)
    }

    /// A message for a paused relay goes back to the queue until the pause ends, without counting an attempt.
    fn relay_paused(&self, relay: &str, message: ClaimedMessage, left: Duration) -> AttemptOutcome {
        let retry_at = self.wait_for_relay(message.created_at, left);
        let reason = format!("relay {relay} is paused after a relay-level failure");
        let recipients = message
            .recipients
            .iter()
            .map(|recipient| RecipientResult {
                position: recipient.position,
                address: recipient.address.clone(),
                status: RecipientStatus::Deferred,
                smtp_code: None,
                enhanced_status: None,
                reply: Some(reason.clone()),
            })
            .collect();
        let mut detail = format!("waiting: {reason}");
        if retry_at.is_none() {
            detail.push_str("; gave up: the wait would pass the maximum age");
        }
        AttemptOutcome {
            id: message.id,
            recipients,
            retry_at,
            detail,
            counts_attempt: false,
        }
    }
}

/// Turns a transport's answer for one message into per-recipient results and the next step.
fn outcome_of(
    relay: &str,
    message: ClaimedMessage,
    delivery: Delivery,
    outcomes: &Outcomes,
) -> AttemptOutcome {
    let (mut results, failure): (Vec<RecipientResult>, _) = match delivery {
        Delivery::Replies(replies) => (
            message
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
                    enhanced_status: reply.enhanced_status,
                    reply: Some(reply.text),
                })
                .collect(),
            None,
        ),
        Delivery::Failed {
            transient,
            problem,
            reason,
        } => (
            message
                .recipients
                .iter()
                .map(|recipient| RecipientResult {
                    position: recipient.position,
                    address: recipient.address.clone(),
                    status: if transient {
                        RecipientStatus::Deferred
                    } else {
                        RecipientStatus::Failed
                    },
                    smtp_code: None,
                    enhanced_status: None,
                    reply: Some(reason.clone()),
                })
                .collect(),
            Some((problem.is_some(), reason)),
        ),
    };
    // A transport that answered for fewer recipients than it was given decided nothing for the rest.
    for recipient in message.recipients.iter().skip(results.len()) {
        results.push(RecipientResult {
            position: recipient.position,
            address: recipient.address.clone(),
            status: RecipientStatus::Deferred,
            smtp_code: None,
            enhanced_status: None,
            reply: Some("no reply for this recipient".into()),
        });
    }
    let deferred = results
        .iter()
        .filter(|r| r.status == RecipientStatus::Deferred)
        .count();
    let delivered = results
        .iter()
        .filter(|r| r.status == RecipientStatus::Delivered)
        .count();
    let failed = results.len() - delivered - deferred;
    let relay_down = matches!(failure, Some((true, _)));
    let retry_at = if deferred == 0 {
        None
    } else if relay_down {
        // Not the message's fault: wait for the relay without counting an attempt, up to the maximum age
        // like any retry.
        outcomes.wait_for_relay(message.created_at, outcomes.relay_pause)
    } else {
        let mut rng = StdRng::from_os_rng();
        outcomes.retry.next_attempt(
            message.attempts + 1,
            message.created_at,
            outcomes.clock.now(),
            &mut rng,
        )
    };
    let mut detail =
        format!("via {relay}: {delivered} delivered, {deferred} deferred, {failed} failed");
    if deferred > 0 && retry_at.is_none() {
        detail.push_str("; gave up: the next retry would pass the maximum age");
    }
    if let Some((_, reason)) = &failure {
        detail.push_str(": ");
        detail.push_str(reason);
    }
    AttemptOutcome {
        id: message.id,
        recipients: results,
        retry_at,
        detail,
        counts_attempt: !relay_down,
    }
}
