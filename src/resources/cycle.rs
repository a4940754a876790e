use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DeletionPolicy, ManagementPolicy, NameRef, NamedValue, PendingWrite};

/// A partner's template installed into a CyclrAccount as a cycle, kept in the state the spec
/// says.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cyclr.com",
    version = "v1alpha1",
    kind = "CyclrCycle",
    doc = "A Cyclr cycle: a partner's template installed exactly once into the CyclrAccount of the same namespace that spec.accountRef names (on a CyclrPartner with cyclrAPI V1), its variables set, and activated on spec.schedule or paused as spec.state says. Status holds the cycle's id, Cyclr's status, the account connectors it uses, its task and error counts and the kstatus conditions. Deleting the resource leaves the cycle in Cyclr, unless spec.deletionPolicy is Delete.",
    namespaced,
    shortname = "cyc",
    category = "cyclr",
    status = "CyclrCycleStatus",
    printcolumn = r#"{"name":"Account","type":"string","jsonPath":".spec.accountRef.name"}"#,
    printcolumn = r#"{"name":"Cycle-ID","type":"string","jsonPath":".status.cycleID"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".spec.state"}"#,
    printcolumn = r#"{"name":"Cyclr","type":"string","jsonPath":".status.cyclrStatus"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Tasks","type":"integer","jsonPath":".status.tasksUsed"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CyclrCycleSpec {
    /// The CyclrAccount (same namespace) to install the template into. Immutable: a cycle
    /// cannot move to another account.
    #[x_kube(validation = Rule::new("self == oldSelf").message("accountRef is immutable: a cycle cannot move to another account; create a new resource instead"))]
    pub account_ref: NameRef,
    /// The partner's template to install, by `name` or `id`. Immutable: a cycle cannot be
    /// installed from another template; create a new resource instead.
    #[x_kube(validation = Rule::new("self == oldSelf").message("templateRef is immutable: a cycle cannot change its template; create a new resource instead"))]
    pub template_ref: TemplateRef,
    /// `Active` (default): activated on `schedule`, and put back to Active when it is paused
    /// in Cyclr. `Paused`: deactivated, and kept so.
    #[serde(default)]
    pub state: CycleState,
    /// When the cycle runs once activated; omitted: Cyclr's defaults (the template's
    /// trigger, from now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<CycleSchedule>,
    /// The cycle's variables to set (by their system name), each with a value or a value
    /// read from a Secret (never shown: status keeps only a keyed digest). Setting one on an Active cycle deactivates it, sets it and
    /// activates it again, as Cyclr refuses edits to a running cycle. At most 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[x_kube(validation = Rule::new("self.all(v, self.exists_one(w, w.name == v.name))").message("each variable name may appear once"))]
    pub variables: Vec<NamedValue>,
    /// Whether a deactivation lets the transactions already queued finish (`true`, default)
    /// or stops them at once (`false`): Cyclr's `finishQueuedTransactions`.
    #[serde(default = "default_true")]
    pub finish_queued_transactions: bool,
    /// `Full` (default): install the template and keep the cycle as the spec says.
    /// `ObserveOnly`: read and report only, never write to Cyclr: Cyclr's status, connectors
    /// and counts are reported, and a cycle that differs from `state` (paused in Cyclr's
    /// console, say) is said in the Ready message and an `Observed` Event, never corrected;
    /// no install, no variables, no delete. It needs a cycle this resource installed (its
    /// `status.cycleID` or `cyclr.com/cycle-id` annotation), which admission cannot see: a
    /// resource without one is Stalled `InvalidSpec` before any Cyclr call.
    #[serde(default)]
    pub management_policy: ManagementPolicy,
    /// What deleting this resource does to the cycle: `Orphan` (default) leaves it in Cyclr
    /// as it is; `Delete` deletes it first (`DELETE /v1.0/cycles/{id}`, waiting while Cyclr
    /// shows it `DeleteScheduled`; a finalizer holds the resource until it is gone). Set
    /// `Orphan` on a deleting resource to let it go without the delete.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

fn default_true() -> bool {
    true
}

/// A template by its id or by its name (looked up in the partner's template list). Exactly
/// one of the two.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("has(self.id) != has(self.name)").message("templateRef needs exactly one of id or name"))]
pub struct TemplateRef {
    /// The template's id in Cyclr (an opaque string of at most 64 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = super::trimmed())]
    pub id: Option<String>,
    /// The template's name as the partner console shows it (at most 255 characters); it
    /// must name exactly one template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    #[x_kube(validation = super::trimmed())]
    pub name: Option<String>,
}

