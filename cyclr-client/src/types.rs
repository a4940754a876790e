//! The Cyclr Partner API's wire types, shared by the client and the simulator.
//!
//! Field names follow the API's PascalCase. Deserialisation is lenient where the real
//! service is: both date forms, `PricePlanId` as a number or a string, unknown fields ignored.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, SubsecRound, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Cyclr account id. Opaque: 32 hex characters in the seed, caller-chosen on v1.0.
pub type AccountId = String;

/// A price plan id: an integer in account bodies, a string in the price-plan list. Both read
/// into the same number, so `"2"` and `2` compare equal once parsed (by serde or [`FromStr`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PricePlanId(pub i64);

impl FromStr for PricePlanId {
    type Err = std::num::ParseIntError;

    /// `"2"`, `" 2 "`: the string form Get Price Plans writes, surrounding blanks ignored.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.trim().parse().map(PricePlanId)
    }
}

impl fmt::Display for PricePlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for PricePlanId {
    /// Account bodies carry an integer; Cyclr may silently ignore a wrongly typed field.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.0)
    }
}

impl<'de> Deserialize<'de> for PricePlanId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum NumberOrString {
            Number(i64),
            String(String),
        }
        match NumberOrString::deserialize(d)? {
            NumberOrString::Number(n) => Ok(PricePlanId(n)),
            NumberOrString::String(s) => s
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("PricePlanId {s:?} is not a number"))),
        }
    }
}

/// Writes a price plan id as a string, the way Get Price Plans does.
pub fn serialize_price_plan_id_as_string<S: Serializer>(id: &PricePlanId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.0.to_string())
}

/// A UTC timestamp. Reads the legacy form (`2017-02-09T16:23:08`, no offset), the v1.0 form
/// (`2017-12-06T15:54:06.6440352Z`), any RFC 3339 offset and a bare date; always writes the
/// legacy form.
///
/// Equality, ordering and hashing are at the legacy API's precision, whole seconds in UTC:
/// the legacy API writes no fractions (seed: `"NextBillDate": "2017-03-09T16:23:08"`), so a
/// date sent with `.5` s reads back without it. `2030-03-09T16:23:08.5Z`, `…T16:23:08`,
/// `…T16:23:08.0000000Z` and `…T16:23:08+00:00` are all the same `CyclrDate`.
#[derive(Clone, Copy, Debug)]
pub struct CyclrDate(pub DateTime<Utc>);

impl PartialEq for CyclrDate {
    fn eq(&self, other: &Self) -> bool {
        self.0.timestamp() == other.0.timestamp()
    }
}

impl Eq for CyclrDate {}

impl PartialOrd for CyclrDate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CyclrDate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.timestamp().cmp(&other.0.timestamp())
    }
}

impl Hash for CyclrDate {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.timestamp().hash(state);
    }
}

impl CyclrDate {
    /// The legacy API's date form (`chrono` format): `2017-02-09T16:23:08`.
    pub const LEGACY_FORMAT: &'static str = "%Y-%m-%dT%H:%M:%S";

    /// The date as the legacy API stores it: `time` without its fraction of a second.
    pub fn whole_seconds(time: DateTime<Utc>) -> Self {
        CyclrDate(time.trunc_subsecs(0))
    }

    /// Whether two dates denote the same instant at the legacy API's precision (the same as
    /// `==`; named for call sites comparing a desired date with the one Cyclr reports).
    pub fn same_instant(&self, other: &CyclrDate) -> bool {
        self == other
    }

    /// Parses any of the accepted forms (see the type's docs), keeping fractions; `None` for
    /// anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Ok(with_offset) = DateTime::parse_from_rfc3339(text) {
            return Some(CyclrDate(with_offset.with_timezone(&Utc)));
        }
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f") {
            return Some(CyclrDate(naive.and_utc()));
        }
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|naive| CyclrDate(naive.and_utc()))
    }

    /// `2017-02-09T16:23:08`: UTC, no offset, no fraction, as the legacy API writes dates.
    pub fn to_legacy_string(&self) -> String {
        self.0.format(Self::LEGACY_FORMAT).to_string()
    }

    /// `2017-02-09T16:23:08Z`: RFC 3339 in UTC at whole seconds, for Kubernetes status times.
    pub fn to_rfc3339(&self) -> String {
        self.0.trunc_subsecs(0).to_rfc3339_opts(SecondsFormat::Secs, true)
    }
}

impl fmt::Display for CyclrDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_legacy_string())
    }
}

impl Serialize for CyclrDate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_legacy_string())
    }
}

