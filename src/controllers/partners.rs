//! What the operator knows about each CyclrPartner at run time: its Cyclr client (one rate
//! limiter and one token per partner, shared by every reconcile), its price plans, and the
//! shared snapshot of its accounts that drift detection reads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use driver::stable_hash;
use hashbrown::HashTable;
use kube::core::{Selector, SelectorExt};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::metrics::Metrics;
use crate::resources::CyclrApi;
use crate::secrets::CredentialsDigest;
use crate::texts::Texts;

use cyclr::types::{Account, AccountV1, CyclrDate, PricePlan, PricePlanId};
use cyclr::{CyclrClient, Result as CyclrResult};

/// All accounts of one partner as one List Accounts returned them, plus the accounts the
/// operator wrote since, which win (the list is older). Shared, never copied: a write is
/// recorded in place, so holding 100,000 accounts costs one copy however many reconciles run.
/// The list is kept sorted, each account in one allocation ([`KeptAccount`]), with no second
/// copy of any id or name: 100,000 accounts cost about 15 MB and 400 KB of positions. An
/// account a new list shows as before is the older list's own allocation, so while a steady
/// list is read the older one costs its pointers more, not a second copy.
#[derive(Debug, Default)]
pub struct AccountsSnapshot {
    /// When the list's first request was sent: anything written before is in it (a paced
    /// v1.0 list reads its last page up to `pages × 10 / rate` seconds later).
    pub taken_at: DateTime<Utc>,
    /// The listed accounts, sorted by id.
    listed: Vec<Arc<KeptAccount>>,
    /// Positions in `listed`, sorted by account name: the check before a create.
    by_name: Vec<u32>,
    /// Accounts created, updated or deleted by the operator after the list.
    written: RwLock<Writes>,
}

/// The accounts the operator wrote after a list, one entry per account (a later write
/// replaces its entry in place), found by id and by name through two tables of positions.
///
/// Sized for a rollout that outpaces the lists: 100,000 creates may come between two lists.
/// An entry is one [`KeptAccount`] (its texts in one allocation) in one `Vec`, and each table
/// holds a 4-byte position hashed from the text ([`driver::stable_hash`]) and compared by the
/// text itself, so nothing is kept twice and every lookup is exact. A `HashMap<String, _>` by
/// id and another by name took about 300 bytes and five allocations a write, and when a list
/// replaced them they left holes across the heap that the allocator could not give back
/// (`docs/performance.md`).
#[derive(Debug, Default)]
struct Writes {
    entries: Vec<Written>,
    /// Positions in `entries`, by id.
    by_id: HashTable<u32>,
    /// Positions in `entries` of the accounts not deleted, by the name written.
    by_name: HashTable<u32>,
}

impl Writes {
    /// Records `write`, replacing an earlier write of the same account.
    fn insert(&mut self, write: Written) {
        let Writes {
            entries,
            by_id,
            by_name,
        } = self;
        let id = stable_hash(write.account.id());
        let earlier = by_id
            .find(id, |&at| entries[at as usize].account.id() == write.account.id())
            .copied();
        let at = match earlier {
            Some(at) => {
                let earlier = &entries[at as usize];
                if !earlier.deleted()
                    && let Ok(entry) = by_name.find_entry(stable_hash(earlier.account.name()), |&held| held == at)
                {
                    entry.remove();
                }
                entries[at as usize] = write;
                at
            }
            None => {
                let at = u32::try_from(entries.len()).expect("fewer than 2³² writes between two lists");
                entries.push(write);
                by_id.insert_unique(id, at, |&at| stable_hash(entries[at as usize].account.id()));
                at
            }
        };
        let written = &entries[at as usize];
        if !written.deleted() {
            let name = stable_hash(written.account.name());
            by_name.insert_unique(name, at, |&at| stable_hash(entries[at as usize].account.name()));
        }
    }

    /// The write of account `id`, if any.
    fn get(&self, id: &str) -> Option<&Written> {
        let at = self
            .by_id
            .find(stable_hash(id), |&at| self.entries[at as usize].account.id() == id)?;
        Some(&self.entries[*at as usize])
    }

    /// The written (not deleted) accounts named `name`.
    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a KeptAccount> + 'a {
        self.by_name
            .iter_hash(stable_hash(name))
            .map(|&at| &self.entries[at as usize].account)
            .filter(move |account| account.name() == name)
    }
}

/// An account the operator wrote after a list was taken.
#[derive(Clone, Debug)]
struct Written {
    /// When it was recorded: a later list that started before keeps it.
    at: DateTime<Utc>,
    /// The account as written; only its id when deleted ([`KeptAccount::deleted`]).
    account: KeptAccount,
    /// Whether the write was its create (a list showing it knows what Cyclr chose).
    created: bool,
}

impl Written {
    /// Whether the write was the account's deletion.
    fn deleted(&self) -> bool {
        self.account.texts.get(1).is_none()
    }

    /// The account as written; `None`: deleted.
    fn account(&self) -> Option<Account> {
        (!self.deleted()).then(|| self.account.account())
    }
}

/// An account as a snapshot keeps it: its five texts in one allocation ([`Texts`]), where an
/// [`Account`] takes up to six (about 150 bytes in all for a listed account against about 280).
#[derive(Clone, Debug, PartialEq)]
pub struct KeptAccount {
    /// Id, name, description, time zone and audit info.
    texts: Texts<5>,
    price_plan_id: Option<PricePlanId>,
    last_bill_date: Option<CyclrDate>,
    next_bill_date: Option<CyclrDate>,
}

impl From<Account> for KeptAccount {
    fn from(account: Account) -> Self {
        KeptAccount {
            texts: Texts::new([
                Some(&account.id),
                Some(&account.name),
                account.description.as_deref(),
                account.timezone.as_deref(),
                account.audit_info.as_deref(),
            ]),
            price_plan_id: account.price_plan_id,
            last_bill_date: account.last_bill_date,
            next_bill_date: account.next_bill_date,
        }
    }
}

impl KeptAccount {
    /// Only an id, no name (every account has one): what a write keeps of a deleted account.
    fn deleted(id: &str) -> Self {
        KeptAccount {
            texts: Texts::new([Some(id), None, None, None, None]),
            price_plan_id: None,
            last_bill_date: None,
            next_bill_date: None,
        }
    }

