//! CyclrConnectorInstall: installs a connector into its account at most once, across
//! restarts, resyncs and lost responses, and never a second install of one installed name.
//! Observe → decide (pure) → act; the driver does the rest.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use driver::{Applied, Driver, Facts, Intent, Kind, Packed, Plan, Reconciler, State};
use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{ResourceExt, api::Api};
use secrecy::SecretString;

use super::partners::{NameGuard, PartnerRuntime, PartnerState};
use super::{Services, namespaced_api, users_of_secret};
use crate::index::Holder;
use crate::reason::{Failure, Health, Reason};
use crate::resources::{
    CyclrAccount, CyclrConnectorInstall, CyclrConnectorInstallStatus, READY, annotation, annotations, condition,
};
use crate::secrets::CredentialsDigest;
use cyclr::types::{ConnectorAuth, InstallConnectorRequest, InstalledConnector};

/// The install kind's own state.
pub struct InstallState {
    services: Arc<Services>,
    /// The watched partners, to tell "not checked yet" from "does not exist".
    partners: super::partner::Partners,
    /// The watched accounts: an install reads its account from here (no GET).
    accounts: Store<Packed<CyclrAccount>>,
}

impl InstallState {
    /// The state of the install kind, reading partners and accounts from their watches.
    pub fn new(
        services: Arc<Services>,
        partners: super::partner::Partners,
        accounts: Store<Packed<CyclrAccount>>,
    ) -> Self {
        InstallState {
            services,
            partners,
            accounts,
        }
    }

    /// The account `namespace/name` from the watch.
    fn account(&self, namespace: &str, name: &str) -> Option<CyclrAccount> {
        let packed = self.accounts.get(&ObjectRef::new(name).within(namespace))?;
        packed.unpack().ok()
    }
}

