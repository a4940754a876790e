//! The simulator's state (accounts with their v1.0 settings, account connectors and cycles;
//! templates; tokens), the rules that change it, and its file form for `--state-file`.

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

use super::TemplateSeed;
use super::api::ApiError;
use super::lock;
use cyclr::types::{
    Account, AccountFields, AccountFieldsV1, AccountId, AccountUsage, CYCLE_INTERVALS, ConnectorProperty, CyclrDate,
    Prerequisite, PricePlan, PricePlanId, normalize_webhook_url,
};

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
    #[serde(default)]
    pub settings: AccountSettings,
    #[serde(default)]
    pub cycles: Vec<CycleRecord>,
}

/// The account fields only v1.0 shows. Defaults (no source gives Cyclr's): no retention,
/// webhook off.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct AccountSettings {
    pub task_audit_info: Option<String>,
    pub step_data_success_retention_hours: u32,
    pub step_data_errored_retention_hours: u32,
    pub transaction_error_webhook_enabled: bool,
    pub transaction_error_webhook_url: Option<String>,
    pub transaction_error_webhook_include_warnings: bool,
    pub parent_account_id: Option<AccountId>,
}

impl AccountRecord {
    /// The v1.0 account form (`GET /v1.0/accounts/{id}`): no price plan, v1.0 dates.
    pub fn to_v1_wire(&self) -> serde_json::Value {
        let (account, settings) = (&self.account, &self.settings);
        json!({
            "Id": account.id,
            "Name": account.name,
            "Description": account.description,
            "AuditInfo": account.audit_info,
            "TaskAuditInfo": settings.task_audit_info,
            "Timezone": account.timezone,
            "CreatedDate": v1_date(self.created_at),
            "NextBillDateUtc": account.next_bill_date.map(|date| v1_date(date.0)),
            "StepDataSuccessRetentionHours": settings.step_data_success_retention_hours,
            "StepDataErroredRetentionHours": settings.step_data_errored_retention_hours,
            "TransactionErrorWebhookEnabled": settings.transaction_error_webhook_enabled,
            "TransactionErrorWebhookUrl": settings.transaction_error_webhook_url,
            "TransactionErrorWebhookIncludeWarnings": settings.transaction_error_webhook_include_warnings,
            "ParentAccountId": settings.parent_account_id,
        })
    }

    fn connector(&self, id: u64) -> Option<&InstalledRecord> {
        self.connectors.iter().find(|c| c.id == id)
    }

    pub fn cycle(&self, id: &str) -> Result<&CycleRecord, ApiError> {
        self.cycles
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| ApiError::not_found(format!("Cycle {id} not found.")))
    }

    fn cycle_mut(&mut self, id: &str) -> Result<&mut CycleRecord, ApiError> {
        self.cycles
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| ApiError::not_found(format!("Cycle {id} not found.")))
    }

    /// What stops a cycle from being activated: each account connector it uses that is not
    /// authenticated (or was deleted), reason code 20, then its template's other
    /// prerequisites.
    pub fn prerequisites(&self, cycle: &CycleRecord) -> Vec<Prerequisite> {
        cycle
            .connectors
            .iter()
            .filter(|c| !self.connector(c.account_connector_id).is_some_and(|a| a.authenticated))
            .map(|c| Prerequisite {
                reason_code: Prerequisite::CONNECTOR_NOT_AUTHENTICATED,
                reason: format!("Connector '{}' is not authenticated.", c.connector_name),
                object_type: Some("AccountConnector".into()),
                object_id: Some(c.account_connector_id.to_string()),
            })
            .chain(cycle.prerequisites.iter().cloned())
            .collect()
    }

    /// The v1.0 cycle form at `now`.
    pub fn cycle_wire(&self, cycle: &CycleRecord, now: DateTime<Utc>) -> serde_json::Value {
        let connectors: Vec<_> = cycle
            .connectors
            .iter()
            .map(|c| {
                json!({
                    "Id": connector_id(&c.connector_name),
                    "AccountConnectorId": c.account_connector_id,
                    "Name": c.connector_name,
                    "Version": c.version,
                    "Authenticated": self.connector(c.account_connector_id).is_some_and(|a| a.authenticated),
                })
            })
            .collect();
        json!({
            "Id": cycle.id,
            "Name": cycle.name,
            "Description": cycle.description,
            "TemplateId": cycle.template_id,
            "Status": cycle.shown(),
            "Connectors": connectors,
            "TasksUsed": cycle.tasks(now),
            "ErrorCount": 0,
            "WarningCount": 0,
            "CreatedOnUtc": v1_date(cycle.created_at),
            "LastSuccessfulRunDate": cycle.last_run(now).map(v1_date),
        })
    }
}

