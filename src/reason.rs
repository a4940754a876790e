//! Every condition reason the operator writes, and the one table that turns a failure into a
//! condition. Reasons are typed so a new one is added here, once, with its kstatus meaning.

use std::fmt;

use cyclr::CyclrError;

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// A condition reason (CamelCase, as kstatus and Crossplane write them).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason { $($(#[$doc])* $name,)* }

        impl Reason {
            /// The reason as written in a condition and an Event.
            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$name => stringify!($name),)* }
            }

            /// The reason written as `text`, if it is one of ours.
            pub fn parse(text: &str) -> Option<Reason> {
                match text { $(stringify!($name) => Some(Reason::$name),)* _ => None }
            }
        }
    };
}

reasons! {
    /// The Cyclr object (account, cycle) matches the spec.
    Synced,
    /// ObserveOnly: read and reported, never corrected.
    Observed,
    /// The connector is installed (never installed again); for a cycle, the template was
    /// installed (Events only).
    Installed,
    /// The partner's credentials work and Partner Details answers.
    Connected,
    /// A Create Account is in flight (status.pendingCreate).
    Creating,
    /// An Install Connector or a template install is in flight (status.pendingInstall).
    Installing,
    /// An existing Cyclr object was taken over.
    Adopted,
    /// A Cyclr object was updated to the spec (Events only).
    Updated,
    /// Drift made in Cyclr was corrected (Events only).
    DriftCorrected,
    /// The Cyclr account or account connector was deleted with its resource
    /// (`deletionPolicy: Delete`; Events only).
    Deleted,
    /// An installed connector was re-authenticated with its changed credentials (v1.0 `PUT
    /// /v1.0/account/connectors/{id}`; Events only).
    Reauthenticated,
    /// A deleting resource's Cyclr account or account connector cannot be deleted (its
    /// partner is gone or not ready); `deletionPolicy: Orphan` lets the resource go without it.
    DeletionBlocked,
    /// `cyclr.com/paused: "true"`.
    Paused,
    /// The named CyclrPartner does not exist.
    PartnerNotFound,
    /// The CyclrPartner exists but cannot be used yet; see its own reason.
    PartnerNotReady,
    /// The CyclrPartner's namespaceSelector does not select this namespace.
    PartnerNotAllowed,
    /// The install's CyclrAccount does not exist or has no Cyclr id yet.
    AccountNotReady,
    /// A referenced Secret does not exist.
    SecretNotFound,
    /// A referenced Secret lacks the label `cyclr.com/credentials: "true"`.
    SecretNotLabelled,
    /// A referenced Secret lacks the key.
    SecretKeyNotFound,
    /// Cyclr refused the partner credentials.
    AuthenticationFailed,
    /// Cyclr answered 429; every call of the partner waits.
    RateLimited,
    /// Cyclr answered 5xx, timed out or could not be reached: retried with backoff.
    CyclrUnavailable,
    /// Something other than Cyclr answered (an HTML page of a firewall or proxy in front of
    /// it); the message quotes it. Retried with backoff.
    CyclrAnswerNotJSON,
    /// The Kubernetes API failed a read or write: retried with backoff.
    KubernetesUnavailable,
    /// A spec value the operator cannot use (checked before any Cyclr call).
    InvalidSpec,
    /// Cyclr answered 400; its Message is in the condition.
    CyclrRejected,
    /// No price plan of that name.
    PricePlanNotFound,
    /// The account is gone from Cyclr (or spec.accountID names none); never re-created.
    ExternalAccountMissing,
    /// Unclaimed Cyclr accounts already carry this name: the operator will not create another.
    AccountNameInUse,
    /// Another resource holds this Cyclr account.
    AccountClaimed,
    /// spec.accountID names another account than the one this resource holds.
    AccountIDMismatch,
    /// A create's outcome was lost and several new accounts carry the name.
    AmbiguousAdoption,
    /// Another install (resource or Cyclr) already has this installedName in the account.
    InstalledNameInUse,
    /// An install's outcome was lost and cannot be confirmed.
    InstallOutcomeUnknown,
    /// This resource's installed connector is gone from Cyclr; never installed again.
    ExternalInstallMissing,
    /// An installed connector's credentials changed; the Partner API cannot apply them.
    CredentialsNotApplied,
    /// No template of the cycle's templateRef (or several of that name).
    TemplateNotFound,
    /// An account connector the cycle uses is not authenticated: it cannot be activated
    /// until a person (or a CyclrConnectorInstall) authenticates it.
    ConnectorNotAuthenticated,
    /// A CyclrConnectorInstall of the cycle's account, of a connector its template uses, is
    /// under way: the template is installed after it, so the cycle uses its authenticated
    /// account connector.
    ConnectorInstallPending,
    /// Cyclr names other prerequisites of activation (missing mappings, reason codes 10–70).
    PrerequisitesNotMet,
    /// This resource's cycle is gone from Cyclr; never installed again.
    ExternalCycleMissing,
    /// A cycle's deactivation, variables or activation are under way.
    Updating,
    /// Cyclr is deleting the cycle (`DeleteScheduled`); the resource goes once it is gone.
    Deleting,
    /// The CyclrPartner's client cannot be built (bad URL).
    InvalidConfiguration,
    /// A Cyclr object was made for a resource deleted while the write was in flight (a
    /// Warning Event on the partner: nothing holds it).
    Orphaned,
    /// The pause annotation disappeared (a Warning Event naming the newest writer).
    PauseRemoved,
}

