//! What `/readyz` answers: ready once the operator's CRDs are established and every watch
//! registered here has synced, and not ready while a CRD is missing or a watch keeps failing.
//! `/healthz` (liveness) does not look here: a missing CRD or a forbidden watch is not cured by
//! a restart.
//!
//! A standby replica (leader election) runs no watches, so it is ready as soon as the CRDs are
//! established: a rolling update can proceed and the standby can take over.

use std::collections::BTreeMap;
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
        }
    }
}

impl Readiness {
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

    /// Checks that the CRDs named `crds` are established, every few seconds, for as long as
    /// the process runs.
    pub async fn check_crds(self: Arc<Self>, client: Client, crds: Vec<String>) {
        let api: Api<CustomResourceDefinition> = Api::all(client);
        loop {
            let state = crds_established(&api, &crds).await;
            if let Err(why) = &state {
                tracing::warn!(%why, "not ready");
            }
            *self.crds.lock().expect("lock") = state;
            tokio::time::sleep(CRD_CHECK_INTERVAL).await;
        }
    }
}

async fn crds_established(api: &Api<CustomResourceDefinition>, crds: &[String]) -> Result<(), String> {
    for name in crds {
        let found = api
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read CRD {name}: {e}"))?
            .ok_or_else(|| format!("CRD {name} is not installed"))?;
        let established = found
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if !established {
            return Err(format!("CRD {name} is not established yet"));
        }
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
}
