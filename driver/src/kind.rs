//! What a kind gives the driver: its status shape, its reasons and failures, and its
//! observe → decide → act steps.

use std::fmt::{Debug, Display};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::ObjectMeta;
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Health;
use crate::pending::{Intent, Pending, PendingWrite};

/// A typed condition reason: one enum of the operator, each variant written as its name.
pub trait ReasonCode: Copy + Eq + Debug + Display + Send + Sync + 'static {
    /// The reason of a paused object.
    const PAUSED: Self;
    /// The reason of a failed Kubernetes read or write (retried with backoff).
    const KUBERNETES_UNAVAILABLE: Self;
    /// The Warning Event's reason when an external object was made for a resource deleted
    /// while the write was in flight.
    const ORPHANED: Self;
    /// The Warning Event's reason when the pause annotation disappears (removed by a person,
    /// or dropped by a GitOps tool applying a manifest without it).
    const PAUSE_REMOVED: Self;
    /// The reason as written in a condition and an Event (CamelCase).
    fn as_str(self) -> &'static str;
    /// The reason written as `text`, if it is one of the operator's.
    fn parse(text: &str) -> Option<Self>;
    /// Whether a Stalled resource with this reason waits for a new spec; the others stall on
    /// another object (a holder, a Secret, a selector) and are looked at again every few
    /// minutes and on wakes, still without any external write.
    fn waits_for_spec(self) -> bool;
    /// The verb an Event with this reason names as its `action` (`Adopted` → `Adopt`).
    fn verb(self) -> &'static str {
        "Reconcile"
    }
}

/// Why a reconcile step failed, as the driver needs to know it. The operator's failure type
/// implements it once, so every kind shares one failure → condition table.
pub trait Fault: std::error::Error + Send + Sync + 'static {
    /// The operator's reasons.
    type Reason: ReasonCode;
    /// The condition this failure leaves: the one table. A transient failure is
    /// [`State::Reconciling`](crate::State::Reconciling) (retried with backoff), a terminal one
    /// [`State::Stalled`](crate::State::Stalled).
    fn health(&self) -> Health<Self::Reason>;
    /// A label for the failure metric and logs, e.g. `cyclr_transient`.
    fn category(&self) -> &'static str;
    /// How long every call must wait (a 429's hold), when the far side said.
    fn retry_after(&self) -> Option<Duration>;
    /// Whether a write may have happened although it failed (a lost response): the pending
    /// marker stays and the outcome is judged later.
    fn outcome_unknown(&self) -> bool;
    /// A failure of the Kubernetes API.
    fn kubernetes(error: kube::Error) -> Self;
}

/// The status every kind shares: kstatus conditions, `observedGeneration`, and (for kinds with
/// non-idempotent writes) the pending-write marker.
pub trait ManagedStatus: Clone + Default + PartialEq + Debug + Serialize + Send + Sync + 'static {
    /// `status.conditions`.
    fn conditions(&self) -> &[Condition];
    /// Replaces `status.conditions`.
    fn set_conditions(&mut self, conditions: Vec<Condition>);
    /// `status.observedGeneration`.
    fn observed_generation(&self) -> Option<i64>;
    /// Replaces `status.observedGeneration`.
    fn set_observed_generation(&mut self, generation: Option<i64>);
    /// The pending-write marker, where the kind has one.
    fn pending(&self) -> Option<&PendingWrite> {
        None
    }
    /// Replaces the pending-write marker (a kind without one ignores it).
    fn set_pending(&mut self, _pending: Option<PendingWrite>) {}
    /// `lastSyncTime`, where the kind has one: moved only when the rest of status changed.
    fn set_last_sync_time(&mut self, _time: Option<Time>) {}
}

