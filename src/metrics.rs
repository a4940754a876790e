//! Prometheus metrics (OpenMetrics text on `/metrics`), all prefixed `cyclr_`. Kept apart
//! from the controllers, which only call the recording methods. Labels are bounded: kind,
//! partner, endpoint, status, condition, and namespace/name for per-account usage (removed
//! when the resource goes); never an id or other unbounded value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use cyclr::client::{CallObserver, CallRecord};

use crate::resources::{READY, RECONCILING, STALLED, condition};
use driver::stable_hash;

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
struct FailureLabels {
    kind: String,
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    watch: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartnerLabels {
    partner: String,
}

/// The shard a replica serves (`--shard`; empty when the operator is not sharded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    kind: String,
    condition: String,
    status: String,
}

/// Every account's usage (tasks, cycles) by `namespace/name`, encoded at each scrape as the
/// gauges `cyclr_account_tasks` and `cyclr_account_cycles`: one small entry per account,
/// where two gauge families would hold its labels twice (about 300 bytes).
#[derive(Debug, Default)]
struct AccountUsage(Mutex<HashMap<Box<str>, [u64; 2]>>);

impl Collector for AccountUsage {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let usage = self.0.lock().expect("lock");
        // Sorted, so a scrape lists series in a stable order.
        let mut accounts: Vec<_> = usage.iter().collect();
        accounts.sort_unstable_by_key(|(key, _)| *key);
        let gauges = [
            ("account_tasks", "Tasks used by a Cyclr account in its billing period"),
            ("account_cycles", "Cycles used by a Cyclr account in its billing period"),
        ];
        for (i, (name, help)) in gauges.into_iter().enumerate() {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (key, values) in &accounts {
                let (namespace, name) = key.split_once('/').unwrap_or(("", key));
                let labels = [("namespace", namespace), ("name", name)];
                ConstGauge::new(values[i]).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The kstatus conditions `cyclr_operator_resources` counts, and the statuses each can have.
const COUNTED_TYPES: [&str; 3] = [READY, RECONCILING, STALLED];
const COUNTED_STATUSES: [&str; 3] = ["True", "False", "Unknown"];

/// What `status_computed` remembers of one resource, in one byte: for each of
/// `COUNTED_TYPES` two bits (0 absent, else 1 + its index in `COUNTED_STATUSES`), and bit 7
/// for "Ready=True seen at least once by this process (or already when first seen)".
/// 10,000 resources cost 160 KiB here, not 2.5 MiB of strings.
#[derive(Clone, Copy, Default, PartialEq)]
struct Counted(u8);

impl Counted {
    const WAS_READY: u8 = 1 << 7;

    fn of(conditions: &[Condition]) -> Self {
        let mut packed = 0;
        for (i, type_) in COUNTED_TYPES.iter().enumerate() {
            if let Some(c) = condition(conditions, type_)
                && let Some(s) = COUNTED_STATUSES.iter().position(|s| *s == c.status)
            {
                packed |= ((s as u8) + 1) << (2 * i);
            }
        }
        Counted(packed)
    }

    /// The status of `COUNTED_TYPES[i]`, if present.
    fn status(self, i: usize) -> Option<&'static str> {
        let code = (self.0 >> (2 * i)) & 0b11;
        (code != 0).then(|| COUNTED_STATUSES[usize::from(code) - 1])
    }

    fn ready(self) -> bool {
        self.status(0) == Some("True")
    }

    fn was_ready(self) -> bool {
        self.0 & Self::WAS_READY != 0
    }

    fn with_was_ready(self, was_ready: bool) -> Self {
        Counted(if was_ready {
            self.0 | Self::WAS_READY
        } else {
            self.0 & !Self::WAS_READY
        })
    }
}

/// A resource's identity across renames and re-creations, hashed: its uid, else
/// namespace/name.
fn resource_key(meta: &ObjectMeta) -> u64 {
    match &meta.uid {
        Some(uid) => stable_hash(uid.as_str()),
        None => stable_hash(&(&meta.namespace, &meta.name)),
    }
}

/// The operator's metrics registry and every series in it; shared (`Arc`) by the HTTP server,
/// the Cyclr clients' observers and the reconcilers.
pub struct Metrics {
    registry: Registry,
    cyclr_requests: Family<CallLabels, Counter>,
    cyclr_latency: Family<EndpointLabels, Histogram>,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_failures: Family<FailureLabels, Counter>,
    orphaned: Family<KindLabels, Counter>,
    leader: Family<ShardLabels, Gauge>,
    watch_failing: Family<WatchLabels, Gauge>,
    reconcile_duration: Family<KindLabels, Histogram>,
    kubernetes_writes: Family<KindLabels, Counter>,
    account_usage: Arc<AccountUsage>,
    /// The length of the last scrape's text, to size the next one's buffer.
    last_scrape: std::sync::atomic::AtomicUsize,
    cyclr_wait: Family<PartnerLabels, Histogram>,
    retry_after_holds: Family<PartnerLabels, Counter>,
    token_renewals: Family<PartnerLabels, Counter>,
    time_to_ready: Family<KindLabels, Histogram>,
    resources: Family<ConditionLabels, Gauge>,
    /// Each resource's conditions as last counted in `resources`, by kind, then uid.
    counted: Mutex<HashMap<String, HashMap<u64, Counted>>>,
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
            "Reconciles by kind and result (success or error)",
            reconciles.clone(),
        );
        let reconcile_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "operator_reconcile_failures",
            "Failed reconciles by kind and category (cyclr_transient, cyclr_terminal, kubernetes)",
            reconcile_failures.clone(),
        );
        let leader = Family::<ShardLabels, Gauge>::default();
        registry.register(
            "operator_leader",
            "1 while this replica reconciles its shard (it holds the shard's Lease, or runs without leader election)",
            leader.clone(),
        );
        let watch_failing = Family::<WatchLabels, Gauge>::default();
        registry.register(
            "operator_watch_failing",
            "1 while a watch has been failing for longer than its grace (/readyz says why)",
            watch_failing.clone(),
        );
        let orphaned = Family::<KindLabels, Counter>::default();
        registry.register(
            "operator_orphaned",
            "Cyclr objects made for resources deleted while the write was in flight (see the partner's Warning Events)",
            orphaned.clone(),
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
        let account_usage = Arc::new(AccountUsage::default());
        registry.register_collector(Box::new(account_usage.clone()));
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
            reconcile_failures,
            orphaned,
            leader,
            watch_failing,
            reconcile_duration,
            kubernetes_writes,
            account_usage,
            last_scrape: Default::default(),
        }
    }
}

