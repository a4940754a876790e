//! Injectable faults: what they are (serde-able, for the admin API) and how a request meets them.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::StatusCode;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Faults the simulator injects, per request. `Default` injects none.
///
/// JSON form (admin API `PUT /_sim/faults`; missing fields take their default):
/// `{"latency_ms":0,"error_rate":0.0,"rate_limit_rps":null,"retry_after_secs":1,
///   "commit_then_fail":0,"commit_then_fail_mode":"server_error","token_ttl_secs":null,
///   "write_response_delay_ms":0}`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Added before every API request is handled.
    #[serde(rename = "latency_ms", with = "duration_ms")]
    pub latency: Duration,
    /// Share (0.0–1.0) of API requests answered 500 or 503 without being applied.
    pub error_rate: f64,
    /// Above this many requests per second (token bucket, burst of the same size), answer 429.
    /// `Some(0)` answers every request 429.
    pub rate_limit_rps: Option<u32>,
    /// The `Retry-After` value, in seconds, sent with a 429.
    pub retry_after_secs: u64,
    /// The next N writes are applied, but their response is lost (see `commit_then_fail_mode`).
    /// Counts down as writes consume it.
    pub commit_then_fail: u32,
    pub commit_then_fail_mode: LostResponse,
    /// Lifetime of tokens issued from now on; `None` keeps `SimConfig::token_ttl`.
    #[serde(rename = "token_ttl_secs", with = "optional_duration_secs")]
    pub token_ttl: Option<Duration>,
    /// Held after a write is applied, before its response is sent: a client that dies in
    /// this window leaves a write it never learnt about.
    #[serde(rename = "write_response_delay_ms", with = "duration_ms")]
    pub write_response_delay: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency: Duration::ZERO,
            error_rate: 0.0,
            rate_limit_rps: None,
            // A 429 without a usable delay would only teach clients to spin.
            retry_after_secs: 1,
            commit_then_fail: 0,
            commit_then_fail_mode: LostResponse::default(),
            token_ttl: None,
            write_response_delay: Duration::ZERO,
        }
    }
}

/// How the response of a "commit then fail" write is lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostResponse {
    /// Answer 500 `{"Message":"An error has occurred."}` after applying the write.
    #[default]
    ServerError,
    /// Close the connection without a complete response after applying the write.
    Disconnect,
}

/// What the fault layer decided for one request, before it reaches a handler.
pub(crate) enum Verdict {
    Proceed,
    RateLimited { retry_after_secs: u64 },
    ServerError(StatusCode),
}

/// The faults in force plus the run-time state they need.
pub(crate) struct FaultState {
    faults: Faults,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl FaultState {
    pub(crate) fn new(faults: Faults) -> Self {
        let limiter = faults
            .rate_limit_rps
            .and_then(NonZeroU32::new)
            .map(|rps| RateLimiter::direct(Quota::per_second(rps)));
        FaultState { faults, limiter }
    }

    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    pub(crate) fn latency(&self) -> Duration {
        self.faults.latency
    }

    pub(crate) fn write_response_delay(&self) -> Duration {
        self.faults.write_response_delay
    }

    /// Rate limit first (a limited request never reaches the error dice), then the error rate.
    pub(crate) fn verdict(&self) -> Verdict {
        let limited = match (self.faults.rate_limit_rps, &self.limiter) {
            (Some(_), Some(limiter)) => limiter.check().is_err(),
            (Some(_), None) => true, // rate_limit_rps == 0
            (None, _) => false,
        };
        if limited {
            return Verdict::RateLimited {
                retry_after_secs: self.faults.retry_after_secs,
            };
        }
        if self.faults.error_rate > 0.0 {
            let mut rng = rand::rng();
            if rng.random::<f64>() < self.faults.error_rate {
                let status = if rng.random_bool(0.5) {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                return Verdict::ServerError(status);
            }
        }
        Verdict::Proceed
    }

    /// Consumes one "commit then fail" if any is left; says how the response is to be lost.
    pub(crate) fn take_commit_then_fail(&mut self) -> Option<LostResponse> {
        if self.faults.commit_then_fail == 0 {
            return None;
        }
        self.faults.commit_then_fail -= 1;
        Some(self.faults.commit_then_fail_mode)
    }
}

/// `Duration` as whole milliseconds: friendlier to `curl` than serde's `{secs, nanos}`.
mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// `Option<Duration>` as seconds, fractions allowed (`0.5`), so tests need not wait whole seconds.
mod optional_duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            None => Ok(None),
            Some(secs) => Duration::try_from_secs_f64(secs)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}
