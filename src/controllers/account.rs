//! CyclrAccount: creates (exactly once) or adopts a Cyclr account, corrects drift with a
//! minimal Update Account, and reports usage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt, stream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::partners::{AccountsSnapshot, PartnerRuntime, PartnerState};
use super::{Context, Error, controller_for, error_policy, guarded, jittered, namespaced_api};
use crate::resources::{
    CyclrAccount, CyclrAccountSpec, CyclrAccountStatus, Health, ManagementPolicy, STALLED, UsageStatus, annotation,
    annotations, condition, is_paused, same_conditions, stalled_reason,
};
use cyclr::CyclrError;
use cyclr::types::{Account, AccountFields, AccountUsage, CyclrDate, PricePlan, PricePlanId};

pub fn controller(
    ctx: Arc<Context>,
    partner_changes: UnboundedReceiver<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    let controller = controller_for(
        namespaced_api::<DeserializeGuard<CyclrAccount>>(ctx.client.clone(), &ctx.config),
        &ctx.config,
    );
    let store = controller.store();
    let _ = ctx.accounts.set(store.clone());
    // A new account snapshot or a change in the partner's readiness wakes its accounts.
    let partner_accounts = partner_changes.flat_map(move |partner| {
        let refs: Vec<_> = store
            .state()
            .iter()
            .filter_map(|g| g.0.as_ref().ok())
            .filter(|a| a.spec.partner_ref.name == partner)
            .map(|a| ObjectRef::new(&a.name_any()).within(&a.namespace().unwrap_or_default()))
            .collect();
        stream::iter(refs)
    });
    controller
        .reconcile_on(partner_accounts)
        .graceful_shutdown_on(shutdown)
        .run(|obj, ctx| guarded(obj, ctx, reconcile), error_policy, ctx)
        .map(|_| ())
}

/// The partner as an account sees it.
pub enum PartnerView<'a> {
    NotReady(String),
    Ready {
        plans: &'a [PricePlan],
        snapshot: Option<&'a AccountsSnapshot>,
    },
}

/// Everything `decide` looks at.
pub struct Observation<'a> {
    pub account: &'a CyclrAccount,
    pub partner: PartnerView<'a>,
    /// Cyclr account ids held by other CyclrAccounts.
    pub claimed: &'a [String],
    /// When this reconcile started.
    pub now: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// `spec.accountId` names it.
    BySpec,
    /// Found after a create whose outcome was unknown.
    RecoveredCreate,
}

#[derive(Debug, PartialEq)]
pub enum Decision {
    /// No Cyclr write: report this health (and the account as Cyclr has it, when known).
    Report {
        health: Health,
        observed: Option<Account>,
    },
    /// Decide again with accounts listed at or after this time.
    RefreshSnapshot {
        after: DateTime<Utc>,
    },
    /// A create finished but the annotation was left behind: drop it.
    DropPendingAnnotation,
    Create {
        fields: AccountFields,
    },
    Adopt {
        account: Account,
        how: Adoption,
    },
    Update {
        observed: Account,
        changes: AccountFields,
        drift: bool,
    },
}

/// The desired Cyclr fields of an account, or why they cannot be had (pure).
pub fn desired_fields(spec: &CyclrAccountSpec, name: String, plans: &[PricePlan]) -> Result<AccountFields, Health> {
    let price_plan_id = match &spec.price_plan {
        None => None,
        Some(plan) => match (plan.id, &plan.name) {
            (Some(id), _) => Some(PricePlanId(id)),
            (None, Some(wanted)) => match plans.iter().find(|p| p.name.eq_ignore_ascii_case(wanted)) {
                Some(found) => Some(found.id),
                None => {
                    let known: Vec<_> = plans.iter().map(|p| format!("{} ({})", p.name, p.id)).collect();
                    return Err(Health::stalled(
                        "PricePlanNotFound",
                        format!(
                            "no price plan named {wanted:?}; the partner offers: {}",
                            known.join(", ")
                        ),
                    ));
                }
            },
            (None, None) => None,
        },
    };
    let next_bill_date = match &spec.next_bill_date {
        None => None,
        Some(text) => Some(
            CyclrDate::parse(text)
                .ok_or_else(|| Health::stalled("InvalidSpec", format!("nextBillDate {text:?} is not a date")))?,
        ),
    };
    Ok(AccountFields {
        name: Some(name),
        description: spec.description.clone(),
        timezone: spec.timezone.clone(),
        price_plan_id,
        next_bill_date,
        audit_info: spec.audit_info.clone(),
    })
}

