//! What each relay is doing now, for the dashboard: sessions open and busy (against this node's share of
//! the pool), results since start, the last error, and its health: ok, or paused / retrying after a
//! relay-level problem (unreachable, authentication refused, certificate not trusted, STARTTLS missing). Kept by the engine's lanes with atomics (no lock on the hot path
//! but the rare error), read by the dashboard at any time.

use std::{
    fmt,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
};

use crate::{
    clock::{Clock, SystemClock},
    store::{AttemptOutcome, Millis, RecipientStatus},
};

/// The relays of this process, in configuration order. Clone it freely: clones share the board.
#[derive(Debug, Clone, Default)]
pub struct RelayBoard(Arc<RwLock<Vec<Arc<RelayHealth>>>>);

impl RelayBoard {
    /// Adds a relay (the engine does this when it starts) and returns its health record.
    pub(super) fn register(&self, name: &str, max_sessions: usize) -> Arc<RelayHealth> {
        let health = Arc::new(RelayHealth {
            name: name.to_owned(),
            max_sessions: AtomicUsize::new(max_sessions),
            live_nodes: AtomicU32::new(1),
            ..Default::default()
        });
        metrics::gauge!("herald_relay_paused", "relay" => name.to_owned()).set(0.0);
        self.0
            .write()
            .expect("board lock")
            .push(Arc::clone(&health));
        health
    }

    pub fn snapshot(&self) -> Vec<RelaySnapshot> {
        let now = SystemClock.now();
        self.0
            .read()
            .expect("board lock")
            .iter()
            .map(|h| h.snapshot(now))
            .collect()
    }
}

/// Why a relay as a whole cannot be used; mail for it waits (without spending attempts) while it is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayProblem {
    /// Connection refused or timed out, 421, a broken TLS handshake: usually passes by itself.
    Unreachable,
    /// The relay refused the credentials (535, 454) or offers no usable mechanism: needs a person.
    Authentication,
    /// The relay's certificate did not verify: needs a person (or an attacker is in the way).
    Certificate,
    /// TLS is required but the relay does not offer STARTTLS (or refuses it; or it was stripped on the way).
    StartTls,
}

impl RelayProblem {
    /// True for problems that retrying will not fix without a change of configuration (or of the relay):
    /// their pauses grow, so that a relay is not sent a wrong password every few seconds.
    pub fn needs_attention(self) -> bool {
        self != RelayProblem::Unreachable
    }

    fn as_str(self) -> &'static str {
        match self {
            RelayProblem::Unreachable => "unreachable",
            RelayProblem::Authentication => "authentication",
            RelayProblem::Certificate => "certificate",
            RelayProblem::StartTls => "starttls",
        }
    }
}

impl fmt::Display for RelayProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelayProblem::Unreachable => "relay unreachable",
            RelayProblem::Authentication => "authentication refused",
            RelayProblem::Certificate => "certificate not trusted",
            RelayProblem::StartTls => "STARTTLS missing",
        })
    }
}

#[derive(Debug, Default)]
pub(super) struct RelayHealth {
    name: String,
    /// This node's share of the relay's sessions.
    max_sessions: AtomicUsize,
    live_nodes: AtomicU32,
    open_sessions: AtomicUsize,
    busy_sessions: AtomicUsize,
    delivered: AtomicU64,
    deferred: AtomicU64,
    failed: AtomicU64,
    /// Unix milliseconds; 0 when not paused.
    paused_until: AtomicI64,
    /// The relay-level problem since the last transaction that ran; `None` when healthy.
    problem: Mutex<Option<RelayProblem>>,
    last_error: Mutex<Option<(Millis, String)>>,
}

impl RelayHealth {
    pub fn set_open_sessions(&self, open: usize) {
        self.open_sessions.store(open, Ordering::Relaxed);
    }

