use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One Cyclr partner console the operator talks to. Accounts name it in `spec.partnerRef`.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cyclr.com",
    version = "v1alpha1",
    kind = "CyclrPartner",
    shortname = "cyp",
    category = "cyclr",
    status = "CyclrPartnerStatus",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.apiUrl"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Accounts","type":"integer","jsonPath":".status.accountCount"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CyclrPartnerSpec {
    /// Base URL of the Cyclr API, e.g. `https://api.cyclr.com` (regional hosts and private
    /// instances differ).
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/.*)?$"))]
    pub api_url: String,
    /// The Secret with the partner's OAuth client credentials. It is read from the
    /// operator's own namespace only.
    pub credentials_secret_ref: CredentialsSecretRef,
    /// Which namespaces' CyclrAccounts and CyclrConnectorInstalls may use this partner.
    /// Omitted: every namespace. `{}` also selects every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// The budget of Cyclr API calls the operator may spend for this partner.
    #[serde(default)]
    pub rate_limit: RateLimit,
    /// How often accounts are compared with Cyclr (one List Accounts per interval).
    #[serde(default = "default_resync_interval")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s')").message("resyncInterval must be at least 10s"))]
    pub resync_interval: Duration,
    /// How often each account's usage is read.
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
}

fn default_resync_interval() -> Duration {
    "10m".parse().expect("valid duration")
}

fn default_usage_interval() -> Duration {
    "15m".parse().expect("valid duration")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default = "default_client_id_key")]
    pub client_id_key: String,
    #[serde(default = "default_client_secret_key")]
    pub client_secret_key: String,
}

fn default_client_id_key() -> String {
    "client_id".into()
}

fn default_client_secret_key() -> String {
    "client_secret".into()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    #[serde(default = "default_requests_per_second")]
    #[schemars(range(min = 1, max = 10000))]
    pub requests_per_second: u32,
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

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CyclrPartnerStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Partner Details as Cyclr reports them, without secrets such as Intercom keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<PartnerDetailsStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub price_plans: Vec<PricePlanStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_count: Option<u32>,
    /// When the operator last saw something change for this partner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartnerDetailsStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle_noun: Option<String>,
    pub anonymous_accounts_enabled: bool,
    pub coming_soon_connectors_enabled: bool,
    pub custom_connectors_enabled: bool,
    pub cycle_sharing_enabled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PricePlanStatus {
    pub id: i64,
    pub name: String,
}