/// The fields the spec sets that Cyclr has otherwise: the body of a minimal Update Account.
/// A field Cyclr does not report (List Accounts omits Timezone) cannot drift (pure).
pub fn changed_fields(desired: &AccountFields, observed: &Account) -> AccountFields {
    fn differs<T: PartialEq + Clone>(want: &Option<T>, have: Option<&T>, reported: bool) -> Option<T> {
        want.as_ref().filter(|w| reported && have != Some(*w)).cloned()
    }
    AccountFields {
        name: differs(&desired.name, Some(&observed.name), true),
        description: differs(&desired.description, observed.description.as_ref(), true),
        timezone: differs(
            &desired.timezone,
            observed.timezone.as_ref(),
            observed.timezone.is_some(),
        ),
        price_plan_id: differs(&desired.price_plan_id, observed.price_plan_id.as_ref(), true),
        next_bill_date: differs(&desired.next_bill_date, observed.next_bill_date.as_ref(), true),
        audit_info: differs(&desired.audit_info, observed.audit_info.as_ref(), true),
    }
}

/// The account as Cyclr has it after `changes` were applied.
pub fn apply_changes(mut account: Account, changes: &AccountFields) -> Account {
    let c = changes.clone();
    account.name = c.name.unwrap_or(account.name);
    account.description = c.description.or(account.description);
    account.timezone = c.timezone.or(account.timezone);
    account.price_plan_id = c.price_plan_id.or(account.price_plan_id);
    account.next_bill_date = c.next_bill_date.or(account.next_bill_date);
    account.audit_info = c.audit_info.or(account.audit_info);
    account
}