/// The install controller.
pub fn controller(
    driver: Arc<Driver>,
    state: InstallState,
    secret_changes: UnboundedReceiver<Secret>,
    account_changes: UnboundedReceiver<ObjectRef<CyclrAccount>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = driver::ReconcileResult<CyclrConnectorInstall>> {
    let api = namespaced_api::<DeserializeGuard<CyclrConnectorInstall>>(driver.client.clone(), &state.services.config);
    // The installed-name index is fed by the installs' own watch.
    let index = state.services.clone();
    let kind = Kind::<CyclrConnectorInstall>::new(driver, state);
    let controller = driver::controller_for(&kind, api, move |event| match event {
        watcher::Event::Apply(DeserializeGuard(Ok(i))) | watcher::Event::InitApply(DeserializeGuard(Ok(i))) => {
            index.install_claims.set(Holder::of(&i.metadata), vec![install_key(i)]);
        }
        _ => {}
    });
    let by_account = controller.store();
    let users = users_of_secret(controller.store(), |i: &CyclrConnectorInstall, s: &Secret| {
        i.namespace() == s.namespace() && i.secret_names().contains(&s.name_any().as_str())
    });
    controller
        // An account getting its id (or becoming ready) wakes the installs waiting on it
        // (from the account controller's watch: one watch per kind).
        .reconcile_on(account_changes.flat_map(move |account| {
            let installs: Vec<_> = by_account
                .state()
                .iter()
                .filter(|i| i.depends_on(account.namespace.as_deref(), &account.name))
                .map(|i| ObjectRef::from_obj(i.as_ref()))
                .collect();
            stream::iter(installs)
        }))
        // A credentials Secret appearing wakes the installs that wait for it.
        .watches_stream(secret_changes.map(Ok), users)
        .graceful_shutdown_on(shutdown)
        .run(driver::reconcile, driver::error_policy, kind)
}

/// The claim key of an install: one installed name per account.
fn install_key(install: &CyclrConnectorInstall) -> String {
    format!(
        "{}/{}/{}",
        install.namespace().unwrap_or_default(),
        install.spec.account_ref.name,
        install.installed_name()
    )
}

driver::managed_status!(CyclrConnectorInstallStatus, pending = pending_install);

/// The account (and its partner) as an install needs it.
pub enum AccountView {
    /// Not usable yet: the reason and message to report.
    Waiting(Reason, String),
    /// Ready, with its Cyclr id and its partner's runtime.
    Ready {
        /// The account's Cyclr id.
        account_id: String,
        /// Its partner's client and state.
        runtime: Arc<PartnerRuntime>,
    },
}

/// The connector credentials from the referenced Secret.
pub enum CredentialsView {
    /// The credentials to send.
    Ready(ConnectorAuth),
    /// Why they cannot be had: the reason and message to report.
    Missing(Reason, String),
}

/// The account's installed connectors (v1.0 list), when looked at.
pub enum InstalledView {
    /// Not looked at yet in this reconcile.
    NotListed,
    /// The API offers no list: an install cannot be confirmed.
    Unavailable(String),
    /// The account's installed connectors.
    Listed(Vec<InstalledConnector>),
}

/// Everything `decide` looks at (the clock and the pending install are in [`Facts`]).
pub struct Observed {
    /// The install's account, as it can be used.
    pub account: AccountView,
    /// The credentials from the referenced Secret.
    pub credentials: CredentialsView,
    /// The credentials' digest under the account's partner key, when both can be read.
    pub credentials_digest: Option<String>,
    /// An older install resource with the same installed name in the same account.
    pub claimed_by: Option<Holder>,
    /// The account's installed connectors, when listed.
    pub installed: InstalledView,
    /// Held while an install may be decided: installs of one name are serialised.
    _name_guard: Option<NameGuard>,
}

impl Reconciler for CyclrConnectorInstall {
    type State = InstallState;
    type Status = CyclrConnectorInstallStatus;
    type Reason = Reason;
    type Failure = Failure;
    type Observed = Observed;
    type Refresh = ();
    type Write = ConnectorAuth;

    fn status(&self) -> Option<&CyclrConnectorInstallStatus> {
        self.status.as_ref()
    }

    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, self.metadata.namespace.as_deref().unwrap_or_default())
    }

    async fn observe(&self, state: &InstallState, _: &Facts, list: Option<()>) -> Result<Observed, Failure> {
        let services = &state.services;
        let holder = Holder::of(&self.metadata);
        let claimed_by = services
            .install_claims
            .held_by_other(&install_key(self), &holder.uid)
            .filter(|other| *other < holder);
        // The account and its partner's runtime (ready or not: the credentials digest needs
        // only its key), from the watches.
        let cached = state.account(&self.namespace().unwrap_or_default(), &self.spec.account_ref.name);
        let runtime = cached
            .as_ref()
            .and_then(|a| services.partners.get(&a.spec.partner_ref.name));
        let account = observe_account(self, state, cached.as_ref(), runtime.clone());
        let credentials = observe_credentials(self, services).await?;
        let credentials_digest = match (&credentials, runtime) {
            (CredentialsView::Ready(auth), Some(runtime)) => Some(runtime.credentials_digest.of(auth)),
            _ => None,
        };
        let mut observed = Observed {
            account,
            credentials,
            credentials_digest,
            claimed_by,
            installed: InstalledView::NotListed,
            _name_guard: None,
        };
        if let (Some(()), AccountView::Ready { account_id, runtime }) = (list, &observed.account) {
            observed._name_guard = Some(
                runtime
                    .lock_name(&format!("install:{account_id}/{}", self.installed_name()))
                    .await,
            );
            observed.installed = match runtime.client.installed_connectors(account_id).await {
                Ok(list) => InstalledView::Listed(list),
                Err(cyclr::CyclrError::NotFound { message }) => InstalledView::Unavailable(message),
                Err(error) => {
                    return Err(Failure::Cyclr {
                        action: "listing the account's installed connectors",
                        error,
                    });
                }
            };
        }
        Ok(observed)
    }

    async fn act(
        &self,
        state: &InstallState,
        observed: &Observed,
        auth: ConnectorAuth,
    ) -> Result<Applied<Self>, Failure> {
        let AccountView::Ready { account_id, runtime } = &observed.account else {
            unreachable!("installs are decided only for a ready account")
        };
        // Recorded at once, so a second resource of the same name in this process stops.
        if let Err(holder) = state
            .services
            .install_claims
            .claim(&install_key(self), &Holder::of(&self.metadata))
        {
            return Ok(Applied {
                health: name_in_use(&holder.name),
                status: self.status.clone().unwrap_or_default(),
                event: None,
                made: None,
            });
        }
        let request = InstallConnectorRequest {
            account_id: account_id.clone(),
            connector_name: self.spec.connector_name.clone(),
            connector_version: self.spec.connector_version.clone(),
            installed_name: self.installed_name(),
            auth,
        };
        runtime
            .client
            .install_connector(&request)
            .await
            .map_err(Failure::cyclr("the connector install"))?;
        Ok(Applied {
            health: Health::ready(Reason::Installed, "the connector is installed"),
            status: CyclrConnectorInstallStatus {
                account_id: Some(account_id.clone()),
                installed_at: Some(Time(Timestamp::now())),
                credentials_digest: observed.credentials_digest.clone(),
                ..self.status.clone().unwrap_or_default()
            },
            event: Some((
                Reason::Installed,
                format!(
                    "installed connector {} {} into account {account_id}",
                    request.connector_name, request.connector_version
                ),
            )),
            // Where it was installed: what the watch may not show yet.
            made: Some(account_id.clone()),
        })
    }

    fn decide(&self, observed: &Observed, facts: &Facts) -> Plan<Self> {
        decide(self, observed, facts)
    }

    fn resync(&self, _: &InstallState, _: &Observed) -> Option<Duration> {
        // Installed is final; nothing in Cyclr to compare with on a timer.
        None
    }

    fn identity(status: &CyclrConnectorInstallStatus) -> Option<(&'static str, String)> {
        status.installed_at.as_ref()?;
        status
            .account_id
            .clone()
            .map(|id| (annotations::INSTALLED_IN_ACCOUNT, id))
    }

    fn depends_on(&self) -> Option<(Option<&str>, &str)> {
        Some((self.metadata.namespace.as_deref(), &self.spec.account_ref.name))
    }

    fn forget(state: &InstallState, meta: &ObjectMeta) {
        state
            .services
            .install_claims
            .remove(meta.uid.as_deref().unwrap_or_default());
    }
}

