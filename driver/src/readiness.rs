//! What `/readyz` answers: ready once the operator's CRDs are established and serve the
//! version this binary reads and writes, and every watch registered here has synced; not
//! ready while a CRD is missing, no longer serves that version (the cluster moved on to a
//! newer API version, docs/versioning.md) or a watch keeps failing.
//! `/healthz` (liveness) does not look here: a missing CRD or a forbidden watch is not cured by
//! a restart.
//!
//! A standby replica (leader election) runs no watches, so it is ready as soon as the CRDs are
//! established: a rolling update can proceed and the standby can take over.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::watcher;
use kube::{Api, Client};

/// How long a watch may fail in a row before `/readyz` turns 503: long enough to ride out a
/// restarted API server or an expired resourceVersion, short enough to show a forbidden watch.
pub const WATCH_FAILURE_GRACE: Duration = Duration::from_secs(10);

/// How often the CRDs are checked again (a CRD can be deleted under a running operator).
const CRD_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The readiness registry shared by the HTTP server, the CRD check and the watches.
#[derive(Debug)]
pub struct Readiness {
    /// `Err(why)` until every CRD is established.
    crds: Mutex<Result<(), String>>,
    watches: Mutex<BTreeMap<String, WatchState>>,
    /// Parts still setting up whose watches are not registered yet ([`Readiness::setting_up`]).
    setting_up: Mutex<BTreeSet<String>>,
}

#[derive(Debug, Clone)]
enum WatchState {
    /// Registered; its initial list has not completed.
    Starting,
    Synced,
    /// Failing in a row since `since`; `synced` tells whether it had synced before.
    Failing {
        since: Instant,
        error: String,
        synced: bool,
    },
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            crds: Mutex::new(Err("the CRDs have not been checked yet".into())),
            watches: Mutex::default(),
            setting_up: Mutex::default(),
        }
    }
}

impl Readiness {
    /// `/readyz` answers 503 from now until [`Readiness::set_up`] for `what` (e.g. the
    /// controllers, whose watches are registered only once the stores they read have synced):
    /// without it, a probe in between would find every registered watch synced and the
    /// process ready before its main watches started.
    pub fn setting_up(&self, what: &str) {
        self.setting_up.lock().expect("lock").insert(what.to_owned());
    }

    /// `what` has registered its watches ([`Readiness::setting_up`]).
    pub fn set_up(&self, what: &str) {
        self.setting_up.lock().expect("lock").remove(what);
    }

    /// Registers a watch before it starts, so `/readyz` waits for its initial list.
    /// `watch` names it in `/readyz` answers, e.g. `CyclrAccount` or `Secret`.
    pub fn watch_starting(&self, watch: &str) {
        self.watches
            .lock()
            .expect("lock")
            .insert(watch.to_owned(), WatchState::Starting);
    }

    /// Records one item of a watcher stream (`kube::runtime::watcher`): `InitDone` marks the
    /// watch synced, an error starts (or continues) a failure, any other event ends one.
    pub fn observe<K>(&self, watch: &str, item: &Result<watcher::Event<K>, watcher::Error>) {
        let mut watches = self.watches.lock().expect("lock");
        let state = watches.entry(watch.to_owned()).or_insert(WatchState::Starting);
        *state = match (item, &*state) {
            (Ok(watcher::Event::InitDone), _) => WatchState::Synced,
            (Ok(_), WatchState::Failing { synced: true, .. }) => WatchState::Synced,
            (Ok(_), WatchState::Failing { synced: false, .. }) => WatchState::Starting,
            (Ok(_), other) => other.clone(),
            (Err(e), WatchState::Failing { since, synced, .. }) => WatchState::Failing {
                since: *since,
                error: e.to_string(),
                synced: *synced,
            },
            (Err(e), other) => WatchState::Failing {
                since: Instant::now(),
                error: e.to_string(),
                synced: matches!(other, WatchState::Synced),
            },
        };
    }

    /// Registers a watch and reports every item of its stream: wrap the raw watcher stream,
    /// before any backoff or reflector, e.g.
    /// `readiness.watched("Secret", watcher(api, config)).default_backoff()…`.
    pub fn watched<K, S>(self: &Arc<Self>, watch: &str, stream: S) -> impl Stream<Item = S::Item> + use<K, S>
    where
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    {
        self.watch_starting(watch);
        let readiness = self.clone();
        let watch = watch.to_owned();
        stream.inspect(move |item| readiness.observe(&watch, item))
    }

    /// Each registered watch, and whether it has been failing for longer than
    /// [`WATCH_FAILURE_GRACE`] (for the `cyclr_operator_watch_failing` series).
    pub fn watches_failing(&self) -> Vec<(String, bool)> {
        self.watches
            .lock()
            .expect("lock")
            .iter()
            .map(|(name, state)| {
                let failing =
                    matches!(state, WatchState::Failing { since, .. } if since.elapsed() >= WATCH_FAILURE_GRACE);
                (name.clone(), failing)
            })
            .collect()
    }

