//! What each relay is doing now, for the dashboard: sessions open and busy, results since start, the last
//! error and whether the relay is paused. Kept by the engine's lanes with atomics (no lock on the hot path
//! but the rare error), read by the dashboard at any time.

use std::sync::{
    Arc, Mutex, RwLock,
    atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
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
            max_sessions,
            ..Default::default()
        });
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

#[derive(Debug, Default)]
pub(super) struct RelayHealth {
    name: String,
    max_sessions: usize,
    open_sessions: AtomicUsize,
    busy_sessions: AtomicUsize,
    delivered: AtomicU64,
    deferred: AtomicU64,
    failed: AtomicU64,
    /// Unix milliseconds; 0 when not paused.
    paused_until: AtomicI64,
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

    pub fn paused_for(&self, pause: std::time::Duration) {
        self.paused_until.store(
            SystemClock.now() + pause.as_millis() as i64,
            Ordering::Relaxed,
        );
    }

    /// Counts an attempt's recipients and keeps its error, if it had one.
    pub fn record(&self, outcome: &AttemptOutcome) {
        let mut error = None;
        for recipient in &outcome.recipients {
            let counter = match recipient.status {
                RecipientStatus::Delivered => &self.delivered,
                RecipientStatus::Deferred => &self.deferred,
                RecipientStatus::Failed => &self.failed,
                RecipientStatus::Pending | RecipientStatus::Cancelled => continue,
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
        RelaySnapshot {
            name: self.name.clone(),
            max_sessions: self.max_sessions,
            open_sessions: self.open_sessions.load(Ordering::Relaxed),
            busy_sessions: self.busy_sessions.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            paused_until: (paused_until > now).then_some(paused_until),
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

/// One relay as the dashboard shows it. Counts are recipients, since this process started.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RelaySnapshot {
    pub name: String,
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
