//! CyclrPartner: builds the partner's Cyclr client from its labelled credentials Secret,
//! checks it (token, Partner Details, price plans) and takes the one List Accounts per resync
//! interval that every account of the partner reads; it wakes the accounts a new list shows
//! changed.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use driver::{Applied, Driver, Facts, Kind, Packed, Plan, Reconciler, Watched, jittered};
use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::core::Selector;
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use secrecy::SecretString;

use super::partners::{PartnerRuntime, PartnerState, Woken};
use super::{Services, users_of_secret};
use crate::reason::{Failure, Health, Reason};
use crate::resources::{CyclrApi, CyclrPartner, CyclrPartnerStatus, PartnerDetailsStatus, PricePlanStatus};
use crate::secrets::CredentialsDigest;
use cyclr::types::{PartnerDetails, PricePlan};
use cyclr::{CallObserver, CallRecord, ClientConfig, CyclrClient, CyclrError};

/// The partner controller, and how the other kinds reach it: the watch's store (accounts
/// tell "not checked yet" from "does not exist" by it) and [`Partners`].
pub fn controller(
    driver: Arc<Driver>,
    services: Arc<Services>,
    secret_changes: UnboundedReceiver<Secret>,
    checks: UnboundedReceiver<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (impl Stream<Item = driver::ReconcileResult<CyclrPartner>>, Partners) {
    let api: Api<Watched<CyclrPartner>> = Api::all(driver.client.clone());
    let operator_namespace = services.config.namespace.clone();
    let watch = services.config.partners();
    let kind = Kind::<CyclrPartner>::new(driver, services, watch);
    let controller = driver::controller_for(&kind, api, |_| {});
    let partners = Partners {
        store: controller.store(),
        kind: kind.clone(),
    };
    let users = users_of_secret(controller.store(), move |p: &CyclrPartner, s: &Secret| {
        s.namespace().as_deref() == Some(operator_namespace.as_str())
            && p.spec.credentials_secret_ref.name == s.name_any()
    });
    // Credentials Cyclr refused to any call of the partner (an account's, say) check the
    // partner at once: its reason says so and its accounts stop calling. Through the resync
    // queue, like every wake (a stream that never yields).
    let store = controller.store();
    let waker = kind.clone();
    let rechecks = checks.filter_map(move |name| {
        if let Some(partner) = store.get(&kube::runtime::reflector::ObjectRef::new(&name)) {
            waker.wake(partner.meta());
        }
        futures::future::ready(None)
    });
    let results = controller
        // A rotated or fixed credentials Secret takes effect at once.
        .watches_stream(secret_changes.map(Ok), users)
        .reconcile_on(rechecks)
        .graceful_shutdown_on(shutdown)
        .run(driver::reconcile, driver::error_policy, kind);
    (results, partners)
}

/// The partners as the other kinds see them: the watched objects, and a way to have one
/// looked at again.
#[derive(Clone)]
pub struct Partners {
    store: Store<Packed<CyclrPartner>>,
    kind: Arc<Kind<CyclrPartner>>,
}

/// How long after its last account's create a partner is checked again, so its account
/// count is current after a rollout, checked once for the whole rollout.
const AFTER_CREATES: std::time::Duration = std::time::Duration::from_secs(5);

impl Partners {
    /// Whether a CyclrPartner of this name exists (`true` until the watch has listed, so a
    /// restart never reports a partner missing).
    pub fn exists(&self, name: &str) -> bool {
        use futures::FutureExt as _;
        // Listed yet? (`wait_until_ready` is ready at once when it has.)
        self.store.wait_until_ready().now_or_never().is_none()
            || self
                .store
                .get(&kube::runtime::reflector::ObjectRef::new(name))
                .is_some()
    }

    /// The partner `name` made an account: checked again shortly (once after many), so its
    /// status counts it; not where another process writes the partner's status.
    pub fn created_account(&self, name: &str) {
        if !self.kind.config.writes_status {
            return;
        }
        if let Some(partner) = self.store.get(&kube::runtime::reflector::ObjectRef::new(name)) {
            self.kind.wake_after(partner.meta(), AFTER_CREATES);
        }
    }
}

driver::managed_status!(CyclrPartnerStatus, last_sync_time = last_sync_time);

/// What checking the partner found.
pub enum Observed {
    /// The client cannot be built: why (a missing or unlabelled Secret, a bad URL).
    Unusable(Health),
    /// The partner's client (new, or the one in use when its values did not change) and what
    /// its check gave.
    Checked {
        /// The client in service, or a new one for changed values.
        runtime: Arc<PartnerRuntime>,
        /// What checking it gave.
        check: Result<Check, CyclrError>,
    },
}

/// What a successful check read.
pub struct Check {
    /// Partner Details.
    pub details: PartnerDetails,
    /// The partner's price plans.
    pub plans: Vec<PricePlan>,
    /// How many accounts the partner has.
    pub account_count: usize,
    /// When the account list counted was taken.
    pub listed_at: DateTime<Utc>,
    /// The last account a list left out although it answered when read, and when.
    pub list_missed: Option<(DateTime<Utc>, String)>,
}

/// What the partner publishes to its accounts (the partner makes no Cyclr writes).
#[derive(Debug)]
pub enum Publish {
    /// No client: its accounts stop at once (no calls).
    Stop(String),
    /// The checked client, ready, with its price plans.
    Ready {
        /// The checked client.
        runtime: Arc<PartnerRuntime>,
        /// Its price plans.
        plans: Vec<PricePlan>,
        /// What its conditions say.
        health: Health,
    },
    /// The check failed with `error`; the accounts stop only when `stop` (refused
    /// credentials, or a partner that never worked): a transient failure leaves a working
    /// partner working.
    Failed {
        /// The client that failed its check.
        runtime: Arc<PartnerRuntime>,
        /// Cyclr's error.
        error: CyclrError,
        /// Whether its accounts must stop.
        stop: bool,
    },
}

impl Reconciler for CyclrPartner {
    type State = Arc<Services>;
    type Status = CyclrPartnerStatus;
    type Reason = Reason;
    type Failure = Failure;
    type Observed = Observed;
    type Refresh = ();
    type Write = Publish;

    fn status(&self) -> Option<&CyclrPartnerStatus> {
        self.status.as_ref()
    }

    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }

    async fn observe(&self, services: &Arc<Services>, _: &Facts, _: Option<()>) -> Result<Observed, Failure> {
        let runtime = match runtime_for(self, services).await? {
            Ok(runtime) => runtime,
            Err(health) => return Ok(Observed::Unusable(health)),
        };
        let check = check(&runtime, services, &self.name_any()).await;
        Ok(Observed::Checked { runtime, check })
    }

    fn decide(&self, observed: &Observed, facts: &Facts) -> Plan<Self> {
        let previous = self.status.clone().unwrap_or_default();
        let publish = match observed {
            Observed::Unusable(health) => Publish::Stop(health.message.clone()),
            Observed::Checked { runtime, check } => match check {
                Ok(check) => Publish::Ready {
                    runtime: runtime.clone(),
                    plans: check.plans.clone(),
                    health: connected(check, runtime.resync_interval, facts.now),
                },
                Err(error) => Publish::Failed {
                    runtime: runtime.clone(),
                    error: error.clone(),
                    stop: !error.is_retryable() || !matches!(runtime.state(), PartnerState::Ready),
                },
            },
        };
        let status = match observed {
            Observed::Checked { check: Ok(check), .. } => checked_status(previous, check),
            _ => previous,
        };
        Plan::Write {
            write: publish,
            pending: None,
            status,
            event: None,
        }
    }

    async fn act(
        &self,
        services: &Arc<Services>,
        observed: &Observed,
        write: Publish,
    ) -> Result<Applied<Self>, Failure> {
        let name = self.name_any();
        let status = self.status.clone().unwrap_or_default();
        let applied = |health: Health, status: CyclrPartnerStatus| Applied {
            health,
            status,
            event: None,
            made: None,
        };
        match write {
            Publish::Stop(why) => {
                if let Some(old) = services.partners.get(&name) {
                    old.set_state(PartnerState::NotReady(why));
                }
                services.wake_partner(&name, Woken::All);
                let Observed::Unusable(health) = observed else {
                    unreachable!("a stop is decided for an unusable partner")
                };
                Ok(applied(health.clone(), status))
            }
            Publish::Ready { runtime, plans, health } => {
                let installed = install(services, &name, &runtime);
                let plans_changed = runtime.price_plans() != plans;
                runtime.set_price_plans(plans);
                let was_ready = matches!(runtime.state(), PartnerState::Ready);
                runtime.set_state(PartnerState::Ready);
                // Every account looks when the partner becomes usable, gets a new client or
                // new price plans; those a new list shows changed (and those not settled)
                // once a resync interval (drift). A check between (its account count after
                // creates) leaves them alone.
                let Observed::Checked { check: Ok(check), .. } = observed else {
                    unreachable!("ready is decided for a checked partner")
                };
                let due = runtime.accounts_wake_due(check.listed_at);
                if installed || plans_changed || !was_ready {
                    runtime.take_changed();
                    services.wake_partner(&name, Woken::All);
                } else if due {
                    services.wake_partner(&name, runtime.take_changed());
                }
                Ok(applied(health, checked_status(status, check)))
            }
            Publish::Failed { runtime, error, stop } => {
                install(services, &name, &runtime);
                if stop {
                    runtime.set_state(PartnerState::NotReady(services.secrets.scrub(&error.to_string())));
                    services.wake_partner(&name, Woken::All);
                }
                Err(Failure::Cyclr {
                    action: "checking the partner",
                    error,
                })
            }
        }
    }

    fn resync(&self, _: &Arc<Services>, observed: &Observed) -> Option<std::time::Duration> {
        match observed {
            Observed::Checked { runtime, .. } => Some(jittered(runtime.resync_interval)),
            Observed::Unusable(_) => None,
        }
    }

    fn forget(services: &Arc<Services>, meta: &ObjectMeta) {
        let name = meta.name.clone().unwrap_or_default();
        services.partners.remove(&name);
        services.metrics.forget_partner(&name);
        services.wake_partner(&name, Woken::All);
    }
}