    fn id(&self) -> &str {
        self.texts.str(0)
    }

    fn name(&self) -> &str {
        self.texts.str(1)
    }

    /// The account as Cyclr listed it.
    fn account(&self) -> Account {
        let owned = |i| self.texts.get(i).map(str::to_owned);
        Account {
            id: self.id().to_owned(),
            name: self.name().to_owned(),
            description: owned(2),
            timezone: owned(3),
            price_plan_id: self.price_plan_id,
            last_bill_date: self.last_bill_date,
            next_bill_date: self.next_bill_date,
            audit_info: owned(4),
        }
    }
}

impl AccountsSnapshot {
    /// A snapshot of `accounts`, listed by a request sent at `taken_at`.
    pub fn new(taken_at: DateTime<Utc>, accounts: impl IntoIterator<Item = impl Into<KeptAccount>>) -> Self {
        Self::of_entries(taken_at, accounts.into_iter().map(|a| Arc::new(a.into())).collect())
    }

    /// `kept` as an entry of a list newer than `older`: `older`'s own entry when it is the same.
    fn entry(older: Option<&AccountsSnapshot>, kept: KeptAccount) -> Arc<KeptAccount> {
        match older.and_then(|older| older.listed_account(kept.id())) {
            Some(same) if **same == kept => same.clone(),
            _ => Arc::new(kept),
        }
    }

    /// A snapshot of the entries a list made ([`entry`](Self::entry)).
    fn of_entries(taken_at: DateTime<Utc>, mut accounts: Vec<Arc<KeptAccount>>) -> Self {
        accounts.sort_unstable_by(|a, b| a.id().cmp(b.id()));
        accounts.dedup_by(|a, b| a.id() == b.id());
        accounts.shrink_to_fit();
        let mut by_name: Vec<u32> = (0..accounts.len() as u32).collect();
        by_name.sort_unstable_by(|&a, &b| accounts[a as usize].name().cmp(accounts[b as usize].name()));
        AccountsSnapshot {
            taken_at,
            listed: accounts,
            by_name,
            written: RwLock::default(),
        }
    }

    /// The listed account with Cyclr id `id`.
    fn listed_account(&self, id: &str) -> Option<&Arc<KeptAccount>> {
        let at = self.listed.binary_search_by(|a| a.id().cmp(id)).ok()?;
        Some(&self.listed[at])
    }

