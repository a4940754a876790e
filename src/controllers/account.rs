//! CyclrAccount: creates (exactly once) or adopts a Cyclr account, corrects drift with a
//! minimal Update Account, and reports usage. Observe → decide (pure) → act; the driver does
//! the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use driver::{
    Applied, Cleanup, Driver, Facts, Intent, Kind, Note, Packed, Plan, Reconciler, Watched, jittered, stable_hash,
};
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};

use super::partners::{
    AccountsSnapshot, NameGuard, Onboarding, PartnerRuntime, PartnerState, Woken, Wrote, account_from_v1,
};
use super::{PartnerWake, Services, namespaced_api};
use crate::index::Holder;
use crate::reason::{Failure, Health, Reason};
use crate::resources::{
    ACCOUNT_FINALIZER, CyclrAccount, CyclrAccountSpec, CyclrAccountStatus, CyclrApi, CyclrPartner, DeletionPolicy,
    ManagementPolicy, READY, UsageStatus, annotation, annotations, same_conditions,
};
use cyclr::types::{Account, AccountFields, AccountFieldsV1, AccountUsage, CyclrDate, Deleted, PricePlan, PricePlanId};

/// The account kind's own state.
pub struct AccountState {
    services: Arc<Services>,
    /// The watched partners, to tell "not checked yet" from "does not exist", and to have a
    /// partner count its accounts again after creates.
    partners: super::partner::Partners,
    /// When each account's usage was last read (by uid hash): in memory, not status, so a
    /// poll that finds nothing new writes nothing.
    usage_polls: Mutex<HashMap<u64, Instant>>,
}

impl AccountState {
    /// The state of the account kind, reading partners from `partners` (the partner watch).
    pub fn new(services: Arc<Services>, partners: super::partner::Partners) -> Self {
        AccountState {
            services,
            partners,
            usage_polls: Mutex::default(),
        }
    }
}

/// The account controller, and its store (installs look their account up in it). Its watch is
/// the only one of CyclrAccounts this operator serves: every change is also sent to
/// `account_changes` (the installs wait on their account), and, when `feeds_claims` (the watch
/// sees every CyclrAccount in the cluster), it keeps the claim index too, so no second watch
/// of the kind is needed.
pub fn controller(
    driver: Arc<Driver>,
    state: AccountState,
    partner_wakes: UnboundedReceiver<PartnerWake>,
    namespace_changes: UnboundedReceiver<String>,
    account_changes: UnboundedSender<ObjectRef<CyclrAccount>>,
    feeds_claims: bool,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (
    impl Stream<Item = driver::ReconcileResult<CyclrAccount>>,
    Store<Packed<CyclrAccount>>,
) {
    let api = namespaced_api::<Watched<CyclrAccount>>(driver.client.clone(), &state.services.config);
    let claims = state.services.clone();
    let watch = state.services.config.served();
    let kind = Kind::<CyclrAccount>::new(driver, state, watch);
    let controller = driver::controller_for(&kind, api, move |event| {
        if let watcher::Event::Apply(Watched(Ok(a))) | watcher::Event::InitApply(Watched(Ok(a))) = event {
            if feeds_claims {
                claims.claim_annotated(&a.metadata);
            }
            let _ = account_changes.unbounded_send(ObjectRef::from_obj(a));
        }
    });
    let store = controller.store();
    // A new snapshot wakes the accounts it shows changed and those not settled; a change in
    // the partner's readiness, client or plans, or its deletion, all its accounts: due at
    // once on the resync queue, which hands them to kube a few at a time. (A stream that
    // never yields, polled by the controller for as long as it runs.)
    let accounts = store.clone();
    let waker = kind.clone();
    let partner_accounts = partner_wakes.filter_map(move |wake| {
        for account in accounts.state() {
            let passed_over = match &wake.woken {
                Woken::All => false,
                Woken::Changed(ids) | Woken::UsageReads(ids) => account.settled_apart_from(ids),
            };
            if account.depends_on(None, &wake.partner) && !passed_over {
                waker.wake(account.meta());
            }
        }
        futures::future::ready(None)
    });
    // A namespace changed (a partner's namespaceSelector may now take or leave it) wakes its
    // accounts: a settled one would otherwise not look until its usage read.
    let accounts = store.clone();
    let waker = kind.clone();
    let relabelled = namespace_changes.filter_map(move |namespace| {
        for account in accounts.state() {
            if account.meta().namespace.as_deref() == Some(namespace.as_str()) {
                waker.wake(account.meta());
            }
        }
        futures::future::ready(None)
    });
    let results = controller
        .reconcile_on(partner_accounts)
        .reconcile_on(relabelled)
        .graceful_shutdown_on(shutdown)
        .run(driver::reconcile, driver::error_policy, kind);
    (results, store)
}

driver::managed_status!(
    CyclrAccountStatus,
    pending = pending_create,
    last_sync_time = last_sync_time
);

/// The Ready message of an account in sync: one text, so a resync after a create or an
/// adoption writes nothing (the Events say what happened).
const SYNCED: &str = "the Cyclr account matches the spec";

/// The partner as an account sees it.
pub enum PartnerView {
    /// No CyclrPartner of that name (or it was deleted).
    NotFound,
    /// It exists, but this process has not checked it yet (just started).
    Unchecked,
    /// Its namespaceSelector does not select this namespace.
    NotAllowed,
    /// It cannot be used: why.
    NotReady(String),
    /// Ready, with its price plans and (once listed) its account snapshot.
    Ready {
        /// The partner's client and state.
        runtime: Arc<PartnerRuntime>,
        /// Its price plans, for `spec.pricePlan.name`.
        plans: Vec<PricePlan>,
        /// Its accounts as last listed (and written since), once listed.
        snapshot: Option<Arc<AccountsSnapshot>>,
    },
}

/// What an account's next look must include.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Look {
    /// A list of the partner's accounts taken after this time.
    ListedAfter(DateTime<Utc>),
    /// A read of this account (its usage), to confirm it is gone before saying so: one list
    /// is not enough, or a proxy answering `[]` would make every account missing at once.
    ReadBack(String),
}

/// What reading an account back found.
#[derive(Clone, Debug, PartialEq)]
pub enum ReadBack {
    /// It answers (with its usage): the list that left it out was wrong.
    Exists(UsageStatus),
    /// Cyclr answered 404: it is gone.
    Gone,
}

/// Everything `decide` looks at (the clock and the pending create are in [`Facts`]).
pub struct Observed {
    /// The partner as this account sees it.
    pub partner: PartnerView,
    /// Who else holds each Cyclr account id `decide` may look at (the oldest other holder).
    pub claims: HashMap<String, Holder>,
    /// Usage read in this reconcile (when due).
    pub usage: Option<UsageStatus>,
    /// A usage read was due but waits while the partner onboards accounts.
    pub usage_deferred: bool,
    /// How long until the next usage read is due, for an account whose usage is read.
    pub usage_due_in: Option<Duration>,
    /// The account read back, when a list left it out.
    pub read_back: Option<ReadBack>,
    /// On a `V1` partner, the id a create would carry (`spec.accountID` or derived).
    pub chosen: Option<ChosenId>,
    /// Held while no id is known: creates of one name in one partner are serialised.
    _name_guard: Option<NameGuard>,
    /// Held while this reconcile may create an account: the partner's usage reads wait.
    _onboarding: Option<Onboarding>,
}

/// The id a create carries on a `V1` partner, and why it is this resource's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChosenId {
    /// The Cyclr account id.
    pub id: String,
    /// Where it comes from.
    pub origin: IdOrigin,
}

/// Where a chosen id comes from: what makes an account that already has it this resource's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdOrigin {
    /// `spec.accountID`: the user named the account (a tenant key the partner already uses).
    Spec,
    /// [`derived_account_id`]: no other resource derives it, so an account that has it was
    /// made for this resource (an earlier create, or a resource of the same name deleted with
    /// `Orphan`).
    Derived,
}

impl IdOrigin {
    /// How an existing account with this id came to be this resource's, for Events.
    fn adoption(self) -> &'static str {
        match self {
            IdOrigin::Spec => "named by spec.accountID",
            IdOrigin::Derived => "with the id derived from this resource's cluster, namespace and name",
        }
    }
}

/// The Cyclr account id of a resource on a `V1` partner without `spec.accountID`: `k8s-` and
/// the first 128 bits of SHA-256 over `cluster/namespace/name`, in hex (36 characters, within
/// the 64 of `spec.accountID`). `cluster` is the `kube-system` namespace's uid, so clusters
/// sharing a partner never derive the same id; namespace and name make it the resource's,
/// so the same manifest applied again (after a delete with `Orphan`, or a move between Argo
/// CD apps) finds the same account.
pub fn derived_account_id(cluster: &str, namespace: &str, name: &str) -> String {
    // Neither a namespace nor a name can contain '/': the joined text is unambiguous.
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{cluster}/{namespace}/{name}").as_bytes(),
    );
    let hex: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("k8s-{hex}")
}

/// The Cyclr write an account needs.
#[derive(Debug)]
pub enum Write {
    /// Create Account (not idempotent: under the pending-write protocol).
    Create {
        /// The fields sent.
        fields: AccountFields,
    },
    /// v1.0 create with an id the operator chose (`V1` partners): idempotent, a repeat
    /// answers `ID already in use`, so no pending marker is written before it.
    CreateWithId {
        /// The v1.0 fields sent, `Id` included.
        fields: AccountFieldsV1,
        /// What v1.0 does not take (price plan, next bill date): set right after through the
        /// Partner API.
        partner_fields: AccountFields,
        /// Where the id comes from (how an account already holding it is judged).
        origin: IdOrigin,
    },
    /// Update Account with only the fields that differ.
    Update {
        /// The account as Cyclr has it.
        observed: Account,
        /// The fields to send.
        changes: AccountFields,
        /// Whether this corrects drift made in Cyclr (else applies a spec change).
        drift: bool,
    },
}

impl CyclrAccount {
    /// The Cyclr id this resource holds: status first, then the `cyclr.com/account-id`
    /// annotation (which survives a restore without status), then `spec.accountID`.
    pub fn known_id(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.account_id.as_deref())
            .or_else(|| annotation(&self.metadata, annotations::ACCOUNT_ID))
            .or(self.spec.account_id.as_deref())
    }

    /// The id a create carries on a `V1` partner: `spec.accountID`, else derived from the
    /// cluster (`cluster`), the namespace and the name.
    pub fn chosen_id(&self, cluster: &str) -> ChosenId {
        match &self.spec.account_id {
            Some(id) => ChosenId {
                id: id.clone(),
                origin: IdOrigin::Spec,
            },
            None => ChosenId {
                id: derived_account_id(cluster, &self.namespace().unwrap_or_default(), &self.name_any()),
                origin: IdOrigin::Derived,
            },
        }
    }
}

