//! The simulator's state (accounts, installed connectors, tokens), the rules that change it,
//! and its file form for `--state-file`.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Days, Months, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::api::ApiError;
use super::lock;
use cyclr::types::{Account, AccountFields, AccountId, AccountUsage, CyclrDate, PricePlan, PricePlanId};

/// The partner's price plans, as Get Price Plans lists them.
pub(crate) const PRICE_PLANS: [(i64, &str); 3] = [(2, "Starter"), (3, "Pro"), (4, "Enterprise")];

/// The plan of an account created without `PricePlanId`: a partner always has a default plan.
const DEFAULT_PRICE_PLAN: PricePlanId = PricePlanId(2);

pub(crate) fn price_plans() -> Vec<PricePlan> {
    PRICE_PLANS
        .iter()
        .map(|&(id, name)| PricePlan {
            id: PricePlanId(id),
            name: name.to_owned(),
        })
        .collect()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AccountRecord {
    pub account: Account,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub connectors: Vec<InstalledRecord>,
}

/// One installed connector. Its credentials are checked for presence and then forgotten, so
/// they reach neither the state file nor the logs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct InstalledRecord {
    pub id: u64,
    pub installed_name: String,
    pub connector_name: String,
    pub connector_version: String,
}

impl InstalledRecord {
    /// The v1.0 `GET /v1.0/account/connectors` form: numeric ids, as the real API writes them.
    pub fn to_wire(&self) -> serde_json::Value {
        json!({
            "Id": self.id,
            "Name": self.installed_name,
            "Description": null,
            "Authenticated": true,
            "Connector": {
                "Id": connector_id(&self.connector_name),
                "Name": self.connector_name,
                "Version": self.connector_version,
            },
        })
    }
}

/// A connector's catalogue id: stable per connector name, as it would be in Cyclr's catalogue.
fn connector_id(name: &str) -> u64 {
    1000 + fnv1a(name.to_ascii_lowercase().as_bytes()) % 9000
}

/// A stable hash (unlike std's, fixed across Rust releases), so usage figures survive a
/// restart with a state file unchanged.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `blocks` × 32 random lowercase hex characters.
pub(crate) fn random_hex(blocks: usize) -> String {
    let mut rng = rand::rng();
    (0..blocks).map(|_| format!("{:032x}", rng.random::<u128>())).collect()
}

