//! The driver's infrastructure: what every kind's reconciles share ([`Driver`]), one kind's
//! own part ([`Kind`]), and the controller that feeds a kind from its watch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource};

use crate::pending::Attempts;
use crate::readiness::Readiness;
use crate::{
    Backoffs, MESSAGE_MAX, OwnWrites, Packed, ReasonCode, Reconciler, Resyncs, Watched, capped, jittered, stable_hash,
};

/// The series the driver keeps up to date; the operator's metrics registry implements it.
pub trait Metrics: Send + Sync {
    /// A reconcile of `kind` ended, successfully (`failure: None`) or with a failure of this
    /// category (e.g. `cyclr_transient`, `cyclr_terminal`, `kubernetes`), after `took`.
    fn reconciled(&self, kind: &str, failure: Option<&'static str>, took: Duration);
    /// A reconcile computed the object's conditions (written or not).
    fn status_computed(&self, kind: &str, meta: &ObjectMeta, previous: &[Condition], next: &[Condition]);
    /// One write to the Kubernetes API (a status, an annotation, an Event) for `kind`.
    fn kubernetes_write(&self, kind: &str);
    /// The object is gone: drop its series.
    fn forget(&self, kind: &str, meta: &ObjectMeta);
    /// An external object was made for a resource of `kind` deleted meanwhile.
    fn orphaned(&self, kind: &str);
}

/// How the controllers write and how many reconciles they run.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// The field manager of status writes and the Events' reporting controller.
    pub manager: &'static str,
    /// Reconciles running at once, per kind.
    pub concurrency: u16,
}

/// Which objects of one kind this process watches, and whether it writes to them.
#[derive(Clone, Debug)]
pub struct KindConfig {
    /// Watch only objects with these labels (a shard's, or a test's); `None`: all.
    pub label_selector: Option<String>,
    /// Whether this process writes the objects' status, identity annotation and Events.
    /// `false` where another process writes them and this one only reads the objects and
    /// acts on what its reconciles find (a shard that uses the partners another shard
    /// reports on); for kinds without a finalizer and without pending writes only.
    pub writes_status: bool,
}

impl Default for KindConfig {
    /// Every object, written to.
    fn default() -> Self {
        KindConfig {
            label_selector: None,
            writes_status: true,
        }
    }
}

/// What every kind's reconciles share: the Kubernetes client, Events, metrics, the backoff
/// gate, the record of our own writes, readiness, and the scrubber every message passes.
pub struct Driver {
    /// The Kubernetes client.
    pub client: Client,
    /// The watch configuration.
    pub config: DriverConfig,
    /// The driver's series.
    pub metrics: Arc<dyn Metrics>,
    /// What `/readyz` reports: every watch registers here.
    pub readiness: Arc<Readiness>,
    pub(crate) backoffs: Backoffs,
    pub(crate) own_writes: OwnWrites,
    recorder: Recorder,
    scrub: Box<dyn Fn(&str) -> String + Send + Sync>,
    /// Set when the process is stopping: no new external write starts.
    stopping: std::sync::atomic::AtomicBool,
}

impl Driver {
    /// A driver whose messages pass through `scrub` (secret values removed) before they reach
    /// a condition, an Event or a log line.
    pub fn new(
        client: Client,
        config: DriverConfig,
        metrics: Arc<dyn Metrics>,
        readiness: Arc<Readiness>,
        scrub: impl Fn(&str) -> String + Send + Sync + 'static,
    ) -> Self {
        Driver {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: config.manager.into(),
                    instance: None,
                },
            ),
            client,
            config,
            metrics,
            readiness,
            backoffs: Backoffs::default(),
            own_writes: OwnWrites::default(),
            scrub: Box::new(scrub),
            stopping: Default::default(),
        }
    }

    /// From now on no reconcile starts an external write (the process is stopping): a write
    /// already sent may end within the grace period, a new one could be cut off mid-flight.
    pub fn stop_writes(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether [`Driver::stop_writes`] was called.
    pub fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `text` scrubbed of secrets and capped at [`MESSAGE_MAX`] bytes.
    pub fn scrub(&self, text: &str) -> String {
        capped(&(self.scrub)(text), MESSAGE_MAX).into_owned()
    }

    /// Publishes an Event (events.k8s.io) about `regarding`; the recorder folds repeats into a
    /// series. `action` is the verb done (e.g. `Create`), `reason` the CamelCase reason.
    pub async fn event<R: ReasonCode>(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: R,
        action: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(self.scrub(note)),
            action: action.to_string(),
            secondary: None,
        };
        let published = match regarding.name.as_deref() {
            // kube's recorder names an Event `<name>.<hex time>`, which the API server
            // refuses past 253 characters: such an object's Events get a shortened name.
            Some(name) if name.len() > EVENT_PREFIX_MAX => self.publish_shortened(&event, regarding, name).await,
            _ => self.recorder.publish(&event, regarding).await,
        };
        match published {
            Ok(()) => self.metrics.kubernetes_write("Event"),
            Err(error) => tracing::warn!(%error, %reason, "could not publish an Event"),
        }
    }

    /// Creates the Event itself (no series) under [`event_name`].
    async fn publish_shortened(&self, event: &Event, regarding: &ObjectReference, name: &str) -> kube::Result<()> {
        use k8s_openapi::api::events::v1::Event as K8sEvent;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let now = k8s_openapi::jiff::Timestamp::now();
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let event = K8sEvent {
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.config.manager.into()),
            reporting_instance: Some(self.config.manager.into()),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            metadata: ObjectMeta {
                name: Some(event_name(name, now.as_nanosecond())),
                namespace: Some(namespace.into()),
                ..ObjectMeta::default()
            },
            ..K8sEvent::default()
        };
        Api::<K8sEvent>::namespaced(self.client.clone(), namespace)
            .create(&Default::default(), &event)
            .await
            .map(drop)
    }
}

