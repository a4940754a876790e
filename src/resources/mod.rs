//! The operator's custom resources (group `cyclr.com`, version `v1alpha1`) and what they share.

mod account;
mod conditions;
mod connector_install;
mod partner;

pub use account::*;
pub use conditions::*;
pub use connector_install::*;
pub use partner::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "cyclr.com";

/// Annotations the operator reads or writes.
pub mod annotations {
    /// `"true"` stops every Cyclr call for the resource.
    pub const PAUSED: &str = "cyclr.com/paused";
    /// Set (to the attempt's RFC 3339 time) before an account create is sent, dropped once
    /// the id is stored: finding it without an id means a create may have happened.
    pub const CREATE_PENDING: &str = "cyclr.com/create-pending";
    /// The same protocol for connector installs.
    pub const INSTALL_PENDING: &str = "cyclr.com/install-pending";
}

/// The operator's field manager for server-side apply and its Event reporter name.
pub const MANAGER: &str = "cyclr-operator";

/// All CRDs, in the order `cyclr-operator crd` prints them.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![CyclrPartner::crd(), CyclrAccount::crd(), CyclrConnectorInstall::crd()]
}

/// The CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    all_crds()
        .iter()
        .map(|crd| format!("---\n{}", serde_yaml::to_string(crd).expect("a CRD always serialises")))
        .collect()
}

/// A reference to an object of a known kind by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NameRef {
    pub name: String,
}

/// Whether the resource is paused by annotation.
pub fn is_paused(meta: &kube::api::ObjectMeta) -> bool {
    annotation(meta, annotations::PAUSED).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

pub fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}
