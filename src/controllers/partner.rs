//! CyclrPartner: builds the partner's Cyclr client from its labelled credentials Secret,
//! checks it (token, Partner Details, price plans) and takes the one List Accounts per resync
//! interval that every account of the partner reads.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::core::{DeserializeGuard, Selector};
use kube::{Api, ResourceExt};
use secrecy::SecretString;

use super::partners::{PartnerRuntime, PartnerState};
use super::{Context, ReconcileResult, controller_for, jittered, users_of_secret};
use crate::driver::{self, Applied, Failure, Health, Plan, Reason, Reconciler};
use crate::resources::{CyclrPartner, CyclrPartnerStatus, PartnerDetailsStatus, PricePlanStatus};
use crate::secrets::CredentialsDigest;
use cyclr::types::{PartnerDetails, PricePlan};
use cyclr::{ClientConfig, CyclrClient};

pub fn controller(
    ctx: Arc<Context>,
    secret_changes: UnboundedReceiver<Secret>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ReconcileResult<CyclrPartner>> {
    let api: Api<DeserializeGuard<CyclrPartner>> = Api::all(ctx.client.clone());
    let controller = controller_for::<CyclrPartner>(&ctx, api, |_| {});
    let _ = ctx.partner_objects.set(controller.store());
    let operator_namespace = ctx.config.namespace.clone();
    let users = users_of_secret(controller.store(), move |p: &CyclrPartner, s: &Secret| {
        s.namespace().as_deref() == Some(operator_namespace.as_str())
            && p.spec.credentials_secret_ref.name == s.name_any()
    });
    controller
        // A rotated or fixed credentials Secret takes effect at once.
        .watches_stream(secret_changes.map(Ok), users)
        .graceful_shutdown_on(shutdown)
        .run(driver::reconcile::<CyclrPartner>, super::error_policy, ctx)
}

crate::managed_status!(CyclrPartnerStatus, last_sync_time = last_sync_time);

/// What checking the partner found.
pub enum Observed {
    /// The client cannot be built: why (a missing or unlabelled Secret, a bad URL).
    Unusable(Health),
    Checked {
        runtime: Arc<PartnerRuntime>,
        details: PartnerDetails,
        plans: Vec<PricePlan>,
        account_count: usize,
    },
}

impl Reconciler for CyclrPartner {
    type Status = CyclrPartnerStatus;
    type Observed = Observed;
    type Refresh = ();
    type Write = std::convert::Infallible;

    fn status(&self) -> Option<&CyclrPartnerStatus> {
        self.status.as_ref()
    }

    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }

    async fn observe(&self, ctx: &Context, _: DateTime<Utc>, _: Option<()>) -> Result<Observed, Failure> {
        let name = self.name_any();
        let runtime = match runtime_for(self, ctx).await? {
            Ok(runtime) => runtime,
            Err(health) => {
                // Accounts must stop at once: no client, no calls.
                if let Some(old) = ctx.partners.get(&name) {
                    old.set_state(PartnerState::NotReady(health.message().to_string()));
                }
                ctx.wake_partner(&name);
                return Ok(Observed::Unusable(health));
            }
        };
        let was_ready = matches!(runtime.state(), PartnerState::Ready);
        match check(&runtime).await {
            Ok((details, plans, account_count)) => {
                runtime.set_price_plans(plans.clone());
                runtime.set_state(PartnerState::Ready);
                ctx.wake_partner(&name);
                Ok(Observed::Checked {
                    runtime,
                    details,
                    plans,
                    account_count,
                })
            }
            Err(error) => {
                // A transient failure leaves a working partner working: retried with
                // backoff, accounts keep going. Refused credentials stop them.
                if !error.is_retryable() || !was_ready {
                    runtime.set_state(PartnerState::NotReady(ctx.scrub(&error.to_string())));
                    ctx.wake_partner(&name);
                }
                Err(Failure::Cyclr {
                    action: "checking the partner",
                    error,
                })
            }
        }
    }

    fn decide(&self, observed: &Observed) -> Plan<Self> {
        let previous = self.status.clone().unwrap_or_default();
        match observed {
            Observed::Unusable(health) => Plan::Report {
                health: health.clone(),
                status: previous,
                event: None,
            },
            Observed::Checked {
                details,
                plans,
                account_count,
                ..
            } => Plan::Report {
                health: Health::ready(Reason::Connected, "the credentials work and Partner Details answers"),
                status: checked_status(previous, details, plans, *account_count),
                event: None,
            },
        }
    }

    async fn act(&self, _: &Context, _: &Observed, write: Self::Write) -> Result<Applied<CyclrPartnerStatus>, Failure> {
        match write {}
    }

    fn resync(&self, observed: &Observed) -> Option<std::time::Duration> {
        match observed {
            Observed::Checked { runtime, .. } => Some(jittered(runtime.resync_interval)),
            Observed::Unusable(_) => None,
        }
    }

    fn forget(ctx: &Context, meta: &ObjectMeta) {
        let name = meta.name.clone().unwrap_or_default();
        ctx.partners.remove(&name);
        ctx.metrics.forget_partner(&name);
        ctx.wake_partner(&name);
    }
}

