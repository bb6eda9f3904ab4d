//! When to try a transient failure again, and when to give up.

use std::time::Duration;

use rand::Rng;

use crate::store::Millis;

/// A retry schedule: the delays after the 1st, 2nd, … failed attempt, then `then_every` forever, until the
/// message is `max_age` old. Each delay gets ±`jitter` (a fraction) so a relay outage doesn't end in a
/// thundering herd of retries at the same instant.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub schedule: Vec<Duration>,
    pub then_every: Duration,
    pub max_age: Duration,
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::parse(DEFAULT_SCHEDULE, DEFAULT_MAX_AGE).expect("the default retry policy parses")
    }
}

/// `HERALD_RETRY`'s default.
pub const DEFAULT_SCHEDULE: &str = "30s,1m,5m,15m,1h,4h";
/// `HERALD_MAX_AGE`'s default.
pub const DEFAULT_MAX_AGE: &str = "3d";

impl RetryPolicy {
    /// Parses `HERALD_RETRY` (comma-separated durations; the last one repeats) and `HERALD_MAX_AGE`.
    pub fn parse(schedule: &str, max_age: &str) -> Result<Self, String> {
        let schedule: Vec<Duration> = schedule
            .split(',')
            .map(str::trim)
            .enumerate()
            .map(|(i, part)| {
                parse_duration(part).map_err(|e| format!("HERALD_RETRY item {}: {e}", i + 1))
            })
            .collect::<Result<_, _>>()?;
        let then_every = *schedule.last().ok_or("HERALD_RETRY is empty")?;
        if then_every.is_zero() {
            return Err("HERALD_RETRY: the last delay repeats forever and cannot be 0".into());
        }
        let max_age = parse_duration(max_age).map_err(|e| format!("HERALD_MAX_AGE: {e}"))?;
        Ok(Self {
            schedule,
            then_every,
            max_age,
            jitter: 0.1,
        })
    }

    /// The delay after `failed_attempts` attempts failed (1 = after the first), before jitter.
    pub fn delay(&self, failed_attempts: u32) -> Duration {
        let index = failed_attempts.saturating_sub(1) as usize;
        self.schedule.get(index).copied().unwrap_or(self.then_every)
    }

    /// When to try again after `failed_attempts` failures of a message created at `created_at`, or `None`
    /// when the next try would fall past the maximum age (give up now).
    pub fn next_attempt(
        &self,
        failed_attempts: u32,
        created_at: Millis,
        now: Millis,
        rng: &mut impl Rng,
    ) -> Option<Millis> {
        let base = self.delay(failed_attempts).as_millis() as f64;
        let spread = if self.jitter > 0.0 {
            rng.random_range(-self.jitter..=self.jitter)
        } else {
            0.0
        };
        let at = now + (base * (1.0 + spread)).round().max(0.0) as Millis;
        (at <= created_at + self.max_age.as_millis() as Millis).then_some(at)
    }
}

/// Parses `30s`, `5m`, `1h`, `3d`, `250ms` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 5m, 1h or 3d"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ));
        }
    };
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn default_schedule_then_every_four_hours() {
        let policy = RetryPolicy::default();
        let secs: Vec<u64> = (1..=8).map(|n| policy.delay(n).as_secs()).collect();
        assert_eq!(secs, [30, 60, 300, 900, 3_600, 14_400, 14_400, 14_400]);
        assert_eq!(policy.max_age, Duration::from_secs(3 * 86_400));
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_varies() {
        let policy = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(7);
        let times: Vec<Millis> = (0..200)
            .map(|_| policy.next_attempt(1, 0, 0, &mut rng).unwrap())
            .collect();
        assert!(
            times.iter().all(|t| (27_000..=33_000).contains(t)),
            "{times:?}"
        );
        assert!(
            times.iter().any(|t| *t != times[0]),
            "jitter must vary the delay"
        );
    }

    #[test]
    fn gives_up_past_the_maximum_age() {
        let mut policy = RetryPolicy::parse("1m", "10m").unwrap();
        policy.jitter = 0.0;
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(policy.next_attempt(3, 0, 540_000, &mut rng), Some(600_000));
        assert_eq!(policy.next_attempt(4, 0, 540_001, &mut rng), None);
    }

    #[test]
    fn bad_settings_name_the_item() {
        assert!(
            RetryPolicy::parse("30s,5x", "3d")
                .unwrap_err()
                .contains("item 2")
        );
        assert!(
            RetryPolicy::parse("30s", "soon")
                .unwrap_err()
                .contains("HERALD_MAX_AGE")
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    }
}
