//! Limits of one relay beyond the pool's hard connection cap: a message rate (GCRA, governor), a cap on
//! transactions in flight per recipient domain, and how many messages one session pipelines in one go.
//!
//! `pool=`, `rate=` and `domain_concurrency=` are totals for the whole cluster: each node takes its share
//! ([`Share`]) of the live nodes it is told about, and takes a new share when that count changes.
//!
//! The rate limiter runs on tokio's clock (not governor's default quanta clock), so tests drive it with
//! `tokio::time::pause()` and the engine waits with `tokio::time::sleep`, which shutdown can interrupt.

use std::{
    num::NonZeroU32,
    sync::{Arc, RwLock},
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::Clock,
    middleware::NoOpMiddleware,
    nanos::Nanos,
    state::{InMemoryState, NotKeyed},
};

/// Per-relay delivery limits (relay URL keys `rate`, `burst`, `domain_concurrency`, `batch`).
#[derive(Debug, Clone, PartialEq)]
pub struct RelayLimits {
    /// Messages per second (fractions allowed: `0.5` is one every two seconds); `None`: no limit.
    pub rate: Option<f64>,
    /// Messages that may leave at once after a quiet spell; `None`: a tenth of a second's worth, at least 1,
    /// so the rate is also smooth over short windows.
    pub burst: Option<u32>,
    /// Most transactions in flight at once (one per session) whose envelope has a recipient in one domain;
    /// `None`: no cap beyond the pool's.
    pub domain_concurrency: Option<usize>,
    /// Most messages pipelined on one session in one go (`Pool::send_batch`). A busy queue fills batches; an
    /// idle one sends each message as it arrives, so batching adds no latency.
    pub batch: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            rate: None,
            burst: None,
            domain_concurrency: None,
            batch: DEFAULT_BATCH,
        }
    }
}

/// Default of `batch=`: enough pipelined transactions to hide the round trips to a relay, few enough that a
/// session's batch holds little memory and a failing session affects few messages.
pub const DEFAULT_BATCH: usize = 16;

impl RelayLimits {
    /// The effective burst for a rate.
    pub fn burst_for(&self, rate: f64) -> u32 {
        self.burst
            .unwrap_or_else(|| (rate / 10.0).ceil().clamp(1.0, u32::MAX as f64) as u32)
            .max(1)
    }
}

/// One node's share of a relay's cluster-wide limits, with `nodes` live nodes (counting this one).
///
/// A rate divides exactly: `rate / nodes` each, so the cluster sends `rate`. Sessions and per-domain
/// sessions are whole numbers, and a node knows how many nodes are live but not its rank among them,
/// so it cannot tell whether it is one of the nodes that should take the remainder: every node takes
/// the floor (`pool=6` on 4 nodes: 1 session each, 4 in all; the remainder of 2 is left unused), which
/// never sums past the total. A node never takes 0 — it could not deliver what it claims — so when
/// there are more nodes than the total (`pool=2` on 3 nodes) each takes 1 and the cluster may open one
/// session per node: give a relay at least as many sessions as there are nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    pub sessions: usize,
    pub rate: Option<f64>,
    pub burst: Option<u32>,
    pub domain_concurrency: Option<usize>,
}

impl Share {
    /// This node's share of `sessions` (the pool) and of `limits`, among `nodes` live nodes (0 counts as 1).
    pub fn of(sessions: usize, limits: &RelayLimits, nodes: u32) -> Share {
        let nodes = nodes.max(1);
        let whole = |total: usize| (total / nodes as usize).max(1);
        let rate = limits.rate.map(|rate| rate / f64::from(nodes));
        Share {
            sessions: whole(sessions),
            rate,
            // An explicit burst is a cluster total too (rounded up: a burst of 0 is no burst);
            // the default follows the share of the rate.
            burst: rate.map(|share| match limits.burst {
                Some(burst) => burst.div_ceil(nodes).max(1),
                None => limits.burst_for(share),
            }),
            domain_concurrency: limits.domain_concurrency.map(whole),
        }
    }
}

/// A monotonic clock on `tokio::time::Instant`, counted from its creation.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.start.elapsed())
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>;

/// A relay's message rate: GCRA with `rate` per second and a burst. The rate can change while lanes
/// wait on it ([`RateLimit::set`]): a node's share changes as nodes join and leave.
#[derive(Debug)]
pub struct RateLimit {
    limiter: RwLock<Arc<Limiter>>,
    clock: TokioClock,
}

fn limiter(rate: f64, burst: u32, clock: TokioClock) -> Option<Limiter> {
    if !(rate.is_finite() && rate > 0.0) {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
    let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst.max(1))?);
    Some(RateLimiter::direct_with_clock(quota, clock))
}