impl Reconciler for CyclrAccount {
    type State = AccountState;
    type Status = CyclrAccountStatus;
    type Reason = Reason;
    type Failure = Failure;
    type Observed = Observed;
    type Refresh = Look;
    type Write = Write;

    fn status(&self) -> Option<&CyclrAccountStatus> {
        self.status.as_ref()
    }

    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, self.metadata.namespace.as_deref().unwrap_or_default())
    }

    async fn observe(&self, state: &AccountState, _: &Facts, refresh: Option<Look>) -> Result<Observed, Failure> {
        let services = &state.services;
        let uid = self.uid().unwrap_or_default();
        let partner_name = &self.spec.partner_ref.name;
        let namespace = self.namespace().unwrap_or_default();
        let mut observed = Observed {
            partner: PartnerView::NotFound,
            claims: HashMap::new(),
            usage: None,
            usage_deferred: false,
            usage_due_in: None,
            read_back: None,
            chosen: None,
            _name_guard: None,
            _onboarding: None,
        };
        let Some(runtime) = services.partners.get(partner_name) else {
            if state.partners.exists(partner_name) {
                observed.partner = PartnerView::Unchecked;
            }
            return Ok(observed);
        };
        if !runtime.admits(&services.namespace_labels(&namespace).unwrap_or_default()) {
            observed.partner = PartnerView::NotAllowed;
            return Ok(observed);
        }
        match runtime.state() {
            // Configured but not checked yet (a restart): judged after the check.
            PartnerState::Unchecked => {
                observed.partner = PartnerView::Unchecked;
                return Ok(observed);
            }
            PartnerState::NotReady(why) => {
                observed.partner = PartnerView::NotReady(why);
                return Ok(observed);
            }
            PartnerState::Ready => {}
        }
        let id = self.known_id().map(str::to_string);
        let chosen = (runtime.dialect == CyclrApi::V1).then(|| self.chosen_id(&services.cluster_id));
        if id.is_none() && self.spec.management_policy == ManagementPolicy::Full {
            observed._onboarding = Some(runtime.onboarding());
            observed._name_guard = Some(runtime.lock_name(&self.cyclr_name()).await);
        }
        let snapshot = match refresh {
            Some(Look::ListedAfter(after)) => Some(
                runtime
                    .snapshot_since(after)
                    .await
                    .map_err(Failure::cyclr("listing the partner's accounts"))?,
            ),
            Some(Look::ReadBack(id)) => {
                observed.read_back = Some(match read_usage(self, state, &runtime, &id).await {
                    Ok(usage) => {
                        runtime.note_list_missed(&id);
                        ReadBack::Exists(usage)
                    }
                    Err(cyclr::CyclrError::NotFound { .. }) => ReadBack::Gone,
                    Err(error) => return Err(Failure::cyclr("reading the account back")(error)),
                });
                runtime.snapshot()
            }
            None => runtime.snapshot(),
        };
        // Under the name in the spec, and under the name a pending create sent.
        let sent = self
            .status
            .as_ref()
            .and_then(|s| s.pending_create.as_ref()?.sent.clone());
        let relevant = [Some(self.cyclr_name()), sent]
            .into_iter()
            .flatten()
            .flat_map(|name| snapshot.iter().flat_map(move |s| s.named(&name)).collect::<Vec<_>>())
            .map(|a| a.id)
            .chain(id.clone())
            .chain(chosen.as_ref().map(|c| c.id.clone()));
        for candidate in relevant {
            if let Some(holder) = services.account_claims.held_by_other(&candidate, &uid) {
                observed.claims.insert(candidate, holder);
            }
        }
        // Usage is read once a list has shown the account, so the bill dates Cyclr chose (which
        // only a list reports) are written with the first usage, in one write.
        // On a V1 partner, an account found under its chosen id is adopted with its usage.
        let usage_id = id.clone().or_else(|| chosen.as_ref().map(|c| c.id.clone()));
        if let Some(id) = &usage_id
            && self.spec.usage.enabled
            && snapshot.as_ref().is_some_and(|s| s.listed(id))
        {
            let mut due_in = usage_due_in(self, state, &runtime);
            if due_in.is_zero() {
                // Onboarding first: a usage read waits while the partner's accounts are being
                // created (a later reconcile reads it), so creates get the whole request budget.
                if runtime.is_onboarding() {
                    observed.usage_deferred = true;
                    runtime.defer_usage(id);
                } else {
                    observed.usage = read_usage(self, state, &runtime, id)
                        .await
                        .inspect_err(|error| {
                            let error = services.secrets.scrub(&error.to_string());
                            tracing::warn!(%error, "could not read account usage");
                        })
                        .ok();
                    due_in = usage_due_in(self, state, &runtime);
                }
            }
            observed.usage_due_in = Some(due_in);
        }
        observed.chosen = chosen;
        observed.partner = PartnerView::Ready {
            plans: runtime.price_plans(),
            runtime,
            snapshot,
        };
        Ok(observed)
    }

    fn decide(&self, observed: &Observed, facts: &Facts) -> Plan<Self> {
        decide(self, observed, facts)
    }

    async fn act(&self, state: &AccountState, observed: &Observed, write: Write) -> Result<Applied<Self>, Failure> {
        let PartnerView::Ready { runtime, .. } = &observed.partner else {
            unreachable!("writes are decided only for a ready partner")
        };
        let previous = self.status.clone().unwrap_or_default();
        match write {
            Write::Create { fields } => {
                let id = runtime
                    .client
                    .create_account(&fields)
                    .await
                    .map_err(Failure::cyclr("the account create"))?;
                let created = apply_changes(
                    Account {
                        id: id.clone(),
                        name: String::new(),
                        ..Default::default()
                    },
                    &fields,
                );
                runtime.remember_account(created.clone(), Wrote::Created);
                // Claimed at once, before the watch reports the annotation.
                let _ = state.services.account_claims.claim(&id, &Holder::of(&self.metadata));
                state.partners.created_account(&self.spec.partner_ref.name);
                // A new account has used nothing yet: its usage is in status from the start.
                let usage = observed.usage.clone().unwrap_or_else(|| UsageStatus {
                    current_price_plan_id: created.price_plan_id.map(|p| p.0),
                    ..UsageStatus::default()
                });
                Ok(Applied {
                    health: Health::ready(Reason::Synced, SYNCED),
                    status: with_account(previous, &created, Some(usage)),
                    // No Event: a rollout of thousands would write thousands; status says it.
                    event: None,
                    made: Some(id),
                })
            }
            Write::CreateWithId {
                fields,
                partner_fields,
                origin,
            } => {
                let id = fields.id.clone().unwrap_or_default();
                let (answer, adopted) = match runtime.client.create_account_v1(&fields).await {
                    Ok(created) => (created, None),
                    // A repeat of a create whose answer or status write was lost, or an account
                    // made before: read it and judge it.
                    Err(cyclr::CyclrError::IdInUse { .. }) => {
                        let found = runtime
                            .client
                            .get_account_v1(&id)
                            .await
                            .map_err(Failure::cyclr("reading the account whose id is in use"))?;
                        let holder = state
                            .services
                            .account_claims
                            .held_by_other(&id, &self.uid().unwrap_or_default());
                        let note = match id_in_use(&id, origin, holder.as_ref()) {
                            Ok(note) => note,
                            Err(health) => {
                                return Ok(Applied {
                                    health,
                                    status: previous,
                                    event: None,
                                    made: None,
                                });
                            }
                        };
                        // Brought to the spec in the same reconcile (what the create would have set).
                        let changes = fields.changes_to(&found);
                        let found = if changes.is_empty() {
                            found
                        } else {
                            runtime
                                .client
                                .update_account_v1(&id, &changes)
                                .await
                                .map_err(Failure::cyclr("the account update"))?
                        };
                        (found, Some(note))
                    }
                    Err(error) => return Err(Failure::cyclr("the account create")(error)),
                };
                let mut created = account_from_v1(answer);
                // Claimed at once, before the watch reports the annotation.
                let _ = state.services.account_claims.claim(&id, &Holder::of(&self.metadata));
                runtime.remember_account(created.clone(), Wrote::Created);
                if !partner_fields.is_empty() {
                    runtime
                        .client
                        .update_account(&id, &partner_fields)
                        .await
                        .map_err(Failure::cyclr("setting the price plan and next bill date"))?;
                    created = apply_changes(created, &partner_fields);
                    runtime.remember_account(created.clone(), Wrote::Updated);
                }
                state.partners.created_account(&self.spec.partner_ref.name);
                // Usage read now, with the dates Cyclr gives it, so the first resync finds
                // nothing to write; a new account has used nothing if the read fails.
                let usage = match self.spec.usage.enabled {
                    false => None,
                    true => Some(
                        read_usage(self, state, runtime, &id)
                            .await
                            .unwrap_or_else(|_| UsageStatus {
                                current_price_plan_id: created.price_plan_id.map(|p| p.0),
                                ..UsageStatus::default()
                            }),
                    ),
                };
                Ok(Applied {
                    health: Health::ready(Reason::Synced, SYNCED),
                    status: with_account(previous, &created, usage),
                    event: adopted,
                    made: Some(id),
                })
            }
            Write::Update {
                observed: account,
                changes,
                drift,
            } => {
                runtime
                    .client
                    .update_account(&account.id, &changes)
                    .await
                    .map_err(Failure::cyclr("the account update"))?;
                let updated = apply_changes(account, &changes);
                runtime.remember_account(updated.clone(), Wrote::Updated);
                let note = if drift {
                    (
                        Reason::DriftCorrected,
                        format!(
                            "Cyclr account {} had drifted in {}; corrected",
                            updated.id,
                            field_names(&changes)
                        ),
                    )
                } else {
                    (
                        Reason::Updated,
                        format!("updated {} of Cyclr account {}", field_names(&changes), updated.id),
                    )
                };
                Ok(Applied {
                    health: Health::ready(Reason::Synced, SYNCED),
                    status: with_account(previous, &updated, observed.usage.clone()),
                    event: Some(note),
                    made: None,
                })
            }
        }
    }

    fn resync(&self, _: &AccountState, observed: &Observed) -> Option<Duration> {
        look_again(self, observed)
    }

    fn identity(status: &CyclrAccountStatus) -> Option<(&'static str, String)> {
        status.account_id.clone().map(|id| (annotations::ACCOUNT_ID, id))
    }

    fn depends_on(&self) -> Option<(Option<&str>, &str)> {
        Some((None, &self.spec.partner_ref.name))
    }

    /// A create that outlived its resource is reported on the partner.
    fn orphan_report(&self) -> Option<ObjectReference> {
        Some(partner_reference(&self.spec.partner_ref.name))
    }

    const FINALIZER: Option<&'static str> = Some(ACCOUNT_FINALIZER);

    /// Only a resource whose deletion deletes the account, on a partner that can.
    fn needs_finalizer(&self, observed: &Observed) -> bool {
        deletes(&self.spec)
            && matches!(&observed.partner, PartnerView::Ready { runtime, .. } if runtime.dialect == CyclrApi::V1)
    }

    /// `DELETE /v1.0/accounts/{id}` (404 counts as done), unless the policy lets the account
    /// be, another resource holds it, or the partner cannot ([`before_delete`]).
    async fn cleanup(&self, state: &AccountState) -> Result<Cleanup<Reason>, Failure> {
        let services = &state.services;
        let partner = &self.spec.partner_ref.name;
        let runtime = services.partners.get(partner);
        // What was created for it even if the status write recording it was lost.
        let id = status_or_annotation_id(self)
            .map(str::to_string)
            .unwrap_or_else(|| self.chosen_id(&services.cluster_id).id);
        let holder = services
            .account_claims
            .held_by_other(&id, &self.uid().unwrap_or_default());
        let view = runtime.as_ref().map(|r| (r.state(), r.dialect));
        if let Some(done) = before_delete(self, view, state.partners.exists(partner), &id, holder.as_ref()) {
            return Ok(done);
        }
        let Some(runtime) = runtime else {
            unreachable!("before_delete lets a delete through only for a ready partner")
        };
        let note = match runtime
            .client
            .delete_account_v1(&id)
            .await
            .map_err(Failure::cyclr("the account delete"))?
        {
            Deleted::Deleted => format!("deleted Cyclr account {id} with its resource (deletionPolicy Delete)"),
            Deleted::AlreadyGone => format!("Cyclr account {id} was already gone (deletionPolicy Delete)"),
        };
        runtime.forget_account(&id);
        Ok(Cleanup::Done(Some((Reason::Deleted, note))))
    }

    fn forget(state: &AccountState, meta: &ObjectMeta) {
        let uid = meta.uid.as_deref().unwrap_or_default();
        state.usage_polls.lock().expect("lock").remove(&stable_hash(uid));
        // Only where this watch keeps the claims. Otherwise a watch of every CyclrAccount
        // does and says when one is gone: one that only left this shard (relabelled) still
        // holds its account.
        if state.services.config.serves_whole_cluster() {
            state.services.account_claims.remove(uid);
        }
        state.services.metrics.forget_account(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        );
    }
}