/// The legacy API keeps no fractions of a second (it writes `2017-03-09T16:23:08`); storing
/// dates so makes every read, the state file included, what the real service would return.
fn whole_seconds(date: CyclrDate) -> CyclrDate {
    CyclrDate::whole_seconds(date.0)
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Store {
    /// In creation order, which is the order List Accounts returns.
    accounts: Vec<AccountRecord>,
    #[serde(default)]
    last_installed_id: u64,
    /// Bearer tokens and when they expire. Kept across restarts, as the real service does.
    #[serde(default)]
    tokens: HashMap<String, DateTime<Utc>>,
    #[serde(skip)]
    index: HashMap<AccountId, usize>,
    /// Bumped by every change, so a slower writer never overwrites a newer state file.
    #[serde(skip)]
    revision: u64,
    /// Accounts List Accounts does not show yet (`list_lag_ms`): `None` until their create
    /// answered, then when they appear.
    #[serde(skip)]
    unlisted: HashMap<AccountId, Option<Instant>>,
}

impl Store {
    /// Reads a state file; a missing file is an empty state (the first run).
    pub fn load(path: &Path) -> anyhow::Result<Store> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Store::default()),
            Err(e) => {
                return Err(e).with_context(|| format!("reading state file {}", path.display()));
            }
        };
        let mut store: Store =
            serde_json::from_slice(&bytes).with_context(|| format!("parsing state file {}", path.display()))?;
        store.reindex();
        Ok(store)
    }

    fn reindex(&mut self) {
        self.index = self
            .accounts
            .iter()
            .enumerate()
            .map(|(i, r)| (r.account.id.clone(), i))
            .collect();
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn bump_revision(&mut self) {
        self.revision += 1;
    }

    pub fn issue_token(&mut self, ttl: Duration, now: DateTime<Utc>) -> String {
        // Expired tokens are dropped here rather than by a timer: issuing is rare enough.
        self.tokens.retain(|_, expires| *expires > now);
        let token = random_hex(2);
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        self.tokens.insert(token.clone(), expires);
        token
    }

    pub fn token_valid(&self, token: &str, now: DateTime<Utc>) -> bool {
        self.tokens.get(token).is_some_and(|expires| *expires > now)
    }

    pub fn expire_tokens(&mut self) {
        self.tokens.clear();
    }

    pub fn accounts(&self) -> impl ExactSizeIterator<Item = &AccountRecord> {
        self.accounts.iter()
    }

    /// The accounts List Accounts shows at `now`.
    pub fn listed(&self, now: Instant) -> impl Iterator<Item = &AccountRecord> {
        self.accounts.iter().filter(move |record| {
            self.unlisted.is_empty()
                || self
                    .unlisted
                    .get(&record.account.id)
                    .is_none_or(|from| from.is_some_and(|from| from <= now))
        })
    }

    /// Hides an account from List Accounts until [`Store::list_from`] says when it appears.
    pub fn unlist(&mut self, id: &str, now: Instant) {
        // Those already listed are dropped here rather than by a timer: creates are rare enough.
        self.unlisted.retain(|_, from| from.is_none_or(|from| from > now));
        self.unlisted.insert(id.to_owned(), None);
    }

    pub fn list_from(&mut self, id: &str, at: Instant) {
        if let Some(from) = self.unlisted.get_mut(id) {
            *from = Some(at);
        }
    }

    pub fn get(&self, id: &str) -> Result<&AccountRecord, ApiError> {
        self.index
            .get(id)
            .map(|&i| &self.accounts[i])
            .ok_or_else(|| ApiError::account_not_found(id))
    }

    fn get_mut(&mut self, id: &str) -> Result<&mut AccountRecord, ApiError> {
        match self.index.get(id) {
            Some(&i) => Ok(&mut self.accounts[i]),
            None => Err(ApiError::account_not_found(id)),
        }
    }

    pub fn create_account(&mut self, fields: AccountFields, now: DateTime<Utc>) -> Result<AccountId, ApiError> {
        let name = match fields.name {
            Some(name) if !name.trim().is_empty() => name,
            _ => return Err(ApiError::name_required()),
        };
        let plan = check_price_plan(fields.price_plan_id)?.unwrap_or(DEFAULT_PRICE_PLAN);
        let last_bill = CyclrDate::whole_seconds(now);
        let next_bill = fields
            .next_bill_date
            .map(whole_seconds)
            .unwrap_or_else(|| one_month_after(last_bill));
        let id = loop {
            let candidate = random_hex(1);
            if !self.index.contains_key(&candidate) {
                break candidate;
            }
        };
        let account = Account {
            id: id.clone(),
            name,
            description: fields.description,
            timezone: fields.timezone,
            price_plan_id: Some(plan),
            last_bill_date: Some(last_bill),
            next_bill_date: Some(next_bill),
            audit_info: fields.audit_info,
        };
        self.index.insert(id.clone(), self.accounts.len());
        self.accounts.push(AccountRecord {
            account,
            created_at: now,
            connectors: Vec::new(),
        });
        Ok(id)
    }

    /// Changes only the fields present; validates them all before changing any.
    pub fn update_account(&mut self, id: &str, fields: AccountFields) -> Result<(), ApiError> {
        if fields.name.as_ref().is_some_and(|n| n.trim().is_empty()) {
            return Err(ApiError::name_required());
        }
        check_price_plan(fields.price_plan_id)?;
        let account = &mut self.get_mut(id)?.account;
        let AccountFields {
            name,
            description,
            timezone,
            price_plan_id,
            next_bill_date,
            audit_info,
        } = fields;
        if let Some(name) = name {
            account.name = name;
        }
        if description.is_some() {
            account.description = description;
        }
        if timezone.is_some() {
            account.timezone = timezone;
        }
        if price_plan_id.is_some() {
            account.price_plan_id = price_plan_id;
        }
        if let Some(date) = next_bill_date {
            account.next_bill_date = Some(whole_seconds(date));
        }
        if audit_info.is_some() {
            account.audit_info = audit_info;
        }
        Ok(())
    }

    pub fn delete_account(&mut self, id: &str) -> Result<(), ApiError> {
        let i = *self.index.get(id).ok_or_else(|| ApiError::account_not_found(id))?;
        self.accounts.remove(i);
        self.reindex();
        Ok(())
    }

    pub fn install_connector(
        &mut self,
        account_id: &str,
        connector_name: String,
        connector_version: String,
        installed_name: String,
    ) -> Result<u64, ApiError> {
        let id = self.last_installed_id + 1;
        let record = self.get_mut(account_id)?;
        record.connectors.push(InstalledRecord {
            id,
            installed_name,
            connector_name,
            connector_version,
        });
        self.last_installed_id = id;
        Ok(id)
    }
}