    /// The listed accounts named `name`.
    fn listed_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a KeptAccount> + 'a {
        let start = self.by_name.partition_point(|&i| self.listed[i as usize].name() < name);
        self.by_name[start..]
            .iter()
            .map(|&i| &*self.listed[i as usize])
            .take_while(move |a| a.name() == name)
    }

    /// The account with Cyclr id `id`, as last listed or written.
    pub fn get(&self, id: &str) -> Option<Account> {
        if let Some(written) = self.written.read().expect("lock").get(id) {
            return written.account();
        }
        self.listed_account(id).map(|a| a.account())
    }

    /// Adds to `changed` the hashes ([`driver::stable_hash`]) of the ids of the accounts
    /// `newer` shows differently from this snapshot: listed or written, added, removed or
    /// changed, or listed for the first time. One walk of both sorted lists.
    fn changes(&self, newer: &AccountsSnapshot, changed: &mut HashSet<u64>) {
        let (old, new) = (&self.listed, &newer.listed);
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            let step = match (old.get(i), new.get(j)) {
                (Some(a), Some(b)) => a.id().cmp(b.id()),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match step {
                std::cmp::Ordering::Equal => {
                    if old[i] != new[j] {
                        changed.insert(driver::stable_hash(old[i].id()));
                    }
                    (i, j) = (i + 1, j + 1);
                }
                std::cmp::Ordering::Less => {
                    changed.insert(driver::stable_hash(old[i].id()));
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    changed.insert(driver::stable_hash(new[j].id()));
                    j += 1;
                }
            }
        }
        // What the operator wrote since either list: judged by the view each snapshot gives,
        // and whether the list itself shows it (a new account's bill dates, then its usage).
        let written: Vec<String> = [self, newer]
            .iter()
            .flat_map(|s| {
                s.written
                    .read()
                    .expect("lock")
                    .entries
                    .iter()
                    .map(|w| w.account.id().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        for id in written {
            let hash = driver::stable_hash(id.as_str());
            if self.get(&id) == newer.get(&id) && self.listed(&id) == newer.listed(&id) {
                changed.remove(&hash);
            } else {
                changed.insert(hash);
            }
        }
    }

    /// Whether the list itself showed the account (not only a write recorded since).
    pub fn listed(&self, id: &str) -> bool {
        self.listed_account(id).is_some()
    }

    /// Every account named `name`, as last listed or written.
    pub fn named(&self, name: &str) -> Vec<Account> {
        let written = self.written.read().expect("lock");
        self.listed_named(name)
            .filter(|a| written.get(a.id()).is_none())
            .chain(written.named(name))
            .map(KeptAccount::account)
            .collect()
    }

    /// How many accounts the partner has (listed, or created since).
    pub fn count(&self) -> usize {
        let written = self.written.read().expect("lock");
        let added = written
            .entries
            .iter()
            .filter(|w| !w.deleted() && !self.listed(w.account.id()))
            .count();
        let deleted = written
            .entries
            .iter()
            .filter(|w| w.deleted() && self.listed(w.account.id()))
            .count();
        self.listed.len() + added - deleted
    }

    /// Records an account as the operator just wrote it. A created account the list already
    /// shows is not recorded: that list was read after the create committed, and it holds
    /// what Cyclr chose (price plan, bill dates), which the create's answer does not.
    fn remember(&self, account: Account, how: Wrote) {
        if how == Wrote::Created && self.listed(&account.id) {
            return;
        }
        self.record(account.into(), how == Wrote::Created);
    }

    /// Records that the operator deleted account `id`: the list's older view of it is gone.
    fn forget(&self, id: &str) {
        self.record(KeptAccount::deleted(id), false);
    }

    /// Records a write of `account` (only its id when deleted), now.
    fn record(&self, account: KeptAccount, created: bool) {
        let written = Written {
            at: Utc::now(),
            account,
            created,
        };
        self.written.write().expect("lock").insert(written);
    }

    /// Keeps the writes `older` recorded since this list started, which the list may not show
    /// (a paced list reads its pages over minutes); a create the list shows is left to the
    /// list, which holds what Cyclr chose.
    fn keep_writes_since_taken(&self, older: &AccountsSnapshot) {
        let mut written = self.written.write().expect("lock");
        for write in &older.written.read().expect("lock").entries {
            if write.at >= self.taken_at && !(write.created && self.listed(write.account.id())) {
                written.insert(write.clone());
            }
        }
    }
}

/// How the operator wrote an account it records in the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrote {
    /// Create Account: what was sent and the id Cyclr returned.
    Created,
    /// Update Account: the account as observed with the sent changes applied.
    Updated,
}

/// A partner the accounts can use, or why they cannot.
#[derive(Clone, Debug)]
pub enum PartnerState {
    /// Not checked yet by this process (just started, or just configured): its accounts keep
    /// the status they have until the check.
    Unchecked,
    /// Checked: accounts may call Cyclr.
    Ready,
    /// Checked and unusable: why.
    NotReady(String),
}

/// One partner's client and what the operator knows of it.
pub struct PartnerRuntime {
    /// The partner's Cyclr client (one token and one rate budget, shared by every reconcile).
    pub client: CyclrClient,
    /// A hash of the values the client is built from (URL, credential values, limits): a
    /// new client is built only when it changes, never for a label or annotation edit.
    pub fingerprint: u64,
    /// How often the partner lists its accounts and its accounts are looked at (drift).
    pub resync_interval: Duration,
    /// How often an account's usage is read.
    pub usage_interval: Duration,
    /// Which namespaces may use the partner (`None`: all).
    pub namespace_selector: Option<Selector>,
    /// Digests of connector credentials, keyed from this partner's client secret.
    pub credentials_digest: CredentialsDigest,
    /// The API its accounts are managed with (`spec.cyclrAPI`).
    pub dialect: CyclrApi,
    state: RwLock<PartnerState>,
    price_plans: RwLock<Vec<PricePlan>>,
    /// The latest snapshot: read without waiting, also while the next list is read.
    snapshot: RwLock<Option<Arc<AccountsSnapshot>>>,
    /// Held while a list is read, so concurrent callers share one List Accounts.
    listing: Arc<Mutex<()>>,
    /// When the next page of a paced v1.0 list may be requested.
    next_page: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Set when the runtime is taken out of service (the partner deleted or reconfigured):
    /// a drift check under way stops.
    retired: tokio::sync::watch::Sender<bool>,
    /// One lock per account name while any reconcile holds or awaits it: creates of the
    /// same name are serialised, so the second sees the first's account and never creates a
    /// twin.
    names: Arc<NameLocks>,
    /// Reconciles of this partner's accounts that may create one, now: while any run,
    /// usage reads wait, so onboarding has the partner's whole request budget.
    onboarding: Arc<Onboarders>,
    /// The accounts whose usage read waits for the onboarding to end
    /// ([`driver::stable_hash`] of their ids): woken when it does.
    deferred: std::sync::Mutex<HashSet<u64>>,
    /// Where each new snapshot's size and time are reported (partner name, metrics).
    snapshot_metrics: Option<(String, Arc<Metrics>)>,
    /// The last account a list left out although it exists (read back), and when: the
    /// partner's list looked wrong.
    list_missed: std::sync::Mutex<Option<(DateTime<Utc>, String)>>,
    /// When a check last woke the partner's accounts, and when the list they were woken for
    /// was taken.
    accounts_woken: std::sync::Mutex<Option<(std::time::Instant, DateTime<Utc>)>>,
    /// The accounts the lists taken since that wake showed differently from the list before
    /// each ([`driver::stable_hash`] of their ids): the next wake is for them.
    changed: std::sync::Mutex<HashSet<u64>>,
}

/// Which of a partner's accounts a wake is for.
#[derive(Clone, Debug)]
pub enum Woken {
    /// Every one: the partner's readiness, client or price plans changed, or it is gone.
    All,
    /// Those not settled, and those holding one of these Cyclr accounts
    /// ([`driver::stable_hash`] of each id): what a new list shows differently. A settled
    /// account whose Cyclr account did not change has nothing new to see (its own resync
    /// still looks, once a `resyncInterval`).
    Changed(Arc<HashSet<u64>>),
    /// Those not settled, and those whose usage read waited for the partner's onboarding
    /// (hashes as for `Changed`); not the partner's cycles, which read no usage and would
    /// list again for nothing at the end of every burst of creates.
    UsageReads(Arc<HashSet<u64>>),
}

impl std::fmt::Debug for PartnerRuntime {
    /// The fingerprint only: the client holds credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartnerRuntime")
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

#[cfg(test)]
impl PartnerRuntime {
    /// A runtime on `config`'s client for unit tests: resync and usage every minute, no
    /// namespace selector, digests keyed with `s`.
    pub(crate) fn for_tests(config: cyclr::ClientConfig) -> Self {
        let client = CyclrClient::new(config).expect("a client");
        let minute = Duration::from_secs(60);
        PartnerRuntime::new(client, 0, minute, minute, None, CredentialsDigest::new("s"))
    }
}

impl PartnerRuntime {
    /// A runtime for `client`, not checked yet.
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
            dialect: CyclrApi::Partner,
            state: RwLock::new(PartnerState::Unchecked),
            price_plans: RwLock::new(Vec::new()),
            snapshot: RwLock::new(None),
            listing: Arc::default(),
            next_page: Default::default(),
            retired: tokio::sync::watch::Sender::new(false),
            names: Default::default(),
            onboarding: Arc::default(),
            deferred: Default::default(),
            snapshot_metrics: None,
            list_missed: Default::default(),
            accounts_woken: Default::default(),
            changed: Default::default(),
        }
    }

    /// Manages the partner's accounts with `dialect`.
    pub fn with_dialect(mut self, dialect: CyclrApi) -> Self {
        self.dialect = dialect;
        self
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
        *self.accounts_woken.lock().expect("lock") = *old.accounts_woken.lock().expect("lock");
        *self.price_plans.write().expect("lock") = old.price_plans();
        *self.snapshot.write().expect("lock") = old.snapshot();
        self
    }

    /// Whether accounts and installs of a namespace with these labels may use the partner.
    pub fn admits(&self, namespace_labels: &BTreeMap<String, String>) -> bool {
        self.namespace_selector
            .as_ref()
            .is_none_or(|selector| selector.matches(namespace_labels))
    }

    /// Serialises creates of one account name in this partner (held across check and create).
    pub async fn lock_name(&self, name: &str) -> NameGuard {
        let lock = self
            .names
            .lock()
            .expect("lock")
            .entry(name.to_string())
            .or_default()
            .clone();
        NameGuard {
            guard: Some(lock.lock_owned().await),
            names: self.names.clone(),
            name: name.to_string(),
        }
    }

    /// Counts an account reconcile that may create an account, until the guard is dropped.
    pub fn onboarding(&self) -> Onboarding {
        self.onboarding.running.fetch_add(1, Ordering::SeqCst);
        Onboarding(self.onboarding.clone())
    }

    /// Whether any account of this partner is being onboarded now.
    pub fn is_onboarding(&self) -> bool {
        self.onboarding.running.load(Ordering::SeqCst) > 0
    }

    /// Records that the usage read of account `id` (Cyclr's id) waits for the onboarding to
    /// end ([`wake_after_onboarding`](Self::wake_after_onboarding)).
    pub fn defer_usage(&self, id: &str) {
        self.deferred.lock().expect("lock").insert(driver::stable_hash(id));
    }

    /// Hands `wake` the accounts whose usage reads waited ([`defer_usage`](Self::defer_usage))
    /// each time no account has been onboarded for [`ONBOARDING_QUIET`]: one wake each, where
    /// a timer would look again every few seconds for as long as a rollout lasts (at 100,000
    /// accounts, most of an hour). Runs until the runtime is retired.
    pub fn wake_after_onboarding(self: &Arc<Self>, wake: impl Fn(Woken) + Send + 'static) {
        let runtime = self.clone();
        let mut retired = self.retired.subscribe();
        tokio::spawn(async move {
            let waking = async move {
                loop {
                    runtime.onboarding.ended.notified().await;
                    tokio::time::sleep(ONBOARDING_QUIET).await;
                    if runtime.is_onboarding() {
                        continue;
                    }
                    let deferred = std::mem::take(&mut *runtime.deferred.lock().expect("lock"));
                    if !deferred.is_empty() {
                        wake(Woken::UsageReads(Arc::new(deferred)));
                    }
                }
            };
            tokio::select! {
                () = waking => {}
                _ = retired.wait_for(|retired| *retired) => {}
            }
        });
    }

    /// Whether a check whose account list was taken at `listed_at` should wake the partner's
    /// accounts now: the first time, and then once about a resync interval after the last
    /// (90% of it, as timers are jittered) if the list is newer than the one they were last
    /// woken for (a `V1` check reports the last complete drift check until the next ends);
    /// records the wake when it says yes.
    pub fn accounts_wake_due(&self, listed_at: DateTime<Utc>) -> bool {
        let mut woken = self.accounts_woken.lock().expect("lock");
        let due =
            woken.is_none_or(|(at, listed)| at.elapsed() >= self.resync_interval.mul_f64(0.9) && listed_at > listed);
        if due {
            *woken = Some((std::time::Instant::now(), listed_at));
        }
        due
    }

    /// The accounts to wake for the lists taken since the last wake: [`Woken::Changed`], and
    /// no change is kept for the next.
    pub fn take_changed(&self) -> Woken {
        Woken::Changed(Arc::new(std::mem::take(&mut *self.changed.lock().expect("lock"))))
    }

    /// Records that the partner's accounts are woken now for the list taken at `listed_at`
    /// (a drift check's end wakes them), so the partner's next check, which reports that list
    /// until the next drift check ends, does not wake them for it again.
    fn accounts_woken_for(&self, listed_at: DateTime<Utc>) {
        *self.accounts_woken.lock().expect("lock") = Some((std::time::Instant::now(), listed_at));
    }

    /// Whether a drift check should start: none has for about a resync interval (90% of it)
    /// since the held snapshot was taken.
    pub fn drift_check_due(&self, held: &AccountsSnapshot) -> bool {
        let age = (Utc::now() - held.taken_at).to_std().unwrap_or_default();
        age >= self.resync_interval.mul_f64(0.9)
    }

    /// Records that a list left out account `id`, which a read showed to exist.
    pub fn note_list_missed(&self, id: &str) {
        *self.list_missed.lock().expect("lock") = Some((Utc::now(), id.to_string()));
    }

    /// The last account a list left out although it exists, and when it was read back.
    pub fn list_missed(&self) -> Option<(DateTime<Utc>, String)> {
        self.list_missed.lock().expect("lock").clone()
    }

    /// Whether the partner's accounts may call Cyclr.
    pub fn state(&self) -> PartnerState {
        self.state.read().expect("lock").clone()
    }

    /// Sets whether the partner's accounts may call Cyclr.
    pub fn set_state(&self, state: PartnerState) {
        *self.state.write().expect("lock") = state;
    }

    /// The partner's price plans, as last checked.
    pub fn price_plans(&self) -> Vec<PricePlan> {
        self.price_plans.read().expect("lock").clone()
    }

    /// Replaces the partner's price plans.
    pub fn set_price_plans(&self, plans: Vec<PricePlan>) {
        *self.price_plans.write().expect("lock") = plans;
    }

    /// A snapshot taken at or after `after`, listing accounts only when the one held is
    /// older. Callers waiting at the same time share a single List Accounts, and a list starts
    /// at least [`list_interval`] after the one before it: resources arriving one by one are
    /// checked in batches, whatever their number. The held snapshot stays readable
    /// ([`snapshot`](Self::snapshot)) while the next list is read.
    ///
    /// On `V1` a list is paged, and every list but the first is a drift check whose pages are
    /// paced ([`page_interval`]): it takes at most a tenth of the partner's rate (a twentieth
    /// while accounts are onboarded), however many pages it has. The first list (nothing held:
    /// a start, a restart, a new partner) is read at once, as every account waits for it.
    ///
    /// Errors: the List Accounts failure (the held snapshot stays).
    pub async fn snapshot_since(&self, after: DateTime<Utc>) -> CyclrResult<Arc<AccountsSnapshot>> {
        let interval = list_interval(self.client.current_rate());
        loop {
            if let Some(snapshot) = self.snapshot().filter(|s| s.taken_at >= after) {
                return Ok(snapshot);
            }
            let listing = self.listing.lock().await;
            let held = self.snapshot();
            if let Some(snapshot) = held.as_ref().filter(|s| s.taken_at >= after) {
                return Ok(snapshot.clone());
            }
            // Wait without the lock: the first waiter awake lists for all of them.
            if let Some(wait) = held
                .as_ref()
                .and_then(|s| (s.taken_at + interval - Utc::now()).to_std().ok())
            {
                drop(listing);
                tokio::time::sleep(wait).await;
                continue;
            }
            return self.list(held.is_some()).await;
        }
    }

    /// Starts a drift check of a `V1` partner that holds a snapshot: a paced list
    /// ([`snapshot_since`](Self::snapshot_since)) read in the background, so the partner's
    /// check does not wait the minutes its pages take at large N; nothing when a list is under
    /// way. The snapshot is replaced when it ends; then `ended` is called with the outcome
    /// (after a failure the partner's next resync starts another). A successful end counts as
    /// the accounts' wake for the new list ([`accounts_wake_due`](Self::accounts_wake_due)):
    /// `ended` is given the accounts to wake.
    pub fn start_drift_check(self: &Arc<Self>, ended: impl FnOnce(CyclrResult<Woken>) + Send + 'static) {
        let Ok(listing) = self.listing.clone().try_lock_owned() else {
            return;
        };
        let runtime = self.clone();
        let mut retired = self.retired.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                listed = runtime.list(true) => {
                    drop(listing);
                    ended(listed.map(|snapshot| {
                        runtime.accounts_woken_for(snapshot.taken_at);
                        runtime.take_changed()
                    }));
                }
                // Out of service: no more calls with its client.
                _ = retired.wait_for(|retired| *retired) => {}
            }
        });
    }

    /// Lists every account now (the caller holds `listing`), pages paced when `paced` on `V1`,
    /// and makes it the held snapshot, with the writes recorded since it started.
    ///
    /// Errors: the List Accounts failure (the held snapshot stays).
    async fn list(&self, paced: bool) -> CyclrResult<Arc<AccountsSnapshot>> {
        let taken_at = Utc::now();
        let older = self.snapshot();
        let entry = move |account: Account| AccountsSnapshot::entry(older.as_deref(), account.into());
        let accounts = match self.dialect {
            CyclrApi::Partner => self.client.list_accounts_with(entry).await?,
            // Every page: the name and claim checks must see every account.
            CyclrApi::V1 => self
                .client
                .list_accounts_v1_paced(|| async move {
                    if paced {
                        self.page_turn().await;
                    }
                })
                .await?
                .into_iter()
                .map(|account| entry(account_from_v1(account)))
                .collect(),
        };
        let snapshot = Arc::new(AccountsSnapshot::of_entries(taken_at, accounts));
        {
            let mut current = self.snapshot.write().expect("lock");
            if let Some(older) = current.as_ref() {
                snapshot.keep_writes_since_taken(older);
                older.changes(&snapshot, &mut self.changed.lock().expect("lock"));
            }
            *current = Some(snapshot.clone());
        }
        if let Some((name, metrics)) = &self.snapshot_metrics {
            metrics.account_snapshot(name, snapshot.count(), snapshot.taken_at);
        }
        Ok(snapshot)
    }

    /// Waits for the turn of the next page of a paced list.
    async fn page_turn(&self) {
        let every = page_interval(self.client.current_rate(), self.is_onboarding());
        let at = {
            let mut next = self.next_page.lock().expect("lock");
            let (at, following) = page_slot(*next, tokio::time::Instant::now(), every);
            *next = Some(following);
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// The latest snapshot, if any was taken; never waits for a list being read.
    pub fn snapshot(&self) -> Option<Arc<AccountsSnapshot>> {
        self.snapshot.read().expect("lock").clone()
    }

    /// Records an account as the operator just wrote it, so the next reconcile does not
    /// mistake the snapshot's older view for drift or a missing account.
    pub fn remember_account(&self, account: Account, how: Wrote) {
        if let Some(current) = self.snapshot.read().expect("lock").as_ref() {
            current.remember(account, how);
        }
    }

    /// Records that the operator deleted account `id`, so a resource applied again before
    /// the next list does not adopt what is gone.
    pub fn forget_account(&self, id: &str) {
        if let Some(current) = self.snapshot.read().expect("lock").as_ref() {
            current.forget(id);
        }
    }
}

/// A v1.0 account as the snapshot keeps it: what the comparisons read. v1.0 has no price
/// plan nor last bill date (both stay on the Partner API): they are left unknown, and an
/// unknown price plan is never taken for drift.
pub fn account_from_v1(account: AccountV1) -> Account {
    Account {
        id: account.id,
        name: account.name,
        description: account.description,
        timezone: account.timezone,
        price_plan_id: None,
        last_bill_date: None,
        next_bill_date: account.next_bill_date_utc,
        audit_info: account.audit_info,
    }
}

/// The least time between the starts of two List Accounts of one partner sending `rate`
/// requests per second: 250 ms, or 10 requests' worth of its budget when that is longer
/// (1 s at the default 10/s), so lists take at most a tenth of the budget however the
/// partner's resources arrive, and a list of 10,000 accounts (about 2.5 MB) is parsed at most
/// four times a second.
pub fn list_interval(rate: f64) -> Duration {
    const FLOOR: Duration = Duration::from_millis(250);
    FLOOR.max(Duration::from_secs_f64(10.0 / rate.max(0.1)))
}

/// The least time between two pages of a paced v1.0 list (a drift check) of a partner
/// sending `rate` requests per second: [`list_interval`], so pages take at most a tenth of the
/// budget whatever the number of pages; twice that while its accounts are onboarded, so
/// creates keep at least 95% of it. At 100,000 accounts (1,000 pages of 100) and 10 req/s a
/// drift check takes 1,000 s, about 17 minutes.
pub fn page_interval(rate: f64, onboarding: bool) -> Duration {
    let interval = list_interval(rate);
    if onboarding { interval * 2 } else { interval }
}

/// When a page may be requested (`next`: the earliest the previous page allowed; `now`), and
/// the earliest the page after it may: `every` later.
fn page_slot(
    next: Option<tokio::time::Instant>,
    now: tokio::time::Instant,
    every: Duration,
) -> (tokio::time::Instant, tokio::time::Instant) {
    let at = next.map_or(now, |next| next.max(now));
    (at, at + every)
}

type NameLocks = std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>;

/// A held name lock ([`PartnerRuntime::lock_name`]). The lock is forgotten when the last
/// holder lets go and nobody waits, so the map holds only names being created, not every
/// name ever seen.
pub struct NameGuard {
    guard: Option<OwnedMutexGuard<()>>,
    names: Arc<NameLocks>,
    name: String,
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        // Under the map's lock, so no one can take a clone between the count and the removal.
        let mut names = self.names.lock().expect("lock");
        drop(self.guard.take());
        if names.get(&self.name).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            names.remove(&self.name);
        }
    }
}

