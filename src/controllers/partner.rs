//! CyclrPartner: checks the credentials and Partner Details, caches price plans, and takes
//! the one List Accounts per resync interval that every account of the partner reads.

use std::sync::Arc;

use chrono::Utc;
use futures::Stream;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use secrecy::SecretString;

use super::partners::{PartnerRuntime, PartnerState};
use super::{Context, Error, controller_for, error_policy, guarded, jittered};
use crate::resources::{
    CyclrPartner, CyclrPartnerStatus, Health, PartnerDetailsStatus, PricePlanStatus, same_conditions,
};
use cyclr::types::{PartnerDetails, PricePlan};
use cyclr::{ClientConfig, CyclrClient, CyclrError};

pub fn controller(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    use futures::StreamExt;
    let partners: Api<DeserializeGuard<CyclrPartner>> = Api::all(ctx.client.clone());
    let controller = controller_for(partners, &ctx.config);
    let store = controller.store();
    // A rotated or fixed credentials Secret takes effect at once.
    controller
        .watches(
            super::operator_secrets(&ctx),
            watcher::Config::default(),
            move |secret: Secret| {
                let name = secret.name_any();
                store
                    .state()
                    .iter()
                    .filter_map(|g| g.0.as_ref().ok())
                    .filter(|p| p.spec.credentials_secret_ref.name == name)
                    .map(|p| ObjectRef::new(&p.name_any()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(|obj, ctx| guarded(obj, ctx, reconcile), error_policy, ctx)
        .map(|_| ())
}

/// What reading the partner from Cyclr found.
struct Observed {
    details: PartnerDetails,
    plans: Vec<PricePlan>,
    account_count: usize,
}

async fn reconcile(partner: Arc<CyclrPartner>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = partner.name_any();
    let runtime = match runtime_for(&partner, &ctx).await {
        Ok(runtime) => runtime,
        Err(health) => {
            if let Some(old) = ctx.partners.get(&name) {
                old.set_state(PartnerState::NotReady(health.message().to_string()));
            }
            ctx.partner_changed(&name);
            report(&partner, &ctx, &health, None).await?;
            // Wait for the Secret to change (watched), with a slow retry as a safety net.
            return Ok(Action::requeue(std::time::Duration::from_secs(300)));
        }
    };

    let observed = observe(&runtime).await;
    let (health, observed) = match observed {
        Ok(observed) => (
            Health::ready("Connected", "the credentials work and Partner Details answers"),
            Some(observed),
        ),
        Err(error) => (health_of_error(&error), None),
    };
    let was_ready = matches!(runtime.state(), PartnerState::Ready);
    match &health {
        Health::Ready { .. } => runtime.set_state(PartnerState::Ready),
        other => runtime.set_state(PartnerState::NotReady(other.message().to_string())),
    }
    if observed.is_some() || was_ready {
        ctx.partner_changed(&name);
    }
    if let Some(observed) = &observed {
        runtime.set_price_plans(observed.plans.clone());
    } else if was_ready {
        ctx.event(
            partner.as_ref(),
            EventType::Warning,
            health.reason(),
            health.message().to_string(),
        )
        .await;
    }
    report(&partner, &ctx, &health, observed.as_ref()).await?;
    Ok(Action::requeue(jittered(runtime.resync_interval)))
}

/// The partner's runtime, rebuilt when its URL, credentials or limits change.
async fn runtime_for(partner: &CyclrPartner, ctx: &Context) -> Result<Arc<PartnerRuntime>, Health> {
    let name = partner.name_any();
    let secret_ref = &partner.spec.credentials_secret_ref;
    let secret = super::operator_secrets(ctx)
        .get_opt(&secret_ref.name)
        .await
        .map_err(|e| {
            Health::failing(
                "SecretUnreadable",
                format!("cannot read Secret {}/{}: {e}", ctx.config.namespace, secret_ref.name),
            )
        })?;
    let Some(secret) = secret else {
        return Err(Health::failing(
            "CredentialsSecretNotFound",
            format!(
                "Secret {}/{} not found (partner credentials are read from the operator's namespace)",
                ctx.config.namespace, secret_ref.name
            ),
        ));
    };
    let value = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .map(|v| v.trim().to_string())
            .ok_or_else(|| {
                Health::failing(
                    "CredentialsKeyMissing",
                    format!("Secret {}/{} has no key {key}", ctx.config.namespace, secret_ref.name),
                )
            })
    };
    let client_id = value(&secret_ref.client_id_key)?;
    let client_secret = SecretString::from(value(&secret_ref.client_secret_key)?);
    let spec = &partner.spec;
    let fingerprint = format!(
        "{}|{}|{}|{}|{:?}|{:?}",
        spec.api_url,
        secret.resource_version().unwrap_or_default(),
        spec.rate_limit.requests_per_second,
        spec.rate_limit.burst,
        spec.resync_interval,
        spec.usage_interval
    );
    if let Some(existing) = ctx.partners.get(&name).filter(|r| r.fingerprint == fingerprint) {
        return Ok(existing);
    }
    let mut config = ClientConfig::new(spec.api_url.clone(), client_id, client_secret);
    config.requests_per_second = spec.rate_limit.requests_per_second;
    config.burst = spec.rate_limit.burst;
    let client = CyclrClient::new(config)
        .map_err(|e| Health::stalled("InvalidConfiguration", e.to_string()))?
        .with_observer(ctx.metrics.cyclr_observer(&name));
    let runtime = Arc::new(PartnerRuntime::new(
        client,
        fingerprint,
        spec.resync_interval.into(),
        spec.usage_interval.into(),
    ));
    ctx.partners.insert(&name, runtime.clone());
    tracing::info!(partner = %name, url = %spec.api_url, "partner client configured");
    Ok(runtime)
}

async fn observe(runtime: &PartnerRuntime) -> Result<Observed, CyclrError> {
    runtime.client.authenticate().await?;
    let details = runtime.client.partner_details().await?;
    let plans = runtime.client.price_plans().await?;
    let snapshot = runtime.snapshot_since(Utc::now()).await?;
    Ok(Observed {
        details,
        plans,
        account_count: snapshot.accounts.len(),
    })
}

/// How a Cyclr error shows on the partner.
pub fn health_of_error(error: &CyclrError) -> Health {
    match error {
        CyclrError::Unauthorized { message } => Health::failing(
            "AuthenticationFailed",
            format!("Cyclr refused the partner credentials: {message}"),
        ),
        CyclrError::Config(message) => Health::stalled("InvalidConfiguration", message.clone()),
        CyclrError::RateLimited { .. } => Health::failing("RateLimited", error.to_string()),
        other => Health::failing("CyclrUnavailable", other.to_string()),
    }
}

/// The partner status for what was observed (pure).
pub fn desired_status(
    previous: &CyclrPartnerStatus,
    generation: Option<i64>,
    health: &Health,
    observed: Option<(&PartnerDetails, &[PricePlan], usize)>,
) -> CyclrPartnerStatus {
    let mut status = CyclrPartnerStatus {
        conditions: health.conditions(generation, &previous.conditions),
        observed_generation: generation,
        ..previous.clone()
    };
    if let Some((details, plans, count)) = observed {
        status.details = Some(PartnerDetailsStatus {
            application_display_name: details.application_display_name.clone(),
            domain: details.domain.clone(),
            cycle_noun: details.cycle_noun.clone(),
            anonymous_accounts_enabled: details.anonymous_accounts_enabled,
            coming_soon_connectors_enabled: details.coming_soon_connectors_enabled,
            custom_connectors_enabled: details.custom_connectors_enabled,
            cycle_sharing_enabled: details.cycle_sharing_enabled,
        });
        status.price_plans = plans
            .iter()
            .map(|p| PricePlanStatus {
                id: p.id.0,
                name: p.name.clone(),
            })
            .collect();
        status.account_count = Some(count as u32);
    }
    let data_changed = (status.details != previous.details)
        || (status.price_plans != previous.price_plans)
        || (status.account_count != previous.account_count);
    if data_changed {
        status.last_sync_time = Some(Time(Timestamp::now()));
    }
    status
}

/// Whether `next` differs from `previous` in anything but condition transition times.
pub fn status_changed(previous: &CyclrPartnerStatus, next: &CyclrPartnerStatus) -> bool {
    !same_conditions(&previous.conditions, &next.conditions)
        || CyclrPartnerStatus {
            conditions: vec![],
            ..previous.clone()
        } != CyclrPartnerStatus {
            conditions: vec![],
            ..next.clone()
        }
}

async fn report(
    partner: &CyclrPartner,
    ctx: &Context,
    health: &Health,
    observed: Option<&Observed>,
) -> Result<(), Error> {
    let previous = partner.status.clone().unwrap_or_default();
    let next = desired_status(
        &previous,
        partner.metadata.generation,
        health,
        observed.map(|o| (&o.details, o.plans.as_slice(), o.account_count)),
    );
    if status_changed(&previous, &next) {
        ctx.apply_status(partner, &next).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{READY, condition};
    use cyclr::types::PricePlanId;

    fn details() -> PartnerDetails {
        PartnerDetails {
            application_display_name: Some("Example".into()),
            domain: Some("x.example".into()),
            ..Default::default()
        }
    }

    #[test]
    fn unchanged_observation_needs_no_write() {
        let plans = vec![PricePlan {
            id: PricePlanId(2),
            name: "Starter".into(),
        }];
        let health = Health::ready("Connected", "ok");
        let first = desired_status(
            &CyclrPartnerStatus::default(),
            Some(1),
            &health,
            Some((&details(), &plans, 3)),
        );
        assert!(first.last_sync_time.is_some());
        assert_eq!(first.account_count, Some(3));
        let second = desired_status(&first, Some(1), &health, Some((&details(), &plans, 3)));
        assert!(!status_changed(&first, &second));
        let third = desired_status(&first, Some(1), &health, Some((&details(), &plans, 4)));
        assert!(status_changed(&first, &third));
    }

    #[test]
    fn unauthorized_is_reported_with_cyclrs_message() {
        let health = health_of_error(&CyclrError::Unauthorized {
            message: "invalid_client".into(),
        });
        assert_eq!(health.reason(), "AuthenticationFailed");
        assert!(health.message().contains("invalid_client"));
        let status = desired_status(&CyclrPartnerStatus::default(), Some(2), &health, None);
        assert_eq!(condition(&status.conditions, READY).unwrap().status, "False");
        assert_eq!(status.observed_generation, Some(2));
    }
}
