use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{NameRef, PendingWrite};

/// A Cyclr account, created or adopted by the operator.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cyclr.com",
    version = "v1alpha1",
    kind = "CyclrAccount",
    namespaced,
    shortname = "cya",
    category = "cyclr",
    status = "CyclrAccountStatus",
    printcolumn = r#"{"name":"Account-ID","type":"string","jsonPath":".status.accountId"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Plan","type":"integer","jsonPath":".status.pricePlanId"}"#,
    printcolumn = r#"{"name":"Tasks","type":"integer","jsonPath":".status.usage.taskCount"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!has(oldSelf.accountId) || (has(self.accountId) && self.accountId == oldSelf.accountId)").message("accountId is immutable once set"))]
#[x_kube(validation = Rule::new("self.managementPolicy != 'ObserveOnly' || has(self.accountId)").message("managementPolicy ObserveOnly needs spec.accountId: the operator never creates an account it only observes"))]
#[x_kube(validation = Rule::new("self.deletionPolicy != 'Delete'").message("deletionPolicy Delete is not supported: the Cyclr Partner API cannot delete accounts; use Orphan"))]
#[serde(rename_all = "camelCase")]
pub struct CyclrAccountSpec {
    /// The CyclrPartner this account belongs to.
    #[serde(default = "default_partner_ref")]
    pub partner_ref: NameRef,
    /// The account name in Cyclr; defaults to `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// An IANA time zone name such as `Europe/London`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(UTC|GMT|[A-Z][A-Za-z_]+(/[A-Za-z0-9_+\-]+){1,2})$"))]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_plan: Option<PricePlanRef>,
    /// `2017-03-09T16:23:08` (UTC) or a date `2017-03-09`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?Z?)?$"))]
    pub next_bill_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_info: Option<String>,
    /// Adopt this existing Cyclr account instead of creating one. Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub account_id: Option<String>,
    #[serde(default)]
    pub management_policy: ManagementPolicy,
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    #[serde(default)]
    pub usage: UsageSpec,
}

fn default_partner_ref() -> NameRef {
    NameRef { name: "default".into() }
}

/// A price plan by id or by name (resolved through Get Price Plans).
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("has(self.id) != has(self.name)").message("pricePlan needs exactly one of id or name"))]
pub struct PricePlanRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub name: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ManagementPolicy {
    /// Create, adopt and update the account.
    #[default]
    Full,
    /// Read and report only; never write to Cyclr.
    ObserveOnly,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Deleting the resource leaves the Cyclr account as it is.
    #[default]
    Orphan,
    /// Delete the Cyclr account too. Needs an API that can delete accounts.
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UsageSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for UsageSpec {
    fn default() -> Self {
        UsageSpec { enabled: true }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CyclrAccountStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_plan_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_bill_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_bill_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageStatus>,
    /// When the operator last changed something, in Cyclr or in this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// Set while an Create Account is in flight or its outcome is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_create: Option<PendingWrite>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageStatus {
    pub task_count: u64,
    pub cycle_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_price_plan_id: Option<i64>,
}

impl CyclrAccount {
    /// The account name in Cyclr: `spec.name`, else `metadata.name`.
    pub fn cyclr_name(&self) -> String {
        self.spec
            .name
            .clone()
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }

    /// The Cyclr account id this resource stands for, once known.
    pub fn account_id(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.account_id.as_deref())
            .or(self.spec.account_id.as_deref())
    }
}
