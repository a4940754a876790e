//! The operator's custom resources (group `cyclr.com`, version `v1alpha1`) and what they share.

mod account;
mod connector_install;
mod cycle;
mod partner;
mod reference;
mod validation;

pub use account::*;
pub use connector_install::*;
pub use cycle::*;
pub use driver::PendingWrite;
pub use driver::conditions::*;
pub use driver::{annotation, is_paused};
pub use partner::*;
pub use reference::*;
pub use validation::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::Rule;
use kube::{CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// The API group of the operator's resources.
pub const GROUP: &str = "cyclr.com";

/// Annotations the operator reads or writes.
pub mod annotations {
    pub use driver::annotations::PAUSED;
    /// The Cyclr account id (an opaque string), kept in metadata too (like Crossplane's external name) so a
    /// restore without status, or a status edit, never leads to a second create.
    pub const ACCOUNT_ID: &str = "cyclr.com/account-id";
    /// The Cyclr account a connector install installed into, kept in metadata for the same
    /// reason: after a restore without status the install is found again, not refused as a
    /// name in use nor installed twice.
    pub const INSTALLED_IN_ACCOUNT: &str = "cyclr.com/installed-in-account";
    /// The Cyclr cycle id a CyclrCycle's template install made, kept in metadata for the
    /// same reason: after a restore without status the cycle is found again, never
    /// installed twice.
    pub const CYCLE_ID: &str = "cyclr.com/cycle-id";
}

/// The finalizer on a CyclrAccount whose deletion deletes its Cyclr account
/// (`deletionPolicy: Delete` on a `V1` partner).
pub const ACCOUNT_FINALIZER: &str = "cyclr.com/account";

/// The finalizer on a CyclrConnectorInstall whose deletion deletes its account connector
/// (`deletionPolicy: Delete` on a `V1` partner).
pub const INSTALL_FINALIZER: &str = "cyclr.com/connector-install";

/// The finalizer on a CyclrCycle whose deletion deletes its Cyclr cycle
/// (`deletionPolicy: Delete`).
pub const CYCLE_FINALIZER: &str = "cyclr.com/cycle";

/// The operator's field manager for server-side apply and its Event reporter name.
pub const MANAGER: &str = "cyclr-operator";

/// All CRDs, in the order `cyclr-operator crd` prints them.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        CyclrPartner::crd(),
        CyclrAccount::crd(),
        CyclrConnectorInstall::crd(),
        CyclrCycle::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    all_crds()
        .iter()
        .map(|crd| format!("---\n{}", serde_yaml::to_string(crd).expect("a CRD always serialises")))
        .collect()
}

/// A reference to an object of a known kind by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
pub struct NameRef {
    /// The object's `metadata.name`: a DNS subdomain (lower-case letters, digits, `-` and
    /// `.`; at most 253 characters).
    #[schemars(length(max = 253))]
    #[x_kube(validation = object_name())]
    pub name: String,
}

/// A value Cyclr takes by name (an account connector's property, a cycle's variable): the
/// value itself, or a key of a labelled Secret to read it from; exactly one of the two.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("has(self.value) != has(self.valueFrom)").message("takes exactly one of value and valueFrom"))]
#[serde(rename_all = "camelCase")]
pub struct NamedValue {
    /// The name, as Cyclr spells it (at most 255 characters).
    #[schemars(length(max = 255))]
    #[x_kube(validation = trimmed())]
    pub name: String,
    /// The value, as is (at most 4096 characters). Anyone who can read the resource reads
    /// it: a secret belongs in `valueFrom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
    /// Where to read the value instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ValueSource>,
}

/// Where a [`NamedValue`]'s value is read from.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueSource {
    /// A key of a Secret in the resource's namespace labelled `cyclr.com/credentials:
    /// "true"`.
    pub secret_key_ref: SecretKeySelector,
}

/// A key of a Secret in the resource's namespace.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretKeySelector {
    /// The Secret's name.
    #[schemars(length(max = 253))]
    #[x_kube(validation = object_name())]
    pub name: String,
    /// The data key holding the value.
    #[schemars(length(max = 253))]
    #[x_kube(validation = secret_key())]
    pub key: String,
}

// Admission rules shared by several fields. The apiserver prefixes each message with the
// field's path (`spec.partnerRef.name: Invalid value: ...`), so the messages say only why.
// Every string also has a maxLength, which keeps the CEL cost estimate low.

/// CEL: a Kubernetes object name (DNS subdomain), as `metadata.name` must be.
fn object_name() -> Rule {
    Rule::new(r"self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
        .message("must be the name of a Kubernetes object: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit")
}

/// CEL: a key of a Secret's data.
fn secret_key() -> Rule {
    Rule::new("self.matches('^[-._a-zA-Z0-9]+$')")
        .message("must be a Secret data key: letters, digits, '-', '_' and '.'")
}

/// CEL: a name or id Cyclr stores as given: not empty, no leading or trailing whitespace.
fn trimmed() -> Rule {
    Rule::new("self.size() > 0 && self.trim() == self")
        .message("must not be empty, whitespace only, or start or end with whitespace")
}
