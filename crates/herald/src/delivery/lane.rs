//! One relay's side of the engine: a queue of claimed messages and a few lanes that drain it.
//!
//! A lane is one session's worth of work: it takes a batch of messages (as many as are waiting, up to
//! `batch`, skipping messages whose recipient domain is at its cap), takes the rate allowance for them, and
//! hands them to the transport in one call, which pipelines them on one pooled session. There are as many
//! lanes as the pool has connections, so the hard connection cap is never the thing lanes queue on.
//!
//! A relay's `pool=`, `rate=` and `domain_concurrency=` are cluster totals: the engine tells the relay how many
//! nodes are live and the relay takes its share ([`Share`]) at once, without interrupting a batch in flight.
//! There is a lane for every session of the whole pool; lanes beyond this node's share wait, a lane above a
//! lowered share finishes its batch first, and the pool's hard cap moves with the share.
//!
//! A relay found down pauses only this relay: its lanes defer what they hold without spending attempts, and
//! the engine defers new claims for it, while other relays' lanes carry on.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, OwnedSemaphorePermit, watch};

use super::{
    Delivery, Envelope, Outcomes, RateLimit, RelayLimits, RelayProblem, Route, Transport,
    limits::Share, outcome_of,
};

/// The longest pause after problems in a row that need a person (refused credentials, bad certificate).
const LONGEST_PAUSE: Duration = Duration::from_secs(5 * 60);
use crate::store::ClaimedMessage;

/// A claimed message waiting for a lane; the permit is its slot in the engine's in-flight bound.
pub(super) struct Job {
    pub message: ClaimedMessage,
    pub permit: OwnedSemaphorePermit,
    /// Distinct recipient domains (lower case), only tracked when the relay caps domain concurrency.
    domains: Vec<Arc<str>>,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Job>,
    /// Batches in flight per recipient domain.
    busy: HashMap<Arc<str>, usize>,
    closed: bool,
}

pub(super) struct RelayWorker<T> {
    pub name: String,
    pub transport: T,
    limits: RelayLimits,
    rate: Option<RateLimit>,
    /// The whole cluster's sessions for this relay (the pool's configured size): one lane each.
    total_sessions: usize,
    /// Lanes allowed to take batches now (this node's share of the sessions; all of them once closed, so
    /// that waiting lanes see the close).
    lanes_allowed: watch::Sender<usize>,
    next_lane: AtomicUsize,
    /// This node's share of `domain_concurrency` (meaningful only when the limits have one).
    domain_share: AtomicUsize,
    queue: Mutex<Queue>,
    wake: Notify,
    paused_until: Mutex<Option<tokio::time::Instant>>,
    /// Pauses in a row for a problem that needs attention (see [`RelayWorker::pause`]).
    failures_in_a_row: std::sync::atomic::AtomicU32,
    pub health: Arc<super::health::RelayHealth>,
}

impl<T: Transport> RelayWorker<T> {
    pub fn new(route: Route<T>, board: &super::RelayBoard) -> Self {
        let total_sessions = route.transport.sessions().max(1);
        let health = board.register(&route.name, total_sessions);
        let rate = route
            .limits
            .rate
            .and_then(|rate| RateLimit::new(rate, route.limits.burst_for(rate)));
        Self {
            name: route.name,
            transport: route.transport,
            rate,
            total_sessions,
            lanes_allowed: watch::channel(total_sessions).0,
            next_lane: AtomicUsize::new(0),
            domain_share: AtomicUsize::new(route.limits.domain_concurrency.unwrap_or(usize::MAX)),
            limits: route.limits,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            paused_until: Mutex::new(None),
            failures_in_a_row: std::sync::atomic::AtomicU32::new(0),
            health,
        }
    }

    /// How many lanes this relay gets: one per session of the whole cluster's pool (only this node's share
    /// of them run at a time).
    pub fn lanes(&self) -> usize {
        self.total_sessions
    }

