//! The Cyclr Partner API client: every call goes through one path (`send`) that adds the
//! token, waits for the rate limiter, applies the timeout, maps errors and retries.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use backon::Retryable;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::debug;

use super::auth::{BearerToken, TokenCache};
use super::budget::RateBudget;
use super::error::{CyclrError, Result};
pub use super::retry::RetryPolicy;
use super::retry::parse_retry_after;
mod elements;
mod v1;

use elements::{Elements, Keeping, read_elements};

use super::types::{
    Account, AccountFields, AccountId, AccountUsage, IdResponse, InstallConnectorRequest, InstalledConnector,
    PartnerDetails, PricePlan, SignInToken, SignInTokenRequest, TokenResponse,
};

/// How to reach one Cyclr partner console.
#[derive(Clone)]
pub struct ClientConfig {
    /// e.g. `https://api.cyclr.com`; the API paths are appended to it.
    pub api_url: String,
    /// The partner's OAuth client id, sent to `POST /oauth/token`.
    pub client_id: String,
    /// The partner's OAuth client secret, sent to `POST /oauth/token` only.
    pub client_secret: SecretString,
    /// The configured request rate, requests per second (at least 1; see [`RateBudget`]).
    pub requests_per_second: u32,
    /// How many requests may go out at once above the rate (at least 1).
    pub burst: u32,
    /// How many clients, each in a process of its own, split `requests_per_second` and
    /// `burst` evenly (at least 1): this one keeps to its share (see [`RateBudget`]).
    pub shares: u32,
    /// Per HTTP request, from connecting until the whole body is read.
    pub request_timeout: Duration,
    /// How failed calls are retried.
    pub retry: RetryPolicy,
    /// Elements asked for per page of a v1.0 list (`pageSize`; at least 1). A page shorter
    /// than this is taken as the last, so it must not exceed the largest page Cyclr serves
    /// (not documented; Cyclr's own tests use 100).
    pub page_size: u32,
}

impl ClientConfig {
    /// The defaults: 10 requests per second with bursts of 20, all of it (one share), a 30 s
    /// request timeout, [`RetryPolicy::default`] and pages of 100.
    pub fn new(api_url: impl Into<String>, client_id: impl Into<String>, client_secret: SecretString) -> Self {
        ClientConfig {
            api_url: api_url.into(),
            client_id: client_id.into(),
            client_secret,
            requests_per_second: 10,
            burst: 20,
            shares: 1,
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            page_size: 100,
        }
    }
}

impl fmt::Debug for ClientConfig {
    /// By hand, so neither half of the credential pair can reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("api_url", &self.api_url)
            .field("client_id", &format_args!("[redacted]"))
            .field("client_secret", &format_args!("[redacted]"))
            .field("requests_per_second", &self.requests_per_second)
            .field("burst", &self.burst)
            .field("shares", &self.shares)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("page_size", &self.page_size)
            .finish()
    }
}

/// Told about every HTTP request the client makes (token requests and retries included).
pub trait CallObserver: Send + Sync {
    /// Called once per HTTP request, after its response (or its failure) arrived.
    fn observe(&self, call: &CallRecord);
}

/// One HTTP request to Cyclr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    /// The client operation, e.g. `"create_account"`, or `"oauth_token"`.
    pub endpoint: &'static str,
    /// The HTTP method, e.g. `"POST"`.
    pub method: &'static str,
    /// `None` when no response arrived (timeout, connection failure).
    pub status: Option<u16>,
    /// From sending the request until its whole body was read (or it failed).
    pub latency: Duration,
    /// Time spent before sending: waiting out a 429 hold (`Retry-After`) and the rate limiter.
    pub waited: Duration,
    /// 1-based attempt of the operation this request belongs to.
    pub attempt: u32,
}

/// A Cyclr Partner API client. Clones share the token and the [`RateBudget`] (rate limiter,
/// 429 hold, adaptive rate); clients rebuilt with [`CyclrClient::with_credentials`] or
/// [`CyclrClient::with_config`] share the budget but not the token.
#[derive(Clone)]
pub struct CyclrClient {
    inner: Arc<Inner>,
    observer: Option<Arc<dyn CallObserver>>,
}

struct Inner {
    config: ClientConfig,
    base: Url,
    http: reqwest::Client,
    budget: Arc<RateBudget>,
    tokens: TokenCache,
}

impl fmt::Debug for CyclrClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CyclrClient")
            .field("api_url", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
enum Verb {
    Get,
    Post,
    Put,
    Delete,
}

impl Verb {
    fn name(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Put => "PUT",
            Verb::Delete => "DELETE",
        }
    }

    fn method(self) -> Method {
        match self {
            Verb::Get => Method::GET,
            Verb::Post => Method::POST,
            Verb::Put => Method::PUT,
            Verb::Delete => Method::DELETE,
        }
    }
}

/// One logical operation; `send` turns it into one or more HTTP requests.
struct Call {
    endpoint: &'static str,
    /// `None` for `authenticate`, whose whole work is getting the token.
    request: Option<ApiRequest>,
    /// Safe to re-send after an ambiguous failure (timeout, 5xx, lost response).
    idempotent: bool,
    /// A token generation to replace even though it has not expired.
    stale_token: Option<u64>,
}

