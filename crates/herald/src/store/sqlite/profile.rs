//! Where the writer thread's time goes, by kind of work, for `herald bench store` (issue 14: "show in the
//! bench where the writer's microseconds go"). Always on: a clock read per statement group is a few tens of
//! nanoseconds beside statements of microseconds.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

/// The kinds of writer work timed apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterPhase {
    /// The idempotency check and the `messages` row (with its indexes and the framed body).
    Messages,
    Recipients,
    Tags,
    /// The timeline lines written at accept.
    Events,
    /// Shared parts: `blob_refs` counts and new `blobs`.
    Blobs,
    /// The status and per-minute counters, once per group.
    Counters,
    /// `COMMIT` of a group: the WAL write (its fsync is the syncer's, beside the writer).
    Commit,
    /// Index transactions (`indexer`), commit included.
    FullText,
    /// Everything else the writer does: claims, outcomes, leases, pruning, `BEGIN`.
    Other,
}

impl WriterPhase {
    pub const ALL: [WriterPhase; 9] = [
        WriterPhase::Messages,
        WriterPhase::Recipients,
        WriterPhase::Tags,
        WriterPhase::Events,
        WriterPhase::Blobs,
        WriterPhase::Counters,
        WriterPhase::Commit,
        WriterPhase::FullText,
        WriterPhase::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WriterPhase::Messages => "messages row",
            WriterPhase::Recipients => "recipients",
            WriterPhase::Tags => "tags",
            WriterPhase::Events => "events",
            WriterPhase::Blobs => "blobs",
            WriterPhase::Counters => "counters",
            WriterPhase::Commit => "commit (WAL write)",
            WriterPhase::FullText => "full-text index",
            WriterPhase::Other => "other (claims, outcomes, BEGIN)",
        }
    }
}

/// A running clock over the writer's work: each lap is added to the phase it names.
pub(super) struct Laps<'a> {
    profile: &'a WriterProfile,
    since: Instant,
}

impl<'a> Laps<'a> {
    pub(super) fn start(profile: &'a WriterProfile) -> Self {
        Self {
            profile,
            since: Instant::now(),
        }
    }

    /// The time since the last lap was `phase`'s.
    pub(super) fn lap(&mut self, phase: WriterPhase) {
        self.profile.add(phase, &mut self.since);
    }
}

/// Nanoseconds the writer spent per phase since the store opened.
#[derive(Debug, Default)]
pub struct WriterProfile {
    nanos: [AtomicU64; 9],
}

impl WriterProfile {
    /// Adds the time since `*since` to `phase`, and restarts the clock.
    pub(super) fn add(&self, phase: WriterPhase, since: &mut Instant) {
        let now = Instant::now();
        self.nanos[phase as usize].fetch_add(
            now.duration_since(*since).as_nanos() as u64,
            Ordering::Relaxed,
        );
        *since = now;
    }

    /// The totals so far, in [`WriterPhase::ALL`] order.
    pub fn snapshot(&self) -> [u64; 9] {
        std::array::from_fn(|i| self.nanos[i].load(Ordering::Relaxed))
    }
}