impl driver::ReasonCode for Reason {
    const PAUSED: Self = Reason::Paused;
    const KUBERNETES_UNAVAILABLE: Self = Reason::KubernetesUnavailable;
    const ORPHANED: Self = Reason::Orphaned;
    const PAUSE_REMOVED: Self = Reason::PauseRemoved;

    fn as_str(self) -> &'static str {
        Reason::as_str(self)
    }

    fn parse(text: &str) -> Option<Self> {
        Reason::parse(text)
    }

    /// The others stall on something another object may release (a holder deleted, a
    /// partner's selector widened, a Secret restored).
    fn waits_for_spec(self) -> bool {
        !matches!(
            self,
            Reason::AccountClaimed
                | Reason::PartnerNotAllowed
                | Reason::InstalledNameInUse
                | Reason::AuthenticationFailed
                | Reason::CredentialsNotApplied
                | Reason::DeletionBlocked
                | Reason::TemplateNotFound
                | Reason::ConnectorNotAuthenticated
                | Reason::PrerequisitesNotMet
        )
    }

    fn verb(self) -> &'static str {
        match self {
            Reason::Synced | Reason::Creating => "Create",
            Reason::Installed | Reason::Installing => "Install",
            Reason::Adopted => "Adopt",
            Reason::Updated | Reason::Updating | Reason::DriftCorrected | Reason::Reauthenticated => "Update",
            Reason::Connected => "Connect",
            Reason::Deleted | Reason::DeletionBlocked | Reason::Deleting => "Delete",
            Reason::Orphaned => "Create",
            _ => "Reconcile",
        }
    }
}

/// Where a resource stands: a state, a [`Reason`] and a message.
pub type Health = driver::Health<Reason>;

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a reconcile step failed. The kind says which Cyclr action failed; the table below
/// ([`driver::Fault::health`]) turns it into a condition.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{action}: {error}")]
    /// A Cyclr call failed.
    Cyclr {
        /// What was being done, e.g. "the account create".
        action: &'static str,
        /// Cyclr's error.
        error: CyclrError,
    },
    #[error("Kubernetes API: {0}")]
    /// A Kubernetes read failed.
    Kube(#[from] kube::Error),
}

impl Failure {
    /// Wraps a Cyclr error from `action` (e.g. "the account create"), for `map_err`.
    pub fn cyclr(action: &'static str) -> impl FnOnce(CyclrError) -> Failure {
        move |error| Failure::Cyclr { action, error }
    }
}

impl driver::Fault for Failure {
    type Reason = Reason;

    /// The one error → condition table of the operator.
    fn health(&self) -> Health {
        match self {
            Failure::Kube(error) => Health::reconciling(Reason::KubernetesUnavailable, error.to_string()),
            Failure::Cyclr { action, error } => {
                let message = format!("{action}: {error}");
                match error {
                    CyclrError::Validation { .. } => Health::stalled(Reason::CyclrRejected, message),
                    CyclrError::NotFound { .. } => Health::stalled(Reason::ExternalAccountMissing, message),
                    // Refused credentials need a human; rechecked when the Secret changes.
                    CyclrError::Unauthorized { .. } => Health::stalled(Reason::AuthenticationFailed, message),
                    CyclrError::Config(_) => Health::stalled(Reason::InvalidConfiguration, message),
                    // A caller-chosen id someone else holds, an edit Cyclr refuses while a cycle
                    // runs: refusals, as a 400 is.
                    CyclrError::IdInUse { .. } | CyclrError::Conflict { .. } => {
                        Health::stalled(Reason::CyclrRejected, message)
                    }
                    CyclrError::RateLimited { .. } => Health::reconciling(Reason::RateLimited, message),
                    CyclrError::NotJson { .. } => Health::reconciling(Reason::CyclrAnswerNotJSON, message),
                    _ => Health::reconciling(Reason::CyclrUnavailable, message),
                }
            }
        }
    }

    fn category(&self) -> &'static str {
        match self {
            Failure::Cyclr { error, .. } if error.is_retryable() => "cyclr_transient",
            Failure::Cyclr { .. } => "cyclr_terminal",
            Failure::Kube(_) => "kubernetes",
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Failure::Cyclr { error, .. } => error.retry_after(),
            Failure::Kube(_) => None,
        }
    }

    fn outcome_unknown(&self) -> bool {
        matches!(self, Failure::Cyclr { error, .. } if error.outcome_unknown())
    }

    fn kubernetes(error: kube::Error) -> Self {
        Failure::Kube(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driver::Fault;

    #[test]
    fn reasons_are_their_names() {
        assert_eq!(Reason::AccountNameInUse.as_str(), "AccountNameInUse");
        assert_eq!(Reason::RateLimited.to_string(), "RateLimited");
    }

    #[test]
    fn the_table_keeps_cyclrs_message_and_sorts_terminal_from_transient() {
        let rejected = (Failure::Cyclr {
            action: "the account create",
            error: CyclrError::Validation {
                status: 400,
                message: "Name is required".into(),
            },
        })
        .health();
        assert!(rejected.is_stalled());
        assert!(rejected.message.contains("Name is required"));
        let limited = (Failure::Cyclr {
            action: "the account update",
            error: CyclrError::RateLimited {
                retry_after: Some(std::time::Duration::from_secs(60)),
                hold: std::time::Duration::from_secs(60),
            },
        })
        .health();
        assert_eq!(limited.reason, Reason::RateLimited);
        assert!(!limited.is_stalled());
    }
}
