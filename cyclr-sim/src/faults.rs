//! Injectable faults: what they are (serde-able, for the admin API) and how a request meets them.

use std::num::NonZeroU32;
use std::time::{Duration, Instant, SystemTime};

use axum::http::StatusCode;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Faults the simulator injects, per request. `Default` injects none.
///
/// JSON form (admin API `PUT /_sim/faults`; missing fields take their default):
/// `{"latency_ms":0,"error_rate":0.0,"rate_limit_rps":null,"retry_after_secs":1,
///   "retry_after_form":"seconds","commit_then_fail":0,"commit_then_fail_mode":"server_error",
///   "commit_then_fail_rate":0.0,"token_ttl_secs":null,"write_response_delay_ms":0,"outage_ms":0,
///   "outage_endpoints":[],"install_error_echoes_credentials":false,"apply_after_disconnect":false,
///   "list_lag_ms":0,"empty_lists_ms":0,"html_answer":null,"max_page_size":null,"long_rejection":null,
///   "hold_cycle_changes":false,"seed":null}`
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
    /// The `Retry-After` sent with a 429, in seconds: `0` and negative values are sent as
    /// they are (a negative one is not valid HTTP, as a faulty server might send it); with
    /// `retry_after_form: "http_date"` it is the offset from now of the date sent, so a
    /// negative value sends a date in the past.
    pub retry_after_secs: i64,
    /// How the `Retry-After` of a 429 is written.
    pub retry_after_form: RetryAfterForm,
    /// The next N writes are applied, but their response is lost (see `commit_then_fail_mode`).
    /// Counts down as writes consume it.
    pub commit_then_fail: u32,
    /// How the response of a "commit then fail" write is lost.
    pub commit_then_fail_mode: LostResponse,
    /// Share (0.0–1.0) of writes, after the `commit_then_fail` count is used up, that are
    /// applied and then lose their response the same way: a steady trickle rather than a
    /// countdown, for long chaos runs.
    pub commit_then_fail_rate: f64,
    /// Lifetime of tokens issued from now on; `None` keeps `SimConfig::token_ttl`.
    #[serde(rename = "token_ttl_secs", with = "optional_duration_secs")]
    pub token_ttl: Option<Duration>,
    /// Held after a write is applied, before its response is sent: a client that dies in
    /// this window leaves a write it never learnt about.
    #[serde(rename = "write_response_delay_ms", with = "duration_ms")]
    pub write_response_delay: Duration,
    /// For this long after the faults are set, every request to `outage_endpoints` answers
    /// 503 without being applied; then the outage ends by itself (a short Cyclr outage).
    #[serde(rename = "outage_ms", with = "duration_ms")]
    pub outage: Duration,
    /// The endpoints the outage hits, as the statistics name them (`"GET /api/partner/details"`,
    /// `"POST /oauth/token"`); empty: every API endpoint.
    pub outage_endpoints: Vec<String>,
    /// Install Connector answers 400 with a `Message` that echoes the credential it was sent
    /// (`ApiKey`, else `Password`), as a Cyclr error text can, and installs nothing.
    pub install_error_echoes_credentials: bool,
    /// Every API request runs to its end even when its client has gone away (timed out,
    /// closed the connection): a write is applied although nobody hears its answer, as a real
    /// web server does. Without it, a client that leaves while its request waits (say in
    /// `latency_ms`) cancels the request, and a write it carried never happens.
    pub apply_after_disconnect: bool,
    /// A newly created account shows in List Accounts (legacy and v1.0) only this long after
    /// its create answered (a lagging read replica or search index); `GET /v1.0/accounts/{id}`
    /// and the other calls see it at once.
    #[serde(rename = "list_lag_ms", with = "duration_ms")]
    pub list_lag: Duration,
    /// For this long after the faults are set, List Accounts (legacy and v1.0) answers
    /// `200 []` although accounts exist (a caching proxy, a regional host mix-up); every other
    /// call sees them.
    #[serde(rename = "empty_lists_ms", with = "duration_ms")]
    pub empty_lists: Duration,
    /// A web application firewall in front of Cyclr: the requests it matches are answered
    /// with an HTML page and never reach Cyclr (nothing is applied). `None`: no firewall.
    pub html_answer: Option<HtmlAnswer>,
    /// The largest page a paged list serves: a larger `pageSize` gets this many elements
    /// (and pages are counted in this size), as a server with a cap it does not announce.
    /// Caps every v1.0 list and a paged List Accounts; `None`: no cap.
    pub max_page_size: Option<usize>,
    /// Cyclr refusing the requests it matches with `400` and a `Message` of a given length
    /// (nothing is applied): a client must bound what it copies into status, Events and logs.
    /// `None`: no such answer.
    pub long_rejection: Option<LongRejection>,
    /// Cycle activations and deactivations are answered 200 and applied, but each cycle keeps
    /// showing the `Status` it had before the first of them (in lists, `GET` and the 409 of a
    /// variable edit) until the faults are set without this: Cyclr still starting the cycle,
    /// or finishing its queued work.
    pub hold_cycle_changes: bool,
    /// Seeds the dice of `error_rate` and `commit_then_fail_rate`, so a run sees the same
    /// sequence of decisions (the n-th request meets the same fate); `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency: Duration::ZERO,
            error_rate: 0.0,
            rate_limit_rps: None,
            // A 429 without a usable delay would only teach clients to spin.
            retry_after_secs: 1,
            retry_after_form: RetryAfterForm::default(),
            commit_then_fail: 0,
            commit_then_fail_mode: LostResponse::default(),
            commit_then_fail_rate: 0.0,
            token_ttl: None,
            write_response_delay: Duration::ZERO,
            outage: Duration::ZERO,
            outage_endpoints: Vec::new(),
            install_error_echoes_credentials: false,
            apply_after_disconnect: false,
            list_lag: Duration::ZERO,
            empty_lists: Duration::ZERO,
            html_answer: None,
            max_page_size: None,
            long_rejection: None,
            hold_cycle_changes: false,
            seed: None,
        }
    }
}