impl<'de> Deserialize<'de> for CyclrDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        CyclrDate::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("unrecognised Cyclr date {text:?}")))
    }
}

/// One account, as List Accounts returns it (seed: `Id`, `Name`, `Description`,
/// `PricePlanId`, `LastBillDate`, `NextBillDate`, `AuditInfo`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Account {
    /// The account id (32 hex characters in the seed; opaque).
    pub id: AccountId,
    /// The account's name; required, not unique.
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// An IANA time zone, e.g. `Europe/London`. Create and Update take it; the seed's List
    /// Accounts does not show it (v1.0 `GET /v1.0/accounts/{id}` does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The account's price plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_plan_id: Option<PricePlanId>,
    /// When the account was last billed (at creation: then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_bill_date: Option<CyclrDate>,
    /// When the account is billed next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_bill_date: Option<CyclrDate>,
    /// Free text the partner keeps with the account (e.g. who made it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_info: Option<String>,
}

/// The writable fields of an account: the body of Create Account (where `Name` is required)
/// and of Update Account (where every field is optional and only those present change).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccountFields {
    /// `Name`: required on create; on update, a blank one is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Description`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `Timezone`, an IANA name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// `PricePlanId`, sent as a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_plan_id: Option<PricePlanId>,
    /// `NextBillDate`, sent in the legacy form; Cyclr keeps whole seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_bill_date: Option<CyclrDate>,
    /// `AuditInfo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_info: Option<String>,
}

impl AccountFields {
    /// Whether no field is set: an update with nothing to send.
    pub fn is_empty(&self) -> bool {
        *self == AccountFields::default()
    }
}

/// The body of Create Account and Update Account responses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IdResponse {
    /// The id of the account created or updated.
    pub id: AccountId,
}

/// Partner Details, without the Intercom keys the API also returns: those are secrets and
/// are never read into memory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PartnerDetails {
    /// `AnonymousAccountsEnabled`.
    #[serde(default)]
    pub anonymous_accounts_enabled: bool,
    /// `ApplicationDisplayName`: the partner's name as its users see it.
    #[serde(default)]
    pub application_display_name: Option<String>,
    /// `ComingSoonConnectorsEnabled`.
    #[serde(default)]
    pub coming_soon_connectors_enabled: bool,
    /// `CustomConnectorsEnabled`.
    #[serde(default)]
    pub custom_connectors_enabled: bool,
    /// `CycleNoun`: what the partner calls a cycle (seed: `Cycle`).
    #[serde(default)]
    pub cycle_noun: Option<String>,
    /// `CycleSharingEnabled`.
    #[serde(default)]
    pub cycle_sharing_enabled: bool,
    /// `Domain`: the partner's service domain, e.g. `partner.example.com`.
    #[serde(default)]
    pub domain: Option<String>,
}

/// One price plan of Get Price Plans (seed: `{"Id": "2", "Name": "Starter"}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PricePlan {
    /// The plan's id, a string on this endpoint.
    #[serde(serialize_with = "serialize_price_plan_id_as_string")]
    pub id: PricePlanId,
    /// The plan's name, e.g. `Pro`.
    pub name: String,
}

/// Get Account Usage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccountUsage {
    /// Tasks run in the period.
    pub task_count: u64,
    /// The most cycles the account had in the period.
    pub cycle_count: u64,
    /// The period's start: the `fromDate` asked for, else the last bill date.
    #[serde(default)]
    pub from_date: Option<CyclrDate>,
    /// The period's end, a month after its start.
    #[serde(default)]
    pub to_date: Option<CyclrDate>,
    /// The account's price plan now.
    #[serde(default)]
    pub current_price_plan_id: Option<PricePlanId>,
    /// The account's `AuditInfo`.
    #[serde(default)]
    pub audit_info: Option<String>,
}

/// The body of Get Account Signin Token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SignInTokenRequest {
    /// The account to sign in to.
    pub account_id: AccountId,
    /// The partner application's user, e.g. `user@example.com`.
    pub username: String,
}

/// A sign-in token: single use, valid for five minutes. The token is a credential.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SignInToken {
    /// When it expires (written in the v1.0 form, `…T10:50:45.6509216Z`).
    pub expires_at_utc: CyclrDate,
    /// The token, for `https://{domain}/account/signinwithtoken?token={Token}`.
    pub token: SecretString,
}