/// The longest object name kube's recorder can name an Event after: `<name>.` and up to 16
/// hex digits of the time must fit in 253 characters.
const EVENT_PREFIX_MAX: usize = 253 - 17;

/// An Event name for the object `name` at `nanos`, at most 253 characters and a valid DNS
/// subdomain: a long name is cut and told apart from others cut the same way by a hash of
/// the whole name.
fn event_name(name: &str, nanos: i128) -> String {
    let prefix = if name.len() > EVENT_PREFIX_MAX {
        let cut = name[..EVENT_PREFIX_MAX - 17].trim_end_matches(['.', '-']);
        format!("{cut}-{:016x}", stable_hash(name))
    } else {
        name.to_string()
    };
    format!("{prefix}.{:x}", nanos as u64)
}

/// One kind's part of the driver: the shared [`Driver`], the kind's own state and watch
/// configuration, its resync timers and its pending-write attempts.
pub struct Kind<K: Reconciler> {
    /// What every kind shares.
    pub driver: Arc<Driver>,
    /// The kind's own state, handed to its steps.
    pub state: K::State,
    /// Which objects are watched, and whether this process writes to them.
    pub config: KindConfig,
    pub(crate) resyncs: Arc<Resyncs>,
    pub(crate) attempts: Attempts,
}

impl<K: Reconciler> Kind<K> {
    /// The kind `K` on `driver`, with its own `state`, watched and written as `config` says.
    pub fn new(driver: Arc<Driver>, state: K::State, config: KindConfig) -> Arc<Self> {
        Arc::new(Kind {
            driver,
            state,
            config,
            resyncs: Arc::default(),
            attempts: Attempts::default(),
        })
    }

    /// Reconciles the object soon (a dependency changed), through the kind's resync queue.
    pub fn wake(&self, meta: &ObjectMeta) {
        self.wake_after(meta, Duration::ZERO);
    }

    /// Reconciles the object `after` from now, replacing its timer: woken again and again,
    /// it is reconciled once, `after` the last wake.
    pub fn wake_after(&self, meta: &ObjectMeta, after: Duration) {
        self.resyncs.schedule(meta, after);
    }

    /// The kind's name, e.g. `CyclrAccount`.
    pub fn name() -> String {
        K::kind(&()).into_owned()
    }
}

/// One item of a controller's result stream.
pub type ReconcileResult<K> =
    Result<(ObjectRef<Packed<K>>, controller::Action), controller::Error<crate::Error, watcher::Error>>;

/// What kube's error policy does with a failed status write: retry soon, with jitter.
pub fn error_policy<K: Reconciler>(_obj: Arc<Packed<K>>, error: &crate::Error, _kind: Arc<Kind<K>>) -> Action {
    tracing::warn!(%error, "reconcile failed");
    Action::requeue(jittered(Duration::from_secs(5)))
}