/// How the `Retry-After` of a 429 is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryAfterForm {
    /// delay-seconds: `Retry-After: 1`.
    #[default]
    Seconds,
    /// An HTTP date `retry_after_secs` from now: `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`.
    HttpDate,
}

impl Faults {
    /// The `Retry-After` header value of a 429 sent at `now`.
    pub(crate) fn retry_after_header(&self, now: SystemTime) -> String {
        match self.retry_after_form {
            RetryAfterForm::Seconds => self.retry_after_secs.to_string(),
            RetryAfterForm::HttpDate => {
                let offset = Duration::from_secs(self.retry_after_secs.unsigned_abs());
                let at = if self.retry_after_secs < 0 {
                    now - offset
                } else {
                    now + offset
                };
                httpdate::fmt_http_date(at)
            }
        }
    }
}

/// What the firewall of [`Faults::html_answer`] answers, and to which requests.
///
/// JSON form: `{"status":403,"endpoints":[]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HtmlAnswer {
    /// The status of the HTML page, e.g. `200` (a "request blocked" page that claims
    /// success) or `403`.
    #[serde(with = "status_code")]
    pub status: StatusCode,
    /// The endpoints answered, as the statistics name them (`"POST /api/partner/createaccount"`),
    /// or a method alone for all of its endpoints (`"POST"`); empty: every API endpoint.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

impl HtmlAnswer {
    fn matches(&self, endpoint: &str) -> bool {
        matches_endpoint(&self.endpoints, endpoint)
    }
}

/// What [`Faults::long_rejection`] answers, and to which requests.
///
/// JSON form: `{"chars":300000,"endpoints":["POST /api/partner/createaccount"]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LongRejection {
    /// The length of the `Message`, in characters (Cyclr's validation text, repeated).
    pub chars: usize,
    /// The endpoints answered, named as for [`HtmlAnswer::endpoints`]; empty: every API
    /// endpoint, `/oauth/token` included.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

impl LongRejection {
    /// The `Message`: exactly `chars` characters.
    pub(crate) fn message(&self) -> String {
        const TEXT: &str = "The request is invalid: the account could not be validated. ";
        TEXT.chars().cycle().take(self.chars).collect()
    }
}

/// Whether `endpoint` (`"POST /api/partner/createaccount"`) is one of `endpoints`, named in
/// full or by its method alone; an empty list names every endpoint.
fn matches_endpoint(endpoints: &[String], endpoint: &str) -> bool {
    let method = endpoint.split(' ').next().unwrap_or_default();
    endpoints.is_empty() || endpoints.iter().any(|e| e == endpoint || e == method)
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
    RateLimited {
        retry_after: String,
    },
    ServerError(StatusCode),
    /// The firewall's HTML page, with this status.
    Html(StatusCode),
    /// 400 with this (long) `Message`.
    Rejected(String),
}