/// How an installed connector authenticates. Values are secrets.
#[derive(Clone, Debug, Default)]
pub enum ConnectorAuth {
    /// No credentials sent (the connector needs none, or is authenticated later).
    #[default]
    None,
    /// Sent as `ApiKey`.
    ApiKey(SecretString),
    /// Sent as `Username` and `Password`.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: SecretString,
    },
}

/// The body of Install Connector.
#[derive(Clone, Debug)]
pub struct InstallConnectorRequest {
    /// The account to install into.
    pub account_id: AccountId,
    /// The connector's name in Cyclr's catalogue, e.g. `Connector`.
    pub connector_name: String,
    /// Its version, e.g. `v1`.
    pub connector_version: String,
    /// The name the installed connector gets in the account.
    pub installed_name: String,
    /// Its credentials.
    pub auth: ConnectorAuth,
}

impl Serialize for InstallConnectorRequest {
    /// The one place a connector credential is exposed: on its way into the request body.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("AccountId", &self.account_id)?;
        map.serialize_entry("ConnectorName", &self.connector_name)?;
        map.serialize_entry("ConnectorVersion", &self.connector_version)?;
        map.serialize_entry("InstalledName", &self.installed_name)?;
        match &self.auth {
            ConnectorAuth::None => {}
            ConnectorAuth::ApiKey(key) => map.serialize_entry("ApiKey", key.expose_secret())?,
            ConnectorAuth::Basic { username, password } => {
                map.serialize_entry("Username", username)?;
                map.serialize_entry("Password", password.expose_secret())?;
            }
        }
        map.end()
    }
}

/// The body of Install Connector as a server reads it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstallConnectorBody {
    /// `AccountId` (required by Cyclr).
    #[serde(default)]
    pub account_id: Option<AccountId>,
    /// `ConnectorName` (required by Cyclr).
    #[serde(default)]
    pub connector_name: Option<String>,
    /// `ConnectorVersion`.
    #[serde(default)]
    pub connector_version: Option<String>,
    /// `InstalledName`.
    #[serde(default)]
    pub installed_name: Option<String>,
    /// `ApiKey`, for an API-key connector.
    #[serde(default)]
    pub api_key: Option<SecretString>,
    /// `Username`, for a basic-auth connector.
    #[serde(default)]
    pub username: Option<String>,
    /// `Password`, for a basic-auth connector.
    #[serde(default)]
    pub password: Option<SecretString>,
}

/// One connector installed into an account, from v1.0 `GET /v1.0/account/connectors`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstalledConnector {
    /// The account connector's id (a number on the wire, read as text).
    #[serde(deserialize_with = "id_as_string")]
    pub id: String,
    /// The installed name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Whether its credentials were accepted.
    #[serde(default)]
    pub authenticated: bool,
    /// The catalogue connector it is an install of.
    pub connector: ConnectorSummary,
}

/// The catalogue connector of an installed one (`Connector` of v1.0's account connector).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConnectorSummary {
    /// The catalogue id (a number on the wire, read as text).
    #[serde(default, deserialize_with = "id_as_string")]
    pub id: String,
    /// The connector's name, e.g. `Connector`.
    pub name: String,
    /// Its version, e.g. `v1`.
    #[serde(default)]
    pub version: Option<String>,
}

fn id_as_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("unexpected id {other}"))),
    }
}

/// `POST /oauth/token` response.
#[derive(Clone, Debug, Deserialize)]
pub struct TokenResponse {
    /// The bearer token.
    pub access_token: SecretString,
    /// `bearer`.
    #[serde(default)]
    pub token_type: Option<String>,
    /// The token's lifetime in seconds (Cyclr: 1209599, about 14 days).
    pub expires_in: u64,
}

/// The `{"Message": "…"}` body Cyclr sends with errors.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in Cyclr's words.
    #[serde(rename = "Message", alias = "message", default)]
    pub message: String,
}

// ---- v1.0 ------------------------------------------------------------------------------------
//
// Sources, named in each item's docs: "the v1.0 docs" (Cyclr's public v1.0 documentation),
// "observed" (only Cyclr's own regression suite shows it), "inferred" (no source states it).

/// The largest step data retention Cyclr keeps, in hours (31 days): a larger value is
/// clamped to it (observed on update).
pub const MAX_RETENTION_HOURS: u32 = 744;

/// The intervals, in minutes, a cycle can run at (the v1.0 docs); any other is refused.
pub const CYCLE_INTERVALS: [u32; 13] = [1, 5, 15, 30, 60, 120, 180, 240, 360, 480, 720, 1440, 10080];