struct ApiRequest {
    verb: Verb,
    url: Url,
    /// Serialised once; may hold connector credentials, so `Call` has no `Debug`.
    json: Option<Vec<u8>>,
    /// Sent as `X-Cyclr-Account` for account-level (v1.0) calls.
    account: Option<String>,
}

impl Call {
    fn new(endpoint: &'static str, verb: Verb, url: Url) -> Self {
        Call {
            endpoint,
            request: Some(ApiRequest {
                verb,
                url,
                json: None,
                account: None,
            }),
            idempotent: true,
            stale_token: None,
        }
    }

    fn json(mut self, body: &impl Serialize) -> Result<Self> {
        let json = serde_json::to_vec(body)
            .map_err(|e| CyclrError::Config(format!("cannot encode the {} request: {e}", self.endpoint)))?;
        if let Some(request) = &mut self.request {
            request.json = Some(json);
        }
        Ok(self)
    }

    fn account(mut self, account_id: &str) -> Self {
        if let Some(request) = &mut self.request {
            request.account = Some(account_id.to_owned());
        }
        self
    }

    /// A write that must not happen twice: re-sent only when Cyclr certainly did not apply it.
    fn at_most_once(mut self) -> Self {
        self.idempotent = false;
        self
    }
}

/// What the attempts of one call share.
struct Attempts<'a> {
    /// Attempts made so far, token renewals included (for the observer and the log).
    number: AtomicU32,
    /// A token generation to replace: the caller's, then the one Cyclr refused. Kept for every
    /// later attempt, so a renewal that failed is tried again rather than the refused token.
    stale_token: Mutex<Option<u64>>,
    renewed_after_401: AtomicBool,
    /// Where a list's elements go as its body arrives (`None`: the body is read whole).
    elements: Option<&'a Mutex<dyn Elements + 'a>>,
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A 2xx response: its body and what names it when the body is not Cyclr's JSON.
#[derive(Default)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    /// The whole body; only its first bytes when it was read element by element.
    body: Vec<u8>,
    /// Why a body read element by element is not the list expected.
    refused: Option<serde_json::Error>,
}

impl Answer {
    /// The body read by `decode`: a body that is not JSON at all (a firewall's page with `200`)
    /// is [`CyclrError::NotJson`], JSON of another shape [`CyclrError::Decode`].
    fn decode<T>(self, endpoint: &str, decode: impl FnOnce(&[u8]) -> serde_json::Result<T>) -> Result<T> {
        decode(&self.body).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                self.not_json()
            } else {
                CyclrError::Decode(format!("{endpoint}: {e}"))
            }
        })
    }

    /// A body read element by element: [`decode`](Self::decode)'s errors for it.
    fn decoded(mut self, endpoint: &str) -> Result<()> {
        let refused = self.refused.take();
        self.decode(endpoint, |_| refused.map_or(Ok(()), Err))
    }

    /// For a call whose answer carries nothing (Install Connector's empty `200`): an empty or
    /// JSON body is success, anything else is not Cyclr's answer.
    fn expect_nothing(self) -> Result<()> {
        if self.body.trim_ascii().is_empty() || is_json(&self.body) {
            Ok(())
        } else {
            Err(self.not_json())
        }
    }

    fn not_json(self) -> CyclrError {
        CyclrError::NotJson {
            status: self.status,
            content_type: self.content_type,
            excerpt: excerpt(&self.body),
        }
    }
}

/// One HTTP request's place in its call: the attempt's number (from 1), the call's deadline,
/// and where a list's elements go (`None`: the body is read whole).
#[derive(Clone, Copy)]
struct Turn<'a> {
    number: u32,
    deadline: Instant,
    elements: Option<&'a Mutex<dyn Elements + 'a>>,
}

/// A failed HTTP attempt, with what `send` needs to decide on a retry.
struct Failure {
    error: CyclrError,
    /// Cyclr certainly did not apply the request (refused it, or it was never sent).
    not_applied: bool,
    /// The generation of a token Cyclr answered 401 to.
    refused_token: Option<u64>,
}

impl Failure {
    fn not_sent(error: CyclrError) -> Self {
        Failure {
            error,
            not_applied: true,
            refused_token: None,
        }
    }

    fn network(error: reqwest::Error) -> Self {
        // A connection that was never made carried no request; anything later is ambiguous.
        let not_applied = error.is_connect() || error.is_builder();
        let description = describe(&error);
        let error = if error.is_builder() {
            CyclrError::Config(description)
        } else if error.is_timeout() {
            CyclrError::Timeout(description)
        } else {
            CyclrError::Transport(description)
        };
        Failure {
            error,
            not_applied,
            refused_token: None,
        }
    }
}

impl CyclrClient {
    /// A client with a budget of its own. [`CyclrError::Config`] for a URL that is not an
    /// absolute http(s) base URL, or a zero rate, burst or number of shares.
    pub fn new(config: ClientConfig) -> Result<Self> {
        let budget = RateBudget::new(config.requests_per_second, config.burst, config.shares)?;
        Self::build(config, Arc::new(budget), None)
    }