/// One installed (account) connector. Its credentials are checked for presence and then
/// forgotten, so they reach neither the state file nor the logs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct InstalledRecord {
    pub id: u64,
    pub installed_name: String,
    pub connector_name: String,
    pub connector_version: String,
    /// Installs of the Partner API, which takes credentials it cannot check, are authenticated.
    #[serde(default = "yes")]
    pub authenticated: bool,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub properties: Vec<ConnectorProperty>,
    #[serde(default = "api_key")]
    pub auth_type: String,
}

fn yes() -> bool {
    true
}

fn api_key() -> String {
    "ApiKey".into()
}

impl InstalledRecord {
    /// The v1.0 account connector form: numeric ids, as the real API writes them.
    pub fn to_wire(&self) -> serde_json::Value {
        json!({
            "Id": self.id,
            "Name": self.installed_name,
            "Description": self.description,
            "Authenticated": self.authenticated,
            "Connector": {
                "Id": connector_id(&self.connector_name),
                "Name": self.connector_name,
                "Version": self.connector_version,
                "AuthType": self.auth_type,
            },
            "Properties": self.properties,
        })
    }
}

/// An installed template. Tasks: one per second of activity from the later of activation
/// and `StartTime`, whatever the interval, so a test sees them grow within a second or two.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CycleRecord {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub template_id: String,
    /// `Paused`, `Active` or `Stopped`.
    pub status: String,
    pub connectors: Vec<CycleConnectorRecord>,
    pub variables: Vec<VariableRecord>,
    pub created_at: DateTime<Utc>,
    /// Tasks of earlier active spells.
    pub tasks_before: u64,
    /// When tasks started to accrue in the current active spell.
    pub active_from: Option<DateTime<Utc>>,
    /// The end of the last active spell that ran a task.
    pub last_run: Option<DateTime<Utc>>,
    /// The template's other prerequisites (missing mappings), which no API call fixes.
    #[serde(default)]
    pub prerequisites: Vec<Prerequisite>,
    /// The `Status` shown instead of `status` while the fault `hold_cycle_changes` holds a
    /// change back. Not kept in the state file: faults do not survive a restart, so neither
    /// does what they hold back.
    #[serde(skip)]
    pub shown: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CycleConnectorRecord {
    pub connector_name: String,
    pub version: String,
    pub account_connector_id: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct VariableRecord {
    pub system_name: String,
    pub display_name: Option<String>,
    pub value: Option<String>,
}

impl VariableRecord {
    pub fn to_wire(&self) -> serde_json::Value {
        json!({
            "SystemName": self.system_name,
            "DisplayName": self.display_name,
            "Value": self.value,
            "MappingType": "StaticValue",
        })
    }
}

impl CycleRecord {
    /// The `Status` Cyclr shows: a change held back by `hold_cycle_changes` is not shown yet.
    pub fn shown(&self) -> &str {
        self.shown.as_deref().unwrap_or(&self.status)
    }

    /// Keeps showing the status from before this change (and any held before it).
    fn hold(&mut self, before: String) {
        self.shown.get_or_insert(before);
    }

    fn active_seconds(&self, now: DateTime<Utc>) -> u64 {
        self.active_from
            .map_or(0, |from| (now - from).num_seconds().max(0).unsigned_abs())
    }

    pub fn tasks(&self, now: DateTime<Utc>) -> u64 {
        self.tasks_before + self.active_seconds(now)
    }

    fn last_run(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match (self.active_from, self.active_seconds(now)) {
            (Some(from), secs) if secs > 0 => Some(from + chrono::Duration::seconds(secs as i64)),
            _ => self.last_run,
        }
    }

    /// Ends an active spell: its tasks are kept, the status becomes `status`.
    fn stop(&mut self, status: &str, now: DateTime<Utc>) {
        self.last_run = self.last_run(now);
        self.tasks_before = self.tasks(now);
        self.active_from = None;
        self.status = status.to_owned();
    }
}

/// The v1.0 date form, `2016-11-18T10:50:45.6509216Z` (seven fraction digits).
pub(crate) fn v1_date(time: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        time.format(CyclrDate::LEGACY_FORMAT),
        time.timestamp_subsec_nanos() / 100
    )
}

