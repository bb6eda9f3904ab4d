//! Limits of one relay beyond the pool's hard connection cap: a message rate (GCRA, governor), a cap on
//! transactions in flight per recipient domain, and how many messages one session pipelines in one go.
//!
//! The rate limiter runs on tokio's clock (not governor's default quanta clock), so tests drive it with
//! `tokio::time::pause()` and the engine waits with `tokio::time::sleep`, which shutdown can interrupt.

use std::{num::NonZeroU32, time::Duration};

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

/// A relay's message rate: GCRA with `rate` per second and a burst.
#[derive(Debug)]
pub struct RateLimit {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>,
    clock: TokioClock,
}

impl RateLimit {
    /// `None` when `rate` is not a usable positive number.
    pub fn new(rate: f64, burst: u32) -> Option<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst.max(1))?);
        let clock = TokioClock::new();
        Some(Self {
            limiter: RateLimiter::direct_with_clock(quota, clock),
            clock,
        })
    }

    /// Takes one message's allowance, waiting until there is one.
    pub async fn acquire(&self) {
        loop {
            match self.limiter.check() {
                Ok(()) => return,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    tokio::time::sleep(wait.max(Duration::from_micros(50))).await;
                }
            }
        }
    }

    /// Takes one message's allowance if there is one now.
    pub fn try_acquire(&self) -> bool {
        self.limiter.check().is_ok()
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