/// A controller for kind `K`: the watch reports deletions to the kind's `forget` (and every
/// event to `on_event`, with the whole object), the cache keeps each object packed
/// ([`Packed`]), and reconciles are woken only for spec (generation), pause and deletion
/// changes, so the operator's own writes never wake it. Every wake, from the watch or a timer,
/// goes through the kind's resync queue ([`Resyncs`]). Run it with
/// `.run(driver::reconcile, driver::error_policy, kind)`.
pub fn controller_for<K: Reconciler>(
    kind: &Arc<Kind<K>>,
    api: Api<Watched<K>>,
    on_event: impl Fn(&watcher::Event<Watched<K>>) + Send + 'static,
) -> Controller<Packed<K>> {
    let (reader, writer) = reflector::store();
    let forget = kind.clone();
    let seen = kind.clone();
    let mut pauses = Pauses::new(kind.driver.config.manager);
    let mut wakes = Wakes::default();
    let wake_on = kind.resyncs.clone();
    let mut config = watcher::Config::default().any_semantic();
    if let Some(selector) = &kind.config.label_selector {
        config = config.labels(selector);
    }
    let stream = kind
        .driver
        .readiness
        .watched(&Kind::<K>::name(), watcher::watcher(api, config))
        .backoff(crate::watch_backoff())
        .map_ok(move |event| {
            match &event {
                watcher::Event::Delete(Watched(Ok(obj))) => {
                    pauses.forget(obj.meta());
                    forget_object(&forget, obj.meta());
                }
                watcher::Event::Apply(Watched(Ok(obj))) | watcher::Event::InitApply(Watched(Ok(obj))) => {
                    if let Some(by) = pauses.lifted(obj.meta()) {
                        report_pause_removed(&forget, obj, by);
                    }
                }
                _ => {}
            }
            on_event(&event);
            crate::pack_event(event)
        })
        .reflect(writer)
        .try_filter_map(move |event| {
            // After `reflect`: the cache already holds this version when the record goes.
            if let watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) = &event {
                seen.driver.own_writes.seen(obj.meta());
            }
            // A woken object waits on the resync queue, which hands kube's scheduler a few at
            // a time: a rollout of thousands never sits there at once (a request there costs
            // about 0.7 KiB, and the scheduler's tables keep their largest size for good).
            if let Some(obj) = wakes.wake(event, Packed::identity_recorded) {
                wake_on.schedule(obj.meta(), Duration::ZERO);
            }
            futures::future::ready(Ok(None))
        });
    Controller::for_stream(stream, reader)
        .reconcile_on(kind.resyncs.clone().due())
        .with_config(controller::Config::default().concurrency(kind.driver.config.concurrency))
}

/// The objects the watch last saw paused, by a hash of their uid (few: a pause is rare), with
/// the time of the newest write to them then (from `managedFields`).
#[derive(Default)]
struct Pauses {
    paused: HashMap<u64, Option<k8s_openapi::jiff::Timestamp>>,
    /// The operator's own field manager: its writes never lift a pause.
    manager: &'static str,
}

impl Pauses {
    fn new(manager: &'static str) -> Self {
        Pauses {
            paused: HashMap::new(),
            manager,
        }
    }

    /// Whether the pause annotation has just disappeared from the object; if so, who most
    /// likely removed it: the field manager of a write newer than any while it was paused.
    fn lifted(&mut self, meta: &ObjectMeta) -> Option<String> {
        let uid = stable_hash(meta.uid.as_deref().unwrap_or_default());
        let paused = crate::is_paused(meta);
        // Most events are of objects never paused: they read no managed fields.
        if !paused && self.paused.is_empty() {
            return None;
        }
        // Writes by people and tools (not ours, not to status).
        let ours = self.manager;
        let writes = || {
            meta.managed_fields
                .iter()
                .flatten()
                .filter(move |e| e.subresource.is_none() && e.manager.as_deref() != Some(ours))
                .filter_map(|e| Some((e.time.as_ref()?.0, e.manager.as_deref()?)))
        };
        if paused {
            let newest = writes().map(|(at, _)| at).max();
            self.paused.insert(uid, newest);
            return None;
        }
        let newest_while_paused = self.paused.remove(&uid)?;
        Some(
            writes()
                .filter(|(at, _)| newest_while_paused.is_none_or(|before| *at > before))
                .max()
                .map(|(_, manager)| format!("field manager {manager:?}"))
                // A replace that only removed fields leaves no entry of its own.
                .unwrap_or_else(|| "a writer that left no managed fields (a replace without it?)".into()),
        )
    }

    fn forget(&mut self, meta: &ObjectMeta) {
        self.paused
            .remove(&stable_hash(meta.uid.as_deref().unwrap_or_default()));
    }
}