/// The Ready health of a checked partner: whether its account list looked wrong lately (it
/// left out an account that answered when read, within two resync intervals of `now`).
fn connected(check: &Check, resync: std::time::Duration, now: DateTime<Utc>) -> Health {
    let recent = chrono::TimeDelta::from_std(resync * 2).unwrap_or(chrono::TimeDelta::MAX);
    match &check.list_missed {
        Some((at, id)) if now - *at < recent => Health::ready(
            Reason::Connected,
            format!(
                "the credentials work and Partner Details answers, but List Accounts left out account {id}, which answered when read at {}: a proxy or cache may be answering for Cyclr. Accounts are not reported missing on a list alone",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        ),
        _ => Health::ready(Reason::Connected, "the credentials work and Partner Details answers"),
    }
}

/// Puts `runtime` in service for the partner `name`, unless it already is; whether it was not.
fn install(services: &Services, name: &str, runtime: &Arc<PartnerRuntime>) -> bool {
    let new = !services.partners.get(name).is_some_and(|r| Arc::ptr_eq(&r, runtime));
    if new {
        services.partners.insert(name, runtime.clone());
        let wake = services.partner_waker(name);
        runtime.wake_after_onboarding(wake);
        tracing::info!(partner = %name, "partner client configured");
    }
    new
}

/// The partner's runtime, rebuilt only when the values it is made of change; or why it
/// cannot be built (reported as the partner's health).
/// A new runtime is put in service only by `act`.
async fn runtime_for(
    partner: &CyclrPartner,
    services: &Services,
) -> Result<Result<Arc<PartnerRuntime>, Health>, Failure> {
    let name = partner.name_any();
    let namespace = &services.config.namespace;
    let secret_ref = &partner.spec.credentials_secret_ref;
    let keys = [secret_ref.client_id_key.as_str(), secret_ref.client_secret_key.as_str()];
    let (client_id, client_secret) = match services.secrets.values(namespace, &secret_ref.name, &keys).await? {
        Ok(values) => (values[0].trim().to_string(), values[1].trim().to_string()),
        Err((reason, message)) => {
            return Ok(Err(Health::reconciling(
                reason,
                format!("{message} (partner credentials are read from the operator's namespace)"),
            )));
        }
    };
    let spec = &partner.spec;
    let selector = match spec.namespace_selector.clone().map(Selector::try_from).transpose() {
        Ok(selector) => selector,
        Err(e) => {
            return Ok(Err(Health::stalled(
                Reason::InvalidConfiguration,
                format!("spec.namespaceSelector: {e}"),
            )));
        }
    };
    let fingerprint = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &spec.api_url,
            &client_id,
            &client_secret,
            spec.rate_limit.requests_per_second,
            spec.rate_limit.burst,
            spec.resync_interval.to_string(),
            spec.usage_interval.to_string(),
            serde_json::to_string(&spec.namespace_selector).unwrap_or_default(),
            spec.cyclr_api,
        )
            .hash(&mut h);
        h.finish()
    };
    let existing = services.partners.get(&name);
    if let Some(existing) = existing.as_ref().filter(|r| r.fingerprint == fingerprint) {
        return Ok(Ok(existing.clone()));
    }
    let credentials_digest = CredentialsDigest::new(&client_secret);
    let mut config = ClientConfig::new(spec.api_url.clone(), client_id, SecretString::from(client_secret));
    config.requests_per_second = spec.rate_limit.requests_per_second;
    config.burst = spec.rate_limit.burst;
    // The other shards hold the rest of the partner's budget.
    config.shares = services.config.shards;
    config.page_size = services.config.v1_page_size;
    // A changed partner keeps its rate budget: the limiter, a 429's hold, the adapted rate.
    let built = match &existing {
        Some(old) => old.client.with_config(config),
        None => CyclrClient::new(config).map(|c| {
            c.with_observer(Arc::new(PartnerCalls {
                metrics: services.metrics.cyclr_observer(&name),
                partner: name.clone(),
                check_partner: services.check_partner.clone(),
            }))
        }),
    };
    let client = match built {
        Ok(client) => client,
        Err(e) => return Ok(Err(Health::stalled(Reason::InvalidConfiguration, e.to_string()))),
    };
    let mut runtime = PartnerRuntime::new(
        client,
        fingerprint,
        spec.resync_interval.into(),
        spec.usage_interval.into(),
        selector,
        credentials_digest,
    )
    .with_dialect(spec.cyclr_api)
    .with_snapshot_metrics(&name, services.metrics.clone());
    if let Some(old) = &existing {
        runtime = runtime.succeed(old);
    }
    Ok(Ok(Arc::new(runtime)))
}