/// Whether deleting the resource deletes its Cyclr account: `deletionPolicy: Delete`, and
/// the operator manages the account (ObserveOnly never deletes).
fn deletes(spec: &CyclrAccountSpec) -> bool {
    spec.deletion_policy == DeletionPolicy::Delete && spec.management_policy == ManagementPolicy::Full
}

/// What `ID already in use` means for a create that carried `id` (pure). The id was chosen
/// for this resource (derived from it, or named by spec.accountID), so the account is this
/// resource's: adopted, with an Event. Unless another resource holds it (it adopted the id
/// first): Stalled, naming the holder.
pub fn id_in_use(id: &str, origin: IdOrigin, holder: Option<&Holder>) -> Result<Note<Reason>, Health> {
    match holder {
        Some(holder) => Err(Health::stalled(
            Reason::AccountClaimed,
            format!(
                "Cyclr account {id} already exists (ID already in use) and is held by CyclrAccount {}; one Cyclr account belongs to one resource",
                holder.name
            ),
        )),
        None => Ok((
            Reason::Adopted,
            format!(
                "adopted Cyclr account {id} {} (the create answered ID already in use)",
                origin.adoption()
            ),
        )),
    }
}

/// Whether a deleting resource's account is to be left alone or cannot be deleted now
/// (pure): `None` when the delete goes ahead. `partner` is the partner's runtime state and
/// dialect when it is in service, `partner_exists` whether the CyclrPartner exists at all.
pub fn before_delete(
    account: &CyclrAccount,
    partner: Option<(PartnerState, CyclrApi)>,
    partner_exists: bool,
    id: &str,
    holder: Option<&Holder>,
) -> Option<Cleanup<Reason>> {
    if !deletes(&account.spec) {
        // Orphan (perhaps set on the deleting resource to let it go), or ObserveOnly.
        return Some(Cleanup::Done(None));
    }
    if let Some(holder) = holder {
        return Some(Cleanup::Done(Some((
            Reason::AccountClaimed,
            format!(
                "Cyclr account {id} was not deleted: CyclrAccount {} holds it",
                holder.name
            ),
        ))));
    }
    let deleting = super::Deleting {
        what: format!("Cyclr account {id}"),
        kept: "the account",
        objects: "accounts",
        resource: format!("cyclraccount {}", account.name_any()),
    };
    deleting.through(&account.spec.partner_ref.name, partner, partner_exists)
}

/// A reference to the CyclrPartner `name`, for Events about it.
fn partner_reference(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(CyclrPartner::api_version(&()).into_owned()),
        kind: Some(CyclrPartner::kind(&()).into_owned()),
        name: Some(name.to_string()),
        ..ObjectReference::default()
    }
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
                        Reason::PricePlanNotFound,
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
            // CyclrDate compares at the legacy API's precision (whole seconds, UTC).
            CyclrDate::parse(text).ok_or_else(|| {
                Health::stalled(Reason::InvalidSpec, format!("spec.nextBillDate {text:?} is not a date"))
            })?,
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

