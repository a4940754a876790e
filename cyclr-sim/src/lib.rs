//! `cyclr-sim`: a faithful simulator of the Cyclr Partner API, for tests, benchmarks and the demo.
//!
//! It serves plain HTTP: `POST /oauth/token`, the seed's eight endpoints under `/api/partner/`,
//! Cyclr's v1.0 calls for accounts, account connectors, templates and cycles (`/v1.0/…`), and
//! an unauthenticated admin API under `/_sim/` for tests only (faults, request statistics,
//! templates). See `docs/simulator.md`.
//!
//! Tests start it in-process:
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use cyclr_sim::{SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::new("id", "secret"), "127.0.0.1:0".parse()?).await?;
//! let api_url = sim.base_url(); // http://127.0.0.1:PORT
//! # sim.shutdown().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod api;
mod faults;
mod store;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faults::{Faults, HtmlAnswer, LongRejection, LostResponse, RetryAfterForm};

use cyclr::types::{Account, AccountConnector, AccountV1, Cycle, InstalledConnector, Prerequisite};
use faults::FaultState;
use store::{Persister, Store};

/// The token lifetime Cyclr gives: about 14 days.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(1_209_599);

/// How a simulator starts.
#[derive(Clone)]
pub struct SimConfig {
    /// The partner credentials `POST /oauth/token` accepts: the client id…
    pub client_id: String,
    /// …and the client secret (never logged).
    pub client_secret: String,
    /// The lifetime of the tokens it issues (`expires_in`), unless `Faults::token_ttl` says
    /// otherwise.
    pub token_ttl: Duration,
    /// The faults in force from the start.
    pub faults: Faults,
    /// Load state from this file at start and rewrite it after each change.
    pub state_file: Option<PathBuf>,
    /// Templates served from the start (added to those of the state file, replacing any
    /// with the same id).
    pub templates: Vec<TemplateSeed>,
}

impl SimConfig {
    /// A simulator accepting these credentials, with tokens of [`DEFAULT_TOKEN_TTL`], no
    /// faults and no state file.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        SimConfig {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            token_ttl: DEFAULT_TOKEN_TTL,
            faults: Faults::default(),
            state_file: None,
            templates: Vec::new(),
        }
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("token_ttl", &self.token_ttl)
            .field("faults", &self.faults)
            .field("state_file", &self.state_file)
            .field("templates", &self.templates)
            .finish()
    }
}

/// A template the simulator serves (`GET /v1.0/templates`) and installs as a cycle. JSON form
/// (`POST /_sim/templates`, `--templates FILE` takes an array of them):
/// `{"Id": "sync", "Name": "Sync", "Connectors": [{"Name": "Tickets", "Version": "v1",
/// "AuthType": "ApiKey"}], "Variables": [{"SystemName": "region", "Value": "eu"}]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TemplateSeed {
    /// The template's id (a string or a number); a new one when absent.
    #[serde(default, deserialize_with = "optional_text")]
    pub id: Option<String>,
    /// Its name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// The connectors a cycle made from it needs.
    #[serde(default)]
    pub connectors: Vec<TemplateConnectorSeed>,
    /// The variables a cycle made from it has.
    #[serde(default)]
    pub variables: Vec<VariableSeed>,
    /// What stops every cycle made from it from being activated besides unauthenticated
    /// connectors, as `GET /v1.0/cycles/{id}/prerequisites` lists it (e.g. a missing field
    /// mapping: `{"ReasonCode": 41, "Reason": "…"}`).
    #[serde(default)]
    pub prerequisites: Vec<Prerequisite>,
}

/// A connector a template needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TemplateConnectorSeed {
    /// The connector's name in the catalogue, e.g. `Tickets`.
    pub name: String,
    /// Its version; `v1` when absent.
    #[serde(default)]
    pub version: Option<String>,
    /// How it authenticates: `ApiKey` when absent, `None` for a connector that needs no
    /// credentials (an account connector a template install makes for it is authenticated
    /// at once; any other starts unauthenticated). Also what a v1.0 install of this connector
    /// by name or id reports.
    #[serde(default)]
    pub auth_type: Option<String>,
}