/// Watches a partner's Cyclr calls: each goes to the metrics, and a token request Cyclr
/// refuses (the client secret was rotated in Cyclr before the Secret) checks the partner again.
struct PartnerCalls {
    metrics: Arc<dyn CallObserver>,
    partner: String,
    check_partner: futures::channel::mpsc::UnboundedSender<String>,
}

impl CallObserver for PartnerCalls {
    fn observe(&self, call: &CallRecord) {
        self.metrics.observe(call);
        // OAuth refuses client credentials with 400 or 401 (RFC 6749 §5.2). Not 403: a
        // firewall's page says nothing of the credentials.
        if call.endpoint == "oauth_token" && matches!(call.status, Some(400 | 401)) {
            let _ = self.check_partner.unbounded_send(self.partner.clone());
        }
    }
}

/// Partner Details, price plans and a fresh account list (a token when none is cached). On a
/// `V1` partner that holds a list, the fresh list is a drift check started in the background
/// when due (its pages are paced over minutes at large N), which wakes partner `name` when it
/// ends; the check counts the last complete list.
async fn check(runtime: &Arc<PartnerRuntime>, services: &Arc<Services>, name: &str) -> cyclr::Result<Check> {
    // No forced token fetch: Partner Details obtains one when none is cached, and a token
    // Cyclr refuses is renewed once by the client, so refused credentials still show.
    let details = runtime.client.partner_details().await?;
    let plans = runtime.client.price_plans().await?;
    let snapshot = match runtime.snapshot() {
        Some(held) if runtime.dialect == CyclrApi::V1 => {
            if runtime.drift_check_due(&held) {
                let (services, name) = (services.clone(), name.to_string());
                runtime.start_drift_check(move |listed| match listed {
                    Ok(woken) => services.wake_partner(&name, woken),
                    Err(error) => {
                        let error = services.secrets.scrub(&error.to_string());
                        tracing::warn!(%error, "a drift check (List Accounts) failed; the next resync tries again");
                    }
                });
            }
            held
        }
        _ => runtime.snapshot_since(Utc::now()).await?,
    };
    Ok(Check {
        details,
        plans,
        account_count: snapshot.count(),
        listed_at: snapshot.taken_at,
        list_missed: runtime.list_missed(),
    })
}

