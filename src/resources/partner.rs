use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::core::{Duration, Rule};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One Cyclr partner console the operator talks to. Accounts name it in `spec.partnerRef`.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cyclr.com",
    version = "v1alpha1",
    kind = "CyclrPartner",
    doc = "A Cyclr partner console the operator talks to (cluster-scoped): the Cyclr API URL, the OAuth client credentials Secret in the operator's namespace, which namespaces may use it, its budget of API calls and how often accounts are compared with Cyclr. CyclrAccounts name it in spec.partnerRef.",
    shortname = "cyp",
    category = "cyclr",
    status = "CyclrPartnerStatus",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.apiURL"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Accounts","type":"integer","jsonPath":".status.accountCount"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CyclrPartnerSpec {
    /// Base URL of the Cyclr API, e.g. `https://api.cyclr.com` (regional hosts and private
    /// instances differ): an absolute `http://` or `https://` URL of at most 2048
    /// characters, without credentials, query or fragment; a path prefix is allowed.
    #[serde(rename = "apiURL")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = http_url(), validation = no_credentials_in_url(), validation = no_query_in_url())]
    pub api_url: String,
    /// The Secret with the partner's OAuth client credentials. It is read from the
    /// operator's own namespace only, and must carry the label `cyclr.com/credentials: "true"`.
    pub credentials_secret_ref: CredentialsSecretRef,
    /// Which namespaces' CyclrAccounts and CyclrConnectorInstalls may use this partner.
    /// Omitted: every namespace. `{}` also selects every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// The budget of Cyclr API calls the operator may spend for this partner.
    #[serde(default)]
    pub rate_limit: RateLimit,
    /// How often accounts are compared with Cyclr (one List Accounts per interval): a
    /// duration such as `10m` (default) or `1h30m`, at least `10s`.
    #[serde(default = "default_resync_interval")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s')").message("resyncInterval must be at least 10s"))]
    pub resync_interval: Duration,
    /// How often each account's usage is read: a duration such as `15m` (default), at
    /// least `10s`.
    #[serde(default = "default_usage_interval")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s')").message("usageInterval must be at least 10s"))]
    pub usage_interval: Duration,
    /// Where people sign in to this partner's Cyclr console, e.g. `https://my.cyclr.com`:
    /// `kubectl cyclr signin` builds `{serviceURL}/account/signinwithtoken?token=…` from it.
    /// Omitted: derived from `apiURL` (`https://api.<region.>cyclr.com` becomes
    /// `https://my.<region.>cyclr.com`; any other URL gives its own origin).
    #[serde(default, rename = "serviceURL", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/.*)?$"))]
    pub service_url: Option<String>,
    /// Which Cyclr API the partner's accounts are managed with: `Partner` (default, the
    /// Partner API `/api/partner`) or `V1` (recommended: v1.0 `/v1.0`, same URL and
    /// credentials; ids chosen by the operator, idempotent creates, paged lists,
    /// `deletionPolicy: Delete`). Price plans, Partner Details, bill dates and usage use the
    /// Partner API calls in both. See docs/operator.md for what each can do.
    #[serde(default, rename = "cyclrAPI")]
    pub cyclr_api: CyclrApi,
}

/// The Cyclr API a partner's accounts are managed with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CyclrApi {
    /// The Partner API (`/api/partner`): creates are guarded by a pending marker and a list,
    /// accounts are never deleted.
    #[default]
    Partner,
    /// Cyclr's current v1.0 API (`/v1.0`): creates carry an id the operator chooses (so a
    /// repeat is harmless), lists are paged, accounts can be deleted.
    V1,
}

// The rules of a Cyclr base URL, for every URL field of the partner.

/// CEL: an absolute http(s) URL with a host.
fn http_url() -> Rule {
    Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''")
        .message("must be an absolute http:// or https:// URL, e.g. https://api.cyclr.com")
}

/// CEL: no `user:password@` before the host.
fn no_credentials_in_url() -> Rule {
    Rule::new("!self.matches('^[^/]*//[^/]*@')")
        .message("must not carry credentials (user:password@): they belong in credentialsSecretRef")
}

/// CEL: no query or fragment, which the client would drop or mangle when joining paths.
fn no_query_in_url() -> Rule {
    Rule::new("!self.contains('?') && !self.contains('#')")
        .message("must not have a query or fragment (a path prefix is fine)")
}

fn default_resync_interval() -> Duration {
    "10m".parse().expect("valid duration")
}

fn default_usage_interval() -> Duration {
    "15m".parse().expect("valid duration")
}

/// Where the partner's OAuth client id and secret are kept.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// The Secret's name, in the operator's namespace.
    #[schemars(length(max = 253))]
    #[x_kube(validation = super::object_name())]
    pub name: String,
    /// The data key holding the OAuth client id; default `client_id`.
    #[serde(default = "default_client_id_key", rename = "clientIDKey")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = super::secret_key())]
    pub client_id_key: String,
    /// The data key holding the OAuth client secret; default `client_secret`.
    #[serde(default = "default_client_secret_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = super::secret_key())]
    pub client_secret_key: String,
}

fn default_client_id_key() -> String {
    "client_id".into()
}

fn default_client_secret_key() -> String {
    "client_secret".into()
}

/// A token bucket for the partner's Cyclr API calls, shared by all its resources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained calls per second, 1 to 10000; default 10. The operator slows down below
    /// this when Cyclr answers 429.
    #[serde(default = "default_requests_per_second")]
    #[schemars(range(min = 1, max = 10000))]
    pub requests_per_second: u32,
    /// Calls that may be made at once after a quiet spell, 1 to 10000; default 20.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 10000))]
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            requests_per_second: default_requests_per_second(),
            burst: default_burst(),
        }
    }
}

fn default_requests_per_second() -> u32 {
    10
}

fn default_burst() -> u32 {
    20
}

/// What the operator last learnt of the partner.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CyclrPartnerStatus {
    /// kstatus conditions `Ready`, `Reconciling` and `Stalled`; see docs/operator.md for
    /// the reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Partner Details as Cyclr reports them, without secrets such as Intercom keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<PartnerDetailsStatus>,
    /// The partner's price plans (Get Price Plans), for `pricePlan.name` lookups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub price_plans: Vec<PricePlanStatus>,
    /// How many accounts Cyclr lists for the partner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_count: Option<u32>,
    /// When the operator last saw something change for this partner (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
}

/// Partner Details, the fields without secrets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartnerDetailsStatus {
    /// The application's name in the Cyclr console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_display_name: Option<String>,
    /// The partner console's domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// What the partner calls a cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle_noun: Option<String>,
    /// Whether anonymous accounts are enabled.
    pub anonymous_accounts_enabled: bool,
    /// Whether "coming soon" connectors are shown.
    pub coming_soon_connectors_enabled: bool,
    /// Whether custom connectors are enabled.
    pub custom_connectors_enabled: bool,
    /// Whether cycles can be shared between accounts.
    pub cycle_sharing_enabled: bool,
}

/// One price plan of the partner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PricePlanStatus {
    /// The plan's id in Cyclr.
    pub id: i64,
    /// The plan's name.
    pub name: String,
}
