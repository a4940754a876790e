//! The request budget of one partner: the configured rate limiter, the hold after a 429, and
//! the adaptive rate (AIMD) that 429s lower and quiet time raises again.
//!
//! A budget belongs to the partner, not to one client value: [`CyclrClient::with_credentials`]
//! and [`CyclrClient::with_config`] hand it to the rebuilt client, so rotating credentials
//! neither resets the limiter nor forgets a `Retry-After`.
//!
//! [`CyclrClient::with_credentials`]: crate::CyclrClient::with_credentials
//! [`CyclrClient::with_config`]: crate::CyclrClient::with_config

use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::error::{CyclrError, Result};

/// The shortest hold after a 429, whatever `Retry-After` says (`0`, a negative value or a
/// date already past would otherwise mean "retry at once"). It doubles with each further 429
/// episode without a success in between, and is then stretched by a random 0–50 % so that
/// clients do not come back in step.
pub const MIN_HOLD: Duration = Duration::from_secs(1);
/// The longest hold after a 429, including a larger `Retry-After` from Cyclr: 5 minutes.
pub const MAX_HOLD: Duration = Duration::from_secs(300);
/// The adaptive rate never goes below this many requests per second.
pub const MIN_RATE: f64 = 0.1;
/// Each 429 episode multiplies the adaptive rate by this factor.
pub const DECREASE_FACTOR: f64 = 0.5;
/// Every this long without a 429 the adaptive rate grows by [`INCREASE_SHARE`] of the
/// configured rate, up to the configured rate.
pub const INCREASE_INTERVAL: Duration = Duration::from_secs(10);
/// Share of the configured rate added per [`INCREASE_INTERVAL`] without a 429.
pub const INCREASE_SHARE: f64 = 0.1;

/// The request budget of one partner. Every request waits here first: out any 429 hold, then
/// for the configured limiter (`requests_per_second` with a `burst`), then, while 429s have
/// lowered the rate below the configured one, for its slot at the adapted rate.
///
/// A budget may be one of `shares` equal shares of the partner's quota, each held by another
/// process (a sharded operator): it then lets through `requests_per_second / shares` per
/// second with bursts of `burst / shares` (rounded down, at least 1), so that the shares
/// together never exceed the quota, whenever each sends. The configured rate below is the
/// share's.
///
/// The adapted rate follows AIMD: each 429 episode halves it (at least [`MIN_RATE`] req/s);
/// each [`INCREASE_INTERVAL`] without a 429 adds [`INCREASE_SHARE`] of the configured rate,
/// never above it. A 429 answering a request sent before the current episode began belongs to
/// that episode: concurrent requests refused together count once.
pub struct RateBudget {
    requests_per_second: NonZeroU32,
    burst: NonZeroU32,
    shares: NonZeroU32,
    limiter: DefaultDirectRateLimiter,
    state: Mutex<State>,
}

#[derive(Clone)]
struct State {
    /// No request is sent before this instant (set by 429s).
    held_until: Instant,
    /// 429 episodes since the last success: the exponent of the hold floor.
    streak: u32,
    /// When the latest 429 episode began.
    episode_started: Option<Instant>,
    /// The adapted rate, requests per second.
    rate: f64,
    /// Start of the current period without a 429 (moved on by each increase step).
    quiet_since: Instant,
    /// The earliest instant the next request may go out at the adapted rate.
    next_slot: Instant,
}

impl fmt::Debug for RateBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateBudget")
            .field("requests_per_second", &self.requests_per_second)
            .field("burst", &self.burst)
            .field("shares", &self.shares)
            .field("current_rate", &self.current_rate())
            .field("hold_remaining", &self.hold_remaining())
            .finish()
    }
}

