use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{NameRef, PendingWrite};

/// A connector installed into a CyclrAccount of the same namespace, exactly once.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cyclr.com",
    version = "v1alpha1",
    kind = "CyclrConnectorInstall",
    namespaced,
    shortname = "cyci",
    category = "cyclr",
    status = "CyclrConnectorInstallStatus",
    printcolumn = r#"{"name":"Account","type":"string","jsonPath":".spec.accountRef.name"}"#,
    printcolumn = r#"{"name":"Connector","type":"string","jsonPath":".spec.connectorName"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.connectorVersion"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CyclrConnectorInstallSpec {
    /// The CyclrAccount (same namespace) to install into. Immutable: the API cannot move an install.
    #[x_kube(validation = Rule::new("self == oldSelf").message("accountRef is immutable"))]
    pub account_ref: NameRef,
    /// Immutable.
    #[schemars(length(min = 1))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("connectorName is immutable"))]
    pub connector_name: String,
    /// Immutable.
    #[schemars(length(min = 1))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("connectorVersion is immutable"))]
    pub connector_version: String,
    /// The installed connector's name in the account; defaults to `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub installed_name: Option<String>,
    /// How the connector authenticates; omit for none. OAuth connectors cannot be
    /// installed through this API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ConnectorAuthSpec>,
}

#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!(has(self.apiKeySecretRef) && has(self.basicAuthSecretRef))").message("auth takes at most one of apiKeySecretRef and basicAuthSecretRef"))]
#[serde(rename_all = "camelCase")]
pub struct ConnectorAuthSpec {
    /// A Secret in this namespace holding the API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<ApiKeySecretRef>,
    /// A Secret in this namespace holding a username and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_secret_ref: Option<BasicAuthSecretRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApiKeySecretRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default = "default_api_key_key")]
    pub key: String,
}

fn default_api_key_key() -> String {
    "apiKey".into()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuthSecretRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default = "default_username_key")]
    pub username_key: String,
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CyclrConnectorInstallStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Set once the install is made (or found); the operator never installs again after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<Time>,
    /// The installed connector's id, when the v1.0 list shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_connector_id: Option<String>,
    /// Set while an Install Connector is in flight or its outcome is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_install: Option<PendingWrite>,
}

impl CyclrConnectorInstall {
    pub fn installed_name(&self) -> String {
        self.spec
            .installed_name
            .clone()
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }

    /// The Secret names this install reads, for the Secret watch.
    pub fn secret_names(&self) -> Vec<&str> {
        let Some(auth) = &self.spec.auth else { return vec![] };
        auth.api_key_secret_ref
            .iter()
            .map(|r| r.name.as_str())
            .chain(auth.basic_auth_secret_ref.iter().map(|r| r.name.as_str()))
            .collect()
    }
}