    /// Marks a session busy until the returned guard drops.
    pub fn busy(&self) -> BusyGuard<'_> {
        self.busy_sessions.fetch_add(1, Ordering::Relaxed);
        BusyGuard(self)
    }

    pub fn set_share(&self, sessions: usize, live_nodes: u32) {
        self.max_sessions.store(sessions, Ordering::Relaxed);
        self.live_nodes.store(live_nodes, Ordering::Relaxed);
    }

    /// The relay is paused for `pause` because of `problem`.
    pub fn paused_for(&self, pause: std::time::Duration, problem: RelayProblem) {
        self.paused_until.store(
            SystemClock.now() + pause.as_millis() as i64,
            Ordering::Relaxed,
        );
        *self.problem.lock().expect("problem lock") = Some(problem);
        metrics::gauge!("herald_relay_paused", "relay" => self.name.clone()).set(1.0);
        metrics::counter!("herald_relay_pauses_total", "relay" => self.name.clone(), "problem" => problem.as_str())
            .increment(1);
    }

    /// A transaction ran: the relay works again. True when it had a problem until now.
    pub fn recovered(&self) -> bool {
        let had = self.problem.lock().expect("problem lock").take().is_some();
        if had {
            self.paused_until.store(0, Ordering::Relaxed);
            metrics::gauge!("herald_relay_paused", "relay" => self.name.clone()).set(0.0);
        }
        had
    }

    /// Counts an attempt's recipients and keeps its error, if it had one.
    pub fn record(&self, outcome: &AttemptOutcome) {
        let mut error = None;
        for recipient in &outcome.recipients {
            let counter = match recipient.status {
                RecipientStatus::Delivered => &self.delivered,
                RecipientStatus::Deferred => &self.deferred,
                RecipientStatus::Failed => &self.failed,
                // Bounces and complaints arrive after delivery, never as an attempt's outcome.
                RecipientStatus::Pending
                | RecipientStatus::Cancelled
                | RecipientStatus::Suppressed
                | RecipientStatus::Bounced
                | RecipientStatus::Complained => continue,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if recipient.status != RecipientStatus::Delivered && error.is_none() {
                error = recipient
                    .reply
                    .as_ref()
                    .map(|reply| match recipient.smtp_code {
                        Some(code) if !reply.starts_with(&code.to_string()) => {
                            format!("{code} {reply}")
                        }
                        _ => reply.clone(),
                    });
            }
        }
        if let Some(error) = error {
            *self.last_error.lock().expect("error lock") = Some((SystemClock.now(), error));
        }
    }

    fn snapshot(&self, now: Millis) -> RelaySnapshot {
        let paused_until = self.paused_until.load(Ordering::Relaxed);
        let last_error = self.last_error.lock().expect("error lock").clone();
        let problem = *self.problem.lock().expect("problem lock");
        let paused = paused_until > now;
        RelaySnapshot {
            name: self.name.clone(),
            state: match (problem, paused) {
                (None, _) => RelayState::Ok,
                (Some(_), true) => RelayState::Paused,
                (Some(_), false) => RelayState::Retrying,
            },
            problem,
            live_nodes: self.live_nodes.load(Ordering::Relaxed),
            max_sessions: self.max_sessions.load(Ordering::Relaxed),
            open_sessions: self.open_sessions.load(Ordering::Relaxed),
            busy_sessions: self.busy_sessions.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            paused_until: paused.then_some(paused_until),
            last_error_at: last_error.as_ref().map(|(at, _)| *at),
            last_error: last_error.map(|(_, text)| text),
        }
    }
}

pub(super) struct BusyGuard<'a>(&'a RelayHealth);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.busy_sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A relay's health at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayState {
    /// Delivering (or idle) without a relay-level problem.
    Ok,
    /// A relay-level problem: nothing is sent to it until `paused_until`.
    Paused,
    /// The pause is over and the next transaction tries the relay again.
    Retrying,
}

/// One relay as the dashboard shows it. Counts are recipients, since this process started.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RelaySnapshot {
    pub name: String,
    pub state: RelayState,
    /// What is wrong with the relay as a whole, while `state` is not `ok`.
    pub problem: Option<RelayProblem>,
    /// Live nodes sharing the relay's limits (this one included).
    pub live_nodes: u32,
    /// This node's share of the relay's sessions.
    pub max_sessions: usize,
    pub open_sessions: usize,
    pub busy_sessions: usize,
    pub delivered: u64,
    pub deferred: u64,
    pub failed: u64,
    pub paused_until: Option<Millis>,
    pub last_error_at: Option<Millis>,
    pub last_error: Option<String>,
}
