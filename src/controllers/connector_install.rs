//! CyclrConnectorInstall: installs a connector into its account at most once, across
//! restarts, resyncs and lost responses, and never a second install of one installed name.
//! On a `V1` partner also: by connector id, with properties, re-authenticated when its
//! credentials change, deleted with its resource (`deletionPolicy: Delete`).
//! Observe → decide (pure) → act; the driver does the rest.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use driver::{Applied, Cleanup, Driver, Facts, Intent, Kind, Packed, Plan, Reconciler, State, Watched};
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{ResourceExt, api::Api};
use secrecy::{ExposeSecret, SecretString};

use super::partners::{NameGuard, PartnerRuntime, PartnerState};
use super::{Services, namespaced_api, users_of_secret};
use crate::index::Holder;
use crate::reason::{Failure, Health, Reason};
use crate::resources::{
    CyclrAccount, CyclrApi, CyclrConnectorInstall, CyclrConnectorInstallSpec, CyclrConnectorInstallStatus,
    DeletionPolicy, INSTALL_FINALIZER, READY, annotation, annotations, condition,
};
use crate::secrets::{CredentialsDigest, Unusable};
use cyclr::types::{
    ConnectorAuth, ConnectorProperty, Deleted, InstallAccountConnector, InstallConnectorRequest, InstalledConnector,
};

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

