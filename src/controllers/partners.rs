//! What the operator knows about each CyclrPartner at run time: its Cyclr client (one rate
//! limiter and one token per partner, shared by every reconcile), its price plans, and the
//! shared snapshot of its accounts that drift detection reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::core::{Selector, SelectorExt};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::metrics::Metrics;
use crate::secrets::CredentialsDigest;

use cyclr::types::{Account, PricePlan};
use cyclr::{CyclrClient, Result as CyclrResult};

/// All accounts of one partner as one List Accounts returned them.
#[derive(Debug, Default)]
pub struct AccountsSnapshot {
    /// When the list request was sent: anything written before is in it.
    pub taken_at: DateTime<Utc>,
    pub accounts: HashMap<String, Account>,
}

/// A partner the accounts can use, or why they cannot.
#[derive(Clone, Debug)]
pub enum PartnerState {
    Ready,
    NotReady(String),
}

pub struct PartnerRuntime {
    pub client: CyclrClient,
    /// A hash of the values the client is built from (URL, credential values, limits): a
    /// new client is built only when it changes, never for a label or annotation edit.
    pub fingerprint: u64,
    pub resync_interval: Duration,
    pub usage_interval: Duration,
    /// Which namespaces may use the partner (`None`: all).
    pub namespace_selector: Option<Selector>,
    /// Digests of connector credentials, keyed from this partner's client secret.
    pub credentials_digest: CredentialsDigest,
    state: RwLock<PartnerState>,
    price_plans: RwLock<Vec<PricePlan>>,
    /// Held while a list is in flight, so concurrent callers share one List Accounts.
    snapshot: Mutex<Option<Arc<AccountsSnapshot>>>,
    /// One lock per account name: creates of the same name are serialised, so the second
    /// sees the first's account and never creates a twin.
    names: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Where each new snapshot's size and time are reported (partner name, metrics).
    snapshot_metrics: Option<(String, Arc<Metrics>)>,
}

impl PartnerRuntime {
    pub fn new(
        client: CyclrClient,
        fingerprint: u64,
        resync_interval: Duration,
        usage_interval: Duration,
        namespace_selector: Option<Selector>,
        credentials_digest: CredentialsDigest,
    ) -> Self {
        PartnerRuntime {
            client,
            fingerprint,
            resync_interval,
            usage_interval,
            namespace_selector,
            credentials_digest,
            state: RwLock::new(PartnerState::NotReady("the partner has not been checked yet".into())),
            price_plans: RwLock::new(Vec::new()),
            snapshot: Mutex::new(None),
            names: Default::default(),
            snapshot_metrics: None,
        }
    }

    /// Reports each new account snapshot of partner `name` to `metrics`.
    pub fn with_snapshot_metrics(mut self, name: &str, metrics: Arc<Metrics>) -> Self {
        self.snapshot_metrics = Some((name.to_string(), metrics));
        self
    }

    /// A runtime for a changed configuration that keeps what the old one learned (its
    /// readiness, price plans and account snapshot), so accounts see no NotReady window.
    pub fn succeed(self, old: &PartnerRuntime) -> Self {
        *self.state.write().expect("lock") = old.state();
        *self.price_plans.write().expect("lock") = old.price_plans();
        if let Ok(held) = old.snapshot.try_lock() {
            *self.snapshot.try_lock().expect("new runtime is not shared yet") = held.clone();
        }
        self
    }

    /// Whether accounts and installs of a namespace with these labels may use the partner.
    pub fn admits(&self, namespace_labels: &BTreeMap<String, String>) -> bool {
        self.namespace_selector
            .as_ref()
            .is_none_or(|selector| selector.matches(namespace_labels))
    }

    /// Serialises creates of one account name in this partner (held across check and create).
    pub async fn lock_name(&self, name: &str) -> OwnedMutexGuard<()> {
        let lock = self
            .names
            .lock()
            .expect("lock")
            .entry(name.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    pub fn state(&self) -> PartnerState {
        self.state.read().expect("lock").clone()
    }

    pub fn set_state(&self, state: PartnerState) {
        *self.state.write().expect("lock") = state;
    }

    pub fn price_plans(&self) -> Vec<PricePlan> {
        self.price_plans.read().expect("lock").clone()
    }

    pub fn set_price_plans(&self, plans: Vec<PricePlan>) {
        *self.price_plans.write().expect("lock") = plans;
    }

    /// A snapshot taken at or after `after`, listing accounts only when the one held is
    /// older. Callers waiting at the same time share a single List Accounts.
    pub async fn snapshot_since(&self, after: DateTime<Utc>) -> CyclrResult<Arc<AccountsSnapshot>> {
        let mut held = self.snapshot.lock().await;
        if let Some(snapshot) = held.as_ref().filter(|s| s.taken_at >= after) {
            return Ok(snapshot.clone());
        }
        let taken_at = Utc::now();
        let accounts = self.client.list_accounts().await?;
        let snapshot = Arc::new(AccountsSnapshot {
            taken_at,
            accounts: accounts.into_iter().map(|a| (a.id.clone(), a)).collect(),
        });
        *held = Some(snapshot.clone());
        if let Some((name, metrics)) = &self.snapshot_metrics {
            metrics.account_snapshot(name, snapshot.accounts.len(), snapshot.taken_at);
        }
        Ok(snapshot)
    }

    /// The latest snapshot, if any was taken.
    pub async fn snapshot(&self) -> Option<Arc<AccountsSnapshot>> {
        self.snapshot.lock().await.clone()
    }

    /// Records an account as the operator just wrote it, so the next reconcile does not
    /// mistake the snapshot's older view for drift or a missing account.
    pub async fn remember_account(&self, account: Account) {
        let mut held = self.snapshot.lock().await;
        if let Some(current) = held.as_ref() {
            let mut accounts = current.accounts.clone();
            accounts.insert(account.id.clone(), account);
            *held = Some(Arc::new(AccountsSnapshot {
                taken_at: current.taken_at,
                accounts,
            }));
        }
    }
}

/// The partners by name.
#[derive(Default)]
pub struct Partners {
    by_name: RwLock<HashMap<String, Arc<PartnerRuntime>>>,
}

impl Partners {
    pub fn get(&self, name: &str) -> Option<Arc<PartnerRuntime>> {
        self.by_name.read().expect("lock").get(name).cloned()
    }

    pub fn insert(&self, name: &str, runtime: Arc<PartnerRuntime>) {
        self.by_name.write().expect("lock").insert(name.to_string(), runtime);
    }

    /// Drops the partner's client, token and snapshot at once (the CyclrPartner is gone).
    pub fn remove(&self, name: &str) {
        self.by_name.write().expect("lock").remove(name);
    }
}