    /// Takes this node's share of the relay's cluster-wide limits, `nodes` being live.
    fn take_share(&self, nodes: u32) {
        let share = Share::of(self.total_sessions, &self.limits, nodes);
        if let (Some(rate), Some(share_rate), Some(burst)) = (&self.rate, share.rate, share.burst) {
            rate.set(share_rate, burst);
        }
        if let Some(domain) = share.domain_concurrency {
            self.domain_share.store(domain, Ordering::Relaxed);
        }
        self.transport.set_sessions(share.sessions);
        self.lanes_allowed.send_if_modified(|allowed| {
            let changed = *allowed != share.sessions && !self.lock().closed;
            if changed {
                *allowed = share.sessions;
            }
            changed
        });
        self.health.set_share(share.sessions, nodes);
        // Lanes may now fit more per-domain batches.
        self.wake.notify_waiters();
        tracing::info!(
            relay = %self.name,
            live_nodes = nodes,
            sessions = share.sessions,
            rate = ?share.rate,
            domain_concurrency = ?share.domain_concurrency,
            "relay limits split across the live nodes"
        );
    }

    /// Waits until lane `index` may take a batch; false once shutting down.
    async fn lane_may_run(&self, index: usize, shutdown: &mut watch::Receiver<bool>) -> bool {
        let mut allowed = self.lanes_allowed.subscribe();
        tokio::select! {
            result = allowed.wait_for(|&allowed| index < allowed) => result.is_ok(),
            _ = shutdown.wait_for(|stop| *stop) => false,
        }
    }

    /// Queues claimed messages for this relay's lanes, all at once (so a lane sees them as one batch).
    pub fn push(&self, messages: Vec<(ClaimedMessage, OwnedSemaphorePermit)>) {
        let jobs: Vec<Job> = messages
            .into_iter()
            .map(|(message, permit)| self.job(message, permit))
            .collect();
        self.lock().pending.extend(jobs);
        self.wake.notify_waiters();
    }

    fn job(&self, message: ClaimedMessage, permit: OwnedSemaphorePermit) -> Job {
        let domains = if self.limits.domain_concurrency.is_some() {
            let mut domains: Vec<Arc<str>> = Vec::new();
            for recipient in &message.recipients {
                let domain = domain_of(&recipient.address);
                if !domains.iter().any(|d| **d == *domain) {
                    domains.push(domain.into());
                }
            }
            domains
        } else {
            Vec::new()
        };
        Job {
            message,
            permit,
            domains,
        }
    }

    /// Stops the lanes: they finish the batch they hold and take no more. Messages still queued are dropped
    /// (their leases are given back by the engine).
    pub fn close(&self) {
        let dropped = {
            let mut queue = self.lock();
            queue.closed = true;
            std::mem::take(&mut queue.pending)
        };
        drop(dropped);
        self.lanes_allowed.send_replace(usize::MAX);
        self.wake.notify_waiters();
    }