/// The state a cycle is kept in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CycleState {
    /// Activated on its schedule.
    #[default]
    Active,
    /// Deactivated.
    Paused,
}

/// The intervals Cyclr offers, in minutes (`PUT /v1.0/cycles/{id}/activate`).
const INTERVALS_RULE: &str = "self in [1, 5, 15, 30, 60, 120, 180, 240, 360, 480, 720, 1440, 10080]";

/// When an Active cycle runs (the body of Cyclr's activate call).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!(has(self.runOnce) && self.runOnce && has(self.interval))").message("runOnce runs the cycle once and takes no interval: set one or the other"))]
#[serde(rename_all = "camelCase")]
pub struct CycleSchedule {
    /// Minutes between runs: one of Cyclr's 1, 5, 15, 30, 60, 120, 180, 240, 360, 480, 720,
    /// 1440 and 10080. Ignored by Cyclr for a webhook-triggered cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(INTERVALS_RULE).message("must be one of Cyclr's intervals: 1, 5, 15, 30, 60, 120, 180, 240, 360, 480, 720, 1440 or 10080 minutes"))]
    pub interval: Option<u32>,
    /// When the cycle first runs (RFC 3339, e.g. `2026-01-01T00:00:00Z`); omitted: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$') && timestamp(self) > timestamp('1970-01-01T00:00:00Z')").message("must be an RFC 3339 date and time, e.g. 2026-01-01T00:00:00Z"))]
    pub start_time: Option<String>,
    /// Run once, then pause (Cyclr's `RunOnce`); takes no `interval`. Once it has run, the
    /// cycle shows Paused and is not activated again until the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_once: Option<bool>,
}

/// What the operator last observed of the cycle and did about it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CyclrCycleStatus {
    /// kstatus conditions `Ready`, `Reconciling` and `Stalled`; see docs/operator.md for
    /// the reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Cyclr account id the cycle is installed in (an opaque string).
    #[serde(default, rename = "accountID", skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// The template's id the cycle was installed from.
    #[serde(default, rename = "templateID", skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// The cycle's id in Cyclr, once installed; never installed again after.
    #[serde(default, rename = "cycleID", skip_serializing_if = "Option::is_none")]
    pub cycle_id: Option<String>,
    /// The cycle's `Status` as Cyclr last reported it (`Paused`, `Active`, `Stopped`,
    /// `DeleteScheduled`, or another value Cyclr writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cyclr_status: Option<String>,
    /// The account connectors the cycle uses (made or reused by the install).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connectors: Vec<CycleConnectorStatus>,
    /// Tasks the cycle has run, as Cyclr counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_used: Option<u64>,
    /// Transactions that failed, as Cyclr counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_count: Option<u64>,
    /// Transactions with warnings, as Cyclr counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning_count: Option<u64>,
    /// When the cycle last ran without error (RFC 3339), as Cyclr reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_run: Option<String>,
    /// A keyed digest (HMAC-SHA256, keyed from the partner's client secret) of the variables
    /// last set, names and values: it shows a change without revealing any value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variables_digest: Option<String>,
    /// When the cycle was installed (or found after a lost answer), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<Time>,
    /// The schedule sent with the last activation Cyclr answered (Cyclr does not show a
    /// cycle's schedule): an Active cycle whose `spec.schedule` differs is deactivated and
    /// activated again with the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_schedule: Option<CycleSchedule>,
    /// The `metadata.generation` whose run-once activation was sent: a cycle that ran once
    /// is not activated again until the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_once_generation: Option<i64>,
    /// Set while a template install is in flight or its outcome is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_install: Option<PendingWrite>,
}

/// An account connector a cycle uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CycleConnectorStatus {
    /// The connector's name in the library.
    pub name: String,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The account connector's id (what `kubectl cyclr auth` takes).
    #[serde(default, rename = "accountConnectorID", skip_serializing_if = "Option::is_none")]
    pub account_connector_id: Option<String>,
    /// Whether Cyclr says it is authenticated.
    pub authenticated: bool,
}

impl CyclrCycle {
    /// The Secret names this cycle's variables read, for the Secret watch.
    pub fn secret_names(&self) -> Vec<&str> {
        self.spec
            .variables
            .iter()
            .filter_map(|v| v.value_from.as_ref())
            .map(|f| f.secret_key_ref.name.as_str())
            .collect()
    }

    /// The Cyclr cycle id this resource stands for, once known: from status, else from the
    /// annotation written after the install (a restore without status).
    pub fn cycle_id(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.cycle_id.as_deref())
            .or_else(|| super::annotation(&self.metadata, super::annotations::CYCLE_ID))
    }
}
