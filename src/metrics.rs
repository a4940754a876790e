//! Prometheus metrics (OpenMetrics text on `/metrics`), all prefixed `cyclr_`. Kept apart
//! from the controllers, which only call the recording methods. Labels are bounded: kind,
//! partner, endpoint, status, condition, and namespace/name for per-account usage (removed
//! when the resource goes); never an id or other unbounded value.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use cyclr::client::{CallObserver, CallRecord};

use crate::resources::{READY, RECONCILING, STALLED, condition};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    partner: String,
    endpoint: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    partner: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    kind: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartnerLabels {
    partner: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    kind: String,
    condition: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabels {
    namespace: String,
    name: String,
}

/// A condition's (type, status), without an allocation for the kstatus words.
type ConditionStatus = (Cow<'static, str>, Cow<'static, str>);

/// `word` as a static string when it is one of the kstatus words every status carries
/// (10,000 resources would otherwise hold 60,000 copies of them).
fn word(word: &str) -> Cow<'static, str> {
    [READY, RECONCILING, STALLED, "True", "False", "Unknown"]
        .into_iter()
        .find(|known| *known == word)
        .map_or_else(|| Cow::Owned(word.to_owned()), Cow::Borrowed)
}

/// What `status_computed` remembers of one resource.
struct Counted {
    conditions: Box<[ConditionStatus]>,
    /// Ready=True seen at least once by this process (or already when first seen).
    was_ready: bool,
}

/// A resource's identity across renames and re-creations: its uid, else namespace/name.
fn resource_key(meta: &ObjectMeta) -> String {
    meta.uid.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        )
    })
}

/// The operator's metrics registry and every series in it; shared (`Arc`) by the HTTP server,
/// the Cyclr clients' observers and the reconcilers.
pub struct Metrics {
    registry: Registry,
    cyclr_requests: Family<CallLabels, Counter>,
    cyclr_latency: Family<EndpointLabels, Histogram>,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_duration: Family<KindLabels, Histogram>,
    kubernetes_writes: Family<KindLabels, Counter>,
    account_tasks: Family<AccountLabels, Gauge>,
    account_cycles: Family<AccountLabels, Gauge>,
    cyclr_wait: Family<PartnerLabels, Histogram>,
    retry_after_holds: Family<PartnerLabels, Counter>,
    token_renewals: Family<PartnerLabels, Counter>,
    time_to_ready: Family<KindLabels, Histogram>,
    resources: Family<ConditionLabels, Gauge>,
    /// Each resource's conditions as last counted in `resources`, by kind, then uid.
    counted: Mutex<HashMap<String, HashMap<String, Counted>>>,
    snapshot_size: Family<PartnerLabels, Gauge>,
    snapshot_time: Family<PartnerLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cyclr");
        let cyclr_requests = Family::<CallLabels, Counter>::default();
        registry.register(
            "api_requests",
            "HTTP requests sent to the Cyclr API",
            cyclr_requests.clone(),
        );
        let cyclr_latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        registry.register(
            "api_request_duration_seconds",
            "Cyclr API request latency",
            cyclr_latency.clone(),
        );
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "operator_reconciles",
            "Reconciles by kind and result",
            reconciles.clone(),
        );
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register(
            "operator_reconcile_duration_seconds",
            "Reconcile duration",
            reconcile_duration.clone(),
        );
        let kubernetes_writes = Family::<KindLabels, Counter>::default();
        registry.register(
            "operator_kubernetes_writes",
            "Writes to the Kubernetes API",
            kubernetes_writes.clone(),
        );
        let account_tasks = Family::<AccountLabels, Gauge>::default();
        registry.register(
            "account_tasks",
            "Tasks used by a Cyclr account in its billing period",
            account_tasks.clone(),
        );
        let account_cycles = Family::<AccountLabels, Gauge>::default();
        registry.register(
            "account_cycles",
            "Cycles used by a Cyclr account in its billing period",
            account_cycles.clone(),
        );
        let cyclr_wait = Family::<PartnerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register_with_unit(
            "api_wait",
            "Time a Cyclr request waited before it was sent: the partner's rate limiter and any Retry-After hold",
            Unit::Seconds,
            cyclr_wait.clone(),
        );
        let retry_after_holds = Family::<PartnerLabels, Counter>::default();
        registry.register(
            "api_retry_after_holds",
            "429 answers from Cyclr, each holding back every request of the partner for its Retry-After",
            retry_after_holds.clone(),
        );
        let token_renewals = Family::<PartnerLabels, Counter>::default();
        registry.register(
            "api_token_renewals",
            "OAuth tokens obtained from Cyclr",
            token_renewals.clone(),
        );
        let time_to_ready = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.25, 2.0, 16))
        });
        registry.register_with_unit(
            "operator_time_to_first_ready",
            "Time from a resource's creation to its first Ready=True",
            Unit::Seconds,
            time_to_ready.clone(),
        );
        let resources = Family::<ConditionLabels, Gauge>::default();
        registry.register(
            "operator_resources",
            "Resources served by this operator, by kind and by the status of each condition type",
            resources.clone(),
        );
        let snapshot_size = Family::<PartnerLabels, Gauge>::default();
        registry.register(
            "partner_account_snapshot_accounts",
            "Accounts in the partner's last List Accounts snapshot",
            snapshot_size.clone(),
        );
        let snapshot_time = Family::<PartnerLabels, Gauge>::default();
        registry.register_with_unit(
            "partner_account_snapshot_timestamp",
            "When the partner's last List Accounts snapshot was taken (Unix time; age = time() - this)",
            Unit::Seconds,
            snapshot_time.clone(),
        );
        Metrics {
            registry,
            cyclr_wait,
            retry_after_holds,
            token_renewals,
            time_to_ready,
            resources,
            counted: Mutex::default(),
            snapshot_size,
            snapshot_time,
            cyclr_requests,
            cyclr_latency,
            reconciles,
            reconcile_duration,
            kubernetes_writes,
            account_tasks,
            account_cycles,
        }
    }
}