    /// Pauses the relay after a relay-level failure, unless it is paused already (lanes whose batches were
    /// under way when the first failed report the same failure: one pause, one log line). Returns the
    /// pause when this call started it. Problems that need a person pause longer each time in a row (from
    /// `base` doubling up to [`LONGEST_PAUSE`]), so a relay is not sent a refused password every few seconds;
    /// an unreachable relay is tried again after `base` every time.
    fn pause(&self, base: Duration, problem: RelayProblem) -> Option<Duration> {
        let now = tokio::time::Instant::now();
        let mut paused = self.paused_until.lock().expect("pause lock");
        if paused.is_some_and(|until| until > now) {
            return None;
        }
        let pause = if problem.needs_attention() {
            let in_a_row = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed);
            let longest = LONGEST_PAUSE.max(base);
            base.saturating_mul(1 << in_a_row.min(16)).min(longest)
        } else {
            base
        };
        *paused = Some(now + pause);
        self.health.paused_for(pause, problem);
        Some(pause)
    }

    /// A transaction ran on the relay: it is usable again.
    fn works(&self) {
        self.failures_in_a_row.store(0, Ordering::Relaxed);
        if self.health.recovered() {
            tracing::info!(relay = %self.name, "relay accepts transactions again; pause over");
        }
    }

    /// How much longer the relay is paused, if it is.
    pub fn paused_for(&self) -> Option<Duration> {
        let paused = *self.paused_until.lock().expect("pause lock");
        paused
            .map(|until| until.saturating_duration_since(tokio::time::Instant::now()))
            .filter(|left| !left.is_zero())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().expect("relay queue lock")
    }

    /// Waits for the next batch; `None` once the relay is closed.
    async fn take_batch(&self) -> Option<Batch<'_, T>> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut queue = self.lock();
                if queue.closed {
                    return None;
                }
                let domain_cap = self
                    .limits
                    .domain_concurrency
                    .map(|_| self.domain_share.load(Ordering::Relaxed));
                let (jobs, domains) = pick(&mut queue, self.limits.batch.max(1), domain_cap);
                if !jobs.is_empty() {
                    return Some(Batch {
                        worker: self,
                        jobs,
                        domains,
                    });
                }
            }
            notified.await;
        }
    }

    /// Returns the batch's messages from `keep` on to the front of the queue (they had no rate allowance).
    fn put_back(&self, batch: &mut Batch<'_, T>, keep: usize) {
        if keep >= batch.jobs.len() {
            return;
        }
        let returned = batch.jobs.split_off(keep);
        {
            let mut queue = self.lock();
            let still: Vec<Arc<str>> = batch
                .domains
                .iter()
                .filter(|d| batch.jobs.iter().any(|job| job.domains.contains(d)))
                .cloned()
                .collect();
            for domain in &batch.domains {
                if !still.contains(domain) {
                    release(&mut queue.busy, domain);
                }
            }
            batch.domains = still;
            for job in returned.into_iter().rev() {
                queue.pending.push_front(job);
            }
        }
        self.wake.notify_waiters();
    }
}

/// Takes up to `max` waiting messages in order, skipping (and leaving queued) any with a recipient domain
/// that already has `cap` batches in flight. A domain counts once per batch: a batch is one session.
fn pick(queue: &mut Queue, max: usize, cap: Option<usize>) -> (Vec<Job>, Vec<Arc<str>>) {
    let mut jobs = Vec::new();
    let mut domains: Vec<Arc<str>> = Vec::new();
    let Some(cap) = cap else {
        let take = max.min(queue.pending.len());
        jobs.extend(queue.pending.drain(..take));
        return (jobs, domains);
    };
    let mut index = 0;
    while index < queue.pending.len() && jobs.len() < max {
        let fits = queue.pending[index]
            .domains
            .iter()
            .all(|d| domains.contains(d) || queue.busy.get(d).copied().unwrap_or(0) < cap);
        if !fits {
            index += 1;
            continue;
        }
        let job = queue.pending.remove(index).expect("index is in range");
        for domain in &job.domains {
            if !domains.contains(domain) {
                domains.push(domain.clone());
                *queue.busy.entry(domain.clone()).or_default() += 1;
            }
        }
        jobs.push(job);
    }
    (jobs, domains)
}

fn release(busy: &mut HashMap<Arc<str>, usize>, domain: &Arc<str>) {
    if let Some(count) = busy.get_mut(domain) {
        *count -= 1;
        if *count == 0 {
            busy.remove(domain);
        }
    }
}

/// The lower-case domain of an address (the part after the last `@`).
fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or(address, |(_, domain)| domain)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Messages one lane holds; dropping it (also when the lane is aborted) frees their domains.
struct Batch<'a, T: Transport> {
    worker: &'a RelayWorker<T>,
    jobs: Vec<Job>,
    domains: Vec<Arc<str>>,
}

impl<T: Transport> Drop for Batch<'_, T> {
    fn drop(&mut self) {
        if self.domains.is_empty() {
            return;
        }
        {
            let mut queue = self.worker.lock();
            for domain in &self.domains {
                release(&mut queue.busy, domain);
            }
        }
        self.worker.wake.notify_waiters();
    }
}

