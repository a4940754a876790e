//! How a call is retried (the bounds of [`RetryPolicy`], as backon's jittered exponential
//! backoff), and how long Cyclr asked us to wait (`Retry-After`).

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};

/// Bounds on retrying one call. A retry happens only for errors that
/// [`CyclrError::is_retryable`](super::CyclrError::is_retryable) accepts, and for writes only
/// when Cyclr certainly did not apply the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (a token renewal after a 401 is not counted).
    pub max_attempts: u32,
    /// Backoff before the first retry; it doubles for each further retry.
    pub initial_backoff: Duration,
    /// Upper bound of the computed backoff (a longer `Retry-After` from Cyclr still wins).
    pub max_backoff: Duration,
    /// No retry is started that would end later than this after the call began.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    /// Short enough that a reconcile is not held for long: the controllers requeue with
    /// their own backoff when a call still fails.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(30),
        }
    }
}

/// Doublings after which any backoff has reached its cap (from the smallest nonzero start).
const MAX_DOUBLINGS: usize = 64;

impl RetryPolicy {
    /// The waits between the attempts of one call: `initial_backoff` doubling up to
    /// `max_backoff`, each drawn at random from the upper half of its step ("equal jitter":
    /// concurrent callers spread out, but none retries at once), `max_attempts - 1` of them.
    /// `Retry-After` and the deadline are the caller's to apply.
    pub fn backoff(&self) -> ExponentialBuilder {
        self.lower_bounds()
            .with_jitter()
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
    }

    /// The shortest wait [`backoff`](Self::backoff) can give after `failures` failures in a
    /// row (1-based): the lower bound of its jitter, whatever the number of attempts.
    pub fn shortest_delay(&self, failures: u32) -> Duration {
        let retry = (failures.max(1) as usize - 1).min(MAX_DOUBLINGS);
        self.lower_bounds().build().nth(retry).unwrap_or_default()
    }

    /// backon's jitter adds up to 100 % to each step, so its steps are half the policy's.
    fn lower_bounds(&self) -> ExponentialBuilder {
        let max = self.max_backoff / 2;
        ExponentialBuilder::default()
            .with_factor(2.0)
            // backon does not cap its first step.
            .with_min_delay((self.initial_backoff / 2).min(max))
            .with_max_delay(max)
            .without_max_times()
    }
}

/// The longest `Retry-After` believed: a larger value is garbage, and would overflow clocks.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (relative to `now`; a date in
/// the past means no wait), at most [`MAX_RETRY_AFTER`]. `None` when the value is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or_default(),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_elapsed: Duration::from_secs(60),
        }
    }

    /// backon computes in f32: a step may miss the exact value by a few nanoseconds.
    fn about(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_micros(1)
    }

    #[test]
    fn backoff_doubles_within_equal_jitter_bounds_up_to_the_cap() {
        let p = policy();
        for _ in 0..50 {
            let delays: Vec<Duration> = p.backoff().build().collect();
            assert_eq!(delays.len(), 9, "max_attempts - 1 retries");
            for (retry, delay) in delays.into_iter().enumerate() {
                let full = Duration::from_millis(100 << retry).min(Duration::from_secs(2));
                assert!(
                    delay + Duration::from_micros(1) >= full / 2 && delay < full + Duration::from_micros(1),
                    "retry {retry}: {delay:?}"
                );
                assert!(about(p.shortest_delay(retry as u32 + 1), full / 2), "retry {retry}");
            }
        }
    }

    #[test]
    fn the_jitter_spreads_retries() {
        let firsts: std::collections::HashSet<Duration> =
            (0..20).map(|_| policy().backoff().build().next().unwrap()).collect();
        assert!(firsts.len() > 10, "{firsts:?}");
    }

    #[test]
    fn one_attempt_means_no_retry_and_odd_bounds_are_tamed() {
        let once = RetryPolicy {
            max_attempts: 1,
            ..policy()
        };
        assert_eq!(once.backoff().build().next(), None);
        let zero = RetryPolicy {
            max_attempts: 0,
            ..policy()
        };
        assert_eq!(zero.backoff().build().next(), None);
        // An initial backoff above the cap starts at the cap.
        let inverted = RetryPolicy {
            initial_backoff: Duration::from_secs(10),
            ..policy()
        };
        assert!(
            inverted
                .backoff()
                .build()
                .all(|d| d < Duration::from_secs(2) + Duration::from_micros(1))
        );
        assert_eq!(inverted.shortest_delay(1), Duration::from_secs(1));
    }

    #[test]
    fn shortest_delay_is_capped_and_quick_for_any_count() {
        let p = policy();
        for failures in [0, 1] {
            assert_eq!(p.shortest_delay(failures), Duration::from_millis(50));
        }
        for failures in [6, 10, 32, 1000, u32::MAX] {
            assert_eq!(
                p.shortest_delay(failures),
                Duration::from_secs(1),
                "failures={failures}"
            );
        }
    }

    #[test]
    fn retry_after_in_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after(&u64::MAX.to_string(), now), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn retry_after_as_http_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date already past means "retry now", not an error.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        // The obsolete RFC 850 form is still an HTTP date.
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
    }
}