/// The partner status for what a check found (pure).
pub fn checked_status(previous: CyclrPartnerStatus, check: &Check) -> CyclrPartnerStatus {
    let Check {
        details,
        plans,
        account_count,
        ..
    } = check;
    CyclrPartnerStatus {
        details: Some(PartnerDetailsStatus {
            application_display_name: details.application_display_name.clone(),
            domain: details.domain.clone(),
            cycle_noun: details.cycle_noun.clone(),
            anonymous_accounts_enabled: details.anonymous_accounts_enabled,
            coming_soon_connectors_enabled: details.coming_soon_connectors_enabled,
            custom_connectors_enabled: details.custom_connectors_enabled,
            cycle_sharing_enabled: details.cycle_sharing_enabled,
        }),
        price_plans: plans
            .iter()
            .map(|p| PricePlanStatus {
                id: p.id.0,
                name: p.name.clone(),
            })
            .collect(),
        account_count: Some(*account_count as u32),
        ..previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cyclr::types::PricePlanId;

    fn details() -> PartnerDetails {
        PartnerDetails {
            application_display_name: Some("Example".into()),
            domain: Some("x.example".into()),
            ..Default::default()
        }
    }

    fn partner() -> CyclrPartner {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cyclr.com/v1alpha1", "kind": "CyclrPartner",
            "metadata": {"name": "p", "generation": 1},
            "spec": {"apiURL": "https://api.cyclr.example", "credentialsSecretRef": {"name": "c"}}
        }))
        .unwrap()
    }

    #[test]
    fn a_check_reports_details_plans_and_count() {
        let plans = vec![PricePlan {
            id: PricePlanId(2),
            name: "Starter".into(),
        }];
        let check = Check {
            details: details(),
            plans,
            account_count: 3,
            listed_at: Utc::now(),
            list_missed: None,
        };
        let status = checked_status(Default::default(), &check);
        assert_eq!(status.account_count, Some(3));
        assert_eq!(status.price_plans[0].name, "Starter");
        assert_eq!(
            status.details.unwrap().application_display_name.as_deref(),
            Some("Example")
        );
    }

    #[test]
    fn an_unusable_partner_stops_its_accounts_and_keeps_its_status() {
        let health = Health::reconciling(Reason::SecretNotLabelled, "label it");
        let facts = Facts {
            now: Utc::now(),
            seen_at: Utc::now(),
            pending: Default::default(),
        };
        match partner().decide(&Observed::Unusable(health), &facts) {
            Plan::Write {
                write: Publish::Stop(why),
                status,
                pending: None,
                ..
            } => {
                assert_eq!(why, "label it");
                assert_eq!(status, CyclrPartnerStatus::default());
            }
            _ => panic!("a stop"),
        }
    }
}