    /// A client for a changed configuration (API URL, credentials, timeout, retry policy)
    /// that keeps this client's request budget and observer: the 429 hold, the adapted rate
    /// and the limiter's state carry over. A changed `requests_per_second`, `burst` or
    /// `shares` gives a budget with the new quota that still carries the hold and the
    /// adapted rate ([`RateBudget::resized`]). The token is not kept: it belongs to the old credentials.
    pub fn with_config(&self, config: ClientConfig) -> Result<Self> {
        let quota = (config.requests_per_second, config.burst, config.shares);
        let budget = if self.inner.budget.quota() == quota {
            self.inner.budget.clone()
        } else {
            Arc::new(self.inner.budget.resized(quota.0, quota.1, quota.2)?)
        };
        Self::build(config, budget, self.observer.clone())
    }

    /// This client with rotated credentials: same URL, settings, observer and budget, a new
    /// token cache (the next call fetches a token with the new credentials).
    pub fn with_credentials(&self, client_id: impl Into<String>, client_secret: SecretString) -> Self {
        let mut config = self.inner.config.clone();
        config.client_id = client_id.into();
        config.client_secret = client_secret;
        CyclrClient {
            inner: Arc::new(Inner {
                config,
                base: self.inner.base.clone(),
                http: self.inner.http.clone(),
                budget: self.inner.budget.clone(),
                tokens: TokenCache::default(),
            }),
            observer: self.observer.clone(),
        }
    }

    /// The request budget of this client's partner (shared with clones and rebuilt clients).
    pub fn budget(&self) -> &Arc<RateBudget> {
        &self.inner.budget
    }

    /// The rate requests go out at now, requests per second: `requests_per_second` unless
    /// 429s lowered it (see [`RateBudget`]). For metrics and status.
    pub fn current_rate(&self) -> f64 {
        self.inner.budget.current_rate()
    }

    /// The longest one call can take, waits and retries included: every retry starts before
    /// the retry policy's `max_elapsed`, and the last request may run its whole
    /// `request_timeout` after that. A write abandoned by the caller has surely been answered
    /// or given up by then (as far as this client is concerned).
    pub fn call_deadline(&self) -> Duration {
        self.inner.config.retry.max_elapsed + self.inner.config.request_timeout
    }

