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