/// One lane: batches until the relay closes.
pub(super) async fn run_lane<T: Transport>(
    worker: Arc<RelayWorker<T>>,
    outcomes: Arc<Outcomes>,
    verp: Option<Arc<crate::bounce::Verp>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let index = worker.next_lane.fetch_add(1, Ordering::Relaxed);
    loop {
        if !worker.lane_may_run(index, &mut shutdown).await {
            return;
        }
        let Some(mut batch) = worker.take_batch().await else {
            return;
        };
        if index >= *worker.lanes_allowed.borrow() {
            // The share shrank while this lane waited for mail: the batch goes to a lane still allowed.
            worker.put_back(&mut batch, 0);
            continue;
        }
        if let Some(rate) = &worker.rate {
            tokio::select! {
                _ = rate.acquire() => {}
                // Shutting down: the held messages are dropped and their leases given back.
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let mut allowed = 1;
            while allowed < batch.jobs.len() && rate.try_acquire() {
                allowed += 1;
            }
            worker.put_back(&mut batch, allowed);
        }
        if let Some(left) = worker.paused_for() {
            for job in batch.jobs.drain(..) {
                outcomes.send(outcomes.relay_paused(&worker.name, job.message, left));
            }
            continue;
        }
        let items: Vec<_> = batch
            .jobs
            .iter_mut()
            .map(|job| {
                let positions: Vec<u32> =
                    job.message.recipients.iter().map(|r| r.position).collect();
                let sender = verp
                    .as_ref()
                    .and_then(|verp| verp.return_path(&job.message.id, &positions))
                    .unwrap_or_else(|| job.message.sender.clone());
                let envelope = Envelope {
                    sender,
                    recipients: job
                        .message
                        .recipients
                        .iter()
                        .map(|r| r.address.clone())
                        .collect(),
                };
                (envelope, std::mem::take(&mut job.message.raw))
            })
            .collect();
        let deliveries = {
            let _busy = worker.health.busy();
            worker.transport.deliver_batch(items).await
        };
        worker
            .health
            .set_open_sessions(worker.transport.open_sessions());
        debug_assert_eq!(deliveries.len(), batch.jobs.len(), "one result per message");
        // Pause first, so that no message is handed to this relay between the failure and the pause.
        if let Some((problem, reason)) = deliveries.iter().find_map(|delivery| match delivery {
            Delivery::Failed {
                problem: Some(problem),
                reason,
                ..
            } => Some((*problem, reason)),
            _ => None,
        }) {
            if let Some(pause) = worker.pause(outcomes.relay_pause, problem) {
                // Once per pause; the reason is the relay's reply (credentials redacted by herald-smtp).
                tracing::warn!(
                    relay = %worker.name,
                    %problem,
                    %reason,
                    ?pause,
                    "relay cannot be used; pausing it (mail waits without spending attempts)"
                );
            }
        } else if deliveries
            .iter()
            .any(|delivery| matches!(delivery, Delivery::Replies(_)))
        {
            worker.works();
        }
        for (job, delivery) in batch.jobs.drain(..).zip(deliveries) {
            let Job {
                message, permit, ..
            } = job;
            let outcome = outcome_of(&worker.name, message, delivery, &outcomes);
            worker.health.record(&outcome);
            outcomes.send(outcome);
            drop(permit);
        }
    }
}

/// Gives every relay this node's share of its limits for the live-node count now, then follows the count
/// until shutdown. The first share is taken before this returns, so no lane starts with the whole limits.
pub(super) fn follow_live_nodes<T: Transport>(
    workers: Vec<Arc<RelayWorker<T>>>,
    mut live_nodes: watch::Receiver<u32>,
    mut shutdown: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut nodes = *live_nodes.borrow_and_update();
    if nodes != 1 {
        for worker in &workers {
            worker.take_share(nodes);
        }
    }
    async move {
        loop {
            let changed = tokio::select! {
                changed = live_nodes.changed() => changed.is_ok(),
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            if !changed {
                // No one feeds the count any more (a node without a heartbeat): keep the share.
                let _ = shutdown.wait_for(|stop| *stop).await;
                return;
            }
            let now = *live_nodes.borrow_and_update();
            if now != nodes {
                nodes = now;
                for worker in &workers {
                    worker.take_share(nodes);
                }
            }
        }
    }
}
