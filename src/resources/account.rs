use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Rule;
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
    doc = "A Cyclr account of a CyclrPartner, created through the Cyclr Partner API (or adopted with spec.accountID) and kept as the spec says. Status holds its Cyclr id, price plan, usage and the kstatus conditions Ready, Reconciling and Stalled. Deleting the resource leaves the Cyclr account as it is, unless spec.deletionPolicy is Delete (on a CyclrPartner with cyclrAPI V1).",
    namespaced,
    shortname = "cya",
    category = "cyclr",
    status = "CyclrAccountStatus",
    printcolumn = r#"{"name":"Account-ID","type":"string","jsonPath":".status.accountID"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Plan","type":"integer","jsonPath":".status.pricePlanID"}"#,
    printcolumn = r#"{"name":"Tasks","type":"integer","jsonPath":".status.usage.taskCount"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.accountID) == has(oldSelf.accountID) && (!has(self.accountID) || self.accountID == oldSelf.accountID)").field_path(".accountID").message("accountID can only be set when the resource is created: it cannot be added, changed or removed later (create a new resource to adopt another account)"))]
#[x_kube(validation = Rule::new("self.managementPolicy != 'ObserveOnly' || has(self.accountID)").field_path(".managementPolicy").message("managementPolicy ObserveOnly needs spec.accountID: the operator never creates an account it only observes"))]
#[serde(rename_all = "camelCase")]
pub struct CyclrAccountSpec {
    /// The cluster-scoped CyclrPartner this account belongs to; `default` when omitted.
    /// Immutable: an account cannot move to another partner.
    #[serde(default = "default_partner_ref")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("partnerRef is immutable: an account cannot move to another partner; create a new resource instead"))]
    pub partner_ref: NameRef,
    /// The account name in Cyclr (at most 255 characters, no leading or trailing
    /// whitespace); defaults to `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    #[x_kube(validation = super::trimmed())]
    pub name: Option<String>,
    /// Free text shown in the Cyclr console (at most 1000 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    pub description: Option<String>,
    /// An IANA time zone name such as `Europe/London`, `CET`, `Etc/GMT+5` or `UTC` (at most
    /// 64 characters). Admission checks only the characters IANA names are made of (letters,
    /// digits, `_`, `-`, `+`, parts separated by `/`); the operator checks the name against
    /// the time zone database before any Cyclr call (Stalled `InvalidSpec` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$"))]
    pub timezone: Option<String>,
    /// The Cyclr price plan, by `id` or by `name`; omitted: Cyclr's default plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_plan: Option<PricePlanRef>,
    /// The next bill date, in UTC: a date `2030-03-09` (midnight) or a date and time
    /// `2030-03-09T16:23:08`, with optional fraction of a second and optional `Z`. It must be
    /// a real calendar date. Sent on create and when this value changes; Cyclr moving the
    /// date forward as it bills is not undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 35),
        regex(
            pattern = r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])(T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,9})?Z?)?$"
        )
    )]
    #[x_kube(validation = real_calendar_date())]
    pub next_bill_date: Option<String>,
    /// Free text Cyclr stores with the account for audits (at most 1000 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    pub audit_info: Option<String>,
    /// Adopt this existing Cyclr account (its id, an opaque string of at most 64
    /// characters) instead of creating one; on a `V1` partner, an account that does not
    /// exist yet is created with this id. Only when the resource is created: it cannot be
    /// added, changed or removed later.
    #[serde(default, rename = "accountID", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = super::trimmed())]
    pub account_id: Option<String>,
    /// `Full` (default): create or adopt the account and keep it as the spec says.
    /// `ObserveOnly`: read and report only, never write to Cyclr (needs `accountID`).
    #[serde(default)]
    pub management_policy: ManagementPolicy,
    /// What deleting this resource does to the Cyclr account: `Orphan` (default) leaves it
    /// as it is; `Delete` deletes it first (a finalizer holds the resource until it is gone),
    /// on a partner with `cyclrAPI: V1` only: on a `Partner` one the account is Stalled
    /// `InvalidSpec`. Set `Orphan` on a deleting resource to let it go without the delete.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Whether the operator reads the account's usage into `status.usage`.
    #[serde(default)]
    pub usage: UsageSpec,
}

fn default_partner_ref() -> NameRef {
    NameRef { name: "default".into() }
}

/// CEL: the date part of `nextBillDate` (the pattern has checked its shape) exists in the
/// calendar: day 31 only in long months, 29 February only in leap years.
fn real_calendar_date() -> Rule {
    Rule::new(
        "!self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}') || int(self.substring(8, 10)) <= \
         (self.substring(5, 7) == '02' \
           ? ((int(self.substring(0, 4)) % 4 == 0 && (int(self.substring(0, 4)) % 100 != 0 || int(self.substring(0, 4)) % 400 == 0)) ? 29 : 28) \
           : (self.substring(5, 7) in ['04', '06', '09', '11'] ? 30 : 31))",
    )
    .message("must be a real calendar date (YYYY-MM-DD, e.g. no 30 February)")
}

/// A price plan by id or by name (resolved through Get Price Plans). Exactly one of the two.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("has(self.id) != has(self.name)").message("pricePlan needs exactly one of id or name"))]
pub struct PricePlanRef {
    /// The price plan's id in Cyclr, a positive integer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub id: Option<i64>,
    /// The price plan's name as the partner console shows it (at most 255 characters);
    /// the operator looks its id up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    #[x_kube(validation = super::trimmed())]
    pub name: Option<String>,
}

/// Which Cyclr writes the operator may make for an account or a cycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ManagementPolicy {
    /// Create (or install), adopt and update the Cyclr object as the spec says.
    #[default]
    Full,
    /// Read and report only; never write to Cyclr.
    ObserveOnly,
}

/// What happens to the Cyclr object (account, account connector) when its resource is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Deleting the resource leaves the Cyclr object as it is.
    #[default]
    Orphan,
    /// Delete the Cyclr object too (a v1.0 `DELETE`): a `V1` partner only.
    Delete,
}

/// Usage reporting for one account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UsageSpec {
    /// Read the account's task and cycle counts (one Get Account Usage per partner
    /// `usageInterval`); default true.
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

/// What the operator last observed of the Cyclr account and did about it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CyclrAccountStatus {
    /// The Cyclr account id this resource stands for (an opaque string), once created or adopted.
    #[serde(default, rename = "accountID", skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// kstatus conditions `Ready`, `Reconciling` and `Stalled`; see docs/operator.md for
    /// the reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The account's price plan id as Cyclr reports it.
    #[serde(default, rename = "pricePlanID", skip_serializing_if = "Option::is_none")]
    pub price_plan_id: Option<i64>,
    /// The last bill date as Cyclr reports it (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_bill_date: Option<String>,
    /// The next bill date as Cyclr reports it (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_bill_date: Option<String>,
    /// The account's usage in its current billing period, when `spec.usage.enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageStatus>,
    /// When the operator last changed something, in Cyclr or in this status (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// Set while a Create Account is in flight or its outcome is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_create: Option<PendingWrite>,
}

/// Get Account Usage for the current period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageStatus {
    /// Tasks run in the period.
    pub task_count: u64,
    /// Cycles counted in the period, as Cyclr reports them.
    pub cycle_count: u64,
    /// Start of the period (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_date: Option<String>,
    /// End of the period (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_date: Option<String>,
    /// The price plan id the usage is billed under.
    #[serde(default, rename = "currentPricePlanID", skip_serializing_if = "Option::is_none")]
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