/// Implements [`ManagedStatus`] for a status struct with `conditions` and
/// `observed_generation` fields, and optionally its pending marker and `lastSyncTime` fields:
/// `managed_status!(CyclrAccountStatus, pending = pending_create, last_sync_time = last_sync_time);`
#[macro_export]
macro_rules! managed_status {
    ($status:ty $(, pending = $pending:ident)? $(, last_sync_time = $sync:ident)?) => {
        impl $crate::ManagedStatus for $status {
            fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
                &self.conditions
            }
            fn set_conditions(&mut self, conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>) {
                self.conditions = conditions;
            }
            fn observed_generation(&self) -> Option<i64> {
                self.observed_generation
            }
            fn set_observed_generation(&mut self, generation: Option<i64>) {
                self.observed_generation = generation;
            }
            $(
                fn pending(&self) -> Option<&$crate::PendingWrite> {
                    self.$pending.as_ref()
                }
                fn set_pending(&mut self, pending: Option<$crate::PendingWrite>) {
                    self.$pending = pending;
                }
            )?
            $(
                fn set_last_sync_time(&mut self, time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) {
                    self.$sync = time;
                }
            )?
        }
    };
}

/// What the driver knows when a kind looks and decides: the clock and the pending write.
/// `decide` reads the time only from here, so it is pure and tested with any clock.
#[derive(Clone, Debug)]
pub struct Facts {
    /// When this reconcile started: anything read during it is at least this new.
    pub now: DateTime<Utc>,
    /// When the watch delivered this version of the object: it existed then.
    pub seen_at: DateTime<Utc>,
    /// The object's pending write, if any: its marker and this process's attempt.
    pub pending: Pending,
}

/// What a kind gives the driver.
pub trait Reconciler:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize + Send + Sync + 'static
{
    /// The kind's own state (its services and per-object memory), handed to each step.
    type State: Send + Sync + 'static;
    /// The kind's status.
    type Status: ManagedStatus;
    /// The operator's reasons.
    type Reason: ReasonCode;
    /// The operator's failures.
    type Failure: Fault<Reason = Self::Reason>;
    /// Everything `decide` reads, gathered by `observe` (I/O, no writes).
    type Observed: Send + Sync;
    /// What `observe` should look at again before deciding once more (e.g. a fresher list).
    type Refresh: Send;
    /// One external write.
    type Write: Debug + Send;

    /// The object's status, if any.
    fn status(&self) -> Option<&Self::Status>;

    /// The Api through which this object is written (its namespace, or cluster-wide).
    fn api(&self, client: Client) -> Api<Self>;

    /// Reads what `decide` needs: referenced objects, external lists. Makes no writes.
    fn observe(
        &self,
        state: &Self::State,
        facts: &Facts,
        refresh: Option<Self::Refresh>,
    ) -> impl Future<Output = Result<Self::Observed, Self::Failure>> + Send;

    /// The one decision of a reconcile. Pure: unit-tested without a cluster or a clock.
    fn decide(&self, observed: &Self::Observed, facts: &Facts) -> Plan<Self>;

    /// Sends one external write and says what it gave.
    fn act(
        &self,
        state: &Self::State,
        observed: &Self::Observed,
        write: Self::Write,
    ) -> impl Future<Output = Result<Applied<Self>, Self::Failure>> + Send;

    /// How long until the next look when Ready (the resync interval, jittered).
    fn resync(&self, state: &Self::State, observed: &Self::Observed) -> Option<Duration>;

    /// Whether `health`, about to be written, shows this generation's spec applied in the
    /// external system. `false` keeps `observedGeneration` (top level and in the conditions)
    /// where it was, as a pause does, so kstatus, `kubectl wait` and GitOps tools never take a
    /// generation for observed before the external system shows it (an activation Cyclr
    /// answered but does not show yet). A Stalled health moves it whatever this says: the
    /// stall is this generation's outcome (the stalled gate and kstatus's `Failed` read it
    /// there). Default: every health the kind decides applies its generation.
    fn spec_applied(&self, _health: &Health<Self::Reason>) -> bool {
        true
    }

    /// The annotation that keeps the external id in metadata, once status holds one.
    fn identity(_status: &Self::Status) -> Option<(&'static str, String)> {
        None
    }