    fn build(config: ClientConfig, budget: Arc<RateBudget>, observer: Option<Arc<dyn CallObserver>>) -> Result<Self> {
        // reqwest is built without a default crypto provider; a second install is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = parse_base_url(&config.api_url)?;
        if config.page_size == 0 {
            return Err(CyclrError::Config("the page size must be at least 1".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            // A redirect would turn a POST into a GET and hide a wrong API URL: report it instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cyclr-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CyclrError::Config(describe(&e)))?;
        Ok(CyclrClient {
            inner: Arc::new(Inner {
                config,
                base,
                http,
                budget,
                tokens: TokenCache::default(),
            }),
            observer,
        })
    }

    /// Reports every HTTP request of this client value and of clones made from it afterwards.
    pub fn with_observer(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Fetches a new token now, replacing the cached one: checks the credentials.
    pub async fn authenticate(&self) -> Result<()> {
        let current = self.inner.tokens.generation().await;
        let call = Call {
            endpoint: "authenticate",
            request: None,
            idempotent: true,
            stale_token: current,
        };
        self.send(&call).await.map(drop)
    }

    /// List Accounts (`GET /api/partner/accounts`): every account of the partner.
    pub async fn list_accounts(&self) -> Result<Vec<Account>> {
        self.list_accounts_with(|account| account).await
    }

    /// [`list_accounts`](Self::list_accounts), each account handed to `keep` as soon as it is
    /// received and decoded: a caller that keeps a smaller form never holds the body (about
    /// 25 MB at 100,000 accounts) nor the decoded list (about 30 MB).
    pub async fn list_accounts_with<T: Send>(&self, keep: impl FnMut(Account) -> T + Send) -> Result<Vec<T>> {
        let call = Call::new("list_accounts", Verb::Get, self.url(&["api", "partner", "accounts"]));
        self.send_list_with(call, keep).await
    }

    /// Partner Details (`GET /api/partner/details`).
    pub async fn partner_details(&self) -> Result<PartnerDetails> {
        self.send_json(Call::new(
            "partner_details",
            Verb::Get,
            self.url(&["api", "partner", "details"]),
        ))
        .await
    }

    /// Create Account (`POST /api/partner/createaccount`, `Name` required): the new id.
    /// Never re-sent after an ambiguous failure (`CyclrError::outcome_unknown`): the account
    /// may exist, and only the caller can look for it.
    pub async fn create_account(&self, fields: &AccountFields) -> Result<AccountId> {
        let url = self.url(&["api", "partner", "createaccount"]);
        let call = Call::new("create_account", Verb::Post, url)
            .json(fields)?
            .at_most_once();
        self.send_json::<IdResponse>(call).await.map(|response| response.id)
    }

    /// Update Account (`PUT /api/partner/accounts/{id}`): sends only the fields that are set;
    /// the others keep their values in Cyclr. Returns the id Cyclr answers with.
    pub async fn update_account(&self, id: &str, fields: &AccountFields) -> Result<AccountId> {
        let url = self.url(&["api", "partner", "accounts", id]);
        let call = Call::new("update_account", Verb::Put, url).json(fields)?;
        self.send_json::<IdResponse>(call).await.map(|response| response.id)
    }

    /// Get Account Signin Token (`POST /api/partner/createaccountsignintoken`): a single-use
    /// token for `username` in the account, valid for five minutes. Never re-sent after an
    /// ambiguous failure.
    pub async fn create_signin_token(&self, account_id: &str, username: &str) -> Result<SignInToken> {
        let url = self.url(&["api", "partner", "createaccountsignintoken"]);
        let body = SignInTokenRequest {
            account_id: account_id.to_owned(),
            username: username.to_owned(),
        };
        self.send_json(
            Call::new("create_signin_token", Verb::Post, url)
                .json(&body)?
                .at_most_once(),
        )
        .await
    }

    /// Install Connector (`POST /api/partner/installconnector`, answered `200` with no
    /// body). Never re-sent after an ambiguous failure: installing twice makes two connectors.
    pub async fn install_connector(&self, request: &InstallConnectorRequest) -> Result<()> {
        let url = self.url(&["api", "partner", "installconnector"]);
        let call = Call::new("install_connector", Verb::Post, url)
            .json(request)?
            .at_most_once();
        self.send(&call).await?.expect_nothing()
    }

    /// Get Price Plans (`GET /api/partner/priceplans`).
    pub async fn price_plans(&self) -> Result<Vec<PricePlan>> {
        self.send_list(Call::new(
            "price_plans",
            Verb::Get,
            self.url(&["api", "partner", "priceplans"]),
        ))
        .await
    }

    /// Get Account Usage (`GET /api/partner/accounts/{id}/billing`): usage since `from_date`,
    /// or since the last bill date when `None`.
    pub async fn account_usage(&self, account_id: &str, from_date: Option<chrono::NaiveDate>) -> Result<AccountUsage> {
        let mut url = self.url(&["api", "partner", "accounts", account_id, "billing"]);
        if let Some(date) = from_date {
            url.query_pairs_mut()
                .append_pair("fromDate", &date.format("%Y-%m-%d").to_string());
        }
        self.send_json(Call::new("account_usage", Verb::Get, url)).await
    }

    /// The connectors installed into an account (v1.0 `GET /v1.0/account/connectors` with
    /// `X-Cyclr-Account`), to check before installing.
    pub async fn installed_connectors(&self, account_id: &str) -> Result<Vec<InstalledConnector>> {
        let url = self.url(&["v1.0", "account", "connectors"]);
        self.send_list(Call::new("installed_connectors", Verb::Get, url).account(account_id))
            .await
    }

    /// `api_url` plus path segments, each percent-encoded (account ids are opaque strings).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .expect("parse_base_url accepts only base URLs")
            .pop_if_empty()
            .extend(segments);
        url
    }

    async fn send_json<T: DeserializeOwned>(&self, call: Call) -> Result<T> {
        self.send(&call)
            .await?
            .decode(call.endpoint, |body| serde_json::from_slice(body))
    }

    /// [`send_json`](Self::send_json) for an endpoint answering a JSON array.
    async fn send_list<T: DeserializeOwned + Send>(&self, call: Call) -> Result<Vec<T>> {
        self.send_list_with(call, |t| t).await
    }

    /// [`send_list`](Self::send_list), each element decoded as it arrives and kept as `keep`
    /// makes it ([`elements`]).
    async fn send_list_with<T: DeserializeOwned, U: Send>(
        &self,
        call: Call,
        keep: impl FnMut(T) -> U + Send,
    ) -> Result<Vec<U>> {
        let list = Mutex::new(Keeping::new(keep));
        self.send_reading(&call, Some(&list)).await?.decoded(call.endpoint)?;
        Ok(list
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .list)
    }

    /// The one path every operation takes: attempts, the single token renewal on a 401, and
    /// retries with the policy's backoff (backon), never sooner than Cyclr asked (the 429
    /// hold) and never one that would end after the policy's deadline. Returns the body.
    async fn send(&self, call: &Call) -> Result<Answer> {
        self.send_reading(call, None).await
    }

    /// [`send`](Self::send), a 2xx body handed to `elements` as it arrives when given.
    async fn send_reading<'e>(&self, call: &Call, elements: Option<&'e Mutex<dyn Elements + 'e>>) -> Result<Answer> {
        let policy = &self.inner.config.retry;
        let deadline = Instant::now() + policy.max_elapsed;
        let attempts = Attempts {
            number: AtomicU32::new(0),
            stale_token: Mutex::new(call.stale_token),
            renewed_after_401: AtomicBool::new(false),
            elements,
        };
        (|| self.attempt_renewing(call, &attempts, deadline))
            .retry(policy.backoff())
            .when(|failure| failure.error.is_retryable() && (call.idempotent || failure.not_applied))
            .adjust(|failure, backoff| {
                let delay = backoff?.max(failure.error.retry_after().unwrap_or_default());
                (Instant::now() + delay <= deadline).then_some(delay)
            })
            .notify(|failure, delay| {
                let attempt = attempts.number.load(Ordering::Relaxed);
                debug!(endpoint = call.endpoint, attempt, delay_ms = delay.as_millis() as u64, error = %failure.error, "retrying Cyclr call");
            })
            .await
            .map_err(|failure| failure.error)
    }

    /// One attempt, made again at once with a new token if Cyclr refused the token (401), once
    /// per call: tokens can be revoked or expire early, and Cyclr refused the request, so
    /// repeating it is safe even for a create.
    async fn attempt_renewing(
        &self,
        call: &Call,
        attempts: &Attempts<'_>,
        deadline: Instant,
    ) -> Result<Answer, Failure> {
        loop {
            let attempt = attempts.number.fetch_add(1, Ordering::Relaxed) + 1;
            let stale_token = *lock(&attempts.stale_token);
            let turn = Turn {
                number: attempt,
                deadline,
                elements: attempts.elements,
            };
            let failure = match self.attempt(call, stale_token, turn).await {
                Ok(answer) => return Ok(answer),
                Err(failure) => failure,
            };
            match failure.refused_token {
                Some(generation) if !attempts.renewed_after_401.swap(true, Ordering::Relaxed) => {
                    *lock(&attempts.stale_token) = Some(generation);
                }
                _ => return Err(failure),
            }
        }
    }

    async fn attempt(&self, call: &Call, stale_token: Option<u64>, turn: Turn<'_>) -> Result<Answer, Failure> {
        let token = self
            .inner
            .tokens
            .get(stale_token, &self.inner.config.retry, async || {
                self.fetch_token(Turn { elements: None, ..turn }).await
            })
            .await
            .map_err(Failure::not_sent)?;
        let Some(request) = &call.request else {
            return Ok(Answer::default());
        };
        let mut builder = self
            .inner
            .http
            .request(request.verb.method(), request.url.clone())
            .header(header::ACCEPT, "application/json");
        if let Some(json) = &request.json {
            builder = builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(json.clone());
        }
        if let Some(account) = &request.account {
            builder = builder.header("X-Cyclr-Account", account);
        }
        self.execute(call.endpoint, request.verb, builder, Some(&token), turn)
            .await
    }

    /// One token request (`send` retries the operation it belongs to).
    async fn fetch_token(&self, turn: Turn<'_>) -> Result<TokenResponse> {
        let config = &self.inner.config;
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", config.client_id.as_str()),
            ("client_secret", config.client_secret.expose_secret()),
        ];
        let builder = self
            .inner
            .http
            .post(self.url(&["oauth", "token"]))
            .header(header::ACCEPT, "application/json")
            .form(&form);
        self.execute("oauth_token", Verb::Post, builder, None, turn)
            .await
            .map_err(|failure| match failure.error {
                // OAuth answers refused client credentials with 400 (RFC 6749 §5.2) or 401.
                CyclrError::Validation { message, .. } => CyclrError::Unauthorized { message },
                CyclrError::NotFound { .. } => CyclrError::Config(format!(
                    "no OAuth token endpoint under {}: check the API URL",
                    self.inner.base
                )),
                error => error,
            })?
            .decode("oauth_token", |body| serde_json::from_slice(body))
    }

    /// Sends one HTTP request: waits for the budget (429 hold, limiter, adapted rate), reports
    /// the request to the observer and the log, maps the outcome and tells the budget. A 2xx
    /// body goes to the turn's `elements` as it arrives when given.
    async fn execute(
        &self,
        endpoint: &'static str,
        verb: Verb,
        builder: RequestBuilder,
        token: Option<&BearerToken>,
        turn: Turn<'_>,
    ) -> Result<Answer, Failure> {
        let Turn {
            number: attempt,
            deadline,
            elements,
        } = turn;
        let queued = Instant::now();
        self.inner.budget.acquire(deadline).await.map_err(Failure::not_sent)?;
        let waited = queued.elapsed();
        let builder = match token {
            Some(token) => builder.bearer_auth(token.secret.expose_secret()),
            None => builder,
        };
        let started = Instant::now();
        let mut status = None;
        let outcome = match builder.send().await {
            Ok(response) => {
                status = Some(response.status());
                let headers = response.headers().clone();
                match elements.filter(|_| response.status().is_success()) {
                    Some(elements) => read_elements(response, elements).await,
                    None => read_body(response).await.map(|body| (body, None)),
                }
                .map(|(body, refused)| (headers, body, refused))
            }
            Err(error) => Err(error),
        };
        let latency = started.elapsed();
        let status_code = status.map(|s| s.as_u16());
        debug!(
            endpoint,
            method = verb.name(),
            status = status_code,
            latency_ms = latency.as_millis() as u64,
            attempt,
            "Cyclr API call"
        );
        if let Some(observer) = &self.observer {
            observer.observe(&CallRecord {
                endpoint,
                method: verb.name(),
                status: status_code,
                latency,
                waited,
                attempt,
            });
        }
        let (headers, body, refused) = outcome.map_err(Failure::network)?;
        let status = status.unwrap_or_default();
        if status.is_success() {
            self.inner.budget.on_success(started);
            return Ok(Answer {
                status: status.as_u16(),
                content_type: content_type(&headers),
                body,
                refused,
            });
        }
        let mut error = error_for_status(status, &headers, &body, SystemTime::now());
        if let CyclrError::RateLimited { retry_after, hold } = &mut error {
            *hold = self.inner.budget.on_rate_limited(started, *retry_after);
        }
        Err(Failure {
            error,
            not_applied: !status.is_server_error(),
            refused_token: token
                .filter(|_| status == StatusCode::UNAUTHORIZED)
                .map(|t| t.generation),
        })
    }
}

/// The response body in one buffer, sized from `Content-Length` when the server sends it: a
/// List Accounts of 10,000 accounts (about 2.5 MB) is held once, not as received chunks plus
/// a joined copy plus a copy of that.
async fn read_body(mut response: reqwest::Response) -> reqwest::Result<Vec<u8>> {
    // Capped, so a wrong header cannot reserve more than a large list needs.
    let expected = response.content_length().unwrap_or(0).min(64 << 20);
    let mut body = Vec::with_capacity(expected as usize);
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn parse_base_url(api_url: &str) -> Result<Url> {
    let url = Url::parse(api_url.trim()).map_err(|e| CyclrError::Config(format!("API URL {api_url:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(CyclrError::Config(format!("API URL {api_url:?} is not an http(s) URL")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(CyclrError::Config(format!(
            "API URL {api_url:?} must not have a query or fragment"
        )));
    }
    Ok(url)
}

/// Maps a non-2xx response to the error the rest of the operator reasons about.
fn error_for_status(status: StatusCode, headers: &HeaderMap, body: &[u8], now: SystemTime) -> CyclrError {
    let code = status.as_u16();
    // Cyclr writes its errors as JSON. A page in front of it (a firewall's 403, a proxy's 404)
    // is named as such, never read as refused credentials or a missing account. A 401 is
    // about credentials whatever its body; a 429's delay is in its header.
    if status.is_client_error() && !matches!(code, 401 | 429) && !body.trim_ascii().is_empty() && !is_json(body) {
        return CyclrError::NotJson {
            status: code,
            content_type: content_type(headers),
            excerpt: excerpt(body),
        };
    }
    match code {
        401 | 403 => CyclrError::Unauthorized {
            message: error_message(status, body),
        },
        404 => CyclrError::NotFound {
            message: error_message(status, body),
        },
        409 => CyclrError::Conflict {
            message: error_message(status, body),
        },
        // The hold is the budget's to decide; `execute` fills it in.
        429 => CyclrError::RateLimited {
            retry_after: headers
                .get(header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| parse_retry_after(value, now)),
            hold: Duration::ZERO,
        },
        400..=499 => CyclrError::Validation {
            status: code,
            message: error_message(status, body),
        },
        300..=399 => {
            let location = headers
                .get(header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("?");
            CyclrError::Config(format!(
                "Cyclr redirects ({code}) to {location}: use the final URL as the API URL"
            ))
        }
        _ => CyclrError::Server {
            status: code,
            message: error_message(status, body),
        },
    }
}

/// Cyclr's `{"Message": …}` (or OAuth's `error_description`/`error`), else a short excerpt
/// of the body, else the status's reason phrase.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    const KEYS: [&str; 4] = ["Message", "message", "error_description", "error"];
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(body)
        && let Some(message) = KEYS.iter().find_map(|key| fields.get(*key)?.as_str())
    {
        return message.to_owned();
    }
    if body.trim_ascii().is_empty() {
        return status.canonical_reason().unwrap_or("no message").to_owned();
    }
    excerpt(body)
}

/// The first 200 characters of a body, its runs of white space (an HTML page's line breaks
/// and indentation) made single spaces, so the excerpt reads on one line of a condition.
fn excerpt(body: &[u8]) -> String {
    const MAX_EXCERPT: usize = 200;
    let text = String::from_utf8_lossy(body);
    let mut chars = text
        .split_whitespace()
        .flat_map(|word| std::iter::once(' ').chain(word.chars()))
        .skip(1);
    let excerpt: String = chars.by_ref().take(MAX_EXCERPT).collect();
    match chars.next() {
        Some(_) => format!("{}…", excerpt.trim_end()),
        None => excerpt,
    }
}

fn is_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// reqwest's own message is terse ("error sending request"); the causes say what happened.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    fn map(code: u16, body: &str) -> CyclrError {
        error_for_status(status(code), &HeaderMap::new(), body.as_bytes(), SystemTime::now())
    }

    use super::elements::Reading;

    /// `body` as a list of accounts: the answer read element by element, and the list.
    fn read_accounts(body: &str) -> (Answer, Vec<Account>) {
        let list = Mutex::new(Keeping::new(|a: Account| a));
        let mut reading = Reading::new(&list);
        reading.chunk(body.as_bytes());
        let (head, refused) = reading.end();
        let answer = Answer {
            status: 200,
            content_type: Some("text/html; charset=utf-8".into()),
            body: head,
            refused,
        };
        (answer, list.into_inner().unwrap().list)
    }

    #[test]
    fn a_list_is_decoded_as_the_caller_keeps_it() {
        let body = r#"[{"Id":"a1","Name":"Acme","Description":"say \"[{\"","NextBillDate":"2027-01-06T00:00:00Z"},
                        {"Id":"b2","Name":"Beta"},{"Id":"c3","Name":"Gamma","PricePlanId":2}]"#;
        let (answer, list) = read_accounts(body);
        answer.decoded("list_accounts").unwrap();
        assert_eq!(list, serde_json::from_str::<Vec<Account>>(body).unwrap());
        let ids = Mutex::new(Keeping::new(|a: Account| a.id));
        let mut reading = Reading::new(&ids);
        for chunk in body.as_bytes().chunks(7) {
            assert!(reading.chunk(chunk));
        }
        assert!(reading.end().1.is_none());
        assert_eq!(
            ids.into_inner().unwrap().list,
            ["a1", "b2", "c3"],
            "each element kept as the caller keeps it"
        );
        assert!(
            read_accounts(r#"[{"Id":"a1"}]"#).0.decoded("list_accounts").is_err(),
            "Name is required"
        );
        assert!(read_accounts("{}").0.decoded("list_accounts").is_err(), "not a list");
    }

    #[test]
    fn status_codes_map_to_typed_errors_with_cyclrs_message() {
        let denied = r#"{"Message":"Authorization has been denied for this request."}"#;
        assert!(
            matches!(map(401, denied), CyclrError::Unauthorized { message } if message == "Authorization has been denied for this request.")
        );
        assert!(matches!(map(403, "{}"), CyclrError::Unauthorized { message } if message == "{}"));
        assert!(
            matches!(map(404, r#"{"Message":"Account not found"}"#), CyclrError::NotFound { message } if message == "Account not found")
        );
        assert!(
            matches!(map(400, r#"{"Message":"Name is required."}"#), CyclrError::Validation { status: 400, message } if message == "Name is required.")
        );
        assert!(
            matches!(map(422, ""), CyclrError::Validation { status: 422, message } if message == "Unprocessable Entity")
        );
        assert!(
            matches!(map(503, "<html>down</html>"), CyclrError::Server { status: 503, message } if message == "<html>down</html>")
        );
        assert!(
            matches!(map(500, ""), CyclrError::Server { status: 500, message } if message == "Internal Server Error")
        );
        assert!(matches!(
            map(429, ""),
            CyclrError::RateLimited { retry_after: None, .. }
        ));
        assert!(
            matches!(map(409, r#"{"Message":"Cycle is active."}"#), CyclrError::Conflict { message } if message == "Cycle is active.")
        );
        assert!(matches!(map(302, ""), CyclrError::Config(_)));
    }

    const PAGE: &str = "<!DOCTYPE html>\n<html>\n  <head><title>Request Rejected</title></head>\n  <body>The requested URL was rejected.</body>\n</html>";

    #[test]
    fn a_page_in_front_of_cyclr_is_named_not_read_as_cyclrs_answer() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        for code in [403, 404, 400, 405] {
            let error = error_for_status(status(code), &headers, PAGE.as_bytes(), SystemTime::now());
            let CyclrError::NotJson {
                status,
                content_type,
                excerpt,
            } = &error
            else {
                panic!("{code}: {error:?}")
            };
            assert_eq!((*status, content_type.as_deref()), (code, Some("text/html")));
            assert_eq!(
                excerpt,
                "<!DOCTYPE html> <html> <head><title>Request Rejected</title></head> <body>The requested URL was rejected.</body> </html>"
            );
            assert!(!error.is_retryable() && error.outcome_unknown(), "{code}");
            let text = error.to_string();
            assert!(
                text.contains(&format!("answered {code} with text/html instead of JSON")),
                "{text}"
            );
        }
        // Plain text is not JSON either; without a Content-Type the error says so.
        let text = map(403, "Forbidden by policy").to_string();
        assert!(
            text.contains("403 with no Content-Type") && text.ends_with("Forbidden by policy"),
            "{text}"
        );
        // A 401 is about credentials whatever its body; a 5xx page is transient; a 429 is a 429.
        assert!(matches!(map(401, PAGE), CyclrError::Unauthorized { .. }));
        assert!(matches!(map(502, PAGE), CyclrError::Server { status: 502, .. }));
        assert!(matches!(map(429, PAGE), CyclrError::RateLimited { .. }));
        // JSON without a Message, or no body at all, is still Cyclr's answer.
        assert!(matches!(map(403, "{}"), CyclrError::Unauthorized { .. }));
        assert!(matches!(map(404, " "), CyclrError::NotFound { .. }));
    }

    #[test]
    fn a_2xx_answer_is_named_when_it_is_not_json() {
        let answer = |body: &str| Answer {
            status: 200,
            content_type: Some("text/html; charset=utf-8".into()),
            body: body.as_bytes().to_vec(),
            refused: None,
        };
        let read = |body: &str| {
            let (answer, list) = read_accounts(body);
            answer.decoded("list_accounts").map(|()| list)
        };
        assert!(
            matches!(read(PAGE), Err(CyclrError::NotJson { status: 200, excerpt, .. }) if excerpt.starts_with("<!DOCTYPE html> <html>"))
        );
        assert!(matches!(read(""), Err(CyclrError::NotJson { excerpt, .. }) if excerpt.is_empty()));
        assert!(
            matches!(read(r#"[{"Id":"a1"}]"#), Err(CyclrError::Decode(message)) if message.starts_with("list_accounts: ")),
            "JSON of another shape"
        );
        assert_eq!(read(r#"[{"Id":"a1","Name":"Acme"}]"#).unwrap().len(), 1);

        for nothing in ["", " \n", "{}", "null"] {
            assert!(answer(nothing).expect_nothing().is_ok(), "{nothing:?}");
        }
        let error = answer(PAGE).expect_nothing().unwrap_err();
        assert!(
            error
                .to_string()
                .contains("answered 200 with text/html; charset=utf-8 instead of JSON"),
            "{error}"
        );
        assert!(
            CyclrError::NotJson {
                status: 200,
                content_type: None,
                excerpt: String::new()
            }
            .to_string()
            .ends_with("an empty body")
        );
    }

    #[test]
    fn oauth_error_fields_are_messages_too() {
        let body = r#"{"error":"invalid_client","error_description":"bad client"}"#;
        assert!(matches!(map(400, body), CyclrError::Validation { message, .. } if message == "bad client"));
        assert!(
            matches!(map(401, r#"{"error":"invalid_client"}"#), CyclrError::Unauthorized { message } if message == "invalid_client")
        );
    }

    #[test]
    fn long_bodies_are_cut() {
        let body = "é".repeat(500);
        let CyclrError::Server { message, .. } = map(502, &body) else {
            panic!("not a server error")
        };
        assert_eq!(message.chars().count(), 201);
        assert!(message.ends_with('…'));
        // Exactly 200 characters are not cut; white space is collapsed before counting.
        assert_eq!(excerpt(b" a \n\t b\n"), "a b");
        assert_eq!(excerpt("x".repeat(200).as_bytes()), "x".repeat(200));
        assert_eq!(
            excerpt(format!("{} tail", "x".repeat(199)).as_bytes()),
            format!("{}…", "x".repeat(199))
        );
    }

    #[test]
    fn retryability_follows_the_mapping() {
        assert!(map(429, "").is_retryable());
        assert!(map(500, "").is_retryable());
        assert!(!map(400, "").is_retryable());
        assert!(!map(401, "").is_retryable());
        assert!(!map(404, "").is_retryable());
    }

    #[test]
    fn retry_after_header_is_read_in_both_forms() {
        let now = SystemTime::now();
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        let retry_after = |headers: &HeaderMap| match error_for_status(status(429), headers, b"", now) {
            CyclrError::RateLimited { retry_after, .. } => retry_after,
            other => panic!("not rate limited: {other:?}"),
        };
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));

        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let wait = retry_after(&headers).unwrap();
        // HTTP dates have whole seconds, so up to one second is lost.
        assert!(
            wait > Duration::from_secs(88) && wait <= Duration::from_secs(90),
            "{wait:?}"
        );

        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("whenever"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn debug_never_shows_the_credentials() {
        let mut config = ClientConfig::new("https://api.cyclr.com", "client-id-1234", "s3cr3t-value".into());
        config.retry.max_attempts = 2;
        let text = format!("{config:?} {config:#?}");
        assert!(!text.contains("s3cr3t-value"), "{text}");
        assert!(!text.contains("client-id-1234"), "{text}");
        assert!(
            text.contains("https://api.cyclr.com") && text.contains("max_attempts: 2"),
            "{text}"
        );

        let client = CyclrClient::new(config).unwrap();
        let text = format!("{client:?}");
        assert!(
            !text.contains("s3cr3t-value") && !text.contains("client-id-1234"),
            "{text}"
        );
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = ClientConfig::new("https://api.cyclr.com", "id", "secret".into());
        assert_eq!((config.requests_per_second, config.burst), (10, 20));
        assert_eq!(config.request_timeout, Duration::from_secs(30));
        assert_eq!(config.retry, RetryPolicy::default());
        assert_eq!(config.page_size, 100);
    }

    #[test]
    fn paths_are_appended_to_the_api_url_and_ids_escaped() {
        for base in [
            "https://api.cyclr.com",
            "https://api.cyclr.com/",
            "https://host.example/cyclr/",
        ] {
            let client = CyclrClient::new(ClientConfig::new(base, "id", "secret".into())).unwrap();
            let url = client.url(&["api", "partner", "accounts", "a/b?c", "billing"]);
            let prefix = base.trim_end_matches('/');
            assert_eq!(url.as_str(), format!("{prefix}/api/partner/accounts/a%2Fb%3Fc/billing"));
        }
    }

    #[test]
    fn bad_configuration_is_refused() {
        let config = |url: &str| ClientConfig::new(url, "id", "secret".into());
        for url in [
            "not a url",
            "ftp://api.cyclr.com",
            "mailto:x@example.com",
            "https://api.cyclr.com/?x=1",
        ] {
            assert!(
                matches!(CyclrClient::new(config(url)), Err(CyclrError::Config(_))),
                "{url}"
            );
        }
        let mut zero_rate = config("https://api.cyclr.com");
        zero_rate.requests_per_second = 0;
        assert!(matches!(CyclrClient::new(zero_rate), Err(CyclrError::Config(_))));
        let mut zero_burst = config("https://api.cyclr.com");
        zero_burst.burst = 0;
        assert!(matches!(CyclrClient::new(zero_burst), Err(CyclrError::Config(_))));
        let mut zero_page = config("https://api.cyclr.com");
        zero_page.page_size = 0;
        assert!(matches!(CyclrClient::new(zero_page), Err(CyclrError::Config(_))));
    }
}