/// An account as v1.0 returns it (`GET /v1.0/accounts/{id}`, each element of
/// `GET /v1.0/accounts`, and the answer of create and update; the v1.0 docs). It has no price
/// plan and no bill dates but `NextBillDateUtc`: those stay on the Partner API.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccountV1 {
    /// The account's API id: caller-chosen on create, else Cyclr's own.
    pub id: AccountId,
    /// The account's name; required, not unique.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// An IANA time zone, e.g. `Europe/London`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Free text the partner keeps with the account.
    #[serde(default)]
    pub audit_info: Option<String>,
    /// Free text kept with the account's task audit records (a string like `AuditInfo`:
    /// inferred, no source gives its type).
    #[serde(default)]
    pub task_audit_info: Option<String>,
    /// When the account was created.
    #[serde(default)]
    pub created_date: Option<CyclrDate>,
    /// When the account is billed next.
    #[serde(default)]
    pub next_bill_date_utc: Option<CyclrDate>,
    /// Hours that data of successful steps is kept, 0 to [`MAX_RETENTION_HOURS`].
    #[serde(default)]
    pub step_data_success_retention_hours: Option<u32>,
    /// Hours that data of failed steps is kept, 0 to [`MAX_RETENTION_HOURS`].
    #[serde(default)]
    pub step_data_errored_retention_hours: Option<u32>,
    /// Whether a failed transaction is posted to `TransactionErrorWebhookUrl`.
    #[serde(default)]
    pub transaction_error_webhook_enabled: Option<bool>,
    /// Where failed transactions are posted; Cyclr adds `https://` to a URL without a scheme
    /// (observed).
    #[serde(default)]
    pub transaction_error_webhook_url: Option<String>,
    /// Whether warnings are posted too.
    #[serde(default)]
    pub transaction_error_webhook_include_warnings: Option<bool>,
    /// The parent of a sub-account.
    #[serde(default)]
    pub parent_account_id: Option<AccountId>,
}

/// The writable fields of a v1.0 account: the body of `POST /v1.0/accounts` (`Name`
/// required) and of `PUT /v1.0/accounts/{id}` (any subset; omitted fields keep their values,
/// observed). `Id` is read on create only.
///
/// Errors (400, observed): a missing `Name` (`Name is required`), a taken `Id`
/// (`ID already in use`, see [`CyclrError::IdInUse`](crate::CyclrError::IdInUse)), a negative
/// retention (the message names the field), the webhook enabled without a URL.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccountFieldsV1 {
    /// `Id`: the caller-chosen API id (create only). Sending the same one again answers
    /// `ID already in use`, which makes a create idempotent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<AccountId>,
    /// `Name`: required on create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Description`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `Timezone`, an IANA name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// `AuditInfo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_info: Option<String>,
    /// `TaskAuditInfo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_audit_info: Option<String>,
    /// `StepDataSuccessRetentionHours`, hours; above [`MAX_RETENTION_HOURS`] clamped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_data_success_retention_hours: Option<u32>,
    /// `StepDataErroredRetentionHours`, hours; above [`MAX_RETENTION_HOURS`] clamped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_data_errored_retention_hours: Option<u32>,
    /// `TransactionErrorWebhookEnabled`: needs a URL (sent now or set before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_error_webhook_enabled: Option<bool>,
    /// `TransactionErrorWebhookUrl`; `https://` is added when it has no scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_error_webhook_url: Option<String>,
    /// `TransactionErrorWebhookIncludeWarnings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_error_webhook_include_warnings: Option<bool>,
    /// `ParentAccountId`: makes the new account a sub-account of this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_account_id: Option<AccountId>,
}

impl AccountFieldsV1 {
    /// Whether no field is set: an update with nothing to send.
    pub fn is_empty(&self) -> bool {
        *self == AccountFieldsV1::default()
    }

    /// These fields as Cyclr stores them (observed): retention hours clamped to
    /// [`MAX_RETENTION_HOURS`], `https://` added to a webhook URL without a scheme. Compare
    /// the normalised desired value with what Cyclr reports, or a clamped value would differ
    /// forever.
    pub fn normalized(&self) -> AccountFieldsV1 {
        AccountFieldsV1 {
            step_data_success_retention_hours: self.step_data_success_retention_hours.map(clamp_retention_hours),
            step_data_errored_retention_hours: self.step_data_errored_retention_hours.map(clamp_retention_hours),
            transaction_error_webhook_url: self.transaction_error_webhook_url.as_deref().map(normalize_webhook_url),
            ..self.clone()
        }
    }

