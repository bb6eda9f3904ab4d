//! One relay's side of the engine: a queue of claimed messages and a few lanes that drain it.
//!
//! A lane is one session's worth of work: it takes a batch of messages (as many as are waiting, up to
//! `batch`, skipping messages whose recipient domain is at its cap), takes the rate allowance for them, and
//! hands them to the transport in one call, which pipelines them on one pooled session. There are as many
//! lanes as the pool has connections, so the hard connection cap is never the thing lanes queue on.
//!
//! A relay found down pauses only this relay: its lanes defer what they hold without spending attempts, and
//! the engine defers new claims for it, while other relays' lanes carry on.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{Notify, OwnedSemaphorePermit, watch};

use super::{Delivery, Envelope, Outcomes, RateLimit, RelayLimits, Route, Transport, outcome_of};
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
    queue: Mutex<Queue>,
    wake: Notify,
    paused_until: Mutex<Option<tokio::time::Instant>>,
    pub health: Arc<super::health::RelayHealth>,
}

impl<T: Transport> RelayWorker<T> {
    pub fn new(route: Route<T>, board: &super::RelayBoard) -> Self {
        let health = board.register(&route.name, route.transport.sessions());
        let rate = route
            .limits
            .rate
            .and_then(|rate| RateLimit::new(rate, route.limits.burst_for(rate)));
        Self {
            name: route.name,
            transport: route.transport,
            limits: route.limits,
            rate,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            paused_until: Mutex::new(None),
            health,
        }
    }

    /// How many lanes (sessions used at once) this relay gets.
    pub fn lanes(&self) -> usize {
        self.transport.sessions().max(1)
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
        self.wake.notify_waiters();
    }

    /// Pauses the relay for `pause` from now (a longer pause already set is kept).
    pub fn pause(&self, pause: Duration) {
        let until = tokio::time::Instant::now() + pause;
        let mut paused = self.paused_until.lock().expect("pause lock");
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
            self.health.paused_for(pause);
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
                let (jobs, domains) = pick(
                    &mut queue,
                    self.limits.batch.max(1),
                    self.limits.domain_concurrency,
                );
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
    mut shutdown: watch::Receiver<bool>,
) {
    while let Some(mut batch) = worker.take_batch().await {
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
                let envelope = Envelope {
                    sender: job.message.sender.clone(),
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
        if let Some(reason) = deliveries.iter().find_map(|delivery| match delivery {
            Delivery::Failed {
                relay_down: true,
                reason,
                ..
            } => Some(reason),
            _ => None,
        }) {
            tracing::warn!(relay = %worker.name, %reason, pause = ?outcomes.relay_pause, "relay is down; pausing it");
            worker.pause(outcomes.relay_pause);
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