/// How long no account must have been onboarded before the usage reads that waited are woken
/// ([`PartnerRuntime::wake_after_onboarding`]): creates that come a few at a time keep the
/// budget between them.
pub const ONBOARDING_QUIET: Duration = Duration::from_secs(5);

/// A partner's account reconciles that may create an account: how many run now, and the
/// signal that the last one ended.
#[derive(Default)]
struct Onboarders {
    running: AtomicUsize,
    ended: tokio::sync::Notify,
}

/// One account reconcile that may create an account ([`PartnerRuntime::onboarding`]).
pub struct Onboarding(Arc<Onboarders>);

impl Drop for Onboarding {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            // One stored permit however many ends come before the waiter looks.
            self.0.ended.notify_one();
        }
    }
}

/// The partners by name.
#[derive(Default)]
pub struct Partners {
    by_name: RwLock<HashMap<String, Arc<PartnerRuntime>>>,
}

impl Partners {
    /// The runtime of the partner `name`, if it is in service.
    pub fn get(&self, name: &str) -> Option<Arc<PartnerRuntime>> {
        self.by_name.read().expect("lock").get(name).cloned()
    }

    /// Puts `runtime` in service for the partner `name`, in place of the one before.
    pub fn insert(&self, name: &str, runtime: Arc<PartnerRuntime>) {
        let replaced = self
            .by_name
            .write()
            .expect("lock")
            .insert(name.to_string(), runtime.clone());
        if let Some(old) = replaced.filter(|old| !Arc::ptr_eq(old, &runtime)) {
            old.retired.send_replace(true);
        }
    }