/// A Warning Event: the object's pause was lifted, by whom (a GitOps tool that applied a
/// manifest without the annotation lifts it silently otherwise).
fn report_pause_removed<K: Reconciler>(kind: &Arc<Kind<K>>, obj: &K, by: String) {
    let driver = kind.driver.clone();
    let regarding = obj.object_ref(&());
    tokio::spawn(async move {
        let note = format!(
            "the annotation {}=true was removed, most likely by {by}; reconciliation resumes. To pause under GitOps, put the annotation in the manifest in Git",
            crate::annotations::PAUSED
        );
        driver
            .event(
                &regarding,
                EventType::Warning,
                K::Reason::PAUSE_REMOVED,
                "Unpause",
                &note,
            )
            .await;
    });
}

/// Everything kept about a deleted object goes with it.
fn forget_object<K: Reconciler>(kind: &Kind<K>, meta: &ObjectMeta) {
    let uid = meta.uid.as_deref().unwrap_or_default();
    K::forget(&kind.state, meta);
    kind.resyncs.take(meta);
    kind.attempts.forget(uid);
    kind.driver.backoffs.forget(uid);
    kind.driver.own_writes.forget(uid);
    kind.driver.metrics.forget(&Kind::<K>::name(), meta);
}

/// Drains a controller's result stream, logging what kube itself could not run.
pub async fn report<S, T, E>(results: S)
where
    S: Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    results
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        })
        .await
}

/// What each watched object last woke a reconcile for: its generation, pause and deletion,
/// hashed, by a hash of its uid, with the watch (re)list it was last seen in and whether its
/// identity annotation was recorded. An event wakes a reconcile only when that changed, so the
/// operator's own writes never wake it, or when a recorded identity annotation was dropped,
/// so it is written back within seconds.
/// (kube's `predicate_filter` does the same with three strings per object and forgets only
/// after an hour; this keeps 24 bytes and forgets at the Delete event, or, for objects
/// deleted while the watch was down, at the end of the relist that no longer holds them.)
#[derive(Default)]
struct Wakes {
    seen: HashMap<u64, (u64, u32, bool)>,
    list: u32,
}

impl Wakes {
    /// The object to reconcile for this watch event, if any; `identity` says whether its
    /// identity annotation shows the id status holds (`None`: status holds none).
    fn wake<K: Resource>(&mut self, event: watcher::Event<K>, identity: impl Fn(&K) -> Option<bool>) -> Option<K> {
        match event {
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                let meta = obj.meta();
                let wake = stable_hash(&(
                    meta.generation,
                    crate::is_paused(meta),
                    meta.deletion_timestamp.is_some(),
                ));
                let identity = identity(&obj);
                let last = self
                    .seen
                    .insert(stable_hash(&meta.uid), (wake, self.list, identity == Some(true)));
                let dropped = identity == Some(false) && last.is_some_and(|(_, _, recorded)| recorded);
                (last.map(|(w, _, _)| w) != Some(wake) || dropped).then_some(obj)
            }
            watcher::Event::Delete(obj) => {
                self.seen.remove(&stable_hash(&obj.meta().uid));
                None
            }
            watcher::Event::Init => {
                self.list = self.list.wrapping_add(1);
                None
            }
            watcher::Event::InitDone => {
                let list = self.list;
                self.seen.retain(|_, (_, seen_in, _)| *seen_in == list);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn object(uid: &str, generation: i64, paused: bool) -> ConfigMap {
        let mut obj = ConfigMap::default();
        obj.metadata.uid = Some(uid.into());
        obj.metadata.generation = Some(generation);
        obj.metadata.resource_version = Some(format!("{generation}{paused}"));
        if paused {
            obj.metadata.annotations = Some([(crate::annotations::PAUSED.to_string(), "true".to_string())].into());
        }
        obj
    }

    #[test]
    fn a_lifted_pause_is_noticed_once_with_the_newest_writer() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};
        let entry = |manager: &str, second: i64| ManagedFieldsEntry {
            manager: Some(manager.into()),
            time: Some(Time(k8s_openapi::jiff::Timestamp::from_second(second).unwrap())),
            ..Default::default()
        };
        let mut pauses = Pauses::new("cyclr-operator");
        let mut paused = object("a", 1, true).metadata;
        paused.managed_fields = Some(vec![entry("kustomize-controller", 5), entry("kubectl-annotate", 10)]);
        assert_eq!(pauses.lifted(&paused), None);
        let mut lifted = object("a", 1, false).metadata;
        lifted.managed_fields = Some(vec![
            entry("kubectl-annotate", 10),
            entry("kustomize-controller", 20),
            entry("cyclr-operator", 30),
        ]);
        assert_eq!(
            pauses.lifted(&lifted).as_deref(),
            Some("field manager \"kustomize-controller\""),
            "the newest write since the pause, not ours"
        );
        assert_eq!(pauses.lifted(&lifted), None, "said once");
        assert_eq!(pauses.lifted(&object("b", 1, false).metadata), None, "never paused");
        assert_eq!(pauses.lifted(&paused), None);
        let mut replaced = object("a", 1, false).metadata;
        replaced.managed_fields = Some(vec![entry("kubectl-annotate", 10)]);
        assert!(pauses.lifted(&replaced).unwrap().contains("no managed fields"));
    }

