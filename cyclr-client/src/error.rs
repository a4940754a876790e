//! What can go wrong talking to Cyclr, and which failures are worth retrying.

use std::time::Duration;

/// Cloneable so that one failed token request can be handed to every caller waiting on it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CyclrError {
    /// 401/403: the credentials or the token were refused.
    #[error("Cyclr refused the credentials: {message}")]
    Unauthorized {
        /// Cyclr's `Message` (or OAuth's `error_description`), else an excerpt of the body.
        message: String,
    },
    /// 404: usually an unknown account id.
    #[error("Cyclr found no such object: {message}")]
    NotFound {
        /// Cyclr's `Message`, e.g. `Account … not found.`
        message: String,
    },
    /// v1.0 create account: the caller-chosen `Id` is taken (400 `ID already in use`,
    /// observed). Read `GET /v1.0/accounts/{id}` to tell whether it is the account this
    /// caller created before (a repeated create) or someone else's.
    #[error("Cyclr says the account id is taken: {message}")]
    IdInUse {
        /// Cyclr's `Message`, e.g. `ID already in use`.
        message: String,
    },
    /// 409: Cyclr refuses to change a running cycle (variables, settings, steps; observed).
    /// Deactivate it, make the change, activate it again.
    #[error("Cyclr refused to change a running cycle: {message}")]
    Conflict {
        /// Cyclr's `Message`.
        message: String,
    },
    /// 400 and other 4xx: Cyclr rejected the request; `message` is Cyclr's own.
    #[error("Cyclr rejected the request: {message}")]
    Validation {
        /// The HTTP status, 400–499 (not 401, 404, 409 or 429).
        status: u16,
        /// Cyclr's `Message`, e.g. `Name is required.`
        message: String,
    },
    /// 429: Cyclr asks us to slow down. `retry_after` is what its `Retry-After` header said
    /// (`None` when absent or unreadable, zero for `0` or a date already past); `hold` is how
    /// long the client actually stops sending to this partner from the moment the error is
    /// returned: `retry_after` raised to a growing floor and capped (see
    /// [`crate::RateBudget`]). Requeue after `hold`.
    #[error("Cyclr rate limit reached, holding requests for {:.1}s", hold.as_secs_f64())]
    RateLimited {
        /// What Cyclr's `Retry-After` said, at most a day.
        retry_after: Option<Duration>,
        /// How long this partner's requests are held, from when the error was returned.
        hold: Duration,
    },
    /// 5xx.
    #[error("Cyclr server error {status}: {message}")]
    Server {
        /// The HTTP status, 500–599 (or another code no other variant takes).
        status: u16,
        /// Cyclr's `Message` (`An error has occurred.`), else an excerpt of the body.
        message: String,
    },
    /// No answer within the request timeout: the request may or may not have been applied.
    #[error("Cyclr did not answer in time: {0}")]
    Timeout(String),
    /// The request never completed at the network level.
    #[error("could not reach Cyclr: {0}")]
    Transport(String),
    /// Cyclr answered 2xx with JSON we cannot read.
    #[error("unexpected response from Cyclr: {0}")]
    Decode(String),
    /// Something other than Cyclr's JSON answered: an HTML page or text, as a web
    /// application firewall, proxy or load balancer in front of Cyclr writes one, or an API
    /// URL that points at a web site. It says nothing of the credentials (a firewall's `403`
    /// is not Cyclr refusing them), nor of whether a write reached Cyclr (a firewall's block
    /// page may even claim `200`). A 5xx page stays [`CyclrError::Server`]: that is transient.
    #[error(
        "Cyclr's address answered {status} with {} instead of JSON (a firewall or proxy in front of Cyclr?): {}",
        content_type.as_deref().unwrap_or("no Content-Type"),
        if excerpt.is_empty() { "an empty body" } else { excerpt }
    )]
    NotJson {
        /// The HTTP status of the answer.
        status: u16,
        /// Its `Content-Type` header, if any (e.g. `text/html; charset=utf-8`).
        content_type: Option<String>,
        /// The first 200 characters of its body, white space collapsed, `…` when cut.
        excerpt: String,
    },
    /// The client was configured wrongly (bad URL, …).
    #[error("invalid Cyclr client configuration: {0}")]
    Config(String),
}

impl CyclrError {
    /// The one place that decides whether a failure is transient.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CyclrError::RateLimited { .. }
                | CyclrError::Server { .. }
                | CyclrError::Timeout(_)
                | CyclrError::Transport(_)
        )
    }

    /// A failure after which a write may or may not have happened: never re-send a create.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            CyclrError::Server { .. }
                | CyclrError::Timeout(_)
                | CyclrError::Transport(_)
                | CyclrError::Decode(_)
                | CyclrError::NotJson { .. }
        )
    }

    /// How long to wait before calling this partner again: for a 429 the hold the client
    /// applied (never zero, at least the floor; see [`crate::RateBudget`]), else `None`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CyclrError::RateLimited { hold, .. } => Some(*hold),
            _ => None,
        }
    }

    /// Cyclr's own message, for conditions and Events.
    pub fn cyclr_message(&self) -> Option<&str> {
        match self {
            CyclrError::Unauthorized { message }
            | CyclrError::NotFound { message }
            | CyclrError::IdInUse { message }
            | CyclrError::Conflict { message }
            | CyclrError::Validation { message, .. }
            | CyclrError::Server { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// The result of a Cyclr call.
pub type Result<T, E = CyclrError> = std::result::Result<T, E>;
