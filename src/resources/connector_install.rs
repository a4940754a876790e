use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DeletionPolicy, NameRef, NamedValue, PendingWrite};

/// A connector installed into a CyclrAccount of the same namespace, exactly once.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cyclr.com",
    version = "v1alpha1",
    kind = "CyclrConnectorInstall",
    doc = "A connector of the Cyclr connector library, installed exactly once into the CyclrAccount of the same namespace that spec.accountRef names, with its API key or basic-auth credentials read from a Secret. Status holds the installed connector's id and the kstatus conditions.",
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
#[x_kube(validation = Rule::new("has(self.installedName) == has(oldSelf.installedName) && (!has(self.installedName) || self.installedName == oldSelf.installedName)").field_path(".installedName").message("installedName is immutable: the Partner API cannot rename an install; create a new resource instead"))]
#[x_kube(validation = Rule::new("has(self.connectorID) == has(oldSelf.connectorID) && (!has(self.connectorID) || self.connectorID == oldSelf.connectorID)").field_path(".connectorID").message("connectorID is immutable: an install cannot change its connector"))]
#[x_kube(validation = Rule::new("has(self.properties) == has(oldSelf.properties) && (!has(self.properties) || self.properties == oldSelf.properties)").field_path(".properties").message("properties are immutable: they are sent once, with the install; create a new resource to change them"))]
#[serde(rename_all = "camelCase")]
pub struct CyclrConnectorInstallSpec {
    /// The CyclrAccount (same namespace) to install into. Immutable: the API cannot move an install.
    #[x_kube(validation = Rule::new("self == oldSelf").message("accountRef is immutable: the Partner API cannot move an install to another account"))]
    pub account_ref: NameRef,
    /// The connector's name in the Cyclr connector library, e.g. `Slack` (at most 255
    /// characters). Immutable.
    #[schemars(length(max = 255))]
    #[x_kube(validation = super::trimmed())]
    #[x_kube(validation = Rule::new("self == oldSelf").message("connectorName is immutable: the Partner API cannot change an install"))]
    pub connector_name: String,
    /// The connector's version in the library, e.g. `v1` (at most 64 characters). Immutable.
    #[schemars(length(max = 64))]
    #[x_kube(validation = super::trimmed())]
    #[x_kube(validation = Rule::new("self == oldSelf").message("connectorVersion is immutable: the Partner API cannot change an install"))]
    pub connector_version: String,
    /// The installed connector's name in the account (at most 255 characters); defaults
    /// to `metadata.name`. Unique within an account. Immutable: the Partner API cannot
    /// rename an install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    #[x_kube(validation = super::trimmed())]
    pub installed_name: Option<String>,
    /// How the connector authenticates; omit for none. OAuth connectors cannot be
    /// installed through this API. Credentials are sent once, with the install: the
    /// Partner API cannot change them afterwards, so a later change (of this field or of
    /// the Secret's values) is reported as Stalled `CredentialsNotApplied`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ConnectorAuthSpec>,
    /// The connector's id in the Cyclr connector library (digits, e.g. `1234`): on a `V1`
    /// partner the install names the connector by this id rather than by `connectorName`,
    /// which still labels the resource. A `Partner` partner installs by name only, so there
    /// it is Stalled `InvalidSpec`. Immutable.
    #[serde(default, rename = "connectorID", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 20))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+$')").message("must be the connector's numeric id in the Cyclr connector library"))]
    pub connector_id: Option<String>,
    /// Account-connector properties the connector needs (e.g. a subdomain), by the names
    /// in the connector's definition (Cyclr refuses others), sent with the install (at most
    /// 32, each name once). Cyclr shows property values in its answers. `V1` partners only: the Partner API's install
    /// takes none, so there it is Stalled `InvalidSpec`. Sent once: immutable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q.name == p.name))").message("each property name may appear only once"))]
    pub properties: Vec<NamedValue>,
    /// What deleting this resource does to the installed connector: `Orphan` (default)
    /// leaves it in the account; `Delete` deletes it first (`DELETE
    /// /v1.0/account/connectors/{id}`; a finalizer holds the resource until it is gone), on a
    /// partner with `cyclrAPI: V1` only: on a `Partner` one the install is Stalled
    /// `InvalidSpec`. Set `Orphan` on a deleting resource to let it go without the delete.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The connector's credentials, from a Secret in the install's namespace labelled
/// `cyclr.com/credentials: "true"`. At most one form.
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

/// Where an API key is kept.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeySecretRef {
    /// The Secret's name, in the install's namespace.
    #[schemars(length(max = 253))]
    #[x_kube(validation = super::object_name())]
    pub name: String,
    /// The data key holding the API key; default `apiKey`.
    #[serde(default = "default_api_key_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = super::secret_key())]
    pub key: String,
}

fn default_api_key_key() -> String {
    "apiKey".into()
}

/// Where a username and password are kept.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuthSecretRef {
    /// The Secret's name, in the install's namespace.
    #[schemars(length(max = 253))]
    #[x_kube(validation = super::object_name())]
    pub name: String,
    /// The data key holding the username; default `username`.
    #[serde(default = "default_username_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = super::secret_key())]
    pub username_key: String,
    /// The data key holding the password; default `password`.
    #[serde(default = "default_password_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = super::secret_key())]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

/// What the operator last observed of the install and did about it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CyclrConnectorInstallStatus {
    /// kstatus conditions `Ready`, `Reconciling` and `Stalled`; see docs/operator.md for
    /// the reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Cyclr account id the connector is installed into (an opaque string).
    #[serde(default, rename = "accountID", skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// When the install was made (or found), RFC 3339; the operator never installs again after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<Time>,
    /// The account connector's id in Cyclr: from the v1.0 install's answer on a `V1`
    /// partner (what re-authentication and delete address), else when the v1.0
    /// installed-connector list shows it.
    #[serde(default, rename = "installedConnectorID", skip_serializing_if = "Option::is_none")]
    pub installed_connector_id: Option<String>,
    /// A keyed digest (HMAC-SHA256, keyed from the partner's client secret) of the
    /// credentials the connector was installed with, `v1:<key id>:<mac>`: it shows a
    /// credentials change the Partner API cannot apply, without revealing any value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_digest: Option<String>,
    /// Set while an Install Connector is in flight or its outcome is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_install: Option<PendingWrite>,
}

impl CyclrConnectorInstall {
    /// The installed connector's name in Cyclr: `spec.installedName`, else `metadata.name`.
    pub fn installed_name(&self) -> String {
        self.spec
            .installed_name
            .clone()
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }

    /// The Secret names this install reads: its credentials', then its properties', for
    /// the Secret watch.
    pub fn secret_names(&self) -> Vec<&str> {
        let properties = self.spec.properties.iter().filter_map(|p| p.value_from.as_ref());
        self.credentials_secret_names()
            .into_iter()
            .chain(properties.map(|p| p.secret_key_ref.name.as_str()))
            .collect()
    }

    /// The Secret names of its credentials (`spec.auth`).
    pub fn credentials_secret_names(&self) -> Vec<&str> {
        let Some(auth) = &self.spec.auth else { return vec![] };
        auth.api_key_secret_ref
            .iter()
            .map(|r| r.name.as_str())
            .chain(auth.basic_auth_secret_ref.iter().map(|r| r.name.as_str()))
            .collect()
    }
}