    /// The object whose changes wake this one (the partner of an account, the account of an
    /// install), as namespace (`None` for a cluster-scoped one) and name. The cache keeps a
    /// hash of it, so the dependants of a change are found without decoding every object.
    fn depends_on(&self) -> Option<(Option<&str>, &str)> {
        None
    }

    /// Where to report an external object made for this resource after it was deleted (a
    /// create in flight while the resource went): the object people look at instead.
    fn orphan_report(&self) -> Option<ObjectReference> {
        None
    }

    /// Drops what the kind keeps about the object outside Kubernetes; called when the watch
    /// reports the object deleted.
    fn forget(_state: &Self::State, _meta: &ObjectMeta) {}

    /// The finalizer of objects whose deletion needs an external call (`None`: the kind
    /// never needs one, deletion is Orphan).
    const FINALIZER: Option<&'static str> = None;

    /// Whether this object needs [`Self::FINALIZER`], from what `observe` found (e.g. a
    /// Delete policy on a partner that can delete). The driver adds it before the first
    /// status or external write of a reconcile that says so; only such objects carry it.
    fn needs_finalizer(&self, _observed: &Self::Observed) -> bool {
        false
    }

    /// The object is being deleted and holds [`Self::FINALIZER`]: do what its deletion needs
    /// (or decide that nothing is to be done). [`Cleanup::Done`] lets the object go (the
    /// driver removes the finalizer); [`Cleanup::Blocked`] keeps it and reports why. Pause,
    /// the backoff and Kubernetes writes are the driver's.
    fn cleanup(
        &self,
        _state: &Self::State,
    ) -> impl Future<Output = Result<Cleanup<Self::Reason>, Self::Failure>> + Send {
        async { Ok(Cleanup::Done(None)) }
    }
}

/// What [`Reconciler::cleanup`] gave.
#[derive(Clone, Debug, PartialEq)]
pub enum Cleanup<R> {
    /// Done, or nothing to do: the finalizer goes (an Event with it, if given).
    Done(Option<Note<R>>),
    /// Not possible now: this health is reported and the finalizer stays. A Stalled health
    /// should say how to let the object go.
    Blocked(Health<R>),
}

/// A Normal Event: its reason and note.
pub type Note<R> = (R, String);

/// A kind's decision.
pub enum Plan<K: Reconciler> {
    /// Observe again with this, then decide once more.
    Refresh(K::Refresh),
    /// Nothing to report yet (e.g. the partner's first check after a restart is under way):
    /// no write, look again after this long, or when woken.
    Wait(Duration),
    /// No external write: report this health and status (an Event with it, if given).
    Report {
        /// The conditions to write.
        health: Health<K::Reason>,
        /// The rest of status.
        status: K::Status,
        /// A Normal Event to publish.
        event: Option<Note<K::Reason>>,
    },
    /// One external write. With `pending` (a write that is not idempotent), the driver records
    /// the marker with what the write sends first, with a resourceVersion precondition, so no
    /// second writer can start the same write. `status` is written whatever the write gives
    /// (e.g. an adoption it follows), `event` with it.
    Write {
        /// The write, for [`Reconciler::act`].
        write: K::Write,
        /// What identifies a non-idempotent write, for the pending-write protocol.
        pending: Option<Intent<K::Reason>>,
        /// The status to write before the write's own result.
        status: K::Status,
        /// A Normal Event to publish with `status`.
        event: Option<Note<K::Reason>>,
    },
}

/// What an external write gave.
pub struct Applied<K: Reconciler> {
    /// The conditions to write.
    pub health: Health<K::Reason>,
    /// The status to write.
    pub status: K::Status,
    /// A Normal Event to publish.
    pub event: Option<Note<K::Reason>>,
    /// What a non-idempotent write made (an id), remembered until the watch shows it.
    pub made: Option<String>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kube::CustomResource;
    use schemars::JsonSchema;
    use serde::Deserialize;