/// A connector of the catalogue: what an install by id or name, and a template, resolve to.
struct CatalogueEntry {
    name: String,
    version: String,
    auth_type: String,
}

/// A connector's catalogue id: stable per connector name, as it would be in Cyclr's catalogue.
pub(crate) fn connector_id(name: &str) -> u64 {
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
    /// In the order they were added, which is the order `GET /v1.0/templates` returns.
    #[serde(default)]
    templates: Vec<TemplateSeed>,
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
        self.insert_account(None, fields, AccountSettings::default(), now)
    }

    /// v1.0 create: a caller-chosen id (`ID already in use` when taken), the v1.0 settings.
    pub fn create_account_v1(&mut self, fields: AccountFieldsV1, now: DateTime<Utc>) -> Result<AccountId, ApiError> {
        let id = fields.id.clone().filter(|id| !id.trim().is_empty());
        if id.as_ref().is_some_and(|id| self.index.contains_key(id)) {
            return Err(ApiError::bad_request("ID already in use"));
        }
        if let Some(parent) = &fields.parent_account_id
            && !self.index.contains_key(parent)
        {
            return Err(ApiError::bad_request(format!("Parent account {parent} not found.")));
        }
        let mut settings = AccountSettings {
            parent_account_id: fields.parent_account_id.clone(),
            ..AccountSettings::default()
        };
        apply_settings(&mut settings, &fields)?;
        self.insert_account(id, legacy_fields(fields), settings, now)
    }

    fn insert_account(
        &mut self,
        id: Option<AccountId>,
        fields: AccountFields,
        settings: AccountSettings,
        now: DateTime<Utc>,
    ) -> Result<AccountId, ApiError> {
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
        let id = id.unwrap_or_else(|| {
            loop {
                let candidate = random_hex(1);
                if !self.index.contains_key(&candidate) {
                    break candidate;
                }
            }
        });
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
            settings,
            cycles: Vec::new(),
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

    /// v1.0 update: the fields present, settings included; validated before anything changes.
    pub fn update_account_v1(&mut self, id: &str, fields: AccountFieldsV1) -> Result<(), ApiError> {
        let mut settings = self.get(id)?.settings.clone();
        apply_settings(&mut settings, &fields)?;
        self.update_account(id, legacy_fields(fields))?;
        self.get_mut(id)?.settings = settings;
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
        let auth_type = self.catalogue_by_name(&connector_name).auth_type;
        let id = self.last_installed_id + 1;
        let record = self.get_mut(account_id)?;
        record.connectors.push(InstalledRecord {
            id,
            installed_name,
            connector_name,
            connector_version,
            authenticated: true,
            description: None,
            properties: Vec::new(),
            auth_type,
        });
        self.last_installed_id = id;
        Ok(id)
    }

    /// A connector by catalogue id (one a template or an install named) or by name (any name:
    /// the simulator's catalogue has every connector; its version and auth type come from a
    /// template naming it, else `v1` and `ApiKey`).
    fn catalogue(&self, key: &str) -> Result<CatalogueEntry, ApiError> {
        let Ok(number) = key.parse::<u64>() else {
            return Ok(self.catalogue_by_name(key));
        };
        let mut needed = self.templates.iter().flat_map(|t| &t.connectors);
        if let Some(connector) = needed.find(|c| connector_id(&c.name) == number) {
            return Ok(self.catalogue_by_name(&connector.name));
        }
        let mut installed = self.accounts.iter().flat_map(|a| &a.connectors);
        installed
            .find(|c| connector_id(&c.connector_name) == number)
            .map(|c| CatalogueEntry {
                name: c.connector_name.clone(),
                version: c.connector_version.clone(),
                auth_type: c.auth_type.clone(),
            })
            .ok_or_else(|| ApiError::not_found(format!("Connector {key} not found.")))
    }

    /// The catalogue's connector of this name: a template's, else `v1` with an API key.
    fn catalogue_by_name(&self, name: &str) -> CatalogueEntry {
        self.templates
            .iter()
            .flat_map(|t| &t.connectors)
            .find(|c| c.name.eq_ignore_ascii_case(name))
            .map(|c| CatalogueEntry {
                name: c.name.clone(),
                version: c.version.clone().unwrap_or_else(|| "v1".into()),
                auth_type: c.auth_type.clone().unwrap_or_else(api_key),
            })
            .unwrap_or_else(|| CatalogueEntry {
                name: name.to_owned(),
                version: "v1".into(),
                auth_type: api_key(),
            })
    }

    /// v1.0 install: authenticated when credentials came with it or the connector needs none.
    pub fn install_connector_v1(
        &mut self,
        account_id: &str,
        connector: &str,
        install: ConnectorInstall,
    ) -> Result<u64, ApiError> {
        let entry = self.catalogue(connector)?;
        let name = install.name.unwrap_or_else(|| entry.name.clone());
        if self
            .get(account_id)?
            .connectors
            .iter()
            .any(|c| c.installed_name == name)
        {
            return Err(ApiError::bad_request(format!(
                "Account connector name '{name}' is in use."
            )));
        }
        let authenticated = install.authenticated || entry.auth_type == "None";
        Ok(self.add_connector(
            account_id,
            entry,
            name,
            install.description,
            install.properties,
            authenticated,
        ))
    }

    fn add_connector(
        &mut self,
        account_id: &str,
        entry: CatalogueEntry,
        installed_name: String,
        description: Option<String>,
        properties: Vec<ConnectorProperty>,
        authenticated: bool,
    ) -> u64 {
        let id = self.last_installed_id + 1;
        self.last_installed_id = id;
        if let Ok(record) = self.get_mut(account_id) {
            record.connectors.push(InstalledRecord {
                id,
                installed_name,
                connector_name: entry.name,
                connector_version: entry.version,
                authenticated,
                description,
                properties,
                auth_type: entry.auth_type,
            });
        }
        id
    }

    pub fn connector(&self, account_id: &str, id: &str) -> Result<&InstalledRecord, ApiError> {
        let record = self.get(account_id)?;
        id.parse()
            .ok()
            .and_then(|id| record.connector(id))
            .ok_or_else(|| connector_not_found(id))
    }

    /// Re-authenticates (an `AuthValue`) and/or changes the description of an account connector.
    pub fn update_connector(
        &mut self,
        account_id: &str,
        id: &str,
        authenticate: bool,
        description: Option<String>,
    ) -> Result<(), ApiError> {
        let record = self.get_mut(account_id)?;
        let connector = id
            .parse::<u64>()
            .ok()
            .and_then(|id| record.connectors.iter_mut().find(|c| c.id == id))
            .ok_or_else(|| connector_not_found(id))?;
        if authenticate {
            connector.authenticated = true;
        }
        if description.is_some() {
            connector.description = description;
        }
        Ok(())
    }

    /// Sets `Authenticated` as a person in the console (or an expired credential) would; an
    /// account connector losing it stops the Active cycles that use it (`Stopped`).
    pub fn set_connector_authenticated(
        &mut self,
        account_id: &str,
        id: u64,
        authenticated: bool,
        now: DateTime<Utc>,
    ) -> Result<(), ApiError> {
        let record = self.get_mut(account_id)?;
        let connector = record
            .connectors
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| connector_not_found(&id.to_string()))?;
        connector.authenticated = authenticated;
        if !authenticated {
            for cycle in &mut record.cycles {
                if cycle.status == "Active" && cycle.connectors.iter().any(|c| c.account_connector_id == id) {
                    cycle.stop("Stopped", now);
                }
            }
        }
        Ok(())
    }

    pub fn delete_connector(&mut self, account_id: &str, id: &str) -> Result<(), ApiError> {
        let record = self.get_mut(account_id)?;
        let before = record.connectors.len();
        record.connectors.retain(|c| c.id.to_string() != id);
        if record.connectors.len() == before {
            return Err(connector_not_found(id));
        }
        Ok(())
    }

    pub fn templates(&self) -> &[TemplateSeed] {
        &self.templates
    }

    pub fn template(&self, id: &str) -> Result<&TemplateSeed, ApiError> {
        self.templates
            .iter()
            .find(|t| t.id.as_deref() == Some(id))
            .ok_or_else(|| ApiError::not_found(format!("Template {id} not found.")))
    }

    /// Adds a template, or replaces the one with its id; one without an id gets a new one.
    pub fn add_template(&mut self, mut template: TemplateSeed) -> String {
        let id = template.id.clone().unwrap_or_else(|| random_hex(1));
        template.id = Some(id.clone());
        match self.templates.iter_mut().find(|t| t.id.as_deref() == Some(&id)) {
            Some(existing) => *existing = template,
            None => self.templates.push(template),
        }
        id
    }

    /// Installs a template as a `Paused` cycle. Each connector it needs reuses the account's
    /// first account connector of the same connector and version, else a new one is made,
    /// unauthenticated unless the connector needs no authentication (`AuthType: "None"`).
    pub fn install_template(
        &mut self,
        account_id: &str,
        template_id: &str,
        name: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<String, ApiError> {
        let template = self.template(template_id)?.clone();
        self.get(account_id)?;
        let mut connectors = Vec::new();
        for needed in &template.connectors {
            let entry = CatalogueEntry {
                name: needed.name.clone(),
                version: needed.version.clone().unwrap_or_else(|| "v1".into()),
                auth_type: needed.auth_type.clone().unwrap_or_else(api_key),
            };
            let account = self.get(account_id)?;
            let reused = account
                .connectors
                .iter()
                .find(|c| c.connector_name.eq_ignore_ascii_case(&entry.name) && c.connector_version == entry.version);
            let (connector_name, version) = (entry.name.clone(), entry.version.clone());
            let account_connector_id = match reused {
                Some(existing) => existing.id,
                None => {
                    let taken = |n: &str| account.connectors.iter().any(|c| c.installed_name == n);
                    let installed_name = (1..)
                        .map(|n| match n {
                            1 => entry.name.clone(),
                            n => format!("{} ({n})", entry.name),
                        })
                        .find(|n| !taken(n))
                        .unwrap_or_default();
                    let authenticated = entry.auth_type == "None";
                    self.add_connector(account_id, entry, installed_name, None, Vec::new(), authenticated)
                }
            };
            connectors.push(CycleConnectorRecord {
                connector_name,
                version,
                account_connector_id,
            });
        }
        let id = random_hex(1);
        let cycle = CycleRecord {
            id: id.clone(),
            name: name.unwrap_or_else(|| template.name.clone()),
            description: template.description.clone(),
            template_id: template_id.to_owned(),
            status: "Paused".into(),
            connectors,
            variables: template
                .variables
                .iter()
                .map(|v| VariableRecord {
                    system_name: v.system_name.clone(),
                    display_name: v.display_name.clone(),
                    value: v.value.clone(),
                })
                .collect(),
            created_at: now,
            tasks_before: 0,
            active_from: None,
            last_run: None,
            prerequisites: template.prerequisites.clone(),
            shown: None,
        };
        self.get_mut(account_id)?.cycles.push(cycle);
        Ok(id)
    }

    /// Activates a cycle (an Active one stays as it is): 400 while a prerequisite fails or for
    /// an interval Cyclr does not offer. The interval is checked, not kept: tasks accrue per
    /// second whatever it is. `RunOnce` runs one task and stays Paused. With `hold`, the cycle
    /// keeps showing its old status ([`CycleRecord::shown`]).
    pub fn activate_cycle(
        &mut self,
        account_id: &str,
        id: &str,
        schedule: Schedule,
        hold: bool,
        now: DateTime<Utc>,
    ) -> Result<(), ApiError> {
        if let Some(interval) = schedule.interval
            && !CYCLE_INTERVALS.contains(&interval)
        {
            let allowed: Vec<String> = CYCLE_INTERVALS.iter().map(u32::to_string).collect();
            return Err(ApiError::bad_request(format!(
                "Interval {interval} is not valid: use one of {} minutes.",
                allowed.join(", ")
            )));
        }
        let record = self.get_mut(account_id)?;
        let failing = record.prerequisites(record.cycle(id)?);
        if let Some(first) = failing.first() {
            return Err(ApiError::bad_request(format!(
                "The cycle cannot be activated: {} ({} {}).",
                first.reason,
                first.object_type.as_deref().unwrap_or("Cycle"),
                first.object_id.as_deref().unwrap_or(id)
            )));
        }
        let cycle = record.cycle_mut(id)?;
        if hold {
            cycle.hold(cycle.status.clone());
        }
        if schedule.run_once {
            cycle.stop("Paused", now);
            cycle.tasks_before += 1;
            cycle.last_run = Some(now);
            return Ok(());
        }
        if cycle.status != "Active" {
            cycle.tasks_before = cycle.tasks(now);
            cycle.active_from = Some(schedule.start_time.map_or(now, |start| start.max(now)));
            cycle.status = "Active".into();
        }
        Ok(())
    }

    /// Deactivates a cycle; with `hold`, it keeps showing its old status.
    pub fn deactivate_cycle(
        &mut self,
        account_id: &str,
        id: &str,
        hold: bool,
        now: DateTime<Utc>,
    ) -> Result<(), ApiError> {
        let cycle = self.get_mut(account_id)?.cycle_mut(id)?;
        if hold {
            cycle.hold(cycle.status.clone());
        }
        cycle.stop("Paused", now);
        Ok(())
    }

    /// Shows every change `hold_cycle_changes` held back.
    pub fn show_cycle_changes(&mut self) {
        for record in self.accounts.iter_mut() {
            for cycle in &mut record.cycles {
                cycle.shown = None;
            }
        }
    }

    /// Sets a variable of the template's; 409 while the cycle is Active, as Cyclr refuses
    /// edits to a running cycle.
    pub fn set_variable(
        &mut self,
        account_id: &str,
        id: &str,
        system_name: &str,
        value: Option<String>,
    ) -> Result<VariableRecord, ApiError> {
        let cycle = self.get_mut(account_id)?.cycle_mut(id)?;
        if cycle.shown() == "Active" {
            return Err(ApiError::conflict(
                "The cycle is active: deactivate it before changing its variables.",
            ));
        }
        let variable = cycle
            .variables
            .iter_mut()
            .find(|v| v.system_name == system_name)
            .ok_or_else(|| ApiError::not_found(format!("Variable {system_name} not found.")))?;
        variable.value = value;
        Ok(variable.clone())
    }

    pub fn delete_cycle(&mut self, account_id: &str, id: &str) -> Result<(), ApiError> {
        let record = self.get_mut(account_id)?;
        record.cycle(id)?;
        record.cycles.retain(|c| c.id != id);
        Ok(())
    }
}

