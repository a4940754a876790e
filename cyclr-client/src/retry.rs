//! How long to wait before retrying a transient failure, and how long Cyclr asked us to wait.

use std::time::{Duration, SystemTime};

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

impl RetryPolicy {
    /// The wait before the retry that follows the `failures`-th failure (1-based), with
    /// random jitter, never shorter than Cyclr's `Retry-After`.
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        self.delay_with_jitter(failures, retry_after, rand::random::<f64>())
    }

    /// "Equal jitter": half the exponential backoff is fixed, the other half is scaled by
    /// `jitter` in `[0, 1]`, so concurrent callers spread out but none retries at once.
    pub fn delay_with_jitter(&self, failures: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(31);
        let backoff = self.initial_backoff.saturating_mul(1 << exponent).min(self.max_backoff);
        let half = backoff / 2;
        let jittered = half + half.mul_f64(jitter.clamp(0.0, 1.0));
        jittered.max(retry_after.unwrap_or_default())
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

    #[test]
    fn backoff_doubles_within_jitter_bounds() {
        let p = policy();
        for failures in 1..=5 {
            let full = Duration::from_millis(100 * (1 << (failures - 1)));
            assert_eq!(
                p.delay_with_jitter(failures, None, 0.0),
                full / 2,
                "failures={failures}"
            );
            assert_eq!(p.delay_with_jitter(failures, None, 1.0), full, "failures={failures}");
            let random = p.delay(failures, None);
            assert!(random >= full / 2 && random <= full, "failures={failures}: {random:?}");
        }
    }

    #[test]
    fn backoff_is_capped_and_never_overflows() {
        let p = policy();
        for failures in [6, 10, 32, 1000, u32::MAX] {
            let delay = p.delay_with_jitter(failures, None, 1.0);
            assert_eq!(delay, Duration::from_secs(2), "failures={failures}");
            assert!(p.delay(failures, None) >= Duration::from_secs(1));
        }
    }

    #[test]
    fn out_of_range_jitter_is_clamped() {
        let p = policy();
        assert_eq!(p.delay_with_jitter(1, None, -3.0), Duration::from_millis(50));
        assert_eq!(p.delay_with_jitter(1, None, 7.0), Duration::from_millis(100));
    }

    #[test]
    fn retry_after_wins_over_shorter_backoff_even_above_the_cap() {
        let p = policy();
        let wait = Duration::from_secs(7);
        assert_eq!(p.delay_with_jitter(1, Some(wait), 1.0), wait);
        // A Retry-After shorter than the backoff does not shorten it.
        assert_eq!(
            p.delay_with_jitter(5, Some(Duration::from_millis(1)), 1.0),
            Duration::from_secs(1).mul_f64(1.6)
        );
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