    /// The fields of this desired value (normalised) that differ from `observed`: the body of
    /// the update that brings the account in line, empty when nothing differs. `Id` and
    /// `ParentAccountId` are left out: an update cannot move an account.
    pub fn changes_to(&self, observed: &AccountV1) -> AccountFieldsV1 {
        fn changed<T: PartialEq + Clone>(desired: &Option<T>, observed: &Option<T>) -> Option<T> {
            desired.as_ref().filter(|d| observed.as_ref() != Some(*d)).cloned()
        }
        let desired = self.normalized();
        AccountFieldsV1 {
            id: None,
            name: desired.name.filter(|name| *name != observed.name),
            description: changed(&desired.description, &observed.description),
            timezone: changed(&desired.timezone, &observed.timezone),
            audit_info: changed(&desired.audit_info, &observed.audit_info),
            task_audit_info: changed(&desired.task_audit_info, &observed.task_audit_info),
            step_data_success_retention_hours: changed(
                &desired.step_data_success_retention_hours,
                &observed.step_data_success_retention_hours,
            ),
            step_data_errored_retention_hours: changed(
                &desired.step_data_errored_retention_hours,
                &observed.step_data_errored_retention_hours,
            ),
            transaction_error_webhook_enabled: changed(
                &desired.transaction_error_webhook_enabled,
                &observed.transaction_error_webhook_enabled,
            ),
            transaction_error_webhook_url: changed(
                &desired.transaction_error_webhook_url,
                &observed.transaction_error_webhook_url,
            ),
            transaction_error_webhook_include_warnings: changed(
                &desired.transaction_error_webhook_include_warnings,
                &observed.transaction_error_webhook_include_warnings,
            ),
            parent_account_id: None,
        }
    }
}

/// A retention as Cyclr keeps it: at most [`MAX_RETENTION_HOURS`] (observed).
pub fn clamp_retention_hours(hours: u32) -> u32 {
    hours.min(MAX_RETENTION_HOURS)
}

/// A webhook URL as Cyclr keeps it: `https://` added when it has no scheme (observed:
/// `hooks.example.com/x` reads back as `https://hooks.example.com/x`). A URL with a scheme,
/// `http://` included, is kept as it is.
pub fn normalize_webhook_url(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("https://{url}")
    }
}

/// v1.0 `GET /v1.0/accounts/{id}/usage` (the v1.0 docs): tasks only, where the Partner API's
/// usage also has the cycle count and the plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccountUsageV1 {
    /// The account.
    pub id: AccountId,
    /// Tasks run in the period.
    pub tasks_used: u64,
    /// The period's start (the last bill date; inferred).
    #[serde(default)]
    pub start_time: Option<CyclrDate>,
    /// The period's end.
    #[serde(default)]
    pub end_time: Option<CyclrDate>,
}

/// What a v1.0 delete found. A 404 is not an error of a delete: what was to go is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted {
    /// This call deleted it (200).
    Deleted,
    /// Cyclr knew no such object (404): deleted before, by us or someone else.
    AlreadyGone,
}

/// One property of an account connector (`{"Name", "Value"}`, the v1.0 docs), e.g. the
/// subdomain a connector calls. Not a credential: values are shown in Cyclr's answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConnectorProperty {
    /// The property's name in the connector's definition.
    pub name: String,
    /// Its value.
    #[serde(default)]
    pub value: Option<String>,
}

/// A connector installed into an account, as v1.0 returns it (install, `GET
/// /v1.0/account/connectors[/{id}]`, re-authenticate; the v1.0 docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccountConnector {
    /// The account connector's id (a number on the wire, read as text).
    #[serde(deserialize_with = "id_as_string")]
    pub id: String,
    /// The installed name, unique in the account (`Account connector name '…' is in use.`).
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Whether its credentials were accepted. The only state of an OAuth connector the API
    /// shows (a person authenticates it through Cyclr's connector-auth page).
    #[serde(default)]
    pub authenticated: bool,
    /// The catalogue connector it is an install of.
    pub connector: CatalogueConnector,
    /// Its account-connector properties.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub properties: Vec<ConnectorProperty>,
}

impl From<AccountConnector> for InstalledConnector {
    /// The same account connector, less what only the v1.0 answers carry (properties, auth type).
    fn from(connector: AccountConnector) -> Self {
        InstalledConnector {
            id: connector.id,
            name: connector.name,
            description: connector.description,
            authenticated: connector.authenticated,
            connector: ConnectorSummary {
                id: connector.connector.id,
                name: connector.connector.name,
                version: connector.connector.version,
            },
        }
    }
}