    /// Drops the partner's client, token and snapshot at once (the CyclrPartner is gone), and
    /// stops its drift check.
    pub fn remove(&self, name: &str) {
        if let Some(old) = self.by_name.write().expect("lock").remove(name) {
            old.retired.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_account_gives_back_the_account_listed() {
        let full = Account {
            id: "0f3c".into(),
            name: "Acmé".into(),
            description: Some(String::new()),
            timezone: Some("Europe/London".into()),
            price_plan_id: Some(PricePlanId(2)),
            last_bill_date: Some(CyclrDate(Utc::now())),
            next_bill_date: None,
            audit_info: Some("made by ops".into()),
        };
        let sparse = Account {
            id: "a1".into(),
            name: "Beta".into(),
            description: None,
            timezone: None,
            price_plan_id: None,
            last_bill_date: None,
            next_bill_date: None,
            audit_info: None,
        };
        for account in [full, sparse] {
            let kept = KeptAccount::from(account.clone());
            assert_eq!((kept.id(), kept.name()), (account.id.as_str(), account.name.as_str()));
            assert_eq!(
                kept.account(),
                account,
                "an empty text stays set, a missing one missing"
            );
        }
    }

    #[test]
    fn a_check_wakes_the_accounts_once_a_resync_interval() {
        let config = cyclr::ClientConfig::new("http://127.0.0.1:9", "id", secrecy::SecretString::from("s"));
        let runtime = PartnerRuntime::new(
            CyclrClient::new(config).unwrap(),
            0,
            Duration::from_secs(600),
            Duration::from_secs(600),
            None,
            CredentialsDigest::new("s"),
        );
        let listed = Utc::now();
        assert!(runtime.accounts_wake_due(listed), "the first check");
        let later = listed + chrono::Duration::seconds(1);
        assert!(
            !runtime.accounts_wake_due(later),
            "a check soon after (creates) does not"
        );
        let long_ago = std::time::Instant::now() - Duration::from_secs(560);
        *runtime.accounts_woken.lock().unwrap() = Some((long_ago, listed));
        assert!(
            !runtime.accounts_wake_due(listed),
            "nor the next resync with the same list (a drift check under way)"
        );
        assert!(
            runtime.accounts_wake_due(later),
            "the next resync with a newer list does"
        );
    }

    fn account(id: &str, name: &str) -> Account {
        Account {
            id: id.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_list_shares_the_entries_it_shows_as_before() {
        let older = AccountsSnapshot::new(Utc::now(), vec![account("1", "acme"), account("2", "beta")]);
        let entry = |a| AccountsSnapshot::entry(Some(&older), KeptAccount::from(a));
        let (same, renamed, added) = (
            entry(account("1", "acme")),
            entry(account("2", "gamma")),
            entry(account("3", "delta")),
        );
        assert!(Arc::ptr_eq(&same, &older.listed[0]), "the older list's own allocation");
        assert!(!Arc::ptr_eq(&renamed, &older.listed[1]));
        assert_eq!(renamed.name(), "gamma");
        assert_eq!(added.id(), "3");
        let newer = AccountsSnapshot::of_entries(Utc::now(), vec![added, renamed, same]);
        let mut changed = HashSet::new();
        older.changes(&newer, &mut changed);
        assert_eq!(
            changed,
            HashSet::from([driver::stable_hash("2"), driver::stable_hash("3")])
        );
    }

    #[test]
    fn a_create_the_list_already_shows_keeps_what_cyclr_chose() {
        // The list was read after the create committed but arrived before its answer: the
        // listed account has the bill dates and plan Cyclr chose, the create's answer has not.
        let mut listed = account("1", "acme");
        listed.price_plan_id = Some(cyclr::types::PricePlanId(2));
        listed.next_bill_date = cyclr::types::CyclrDate::parse("2027-01-06");
        let snapshot = AccountsSnapshot::new(Utc::now(), vec![listed.clone()]);
        snapshot.remember(account("1", "acme"), Wrote::Created);
        assert_eq!(
            snapshot.get("1"),
            Some(listed.clone()),
            "the list wins over the create's answer"
        );
        let mut renamed = listed.clone();
        renamed.name = "acme-2".into();
        snapshot.remember(renamed.clone(), Wrote::Updated);
        assert_eq!(snapshot.get("1"), Some(renamed), "an update wins over the list");
    }

    #[test]
    fn written_accounts_win_over_the_list_without_copying_it() {
        let snapshot = AccountsSnapshot::new(Utc::now(), vec![account("1", "acme"), account("2", "beta")]);
        snapshot.remember(account("3", "acme"), Wrote::Created);
        let mut renamed = account("2", "acme");
        renamed.description = Some("renamed".into());
        snapshot.remember(renamed, Wrote::Updated);
        let mut ids: Vec<String> = snapshot.named("acme").into_iter().map(|a| a.id).collect();
        ids.sort();
        assert_eq!(ids, ["1", "2", "3"]);
        assert!(snapshot.named("beta").is_empty(), "the write replaced the listed name");
        assert_eq!(snapshot.get("2").unwrap().description.as_deref(), Some("renamed"));
        assert_eq!(snapshot.count(), 3);
        assert!(
            snapshot.get("3").is_some() && !snapshot.listed("3"),
            "created since: not listed"
        );
        assert!(snapshot.listed("2"));
        snapshot.forget("1");
        snapshot.forget("3");
        assert_eq!(snapshot.get("1"), None, "deleted by the operator");
        assert_eq!(snapshot.named("acme").len(), 1);
        assert_eq!(snapshot.count(), 1);
    }

    #[test]
    fn a_name_finds_an_account_written_twice_once_and_a_renamed_one_under_its_new_name_only() {
        let snapshot = AccountsSnapshot::new(Utc::now(), Vec::<Account>::new());
        snapshot.remember(account("1", "acme"), Wrote::Created);
        snapshot.remember(account("1", "acme"), Wrote::Updated);
        snapshot.remember(account("2", "acme"), Wrote::Created);
        snapshot.remember(account("2", "zeta"), Wrote::Updated);
        let ids = |name| snapshot.named(name).into_iter().map(|a| a.id).collect::<Vec<_>>();
        assert_eq!(ids("acme"), ["1"]);
        assert_eq!(ids("zeta"), ["2"]);
        snapshot.forget("2");
        assert!(ids("zeta").is_empty(), "deleted since");
        assert_eq!(
            snapshot.written.read().unwrap().by_name.len(),
            1,
            "no empty name left behind"
        );
    }

    #[test]
    fn a_listed_name_finds_every_account_of_that_name_and_no_other() {
        let snapshot = AccountsSnapshot::new(
            Utc::now(),
            vec![
                account("9", "b"),
                account("1", "a"),
                account("5", "b"),
                account("3", "c"),
            ],
        );
        let ids = |name| snapshot.named(name).into_iter().map(|a| a.id).collect::<Vec<_>>();
        let mut b = ids("b");
        b.sort();
        assert_eq!(b, ["5", "9"]);
        assert_eq!(ids("a"), ["1"]);
        assert!(ids("bb").is_empty() && ids("").is_empty());
        assert!(snapshot.listed("9") && snapshot.listed("3") && !snapshot.listed("4"));
        assert_eq!(snapshot.get("5").map(|a| a.name), Some("b".into()));
    }

    #[test]
    fn lists_take_at_most_a_tenth_of_the_budget_and_never_come_closer_than_250_ms() {
        assert_eq!(list_interval(10.0), Duration::from_secs(1));
        assert_eq!(list_interval(2.0), Duration::from_secs(5));
        assert_eq!(list_interval(1000.0), Duration::from_millis(250));
        assert_eq!(
            list_interval(0.0),
            Duration::from_secs(100),
            "a rate of 0 is not a division by 0"
        );
    }

    #[test]
    fn paced_pages_take_a_tenth_of_the_budget_and_a_twentieth_while_onboarding() {
        assert_eq!(page_interval(10.0, false), Duration::from_secs(1));
        assert_eq!(page_interval(10.0, true), Duration::from_secs(2));
        assert_eq!(page_interval(1000.0, false), Duration::from_millis(250));
        let now = tokio::time::Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(
            page_slot(None, now, second),
            (now, now + second),
            "the first page goes at once"
        );
        let (at, next) = page_slot(Some(now + second), now, second);
        assert_eq!((at, next), (now + second, now + 2 * second), "the next waits its turn");
        assert_eq!(
            page_slot(Some(now), now + 5 * second, second),
            (now + 5 * second, now + 6 * second),
            "a page long after the last goes at once: no credit saved up"
        );
    }

    #[test]
    fn a_new_list_keeps_the_writes_recorded_since_it_started() {
        let old = AccountsSnapshot::new(Utc::now(), vec![account("1", "acme"), account("2", "beta")]);
        old.remember(account("3", "before"), Wrote::Created);
        let started = Utc::now();
        let mut renamed = account("1", "acme-2");
        renamed.description = Some("renamed".into());
        old.remember(renamed.clone(), Wrote::Updated);
        old.forget("2");
        old.remember(account("4", "listed"), Wrote::Created);
        // Read while the writes above happened: it shows the create of 4 (and of 3), not the
        // rename nor the delete.
        let new = AccountsSnapshot::new(
            started,
            vec![account("1", "acme"), account("2", "beta"), account("4", "listed")],
        );
        new.keep_writes_since_taken(&old);
        assert_eq!(new.get("1"), Some(renamed), "the rename is newer than the list");
        assert_eq!(new.get("2"), None, "the delete too");
        assert_eq!(
            new.get("3"),
            None,
            "a write before the list started is the list's to show"
        );
        assert!(new.listed("4") && new.written.read().unwrap().get("4").is_none());
    }

    #[test]
    fn a_new_list_names_the_accounts_it_shows_differently() {
        let started = Utc::now();
        let old = AccountsSnapshot::new(
            started,
            vec![
                account("1", "acme"),
                account("2", "beta"),
                account("3", "gone"),
                account("7", "before"),
            ],
        );
        old.remember(account("5", "created"), Wrote::Created);
        old.remember(account("6", "written"), Wrote::Created);
        old.remember(account("7", "updated"), Wrote::Updated);
        let new = AccountsSnapshot::new(
            started + chrono::Duration::seconds(60),
            vec![
                account("1", "acme"),
                account("2", "renamed in Cyclr"),
                account("4", "made in Cyclr"),
                account("5", "created"),
                account("6", "renamed since"),
                account("7", "updated"),
            ],
        );
        let mut changed = HashSet::new();
        old.changes(&new, &mut changed);
        let expected: HashSet<u64> = ["2", "3", "4", "5", "6"].map(driver::stable_hash).into();
        assert_eq!(
            changed, expected,
            "5 listed for the first time; not 1 (the same), nor 7 (listed as it was written)"
        );
    }

    /// A simulator, and a client configuration for it at 1000 requests/s.
    async fn simulated() -> (cyclr_sim::SimHandle, cyclr::ClientConfig) {
        let sim = cyclr_sim::Simulator::start(
            cyclr_sim::SimConfig::new("id", "secret"),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let mut config = cyclr::ClientConfig::new(sim.base_url(), "id", secrecy::SecretString::from("secret"));
        config.requests_per_second = 1000;
        (sim, config)
    }

    #[tokio::test]
    async fn callers_asking_together_share_one_list_and_the_next_list_waits_its_interval() {
        let (sim, config) = simulated().await;
        let runtime = PartnerRuntime::for_tests(config);
        let lists = || sim.stats().requests_to("GET /api/partner/accounts");
        let asked = Utc::now();
        let together = futures::future::join_all((0..5).map(|_| runtime.snapshot_since(asked))).await;
        let first = together[0].as_ref().unwrap().taken_at;
        assert!(first >= asked);
        assert!(together.iter().all(|s| s.as_ref().unwrap().taken_at == first));
        assert_eq!(lists(), 1, "five callers at once, one List Accounts");

        // While the next list waits its turn, reconciles still read the held snapshot.
        let reader = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            runtime.snapshot().expect("the held snapshot").taken_at
        };
        let (again, read) = tokio::join!(runtime.snapshot_since(Utc::now()), reader);
        let again = again.unwrap();
        assert_eq!(read, first);
        assert_eq!(lists(), 2);
        assert!(
            again.taken_at - first >= chrono::Duration::milliseconds(250),
            "the second list started {} after the first",
            again.taken_at - first
        );
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn a_drift_checks_end_is_the_accounts_wake_for_its_list() {
        let (sim, config) = simulated().await;
        let runtime = Arc::new(PartnerRuntime::for_tests(config).with_dialect(CyclrApi::V1));
        let first = runtime.snapshot_since(Utc::now()).await.unwrap().taken_at;
        assert!(runtime.accounts_wake_due(first), "the first check");
        let (ended, outcome) = tokio::sync::oneshot::channel();
        runtime.start_drift_check(move |listed| {
            let _ = ended.send(listed.is_ok());
        });
        assert!(outcome.await.unwrap(), "the drift check lists");
        let drifted = runtime.snapshot().unwrap().taken_at;
        assert!(drifted > first);
        // The partner's next resync, about an interval later, still reports that list (the
        // next drift check is under way): its accounts were woken for it when it ended.
        let recorded = runtime.accounts_woken.lock().unwrap().map(|(_, listed)| listed);
        assert_eq!(recorded, Some(drifted));
        let long_ago = std::time::Instant::now() - Duration::from_secs(120);
        *runtime.accounts_woken.lock().unwrap() = Some((long_ago, drifted));
        assert!(!runtime.accounts_wake_due(drifted), "one wake per list");
        sim.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn usage_reads_held_back_by_onboarding_are_woken_once_it_has_ended() {
        let client = cyclr::ClientConfig::new("http://127.0.0.1:9", "id", "secret".to_string().into());
        let runtime = Arc::new(PartnerRuntime::for_tests(client));
        let (wakes, mut woken) = tokio::sync::mpsc::unbounded_channel();
        runtime.wake_after_onboarding(move |w| wakes.send(w).unwrap());
        let quiet = || tokio::time::sleep(ONBOARDING_QUIET + Duration::from_millis(100));
        let (first, second) = (runtime.onboarding(), runtime.onboarding());
        runtime.defer_usage("a1");
        drop(first);
        quiet().await;
        assert!(woken.try_recv().is_err(), "nothing while an account is still onboarded");
        drop(second);
        // Onboarding again before the quiet time is over: still nothing.
        tokio::time::sleep(ONBOARDING_QUIET / 2).await;
        let third = runtime.onboarding();
        runtime.defer_usage("b2");
        quiet().await;
        assert!(woken.try_recv().is_err(), "onboarding went on");
        drop(third);
        quiet().await;
        match woken.try_recv() {
            Ok(Woken::UsageReads(ids)) => {
                assert_eq!(
                    *ids,
                    HashSet::from([driver::stable_hash("a1"), driver::stable_hash("b2")])
                )
            }
            other => panic!("one wake for the accounts that waited, not {other:?}"),
        }
        let fourth = runtime.onboarding();
        drop(fourth);
        quiet().await;
        assert!(woken.try_recv().is_err(), "no account waits: no wake");
        runtime.retired.send_replace(true);
        tokio::task::yield_now().await;
        assert!(
            matches!(
                woken.try_recv(),
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
            ),
            "retired: the waker is gone"
        );
    }

    #[tokio::test]
    async fn a_name_lock_is_forgotten_when_its_last_holder_lets_go() {
        let client = cyclr::ClientConfig::new("http://127.0.0.1:9", "id", "secret".to_string().into());
        let runtime = Arc::new(PartnerRuntime::new(
            CyclrClient::new(client).expect("client"),
            0,
            Duration::from_secs(600),
            Duration::from_secs(900),
            None,
            CredentialsDigest::new("secret"),
        ));
        let names = || runtime.names.lock().expect("lock").len();
        let first = runtime.lock_name("acme").await;
        let waiter = tokio::spawn({
            let runtime = runtime.clone();
            async move { runtime.lock_name("acme").await }
        });
        // The map, the first holder and the waiter.
        let holders = || runtime.names.lock().expect("lock").get("acme").map(Arc::strong_count);
        while holders() != Some(3) {
            tokio::task::yield_now().await;
        }
        drop(first);
        assert_eq!(names(), 1, "kept while another reconcile waits for it");
        drop(waiter.await.expect("the waiter gets the lock"));
        assert_eq!(names(), 0, "no name kept once nobody holds or awaits it");
    }
}