/// A variable of a template's cycles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VariableSeed {
    /// The name it is addressed by.
    pub system_name: String,
    /// The name people see.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Its value in a new cycle.
    #[serde(default)]
    pub value: Option<String>,
}

fn optional_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(text) => Ok(Some(text)),
        serde_json::Value::Number(number) => Ok(Some(number.to_string())),
        other => Err(serde::de::Error::custom(format!(
            "an id is a string or a number, not {other}"
        ))),
    }
}

/// What the simulator has been asked, for assertions such as "no idle writes".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// API requests received (faulted ones included), keyed by method and route template,
    /// e.g. `"POST /api/partner/createaccount"`, `"PUT /api/partner/accounts/{id}"`.
    pub requests: BTreeMap<String, u64>,
    /// API responses sent, by status code.
    pub responses: BTreeMap<u16, u64>,
    /// Writes applied: account create, update and delete, connector install, and the v1.0
    /// writes (account connectors, template installs, cycle activation, variables, deletes),
    /// including those whose response "commit then fail" lost. Rejected writes do not count.
    pub writes: u64,
    /// Writes applied whose response "commit then fail" lost (a 500 or a dropped connection).
    #[serde(default)]
    pub lost_responses: u64,
}

impl SimStats {
    /// Requests received for one endpoint, e.g. `"GET /api/partner/accounts"`.
    pub fn requests_to(&self, endpoint: &str) -> u64 {
        self.requests.get(endpoint).copied().unwrap_or(0)
    }

    /// All API requests received.
    pub fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }
}

/// The simulator. Start one with [`Simulator::start`].
pub struct Simulator;