impl RateBudget {
    /// A budget allowing one of `shares` equal shares of `requests_per_second` with bursts of
    /// `burst` (`shares` 1: all of it), no hold, the adapted rate at the share's. All three
    /// must be at least 1 (else [`CyclrError::Config`]).
    pub fn new(requests_per_second: u32, burst: u32, shares: u32) -> Result<Self> {
        let at_least_one = |value: u32, what: &str| {
            NonZeroU32::new(value).ok_or_else(|| CyclrError::Config(format!("{what} must be at least 1")))
        };
        let rate = at_least_one(requests_per_second, "requests_per_second")?;
        let burst = at_least_one(burst, "burst")?;
        let shares = at_least_one(shares, "shares")?;
        let now = Instant::now();
        Ok(Self::with_state(
            rate,
            burst,
            shares,
            State {
                held_until: now,
                streak: 0,
                episode_started: None,
                rate: f64::from(rate.get()) / f64::from(shares.get()),
                quiet_since: now,
                next_slot: now,
            },
        ))
    }

    fn with_state(requests_per_second: NonZeroU32, burst: NonZeroU32, shares: NonZeroU32, state: State) -> Self {
        // One request per `shares / requests_per_second` seconds: a share's rate need not be
        // a whole number (10/s in 3 shares: one every 300 ms).
        let period = Duration::from_secs_f64(f64::from(shares.get()) / f64::from(requests_per_second.get()));
        let quota = Quota::with_period(period).expect("a period of at least 1/u32::MAX s is not zero");
        let burst_share = NonZeroU32::new(burst.get() / shares.get()).unwrap_or(NonZeroU32::MIN);
        RateBudget {
            requests_per_second,
            burst,
            shares,
            limiter: RateLimiter::direct(quota.allow_burst(burst_share)),
            state: Mutex::new(state),
        }
    }

    /// The same budget under a new quota: the hold, the 429 streak and the adapted rate
    /// (lowered to the new configured rate if above it) carry over.
    pub fn resized(&self, requests_per_second: u32, burst: u32, shares: u32) -> Result<Self> {
        let fresh = RateBudget::new(requests_per_second, burst, shares)?;
        let mut state = self.lock().clone();
        state.rate = state.rate.min(fresh.configured_rate());
        Ok(Self::with_state(
            fresh.requests_per_second,
            fresh.burst,
            fresh.shares,
            state,
        ))
    }

    /// The configured rate of this budget (its share of the quota), requests per second.
    pub fn configured_rate(&self) -> f64 {
        f64::from(self.requests_per_second.get()) / f64::from(self.shares.get())
    }

    /// The quota's rate and burst, and the number of shares it is split into, as this budget
    /// was built.
    pub fn quota(&self) -> (u32, u32, u32) {
        (self.requests_per_second.get(), self.burst.get(), self.shares.get())
    }

    /// The rate requests may go out at now, requests per second: the configured rate unless
    /// recent 429s lowered it. For metrics and status.
    pub fn current_rate(&self) -> f64 {
        let mut state = self.lock();
        self.increase(&mut state, Instant::now());
        state.rate
    }

    /// How long requests stay held after a 429; zero when none is held.
    pub fn hold_remaining(&self) -> Duration {
        self.lock().held_until.saturating_duration_since(Instant::now())
    }

    /// Waits until a request may be sent. Fails at once with [`CyclrError::RateLimited`] when
    /// a 429 hold lasts past `deadline`, so the caller can requeue instead of blocking.
    pub(crate) async fn acquire(&self, deadline: Instant) -> Result<()> {
        loop {
            let held_until = self.lock().held_until;
            let now = Instant::now();
            if held_until > now {
                if held_until > deadline {
                    return Err(CyclrError::RateLimited {
                        retry_after: None,
                        hold: held_until - now,
                    });
                }
                tokio::time::sleep_until(held_until.into()).await;
            }
            self.limiter.until_ready().await;
            if let Some(slot) = self.reserve_slot() {
                tokio::time::sleep_until(slot.into()).await;
            }
            // A 429 seen while this request waited holds it too: wait again, then take a new
            // slot, so held requests leave one by one at the adapted rate, not all at once.
            if self.lock().held_until <= Instant::now() {
                return Ok(());
            }
        }
    }