fn check_price_plan(plan: Option<PricePlanId>) -> Result<Option<PricePlanId>, ApiError> {
    match plan {
        Some(PricePlanId(id)) if !PRICE_PLANS.iter().any(|&(known, _)| known == id) => Err(ApiError::bad_request(
            format!("The price plan with Id {id} does not exist."),
        )),
        _ => Ok(plan),
    }
}

fn one_month_after(date: CyclrDate) -> CyclrDate {
    CyclrDate(date.0.checked_add_months(Months::new(1)).unwrap_or(date.0))
}

/// Usage for the monthly period starting at `from` (default: the last bill date).
///
/// Deterministic: tasks accrue at 1–5 per second (fixed per account by a hash of its id) from
/// the later of creation and `from` until the earlier of now and the period's end, so two
/// reads a few seconds apart differ and a restart changes nothing.
pub(crate) fn usage(record: &AccountRecord, from: Option<CyclrDate>, now: DateTime<Utc>) -> AccountUsage {
    let account = &record.account;
    let from = from.or(account.last_bill_date).unwrap_or(CyclrDate(record.created_at));
    let to = one_month_after(from).0.checked_sub_days(Days::new(1)).unwrap_or(from.0);
    let seed = fnv1a(account.id.as_bytes());
    let active_secs = (now.min(to) - record.created_at.max(from.0))
        .num_seconds()
        .max(0)
        .unsigned_abs();
    let task_count = active_secs * (1 + seed % 5);
    // Cycles: a few from the start, one more per active hour, up to what a busy account runs.
    let cycle_count = if task_count == 0 {
        0
    } else {
        (1 + (seed >> 8) % 5 + active_secs / 3600).min(25)
    };
    AccountUsage {
        task_count,
        cycle_count,
        from_date: Some(from),
        to_date: Some(CyclrDate(to)),
        current_price_plan_id: account.price_plan_id,
        audit_info: account.audit_info.clone(),
    }
}

/// Writes the state file after each change: write a sibling, then rename over the old file,
/// so a crash leaves either the old or the new state, never half of one.
pub(crate) struct Persister {
    path: PathBuf,
    written_revision: Mutex<u64>,
}

impl Persister {
    pub fn new(path: PathBuf) -> Self {
        Persister {
            path,
            written_revision: Mutex::new(0),
        }
    }

    pub fn save(&self, revision: u64, bytes: &[u8]) {
        let mut written = lock(&self.written_revision);
        if *written >= revision {
            return;
        }
        match self.write_atomically(bytes) {
            Ok(()) => *written = revision,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "could not write the state file")
            }
        }
    }

    fn write_atomically(&self, bytes: &[u8]) -> io::Result<()> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        // The file holds bearer tokens: readable by its owner only.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        drop(file);
        fs::rename(&tmp, &self.path)
    }
}