/// The faults in force plus the run-time state they need.
pub(crate) struct FaultState {
    faults: Faults,
    limiter: Option<DefaultDirectRateLimiter>,
    /// When these faults were set: the outage runs from here.
    set_at: Instant,
    /// The dice of the error rate and the commit-then-fail rate.
    dice: StdRng,
}

impl FaultState {
    pub(crate) fn new(faults: Faults) -> Self {
        let limiter = faults
            .rate_limit_rps
            .and_then(NonZeroU32::new)
            .map(|rps| RateLimiter::direct(Quota::per_second(rps)));
        let dice = match faults.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        FaultState {
            faults,
            limiter,
            set_at: Instant::now(),
            dice,
        }
    }

    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    pub(crate) fn install_error_echoes_credentials(&self) -> bool {
        self.faults.install_error_echoes_credentials
    }

    pub(crate) fn latency(&self) -> Duration {
        self.faults.latency
    }

    pub(crate) fn write_response_delay(&self) -> Duration {
        self.faults.write_response_delay
    }

    pub(crate) fn apply_after_disconnect(&self) -> bool {
        self.faults.apply_after_disconnect
    }

    pub(crate) fn hold_cycle_changes(&self) -> bool {
        self.faults.hold_cycle_changes
    }

    pub(crate) fn list_lag(&self) -> Duration {
        self.faults.list_lag
    }

    /// Whether List Accounts answers `[]` now (`empty_lists_ms`).
    pub(crate) fn lists_empty(&self) -> bool {
        self.set_at.elapsed() < self.faults.empty_lists
    }

    /// The largest page a paged list serves (`max_page_size`).
    pub(crate) fn max_page_size(&self) -> Option<usize> {
        self.faults.max_page_size
    }

    /// The firewall first (it stands in front of Cyclr), then the outage, then the rate limit (a refused request never reaches the error dice),
    /// then the error rate, then a long rejection. `endpoint` as the statistics name it.
    pub(crate) fn verdict(&mut self, endpoint: &str) -> Verdict {
        let faults = &self.faults;
        if let Some(html) = &faults.html_answer
            && html.matches(endpoint)
        {
            return Verdict::Html(html.status);
        }
        if self.set_at.elapsed() < faults.outage
            && (faults.outage_endpoints.is_empty() || faults.outage_endpoints.iter().any(|e| e == endpoint))
        {
            return Verdict::ServerError(StatusCode::SERVICE_UNAVAILABLE);
        }
        let limited = match (self.faults.rate_limit_rps, &self.limiter) {
            (Some(_), Some(limiter)) => limiter.check().is_err(),
            (Some(_), None) => true, // rate_limit_rps == 0
            (None, _) => false,
        };
        if limited {
            return Verdict::RateLimited {
                retry_after: self.faults.retry_after_header(SystemTime::now()),
            };
        }
        if self.faults.error_rate > 0.0 {
            let rng = &mut self.dice;
            if rng.random::<f64>() < self.faults.error_rate {
                let status = if rng.random_bool(0.5) {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                return Verdict::ServerError(status);
            }
        }
        if let Some(rejection) = &self.faults.long_rejection
            && matches_endpoint(&rejection.endpoints, endpoint)
        {
            return Verdict::Rejected(rejection.message());
        }
        Verdict::Proceed
    }

    /// Consumes one "commit then fail" if any is left; says how the response is to be lost.
    pub(crate) fn take_commit_then_fail(&mut self) -> Option<LostResponse> {
        if self.faults.commit_then_fail > 0 {
            self.faults.commit_then_fail -= 1;
            return Some(self.faults.commit_then_fail_mode);
        }
        let rate = self.faults.commit_then_fail_rate;
        (rate > 0.0 && self.dice.random::<f64>() < rate).then_some(self.faults.commit_then_fail_mode)
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

/// A status code as its number; a number that is no HTTP status is refused.
mod status_code {
    use axum::http::StatusCode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(status.as_u16())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StatusCode, D::Error> {
        let code = u16::deserialize(d)?;
        StatusCode::from_u16(code).map_err(|_| serde::de::Error::custom(format!("{code} is not an HTTP status")))
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