    #[test]
    fn an_event_name_fits_whatever_the_objects_name() {
        let nanos = 1_800_000_000_000_000_000_i128;
        assert_eq!(event_name("acme", nanos), format!("acme.{:x}", nanos));
        let long = format!("{}.{}", "a".repeat(200), "b".repeat(52));
        let name = event_name(&long, nanos);
        assert!(name.len() <= 253, "{}", name.len());
        assert!(
            !name.contains(".-") && !name.contains("-."),
            "a valid DNS subdomain: {name}"
        );
        let other = format!("{}.{}", "a".repeat(200), "c".repeat(52));
        assert_ne!(event_name(&other, nanos), name, "cut names stay apart");
    }

    #[test]
    fn only_spec_pause_and_deletion_changes_wake_a_reconcile() {
        let mut wakes = Wakes::default();
        let woke = |wakes: &mut Wakes, event| wakes.wake(event, |_: &ConfigMap| None).is_some();
        assert!(woke(&mut wakes, watcher::Event::InitApply(object("a", 1, false))));
        let mut status_write = object("a", 1, false);
        status_write.data = Some([("status".to_string(), "written".to_string())].into());
        assert!(!woke(&mut wakes, watcher::Event::Apply(status_write)), "our own write");
        assert!(woke(&mut wakes, watcher::Event::Apply(object("a", 2, false))), "spec");
        assert!(woke(&mut wakes, watcher::Event::Apply(object("a", 2, true))), "pause");
        let mut deleting = object("a", 2, true);
        deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        assert!(woke(&mut wakes, watcher::Event::Apply(deleting.clone())), "deletion");
        assert!(
            woke(&mut wakes, watcher::Event::Apply(object("b", 2, true))),
            "another object"
        );
        assert!(!woke(&mut wakes, watcher::Event::Delete(deleting)));
        assert_eq!(wakes.seen.len(), 1, "a deleted object is forgotten");
        assert!(woke(&mut wakes, watcher::Event::Apply(object("a", 2, true))));

        // A relist after the watch was down: "b" was deleted meanwhile, "a" is unchanged.
        assert!(!woke(&mut wakes, watcher::Event::Init));
        assert!(
            !woke(&mut wakes, watcher::Event::InitApply(object("a", 2, true))),
            "unchanged"
        );
        assert!(!woke(&mut wakes, watcher::Event::InitDone));
        assert_eq!(wakes.seen.len(), 1, "an object gone from the relist is forgotten");
        assert!(wakes.seen.contains_key(&stable_hash(&Some("a".to_string()))));
    }

    #[test]
    fn a_dropped_identity_annotation_wakes_a_reconcile_our_own_writes_do_not() {
        let mut wakes = Wakes::default();
        // The test's identity: no data, no id in status; an empty map, the id not recorded;
        // a key, recorded.
        let identity = |obj: &ConfigMap| obj.data.as_ref().map(|d| !d.is_empty());
        let with = |data: Option<&[&str]>| {
            let mut obj = object("a", 1, false);
            obj.data = data.map(|keys| keys.iter().map(|k| (k.to_string(), String::new())).collect());
            watcher::Event::Apply(obj)
        };
        assert!(wakes.wake(with(None), identity).is_some(), "first seen");
        assert!(
            wakes.wake(with(Some(&[])), identity).is_none(),
            "our status write with the id"
        );
        assert!(
            wakes.wake(with(Some(&["id"])), identity).is_none(),
            "our annotation write"
        );
        assert!(
            wakes.wake(with(Some(&[])), identity).is_some(),
            "the annotation dropped"
        );
        assert!(wakes.wake(with(Some(&["id"])), identity).is_none(), "written back");
    }
}