impl Metrics {
    /// The text exposition format served on `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn reconciled(&self, kind: &str, ok: bool, took: Duration) {
        let result = if ok { "success" } else { "error" };
        self.reconciles
            .get_or_create(&ReconcileLabels {
                kind: kind.into(),
                result: result.into(),
            })
            .inc();
        self.reconcile_duration
            .get_or_create(&KindLabels { kind: kind.into() })
            .observe(took.as_secs_f64());
    }

    pub fn kubernetes_write(&self, kind: &str) {
        self.kubernetes_writes
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// Usage gauges of one account, labelled by its resource only (bounded cardinality).
    pub fn account_usage(&self, namespace: &str, name: &str, tasks: u64, cycles: u64) {
        let labels = AccountLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.account_tasks.get_or_create(&labels).set(tasks as i64);
        self.account_cycles.get_or_create(&labels).set(cycles as i64);
    }

    /// Drops an account's usage series (the resource is gone).
    pub fn forget_account(&self, namespace: &str, name: &str) {
        let labels = AccountLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.account_tasks.remove(&labels);
        self.account_cycles.remove(&labels);
    }

    /// What a reconcile's status tells the metrics; the driver calls it for every status it
    /// computes, written or not. Counts the resource's conditions in
    /// `cyclr_operator_resources` (replacing its previous count), and when `Ready` turns True
    /// for the first time this process sees, observes the time since `creationTimestamp`. A
    /// resource first seen already Ready (an operator restart) is never observed.
    pub fn status_computed(&self, kind: &str, meta: &ObjectMeta, previous: &[Condition], next: &[Condition]) {
        let is_ready = |conditions: &[Condition]| condition(conditions, READY).is_some_and(|c| c.status == "True");
        let now: Box<[ConditionStatus]> = next.iter().map(|c| (word(&c.type_), word(&c.status))).collect();
        let (before, first_ready) = {
            let mut counted = self.counted.lock().expect("lock");
            // Looked up by `&str` first: no allocation for the kind on every reconcile.
            if !counted.contains_key(kind) {
                counted.insert(kind.to_owned(), HashMap::new());
            }
            let entry = counted
                .get_mut(kind)
                .expect("inserted above")
                .entry(resource_key(meta))
                .or_insert_with(|| Counted {
                    conditions: Box::default(),
                    was_ready: is_ready(previous),
                });
            let first_ready = is_ready(next) && !entry.was_ready;
            entry.was_ready |= is_ready(next);
            (std::mem::replace(&mut entry.conditions, now.clone()), first_ready)
        };
        self.recount(kind, before, now);
        if first_ready && let Some(created) = &meta.creation_timestamp {
            let since = Timestamp::now().duration_since(created.0);
            self.time_to_ready
                .get_or_create(&KindLabels { kind: kind.into() })
                .observe(since.as_secs_f64().max(0.0));
        }
    }

    /// Stops counting a resource (its watch reported it deleted).
    pub fn forget_resource(&self, kind: &str, meta: &ObjectMeta) {
        let before = self
            .counted
            .lock()
            .expect("lock")
            .get_mut(kind)
            .and_then(|of_kind| of_kind.remove(&resource_key(meta)));
        self.recount(kind, before.map(|c| c.conditions).unwrap_or_default(), Box::default());
    }

    fn recount(&self, kind: &str, before: Box<[ConditionStatus]>, now: Box<[ConditionStatus]>) {
        let gauge = |(condition, status): &ConditionStatus| {
            self.resources.get_or_create(&ConditionLabels {
                kind: kind.into(),
                condition: condition.to_string(),
                status: status.to_string(),
            })
        };
        for pair in &before {
            gauge(pair).dec();
        }
        for pair in &now {
            gauge(pair).inc();
        }
    }

    /// The partner's List Accounts snapshot: how many accounts, and when it was taken.
    pub fn account_snapshot(&self, partner: &str, accounts: usize, taken_at: chrono::DateTime<chrono::Utc>) {
        let labels = PartnerLabels {
            partner: partner.into(),
        };
        self.snapshot_size.get_or_create(&labels).set(accounts as i64);
        self.snapshot_time.get_or_create(&labels).set(taken_at.timestamp());
    }

    /// Drops a partner's series (the CyclrPartner is gone).
    pub fn forget_partner(&self, partner: &str) {
        let labels = PartnerLabels {
            partner: partner.into(),
        };
        self.snapshot_size.remove(&labels);
        self.snapshot_time.remove(&labels);
        self.cyclr_wait.remove(&labels);
        self.retry_after_holds.remove(&labels);
        self.token_renewals.remove(&labels);
    }

    /// A [`CallObserver`] that records one partner's Cyclr calls.
    pub fn cyclr_observer(self: &Arc<Self>, partner: &str) -> Arc<dyn CallObserver> {
        Arc::new(PartnerCalls {
            partner: partner.to_string(),
            metrics: self.clone(),
        })
    }
}

struct PartnerCalls {
    partner: String,
    metrics: Arc<Metrics>,
}

impl CallObserver for PartnerCalls {
    fn observe(&self, call: &CallRecord) {
        let status = call.status.map(|s| s.to_string()).unwrap_or_else(|| "error".into());
        let m = &self.metrics;
        m.cyclr_requests
            .get_or_create(&CallLabels {
                partner: self.partner.clone(),
                endpoint: call.endpoint.into(),
                status,
            })
            .inc();
        m.cyclr_latency
            .get_or_create(&EndpointLabels {
                partner: self.partner.clone(),
                endpoint: call.endpoint.into(),
            })
            .observe(call.latency.as_secs_f64());
        let partner = PartnerLabels {
            partner: self.partner.clone(),
        };
        m.cyclr_wait.get_or_create(&partner).observe(call.waited.as_secs_f64());
        match call.status {
            Some(429) => m.retry_after_holds.get_or_create(&partner).inc(),
            Some(200..=299) if call.endpoint == "oauth_token" => m.token_renewals.get_or_create(&partner).inc(),
            _ => 0,
        };
    }
}