/// Names of the fields in an update, for Events.
fn field_names(changes: &AccountFields) -> String {
    let c = changes;
    [
        ("Name", c.name.is_some()),
        ("Description", c.description.is_some()),
        ("Timezone", c.timezone.is_some()),
        ("PricePlanId", c.price_plan_id.is_some()),
        ("NextBillDate", c.next_bill_date.is_some()),
        ("AuditInfo", c.audit_info.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(name, _)| *name)
    .collect::<Vec<_>>()
    .join(", ")
}

/// The one decision of a reconcile (pure).
pub fn decide(obs: &Observation) -> Decision {
    let account = obs.account;
    let spec = &account.spec;
    let status = account.status.clone().unwrap_or_default();
    let report = |health: Health| Decision::Report { health, observed: None };

    if is_paused(&account.metadata) {
        return report(Health::paused());
    }
    let pending = annotation(&account.metadata, annotations::CREATE_PENDING);
    if pending.is_some() && status.account_id.is_some() {
        return Decision::DropPendingAnnotation;
    }
    // A terminal failure waits for the spec to change.
    if status.observed_generation == account.metadata.generation
        && let Some(reason) = stalled_reason(&status.conditions)
    {
        let message = condition(&status.conditions, STALLED)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        return report(Health::stalled(reason, message));
    }
    let (plans, snapshot) = match &obs.partner {
        PartnerView::NotReady(why) => {
            return report(Health::progressing(
                "PartnerNotReady",
                format!("CyclrPartner {:?} is not ready: {why}", spec.partner_ref.name),
            ));
        }
        PartnerView::Ready { plans, snapshot } => (*plans, *snapshot),
    };
    let desired = match desired_fields(spec, account.cyclr_name(), plans) {
        Ok(desired) => desired,
        Err(health) => return report(health),
    };
    let Some(snapshot) = snapshot else {
        return Decision::RefreshSnapshot { after: obs.now };
    };

    if let Some(id) = status.account_id.as_deref().or(spec.account_id.as_deref()) {
        let Some(observed) = snapshot.accounts.get(id) else {
            // Not in a list taken during this reconcile either: it is gone.
            if snapshot.taken_at < obs.now {
                return Decision::RefreshSnapshot { after: obs.now };
            }
            return report(if status.account_id.is_some() {
                Health::stalled(
                    "ExternalAccountMissing",
                    format!(
                        "Cyclr account {id} no longer exists; the operator will not re-create it. Delete this resource, or remove status.accountId to create a new account"
                    ),
                )
            } else {
                Health::stalled(
                    "ExternalAccountMissing",
                    format!("spec.accountId {id} names no Cyclr account of this partner"),
                )
            });
        };
        if status.account_id.is_none() {
            return Decision::Adopt {
                account: observed.clone(),
                how: Adoption::BySpec,
            };
        }
        if spec.management_policy == ManagementPolicy::ObserveOnly {
            let changes = changed_fields(&desired, observed);
            let message = if changes.is_empty() {
                "observed; Cyclr matches the spec".to_string()
            } else {
                format!(
                    "observed; Cyclr differs from the spec in {} (ObserveOnly: not corrected)",
                    field_names(&changes)
                )
            };
            return Decision::Report {
                health: Health::ready("Observed", message),
                observed: Some(observed.clone()),
            };
        }
        let changes = changed_fields(&desired, observed);
        if changes.is_empty() {
            return Decision::Report {
                health: Health::ready("Synced", "the Cyclr account matches the spec"),
                observed: Some(observed.clone()),
            };
        }
        let drift = status.observed_generation == account.metadata.generation;
        return Decision::Update {
            observed: observed.clone(),
            changes,
            drift,
        };
    }

    if spec.management_policy == ManagementPolicy::ObserveOnly {
        return report(Health::stalled(
            "ObserveOnlyWithoutAccountId",
            "ObserveOnly needs spec.accountId",
        ));
    }
    if pending.is_some() {
        // A create may have happened: look for it in a list taken after it.
        if snapshot.taken_at < obs.now {
            return Decision::RefreshSnapshot { after: obs.now };
        }
        let name = desired.name.clone().unwrap_or_default();
        let candidates: Vec<&Account> = snapshot
            .accounts
            .values()
            .filter(|a| a.name == name && !obs.claimed.iter().any(|c| c == &a.id))
            .collect();
        return match candidates.as_slice() {
            [] => Decision::Create { fields: desired },
            [one] => Decision::Adopt {
                account: (*one).clone(),
                how: Adoption::RecoveredCreate,
            },
            many => {
                let ids: Vec<&str> = many.iter().map(|a| a.id.as_str()).collect();
                report(Health::stalled(
                    "AmbiguousAdoption",
                    format!(
                        "a create may have succeeded, but {} unclaimed Cyclr accounts are named {name:?} ({}); set spec.accountId to the right one and remove the annotation {}",
                        ids.len(),
                        ids.join(", "),
                        annotations::CREATE_PENDING
                    ),
                ))
            }
        };
    }
    Decision::Create { fields: desired }
}

/// The status to report (pure). `lastSyncTime` moves only when something else changed.
pub fn next_status(
    previous: &CyclrAccountStatus,
    generation: Option<i64>,
    health: &Health,
    observed: Option<&Account>,
    usage: Option<UsageStatus>,
) -> CyclrAccountStatus {
    let mut next = CyclrAccountStatus {
        conditions: health.conditions(generation, &previous.conditions),
        observed_generation: generation,
        usage: usage.or_else(|| previous.usage.clone()),
        ..previous.clone()
    };
    if let Some(account) = observed {
        next.account_id = Some(account.id.clone());
        next.price_plan_id = account.price_plan_id.map(|p| p.0);
        next.last_bill_date = account.last_bill_date.map(|d| d.to_legacy_string());
        next.next_bill_date = account.next_bill_date.map(|d| d.to_legacy_string());
    }
    let strip = |s: &CyclrAccountStatus| CyclrAccountStatus {
        conditions: vec![],
        last_sync_time: None,
        ..s.clone()
    };
    if strip(previous) != strip(&next) {
        next.last_sync_time = Some(Time(Timestamp::now()));
    }
    next
}

fn usage_status(usage: &AccountUsage) -> UsageStatus {
    UsageStatus {
        task_count: usage.task_count,
        cycle_count: usage.cycle_count,
        from_date: usage.from_date.map(|d| d.to_legacy_string()),
        to_date: usage.to_date.map(|d| d.to_legacy_string()),
        current_price_plan_id: usage.current_price_plan_id.map(|p| p.0),
    }
}

fn status_changed(previous: &CyclrAccountStatus, next: &CyclrAccountStatus) -> bool {
    !same_conditions(&previous.conditions, &next.conditions)
        || CyclrAccountStatus {
            conditions: vec![],
            ..previous.clone()
        } != CyclrAccountStatus {
            conditions: vec![],
            ..next.clone()
        }
}

/// How a Cyclr failure on a write or read shows on the account.
fn health_of_error(action: &str, error: &CyclrError) -> Health {
    match error {
        CyclrError::Validation { message, .. } => {
            Health::stalled("CyclrRejected", format!("Cyclr rejected {action}: {message}"))
        }
        CyclrError::NotFound { message } => Health::stalled("ExternalAccountMissing", format!("{action}: {message}")),
        CyclrError::Unauthorized { message } => Health::failing("PartnerNotReady", format!("{action}: {message}")),
        CyclrError::RateLimited { .. } => Health::failing("RateLimited", format!("{action}: {error}")),
        other => Health::failing("CyclrUnavailable", format!("{action}: {other}")),
    }
}

async fn reconcile(account: Arc<CyclrAccount>, ctx: Arc<Context>) -> Result<Action, Error> {
    let now = Utc::now();
    if account.meta().deletion_timestamp.is_some() {
        // Orphan is the only supported policy, so there is no finalizer and nothing to do.
        return Ok(Action::await_change());
    }
    if account.status.is_none() {
        // Ready=False first, so GitOps tools do not take the account as ready too early.
        let first = next_status(
            &Default::default(),
            account.metadata.generation,
            &Health::progressing("Reconciling", "first reconcile"),
            None,
            None,
        );
        ctx.apply_status(account.as_ref(), &first).await?;
    }
    let runtime = ctx.partners.get(&account.spec.partner_ref.name);
    let claimed = ctx.claimed_account_ids(&account.uid().unwrap_or_default());
    let plans = runtime.as_ref().map(|r| r.price_plans()).unwrap_or_default();
    let mut snapshot = match &runtime {
        Some(r) => r.snapshot().await,
        None => None,
    };
    let decision = loop {
        let partner = match runtime.as_ref().map(|r| r.state()) {
            None => PartnerView::NotReady("it does not exist or has not been checked yet".into()),
            Some(PartnerState::NotReady(why)) => PartnerView::NotReady(why),
            Some(PartnerState::Ready) => PartnerView::Ready {
                plans: &plans,
                snapshot: snapshot.as_deref(),
            },
        };
        match decide(&Observation {
            account: &account,
            partner,
            claimed: &claimed,
            now,
        }) {
            Decision::RefreshSnapshot { after } => {
                let runtime = runtime.as_ref().expect("a ready partner has a runtime");
                snapshot = Some(runtime.snapshot_since(after).await?);
            }
            decision => break decision,
        }
    };
    let runtime = runtime.filter(|r| matches!(r.state(), PartnerState::Ready));
    let (health, observed) = match (decision, runtime.as_deref()) {
        (Decision::Report { health, observed }, _) => (health, observed),
        (Decision::DropPendingAnnotation, _) => {
            ctx.set_annotation(account.as_ref(), annotations::CREATE_PENDING, None, false)
                .await?;
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
        (Decision::RefreshSnapshot { .. }, _) => unreachable!("handled in the loop"),
        (_, None) => unreachable!("writes are decided only for a ready partner"),
        (Decision::Create { fields }, Some(runtime)) => create(&account, &ctx, runtime, fields).await?,
        (Decision::Adopt { account: found, how }, Some(_)) => {
            let note = match how {
                Adoption::BySpec => format!("adopted Cyclr account {} named by spec.accountId", found.id),
                Adoption::RecoveredCreate => format!(
                    "adopted Cyclr account {} created by an earlier attempt whose response was lost",
                    found.id
                ),
            };
            ctx.event(account.as_ref(), EventType::Normal, "Adopted", note).await;
            // Record the id now; drift and usage follow on the next reconcile.
            let status = next_status(
                &account.status.clone().unwrap_or_default(),
                account.metadata.generation,
                &Health::progressing("Adopted", format!("adopted Cyclr account {}", found.id)),
                Some(&found),
                None,
            );
            ctx.apply_status(account.as_ref(), &status).await?;
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
        (
            Decision::Update {
                observed,
                changes,
                drift,
            },
            Some(runtime),
        ) => update(&account, &ctx, runtime, observed, changes, drift).await?,
    };

    let usage = match (&observed, &runtime) {
        (Some(found), Some(runtime)) if account.spec.usage.enabled => {
            poll_usage(&account, &ctx, runtime, &found.id).await
        }
        _ => None,
    };
    let previous = account.status.clone().unwrap_or_default();
    let next = next_status(
        &previous,
        account.metadata.generation,
        &health,
        observed.as_ref(),
        usage,
    );
    if status_changed(&previous, &next) {
        ctx.apply_status(account.as_ref(), &next).await?;
        if let Health::Stalled { reason, message } | Health::Failing { reason, message } = &health
            && stalled_reason(&previous.conditions) != Some(reason.as_str())
        {
            ctx.event(account.as_ref(), EventType::Warning, reason, message.clone())
                .await;
        }
    }
    Ok(match (&health, &runtime) {
        // Reported above; as an error it gets the per-object backoff, which a success resets.
        (Health::Failing { message, .. }, _) => return Err(Error::Transient(message.clone())),
        (Health::Stalled { .. } | Health::Paused { .. }, _) => Action::await_change(),
        (_, Some(runtime)) => Action::requeue(jittered(runtime.resync_interval.min(runtime.usage_interval))),
        (_, None) => Action::await_change(),
    })
}

/// The crash-safe create: annotate (optimistically), create, store the id, drop the annotation.
async fn create(
    account: &CyclrAccount,
    ctx: &Context,
    runtime: &PartnerRuntime,
    fields: AccountFields,
) -> Result<(Health, Option<Account>), Error> {
    let pending_since = Utc::now().to_rfc3339();
    let account = ctx
        .set_annotation(account, annotations::CREATE_PENDING, Some(&pending_since), true)
        .await?;
    match runtime.client.create_account(&fields).await {
        Ok(id) => {
            let created = apply_changes(
                Account {
                    id: id.clone(),
                    name: String::new(),
                    description: None,
                    timezone: None,
                    price_plan_id: None,
                    last_bill_date: None,
                    next_bill_date: None,
                    audit_info: None,
                },
                &fields,
            );
            runtime.remember_account(created.clone()).await;
            let health = Health::ready("Synced", format!("created Cyclr account {id}"));
            let status = next_status(
                &account.status.clone().unwrap_or_default(),
                account.metadata.generation,
                &health,
                Some(&created),
                None,
            );
            ctx.apply_status(&account, &status).await?;
            ctx.set_annotation(&account, annotations::CREATE_PENDING, None, false)
                .await?;
            ctx.event(
                &account,
                EventType::Normal,
                "Created",
                format!("created Cyclr account {id}"),
            )
            .await;
            Ok((health, Some(created)))
        }
        Err(error) if error.outcome_unknown() => {
            // The account may exist: keep the annotation so the next attempt looks before creating.
            tracing::warn!(account = %account.name_any(), %error, "account create outcome unknown; will look for it before retrying");
            Err(error.into())
        }
        Err(error) => {
            ctx.set_annotation(&account, annotations::CREATE_PENDING, None, false)
                .await?;
            if error.is_retryable() {
                return Err(error.into());
            }
            Ok((health_of_error("the account create", &error), None))
        }
    }
}

async fn update(
    account: &CyclrAccount,
    ctx: &Context,
    runtime: &PartnerRuntime,
    observed: Account,
    changes: AccountFields,
    drift: bool,
) -> Result<(Health, Option<Account>), Error> {
    match runtime.client.update_account(&observed.id, &changes).await {
        Ok(_) => {
            let updated = apply_changes(observed, &changes);
            runtime.remember_account(updated.clone()).await;
            let (reason, note) = if drift {
                (
                    "DriftCorrected",
                    format!(
                        "Cyclr account {} had drifted in {}; corrected",
                        updated.id,
                        field_names(&changes)
                    ),
                )
            } else {
                (
                    "Updated",
                    format!("updated {} of Cyclr account {}", field_names(&changes), updated.id),
                )
            };
            ctx.event(account, EventType::Normal, reason, note).await;
            Ok((
                Health::ready("Synced", "the Cyclr account matches the spec"),
                Some(updated),
            ))
        }
        Err(error) if error.is_retryable() => Err(error.into()),
        Err(error) => Ok((health_of_error("the account update", &error), Some(observed))),
    }
}

/// Reads usage when due (every usage interval, jittered); `None` when not due or failed.
async fn poll_usage(account: &CyclrAccount, ctx: &Context, runtime: &PartnerRuntime, id: &str) -> Option<UsageStatus> {
    let key = account.uid().unwrap_or_default();
    let due = {
        let polls = ctx.usage_polls.lock().expect("lock");
        polls
            .get(&key)
            .is_none_or(|last| last.elapsed() >= runtime.usage_interval.mul_f64(0.9))
    };
    if !due {
        return None;
    }
    match runtime.client.account_usage(id, None).await {
        Ok(usage) => {
            ctx.usage_polls.lock().expect("lock").insert(key, Instant::now());
            let status = usage_status(&usage);
            ctx.metrics.account_usage(
                &account.namespace().unwrap_or_default(),
                &account.name_any(),
                id,
                usage.task_count,
                usage.cycle_count,
            );
            Some(status)
        }
        Err(error) => {
            tracing::warn!(account = %account.name_any(), %error, "could not read account usage");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{PricePlanRef, READY};
    use kube::api::ObjectMeta;
    use std::collections::{BTreeMap, HashMap};

    fn plans() -> Vec<PricePlan> {
        vec![
            PricePlan {
                id: PricePlanId(2),
                name: "Starter".into(),
            },
            PricePlan {
                id: PricePlanId(3),
                name: "Pro".into(),
            },
        ]
    }

    fn cyclr_account(id: &str, name: &str, plan: i64) -> Account {
        Account {
            id: id.into(),
            name: name.into(),
            description: None,
            timezone: None,
            price_plan_id: Some(PricePlanId(plan)),
            last_bill_date: None,
            next_bill_date: None,
            audit_info: None,
        }
    }

    fn resource(spec: CyclrAccountSpec) -> CyclrAccount {
        let mut account = CyclrAccount::new("acme", spec);
        account.metadata = ObjectMeta {
            name: Some("acme".into()),
            namespace: Some("t".into()),
            generation: Some(1),
            uid: Some("u1".into()),
            ..Default::default()
        };
        account
    }

    fn spec() -> CyclrAccountSpec {
        serde_json::from_value(serde_json::json!({"pricePlan": {"name": "Pro"}})).unwrap()
    }

    fn snapshot(taken_at: DateTime<Utc>, accounts: Vec<Account>) -> AccountsSnapshot {
        AccountsSnapshot {
            taken_at,
            accounts: accounts
                .into_iter()
                .map(|a| (a.id.clone(), a))
                .collect::<HashMap<_, _>>(),
        }
    }

    fn decide_with(
        account: &CyclrAccount,
        snap: Option<&AccountsSnapshot>,
        claimed: &[String],
        now: DateTime<Utc>,
    ) -> Decision {
        let plans = plans();
        decide(&Observation {
            account,
            partner: PartnerView::Ready {
                plans: &plans,
                snapshot: snap,
            },
            claimed,
            now,
        })
    }

    fn with_status(mut account: CyclrAccount, id: &str) -> CyclrAccount {
        account.status = Some(CyclrAccountStatus {
            account_id: Some(id.into()),
            observed_generation: Some(1),
            conditions: Health::ready("Synced", "").conditions(Some(1), &[]),
            ..Default::default()
        });
        account
    }

    fn annotate(mut account: CyclrAccount, key: &str, value: &str) -> CyclrAccount {
        account.metadata.annotations = Some(BTreeMap::from([(key.to_string(), value.to_string())]));
        account
    }

    #[test]
    fn new_account_is_created_with_its_plan_resolved_by_name() {
        let now = Utc::now();
        let snap = snapshot(now, vec![]);
        match decide_with(&resource(spec()), Some(&snap), &[], now) {
            Decision::Create { fields } => {
                assert_eq!(fields.name.as_deref(), Some("acme"));
                assert_eq!(fields.price_plan_id, Some(PricePlanId(3)));
            }
            other => panic!("expected a create, got {other:?}"),
        }
    }

    #[test]
    fn unknown_plan_is_terminal_and_names_the_offered_plans() {
        let mut s = spec();
        s.price_plan = Some(PricePlanRef {
            id: None,
            name: Some("Gold".into()),
        });
        let now = Utc::now();
        let snap = snapshot(now, vec![]);
        match decide_with(&resource(s), Some(&snap), &[], now) {
            Decision::Report {
                health: Health::Stalled { reason, message },
                ..
            } => {
                assert_eq!(reason, "PricePlanNotFound");
                assert!(message.contains("Gold") && message.contains("Starter"), "{message}");
            }
            other => panic!("expected a stall, got {other:?}"),
        }
    }

    #[test]
    fn stalled_generation_makes_no_calls_until_the_spec_changes() {
        let mut account = resource(spec());
        account.status = Some(CyclrAccountStatus {
            observed_generation: Some(1),
            conditions: Health::stalled("PricePlanNotFound", "no Gold").conditions(Some(1), &[]),
            ..Default::default()
        });
        // No snapshot: had it tried to call Cyclr it would ask for one.
        let decision = decide_with(&account, None, &[], Utc::now());
        assert!(
            matches!(
                decision,
                Decision::Report {
                    health: Health::Stalled { .. },
                    ..
                }
            ),
            "{decision:?}"
        );
        account.metadata.generation = Some(2);
        assert!(matches!(
            decide_with(&account, None, &[], Utc::now()),
            Decision::RefreshSnapshot { .. }
        ));
    }

    #[test]
    fn in_sync_account_needs_nothing() {
        let now = Utc::now();
        let snap = snapshot(now, vec![cyclr_account("a1", "acme", 3)]);
        let decision = decide_with(&with_status(resource(spec()), "a1"), Some(&snap), &[], now);
        assert!(
            matches!(
                decision,
                Decision::Report {
                    health: Health::Ready { .. },
                    observed: Some(_)
                }
            ),
            "{decision:?}"
        );
    }

    #[test]
    fn drift_is_corrected_with_only_the_changed_fields() {
        let now = Utc::now();
        let mut s = spec();
        s.description = Some("tenant".into());
        let mut remote = cyclr_account("a1", "acme", 2);
        remote.description = Some("tenant".into());
        let snap = snapshot(now, vec![remote]);
        match decide_with(&with_status(resource(s), "a1"), Some(&snap), &[], now) {
            Decision::Update { changes, drift, .. } => {
                assert_eq!(
                    changes,
                    AccountFields {
                        price_plan_id: Some(PricePlanId(3)),
                        ..Default::default()
                    }
                );
                assert!(drift, "same generation: Cyclr changed, not the spec");
            }
            other => panic!("expected an update, got {other:?}"),
        }
    }

    #[test]
    fn observe_only_never_writes() {
        let now = Utc::now();
        let mut s = spec();
        s.management_policy = ManagementPolicy::ObserveOnly;
        s.account_id = Some("a1".into());
        let snap = snapshot(now, vec![cyclr_account("a1", "other", 2)]);
        let decision = decide_with(&with_status(resource(s), "a1"), Some(&snap), &[], now);
        match decision {
            Decision::Report {
                health: Health::Ready { message, .. },
                ..
            } => assert!(message.contains("not corrected")),
            other => panic!("expected a report, got {other:?}"),
        }
    }

    #[test]
    fn paused_account_makes_no_calls() {
        let account = annotate(resource(spec()), annotations::PAUSED, "true");
        assert_eq!(
            decide_with(&account, None, &[], Utc::now()),
            Decision::Report {
                health: Health::paused(),
                observed: None
            }
        );
    }

    #[test]
    fn adoption_by_spec_account_id() {
        let now = Utc::now();
        let mut s = spec();
        s.account_id = Some("a9".into());
        let snap = snapshot(now, vec![cyclr_account("a9", "x", 3)]);
        match decide_with(&resource(s), Some(&snap), &[], now) {
            Decision::Adopt { account, how } => assert_eq!((account.id.as_str(), how), ("a9", Adoption::BySpec)),
            other => panic!("expected adoption, got {other:?}"),
        }
    }

    #[test]
    fn vanished_account_is_reported_not_recreated() {
        let now = Utc::now();
        let account = with_status(resource(spec()), "gone");
        let old = snapshot(now - chrono::Duration::seconds(60), vec![]);
        assert_eq!(
            decide_with(&account, Some(&old), &[], now),
            Decision::RefreshSnapshot { after: now }
        );
        let fresh = snapshot(now, vec![]);
        match decide_with(&account, Some(&fresh), &[], now) {
            Decision::Report {
                health: Health::Stalled { reason, .. },
                ..
            } => assert_eq!(reason, "ExternalAccountMissing"),
            other => panic!("expected a stall, got {other:?}"),
        }
    }

    #[test]
    fn pending_create_adopts_the_one_unclaimed_account_with_its_name() {
        let now = Utc::now();
        let account = annotate(resource(spec()), annotations::CREATE_PENDING, "2026-01-01T00:00:00Z");
        let old = snapshot(now - chrono::Duration::seconds(1), vec![]);
        assert!(matches!(
            decide_with(&account, Some(&old), &[], now),
            Decision::RefreshSnapshot { .. }
        ));
        let fresh = snapshot(
            now,
            vec![cyclr_account("mine", "acme", 3), cyclr_account("theirs", "acme", 3)],
        );
        match decide_with(&account, Some(&fresh), &["theirs".into()], now) {
            Decision::Adopt { account, how } => {
                assert_eq!((account.id.as_str(), how), ("mine", Adoption::RecoveredCreate))
            }
            other => panic!("expected adoption, got {other:?}"),
        }
        match decide_with(&account, Some(&fresh), &[], now) {
            Decision::Report {
                health: Health::Stalled { reason, message },
                ..
            } => {
                assert_eq!(reason, "AmbiguousAdoption");
                assert!(message.contains("spec.accountId"));
            }
            other => panic!("expected a stall, got {other:?}"),
        }
        let none = snapshot(now, vec![]);
        assert!(matches!(
            decide_with(&account, Some(&none), &[], now),
            Decision::Create { .. }
        ));
    }

    #[test]
    fn leftover_pending_annotation_is_dropped_once_the_id_is_stored() {
        let account = annotate(with_status(resource(spec()), "a1"), annotations::CREATE_PENDING, "x");
        assert_eq!(
            decide_with(&account, None, &[], Utc::now()),
            Decision::DropPendingAnnotation
        );
    }

    #[test]
    fn partner_not_ready_is_reported_on_the_account() {
        let account = resource(spec());
        let decision = decide(&Observation {
            account: &account,
            partner: PartnerView::NotReady("401".into()),
            claimed: &[],
            now: Utc::now(),
        });
        match decision {
            Decision::Report {
                health: Health::Progressing { reason, .. },
                ..
            } => assert_eq!(reason, "PartnerNotReady"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn status_write_only_when_something_changed() {
        let remote = cyclr_account("a1", "acme", 3);
        let health = Health::ready("Synced", "ok");
        let first = next_status(&Default::default(), Some(1), &health, Some(&remote), None);
        assert_eq!(first.account_id.as_deref(), Some("a1"));
        assert_eq!(first.price_plan_id, Some(3));
        assert!(first.last_sync_time.is_some());
        assert_eq!(condition(&first.conditions, READY).unwrap().status, "True");
        let again = next_status(&first, Some(1), &health, Some(&remote), None);
        assert!(!status_changed(&first, &again));
        let usage = UsageStatus {
            task_count: 5,
            ..Default::default()
        };
        let with_usage = next_status(&first, Some(1), &health, Some(&remote), Some(usage));
        assert!(status_changed(&first, &with_usage));
    }
}