impl Metrics {
    /// The text exposition format served on `/metrics`.
    pub fn encode(&self) -> String {
        use std::sync::atomic::Ordering;
        // Sized from the last scrape: with 10,000 accounts the text is about 2 MB, and a
        // buffer grown by doubling would copy it several times and hold up to twice that.
        let last = self.last_scrape.load(Ordering::Relaxed);
        let mut out = String::with_capacity(last + last / 16);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        self.last_scrape.store(out.len(), Ordering::Relaxed);
        out
    }

    /// Whether this replica reconciles `shard` (`--shard`; `None`: not sharded) now: it
    /// leads, or runs without leader election. Set at start too, so a standby reports 0.
    pub fn set_leader(&self, shard: Option<&str>, leading: bool) {
        let labels = ShardLabels {
            shard: shard.unwrap_or_default().to_string(),
        };
        self.leader.get_or_create(&labels).set(i64::from(leading));
    }

    /// Each watch, and whether it has been failing past its grace (from the readiness).
    pub fn set_watches(&self, watches: &[(String, bool)]) {
        for (watch, failing) in watches {
            self.watch_failing
                .get_or_create(&WatchLabels { watch: watch.clone() })
                .set(i64::from(*failing));
        }
    }

    /// Usage gauges of one account, labelled by its resource only (bounded cardinality).
    pub fn account_usage(&self, namespace: &str, name: &str, tasks: u64, cycles: u64) {
        let key = format!("{namespace}/{name}");
        let mut usage = self.account_usage.0.lock().expect("lock");
        match usage.get_mut(key.as_str()) {
            Some(values) => *values = [tasks, cycles],
            None => {
                usage.insert(key.into_boxed_str(), [tasks, cycles]);
            }
        }
    }

    /// Drops an account's usage series (the resource is gone).
    pub fn forget_account(&self, namespace: &str, name: &str) {
        let key = format!("{namespace}/{name}");
        self.account_usage.0.lock().expect("lock").remove(key.as_str());
    }