    /// The slot of the next request at the adapted rate, or `None` while it is the configured
    /// rate (the limiter alone paces then).
    fn reserve_slot(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.lock();
        self.increase(&mut state, now);
        if state.rate >= self.configured_rate() {
            return None;
        }
        let slot = state.next_slot.max(now);
        state.next_slot = slot + Duration::from_secs_f64(1.0 / state.rate);
        Some(slot)
    }

    /// A request sent at `sent_at` succeeded: the hold floor starts again from [`MIN_HOLD`].
    pub(crate) fn on_success(&self, sent_at: Instant) {
        let mut state = self.lock();
        if state.episode_started.is_none_or(|started| sent_at >= started) {
            state.streak = 0;
        }
    }

    /// A request sent at `sent_at` was answered 429 with `retry_after`: holds every request
    /// and, for a new episode, halves the rate. Returns the hold now in force.
    pub(crate) fn on_rate_limited(&self, sent_at: Instant, retry_after: Option<Duration>) -> Duration {
        self.rate_limited_with_jitter(sent_at, retry_after, rand::random::<f64>())
    }

    fn rate_limited_with_jitter(&self, sent_at: Instant, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let now = Instant::now();
        let mut state = self.lock();
        self.increase(&mut state, now);
        if state.episode_started.is_none_or(|started| sent_at >= started) {
            state.streak = state.streak.saturating_add(1);
            state.episode_started = Some(now);
            state.rate = (state.rate * DECREASE_FACTOR).max(MIN_RATE);
        }
        state.quiet_since = now;
        let hold = hold_for(state.streak, retry_after, jitter);
        state.held_until = state.held_until.max(now + hold);
        state.held_until - now
    }