impl RateLimit {
    /// `None` when `rate` is not a usable positive number.
    pub fn new(rate: f64, burst: u32) -> Option<Self> {
        let clock = TokioClock::new();
        Some(Self {
            limiter: RwLock::new(Arc::new(limiter(rate, burst, clock)?)),
            clock,
        })
    }

    /// Changes the rate and burst from now on (false, and no change, when `rate` is not usable). The new
    /// quota starts with its burst available, as after a quiet spell; waiting lanes switch to it within
    /// their current wait.
    pub fn set(&self, rate: f64, burst: u32) -> bool {
        let Some(next) = limiter(rate, burst, self.clock) else {
            return false;
        };
        *self.limiter.write().expect("rate limiter lock") = Arc::new(next);
        true
    }

    fn current(&self) -> Arc<Limiter> {
        self.limiter.read().expect("rate limiter lock").clone()
    }

    /// Takes one message's allowance, waiting until there is one.
    pub async fn acquire(&self) {
        // Waits are short slices so that a changed rate applies without a lane sleeping through it.
        const LONGEST_WAIT: Duration = Duration::from_millis(250);
        loop {
            match self.current().check() {
                Ok(()) => return,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    tokio::time::sleep(wait.clamp(Duration::from_micros(50), LONGEST_WAIT)).await;
                }
            }
        }
    }

    /// Takes one message's allowance if there is one now.
    pub fn try_acquire(&self) -> bool {
        self.current().check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_holds_over_a_window_after_the_burst() {
        let limit = RateLimit::new(20.0, 2).unwrap();
        let start = tokio::time::Instant::now();
        for _ in 0..102 {
            limit.acquire().await;
        }
        // 2 at once, then one every 50 ms: the 102nd at 5 s.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(4_990) && elapsed <= Duration::from_millis(5_010),
            "{elapsed:?}"
        );
        // Nothing left now; one more after 50 ms.
        assert!(!limit.try_acquire());
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(limit.try_acquire());
        assert!(!limit.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_spell_refills_only_the_burst() {
        let limit = RateLimit::new(100.0, 5).unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        let ready = (0..50).take_while(|_| limit.try_acquire()).count();
        assert_eq!(ready, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_rate_applies_to_the_next_allowance() {
        let limit = RateLimit::new(10.0, 1).unwrap();
        limit.acquire().await;
        // At 10/s the next allowance is 100 ms away; at 1/s a second.
        assert!(limit.set(1.0, 1));
        limit.acquire().await;
        let start = tokio::time::Instant::now();
        limit.acquire().await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(990) && waited <= Duration::from_millis(1_010),
            "{waited:?}"
        );
        assert!(!limit.set(0.0, 1), "an unusable rate changes nothing");
    }

    #[test]
    fn shares_never_sum_past_the_total_and_never_reach_zero() {
        let limits = RelayLimits {
            rate: Some(100.0),
            burst: None,
            domain_concurrency: Some(6),
            batch: DEFAULT_BATCH,
        };
        let alone = Share::of(6, &limits, 1);
        assert_eq!(
            alone,
            Share {
                sessions: 6,
                rate: Some(100.0),
                burst: Some(10),
                domain_concurrency: Some(6),
            },
            "one node keeps the whole limits"
        );
        assert_eq!(
            Share::of(6, &limits, 0),
            alone,
            "no count yet counts as one"
        );
        let three = Share::of(6, &limits, 3);
        assert_eq!(three.sessions, 2);
        assert!((three.rate.unwrap() * 3.0 - 100.0).abs() < 1e-9);
        assert_eq!(three.burst, Some(4));
        let four = Share::of(6, &limits, 4);
        assert_eq!((four.sessions, four.domain_concurrency), (1, Some(1)));
        assert!(4 * four.sessions <= 6);
        for nodes in 1..=12u32 {
            for total in 1..=20usize {
                let share = Share::of(total, &RelayLimits::default(), nodes).sessions;
                assert!(share >= 1);
                if total >= nodes as usize {
                    assert!(share * nodes as usize <= total, "{total} over {nodes}");
                }
            }
        }
        let explicit = RelayLimits {
            rate: Some(30.0),
            burst: Some(5),
            ..Default::default()
        };
        assert_eq!(Share::of(1, &explicit, 2).burst, Some(3));
        assert_eq!(Share::of(1, &RelayLimits::default(), 2).rate, None);
    }

    #[test]
    fn fractional_rates_and_default_bursts() {
        assert!(RateLimit::new(0.5, 1).is_some());
        assert!(RateLimit::new(0.0, 1).is_none());
        assert!(RateLimit::new(f64::NAN, 1).is_none());
        let limits = RelayLimits::default();
        assert_eq!(limits.burst_for(20.0), 2);
        assert_eq!(limits.burst_for(0.5), 1);
        assert_eq!(limits.burst_for(2000.0), 200);
        let limits = RelayLimits {
            burst: Some(7),
            ..Default::default()
        };
        assert_eq!(limits.burst_for(20.0), 7);
    }
}
