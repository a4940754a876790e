//! Where a resource stands after a reconcile, and the kstatus conditions that follow from it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::Reason;
use crate::resources::{READY, RECONCILING, STALLED, annotations, condition};

/// Where a resource stands after a reconcile, from which the three conditions follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// In sync with Cyclr.
    Ready { reason: Reason, message: String },
    /// Work under way, or waiting on something that will change by itself (watched).
    Progressing { reason: Reason, message: String },
    /// A transient failure; retried with backoff.
    Failing { reason: Reason, message: String },
    /// A terminal failure: nothing happens until the spec changes.
    Stalled { reason: Reason, message: String },
    /// Reconciliation paused by annotation: `Ready` keeps the status it had.
    Paused { reason: Reason, message: String },
}

impl Health {
    pub fn ready(reason: Reason, message: impl Into<String>) -> Self {
        Health::Ready {
            reason,
            message: message.into(),
        }
    }
    pub fn progressing(reason: Reason, message: impl Into<String>) -> Self {
        Health::Progressing {
            reason,
            message: message.into(),
        }
    }
    pub fn failing(reason: Reason, message: impl Into<String>) -> Self {
        Health::Failing {
            reason,
            message: message.into(),
        }
    }
    pub fn stalled(reason: Reason, message: impl Into<String>) -> Self {
        Health::Stalled {
            reason,
            message: message.into(),
        }
    }
    pub fn paused() -> Self {
        Health::Paused {
            reason: Reason::Paused,
            message: format!(
                "reconciliation is paused by the annotation {}=true; the spec is not applied",
                annotations::PAUSED
            ),
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            Health::Ready { reason, .. }
            | Health::Progressing { reason, .. }
            | Health::Failing { reason, .. }
            | Health::Stalled { reason, .. }
            | Health::Paused { reason, .. } => *reason,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Health::Ready { message, .. }
            | Health::Progressing { message, .. }
            | Health::Failing { message, .. }
            | Health::Stalled { message, .. }
            | Health::Paused { message, .. } => message,
        }
    }

    /// The same health with its message passed through `f` (secret scrubbing).
    pub fn map_message(self, f: impl FnOnce(&str) -> String) -> Self {
        let message = f(self.message());
        match self {
            Health::Ready { reason, .. } => Health::Ready { reason, message },
            Health::Progressing { reason, .. } => Health::Progressing { reason, message },
            Health::Failing { reason, .. } => Health::Failing { reason, message },
            Health::Stalled { reason, .. } => Health::Stalled { reason, message },
            Health::Paused { reason, .. } => Health::Paused { reason, message },
        }
    }

    pub fn is_stalled(&self) -> bool {
        matches!(self, Health::Stalled { .. })
    }

    /// The three kstatus conditions for this health, keeping each condition's
    /// `lastTransitionTime` from `previous` when its status did not change.
    pub fn conditions(&self, generation: Option<i64>, previous: &[Condition]) -> Vec<Condition> {
        let previous_ready = condition(previous, READY).map_or("Unknown", |c| c.status.as_str());
        let (ready, reconciling, stalled) = match self {
            Health::Paused { .. } => (previous_ready, "False", "False"),
            Health::Ready { .. } => ("True", "False", "False"),
            Health::Progressing { .. } | Health::Failing { .. } => ("False", "True", "False"),
            Health::Stalled { .. } => ("False", "False", "True"),
        };
        let condition = |type_: &str, status: &str| {
            let message = if status == "True" || type_ == READY {
                self.message().to_string()
            } else {
                String::new()
            };
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| Time(Timestamp::now()));
            Condition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason: self.reason().to_string(),
                message,
                observed_generation: generation,
                last_transition_time,
            }
        };
        vec![
            condition(READY, ready),
            condition(RECONCILING, reconciling),
            condition(STALLED, stalled),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{same_conditions, stalled_reason};

    #[test]
    fn ready_health_sets_kstatus_conditions() {
        let conditions = Health::ready(Reason::Synced, "in sync").conditions(Some(3), &[]);
        let status = |t| condition(&conditions, t).map(|c| c.status.as_str());
        assert_eq!(status(READY), Some("True"));
        assert_eq!(status(RECONCILING), Some("False"));
        assert_eq!(status(STALLED), Some("False"));
        assert!(conditions.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn stalled_health_is_not_ready_and_keeps_its_message() {
        let conditions = Health::stalled(Reason::PricePlanNotFound, "no plan Gold").conditions(Some(1), &[]);
        assert_eq!(stalled_reason(&conditions), Some("PricePlanNotFound"));
        assert_eq!(condition(&conditions, READY).unwrap().status, "False");
        assert_eq!(condition(&conditions, READY).unwrap().message, "no plan Gold");
    }

    #[test]
    fn paused_keeps_ready_status_but_says_why() {
        let ready = Health::ready(Reason::Synced, "").conditions(Some(1), &[]);
        let paused = Health::paused().conditions(Some(1), &ready);
        let r = condition(&paused, READY).unwrap();
        assert_eq!((r.status.as_str(), r.reason.as_str()), ("True", "Paused"));
        assert_eq!(condition(&paused, RECONCILING).unwrap().status, "False");
        assert_eq!(stalled_reason(&paused), None);
    }

    #[test]
    fn transition_time_is_kept_when_status_is_unchanged() {
        let first = Health::progressing(Reason::Creating, "").conditions(Some(1), &[]);
        let old_time = Time(Timestamp::from_second(1_000).unwrap());
        let previous: Vec<Condition> = first
            .into_iter()
            .map(|c| Condition {
                last_transition_time: old_time.clone(),
                ..c
            })
            .collect();
        let next = Health::failing(Reason::CyclrUnavailable, "503").conditions(Some(1), &previous);
        assert!(next.iter().all(|c| c.last_transition_time == old_time));
        assert!(!same_conditions(&previous, &next), "reason changed, so a write is due");
        let ready = Health::ready(Reason::Synced, "").conditions(Some(1), &previous);
        assert_ne!(condition(&ready, READY).unwrap().last_transition_time, old_time);
    }
}