/// The catalogue connector of an account connector (`Connector`, the v1.0 docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogueConnector {
    /// The catalogue id (a number on the wire, read as text).
    #[serde(default, deserialize_with = "id_as_string")]
    pub id: String,
    /// The connector's name, e.g. `Slack`.
    pub name: String,
    /// Its version, e.g. `v1`.
    #[serde(default)]
    pub version: Option<String>,
    /// How it authenticates, e.g. `ApiKey`, `Basic`, `OAuth2`, `None` (values inferred).
    #[serde(default)]
    pub auth_type: Option<String>,
}

impl ConnectorAuth {
    /// v1.0's `AuthValue` for these credentials (the v1.0 docs): an API key as it is, basic
    /// auth as the base64 of `user:password`; `None` for no credentials.
    pub fn auth_value(&self) -> Option<SecretString> {
        use base64::Engine as _;
        match self {
            ConnectorAuth::None => None,
            ConnectorAuth::ApiKey(key) => Some(key.clone()),
            ConnectorAuth::Basic { username, password } => {
                let pair = format!("{username}:{}", password.expose_secret());
                Some(base64::engine::general_purpose::STANDARD.encode(pair).into())
            }
        }
    }
}

/// The body of `POST /v1.0/connectors/{connector id or name}/install` (the v1.0 docs).
#[derive(Clone, Debug)]
pub struct InstallAccountConnector {
    /// The installed name; unique in the account.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Its credentials, sent as `AuthValue` (see [`ConnectorAuth::auth_value`]); `None`
    /// installs it unauthenticated (an OAuth connector is always installed so).
    pub auth: ConnectorAuth,
    /// Account-connector properties, e.g. a subdomain (set before authenticating). An unknown
    /// property is refused with 400 (the v1.0 docs).
    pub properties: Vec<ConnectorProperty>,
}

impl Serialize for InstallAccountConnector {
    /// Where the credential is exposed: on its way into the request body.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("Name", &self.name)?;
        if let Some(description) = &self.description {
            map.serialize_entry("Description", description)?;
        }
        if let Some(value) = self.auth.auth_value() {
            map.serialize_entry("AuthValue", value.expose_secret())?;
        }
        if !self.properties.is_empty() {
            map.serialize_entry("Properties", &self.properties)?;
        }
        map.end()
    }
}

/// The body of `PUT /v1.0/account/connectors/{id}` that re-authenticates (`{"AuthValue"}`).
pub(crate) struct Reauthenticate<'a>(pub &'a SecretString);

impl Serialize for Reauthenticate<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry("AuthValue", self.0.expose_secret())?;
        map.end()
    }
}

/// A template: a partner's integration design (`GET /v1.0/templates[/{id}]`, the v1.0 docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Template {
    /// The template's id (read as text).
    #[serde(deserialize_with = "id_as_string")]
    pub id: String,
    /// Its name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// The connectors a cycle made from it needs.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub connectors: Vec<TemplateConnector>,
    /// Its tags.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
}

/// A connector a template needs (`{Id, Name, Version}`, the v1.0 docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TemplateConnector {
    /// The catalogue id (read as text).
    #[serde(default, deserialize_with = "id_as_string")]
    pub id: String,
    /// The connector's name.
    pub name: String,
    /// Its version.
    #[serde(default)]
    pub version: Option<String>,
}

/// A cycle's `Status` (the v1.0 docs name `Paused`, `Active`, `Stopped` and
/// `DeleteScheduled`; no complete list exists, so any other value is kept as it is).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CycleStatus {
    /// Installed or deactivated: not running.
    Paused,
    /// Running on its schedule or webhook.
    Active,
    /// Stopped by Cyclr, e.g. when a connector it uses lost its authentication (inferred).
    Stopped,
    /// Being deleted; the deletion may finish later.
    DeleteScheduled,
    /// A value this client does not know, as Cyclr wrote it.
    Other(String),
}

impl CycleStatus {
    /// The status as Cyclr writes it.
    pub fn as_str(&self) -> &str {
        match self {
            CycleStatus::Paused => "Paused",
            CycleStatus::Active => "Active",
            CycleStatus::Stopped => "Stopped",
            CycleStatus::DeleteScheduled => "DeleteScheduled",
            CycleStatus::Other(other) => other,
        }
    }
}

impl From<&str> for CycleStatus {
    /// Known values match case-insensitively.
    fn from(text: &str) -> Self {
        [
            CycleStatus::Paused,
            CycleStatus::Active,
            CycleStatus::Stopped,
            CycleStatus::DeleteScheduled,
        ]
        .into_iter()
        .find(|known| known.as_str().eq_ignore_ascii_case(text))
        .unwrap_or_else(|| CycleStatus::Other(text.to_owned()))
    }
}

