//! Prometheus metrics. Kept apart from the controllers, which only call the recording methods.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use cyclr::client::{CallObserver, CallRecord};

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
struct AccountLabels {
    namespace: String,
    name: String,
}

pub struct Metrics {
    registry: Registry,
    cyclr_requests: Family<CallLabels, Counter>,
    cyclr_latency: Family<EndpointLabels, Histogram>,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_duration: Family<KindLabels, Histogram>,
    kubernetes_writes: Family<KindLabels, Counter>,
    account_tasks: Family<AccountLabels, Gauge>,
    account_cycles: Family<AccountLabels, Gauge>,
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
        Metrics {
            registry,
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
    }
}