    /// `Ok` when ready, else every reason why not, for the `/readyz` body.
    pub fn check(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if let Err(why) = &*self.crds.lock().expect("lock") {
            problems.push(why.clone());
        }
        for what in self.setting_up.lock().expect("lock").iter() {
            problems.push(format!("{what} not started yet"));
        }
        for (name, state) in self.watches.lock().expect("lock").iter() {
            match state {
                WatchState::Synced => {}
                WatchState::Starting => problems.push(format!("watch {name} has not synced yet")),
                WatchState::Failing { since, error, synced } => {
                    let failing = since.elapsed();
                    if !synced || failing >= WATCH_FAILURE_GRACE {
                        problems.push(format!("watch {name} failing for {}s: {error}", failing.as_secs()));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// Checks that the CRDs in `crds` are established and serve the version this binary
    /// needs, every few seconds, for as long as the process runs. A change of the verdict is
    /// logged (a warning naming each CRD and version while not ready), not every check.
    pub async fn check_crds(self: Arc<Self>, client: Client, crds: Vec<NeededCrd>) {
        let api: Api<CustomResourceDefinition> = Api::all(client);
        let mut previous = None;
        loop {
            let state = crds_ready(&api, &crds).await;
            if previous.as_ref() != Some(&state) {
                match &state {
                    Err(why) => tracing::warn!(%why, "not ready"),
                    Ok(()) => tracing::info!("the CRDs are established and serve the versions this operator needs"),
                }
                previous = Some(state.clone());
            }
            *self.crds.lock().expect("lock") = state;
            tokio::time::sleep(CRD_CHECK_INTERVAL).await;
        }
    }
}

/// A CRD this binary needs, and the version of it that the binary reads and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeededCrd {
    /// The CRD's name, `<plural>.<group>`, e.g. `cyclraccounts.cyclr.com`.
    pub name: String,
    /// The API version the binary's types speak, e.g. `v1alpha1`: the cluster's CRD must
    /// serve it.
    pub version: String,
}

impl NeededCrd {
    /// What a binary that ships `crd` needs of the cluster's copy: the version `crd` stores
    /// (`storage: true`), which is the version the binary's own types speak (a release moves
    /// its types and its CRDs' storage version together, docs/versioning.md). `None` for a
    /// CRD without a name or a storage version.
    pub fn stored_in(crd: &CustomResourceDefinition) -> Option<NeededCrd> {
        let version = crd.spec.versions.iter().find(|v| v.storage)?;
        Some(NeededCrd {
            name: crd.metadata.name.clone()?,
            version: version.name.clone(),
        })
    }
}

/// `Ok` when every CRD in `crds` is established and serves the needed version, else one line
/// per CRD that is not.
async fn crds_ready(api: &Api<CustomResourceDefinition>, crds: &[NeededCrd]) -> Result<(), String> {
    let mut problems = Vec::new();
    for needed in crds {
        let verdict = match api.get_opt(&needed.name).await {
            Err(e) => Err(format!("cannot read CRD {}: {e}", needed.name)),
            Ok(None) => Err(format!("CRD {} is not installed", needed.name)),
            Ok(Some(found)) => crd_ready(needed, &found),
        };
        problems.extend(verdict.err());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Whether the cluster's CRD `found` serves what `needed` asks and is established.
fn crd_ready(needed: &NeededCrd, found: &CustomResourceDefinition) -> Result<(), String> {
    let served: Vec<&str> = found
        .spec
        .versions
        .iter()
        .filter(|v| v.served)
        .map(|v| v.name.as_str())
        .collect();
    if !served.contains(&needed.version.as_str()) {
        let served = if served.is_empty() {
            "none".to_owned()
        } else {
            served.join(", ")
        };
        return Err(format!(
            "CRD {} does not serve {}, the version this operator reads and writes (it serves: {served}): \
             run the operator release that speaks one of those (docs/versioning.md)",
            needed.name, needed.version
        ));
    }
    let established = found
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"));
    if !established {
        return Err(format!("CRD {} is not established yet", needed.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Item = Result<watcher::Event<k8s_openapi::api::core::v1::Secret>, watcher::Error>;

    fn crds_ok(readiness: &Readiness) {
        *readiness.crds.lock().unwrap() = Ok(());
    }

    fn forbidden() -> Item {
        Err(watcher::Error::NoResourceVersion)
    }

    fn event(event: watcher::Event<k8s_openapi::api::core::v1::Secret>) -> Item {
        Ok(event)
    }

    #[test]
    fn a_watch_must_sync_and_must_not_keep_failing() {
        let readiness = Readiness::default();
        assert!(readiness.check().unwrap_err().contains("not been checked"));
        crds_ok(&readiness);
        assert_eq!(readiness.check(), Ok(()), "no watches: a standby is ready");

        readiness.watch_starting("Secret");
        assert!(readiness.check().unwrap_err().contains("watch Secret has not synced"));
        readiness.observe("Secret", &forbidden());
        assert!(
            readiness.check().unwrap_err().contains("watch Secret failing"),
            "failing before the first sync is not ready at once"
        );
        readiness.observe("Secret", &event(watcher::Event::Init));
        assert!(readiness.check().is_err(), "back to starting, not synced");
        readiness.observe("Secret", &event(watcher::Event::InitDone));
        assert_eq!(readiness.check(), Ok(()));

        // A synced watch that fails briefly stays ready within the grace period...
        readiness.observe("Secret", &forbidden());
        assert_eq!(readiness.check(), Ok(()));
        // ...and not once it has failed for longer.
        if let Some(WatchState::Failing { since, .. }) = readiness.watches.lock().unwrap().get_mut("Secret") {
            *since -= WATCH_FAILURE_GRACE;
        }
        assert!(readiness.check().unwrap_err().contains("watch Secret failing for 10s"));
        readiness.observe("Secret", &event(watcher::Event::Init));
        assert_eq!(readiness.check(), Ok(()), "a successful event ends the failure");
    }

    #[test]
    fn not_ready_while_a_part_sets_up_even_with_every_registered_watch_synced() {
        let readiness = Readiness::default();
        crds_ok(&readiness);
        readiness.setting_up("the controllers");
        readiness.watch_starting("Secret");
        readiness.observe("Secret", &event(watcher::Event::InitDone));
        assert_eq!(
            readiness.check(),
            Err("the controllers not started yet".into()),
            "the Secrets' watch alone is synced"
        );
        readiness.watch_starting("CyclrAccount");
        readiness.set_up("the controllers");
        assert!(
            readiness
                .check()
                .unwrap_err()
                .contains("watch CyclrAccount has not synced")
        );
        readiness.observe("CyclrAccount", &event(watcher::Event::InitDone));
        assert_eq!(readiness.check(), Ok(()));
    }

    #[tokio::test]
    async fn a_wrapped_watch_is_registered_and_reported() {
        let readiness = Arc::new(Readiness::default());
        crds_ok(&readiness);
        let items = futures::stream::iter([event(watcher::Event::Init), event(watcher::Event::InitDone)]);
        let mut stream = Box::pin(readiness.watched("Secret", items));
        assert!(readiness.check().is_err(), "registered before the first item");
        while stream.next().await.is_some() {}
        assert_eq!(readiness.check(), Ok(()));
    }

    /// A CRD named `name` with `(version, served, storage)` versions, established or not.
    fn crd(name: &str, versions: &[(&str, bool, bool)], established: bool) -> CustomResourceDefinition {
        let versions: Vec<_> = versions
            .iter()
            .map(|(name, served, storage)| serde_json::json!({"name": name, "served": served, "storage": storage}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"group": "example.com", "scope": "Namespaced", "versions": versions,
                     "names": {"plural": "widgets", "kind": "Widget"}},
            "status": {"conditions": [{"type": "Established", "status": if established { "True" } else { "False" }}]},
        }))
        .expect("a CRD")
    }

    #[test]
    fn a_crd_must_serve_the_version_the_binary_stores() {
        let ours = crd(
            "widgets.example.com",
            &[("v1beta1", true, false), ("v1alpha1", true, true)],
            true,
        );
        let needed = NeededCrd::stored_in(&ours).expect("a storage version");
        assert_eq!(
            needed,
            NeededCrd {
                name: "widgets.example.com".into(),
                version: "v1alpha1".into()
            }
        );
        assert_eq!(crd_ready(&needed, &ours), Ok(()));

        // The cluster moved on: v1beta1 stored, v1alpha1 still served, then no longer.
        let moved = crd(
            "widgets.example.com",
            &[("v1beta1", true, true), ("v1alpha1", true, false)],
            true,
        );
        assert_eq!(crd_ready(&needed, &moved), Ok(()), "served is enough, stored or not");
        let dropped = crd(
            "widgets.example.com",
            &[("v1beta1", true, true), ("v1alpha1", false, false)],
            true,
        );
        let why = crd_ready(&needed, &dropped).unwrap_err();
        assert!(
            why.contains("CRD widgets.example.com does not serve v1alpha1") && why.contains("it serves: v1beta1"),
            "{why}"
        );

        let unestablished = crd("widgets.example.com", &[("v1alpha1", true, true)], false);
        assert!(
            crd_ready(&needed, &unestablished)
                .unwrap_err()
                .contains("not established")
        );
        let mut nameless = ours;
        nameless.metadata.name = None;
        assert_eq!(NeededCrd::stored_in(&nameless), None);
    }
}