    /// Additive increase, applied lazily: one step per whole quiet interval elapsed.
    fn increase(&self, state: &mut State, now: Instant) {
        let configured = self.configured_rate();
        if state.rate >= configured {
            return;
        }
        let quiet = now.saturating_duration_since(state.quiet_since);
        let steps = (quiet.as_secs_f64() / INCREASE_INTERVAL.as_secs_f64()).floor();
        if steps >= 1.0 {
            state.rate = (state.rate + steps * INCREASE_SHARE * configured).min(configured);
            state.quiet_since += INCREASE_INTERVAL.mul_f64(steps);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements; a panic elsewhere must not wedge it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The hold after the `streak`-th 429 episode in a row: Cyclr's `Retry-After`, but at least
/// [`MIN_HOLD`] doubled per further episode and stretched by `jitter` (0–1) × 50 %, and at
/// most [`MAX_HOLD`].
pub fn hold_for(streak: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let exponent = streak.saturating_sub(1).min(16);
    let floor = MIN_HOLD.saturating_mul(1 << exponent).min(MAX_HOLD);
    let floor = floor.mul_f64(1.0 + 0.5 * jitter.clamp(0.0, 1.0));
    floor.max(retry_after.unwrap_or_default()).min(MAX_HOLD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_has_a_growing_floor_and_a_cap() {
        // `Retry-After: 0` (or a past date, or none) still holds for the floor.
        assert_eq!(hold_for(1, Some(Duration::ZERO), 0.0), Duration::from_secs(1));
        assert_eq!(hold_for(1, None, 1.0), Duration::from_millis(1500));
        assert_eq!(hold_for(2, None, 0.0), Duration::from_secs(2));
        assert_eq!(hold_for(4, Some(Duration::ZERO), 0.0), Duration::from_secs(8));
        // A longer Retry-After wins over the floor; a huge one is capped.
        assert_eq!(hold_for(1, Some(Duration::from_secs(60)), 1.0), Duration::from_secs(60));
        assert_eq!(hold_for(1, Some(Duration::from_secs(86_400)), 0.0), MAX_HOLD);
        for streak in [9, 10, 100, u32::MAX] {
            assert_eq!(hold_for(streak, None, 1.0), MAX_HOLD, "streak {streak}");
        }
    }

    #[test]
    fn a_429_episode_halves_the_rate_once_and_successes_reset_the_floor() {
        let budget = RateBudget::new(10, 20, 1).unwrap();
        let sent = Instant::now();
        let first = budget.rate_limited_with_jitter(sent, Some(Duration::ZERO), 0.0);
        assert!(first > Duration::from_millis(900) && first <= MIN_HOLD, "{first:?}");
        assert_eq!(budget.current_rate(), 5.0);
        // Another request sent before the episode began: same episode, no second cut.
        budget.rate_limited_with_jitter(sent, None, 0.0);
        assert_eq!(budget.current_rate(), 5.0);
        // A request sent after it: a new episode, with a doubled floor.
        let second = budget.rate_limited_with_jitter(Instant::now(), None, 0.0);
        assert!(second > Duration::from_millis(1900), "{second:?}");
        assert_eq!(budget.current_rate(), 2.5);
        budget.on_success(Instant::now());
        let third = budget.rate_limited_with_jitter(Instant::now(), None, 0.0);
        assert!(third <= second, "the floor starts again after a success: {third:?}");
        assert_eq!(budget.current_rate(), 1.25);
        for _ in 0..20 {
            budget.rate_limited_with_jitter(Instant::now(), None, 0.0);
        }
        assert_eq!(budget.current_rate(), MIN_RATE);
        assert_eq!(budget.hold_remaining().as_secs(), MAX_HOLD.as_secs() - 1);
    }

    #[test]
    fn quiet_time_raises_the_rate_a_tenth_per_interval_up_to_the_configured_rate() {
        let budget = RateBudget::new(10, 20, 1).unwrap();
        budget.rate_limited_with_jitter(Instant::now(), None, 0.0);
        let mut state = budget.lock();
        assert_eq!(state.rate, 5.0);
        let start = state.quiet_since;
        budget.increase(&mut state, start + Duration::from_secs(9));
        assert_eq!(state.rate, 5.0);
        budget.increase(&mut state, start + Duration::from_secs(25));
        assert_eq!(state.rate, 7.0);
        budget.increase(&mut state, start + Duration::from_secs(30));
        assert_eq!(state.rate, 8.0);
        budget.increase(&mut state, start + Duration::from_secs(3600));
        assert_eq!(state.rate, 10.0);
    }

    #[test]
    fn resizing_keeps_the_hold_and_caps_the_adapted_rate() {
        let budget = RateBudget::new(10, 20, 1).unwrap();
        budget.rate_limited_with_jitter(Instant::now(), Some(Duration::from_secs(30)), 0.0);
        let smaller = budget.resized(2, 2, 1).unwrap();
        assert!(smaller.hold_remaining() > Duration::from_secs(29));
        assert_eq!(smaller.current_rate(), 2.0);
        assert_eq!(smaller.quota(), (2, 2, 1));
        assert!(matches!(budget.resized(0, 1, 1), Err(CyclrError::Config(_))));
        assert!(matches!(RateBudget::new(1, 0, 1), Err(CyclrError::Config(_))));
        assert!(matches!(RateBudget::new(1, 1, 0), Err(CyclrError::Config(_))));
    }

    #[test]
    fn a_share_lets_through_its_part_of_the_rate_and_of_the_burst() {
        let third = RateBudget::new(10, 6, 3).unwrap();
        assert!((third.configured_rate() - 10.0 / 3.0).abs() < 1e-9);
        assert!((third.current_rate() - 10.0 / 3.0).abs() < 1e-9);
        assert_eq!(third.quota(), (10, 6, 3));
        // A burst of 6 in 3 shares: 2 at once, then one each 300 ms.
        assert!(third.limiter.check().is_ok() && third.limiter.check().is_ok());
        assert!(third.limiter.check().is_err(), "the share's burst is spent");
        // A burst smaller than the shares still lets one request through.
        let tiny = RateBudget::new(10, 2, 3).unwrap();
        assert!(tiny.limiter.check().is_ok());
        assert!(tiny.limiter.check().is_err());
        // 429s lower a share's rate from the share's, not from the whole quota's.
        third.rate_limited_with_jitter(Instant::now(), None, 0.0);
        assert!((third.current_rate() - 5.0 / 3.0).abs() < 1e-9);
    }
}
