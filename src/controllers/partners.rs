//! What the operator knows about each CyclrPartner at run time: its Cyclr client (one rate
//! limiter and one token per partner, shared by every reconcile), its price plans, and the
//! shared snapshot of its accounts that drift detection reads.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;

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
    /// Changes whenever the URL, credentials or rate limit change, so a new client is built.
    pub fingerprint: String,
    pub resync_interval: Duration,
    pub usage_interval: Duration,
    state: RwLock<PartnerState>,
    price_plans: RwLock<Vec<PricePlan>>,
    /// Held while a list is in flight, so concurrent callers share one List Accounts.
    snapshot: Mutex<Option<Arc<AccountsSnapshot>>>,
}

impl PartnerRuntime {
    pub fn new(client: CyclrClient, fingerprint: String, resync_interval: Duration, usage_interval: Duration) -> Self {
        PartnerRuntime {
            client,
            fingerprint,
            resync_interval,
            usage_interval,
            state: RwLock::new(PartnerState::NotReady("the partner has not been checked yet".into())),
            price_plans: RwLock::new(Vec::new()),
            snapshot: Mutex::new(None),
        }
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

    pub fn remove(&self, name: &str) {
        self.by_name.write().expect("lock").remove(name);
    }
}