impl fmt::Display for CycleStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CycleStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CycleStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(CycleStatus::from(String::deserialize(d)?.as_str()))
    }
}

/// A cycle: a template installed into an account (the v1.0 docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Cycle {
    /// The cycle's id (read as text).
    #[serde(deserialize_with = "id_as_string")]
    pub id: String,
    /// Its name (the template's unless the install named it).
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// The template it was installed from.
    #[serde(default, deserialize_with = "optional_id_as_string")]
    pub template_id: Option<String>,
    /// `Paused` after install, `Active` once activated.
    pub status: CycleStatus,
    /// The account connectors it uses.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub connectors: Vec<CycleConnector>,
    /// Tasks it has run.
    #[serde(default)]
    pub tasks_used: u64,
    /// Transactions that failed.
    #[serde(default)]
    pub error_count: u64,
    /// Transactions with warnings.
    #[serde(default)]
    pub warning_count: u64,
    /// When it was installed.
    #[serde(default)]
    pub created_on_utc: Option<CyclrDate>,
    /// When it last ran without error.
    #[serde(default)]
    pub last_successful_run_date: Option<CyclrDate>,
}

/// A connector a cycle uses (the v1.0 docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CycleConnector {
    /// The catalogue connector's id (read as text).
    #[serde(default, deserialize_with = "id_as_string")]
    pub id: String,
    /// The account connector the cycle uses, made or reused by the install.
    #[serde(default, deserialize_with = "optional_id_as_string")]
    pub account_connector_id: Option<String>,
    /// The connector's name.
    pub name: String,
    /// Its version.
    #[serde(default)]
    pub version: Option<String>,
    /// Whether that account connector is authenticated.
    #[serde(default)]
    pub authenticated: bool,
}

/// The body of `PUT /v1.0/cycles/{id}/activate` (the v1.0 docs): every field optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ActivateCycle {
    /// When it first runs (sent in the v1.0 form, `2026-01-01T00:00:00Z`).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "serialize_v1_date")]
    pub start_time: Option<CyclrDate>,
    /// Minutes between runs, one of [`CYCLE_INTERVALS`]; ignored for a webhook trigger or
    /// `RunOnce`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<u32>,
    /// Run once, then pause.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_once: Option<bool>,
}

fn serialize_v1_date<S: Serializer>(date: &Option<CyclrDate>, s: S) -> Result<S::Ok, S::Error> {
    match date {
        Some(date) => s.serialize_str(&date.to_rfc3339()),
        None => s.serialize_none(),
    }
}

/// Something that stops a cycle from being activated (`GET /v1.0/cycles/{id}/prerequisites`,
/// the v1.0 docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Prerequisite {
    /// Why: 10 too few steps, 11 steps not connected,
    /// [`CONNECTOR_NOT_AUTHENTICATED`](Prerequisite::CONNECTOR_NOT_AUTHENTICATED) (20),
    /// 30 missing mapping, 40 missing parameter mapping, 41 missing field mapping, others
    /// 31–70 for decisions, delays and operands.
    pub reason_code: u32,
    /// Cyclr's words for it.
    #[serde(default)]
    pub reason: String,
    /// What it is about, e.g. `AccountConnector`.
    #[serde(default)]
    pub object_type: Option<String>,
    /// The id of that object, e.g. the account connector's.
    #[serde(default, deserialize_with = "optional_id_as_string")]
    pub object_id: Option<String>,
}

impl Prerequisite {
    /// Reason code of an account connector that is not authenticated (`ObjectType`
    /// `AccountConnector`, `ObjectId` its id).
    pub const CONNECTOR_NOT_AUTHENTICATED: u32 = 20;
}

/// A cycle variable (`GET /v1.0/cycles/{id}/variables`, the v1.0 docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CycleVariable {
    /// The name it is addressed by.
    pub system_name: String,
    /// The name people see.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Its value.
    #[serde(default)]
    pub value: Option<String>,
    /// How the value is given; `StaticValue` for a value set through the API.
    #[serde(default)]
    pub mapping_type: Option<String>,
}