/// The body of a v1.0 connector install, credentials reduced to whether there were any.
pub(crate) struct ConnectorInstall {
    pub name: Option<String>,
    pub description: Option<String>,
    pub authenticated: bool,
    pub properties: Vec<ConnectorProperty>,
}

/// The body of an activation.
pub(crate) struct Schedule {
    pub start_time: Option<DateTime<Utc>>,
    pub interval: Option<u32>,
    pub run_once: bool,
}

fn connector_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Account connector {id} not found."))
}

/// The fields v1.0 shares with the Partner API.
fn legacy_fields(fields: AccountFieldsV1) -> AccountFields {
    AccountFields {
        name: fields.name,
        description: fields.description,
        timezone: fields.timezone,
        audit_info: fields.audit_info,
        ..AccountFields::default()
    }
}

/// Applies the v1.0-only fields present, as Cyclr stores them (retention clamped, `https://`
/// added); the webhook cannot be on without a URL.
fn apply_settings(settings: &mut AccountSettings, fields: &AccountFieldsV1) -> Result<(), ApiError> {
    if let Some(url) = &fields.transaction_error_webhook_url {
        // An empty URL clears it (normalising would make it `https://`).
        settings.transaction_error_webhook_url = (!url.trim().is_empty()).then(|| normalize_webhook_url(url));
    }
    let fields = fields.normalized();
    if fields.task_audit_info.is_some() {
        settings.task_audit_info = fields.task_audit_info;
    }
    if let Some(hours) = fields.step_data_success_retention_hours {
        settings.step_data_success_retention_hours = hours;
    }
    if let Some(hours) = fields.step_data_errored_retention_hours {
        settings.step_data_errored_retention_hours = hours;
    }
    if let Some(enabled) = fields.transaction_error_webhook_enabled {
        settings.transaction_error_webhook_enabled = enabled;
    }
    if let Some(warnings) = fields.transaction_error_webhook_include_warnings {
        settings.transaction_error_webhook_include_warnings = warnings;
    }
    if settings.transaction_error_webhook_enabled && settings.transaction_error_webhook_url.is_none() {
        return Err(ApiError::bad_request(
            "TransactionErrorWebhookUrl is required when the transaction error webhook is enabled.",
        ));
    }
    Ok(())
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