/// The partner's runtime, rebuilt only when the values it is made of change; or why it
/// cannot be built (reported as the partner's health).
async fn runtime_for(partner: &CyclrPartner, ctx: &Context) -> Result<Result<Arc<PartnerRuntime>, Health>, Failure> {
    let name = partner.name_any();
    let namespace = &ctx.config.namespace;
    let secret_ref = &partner.spec.credentials_secret_ref;
    let keys = [secret_ref.client_id_key.as_str(), secret_ref.client_secret_key.as_str()];
    let (client_id, client_secret) = match ctx.secrets.values(namespace, &secret_ref.name, &keys).await? {
        Ok(values) => (values[0].trim().to_string(), values[1].trim().to_string()),
        Err((reason, message)) => {
            return Ok(Err(Health::progressing(
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
        )
            .hash(&mut h);
        h.finish()
    };
    let existing = ctx.partners.get(&name);
    if let Some(existing) = existing.as_ref().filter(|r| r.fingerprint == fingerprint) {
        return Ok(Ok(existing.clone()));
    }
    let credentials_digest = CredentialsDigest::new(&client_secret);
    let mut config = ClientConfig::new(spec.api_url.clone(), client_id, SecretString::from(client_secret));
    config.requests_per_second = spec.rate_limit.requests_per_second;
    config.burst = spec.rate_limit.burst;
    // A changed partner keeps its rate budget: the limiter, a 429's hold, the adapted rate.
    let built = match &existing {
        Some(old) => old.client.with_config(config),
        None => CyclrClient::new(config).map(|c| c.with_observer(ctx.metrics.cyclr_observer(&name))),
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
    .with_snapshot_metrics(&name, ctx.metrics.clone());
    if let Some(old) = &existing {
        runtime = runtime.succeed(old);
    }
    let runtime = Arc::new(runtime);
    ctx.partners.insert(&name, runtime.clone());
    tracing::info!(partner = %name, url = %spec.api_url, "partner client configured");
    Ok(Ok(runtime))
}

/// Partner Details, price plans and a fresh account list (a token when none is cached).
async fn check(runtime: &PartnerRuntime) -> cyclr::Result<(PartnerDetails, Vec<PricePlan>, usize)> {
    // No forced token fetch: Partner Details obtains one when none is cached, and a token
    // Cyclr refuses is renewed once by the client, so refused credentials still show.
    let details = runtime.client.partner_details().await?;
    let plans = runtime.client.price_plans().await?;
    let snapshot = runtime.snapshot_since(Utc::now()).await?;
    Ok((details, plans, snapshot.count()))
}

/// The partner status for what a check found (pure).
pub fn checked_status(
    previous: CyclrPartnerStatus,
    details: &PartnerDetails,
    plans: &[PricePlan],
    account_count: usize,
) -> CyclrPartnerStatus {
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
        account_count: Some(account_count as u32),
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
        let status = checked_status(Default::default(), &details(), &plans, 3);
        assert_eq!(status.account_count, Some(3));
        assert_eq!(status.price_plans[0].name, "Starter");
        assert_eq!(
            status.details.unwrap().application_display_name.as_deref(),
            Some("Example")
        );
    }

    #[test]
    fn an_unusable_partner_reports_why_and_keeps_its_status() {
        let health = Health::progressing(Reason::SecretNotLabelled, "label it");
        match partner().decide(&Observed::Unusable(health.clone())) {
            Plan::Report { health: h, status, .. } => {
                assert_eq!(h, health);
                assert_eq!(status, CyclrPartnerStatus::default());
            }
            _ => panic!("a report"),
        }
    }
}