/// A `null` list read as an empty one.
fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn optional_id_as_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s)),
        serde_json::Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(serde::de::Error::custom(format!("unexpected id {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_account_fields_are_normalised_as_cyclr_stores_them() {
        let desired = AccountFieldsV1 {
            step_data_success_retention_hours: Some(1000),
            step_data_errored_retention_hours: Some(744),
            transaction_error_webhook_url: Some("hooks.example.com/errors".into()),
            ..Default::default()
        };
        let normal = desired.normalized();
        assert_eq!(normal.step_data_success_retention_hours, Some(744));
        assert_eq!(normal.step_data_errored_retention_hours, Some(744));
        assert_eq!(
            normal.transaction_error_webhook_url.as_deref(),
            Some("https://hooks.example.com/errors")
        );
        assert_eq!(normalize_webhook_url("http://plain.example"), "http://plain.example");
        assert_eq!(normal.normalized(), normal, "normalising twice changes nothing");
    }

    #[test]
    fn only_fields_that_differ_after_normalising_are_changes() {
        let observed = AccountV1 {
            id: "acme".into(),
            name: "Acme".into(),
            description: Some("old".into()),
            step_data_success_retention_hours: Some(744),
            transaction_error_webhook_url: Some("https://hooks.example.com".into()),
            ..Default::default()
        };
        let desired = AccountFieldsV1 {
            id: Some("acme".into()),
            name: Some("Acme".into()),
            description: Some("new".into()),
            step_data_success_retention_hours: Some(5000),
            transaction_error_webhook_url: Some("hooks.example.com".into()),
            transaction_error_webhook_include_warnings: Some(true),
            parent_account_id: Some("parent".into()),
            ..Default::default()
        };
        assert_eq!(
            desired.changes_to(&observed),
            AccountFieldsV1 {
                description: Some("new".into()),
                transaction_error_webhook_include_warnings: Some(true),
                ..Default::default()
            }
        );
        let in_line = AccountFieldsV1 {
            description: Some("old".into()),
            ..desired
        };
        assert_eq!(
            in_line.changes_to(&observed),
            AccountFieldsV1 {
                transaction_error_webhook_include_warnings: Some(true),
                ..Default::default()
            }
        );
        assert!(AccountFieldsV1::default().changes_to(&observed).is_empty());
    }

    #[test]
    fn auth_values_are_the_key_or_base64_of_user_and_password() {
        let basic = ConnectorAuth::Basic {
            username: "user".into(),
            password: "pass word".into(),
        };
        // base64("user:pass word")
        assert_eq!(basic.auth_value().unwrap().expose_secret(), "dXNlcjpwYXNzIHdvcmQ=");
        let key = ConnectorAuth::ApiKey("k-123".into());
        assert_eq!(key.auth_value().unwrap().expose_secret(), "k-123");
        assert!(ConnectorAuth::None.auth_value().is_none());

        let install = InstallAccountConnector {
            name: "Tickets".into(),
            description: None,
            auth: basic,
            properties: vec![ConnectorProperty {
                name: "Subdomain".into(),
                value: Some("acme".into()),
            }],
        };
        assert_eq!(
            serde_json::to_value(&install).unwrap(),
            serde_json::json!({"Name": "Tickets", "AuthValue": "dXNlcjpwYXNzIHdvcmQ=",
                "Properties": [{"Name": "Subdomain", "Value": "acme"}]})
        );
    }

    #[test]
    fn cycle_status_keeps_unknown_values() {
        for (text, status) in [
            ("Paused", CycleStatus::Paused),
            ("active", CycleStatus::Active),
            ("Stopped", CycleStatus::Stopped),
            ("DeleteScheduled", CycleStatus::DeleteScheduled),
            ("Erroring", CycleStatus::Other("Erroring".into())),
        ] {
            let read: CycleStatus = serde_json::from_value(serde_json::json!(text)).unwrap();
            assert_eq!(read, status, "{text}");
        }
        assert_eq!(
            serde_json::to_value(CycleStatus::Other("Erroring".into())).unwrap(),
            "Erroring"
        );
    }

    #[test]
    fn activation_sends_only_what_is_set_with_a_v1_date() {
        let schedule = ActivateCycle {
            start_time: CyclrDate::parse("2026-01-01T00:00:00"),
            interval: Some(15),
            run_once: None,
        };
        assert_eq!(
            serde_json::to_value(&schedule).unwrap(),
            serde_json::json!({"StartTime": "2026-01-01T00:00:00Z", "Interval": 15})
        );
        assert_eq!(
            serde_json::to_value(ActivateCycle::default()).unwrap(),
            serde_json::json!({})
        );
        assert!(CYCLE_INTERVALS.contains(&10080) && !CYCLE_INTERVALS.contains(&10));
    }
}