    /// A kind for the driver's own tests: a namespaced widget that depends on a
    /// cluster-scoped owner.
    #[derive(CustomResource, Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
    #[kube(
        group = "test.cyclr.com",
        version = "v1",
        kind = "Widget",
        namespaced,
        status = "WidgetStatus"
    )]
    #[serde(rename_all = "camelCase")]
    pub struct WidgetSpec {
        pub owner_ref: Option<OwnerRef>,
        pub name: Option<String>,
    }

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct OwnerRef {
        pub name: String,
    }

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct WidgetStatus {
        #[serde(default)]
        pub conditions: Vec<Condition>,
        pub observed_generation: Option<i64>,
        #[serde(rename = "widgetID")]
        pub widget_id: Option<String>,
    }

    crate::managed_status!(WidgetStatus);

    #[derive(Debug, thiserror::Error)]
    #[error("test failure")]
    pub struct TestFault;

    impl Fault for TestFault {
        type Reason = TestReason;
        fn health(&self) -> Health<TestReason> {
            Health::reconciling(TestReason::Unavailable, "test failure")
        }
        fn category(&self) -> &'static str {
            "test"
        }
        fn retry_after(&self) -> Option<Duration> {
            None
        }
        fn outcome_unknown(&self) -> bool {
            false
        }
        fn kubernetes(_: kube::Error) -> Self {
            TestFault
        }
    }

    /// Decides from nothing: the widget is Ready.
    impl Reconciler for Widget {
        type State = ();
        type Status = WidgetStatus;
        type Reason = TestReason;
        type Failure = TestFault;
        type Observed = ();
        type Refresh = ();
        type Write = ();

        fn status(&self) -> Option<&WidgetStatus> {
            self.status.as_ref()
        }
        fn api(&self, client: Client) -> Api<Self> {
            Api::namespaced(client, self.metadata.namespace.as_deref().unwrap_or_default())
        }
        async fn observe(&self, _: &(), _: &Facts, _: Option<()>) -> Result<(), TestFault> {
            Ok(())
        }
        fn decide(&self, _: &(), _: &Facts) -> Plan<Self> {
            Plan::Report {
                health: Health::ready(TestReason::Done, "ready"),
                status: self.status.clone().unwrap_or_default(),
                event: None,
            }
        }
        async fn act(&self, _: &(), _: &(), _: ()) -> Result<Applied<Self>, TestFault> {
            Err(TestFault)
        }
        fn resync(&self, _: &(), _: &()) -> Option<Duration> {
            None
        }
        fn depends_on(&self) -> Option<(Option<&str>, &str)> {
            self.spec.owner_ref.as_ref().map(|o| (None, o.name.as_str()))
        }
        fn identity(status: &WidgetStatus) -> Option<(&'static str, String)> {
            status.widget_id.clone().map(|id| ("cyclr.com/account-id", id))
        }
    }

    /// A small reason table for the driver's own tests.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum TestReason {
        Done,
        Working,
        Unavailable,
        Refused,
        Paused,
        Orphaned,
    }

    impl std::fmt::Display for TestReason {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.as_str())
        }
    }

    impl ReasonCode for TestReason {
        const PAUSED: Self = TestReason::Paused;
        const KUBERNETES_UNAVAILABLE: Self = TestReason::Unavailable;
        const ORPHANED: Self = TestReason::Orphaned;
        const PAUSE_REMOVED: Self = TestReason::Working;
        fn as_str(self) -> &'static str {
            match self {
                TestReason::Done => "Done",
                TestReason::Working => "Working",
                TestReason::Unavailable => "Unavailable",
                TestReason::Refused => "Refused",
                TestReason::Paused => "Paused",
                TestReason::Orphaned => "Orphaned",
            }
        }
        fn parse(text: &str) -> Option<Self> {
            [
                TestReason::Done,
                TestReason::Working,
                TestReason::Unavailable,
                TestReason::Refused,
                TestReason::Paused,
                TestReason::Orphaned,
            ]
            .into_iter()
            .find(|r| r.as_str() == text)
        }
        fn waits_for_spec(self) -> bool {
            self != TestReason::Working
        }
    }
}
