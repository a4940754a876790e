//! CyclrConnectorInstall: installs a connector into its account at most once, across
//! restarts, resyncs and lost responses.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use secrecy::SecretString;

use super::partners::{PartnerRuntime, PartnerState};
use super::{Context, Error, controller_for, error_policy, guarded, namespaced_api};
use crate::resources::{
    CyclrAccount, CyclrConnectorInstall, CyclrConnectorInstallStatus, Health, annotation, annotations, is_paused,
    same_conditions, stalled_reason,
};
use cyclr::CyclrError;
use cyclr::types::{ConnectorAuth, InstallConnectorRequest, InstalledConnector};

pub fn controller(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    let controller = controller_for(
        namespaced_api::<DeserializeGuard<CyclrConnectorInstall>>(ctx.client.clone(), &ctx.config),
        &ctx.config,
    );
    let by_account = controller.store();
    let by_secret = controller.store();
    let refs = |store: &kube::runtime::reflector::Store<DeserializeGuard<CyclrConnectorInstall>>,
                namespace: Option<String>,
                wanted: &dyn Fn(&CyclrConnectorInstall) -> bool| {
        store
            .state()
            .iter()
            .filter_map(|g| g.0.as_ref().ok())
            .filter(|i| i.namespace() == namespace && wanted(i))
            .map(|i| ObjectRef::new(&i.name_any()).within(&i.namespace().unwrap_or_default()))
            .collect::<Vec<_>>()
    };
    let mut secrets_config = watcher::Config::default();
    if let Some(selector) = &ctx.config.label_selector {
        secrets_config = secrets_config.labels(selector);
    }
    controller
        // An account getting its id (or becoming ready) wakes the installs waiting on it.
        .watches(
            namespaced_api::<CyclrAccount>(ctx.client.clone(), &ctx.config),
            watcher::Config::default(),
            move |account| {
                let name = account.name_any();
                refs(&by_account, account.namespace(), &|i| i.spec.account_ref.name == name)
            },
        )
        // A credentials Secret appearing wakes the installs that wait for it.
        .watches(
            namespaced_api::<Secret>(ctx.client.clone(), &ctx.config),
            secrets_config,
            move |secret| {
                let name = secret.name_any();
                refs(&by_secret, secret.namespace(), &|i| {
                    i.secret_names().contains(&name.as_str())
                })
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(|obj, ctx| guarded(obj, ctx, reconcile), error_policy, ctx)
        .map(|_| ())
}

/// The account as an install needs it.
pub enum AccountView {
    Missing,
    NotReady(String),
    Ready { account_id: String },
}

/// The connector credentials from the referenced Secret.
pub enum CredentialsView {
    Ready(ConnectorAuth),
    Missing { reason: &'static str, message: String },
}

/// The account's installed connectors (v1.0 list), when looked at.
pub enum InstalledView<'a> {
    NotListed,
    /// The API offers no list: an install cannot be confirmed.
    Unavailable(String),
    Listed(&'a [InstalledConnector]),
}

pub struct Observation<'a> {
    pub install: &'a CyclrConnectorInstall,
    pub account: AccountView,
    pub partner_ready: Result<(), String>,
    pub credentials: &'a CredentialsView,
    pub installed: InstalledView<'a>,
}

#[derive(Debug, PartialEq)]
pub enum Decision {
    Report(Health),
    DropPendingAnnotation,
    /// Look at what the account has installed before deciding.
    ListInstalled {
        account_id: String,
    },
    Install {
        account_id: String,
    },
    /// The install exists already (made by an attempt whose response was lost, or by hand).
    Record {
        account_id: String,
        found: InstalledConnector,
    },
}

/// The one decision of a reconcile (pure).
pub fn decide(obs: &Observation) -> Decision {
    let install = obs.install;
    let status = install.status.clone().unwrap_or_default();
    if is_paused(&install.metadata) {
        return Decision::Report(Health::paused());
    }
    let pending = annotation(&install.metadata, annotations::INSTALL_PENDING).is_some();
    if status.installed_at.is_some() {
        if pending {
            return Decision::DropPendingAnnotation;
        }
        return Decision::Report(Health::ready("Installed", "the connector is installed"));
    }
    if status.observed_generation == install.metadata.generation
        && let Some(reason) = stalled_reason(&status.conditions)
    {
        let message = crate::resources::condition(&status.conditions, crate::resources::STALLED)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        return Decision::Report(Health::stalled(reason, message));
    }
    let account_name = &install.spec.account_ref.name;
    let account_id = match &obs.account {
        AccountView::Missing => {
            return Decision::Report(Health::progressing(
                "AccountNotReady",
                format!("CyclrAccount {account_name:?} not found"),
            ));
        }
        AccountView::NotReady(why) => {
            return Decision::Report(Health::progressing(
                "AccountNotReady",
                format!("CyclrAccount {account_name:?} {why}"),
            ));
        }
        AccountView::Ready { account_id } => account_id.clone(),
    };
    if let Err(why) = &obs.partner_ready {
        return Decision::Report(Health::progressing("PartnerNotReady", why.clone()));
    }
    if let CredentialsView::Missing { reason, message } = obs.credentials {
        return Decision::Report(Health::progressing(reason, message.clone()));
    }
    let installed = match &obs.installed {
        InstalledView::NotListed => return Decision::ListInstalled { account_id },
        InstalledView::Unavailable(why) if pending => {
            return Decision::Report(Health::stalled(
                "InstallOutcomeUnknown",
                format!(
                    "an earlier install attempt may have succeeded and the installed-connector list cannot confirm it ({why}); check the account in Cyclr, then set status or remove the annotation {}",
                    annotations::INSTALL_PENDING
                ),
            ));
        }
        InstalledView::Unavailable(_) => return Decision::Install { account_id },
        InstalledView::Listed(list) => *list,
    };
    let name = install.installed_name();
    match installed
        .iter()
        .find(|c| c.name == name && c.connector.name.eq_ignore_ascii_case(&install.spec.connector_name))
    {
        Some(found) => Decision::Record {
            account_id,
            found: found.clone(),
        },
        None => Decision::Install { account_id },
    }
}

fn next_status(
    previous: &CyclrConnectorInstallStatus,
    generation: Option<i64>,
    health: &Health,
) -> CyclrConnectorInstallStatus {
    CyclrConnectorInstallStatus {
        conditions: health.conditions(generation, &previous.conditions),
        observed_generation: generation,
        ..previous.clone()
    }
}

fn status_changed(previous: &CyclrConnectorInstallStatus, next: &CyclrConnectorInstallStatus) -> bool {
    !same_conditions(&previous.conditions, &next.conditions)
        || CyclrConnectorInstallStatus {
            conditions: vec![],
            ..previous.clone()
        } != CyclrConnectorInstallStatus {
            conditions: vec![],
            ..next.clone()
        }
}

async fn observe_account(
    install: &CyclrConnectorInstall,
    ctx: &Context,
) -> Result<(AccountView, Option<Arc<PartnerRuntime>>), Error> {
    let api: Api<CyclrAccount> = Api::namespaced(ctx.client.clone(), &install.namespace().unwrap_or_default());
    let Some(account) = api.get_opt(&install.spec.account_ref.name).await? else {
        return Ok((AccountView::Missing, None));
    };
    let runtime = ctx.partners.get(&account.spec.partner_ref.name);
    let view = match account.status.as_ref().and_then(|s| s.account_id.clone()) {
        Some(account_id) => AccountView::Ready { account_id },
        None => AccountView::NotReady("has no Cyclr account id yet".into()),
    };
    Ok((view, runtime))
}

async fn observe_credentials(install: &CyclrConnectorInstall, ctx: &Context) -> Result<CredentialsView, Error> {
    let Some(auth) = &install.spec.auth else {
        return Ok(CredentialsView::Ready(ConnectorAuth::None));
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &install.namespace().unwrap_or_default());
    let read = |name: &str| {
        let api = api.clone();
        let name = name.to_string();
        async move { api.get_opt(&name).await }
    };
    let value = |secret: &Secret, key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    let missing = |name: &str| CredentialsView::Missing {
        reason: "SecretNotFound",
        message: format!("Secret {name:?} not found"),
    };
    let missing_key = |name: &str, key: &str| CredentialsView::Missing {
        reason: "SecretKeyNotFound",
        message: format!("Secret {name:?} has no key {key:?}"),
    };
    if let Some(r) = &auth.api_key_secret_ref {
        let Some(secret) = read(&r.name).await? else {
            return Ok(missing(&r.name));
        };
        return Ok(match value(&secret, &r.key) {
            Some(key) => CredentialsView::Ready(ConnectorAuth::ApiKey(SecretString::from(key))),
            None => missing_key(&r.name, &r.key),
        });
    }
    if let Some(r) = &auth.basic_auth_secret_ref {
        let Some(secret) = read(&r.name).await? else {
            return Ok(missing(&r.name));
        };
        let Some(username) = value(&secret, &r.username_key) else {
            return Ok(missing_key(&r.name, &r.username_key));
        };
        let Some(password) = value(&secret, &r.password_key) else {
            return Ok(missing_key(&r.name, &r.password_key));
        };
        return Ok(CredentialsView::Ready(ConnectorAuth::Basic {
            username,
            password: SecretString::from(password),
        }));
    }
    Ok(CredentialsView::Ready(ConnectorAuth::None))
}

async fn reconcile(install: Arc<CyclrConnectorInstall>, ctx: Arc<Context>) -> Result<Action, Error> {
    if install.meta().deletion_timestamp.is_some() {
        // The Partner API cannot uninstall, so there is no finalizer and nothing to do.
        return Ok(Action::await_change());
    }
    if install.status.is_none() {
        let first = next_status(
            &Default::default(),
            install.metadata.generation,
            &Health::progressing("Reconciling", "first reconcile"),
        );
        ctx.apply_status(install.as_ref(), &first).await?;
    }
    let (account, runtime) = observe_account(&install, &ctx).await?;
    let partner_ready = match runtime.as_ref().map(|r| r.state()) {
        Some(PartnerState::Ready) => Ok(()),
        Some(PartnerState::NotReady(why)) => Err(format!("the account's partner is not ready: {why}")),
        None => Err("the account's partner has not been checked yet".into()),
    };
    let credentials = observe_credentials(&install, &ctx).await?;
    let mut listed: Option<Result<Vec<InstalledConnector>, String>> = None;
    let decision = loop {
        let installed = match &listed {
            None => InstalledView::NotListed,
            Some(Ok(list)) => InstalledView::Listed(list),
            Some(Err(why)) => InstalledView::Unavailable(why.clone()),
        };
        let obs = Observation {
            install: &install,
            account: clone_view(&account),
            partner_ready: partner_ready.clone(),
            credentials: &credentials,
            installed,
        };
        match decide(&obs) {
            Decision::ListInstalled { account_id } => {
                let runtime = runtime.as_ref().expect("a ready partner has a runtime");
                listed = Some(match runtime.client.installed_connectors(&account_id).await {
                    Ok(list) => Ok(list),
                    Err(CyclrError::NotFound { message }) => Err(message),
                    Err(error) => return Err(error.into()),
                });
            }
            decision => break decision,
        }
    };

    let previous = install.status.clone().unwrap_or_default();
    let (health, recorded) = match decision {
        Decision::ListInstalled { .. } => unreachable!("handled in the loop"),
        Decision::Report(health) => (health, None),
        Decision::DropPendingAnnotation => {
            ctx.set_annotation(install.as_ref(), annotations::INSTALL_PENDING, None, false)
                .await?;
            return Ok(Action::await_change());
        }
        Decision::Record { account_id, found } => {
            ctx.event(
                install.as_ref(),
                EventType::Normal,
                "Adopted",
                format!(
                    "connector {:?} is already installed in account {account_id} (id {})",
                    found.name, found.id
                ),
            )
            .await;
            (
                Health::ready("Installed", "the connector is installed"),
                Some((account_id, Some(found.id))),
            )
        }
        Decision::Install { account_id } => {
            let CredentialsView::Ready(auth) = credentials else {
                unreachable!("decided only with credentials")
            };
            let runtime = runtime.as_ref().expect("a ready partner has a runtime");
            match install_once(&install, &ctx, runtime, &account_id, auth).await? {
                Ok(()) => (
                    Health::ready("Installed", "the connector is installed"),
                    Some((account_id, None)),
                ),
                Err(health) => (health, None),
            }
        }
    };
    let mut next = next_status(&previous, install.metadata.generation, &health);
    if let Some((account_id, installed_id)) = recorded {
        next.account_id = Some(account_id);
        next.installed_connector_id = installed_id;
        next.installed_at = Some(Time(Timestamp::now()));
    }
    if status_changed(&previous, &next) {
        ctx.apply_status(install.as_ref(), &next).await?;
        if next.installed_at.is_some() && previous.installed_at.is_none() {
            // The install is recorded: the pending marker is no longer needed.
            ctx.set_annotation(install.as_ref(), annotations::INSTALL_PENDING, None, false)
                .await?;
        }
        if let Health::Stalled { reason, message } = &health {
            ctx.event(install.as_ref(), EventType::Warning, reason, message.clone())
                .await;
        }
    }
    Ok(match health {
        Health::Ready { .. } | Health::Stalled { .. } | Health::Paused { .. } => Action::await_change(),
        // Waiting on an account, a partner or a Secret: watched, with a safety-net requeue.
        _ => Action::requeue(Duration::from_secs(60)),
    })
}

fn clone_view(view: &AccountView) -> AccountView {
    match view {
        AccountView::Missing => AccountView::Missing,
        AccountView::NotReady(why) => AccountView::NotReady(why.clone()),
        AccountView::Ready { account_id } => AccountView::Ready {
            account_id: account_id.clone(),
        },
    }
}

/// Marks the attempt (optimistically), then installs. `Ok(Err(health))` is a terminal refusal.
async fn install_once(
    install: &CyclrConnectorInstall,
    ctx: &Context,
    runtime: &PartnerRuntime,
    account_id: &str,
    auth: ConnectorAuth,
) -> Result<Result<(), Health>, Error> {
    let since = chrono::Utc::now().to_rfc3339();
    let install = ctx
        .set_annotation(install, annotations::INSTALL_PENDING, Some(&since), true)
        .await?;
    let request = InstallConnectorRequest {
        account_id: account_id.to_string(),
        connector_name: install.spec.connector_name.clone(),
        connector_version: install.spec.connector_version.clone(),
        installed_name: install.installed_name(),
        auth,
    };
    match runtime.client.install_connector(&request).await {
        Ok(()) => {
            ctx.event(
                &install,
                EventType::Normal,
                "Installed",
                format!(
                    "installed connector {} {} into account {account_id}",
                    request.connector_name, request.connector_version
                ),
            )
            .await;
            Ok(Ok(()))
        }
        Err(error) if error.outcome_unknown() => Err(error.into()),
        Err(error) => {
            ctx.set_annotation(&install, annotations::INSTALL_PENDING, None, false)
                .await?;
            match error {
                CyclrError::Validation { message, .. } => Ok(Err(Health::stalled(
                    "CyclrRejected",
                    format!("Cyclr rejected the install: {message}"),
                ))),
                CyclrError::NotFound { message } => Ok(Err(Health::stalled("ExternalAccountMissing", message))),
                other => Err(other.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cyclr::types::ConnectorSummary;
    use std::collections::BTreeMap;

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

    fn ready_account() -> AccountView {
        AccountView::Ready {
            account_id: "a1".into(),
        }
    }

    fn key() -> CredentialsView {
        CredentialsView::Ready(ConnectorAuth::ApiKey(SecretString::from("k")))
    }

    fn decide_with(
        install: &CyclrConnectorInstall,
        account: AccountView,
        credentials: &CredentialsView,
        installed: InstalledView,
    ) -> Decision {
        decide(&Observation {
            install,
            account,
            partner_ready: Ok(()),
            credentials,
            installed,
        })
    }

    fn listed(name: &str) -> Vec<InstalledConnector> {
        vec![InstalledConnector {
            id: "77".into(),
            name: name.into(),
            description: None,
            authenticated: true,
            connector: ConnectorSummary {
                id: "1".into(),
                name: "Slack".into(),
                version: Some("v1".into()),
            },
        }]
    }

    #[test]
    fn waits_for_its_account() {
        let d = decide_with(
            &install(),
            AccountView::NotReady("has no id".into()),
            &key(),
            InstalledView::NotListed,
        );
        assert!(
            matches!(d, Decision::Report(Health::Progressing { ref reason, .. }) if reason == "AccountNotReady"),
            "{d:?}"
        );
    }

    #[test]
    fn missing_secret_is_named() {
        let creds = CredentialsView::Missing {
            reason: "SecretNotFound",
            message: "Secret \"slack-key\" not found".into(),
        };
        match decide_with(&install(), ready_account(), &creds, InstalledView::NotListed) {
            Decision::Report(h) => {
                assert_eq!(h.reason(), "SecretNotFound");
                assert!(h.message().contains("slack-key"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn looks_before_installing_and_installs_when_absent() {
        assert_eq!(
            decide_with(&install(), ready_account(), &key(), InstalledView::NotListed),
            Decision::ListInstalled {
                account_id: "a1".into()
            }
        );
        let other = listed("something-else");
        assert_eq!(
            decide_with(&install(), ready_account(), &key(), InstalledView::Listed(&other)),
            Decision::Install {
                account_id: "a1".into()
            }
        );
    }

    #[test]
    fn an_existing_install_is_recorded_not_repeated() {
        let mine = listed("slack");
        match decide_with(&install(), ready_account(), &key(), InstalledView::Listed(&mine)) {
            Decision::Record { found, .. } => assert_eq!(found.id, "77"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn installed_is_final() {
        let mut i = install();
        i.status = Some(CyclrConnectorInstallStatus {
            installed_at: Some(Time(Timestamp::now())),
            ..Default::default()
        });
        assert!(matches!(
            decide_with(&i, ready_account(), &key(), InstalledView::NotListed),
            Decision::Report(Health::Ready { .. })
        ));
    }

    #[test]
    fn unconfirmable_pending_install_stalls_instead_of_installing_twice() {
        let mut i = install();
        i.metadata.annotations = Some(BTreeMap::from([(
            annotations::INSTALL_PENDING.to_string(),
            "t".to_string(),
        )]));
        let d = decide_with(&i, ready_account(), &key(), InstalledView::Unavailable("404".into()));
        assert!(
            matches!(d, Decision::Report(Health::Stalled { ref reason, .. }) if reason == "InstallOutcomeUnknown"),
            "{d:?}"
        );
        let no_pending = decide_with(
            &install(),
            ready_account(),
            &key(),
            InstalledView::Unavailable("404".into()),
        );
        assert_eq!(
            no_pending,
            Decision::Install {
                account_id: "a1".into()
            }
        );
    }
}