/// `at` as a Kubernetes timestamp.
fn time(at: DateTime<Utc>) -> Time {
    Time(Timestamp::from_microsecond(at.timestamp_micros()).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn name_in_use(holder: &str) -> Health {
    Health::stalled(
        Reason::InstalledNameInUse,
        format!(
            "CyclrConnectorInstall {holder} already installs a connector of this installedName into this account; choose another installedName"
        ),
    )
}

/// The one decision of a reconcile (pure: the time and the pending install are in `facts`).
pub fn decide(install: &CyclrConnectorInstall, obs: &Observed, facts: &Facts) -> Plan<CyclrConnectorInstall> {
    let previous = install.status.clone().unwrap_or_default();
    let report = |health: Health| Plan::Report {
        health,
        status: previous.clone(),
        event: None,
    };
    if previous.installed_at.is_some() {
        return installed(install, obs, previous);
    }
    if let Some(holder) = &obs.claimed_by {
        return report(name_in_use(&holder.name));
    }
    let account_id = match &obs.account {
        AccountView::Waiting(reason, message) => return report(Health::reconciling(*reason, message.clone())),
        AccountView::Ready { account_id, .. } => account_id.clone(),
    };
    let auth = match &obs.credentials {
        CredentialsView::Missing(reason, message) => return report(Health::reconciling(*reason, message.clone())),
        CredentialsView::Ready(auth) => auth.clone(),
    };
    let name = install.installed_name();
    let pending = &facts.pending;
    let same_name: Vec<&InstalledConnector> = match &obs.installed {
        InstalledView::NotListed => return Plan::Refresh(()),
        InstalledView::Unavailable(why) if pending.is_open() => {
            return report(Health::stalled(
                Reason::InstallOutcomeUnknown,
                format!(
                    "an earlier install attempt may have succeeded and the installed-connector list cannot confirm it ({why}); check the account in Cyclr, then delete and re-create this resource"
                ),
            ));
        }
        InstalledView::Unavailable(_) => vec![],
        InstalledView::Listed(list) => list.iter().filter(|c| c.name == name).collect(),
    };
    // An install may have happened: look for the name it sent; only an installed connector
    // that did not exist before it can be ours.
    let sent = pending.sent().unwrap_or(&name);
    let new: Vec<&InstalledConnector> = match &obs.installed {
        InstalledView::Listed(list) if pending.is_open() => list
            .iter()
            .filter(|c| c.name == sent && !pending.existed_before(&c.id))
            .collect(),
        _ => vec![],
    };
    match new.as_slice() {
        [found] => {
            return Plan::Report {
                health: Health::ready(Reason::Installed, "the connector is installed"),
                status: CyclrConnectorInstallStatus {
                    account_id: Some(account_id.clone()),
                    installed_connector_id: Some(found.id.clone()),
                    installed_at: Some(time(facts.now)),
                    credentials_digest: obs.credentials_digest.clone(),
                    pending_install: None,
                    ..previous.clone()
                },
                event: Some((
                    Reason::Adopted,
                    format!(
                        "connector {name:?} was installed into account {account_id} (id {}) by an earlier attempt whose response was lost",
                        found.id
                    ),
                )),
            };
        }
        [_, _, ..] => {
            return report(Health::stalled(
                Reason::InstallOutcomeUnknown,
                format!("several new installed connectors are named {sent:?} in account {account_id}; check Cyclr"),
            ));
        }
        // Nothing yet (the list was taken during this reconcile): wait until the install
        // surely ended (after a restart, until the client's deadline the marker records).
        [] => {
            if let Some(wait) = pending.wait_to_judge(facts.now) {
                return Plan::Wait(wait);
            }
        }
    }
    // Installed by this resource before its status was lost (a restore without status, a
    // status edit, a status write that failed): the annotation written after the install,
    // or this process's answered install, says where, and the list shows it again. Found
    // again, never refused as a name in use, never installed twice.
    let installed_here = annotation(&install.metadata, annotations::INSTALLED_IN_ACCOUNT) == Some(account_id.as_str())
        || pending.made() == Some(account_id.as_str());
    if !pending.is_open() && installed_here {
        let found_again = |id: Option<String>| Plan::Report {
            health: Health::ready(Reason::Installed, "the connector is installed"),
            status: CyclrConnectorInstallStatus {
                account_id: Some(account_id.clone()),
                installed_connector_id: id,
                installed_at: Some(time(facts.now)),
                credentials_digest: obs.credentials_digest.clone(),
                ..previous.clone()
            },
            event: None,
        };
        return match (&obs.installed, same_name.as_slice()) {
            // No list to look in: the annotation, written only after a confirmed install, stands.
            (InstalledView::Unavailable(_), _) => found_again(None),
            (_, [found]) => found_again(Some(found.id.clone())),
            (_, []) => report(Health::stalled(
                Reason::ExternalInstallMissing,
                format!(
                    "this resource installed {name:?} into account {account_id} (annotation {}), but the account has no installed connector of that name now; it is never installed twice: delete and re-create this resource to install it again",
                    annotations::INSTALLED_IN_ACCOUNT
                ),
            )),
            (_, several) => report(Health::stalled(
                Reason::InstallOutcomeUnknown,
                format!(
                    "{} installed connectors are named {name:?} in account {account_id}; check Cyclr",
                    several.len()
                ),
            )),
        };
    }
    if let Some(existing) = same_name.first() {
        return report(Health::stalled(
            Reason::InstalledNameInUse,
            format!(
                "account {account_id} already has an installed connector named {name:?} (id {}); it is never adopted or installed twice: choose another installedName",
                existing.id
            ),
        ));
    }
    let AccountView::Ready { runtime, .. } = &obs.account else {
        unreachable!("decided only for a ready account")
    };
    Plan::Write {
        write: auth,
        pending: Some(Intent {
            sent: name,
            existing_ids: vec![],
            lasts: runtime.client.call_deadline(),
            reason: Reason::Installing,
            message: "installing the connector".into(),
        }),
        status: previous,
        event: None,
    }
}

/// An installed connector: Ready while its credentials are the ones it was installed with.
/// Changed ones cannot be sent (the Partner API has no update for an install), so that is
/// said, and restoring the Secret's values makes it Ready again.
fn installed(
    install: &CyclrConnectorInstall,
    obs: &Observed,
    previous: CyclrConnectorInstallStatus,
) -> Plan<CyclrConnectorInstall> {
    let ready = Health::ready(Reason::Installed, "the connector is installed");
    let not_applied = |message: String| Health::stalled(Reason::CredentialsNotApplied, message);
    let health = match (&previous.credentials_digest, &obs.credentials_digest) {
        (Some(applied), Some(current)) if CredentialsDigest::comparable(applied, current) && applied != current => {
            let secrets = install.secret_names().join(", ");
            let secrets = if secrets.is_empty() {
                "spec.auth".to_string()
            } else {
                format!("Secret {secrets}")
            };
            not_applied(format!(
                "the credentials ({secrets}) changed after the connector was installed; the Partner API cannot change an installed connector's credentials, so Cyclr keeps the old ones. Restore the previous values, or install anew: a new CyclrConnectorInstall with another installedName (and remove this one in Cyclr)"
            ))
        }
        // Nothing to compare with now (the Secret or the partner unreadable): what was said stands.
        (_, None) => match stalled_message(&previous, Reason::CredentialsNotApplied) {
            Some(message) => not_applied(message),
            None => ready,
        },
        _ => ready,
    };
    let status = match (&health, &obs.credentials_digest) {
        // The first digest, or one under the partner's rotated key: the credentials now in
        // force are taken as the ones installed (nothing older can be compared).
        (health, Some(current)) if health.state == State::Ready => CyclrConnectorInstallStatus {
            credentials_digest: Some(current.clone()),
            ..previous
        },
        _ => previous,
    };
    Plan::Report {
        health,
        status,
        event: None,
    }
}

/// The message of the Stalled condition in `status`, if it has `reason`.
fn stalled_message(status: &CyclrConnectorInstallStatus, reason: Reason) -> Option<String> {
    condition(&status.conditions, READY)
        .filter(|c| c.reason == reason.as_str())
        .map(|c| c.message.clone())
}

/// What the install's account (`account`, from the watch) and its partner's `runtime` allow.
fn observe_account(
    install: &CyclrConnectorInstall,
    state: &InstallState,
    account: Option<&CyclrAccount>,
    runtime: Option<Arc<PartnerRuntime>>,
) -> AccountView {
    let namespace = install.namespace().unwrap_or_default();
    let name = &install.spec.account_ref.name;
    let Some(account) = account else {
        return AccountView::Waiting(Reason::AccountNotReady, format!("CyclrAccount {name:?} not found"));
    };
    let Some(account_id) = account.status.as_ref().and_then(|s| s.account_id.clone()) else {
        return AccountView::Waiting(
            Reason::AccountNotReady,
            format!("CyclrAccount {name:?} has no Cyclr account id yet"),
        );
    };
    let partner = &account.spec.partner_ref.name;
    let Some(runtime) = runtime else {
        return if state.partners.exists(partner) {
            AccountView::Waiting(
                Reason::PartnerNotReady,
                format!("CyclrPartner {partner:?} has not been checked yet"),
            )
        } else {
            AccountView::Waiting(
                Reason::PartnerNotFound,
                format!("CyclrPartner {partner:?} does not exist"),
            )
        };
    };
    if !runtime.admits(&state.services.namespace_labels(&namespace).unwrap_or_default()) {
        return AccountView::Waiting(
            Reason::PartnerNotAllowed,
            format!("CyclrPartner {partner:?} does not admit namespace {namespace:?}"),
        );
    }
    match runtime.state() {
        PartnerState::Unchecked => {
            return AccountView::Waiting(
                Reason::PartnerNotReady,
                format!("CyclrPartner {partner:?} has not been checked yet"),
            );
        }
        PartnerState::NotReady(why) => {
            return AccountView::Waiting(
                Reason::PartnerNotReady,
                format!("the account's partner is not ready: {why}"),
            );
        }
        PartnerState::Ready => {}
    }
    AccountView::Ready { account_id, runtime }
}

/// The credentials from the labelled Secret in the install's namespace.
async fn observe_credentials(install: &CyclrConnectorInstall, services: &Services) -> Result<CredentialsView, Failure> {
    let Some(auth) = &install.spec.auth else {
        return Ok(CredentialsView::Ready(ConnectorAuth::None));
    };
    let namespace = install.namespace().unwrap_or_default();
    let (name, keys): (&str, Vec<&str>) = match (&auth.api_key_secret_ref, &auth.basic_auth_secret_ref) {
        (Some(r), _) => (&r.name, vec![&r.key]),
        (None, Some(r)) => (&r.name, vec![&r.username_key, &r.password_key]),
        (None, None) => return Ok(CredentialsView::Ready(ConnectorAuth::None)),
    };
    let values = match services.secrets.values(&namespace, name, &keys).await? {
        Ok(values) => values,
        Err((reason, message)) => return Ok(CredentialsView::Missing(reason, message)),
    };
    Ok(CredentialsView::Ready(match values.as_slice() {
        [key] => ConnectorAuth::ApiKey(SecretString::from(key.clone())),
        [username, password] => ConnectorAuth::Basic {
            username: username.clone(),
            password: SecretString::from(password.clone()),
        },
        _ => unreachable!("one or two keys"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::PendingWrite;
    use cyclr::types::ConnectorSummary;
    use cyclr::{ClientConfig, CyclrClient};
    use driver::{Attempt, Pending};

    fn install() -> CyclrConnectorInstall {
        let spec = serde_json::from_value(serde_json::json!({
            "accountRef": {"name": "acme"}, "connectorName": "Slack", "connectorVersion": "v1",
            "auth": {"apiKeySecretRef": {"name": "slack-key"}}
        }))
        .unwrap();
        let mut i = CyclrConnectorInstall::new("slack", spec);
        i.metadata.namespace = Some("t".into());
        i.metadata.generation = Some(1);
        i
    }

    /// The decision, with the pending marker read from the install's status as the driver
    /// reads it, and this process's `attempt`.
    fn decide_with(
        install: &CyclrConnectorInstall,
        obs: &Observed,
        attempt: Option<Attempt>,
    ) -> Plan<CyclrConnectorInstall> {
        let facts = Facts {
            now: Utc::now(),
            seen_at: Utc::now(),
            pending: Pending {
                marker: install.status.as_ref().and_then(|s| s.pending_install.clone()),
                attempt,
            },
        };
        super::decide(install, obs, &facts)
    }

    fn decide(install: &CyclrConnectorInstall, obs: &Observed) -> Plan<CyclrConnectorInstall> {
        decide_with(install, obs, None)
    }

    fn ready(installed: InstalledView) -> Observed {
        let config = ClientConfig::new("http://127.0.0.1:9", "id", SecretString::from("s"));
        Observed {
            account: AccountView::Ready {
                account_id: "a1".into(),
                runtime: Arc::new(PartnerRuntime::new(
                    CyclrClient::new(config).unwrap(),
                    0,
                    Duration::from_secs(60),
                    Duration::from_secs(60),
                    None,
                    crate::secrets::CredentialsDigest::new("s"),
                )),
            },
            credentials: CredentialsView::Ready(ConnectorAuth::ApiKey(SecretString::from("k"))),
            credentials_digest: Some(digest("s", "k")),
            claimed_by: None,
            installed,
            _name_guard: None,
        }
    }

    /// The digest of API key `key` under partner secret `partner_secret`.
    fn digest(partner_secret: &str, key: &str) -> String {
        CredentialsDigest::new(partner_secret).of(&ConnectorAuth::ApiKey(SecretString::from(key)))
    }

    fn listed(name: &str, id: &str) -> InstalledConnector {
        InstalledConnector {
            id: id.into(),
            name: name.into(),
            description: None,
            authenticated: true,
            connector: ConnectorSummary {
                id: "1".into(),
                name: "Slack".into(),
                version: Some("v1".into()),
            },
        }
    }

    fn reason(plan: &Plan<CyclrConnectorInstall>) -> Option<Reason> {
        match plan {
            Plan::Report { health, .. } => Some(health.reason),
            _ => None,
        }
    }

    #[test]
    fn waits_for_its_account_and_names_a_missing_secret() {
        let mut obs = ready(InstalledView::NotListed);
        obs.account = AccountView::Waiting(Reason::AccountNotReady, "no id".into());
        assert_eq!(reason(&decide(&install(), &obs)), Some(Reason::AccountNotReady));
        let mut obs = ready(InstalledView::NotListed);
        obs.credentials = CredentialsView::Missing(Reason::SecretNotLabelled, "label it".into());
        assert_eq!(reason(&decide(&install(), &obs)), Some(Reason::SecretNotLabelled));
    }

    #[test]
    fn looks_before_installing_and_installs_when_absent() {
        assert!(matches!(
            decide(&install(), &ready(InstalledView::NotListed)),
            Plan::Refresh(())
        ));
        assert!(matches!(
            decide(&install(), &ready(InstalledView::Listed(vec![listed("other", "9")]))),
            Plan::Write { pending: Some(_), .. }
        ));
    }

    /// An install whose status was lost (a restore): only the annotation its install wrote.
    fn restored(account_id: &str) -> CyclrConnectorInstall {
        let mut i = install();
        i.metadata.annotations = Some([(annotations::INSTALLED_IN_ACCOUNT.to_string(), account_id.to_string())].into());
        i
    }

    #[test]
    fn after_a_restore_its_own_install_is_found_again_never_installed_twice() {
        let obs = ready(InstalledView::Listed(vec![listed("slack", "7")]));
        match decide(&restored("a1"), &obs) {
            Plan::Report { health, status, event } => {
                assert_eq!((health.state, health.reason), (State::Ready, Reason::Installed));
                assert!(status.installed_at.is_some());
                assert_eq!(status.account_id.as_deref(), Some("a1"));
                assert_eq!(status.installed_connector_id.as_deref(), Some("7"));
                assert!(event.is_none());
            }
            _ => panic!("expected a report"),
        }
        // Gone from Cyclr meanwhile: said, not installed again.
        let obs = ready(InstalledView::Listed(vec![listed("other", "9")]));
        assert_eq!(
            reason(&decide(&restored("a1"), &obs)),
            Some(Reason::ExternalInstallMissing)
        );
        // An annotation naming another account proves nothing here: the name is in use.
        let obs = ready(InstalledView::Listed(vec![listed("slack", "7")]));
        assert_eq!(reason(&decide(&restored("a2"), &obs)), Some(Reason::InstalledNameInUse));
    }

    #[test]
    fn an_object_older_than_our_own_install_is_not_decided_from() {
        // Installed, but the status write failed and the watch shows the object from before
        // the marker: recorded from memory, not refused as a name in use.
        let obs = ready(InstalledView::Listed(vec![listed("slack", "7")]));
        let answered = Attempt {
            ended: Utc::now(),
            sent: "slack".into(),
            made: Some("a1".into()),
        };
        assert_eq!(
            reason(&decide_with(&install(), &obs, Some(answered))),
            Some(Reason::Installed)
        );
    }

    #[test]
    fn a_lost_install_is_looked_for_under_the_name_it_sent() {
        let mut i = install();
        i.status = Some(CyclrConnectorInstallStatus {
            pending_install: Some(PendingWrite {
                since: "2026-01-01T00:00:00Z".into(),
                sent: Some("slack-old".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        match decide(&i, &ready(InstalledView::Listed(vec![listed("slack-old", "7")]))) {
            Plan::Report { status, health, .. } => {
                assert_eq!(health.reason, Reason::Installed);
                assert_eq!(status.installed_connector_id.as_deref(), Some("7"));
            }
            _ => panic!("expected the install it sent to be recorded"),
        }
    }

    #[test]
    fn the_annotation_records_where_it_was_installed_once_installed() {
        let mut status = CyclrConnectorInstallStatus {
            account_id: Some("a1".into()),
            ..Default::default()
        };
        assert_eq!(CyclrConnectorInstall::identity(&status), None, "not installed yet");
        status.installed_at = Some(Time(Timestamp::now()));
        assert_eq!(
            CyclrConnectorInstall::identity(&status),
            Some((annotations::INSTALLED_IN_ACCOUNT, "a1".to_string()))
        );
    }

    #[test]
    fn a_same_named_install_is_refused_never_adopted() {
        let obs = ready(InstalledView::Listed(vec![listed("slack", "7")]));
        assert_eq!(reason(&decide(&install(), &obs)), Some(Reason::InstalledNameInUse));
        let mut obs = ready(InstalledView::NotListed);
        obs.claimed_by = Some(Holder {
            created: "0".into(),
            uid: "x".into(),
            name: "t/first".into(),
        });
        assert_eq!(reason(&decide(&install(), &obs)), Some(Reason::InstalledNameInUse));
    }

    #[test]
    fn after_a_lost_response_only_a_new_install_is_recorded() {
        let mut i = install();
        i.status = Some(CyclrConnectorInstallStatus {
            pending_install: Some(PendingWrite {
                since: "2026-01-01T00:00:00Z".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        match decide(&i, &ready(InstalledView::Listed(vec![listed("slack", "7")]))) {
            Plan::Report { status, health, .. } => {
                assert_eq!(health.reason, Reason::Installed);
                assert_eq!(status.installed_connector_id.as_deref(), Some("7"));
                assert!(status.pending_install.is_none());
            }
            _ => panic!("expected the install to be recorded"),
        }
        assert_eq!(
            reason(&decide(&i, &ready(InstalledView::Unavailable("404".into())))),
            Some(Reason::InstallOutcomeUnknown)
        );
    }

    /// An install made with `applied` credentials (a digest) and the health decide gives.
    fn installed_with(applied: Option<String>, obs: &Observed) -> (Reason, Option<String>) {
        let mut i = install();
        i.status = Some(CyclrConnectorInstallStatus {
            installed_at: Some(Time(Timestamp::now())),
            credentials_digest: applied,
            ..Default::default()
        });
        match decide(&i, obs) {
            Plan::Report { health, status, .. } => (health.reason, status.credentials_digest),
            _ => panic!("an installed connector is never written again"),
        }
    }

    #[test]
    fn installed_is_final() {
        let obs = ready(InstalledView::NotListed);
        let same = Some(digest("s", "k"));
        assert_eq!(installed_with(same.clone(), &obs), (Reason::Installed, same.clone()));
        // Installed before digests were kept: the credentials in force become the baseline.
        assert_eq!(installed_with(None, &obs), (Reason::Installed, same.clone()));
    }

    #[test]
    fn changed_credentials_are_reported_not_hidden() {
        let obs = ready(InstalledView::NotListed);
        let old = Some(digest("s", "old-key"));
        assert_eq!(
            installed_with(old.clone(), &obs),
            (Reason::CredentialsNotApplied, old.clone())
        );
        // The partner's secret rotated: the old digest cannot be compared, so it is replaced.
        let other_key = Some(digest("rotated", "old-key"));
        assert_eq!(
            installed_with(other_key, &obs),
            (Reason::Installed, Some(digest("s", "k")))
        );
    }

    #[test]
    fn a_report_stands_while_the_credentials_cannot_be_read() {
        let mut obs = ready(InstalledView::NotListed);
        obs.credentials = CredentialsView::Missing(Reason::SecretNotFound, "gone".into());
        obs.credentials_digest = None;
        let mut i = install();
        i.status = Some(CyclrConnectorInstallStatus {
            installed_at: Some(Time(Timestamp::now())),
            credentials_digest: Some(digest("s", "old-key")),
            conditions: Health::stalled(Reason::CredentialsNotApplied, "changed").conditions(Some(1), &[]),
            ..Default::default()
        });
        assert_eq!(reason(&decide(&i, &obs)), Some(Reason::CredentialsNotApplied));
        i.status.as_mut().unwrap().conditions = vec![];
        assert_eq!(reason(&decide(&i, &obs)), Some(Reason::Installed));
    }
}