impl Simulator {
    /// Binds `listen` (port 0 picks a free port) and serves until [`SimHandle::shutdown`] or
    /// until the handle is dropped.
    pub async fn start(config: SimConfig, listen: SocketAddr) -> anyhow::Result<SimHandle> {
        let shared = Arc::new(Shared::new(config)?);
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        let app = api::router(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    // A dropped sender stops the server too.
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(%addr, "cyclr-sim listening");
        Ok(SimHandle {
            shared,
            addr,
            stop: Some(stop),
            server: Some(server),
        })
    }
}

/// A running simulator. Dropping it stops the server; [`SimHandle::shutdown`] also waits
/// until it has stopped.
pub struct SimHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`, the simulator's API URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The faults in force (also `GET /_sim/faults`).
    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    /// Replaces the faults in force (also `PUT /_sim/faults`).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// The statistics since the start or the last reset (also `GET /_sim/stats`).
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Zeroes the statistics (also `POST /_sim/stats/reset`) and the request log.
    pub fn reset_stats(&self) {
        self.shared.reset_stats();
    }

    /// When each API request (the token endpoint included, faulted ones too) arrived since
    /// the start or the last [`SimHandle::reset_stats`], in arrival order: for measuring a
    /// client's request rate over any window.
    pub fn request_log(&self) -> Vec<Instant> {
        lock(&self.shared.request_log).clone()
    }

    /// All accounts as stored, in creation order: `Timezone` included, which List Accounts
    /// does not return.
    pub fn accounts(&self) -> Vec<Account> {
        self.shared.read_store().accounts().map(|r| r.account.clone()).collect()
    }

    /// Deletes an account behind the operator's back, as someone in the Cyclr console would.
    /// Returns whether it existed.
    pub fn delete_account(&self, id: &str) -> bool {
        self.shared.mutate(|store| store.delete_account(id)).is_ok()
    }

    /// The connectors installed into an account, as `GET /v1.0/account/connectors` lists them;
    /// empty for an unknown account.
    pub fn installed_connectors(&self, account_id: &str) -> Vec<InstalledConnector> {
        self.connectors_as(account_id)
    }

    /// The account connectors of an account as v1.0 answers them, their properties included;
    /// empty for an unknown account.
    pub fn account_connectors(&self, account_id: &str) -> Vec<AccountConnector> {
        self.connectors_as(account_id)
    }

    fn connectors_as<T: serde::de::DeserializeOwned>(&self, account_id: &str) -> Vec<T> {
        let store = self.shared.read_store();
        let Ok(record) = store.get(account_id) else {
            return Vec::new();
        };
        // Through the wire form, so what tests inspect is exactly what clients parse.
        record
            .connectors
            .iter()
            .map(|c| serde_json::from_value(c.to_wire()).expect("the wire form of an installed connector parses"))
            .collect()
    }

    /// An account in its v1.0 form (`GET /v1.0/accounts/{id}`), its v1.0 settings included.
    pub fn account_v1(&self, id: &str) -> Option<AccountV1> {
        let store = self.shared.read_store();
        let record = store.get(id).ok()?;
        Some(serde_json::from_value(record.to_v1_wire()).expect("the wire form of an account parses"))
    }

    /// The cycles of an account, as `GET /v1.0/cycles` lists them; empty for an unknown
    /// account.
    pub fn cycles(&self, account_id: &str) -> Vec<Cycle> {
        let store = self.shared.read_store();
        let Ok(record) = store.get(account_id) else {
            return Vec::new();
        };
        let now = Utc::now();
        record
            .cycles
            .iter()
            .map(|c| serde_json::from_value(record.cycle_wire(c, now)).expect("the wire form of a cycle parses"))
            .collect()
    }

    /// Sets an account connector's `Authenticated`, as a person authenticating an OAuth
    /// connector in Cyclr, or a credential expiring, would. Losing it stops the Active cycles
    /// that use it (`Stopped`). Returns whether the account connector exists.
    pub fn set_connector_authenticated(
        &self,
        account_id: &str,
        account_connector_id: &str,
        authenticated: bool,
    ) -> bool {
        let Ok(id) = account_connector_id.parse() else {
            return false;
        };
        self.shared
            .mutate(|store| store.set_connector_authenticated(account_id, id, authenticated, Utc::now()))
            .is_ok()
    }

    /// Adds a template (also `POST /_sim/templates`), replacing one with the same id; returns
    /// its id.
    pub fn add_template(&self, template: TemplateSeed) -> String {
        let Ok(id) = self
            .shared
            .mutate(|store| Ok::<_, Infallible>(store.add_template(template)));
        id
    }

    /// The JSON body of the latest Update Account request.
    pub fn last_update_body(&self) -> Option<serde_json::Value> {
        lock(&self.shared.last_update_body).clone()
    }

    /// Invalidates every token issued so far, as if they had all expired (also
    /// `POST /_sim/tokens/expire`): a revocation.
    pub fn expire_tokens(&self) {
        self.shared.expire_tokens();
    }

    /// Rotates the partner's client secret in "Cyclr" (also `PUT /_sim/client-secret`): from
    /// now on `POST /oauth/token` accepts only `secret`. Tokens issued before stay valid until
    /// they expire or are revoked ([`SimHandle::expire_tokens`]).
    pub fn set_client_secret(&self, secret: impl Into<String>) {
        self.shared.set_client_secret(secret.into());
    }

    /// Stops accepting connections, lets requests in flight finish, and waits.
    pub async fn shutdown(mut self) {
        self.signal_stop();
        if let Some(server) = self.server.take() {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cyclr-sim stopped with an error"),
                Err(e) => tracing::warn!(error = %e, "cyclr-sim task failed"),
            }
        }
    }
}

impl SimHandle {
    fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The server may already be gone; there is nobody left to tell then.
            let _ = stop.send(());
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// State shared by the HTTP handlers and the handle.
pub(crate) struct Shared {
    client_id: String,
    /// Rotated by the admin API.
    client_secret: Mutex<String>,
    token_ttl: Duration,
    store: RwLock<Store>,
    faults: Mutex<FaultState>,
    stats: Mutex<SimStats>,
    /// Arrival times of API requests, kept beside the counters (not in `SimStats`, which is
    /// the admin API's JSON and would grow with every request).
    request_log: Mutex<Vec<Instant>>,
    /// The body of the latest Update Account, so tests can check that only changed fields
    /// were sent. Account fields hold no credentials.
    last_update_body: Mutex<Option<serde_json::Value>>,
    persister: Option<Persister>,
}

impl Shared {
    fn new(config: SimConfig) -> anyhow::Result<Self> {
        let mut store = match &config.state_file {
            Some(path) => Store::load(path)?,
            None => Store::default(),
        };
        for template in config.templates {
            store.add_template(template);
        }
        Ok(Shared {
            client_id: config.client_id,
            client_secret: Mutex::new(config.client_secret),
            token_ttl: config.token_ttl,
            store: RwLock::new(store),
            faults: Mutex::new(FaultState::new(config.faults)),
            stats: Mutex::new(SimStats::default()),
            request_log: Mutex::new(Vec::new()),
            last_update_body: Mutex::new(None),
            persister: config.state_file.map(Persister::new),
        })
    }

    fn remember_update_body(&self, body: &serde_json::Map<String, serde_json::Value>) {
        *lock(&self.last_update_body) = Some(serde_json::Value::Object(body.clone()));
    }

    fn read_store(&self) -> std::sync::RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a change and, with a state file, saves the result before returning, so a
    /// response is only sent for state that survives a restart.
    fn mutate<T, E>(&self, change: impl FnOnce(&mut Store) -> Result<T, E>) -> Result<T, E> {
        let (out, snapshot) = {
            let mut store = self.store.write().unwrap_or_else(PoisonError::into_inner);
            let out = change(&mut store)?;
            store.bump_revision();
            // Serialised under the lock (cheap), written outside it, so readers never wait on I/O.
            let snapshot = self
                .persister
                .as_ref()
                .map(|_| (store.revision(), serde_json::to_vec(&*store)));
            (out, snapshot)
        };
        if let (Some(persister), Some((revision, bytes))) = (&self.persister, snapshot) {
            match bytes {
                Ok(bytes) => persister.save(revision, &bytes),
                Err(e) => tracing::error!(error = %e, "could not serialise the state"),
            }
        }
        Ok(out)
    }

    fn faults(&self) -> Faults {
        lock(&self.faults).faults().clone()
    }

    fn set_faults(&self, faults: Faults) {
        tracing::info!(?faults, "faults changed");
        let release = !faults.hold_cycle_changes;
        let held = std::mem::replace(&mut *lock(&self.faults), FaultState::new(faults))
            .faults()
            .hold_cycle_changes;
        if held && release {
            let Ok(()) = self.mutate(|store| {
                store.show_cycle_changes();
                Ok::<_, Infallible>(())
            });
        }
    }

    fn stats(&self) -> SimStats {
        lock(&self.stats).clone()
    }

    fn reset_stats(&self) {
        *lock(&self.stats) = SimStats::default();
        lock(&self.request_log).clear();
    }

    fn token_ttl(&self) -> Duration {
        lock(&self.faults).faults().token_ttl.unwrap_or(self.token_ttl)
    }

    fn expire_tokens(&self) {
        let Ok(()) = self.mutate(|store| {
            store.expire_tokens();
            Ok::<_, Infallible>(())
        });
    }

    fn set_client_secret(&self, secret: String) {
        tracing::info!("client secret rotated");
        *lock(&self.client_secret) = secret;
    }

    /// Whether `id` and `secret` are the partner's client credentials now.
    fn credentials_match(&self, id: Option<&String>, secret: Option<&String>) -> bool {
        id == Some(&self.client_id) && secret == Some(&*lock(&self.client_secret))
    }

    fn token_valid(&self, token: &str) -> bool {
        self.read_store().token_valid(token, Utc::now())
    }
}

/// Locks a mutex, carrying on after a panic elsewhere: the simulator's state stays usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