/// The install controller, and its watch's store. An installed connector's account goes to
/// `installed` (the cycles of that account that wait for it look again).
pub fn controller(
    driver: Arc<Driver>,
    state: InstallState,
    secret_changes: UnboundedReceiver<Secret>,
    account_changes: UnboundedReceiver<ObjectRef<CyclrAccount>>,
    installed: UnboundedSender<ObjectRef<CyclrAccount>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (
    impl Stream<Item = driver::ReconcileResult<CyclrConnectorInstall>>,
    Store<Packed<CyclrConnectorInstall>>,
) {
    let api = namespaced_api::<Watched<CyclrConnectorInstall>>(driver.client.clone(), &state.services.config);
    // The installed-name index is fed by the installs' own watch.
    let index = state.services.clone();
    let watch = state.services.config.served();
    let kind = Kind::<CyclrConnectorInstall>::new(driver, state, watch);
    let controller = driver::controller_for(&kind, api, move |event| match event {
        watcher::Event::Apply(Watched(Ok(i))) | watcher::Event::InitApply(Watched(Ok(i))) => {
            index.install_claims.set(Holder::of(&i.metadata), vec![install_key(i)]);
            // Not at the initial list: every cycle looks at start anyway.
            let changed = matches!(event, watcher::Event::Apply(_));
            if changed && i.status.as_ref().is_some_and(|s| s.installed_at.is_some()) {
                let account = ObjectRef::new(&i.spec.account_ref.name).within(&i.namespace().unwrap_or_default());
                let _ = installed.unbounded_send(account);
            }
        }
        _ => {}
    });
    let store = controller.store();
    let by_account = controller.store();
    let users = users_of_secret(controller.store(), |i: &CyclrConnectorInstall, s: &Secret| {
        i.namespace() == s.namespace() && i.secret_names().contains(&s.name_any().as_str())
    });
    let controller = controller
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
        .run(driver::reconcile, driver::error_policy, kind);
    (controller, store)
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
    /// The properties to send with the install (values read from their Secrets), or why
    /// one cannot be had; empty once installed (they are sent only with the install).
    pub properties: Result<Vec<ConnectorProperty>, Unusable>,
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
    type Write = InstallWrite;

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
        let account = observe_account(self, state, cached.as_ref());
        let credentials = observe_credentials(self, services).await?;
        let properties = observe_properties(self, services).await?;
        let credentials_digest = match (&credentials, runtime) {
            (CredentialsView::Ready(auth), Some(runtime)) => Some(runtime.credentials_digest.of(auth)),
            _ => None,
        };
        let mut observed = Observed {
            account,
            credentials,
            credentials_digest,
            properties,
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
            let listed = match runtime.dialect {
                CyclrApi::Partner => runtime.client.installed_connectors(account_id).await,
                // Every page.
                CyclrApi::V1 => (runtime.client.list_account_connectors_v1(account_id).await)
                    .map(|list| list.into_iter().map(InstalledConnector::from).collect()),
            };
            observed.installed = match listed {
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
        write: InstallWrite,
    ) -> Result<Applied<Self>, Failure> {
        let AccountView::Ready { account_id, runtime } = &observed.account else {
            unreachable!("installs are decided only for a ready account")
        };
        match write {
            InstallWrite::Install { auth, properties } => {
                self.install(state, observed, account_id, runtime, auth, properties)
                    .await
            }
            InstallWrite::Reauthenticate { account_id, id, auth } => {
                let answer = runtime
                    .client
                    .reauthenticate_connector_v1(&account_id, &id, &auth)
                    .await
                    .map_err(Failure::cyclr("re-authenticating the installed connector"))?;
                let previous = self.status.clone().unwrap_or_default();
                if !answer.authenticated {
                    return Ok(Applied {
                        health: Health::stalled(
                            Reason::CredentialsNotApplied,
                            format!(
                                "Cyclr did not accept the changed credentials for account connector {id} (Authenticated: false); correct the Secret's values"
                            ),
                        ),
                        status: previous,
                        event: None,
                        made: None,
                    });
                }
                Ok(Applied {
                    health: Health::ready(Reason::Installed, "the connector is installed"),
                    status: CyclrConnectorInstallStatus {
                        installed_connector_id: Some(id.clone()),
                        credentials_digest: observed.credentials_digest.clone(),
                        ..previous
                    },
                    event: Some((
                        Reason::Reauthenticated,
                        format!(
                            "re-authenticated account connector {id} in account {account_id} with the changed credentials"
                        ),
                    )),
                    made: None,
                })
            }
        }
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

    const FINALIZER: Option<&'static str> = Some(INSTALL_FINALIZER);

    /// Only a resource whose deletion deletes the account connector, on a partner that can.
    fn needs_finalizer(&self, observed: &Observed) -> bool {
        self.spec.deletion_policy == DeletionPolicy::Delete
            && matches!(&observed.account, AccountView::Ready { runtime, .. } if runtime.dialect == CyclrApi::V1)
    }

    /// `DELETE /v1.0/account/connectors/{id}` (404 counts as done), unless the policy lets
    /// the connector be, nothing was installed, or the partner cannot ([`before_delete`]).
    async fn cleanup(&self, state: &InstallState) -> Result<Cleanup<Reason>, Failure> {
        let account = state.account(&self.namespace().unwrap_or_default(), &self.spec.account_ref.name);
        let partner = account.as_ref().map(|a| a.spec.partner_ref.name.as_str());
        let runtime = partner.and_then(|p| state.services.partners.get(p));
        let view = runtime.as_ref().map(|r| (r.state(), r.dialect));
        let partner_exists = partner.is_some_and(|p| state.partners.exists(p));
        let account_id = installed_in(self);
        if let Some(done) = before_delete(self, partner, view, partner_exists, account_id) {
            return Ok(done);
        }
        let (Some(runtime), Some(account_id)) = (runtime, account_id) else {
            unreachable!("before_delete lets a delete through only for a ready partner and an install")
        };
        let name = self.installed_name();
        let status = self.status.clone().unwrap_or_default();
        // Installed before its id was kept (on the Partner API): found by its unique name.
        let id = match status.installed_connector_id {
            Some(id) => Some(id),
            None => (runtime.client.list_account_connectors_v1(account_id).await)
                .map_err(Failure::cyclr("listing the account's installed connectors"))?
                .into_iter()
                .find(|c| c.name == name)
                .map(|c| c.id),
        };
        let Some(id) = id else {
            return Ok(Cleanup::Done(Some((
                Reason::Deleted,
                format!("account {account_id} has no installed connector named {name:?}: nothing to delete"),
            ))));
        };
        let note = match runtime
            .client
            .delete_account_connector_v1(account_id, &id)
            .await
            .map_err(Failure::cyclr("the installed connector delete"))?
        {
            Deleted::Deleted => {
                format!(
                    "deleted account connector {id} ({name:?}) from account {account_id} with its resource (deletionPolicy Delete)"
                )
            }
            Deleted::AlreadyGone => {
                format!(
                    "account connector {id} ({name:?}) in account {account_id} was already gone (deletionPolicy Delete)"
                )
            }
        };
        Ok(Cleanup::Done(Some((Reason::Deleted, note))))
    }
}

/// One Cyclr write of an install.
#[derive(Debug)]
pub enum InstallWrite {
    /// Install the connector with these credentials and (`V1`) properties.
    Install {
        /// The credentials.
        auth: ConnectorAuth,
        /// The account-connector properties.
        properties: Vec<ConnectorProperty>,
    },
    /// Send changed credentials to an installed account connector (`V1`).
    Reauthenticate {
        /// The account it is installed in.
        account_id: String,
        /// The account connector's id.
        id: String,
        /// The credentials now in the Secret.
        auth: ConnectorAuth,
    },
}

impl CyclrConnectorInstall {
    /// Claims the installed name, then installs: Install Connector on the Partner API, the
    /// v1.0 install (by `connectorID` or name, with properties, answering the account
    /// connector's id) on `V1`.
    async fn install(
        &self,
        state: &InstallState,
        observed: &Observed,
        account_id: &str,
        runtime: &PartnerRuntime,
        auth: ConnectorAuth,
        properties: Vec<ConnectorProperty>,
    ) -> Result<Applied<Self>, Failure> {
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
        let spec = &self.spec;
        let installed_connector_id = match runtime.dialect {
            CyclrApi::Partner => {
                let request = InstallConnectorRequest {
                    account_id: account_id.to_string(),
                    connector_name: spec.connector_name.clone(),
                    connector_version: spec.connector_version.clone(),
                    installed_name: self.installed_name(),
                    auth,
                };
                runtime
                    .client
                    .install_connector(&request)
                    .await
                    .map_err(Failure::cyclr("the connector install"))?;
                None
            }
            CyclrApi::V1 => {
                let request = InstallAccountConnector {
                    name: self.installed_name(),
                    description: None,
                    auth,
                    properties,
                };
                let connector = spec.connector_id.as_deref().unwrap_or(&spec.connector_name);
                let answer = runtime
                    .client
                    .install_connector_v1(account_id, connector, &request)
                    .await
                    .map_err(Failure::cyclr("the connector install"))?;
                Some(answer.id)
            }
        };
        let id_note = installed_connector_id
            .as_ref()
            .map_or(String::new(), |id| format!(" (account connector {id})"));
        Ok(Applied {
            health: Health::ready(Reason::Installed, "the connector is installed"),
            status: CyclrConnectorInstallStatus {
                account_id: Some(account_id.to_string()),
                installed_at: Some(Time(Timestamp::now())),
                installed_connector_id,
                credentials_digest: observed.credentials_digest.clone(),
                ..self.status.clone().unwrap_or_default()
            },
            event: Some((
                Reason::Installed,
                format!(
                    "installed connector {} {} into account {account_id}{id_note}",
                    spec.connector_name, spec.connector_version
                ),
            )),
            // Where it was installed: what the watch may not show yet.
            made: Some(account_id.to_string()),
        })
    }
}

/// The account the install went into, if it was made: status, else the annotation written
/// after the install.
fn installed_in(install: &CyclrConnectorInstall) -> Option<&str> {
    let status = install.status.as_ref();
    status
        .filter(|s| s.installed_at.is_some())
        .and_then(|s| s.account_id.as_deref())
        .or_else(|| annotation(&install.metadata, annotations::INSTALLED_IN_ACCOUNT))
}

/// Whether a deleting install's account connector is to be left alone or cannot be deleted
/// now (pure): `None` when the delete goes ahead. `partner` is the account's CyclrPartner
/// (`None`: the CyclrAccount is gone), `runtime` its state and dialect when in service,
/// `account_id` where the connector was installed (`None`: nothing was).
pub fn before_delete(
    install: &CyclrConnectorInstall,
    partner: Option<&str>,
    runtime: Option<(PartnerState, CyclrApi)>,
    partner_exists: bool,
    account_id: Option<&str>,
) -> Option<Cleanup<Reason>> {
    if install.spec.deletion_policy != DeletionPolicy::Delete {
        return Some(Cleanup::Done(None));
    }
    let Some(account_id) = account_id else {
        return Some(Cleanup::Done(None));
    };
    let name = install.installed_name();
    // Never hang (a namespace deleted with its accounts): without its CyclrAccount the
    // partner is unknown; the account's own Delete removes its connectors.
    let Some(partner) = partner else {
        return Some(Cleanup::Done(Some((
            Reason::DeletionBlocked,
            format!(
                "installed connector {name:?} in account {account_id} was not deleted: CyclrAccount {:?} is gone, so its partner is unknown",
                install.spec.account_ref.name
            ),
        ))));
    };
    let deleting = super::Deleting {
        what: format!("installed connector {name:?} in account {account_id}"),
        kept: "the connector",
        objects: "installed connectors",
        resource: format!("cyclrconnectorinstall {}", install.name_any()),
    };
    deleting.through(partner, runtime, partner_exists)
}

/// What the spec asks that the partner's `dialect` cannot do (pure): the Partner API installs
/// by connector name, without properties, and cannot delete an install.
pub fn unsupported_by(spec: &CyclrConnectorInstallSpec, dialect: CyclrApi) -> Option<Health> {
    if dialect == CyclrApi::V1 {
        return None;
    }
    let fields: Vec<&str> = [
        (spec.connector_id.is_some(), "spec.connectorID"),
        (!spec.properties.is_empty(), "spec.properties"),
        (
            spec.deletion_policy == DeletionPolicy::Delete,
            "spec.deletionPolicy: Delete",
        ),
    ]
    .into_iter()
    .filter_map(|(set, field)| set.then_some(field))
    .collect();
    (!fields.is_empty()).then(|| {
        Health::stalled(
            Reason::InvalidSpec,
            format!(
                "{} need a CyclrPartner with cyclrAPI V1: the Partner API installs by connector name only, without properties, and cannot delete an installed connector",
                fields.join(", ")
            ),
        )
    })
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
    if let AccountView::Ready { runtime, .. } = &obs.account
        && let Some(health) = unsupported_by(&install.spec, runtime.dialect)
    {
        return report(health);
    }
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
    let properties = match &obs.properties {
        Err((reason, message)) => return report(Health::reconciling(*reason, message.clone())),
        Ok(properties) => properties.clone(),
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
        write: InstallWrite::Install { auth, properties },
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
/// Changed ones are sent on a `V1` partner (one re-authenticate); the Partner API has no
/// update for an install, so there that is said, and restoring the Secret's values makes it
/// Ready again.
fn installed(
    install: &CyclrConnectorInstall,
    obs: &Observed,
    previous: CyclrConnectorInstallStatus,
) -> Plan<CyclrConnectorInstall> {
    let ready = Health::ready(Reason::Installed, "the connector is installed");
    let not_applied = |message: String| Health::stalled(Reason::CredentialsNotApplied, message);
    let health = match (&previous.credentials_digest, &obs.credentials_digest) {
        (Some(applied), Some(current)) if CredentialsDigest::comparable(applied, current) && applied != current => {
            let secrets = install.credentials_secret_names().join(", ");
            let secrets = if secrets.is_empty() {
                "spec.auth".to_string()
            } else {
                format!("Secret {secrets}")
            };
            match reauthenticate(install, obs, &previous) {
                Ok(plan) => return plan,
                Err(Some(why)) => not_applied(format!(
                    "the credentials ({secrets}) changed after the connector was installed and cannot be sent: {why}"
                )),
                Err(None) => not_applied(format!(
                    "the credentials ({secrets}) changed after the connector was installed; the Partner API cannot change an installed connector's credentials, so Cyclr keeps the old ones. Restore the previous values, install anew (a new CyclrConnectorInstall with another installedName, and remove this one in Cyclr), or use a CyclrPartner with cyclrAPI V1, which re-authenticates"
                )),
            }
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

/// The re-authentication of an installed connector whose credentials changed (pure): the
/// plan (a look at the list first when its id was never kept), or why it cannot be sent
/// (`None`: the partner's dialect has no re-authentication).
fn reauthenticate(
    install: &CyclrConnectorInstall,
    obs: &Observed,
    previous: &CyclrConnectorInstallStatus,
) -> Result<Plan<CyclrConnectorInstall>, Option<String>> {
    let AccountView::Ready { account_id, runtime } = &obs.account else {
        return Err(Some("its account or partner is not ready".into()));
    };
    if runtime.dialect != CyclrApi::V1 {
        return Err(None);
    }
    let CredentialsView::Ready(auth) = &obs.credentials else {
        return Err(Some("the credentials cannot be read".into()));
    };
    if matches!(auth, ConnectorAuth::None) {
        return Err(Some("spec.auth was removed; Cyclr keeps the old credentials".into()));
    }
    let account_id = previous.account_id.clone().unwrap_or_else(|| account_id.clone());
    let name = install.installed_name();
    let id = match (&previous.installed_connector_id, &obs.installed) {
        (Some(id), _) => id.clone(),
        (None, InstalledView::NotListed) => return Ok(Plan::Refresh(())),
        (None, InstalledView::Listed(list)) => match list.iter().find(|c| c.name == name) {
            Some(found) => found.id.clone(),
            None => {
                return Err(Some(format!(
                    "account {account_id} has no installed connector named {name:?} now"
                )));
            }
        },
        (None, InstalledView::Unavailable(why)) => return Err(Some(why.clone())),
    };
    Ok(Plan::Write {
        write: InstallWrite::Reauthenticate {
            account_id,
            id: id.clone(),
            auth: auth.clone(),
        },
        pending: None,
        status: CyclrConnectorInstallStatus {
            installed_connector_id: Some(id),
            ..previous.clone()
        },
        event: None,
    })
}

/// The message of the Stalled condition in `status`, if it has `reason`.
fn stalled_message(status: &CyclrConnectorInstallStatus, reason: Reason) -> Option<String> {
    condition(&status.conditions, READY)
        .filter(|c| c.reason == reason.as_str())
        .map(|c| c.message.clone())
}

/// What the install's account (`account`, from the watch) and its partner allow.
fn observe_account(
    install: &CyclrConnectorInstall,
    state: &InstallState,
    account: Option<&CyclrAccount>,
) -> AccountView {
    let namespace = install.namespace().unwrap_or_default();
    match super::usable_account(
        &state.services,
        &state.partners,
        &namespace,
        &install.spec.account_ref.name,
        account,
    ) {
        Ok((account_id, runtime)) => AccountView::Ready { account_id, runtime },
        Err((reason, message)) => AccountView::Waiting(reason, message),
    }
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

/// The properties to send, their values read from labelled Secrets; nothing to read once
/// installed (they are sent only with the install).
async fn observe_properties(
    install: &CyclrConnectorInstall,
    services: &Services,
) -> Result<Result<Vec<ConnectorProperty>, Unusable>, Failure> {
    let installed = install.status.as_ref().is_some_and(|s| s.installed_at.is_some());
    if installed {
        return Ok(Ok(vec![]));
    }
    let namespace = install.namespace().unwrap_or_default();
    let resolved = services
        .secrets
        .resolve(&namespace, "spec.properties", &install.spec.properties)
        .await?;
    Ok(resolved.map(|values| {
        values
            .into_iter()
            .map(|(name, value)| ConnectorProperty {
                name,
                value: Some(value.expose_secret().to_owned()),
            })
            .collect()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::PendingWrite;
    use cyclr::ClientConfig;
    use cyclr::types::ConnectorSummary;
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
        ready_on(CyclrApi::Partner, installed)
    }

    /// A ready account of a partner that speaks `dialect`.
    fn ready_on(dialect: CyclrApi, installed: InstalledView) -> Observed {
        let config = ClientConfig::new("http://127.0.0.1:9", "id", SecretString::from("s"));
        let runtime = PartnerRuntime::for_tests(config).with_dialect(dialect);
        Observed {
            account: AccountView::Ready {
                account_id: "a1".into(),
                runtime: Arc::new(runtime),
            },
            credentials: CredentialsView::Ready(ConnectorAuth::ApiKey(SecretString::from("k"))),
            credentials_digest: Some(digest("s", "k")),
            properties: Ok(vec![]),
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

    /// An install made (into `a1`) with an older API key, its account connector id `id`.
    fn rotated(id: Option<&str>) -> CyclrConnectorInstall {
        let mut i = install();
        i.status = Some(CyclrConnectorInstallStatus {
            account_id: Some("a1".into()),
            installed_at: Some(Time(Timestamp::now())),
            installed_connector_id: id.map(str::to_string),
            credentials_digest: Some(digest("s", "old-key")),
            ..Default::default()
        });
        i
    }

    fn reauthenticates(plan: &Plan<CyclrConnectorInstall>) -> Option<(String, String)> {
        match plan {
            Plan::Write {
                write: InstallWrite::Reauthenticate { account_id, id, .. },
                pending: None,
                ..
            } => Some((account_id.clone(), id.clone())),
            _ => None,
        }
    }

    #[test]
    fn on_v1_rotated_credentials_are_sent_to_the_installed_connector_once() {
        let obs = ready_on(CyclrApi::V1, InstalledView::NotListed);
        assert_eq!(
            reauthenticates(&decide(&rotated(Some("7")), &obs)),
            Some(("a1".into(), "7".into()))
        );
        // Its id never kept (installed through the Partner API): looked up by name first.
        assert!(matches!(decide(&rotated(None), &obs), Plan::Refresh(())));
        let listed = ready_on(CyclrApi::V1, InstalledView::Listed(vec![listed("slack", "9")]));
        assert_eq!(
            reauthenticates(&decide(&rotated(None), &listed)),
            Some(("a1".into(), "9".into()))
        );
        let gone = ready_on(CyclrApi::V1, InstalledView::Listed(vec![]));
        assert_eq!(
            reason(&decide(&rotated(None), &gone)),
            Some(Reason::CredentialsNotApplied)
        );
        // Unchanged credentials: nothing sent.
        let mut same = rotated(Some("7"));
        same.status.as_mut().unwrap().credentials_digest = Some(digest("s", "k"));
        assert_eq!(reason(&decide(&same, &obs)), Some(Reason::Installed));
        // The Partner API cannot: said, as before.
        let partner = ready_on(CyclrApi::Partner, InstalledView::NotListed);
        assert_eq!(
            reason(&decide(&rotated(Some("7")), &partner)),
            Some(Reason::CredentialsNotApplied)
        );
    }

    #[test]
    fn properties_wait_for_their_secret_and_go_with_the_install() {
        let mut obs = ready_on(CyclrApi::V1, InstalledView::Listed(vec![]));
        obs.properties = Err((Reason::SecretNotFound, "Secret t/settings not found".into()));
        assert_eq!(reason(&decide(&install(), &obs)), Some(Reason::SecretNotFound));
        let subdomain = ConnectorProperty {
            name: "Subdomain".into(),
            value: Some("acme".into()),
        };
        obs.properties = Ok(vec![subdomain.clone()]);
        match decide(&install(), &obs) {
            Plan::Write {
                write: InstallWrite::Install { properties, .. },
                pending: Some(_),
                ..
            } => assert_eq!(properties, [subdomain]),
            _ => panic!("expected an install with its properties"),
        }
    }

    #[test]
    fn the_partner_api_refuses_what_only_v1_can_do() {
        let mut i = install();
        i.spec.connector_id = Some("1234".into());
        i.spec.deletion_policy = DeletionPolicy::Delete;
        let health = unsupported_by(&i.spec, CyclrApi::Partner).expect("refused");
        assert_eq!(health.reason, Reason::InvalidSpec);
        assert!(health.message.contains("spec.connectorID") && health.message.contains("spec.deletionPolicy"));
        assert!(unsupported_by(&i.spec, CyclrApi::V1).is_none());
        assert!(unsupported_by(&install().spec, CyclrApi::Partner).is_none());
        assert_eq!(
            reason(&decide(&i, &ready(InstalledView::NotListed))),
            Some(Reason::InvalidSpec)
        );
        assert!(
            !i.needs_finalizer(&ready(InstalledView::NotListed)),
            "Partner: nothing to delete"
        );
        assert!(i.needs_finalizer(&ready_on(CyclrApi::V1, InstalledView::NotListed)));
        assert!(
            !install().needs_finalizer(&ready_on(CyclrApi::V1, InstalledView::NotListed)),
            "Orphan"
        );
    }

    #[test]
    fn a_delete_goes_ahead_only_when_it_can_and_never_hangs() {
        let mut i = rotated(Some("7"));
        let v1 = Some((PartnerState::Ready, CyclrApi::V1));
        assert_eq!(
            before_delete(&i, Some("p"), v1.clone(), true, Some("a1")),
            Some(Cleanup::Done(None)),
            "Orphan"
        );
        i.spec.deletion_policy = DeletionPolicy::Delete;
        assert_eq!(before_delete(&i, Some("p"), v1.clone(), true, Some("a1")), None);
        assert_eq!(
            before_delete(&i, Some("p"), v1, true, None),
            Some(Cleanup::Done(None)),
            "nothing was installed"
        );
        assert!(matches!(
            before_delete(&i, None, None, false, Some("a1")),
            Some(Cleanup::Done(Some((Reason::DeletionBlocked, _))))
        ));
        for (runtime, exists) in [
            (None, false),
            (Some((PartnerState::NotReady("no Secret".into()), CyclrApi::V1)), true),
            (Some((PartnerState::Ready, CyclrApi::Partner)), true),
        ] {
            match before_delete(&i, Some("p"), runtime, exists, Some("a1")) {
                Some(Cleanup::Blocked(health)) => {
                    assert_eq!(health.reason, Reason::DeletionBlocked);
                    assert!(health.message.contains("deletionPolicy") && health.message.contains("Orphan"));
                }
                other => panic!("expected a blocked delete, got {other:?}"),
            }
        }
        assert!(matches!(
            before_delete(&i, Some("p"), None, true, Some("a1")),
            Some(Cleanup::Blocked(Health {
                reason: Reason::PartnerNotReady,
                ..
            }))
        ));
    }
}