/// The fields the spec sets that Cyclr has otherwise: the body of a minimal Update Account
/// (pure). Timezone (which List Accounts does not report) and NextBillDate (which Cyclr's
/// billing moves forward) are sent only with a spec change (`spec_changed`), never as drift.
pub fn changed_fields(desired: &AccountFields, observed: &Account, spec_changed: bool) -> AccountFields {
    fn differs<T: PartialEq + Clone>(want: &Option<T>, have: Option<&T>) -> Option<T> {
        want.as_ref().filter(|w| have != Some(*w)).cloned()
    }
    let on_spec_change = |want: &Option<_>, have: Option<&_>| if spec_changed { differs(want, have) } else { None };
    AccountFields {
        name: differs(&desired.name, Some(&observed.name)),
        description: differs(&desired.description, observed.description.as_ref()),
        timezone: match observed.timezone.as_ref() {
            Some(have) => differs(&desired.timezone, Some(have)),
            None if spec_changed => desired.timezone.clone(),
            None => None,
        },
        // v1.0 lists report no price plan: unknown is not drift, sent on a spec change only.
        price_plan_id: match observed.price_plan_id.as_ref() {
            Some(have) => differs(&desired.price_plan_id, Some(have)),
            None if spec_changed => desired.price_plan_id,
            None => None,
        },
        next_bill_date: on_spec_change(&desired.next_bill_date, observed.next_bill_date.as_ref()),
        audit_info: differs(&desired.audit_info, observed.audit_info.as_ref()),
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

/// The one decision of a reconcile (pure: the time and the pending create are in `facts`).
pub fn decide(account: &CyclrAccount, obs: &Observed, facts: &Facts) -> Plan<CyclrAccount> {
    let spec = &account.spec;
    let previous = account.status.clone().unwrap_or_default();
    let report = |health: Health| Plan::Report {
        health,
        status: previous.clone(),
        event: None,
    };
    let partner = &spec.partner_ref.name;
    let (plans, snapshot, dialect) = match &obs.partner {
        // After a restart: keep the status as it is until the partner's check, which wakes
        // every account; a new account gets its first status at once.
        PartnerView::Unchecked if account.status.is_some() => return Plan::Wait(Duration::from_secs(5)),
        PartnerView::Unchecked => {
            return report(Health::reconciling(
                Reason::PartnerNotReady,
                format!("CyclrPartner {partner:?} has not been checked yet"),
            ));
        }
        PartnerView::NotFound => {
            return report(Health::reconciling(
                Reason::PartnerNotFound,
                format!("CyclrPartner {partner:?} does not exist (or has not been checked yet); no Cyclr call is made"),
            ));
        }
        PartnerView::NotAllowed => {
            return report(Health::stalled(
                Reason::PartnerNotAllowed,
                format!(
                    "CyclrPartner {partner:?} does not admit namespace {:?}: its spec.namespaceSelector does not select it",
                    account.namespace().unwrap_or_default()
                ),
            ));
        }
        PartnerView::NotReady(why) => {
            return report(Health::reconciling(
                Reason::PartnerNotReady,
                format!("CyclrPartner {partner:?} is not ready: {why}"),
            ));
        }
        PartnerView::Ready {
            plans,
            snapshot,
            runtime,
        } => (plans, snapshot.as_deref(), runtime.dialect),
    };
    // What CEL cannot check (the IANA zone database), before any Cyclr call.
    if let Err(invalid) = crate::resources::validate_account_spec(spec) {
        return report(Health::stalled(Reason::InvalidSpec, invalid.to_string()));
    }
    // The dialect is the partner's: admission cannot see it.
    if spec.deletion_policy == DeletionPolicy::Delete && dialect == CyclrApi::Partner {
        return report(Health::stalled(
            Reason::InvalidSpec,
            format!(
                "spec.deletionPolicy Delete needs a CyclrPartner with spec.cyclrAPI V1: CyclrPartner {partner:?} uses the Partner API, which cannot delete accounts. Set spec.deletionPolicy to Orphan, or the partner's spec.cyclrAPI to V1"
            ),
        ));
    }
    let desired = match desired_fields(spec, account.cyclr_name(), plans) {
        Ok(desired) => desired,
        Err(health) => return report(health),
    };
    let Some(snapshot) = snapshot else {
        return Plan::Refresh(Look::ListedAfter(facts.now));
    };
    let held = status_or_annotation_id(account);
    if let (Some(held), Some(wanted)) = (held, spec.account_id.as_deref())
        && held != wanted
    {
        return report(Health::stalled(
            Reason::AccountIDMismatch,
            format!(
                "spec.accountID is {wanted} but this resource holds Cyclr account {held}; spec.accountID can only be set when the resource is created. Remove it, or delete and re-create the resource to adopt {wanted}"
            ),
        ));
    }
    // Created by this process, answered, and not yet in the object the watch shows.
    let created = facts.pending.made();
    if let Some(chosen) = &obs.chosen
        && spec.management_policy == ManagementPolicy::Full
        && status_or_annotation_id(account).is_none()
        && created.is_none()
    {
        return decide_chosen(account, obs, facts, snapshot, desired, previous, chosen);
    }
    match account.known_id().or(created) {
        Some(id) => decide_known(account, obs, facts, snapshot, &desired, id, previous, None),
        None => decide_new(account, obs, facts, snapshot, desired, previous),
    }
}

/// The id in status or in the annotation: what this resource already holds.
fn status_or_annotation_id(account: &CyclrAccount) -> Option<&str> {
    account
        .status
        .as_ref()
        .and_then(|s| s.account_id.as_deref())
        .or_else(|| annotation(&account.metadata, annotations::ACCOUNT_ID))
}

/// An account whose Cyclr id is known: adopt it, correct it, or report it in sync.
/// `adoption` says how the id was found, when a lost create's account is adopted.
#[allow(clippy::too_many_arguments)]
fn decide_known(
    account: &CyclrAccount,
    obs: &Observed,
    facts: &Facts,
    snapshot: &AccountsSnapshot,
    desired: &AccountFields,
    id: &str,
    previous: CyclrAccountStatus,
    adoption: Option<&str>,
) -> Plan<CyclrAccount> {
    let report = |health: Health, status: CyclrAccountStatus, event: Option<Note<Reason>>| Plan::Report {
        health,
        status,
        event,
    };
    if let Some(holder) = obs.claims.get(id) {
        return report(
            Health::stalled(
                Reason::AccountClaimed,
                format!(
                    "Cyclr account {id} is held by CyclrAccount {}; one Cyclr account belongs to one resource",
                    holder.name
                ),
            ),
            previous,
            None,
        );
    }
    let Some(found) = snapshot.get(id) else {
        // Not in a list taken during this reconcile either, and Cyclr says so when asked by
        // id: it is gone. A v1.0 list is paced over its pages (a drift check takes minutes at
        // large N), so there Cyclr is asked by id at once, not after a newer list.
        if snapshot.taken_at < facts.now && !paced_lists(obs) {
            return Plan::Refresh(Look::ListedAfter(facts.now));
        }
        match &obs.read_back {
            None => return Plan::Refresh(Look::ReadBack(id.to_string())),
            Some(ReadBack::Exists(usage)) => return listed_wrongly(account, previous, usage),
            Some(ReadBack::Gone) => {}
        }
        let message = if status_or_annotation_id(account).is_some() {
            format!(
                "Cyclr account {id} no longer exists; the operator will not re-create it. Delete this resource (and re-create it without the {} annotation to make a new account)",
                annotations::ACCOUNT_ID
            )
        } else {
            format!("spec.accountID {id} names no Cyclr account of this partner")
        };
        return report(Health::stalled(Reason::ExternalAccountMissing, message), previous, None);
    };
    let adopted = previous.account_id.is_none();
    let status = with_account(previous, &found, obs.usage.clone());
    let event = adopted.then(|| {
        let how = if let Some(how) = adoption {
            how
        } else if account.spec.account_id.is_some() {
            "named by spec.accountID"
        } else if status_or_annotation_id(account).is_some() {
            "recorded in the cyclr.com/account-id annotation"
        } else {
            "created by this operator (the status write recording it had failed)"
        };
        (Reason::Adopted, format!("adopted Cyclr account {id} {how}"))
    });
    let spec_changed = account.status.as_ref().and_then(|s| s.observed_generation) != account.metadata.generation;
    let changes = changed_fields(desired, &found, spec_changed || adopted);
    let in_sync = if account.spec.management_policy == ManagementPolicy::ObserveOnly {
        let message = if changes.is_empty() {
            "observed; Cyclr matches the spec".to_string()
        } else {
            format!(
                "observed; Cyclr differs from the spec in {} (ObserveOnly: not corrected)",
                field_names(&changes)
            )
        };
        Some(Health::ready(Reason::Observed, message))
    } else {
        changes.is_empty().then(|| Health::ready(Reason::Synced, SYNCED))
    };
    if let Some(health) = in_sync {
        return settle(account, obs, health, status, event);
    }
    Plan::Write {
        write: Write::Update {
            observed: found.clone(),
            changes,
            drift: !spec_changed && !adopted,
        },
        pending: None,
        status,
        event,
    }
}

/// An account the list left out although Cyclr answers for it: the list is wrong (the
/// partner says so), the account stays as it was, with the usage just read. Nothing is
/// corrected from a list that cannot be trusted.
fn listed_wrongly(account: &CyclrAccount, previous: CyclrAccountStatus, usage: &UsageStatus) -> Plan<CyclrAccount> {
    let ready = previous
        .conditions
        .iter()
        .find(|c| c.type_ == READY && c.status == "True")
        .and_then(|c| Some((Reason::parse(&c.reason)?, c.message.clone())));
    let health = match ready {
        Some((reason, message)) => Health::ready(reason, message),
        None if account.spec.management_policy == ManagementPolicy::ObserveOnly => {
            Health::ready(Reason::Observed, "observed; Cyclr matches the spec")
        }
        None => Health::ready(Reason::Synced, SYNCED),
    };
    Plan::Report {
        health,
        status: CyclrAccountStatus {
            usage: Some(usage.clone()),
            ..previous
        },
        event: None,
    }
}

/// Reports an account in sync, except when a usage read is held back by the partner's
/// onboarding and nothing but Cyclr's fields would change: then the status stays as it is
/// until the read, so the bill dates and the first usage take one write, not two. The
/// onboarding's end wakes the account for that read
/// ([`PartnerRuntime::wake_after_onboarding`]), its own timer only as a fallback.
fn settle(
    account: &CyclrAccount,
    obs: &Observed,
    health: Health,
    status: CyclrAccountStatus,
    event: Option<Note<Reason>>,
) -> Plan<CyclrAccount> {
    if let Some(previous) = &account.status
        && let Some(fallback) = look_again(account, obs)
        && obs.usage_deferred
        && event.is_none()
        && status != *previous
        && previous.observed_generation == account.metadata.generation
        && same_conditions(
            &health.conditions(account.metadata.generation, &previous.conditions),
            &previous.conditions,
        )
    {
        return Plan::Wait(fallback);
    }
    Plan::Report { health, status, event }
}

/// Whether the partner's account lists are v1.0's: paged, and paced to a tenth of its budget
/// (`partners::PartnerRuntime::snapshot_since`), so waiting for a newer one can take minutes.
fn paced_lists(obs: &Observed) -> bool {
    matches!(&obs.partner, PartnerView::Ready { runtime, .. } if runtime.dialect == CyclrApi::V1)
}

/// An account on a `V1` partner that holds no id yet: the account with its chosen id is
/// adopted when it exists, else created with that id (no pending marker: a repeat answers
/// `ID already in use`).
fn decide_chosen(
    account: &CyclrAccount,
    obs: &Observed,
    facts: &Facts,
    snapshot: &AccountsSnapshot,
    desired: AccountFields,
    previous: CyclrAccountStatus,
    chosen: &ChosenId,
) -> Plan<CyclrAccount> {
    let id = chosen.id.as_str();
    if snapshot.get(id).is_some() || obs.claims.contains_key(id) {
        // This resource's (or held by another resource: refused there).
        return decide_known(
            account,
            obs,
            facts,
            snapshot,
            &desired,
            id,
            previous,
            Some(chosen.origin.adoption()),
        );
    }
    // The same-name check still prevents a duplicate: an account of this name with another
    // id that no resource holds (made by hand, or by the Partner API before the switch). It
    // reads the partner's last list, however old, and waits for no newer one: a v1.0 list is
    // paced over many pages at large N (a drift check), and the chosen id already makes a
    // repeat answer `ID already in use` (an account made since with this id is judged then).
    // A twin made in Cyclr since that list started is not seen.
    let name = desired.name.clone().unwrap_or_default();
    let foreign: Vec<String> = snapshot
        .named(&name)
        .into_iter()
        .filter(|a| !obs.claims.contains_key(&a.id))
        .map(|a| a.id)
        .collect();
    if !foreign.is_empty() {
        return Plan::Report {
            health: Health::stalled(
                Reason::AccountNameInUse,
                format!(
                    "Cyclr already has {} account(s) named {name:?} that no resource holds ({}); the operator will not create another. To adopt one, re-create this resource with spec.accountID set to its id; or choose another spec.name",
                    foreign.len(),
                    foreign.join(", ")
                ),
            ),
            status: previous,
            event: None,
        };
    }
    Plan::Write {
        write: Write::CreateWithId {
            fields: v1_fields(&desired, id),
            partner_fields: AccountFields {
                price_plan_id: desired.price_plan_id,
                next_bill_date: desired.next_bill_date,
                ..AccountFields::default()
            },
            origin: chosen.origin,
        },
        pending: None,
        status: previous,
        event: None,
    }
}

/// The v1.0 create of `desired` with id `id` (pure): price plan and next bill date are not
/// v1.0 fields.
pub fn v1_fields(desired: &AccountFields, id: &str) -> AccountFieldsV1 {
    AccountFieldsV1 {
        id: Some(id.to_string()),
        name: desired.name.clone(),
        description: desired.description.clone(),
        timezone: desired.timezone.clone(),
        audit_info: desired.audit_info.clone(),
        ..AccountFieldsV1::default()
    }
}

/// The time a list must be taken after to show everything made before the resource: it was
/// made before the watch delivered it, and before its creationTimestamp's next whole second,
/// whichever comes first (a list of a rollout's backlog is usually newer than both; a new
/// resource waits for the partner's next list, not for the second).
fn made_by(account: &CyclrAccount, facts: &Facts) -> DateTime<Utc> {
    account
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|Time(t)| DateTime::from_timestamp(t.as_second() + 1, 0))
        .map_or(facts.seen_at, |next_second| next_second.min(facts.seen_at))
}

/// An account without a Cyclr id: judge a lost create, or create it (once).
fn decide_new(
    account: &CyclrAccount,
    obs: &Observed,
    facts: &Facts,
    snapshot: &AccountsSnapshot,
    desired: AccountFields,
    previous: CyclrAccountStatus,
) -> Plan<CyclrAccount> {
    let report = |health: Health| Plan::Report {
        health,
        status: previous.clone(),
        event: None,
    };
    if account.spec.management_policy == ManagementPolicy::ObserveOnly {
        return report(Health::stalled(
            Reason::InvalidSpec,
            "managementPolicy ObserveOnly needs spec.accountID",
        ));
    }
    // Look in a list taken after the resource was made (and after an open create ended), so
    // an account made by hand or by a lost create is seen before creating.
    let made_by = made_by(account, facts);
    // An open create shows in a list taken after it started; that it made nothing, only in
    // one taken after it surely ended.
    let not_before = facts.pending.since().map_or(made_by, |since| since.max(made_by));
    if snapshot.taken_at < not_before {
        return Plan::Refresh(Look::ListedAfter(not_before));
    }
    let name = desired.name.clone().unwrap_or_default();
    if facts.pending.is_open() {
        // A create may have happened: look for the name it sent (the spec may have changed
        // since); only an unclaimed account that did not exist before it can be ours.
        let sent = facts.pending.sent().unwrap_or(&name);
        let ours: Vec<Account> = snapshot
            .named(sent)
            .into_iter()
            .filter(|a| !obs.claims.contains_key(&a.id) && !facts.pending.existed_before(&a.id))
            .collect();
        match ours.as_slice() {
            [] => {
                // Nothing yet: wait until the create surely ended (after a restart, until the
                // client's deadline the marker records), then look once more.
                if let Some(wait) = facts.pending.wait_to_judge(facts.now) {
                    return Plan::Wait(wait);
                }
                if let Some(after) = facts.pending.judge_after().filter(|after| snapshot.taken_at < *after) {
                    return Plan::Refresh(Look::ListedAfter(after));
                }
            }
            [found] => {
                // Adopted, then brought to the spec (a name fixed since) in the same reconcile.
                let status = CyclrAccountStatus {
                    pending_create: None,
                    ..previous
                };
                return decide_known(
                    account,
                    obs,
                    facts,
                    snapshot,
                    &desired,
                    &found.id,
                    status,
                    Some("created by an earlier attempt whose response was lost"),
                );
            }
            many => {
                let ids: Vec<&str> = many.iter().map(|a| a.id.as_str()).collect();
                return report(Health::stalled(
                    Reason::AmbiguousAdoption,
                    format!(
                        "a create may have succeeded, but {} new unclaimed Cyclr accounts are named {sent:?} ({}); set spec.accountID to the right one when re-creating this resource",
                        ids.len(),
                        ids.join(", ")
                    ),
                ));
            }
        }
    }
    let same_name = snapshot.named(&name);
    let foreign: Vec<&str> = same_name
        .iter()
        .filter(|a| !obs.claims.contains_key(&a.id))
        .map(|a| a.id.as_str())
        .collect();
    if !foreign.is_empty() {
        return report(Health::stalled(
            Reason::AccountNameInUse,
            format!(
                "Cyclr already has {} account(s) named {name:?} that no resource holds ({}); the operator will not create another. To adopt one, re-create this resource with spec.accountID set to its id; or choose another spec.name",
                foreign.len(),
                foreign.join(", ")
            ),
        ));
    }
    let PartnerView::Ready { runtime, .. } = &obs.partner else {
        unreachable!("decided only for a ready partner")
    };
    Plan::Write {
        write: Write::Create { fields: desired },
        pending: Some(Intent {
            sent: name,
            existing_ids: same_name.iter().map(|a| a.id.clone()).collect(),
            lasts: runtime.client.call_deadline(),
            reason: Reason::Creating,
            message: "creating the Cyclr account".into(),
        }),
        status: previous,
        event: None,
    }
}

/// The status with what Cyclr holds for the account (pure).
pub fn with_account(previous: CyclrAccountStatus, account: &Account, usage: Option<UsageStatus>) -> CyclrAccountStatus {
    CyclrAccountStatus {
        account_id: Some(account.id.clone()),
        price_plan_id: account.price_plan_id.map(|p| p.0).or(previous.price_plan_id),
        last_bill_date: account.last_bill_date.map(|d| d.to_rfc3339()),
        next_bill_date: account.next_bill_date.map(|d| d.to_rfc3339()),
        usage: usage.or(previous.usage.clone()),
        ..previous
    }
}

fn usage_status(usage: &AccountUsage) -> UsageStatus {
    UsageStatus {
        task_count: usage.task_count,
        cycle_count: usage.cycle_count,
        from_date: usage.from_date.map(|d| d.to_rfc3339()),
        to_date: usage.to_date.map(|d| d.to_rfc3339()),
        current_price_plan_id: usage.current_price_plan_id.map(|p| p.0),
    }
}

/// How long until the account's usage is due (`usageInterval` since the last read, less
/// 10%); zero when it is. An account whose status already holds a usage read from Cyclr (it
/// carries Cyclr's period) that this process did not read (a restart, a new leader) counts as
/// read now: a restart reads no usage at once, and each account's is read again one interval
/// later. The usage a create writes (nothing used, no period) is not a read: the first read
/// comes once a list shows the new account, with its bill dates.
fn usage_due_in(account: &CyclrAccount, state: &AccountState, runtime: &PartnerRuntime) -> Duration {
    let mut polls = state.usage_polls.lock().expect("lock");
    let key = stable_hash(account.metadata.uid.as_deref().unwrap_or_default());
    let last = match polls.get(&key) {
        Some(last) => *last,
        None if account
            .status
            .as_ref()
            .and_then(|s| s.usage.as_ref())
            .is_some_and(|u| u.from_date.is_some()) =>
        {
            *polls.entry(key).or_insert(Instant::now())
        }
        None => return Duration::ZERO,
    };
    runtime.usage_interval.mul_f64(0.9).saturating_sub(last.elapsed())
}

/// When the account looks again on its own: [`next_look`] on a Ready partner, else never (the
/// partner's change wakes it).
fn look_again(account: &CyclrAccount, obs: &Observed) -> Option<Duration> {
    match &obs.partner {
        PartnerView::Ready { runtime, .. } => Some(next_look(account, runtime, obs.usage_due_in)),
        _ => None,
    }
}

/// When an account on a Ready partner looks again, its usage read due in `usage_due_in`
/// (`None`: not read, or not listed yet). The partner's list wakes an account when it shows
/// it changed, and every account when the partner changes, so a settled account
/// ([`driver::is_settled`]) has only its usage to read: it sleeps until that is due. Others
/// look again within a resync interval (less up to 10%), or when their usage is due if
/// sooner. A look moves the timer on: a read is timed to fall due, not left to the first look
/// after it.
fn next_look(account: &CyclrAccount, runtime: &PartnerRuntime, usage_due_in: Option<Duration>) -> Duration {
    let due = usage_due_in.filter(|due| !due.is_zero());
    let resync = jittered(runtime.resync_interval.min(runtime.usage_interval));
    match due {
        Some(due) if driver::is_settled(account) => due,
        _ => due.map_or(resync, |due| resync.min(due)),
    }
}

/// Get Account Usage, recorded in the metrics and as the account's last usage read.
///
/// Errors: Cyclr's (404: the account is gone).
async fn read_usage(
    account: &CyclrAccount,
    state: &AccountState,
    runtime: &PartnerRuntime,
    id: &str,
) -> Result<UsageStatus, cyclr::CyclrError> {
    let key = stable_hash(account.metadata.uid.as_deref().unwrap_or_default());
    let usage = runtime.client.account_usage(id, None).await?;
    state.usage_polls.lock().expect("lock").insert(key, Instant::now());
    state.services.metrics.account_usage(
        &account.namespace().unwrap_or_default(),
        &account.name_any(),
        usage.task_count,
        usage.cycle_count,
    );
    Ok(usage_status(&usage))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{PendingWrite, PricePlanRef, READY, condition};
    use cyclr::ClientConfig;
    use driver::{Attempt, State};
    use std::collections::BTreeMap;

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
            price_plan_id: Some(PricePlanId(plan)),
            ..Default::default()
        }
    }

    fn resource(spec: serde_json::Value) -> CyclrAccount {
        let mut account = CyclrAccount::new("acme", serde_json::from_value(spec.clone()).unwrap());
        // Set through Rust, so the test does not depend on the field's JSON spelling.
        account.spec.account_id = spec["accountID"].as_str().map(str::to_string);
        account.metadata = ObjectMeta {
            name: Some("acme".into()),
            namespace: Some("t".into()),
            generation: Some(1),
            uid: Some("u1".into()),
            ..Default::default()
        };
        account
    }

    fn pro() -> CyclrAccount {
        resource(serde_json::json!({"pricePlan": {"name": "Pro"}}))
    }

    fn runtime() -> Arc<PartnerRuntime> {
        let config = ClientConfig::new("http://127.0.0.1:9", "id", secrecy::SecretString::from("s"));
        Arc::new(PartnerRuntime::for_tests(config))
    }

    /// What a reconcile observed, and the driver's facts.
    struct Given {
        obs: Observed,
        facts: Facts,
    }

    impl std::ops::Deref for Given {
        type Target = Observed;
        fn deref(&self) -> &Observed {
            &self.obs
        }
    }

    impl std::ops::DerefMut for Given {
        fn deref_mut(&mut self) -> &mut Observed {
            &mut self.obs
        }
    }

    /// The decision, with the pending marker read from the account's status as the driver
    /// reads it.
    fn decide(account: &CyclrAccount, given: &Given) -> Plan<CyclrAccount> {
        let mut facts = given.facts.clone();
        facts.pending.marker = account.status.as_ref().and_then(|s| s.pending_create.clone());
        super::decide(account, &given.obs, &facts)
    }

    fn observed(snapshot: Option<(DateTime<Utc>, Vec<Account>)>, claims: &[(&str, &str)], now: DateTime<Utc>) -> Given {
        let obs = Observed {
            partner: PartnerView::Ready {
                runtime: runtime(),
                plans: plans(),
                snapshot: snapshot.map(|(taken_at, accounts)| Arc::new(AccountsSnapshot::new(taken_at, accounts))),
            },
            claims: claims
                .iter()
                .map(|(id, holder)| {
                    (
                        id.to_string(),
                        Holder {
                            created: String::new(),
                            uid: "other".into(),
                            name: holder.to_string(),
                        },
                    )
                })
                .collect(),
            usage: None,
            usage_deferred: false,
            usage_due_in: None,
            read_back: None,
            chosen: None,
            _name_guard: None,
            _onboarding: None,
        };
        let facts = Facts {
            now,
            // Seen a minute ago: any snapshot a test builds is newer unless it says otherwise.
            seen_at: now - chrono::Duration::seconds(60),
            pending: Default::default(),
        };
        Given { obs, facts }
    }

    fn held(mut account: CyclrAccount, id: &str) -> CyclrAccount {
        account.status = Some(CyclrAccountStatus {
            account_id: Some(id.into()),
            observed_generation: Some(1),
            conditions: Health::ready(Reason::Synced, "").conditions(Some(1), &[]),
            ..Default::default()
        });
        account
    }

    #[test]
    fn a_settled_account_sleeps_until_its_usage_is_due_and_others_look_within_a_resync() {
        let runtime = runtime();
        let (minute, hour) = (Duration::from_secs(60), Duration::from_secs(3600));
        let settled = held(pro(), "a1");
        assert!(driver::is_settled(&settled));
        assert_eq!(
            next_look(&settled, &runtime, Some(hour)),
            hour,
            "only its usage to read"
        );
        assert!(next_look(&settled, &runtime, None) <= minute, "usage not read yet");
        assert!(
            next_look(&settled, &runtime, Some(Duration::ZERO)) <= minute,
            "a read deferred"
        );
        let mut changed = settled.clone();
        changed.metadata.generation = Some(2);
        assert!(next_look(&changed, &runtime, Some(hour)) <= minute, "a spec to apply");
        assert!(next_look(&pro(), &runtime, Some(hour)) <= minute, "not created yet");
        assert_eq!(
            next_look(&pro(), &runtime, Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
    }

    fn annotate(mut account: CyclrAccount, key: &str, value: &str) -> CyclrAccount {
        account.metadata.annotations = Some(BTreeMap::from([(key.to_string(), value.to_string())]));
        account
    }

    fn reason(plan: &Plan<CyclrAccount>) -> Option<Reason> {
        match plan {
            Plan::Report { health, .. } => Some(health.reason),
            _ => None,
        }
    }

    #[test]
    fn new_account_is_created_with_its_plan_resolved_by_name_and_the_names_seen_before() {
        let now = Utc::now();
        let obs = observed(
            Some((now, vec![cyclr_account("theirs", "acme", 2)])),
            &[("theirs", "b/acme")],
            now,
        );
        match decide(&pro(), &obs) {
            Plan::Write {
                write: Write::Create { fields },
                pending: Some(pending),
                ..
            } => {
                assert_eq!(fields.name.as_deref(), Some("acme"));
                assert_eq!(fields.price_plan_id, Some(PricePlanId(3)));
                assert_eq!(pending.existing_ids, vec!["theirs".to_string()]);
            }
            _ => panic!("expected a create"),
        }
    }

    #[test]
    fn an_unclaimed_account_with_the_name_stops_the_create() {
        let now = Utc::now();
        let obs = observed(Some((now, vec![cyclr_account("handmade", "acme", 2)])), &[], now);
        match decide(&pro(), &obs) {
            Plan::Report {
                health:
                    Health {
                        state: State::Stalled,
                        reason,
                        message,
                    },
                ..
            } => {
                assert_eq!(reason, Reason::AccountNameInUse);
                assert!(
                    message.contains("handmade") && message.contains("spec.accountID"),
                    "{message}"
                );
            }
            _ => panic!("expected a stall"),
        }
    }

    #[test]
    fn a_new_account_is_checked_against_a_list_taken_after_the_resource_surely_existed() {
        // Made at second 100 (creationTimestamp has whole seconds).
        let at = |millis: i64| DateTime::from_timestamp_millis(100_000 + millis).unwrap();
        let mut account = pro();
        account.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::from_second(100).unwrap()));
        let decide_at = |taken: DateTime<Utc>, seen: DateTime<Utc>| {
            let mut obs = observed(Some((taken, vec![])), &[], seen.max(taken));
            obs.facts.seen_at = seen;
            decide(&account, &obs)
        };
        let refreshed = |plan: Plan<CyclrAccount>| match plan {
            Plan::Refresh(Look::ListedAfter(after)) => Some(after),
            Plan::Write {
                write: Write::Create { .. },
                ..
            } => None,
            _ => panic!("expected a create or a refresh"),
        };
        // Seen by the watch at .300: a list from .500 shows everything made before it,
        // without waiting for second 101.
        assert_eq!(refreshed(decide_at(at(500), at(300))), None);
        // A list from before the watch delivered it may not.
        assert_eq!(refreshed(decide_at(at(200), at(300))), Some(at(300)));
        // Seen long after (a restart): any list from second 101 on will do.
        assert_eq!(refreshed(decide_at(at(1_000), at(90_000))), None);
        assert_eq!(refreshed(decide_at(at(900), at(90_000))), Some(at(1_000)));
    }

    #[test]
    fn unknown_plan_is_terminal_and_names_the_offered_plans() {
        let now = Utc::now();
        let account = resource(serde_json::json!({"pricePlan": {"name": "Gold"}}));
        match decide(&account, &observed(Some((now, vec![])), &[], now)) {
            Plan::Report {
                health:
                    Health {
                        state: State::Stalled,
                        reason,
                        message,
                    },
                ..
            } => {
                assert_eq!(reason, Reason::PricePlanNotFound);
                assert!(message.contains("Gold") && message.contains("Starter"), "{message}");
            }
            _ => panic!("expected a stall"),
        }
        let _ = PricePlanRef {
            id: Some(1),
            name: None,
        };
    }

    #[test]
    fn in_sync_account_needs_nothing() {
        let now = Utc::now();
        let obs = observed(Some((now, vec![cyclr_account("a1", "acme", 3)])), &[], now);
        assert_eq!(reason(&decide(&held(pro(), "a1"), &obs)), Some(Reason::Synced));
    }

    #[test]
    fn bill_dates_wait_for_a_usage_read_held_back_by_onboarding() {
        let now = Utc::now();
        let mut account = held(pro(), "a1");
        account.status.as_mut().unwrap().conditions = Health::ready(Reason::Synced, SYNCED).conditions(Some(1), &[]);
        let mut remote = cyclr_account("a1", "acme", 3);
        remote.next_bill_date = CyclrDate::parse("2030-03-09T16:23:08");
        let mut obs = observed(Some((now, vec![remote])), &[], now);
        match decide(&account, &obs) {
            Plan::Report { status, .. } => assert!(status.next_bill_date.is_some(), "written when nothing waits"),
            _ => panic!("an account in sync is reported"),
        }
        obs.usage_deferred = true;
        assert!(
            matches!(decide(&account, &obs), Plan::Wait(_)),
            "bill dates alone wait for the usage read, so both take one write"
        );
        // A change of conditions is never held back.
        let stale = held(pro(), "a1");
        assert_eq!(reason(&decide(&stale, &obs)), Some(Reason::Synced));
    }

    #[test]
    fn the_annotation_keeps_the_id_when_status_is_lost() {
        let now = Utc::now();
        let account = annotate(pro(), annotations::ACCOUNT_ID, "a1");
        let obs = observed(Some((now, vec![cyclr_account("a1", "acme", 3)])), &[], now);
        match decide(&account, &obs) {
            Plan::Report { status, health, .. } => {
                assert_eq!(status.account_id.as_deref(), Some("a1"));
                assert_eq!(health.reason, Reason::Synced);
            }
            _ => panic!("no create, no update: the id is restored"),
        }
    }

    #[test]
    fn an_id_held_by_another_resource_is_refused() {
        let now = Utc::now();
        let account = resource(serde_json::json!({"accountID": "a1"}));
        let obs = observed(
            Some((now, vec![cyclr_account("a1", "acme", 3)])),
            &[("a1", "team-a/acme")],
            now,
        );
        match decide(&account, &obs) {
            Plan::Report {
                health:
                    Health {
                        state: State::Stalled,
                        reason,
                        message,
                    },
                ..
            } => {
                assert_eq!(reason, Reason::AccountClaimed);
                assert!(message.contains("team-a/acme"));
            }
            _ => panic!("expected a stall"),
        }
    }

    #[test]
    fn a_spec_id_added_to_a_held_account_is_refused() {
        let now = Utc::now();
        let account = held(resource(serde_json::json!({"accountID": "other"})), "a1");
        let obs = observed(Some((now, vec![cyclr_account("a1", "acme", 3)])), &[], now);
        assert_eq!(reason(&decide(&account, &obs)), Some(Reason::AccountIDMismatch));
    }

    #[test]
    fn drift_is_corrected_with_only_the_changed_fields() {
        let now = Utc::now();
        let account = held(
            resource(serde_json::json!({"pricePlan": {"name": "Pro"}, "description": "tenant"})),
            "a1",
        );
        let mut remote = cyclr_account("a1", "acme", 2);
        remote.description = Some("tenant".into());
        match decide(&account, &observed(Some((now, vec![remote])), &[], now)) {
            Plan::Write {
                write: Write::Update { changes, drift, .. },
                pending: None,
                ..
            } => {
                assert_eq!(
                    changes,
                    AccountFields {
                        price_plan_id: Some(PricePlanId(3)),
                        ..Default::default()
                    }
                );
                assert!(drift, "same generation: Cyclr changed, not the spec");
            }
            _ => panic!("expected an update"),
        }
    }

    #[test]
    fn dates_compare_at_the_apis_precision_and_billing_is_not_drift() {
        let now = Utc::now();
        let account = held(
            resource(serde_json::json!({"pricePlan": {"id": 3}, "nextBillDate": "2030-03-09T16:23:08.5Z"})),
            "a1",
        );
        let mut remote = cyclr_account("a1", "acme", 3);
        remote.next_bill_date = CyclrDate::parse("2030-03-09T16:23:08");
        assert_eq!(
            reason(&decide(
                &account,
                &observed(Some((now, vec![remote.clone()])), &[], now)
            )),
            Some(Reason::Synced)
        );
        remote.next_bill_date = CyclrDate::parse("2030-04-09T16:23:08");
        assert_eq!(
            reason(&decide(&account, &observed(Some((now, vec![remote])), &[], now))),
            Some(Reason::Synced),
            "Cyclr's billing moved it: not drift"
        );
    }

    #[test]
    fn a_timezone_the_list_does_not_report_is_sent_on_a_spec_change_only() {
        let now = Utc::now();
        let mut account = held(
            resource(serde_json::json!({"pricePlan": {"id": 3}, "timezone": "Europe/Paris"})),
            "a1",
        );
        let remote = cyclr_account("a1", "acme", 3);
        assert_eq!(
            reason(&decide(
                &account,
                &observed(Some((now, vec![remote.clone()])), &[], now)
            )),
            Some(Reason::Synced)
        );
        account.metadata.generation = Some(2);
        match decide(&account, &observed(Some((now, vec![remote])), &[], now)) {
            Plan::Write {
                write: Write::Update { changes, drift, .. },
                ..
            } => {
                assert_eq!(changes.timezone.as_deref(), Some("Europe/Paris"));
                assert!(!drift);
            }
            _ => panic!("expected an update"),
        }
    }

    #[test]
    fn observe_only_never_writes() {
        let now = Utc::now();
        let account = held(
            resource(
                serde_json::json!({"pricePlan": {"name": "Pro"}, "managementPolicy": "ObserveOnly", "accountID": "a1"}),
            ),
            "a1",
        );
        let obs = observed(Some((now, vec![cyclr_account("a1", "other", 2)])), &[], now);
        match decide(&account, &obs) {
            Plan::Report {
                health:
                    Health {
                        state: State::Ready,
                        message,
                        ..
                    },
                ..
            } => assert!(message.contains("not corrected")),
            _ => panic!("expected a report"),
        }
    }

    #[test]
    fn adoption_by_spec_account_id() {
        let now = Utc::now();
        let account = resource(serde_json::json!({"pricePlan": {"name": "Pro"}, "accountID": "a9"}));
        let obs = observed(Some((now, vec![cyclr_account("a9", "acme", 3)])), &[], now);
        match decide(&account, &obs) {
            Plan::Report { status, event, .. } => {
                assert_eq!(status.account_id.as_deref(), Some("a9"));
                assert_eq!(event.map(|e| e.0), Some(Reason::Adopted));
            }
            _ => panic!("expected adoption"),
        }
    }

    #[test]
    fn vanished_account_is_confirmed_by_a_read_then_reported_not_recreated() {
        let now = Utc::now();
        let account = held(pro(), "gone");
        let old = observed(Some((now - chrono::Duration::seconds(60), vec![])), &[], now);
        assert!(matches!(decide(&account, &old), Plan::Refresh(Look::ListedAfter(_))));
        let mut fresh = observed(Some((now, vec![])), &[], now);
        assert!(
            matches!(decide(&account, &fresh), Plan::Refresh(Look::ReadBack(id)) if id == "gone"),
            "a list alone is not enough"
        );
        fresh.read_back = Some(ReadBack::Gone);
        assert_eq!(reason(&decide(&account, &fresh)), Some(Reason::ExternalAccountMissing));
        // On v1.0 a list is paced over many pages: Cyclr is asked by id at once, with no wait
        // for a newer list (which would hold a worker for a whole drift check).
        let old_v1 = on_v1(
            observed(Some((now - chrono::Duration::seconds(60), vec![])), &[], now),
            derived("gone"),
        );
        assert!(matches!(decide(&account, &old_v1), Plan::Refresh(Look::ReadBack(id)) if id == "gone"));
    }

    #[test]
    fn an_account_a_wrong_list_left_out_stays_ready_and_keeps_its_status() {
        let now = Utc::now();
        let account = held(pro(), "a1");
        let mut obs = observed(Some((now, vec![])), &[], now);
        let usage = UsageStatus {
            task_count: 7,
            ..Default::default()
        };
        obs.read_back = Some(ReadBack::Exists(usage.clone()));
        match decide(&account, &obs) {
            Plan::Report { health, status, .. } => {
                assert_eq!((health.state, health.reason), (State::Ready, Reason::Synced));
                assert_eq!(status.account_id.as_deref(), Some("a1"));
                assert_eq!(status.usage, Some(usage));
            }
            _ => panic!("expected a report"),
        }
    }

    #[test]
    fn after_a_lost_create_only_a_new_unclaimed_account_is_adopted() {
        let now = Utc::now();
        let mut account = pro();
        account.status = Some(CyclrAccountStatus {
            pending_create: Some(PendingWrite {
                since: (now - chrono::Duration::seconds(5)).to_rfc3339(),
                existing_ids: vec!["before".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        let list = vec![
            cyclr_account("before", "acme", 3),
            cyclr_account("mine", "acme", 3),
            cyclr_account("theirs", "acme", 3),
        ];
        match decide(
            &account,
            &observed(Some((now, list.clone())), &[("theirs", "b/acme")], now),
        ) {
            Plan::Report { status, event, .. } => {
                assert_eq!(status.account_id.as_deref(), Some("mine"));
                assert_eq!(status.pending_create, None);
                assert_eq!(event.map(|e| e.0), Some(Reason::Adopted));
            }
            _ => panic!("expected adoption of the new account"),
        }
        assert_eq!(
            reason(&decide(&account, &observed(Some((now, list)), &[], now))),
            Some(Reason::AmbiguousAdoption)
        );
        // Nothing new: the create did not happen, but a pre-existing twin still stops it.
        assert_eq!(
            reason(&decide(
                &account,
                &observed(Some((now, vec![cyclr_account("before", "acme", 3)])), &[], now)
            )),
            Some(Reason::AccountNameInUse)
        );
        assert!(matches!(
            decide(&account, &observed(Some((now, vec![])), &[], now)),
            Plan::Write { .. }
        ));
    }

    #[test]
    fn a_lost_create_is_judged_by_a_list_taken_after_the_attempt_ended() {
        // The create was decided at since, waited for the budget, was sent and committed,
        // and its response was lost at ended. A list taken in between cannot show it.
        let ended = Utc::now();
        let since = ended - chrono::Duration::seconds(8);
        let mut account = pro();
        account.status = Some(CyclrAccountStatus {
            pending_create: Some(PendingWrite {
                since: since.to_rfc3339(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let between = ended - chrono::Duration::seconds(3);
        let lost = Some(Attempt {
            ended,
            sent: "acme".into(),
            made: None,
        });
        let mut obs = observed(Some((between, vec![])), &[], ended);
        obs.facts.pending.attempt = lost.clone();
        assert!(
            matches!(decide(&account, &obs), Plan::Refresh(Look::ListedAfter(after)) if after >= ended),
            "a list from before the attempt ended must not lead to a second create"
        );
        let mut obs = observed(Some((ended, vec![cyclr_account("mine", "acme", 3)])), &[], ended);
        obs.facts.pending.attempt = lost;
        assert!(matches!(decide(&account, &obs), Plan::Report { .. }), "adopted");
    }

    #[test]
    fn after_a_restart_a_lost_create_is_judged_after_the_clients_deadline() {
        // The create may still be applied until its deadline, recorded in the marker: a list
        // from before then must not lead to a second create.
        let now = Utc::now();
        let mut account = pro();
        account.status = Some(CyclrAccountStatus {
            pending_create: Some(PendingWrite {
                since: (now - chrono::Duration::seconds(5)).to_rfc3339(),
                until: Some((now + chrono::Duration::seconds(25)).to_rfc3339()),
                sent: Some("acme".into()),
                existing_ids: vec![],
            }),
            ..Default::default()
        });
        let obs = observed(Some((now, vec![])), &[], now);
        assert!(
            matches!(decide(&account, &obs), Plan::Wait(wait) if wait > Duration::from_secs(20)),
            "nothing shown yet: wait for the deadline, no list storm"
        );
        // What it made is adopted as soon as a list shows it.
        let obs = observed(Some((now, vec![cyclr_account("mine", "acme", 3)])), &[], now);
        assert!(matches!(decide(&account, &obs), Plan::Report { .. }));
        let later = now + chrono::Duration::seconds(26);
        let obs = observed(Some((later, vec![])), &[], later);
        assert!(matches!(decide(&account, &obs), Plan::Write { .. }), "nothing was made");
    }

    #[test]
    fn a_lost_create_is_looked_for_under_the_name_it_sent_then_updated_to_the_spec() {
        // The create sent "Acme Typo", committed, lost its answer; the name was fixed since.
        let now = Utc::now();
        let mut account = resource(serde_json::json!({"name": "Acme"}));
        account.status = Some(CyclrAccountStatus {
            pending_create: Some(PendingWrite {
                since: (now - chrono::Duration::seconds(60)).to_rfc3339(),
                until: Some((now - chrono::Duration::seconds(30)).to_rfc3339()),
                sent: Some("Acme Typo".into()),
                existing_ids: vec![],
            }),
            ..Default::default()
        });
        let obs = observed(Some((now, vec![cyclr_account("mine", "Acme Typo", 3)])), &[], now);
        match decide(&account, &obs) {
            Plan::Write {
                write: Write::Update { observed, changes, .. },
                pending: None,
                status,
                event,
            } => {
                assert_eq!(observed.id, "mine");
                assert_eq!(changes.name.as_deref(), Some("Acme"), "the edit, in one Update");
                assert_eq!(
                    status.account_id.as_deref(),
                    Some("mine"),
                    "adopted even if the update fails"
                );
                assert_eq!(status.pending_create, None);
                assert_eq!(event.map(|e| e.0), Some(Reason::Adopted));
            }
            _ => panic!("expected the lost create's account adopted and updated"),
        }
    }

    #[test]
    fn an_object_older_than_our_own_create_is_decided_with_the_id_we_were_answered() {
        // The API server went away: the marker write and the create went through, the
        // status write with the id did not, and the watch still shows the object before
        // the marker. Cyclr lists the account, which no resource holds.
        let now = Utc::now();
        let list = vec![cyclr_account("mine", "acme", 3)];
        let mut obs = observed(Some((now, list)), &[], now);
        obs.facts.pending.attempt = Some(Attempt {
            ended: now - chrono::Duration::seconds(2),
            sent: "acme".into(),
            made: Some("mine".into()),
        });
        match decide(&pro(), &obs) {
            Plan::Report { status, health, .. } => {
                assert_eq!(status.account_id.as_deref(), Some("mine"), "the id it was answered");
                assert_eq!(health.state, State::Ready);
            }
            _ => panic!("expected the created account to be recorded"),
        }
    }

    #[test]
    fn a_missing_or_refusing_partner_makes_no_calls() {
        let now = Utc::now();
        let mut obs = observed(None, &[], now);
        obs.partner = PartnerView::NotFound;
        assert_eq!(reason(&decide(&pro(), &obs)), Some(Reason::PartnerNotFound));
        obs.partner = PartnerView::NotAllowed;
        assert_eq!(reason(&decide(&pro(), &obs)), Some(Reason::PartnerNotAllowed));
        obs.partner = PartnerView::NotReady("401".into());
        assert_eq!(reason(&decide(&pro(), &obs)), Some(Reason::PartnerNotReady));
    }

    /// What a reconcile observed on a `V1` partner, the account's chosen id being `chosen`.
    fn observed_v1(snapshot: Vec<Account>, claims: &[(&str, &str)], now: DateTime<Utc>, chosen: ChosenId) -> Given {
        on_v1(observed(Some((now, snapshot)), claims, now), chosen)
    }

    /// `given` on a `V1` partner, the account's chosen id being `chosen`.
    fn on_v1(mut given: Given, chosen: ChosenId) -> Given {
        let runtime = Arc::new(Arc::into_inner(runtime()).unwrap().with_dialect(CyclrApi::V1));
        given.obs.partner = PartnerView::Ready {
            runtime,
            plans: plans(),
            snapshot: match std::mem::replace(&mut given.obs.partner, PartnerView::NotFound) {
                PartnerView::Ready { snapshot, .. } => snapshot,
                _ => None,
            },
        };
        given.obs.chosen = Some(chosen);
        given
    }

    fn derived(id: &str) -> ChosenId {
        ChosenId {
            id: id.into(),
            origin: IdOrigin::Derived,
        }
    }

    #[test]
    fn derived_ids_are_stable_short_and_tell_clusters_namespaces_and_names_apart() {
        let id = derived_account_id("cluster-uid", "team-a", "acme");
        assert_eq!(
            id,
            derived_account_id("cluster-uid", "team-a", "acme"),
            "the same manifest, the same id"
        );
        assert!(id.starts_with("k8s-") && id.len() == 36, "{id}");
        assert!(id[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, derived_account_id("other-cluster", "team-a", "acme"));
        assert_ne!(id, derived_account_id("cluster-uid", "team-b", "acme"));
        assert_ne!(id, derived_account_id("cluster-uid", "team-a", "acme2"));
        assert_ne!(
            derived_account_id("c", "a", "b-c"),
            derived_account_id("c", "a-b", "c"),
            "the parts cannot run into each other"
        );
        let mut named = pro();
        assert_eq!(named.chosen_id("cluster-uid").origin, IdOrigin::Derived);
        assert_eq!(
            named.chosen_id("cluster-uid").id,
            derived_account_id("cluster-uid", "t", "acme")
        );
        named.spec.account_id = Some("tenant-42".into());
        assert_eq!(
            named.chosen_id("cluster-uid"),
            ChosenId {
                id: "tenant-42".into(),
                origin: IdOrigin::Spec
            }
        );
    }

    #[test]
    fn on_v1_a_new_account_is_created_with_its_chosen_id_and_no_pending_marker() {
        let now = Utc::now();
        let obs = observed_v1(vec![], &[], now, derived("k8s-1"));
        match decide(&pro(), &obs) {
            Plan::Write {
                write:
                    Write::CreateWithId {
                        fields,
                        partner_fields,
                        origin,
                    },
                pending: None,
                ..
            } => {
                assert_eq!(fields.id.as_deref(), Some("k8s-1"));
                assert_eq!(fields.name.as_deref(), Some("acme"));
                assert_eq!(
                    partner_fields.price_plan_id,
                    Some(PricePlanId(3)),
                    "through the Partner API"
                );
                assert_eq!(origin, IdOrigin::Derived);
            }
            _ => panic!("expected a create with the chosen id"),
        }
    }

    #[test]
    fn on_v1_an_account_with_the_chosen_id_is_adopted_and_one_held_elsewhere_is_refused() {
        let now = Utc::now();
        let obs = observed_v1(vec![cyclr_account("k8s-1", "acme", 3)], &[], now, derived("k8s-1"));
        match decide(&pro(), &obs) {
            Plan::Report { status, event, health } => {
                assert_eq!(status.account_id.as_deref(), Some("k8s-1"));
                assert_eq!(health.reason, Reason::Synced);
                let (reason, note) = event.expect("an Adopted event");
                assert_eq!(reason, Reason::Adopted);
                assert!(note.contains("derived"), "{note}");
            }
            _ => panic!("expected the account applied again to be adopted"),
        }
        let obs = observed_v1(
            vec![cyclr_account("k8s-1", "acme", 3)],
            &[("k8s-1", "b/acme")],
            now,
            derived("k8s-1"),
        );
        assert_eq!(reason(&decide(&pro(), &obs)), Some(Reason::AccountClaimed));
    }

    #[test]
    fn on_v1_a_create_waits_for_no_list_newer_than_the_resource() {
        let listed = Utc::now() - chrono::Duration::minutes(20);
        let mut account = pro();
        account.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let mut obs = observed_v1(vec![], &[], listed, derived("k8s-1"));
        obs.facts.now = Utc::now();
        obs.facts.seen_at = obs.facts.now;
        assert!(
            matches!(
                decide(&account, &obs),
                Plan::Write {
                    write: Write::CreateWithId { .. },
                    ..
                }
            ),
            "created at once from a list 20 minutes old"
        );
    }

    #[test]
    fn on_v1_an_unheld_account_of_the_same_name_with_another_id_still_stops_the_create() {
        let now = Utc::now();
        let obs = observed_v1(vec![cyclr_account("handmade", "acme", 3)], &[], now, derived("k8s-1"));
        assert_eq!(reason(&decide(&pro(), &obs)), Some(Reason::AccountNameInUse));
        let held = observed_v1(
            vec![cyclr_account("handmade", "acme", 3)],
            &[("handmade", "b/acme")],
            now,
            derived("k8s-1"),
        );
        assert!(
            matches!(decide(&pro(), &held), Plan::Write { .. }),
            "a held twin is another tenant's"
        );
    }

    #[test]
    fn delete_policy_needs_a_v1_partner() {
        let now = Utc::now();
        let account = resource(serde_json::json!({"deletionPolicy": "Delete"}));
        match decide(&account, &observed(Some((now, vec![])), &[], now)) {
            Plan::Report { health, .. } => {
                assert_eq!((health.state, health.reason), (State::Stalled, Reason::InvalidSpec));
                assert!(health.message.contains("spec.deletionPolicy"), "{}", health.message);
            }
            _ => panic!("expected a stall before any Cyclr call"),
        }
        let obs = observed_v1(vec![], &[], now, derived("k8s-1"));
        assert!(matches!(decide(&account, &obs), Plan::Write { .. }));
        assert!(account.needs_finalizer(&obs));
        assert!(!pro().needs_finalizer(&obs), "Orphan needs no finalizer");
        assert!(!account.needs_finalizer(&observed(Some((now, vec![])), &[], now)));
    }

    #[test]
    fn id_in_use_is_this_resources_account_unless_another_holds_it() {
        let (reason, note) = id_in_use("tenant-42", IdOrigin::Spec, None).unwrap();
        assert_eq!(reason, Reason::Adopted);
        assert!(
            note.contains("spec.accountID") && note.contains("ID already in use"),
            "{note}"
        );
        let holder = Holder {
            created: String::new(),
            uid: "other".into(),
            name: "b/acme".into(),
        };
        let stalled = id_in_use("k8s-1", IdOrigin::Derived, Some(&holder)).unwrap_err();
        assert_eq!(
            (stalled.state, stalled.reason),
            (State::Stalled, Reason::AccountClaimed)
        );
        assert!(stalled.message.contains("b/acme"));
    }

    #[test]
    fn a_delete_goes_ahead_only_on_a_ready_v1_partner_and_says_how_to_let_go() {
        let account = resource(serde_json::json!({"deletionPolicy": "Delete"}));
        let ready_v1 = Some((PartnerState::Ready, CyclrApi::V1));
        assert_eq!(before_delete(&account, ready_v1.clone(), true, "a1", None), None);
        assert_eq!(
            before_delete(&pro(), ready_v1.clone(), true, "a1", None),
            Some(Cleanup::Done(None)),
            "Orphan lets go without a call"
        );
        let mut observe_only = account.clone();
        observe_only.spec.management_policy = ManagementPolicy::ObserveOnly;
        assert_eq!(
            before_delete(&observe_only, ready_v1.clone(), true, "a1", None),
            Some(Cleanup::Done(None))
        );
        for (partner, exists) in [
            (None, false),
            (
                Some((PartnerState::NotReady("the Secret is gone".into()), CyclrApi::V1)),
                true,
            ),
            (Some((PartnerState::Ready, CyclrApi::Partner)), true),
        ] {
            match before_delete(&account, partner, exists, "a1", None) {
                Some(Cleanup::Blocked(health)) => {
                    assert_eq!((health.state, health.reason), (State::Stalled, Reason::DeletionBlocked));
                    assert!(
                        health.message.contains("could not be deleted") && health.message.contains("Orphan"),
                        "{}",
                        health.message
                    );
                }
                other => panic!("expected a blocked delete, got {other:?}"),
            }
        }
        assert!(
            matches!(
                before_delete(&account, None, true, "a1", None),
                Some(Cleanup::Blocked(Health {
                    state: State::Reconciling,
                    ..
                }))
            ),
            "a partner not checked yet: wait"
        );
        let holder = Holder {
            created: String::new(),
            uid: "other".into(),
            name: "b/acme".into(),
        };
        assert!(
            matches!(
                before_delete(&account, ready_v1, true, "a1", Some(&holder)),
                Some(Cleanup::Done(Some((Reason::AccountClaimed, _))))
            ),
            "never another resource's account"
        );
    }

    #[test]
    fn an_unknown_price_plan_is_not_drift() {
        let mut listed = cyclr_account("a1", "acme", 3);
        listed.price_plan_id = None;
        let desired = AccountFields {
            name: Some("acme".into()),
            price_plan_id: Some(PricePlanId(3)),
            ..Default::default()
        };
        assert!(changed_fields(&desired, &listed, false).is_empty());
        assert_eq!(
            changed_fields(&desired, &listed, true).price_plan_id,
            Some(PricePlanId(3))
        );
    }

    #[test]
    fn status_carries_the_account_as_cyclr_has_it() {
        let status = with_account(Default::default(), &cyclr_account("a1", "acme", 3), None);
        assert_eq!(status.account_id.as_deref(), Some("a1"));
        assert_eq!(status.price_plan_id, Some(3));
        let conditions = Health::ready(Reason::Synced, "ok").conditions(Some(1), &[]);
        assert_eq!(condition(&conditions, READY).unwrap().status, "True");
    }
}