    /// Moves the resource's count from its `before` conditions to its `now` ones; a reconcile
    /// that changed no condition touches no series.
    fn recount(&self, kind: &str, before: Option<Counted>, now: Option<Counted>) {
        for (i, condition) in COUNTED_TYPES.iter().enumerate() {
            let (was, is) = (before.and_then(|c| c.status(i)), now.and_then(|c| c.status(i)));
            if was == is {
                continue;
            }
            let gauge = |status: &str| {
                self.resources.get_or_create(&ConditionLabels {
                    kind: kind.into(),
                    condition: (*condition).into(),
                    status: status.into(),
                })
            };
            if let Some(status) = was {
                gauge(status).dec();
            }
            if let Some(status) = is {
                gauge(status).inc();
            }
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

/// The driver's series.
impl driver::Metrics for Metrics {
    fn reconciled(&self, kind: &str, failure: Option<&'static str>, took: Duration) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                kind: kind.into(),
                result: if failure.is_none() { "success" } else { "error" }.into(),
            })
            .inc();
        if let Some(category) = failure {
            self.reconcile_failures
                .get_or_create(&FailureLabels {
                    kind: kind.into(),
                    category: category.into(),
                })
                .inc();
        }
        self.reconcile_duration
            .get_or_create(&KindLabels { kind: kind.into() })
            .observe(took.as_secs_f64());
    }

    fn kubernetes_write(&self, kind: &str) {
        self.kubernetes_writes
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// What a reconcile's status tells the metrics; the driver calls it for every status it
    /// computes, written or not. Counts the resource's conditions in
    /// `cyclr_operator_resources` (replacing its previous count), and when `Ready` turns True
    /// for the first time this process sees, observes the time since `creationTimestamp`. A
    /// resource first seen already Ready (an operator restart) is never observed.
    fn status_computed(&self, kind: &str, meta: &ObjectMeta, previous: &[Condition], next: &[Condition]) {
        let now = Counted::of(next);
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
                .or_insert_with(|| Counted::default().with_was_ready(Counted::of(previous).ready()));
            let before = *entry;
            *entry = now.with_was_ready(before.was_ready() || now.ready());
            (before, now.ready() && !before.was_ready())
        };
        self.recount(kind, Some(before), Some(now));
        if first_ready && let Some(created) = &meta.creation_timestamp {
            let since = Timestamp::now().duration_since(created.0);
            self.time_to_ready
                .get_or_create(&KindLabels { kind: kind.into() })
                .observe(since.as_secs_f64().max(0.0));
        }
    }

    /// Stops counting a resource (its watch reported it deleted).
    fn forget(&self, kind: &str, meta: &ObjectMeta) {
        let before = self
            .counted
            .lock()
            .expect("lock")
            .get_mut(kind)
            .and_then(|of_kind| of_kind.remove(&resource_key(meta)));
        self.recount(kind, before, None);
    }

    fn orphaned(&self, kind: &str) {
        self.orphaned.get_or_create(&KindLabels { kind: kind.into() }).inc();
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use driver::Metrics as _;

    fn conditions(ready: &str, reconciling: &str) -> Vec<Condition> {
        [(READY, ready), (RECONCILING, reconciling), (STALLED, "False")]
            .map(|(type_, status)| Condition {
                type_: type_.into(),
                status: status.into(),
                reason: "Test".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
            })
            .to_vec()
    }

    fn meta(uid: &str) -> ObjectMeta {
        ObjectMeta {
            uid: Some(uid.into()),
            creation_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now())),
            ..ObjectMeta::default()
        }
    }

    fn count(metrics: &Metrics, condition: &str, status: &str) -> Option<String> {
        let series =
            format!(r#"cyclr_operator_resources{{kind="CyclrAccount",condition="{condition}",status="{status}"}} "#);
        let text = metrics.encode();
        text.lines()
            .find_map(|line| line.strip_prefix(&series).map(str::to_owned))
    }

    #[test]
    fn conditions_are_counted_once_per_resource_and_uncounted_when_it_goes() {
        let metrics = Metrics::default();
        let (a, b) = (meta("a"), meta("b"));
        metrics.status_computed("CyclrAccount", &a, &[], &conditions("Unknown", "True"));
        metrics.status_computed("CyclrAccount", &b, &[], &conditions("Unknown", "True"));
        assert_eq!(count(&metrics, READY, "Unknown").as_deref(), Some("2"));
        assert_eq!(count(&metrics, STALLED, "False").as_deref(), Some("2"));

        let ready = conditions("True", "False");
        metrics.status_computed("CyclrAccount", &a, &conditions("Unknown", "True"), &ready);
        metrics.status_computed("CyclrAccount", &a, &ready, &ready);
        assert_eq!(count(&metrics, READY, "True").as_deref(), Some("1"));
        assert_eq!(count(&metrics, READY, "Unknown").as_deref(), Some("1"));
        assert_eq!(count(&metrics, RECONCILING, "True").as_deref(), Some("1"));
        assert_eq!(count(&metrics, RECONCILING, "False").as_deref(), Some("1"));
        let text = metrics.encode();
        assert!(
            text.contains(r#"cyclr_operator_time_to_first_ready_seconds_count{kind="CyclrAccount"} 1"#),
            "Ready observed once, not on every reconcile:\n{text}"
        );

        metrics.forget("CyclrAccount", &a);
        metrics.forget("CyclrAccount", &b);
        for (condition, status) in [(READY, "True"), (READY, "Unknown"), (STALLED, "False")] {
            assert_eq!(
                count(&metrics, condition, status).as_deref(),
                Some("0"),
                "{condition}={status}"
            );
        }
    }
}
