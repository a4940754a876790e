//! Where a resource stands after a reconcile, and the kstatus conditions that follow from it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::ReasonCode;
use crate::conditions::{READY, RECONCILING, STALLED, condition};

/// The state of a resource, in kstatus's words: the condition that is `True`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// `Ready`: the spec is applied and the external object matches it.
    Ready,
    /// `Reconciling`: work under way, waiting on something that changes by itself, or a
    /// transient failure retried with backoff.
    Reconciling,
    /// `Stalled`: a terminal failure; nothing happens until the spec (or the object it
    /// waits for) changes.
    Stalled,
    /// Paused by annotation: `Ready` keeps the status it had, nothing else is `True`.
    Paused,
}

/// Where a resource stands: a state, a typed reason (CamelCase, as kstatus and Crossplane
/// write them) and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health<R> {
    /// The condition that is `True`.
    pub state: State,
    /// The reason written in every condition and in the Event, if any.
    pub reason: R,
    /// Why, for people: written in `Ready` and in the condition that is `True`.
    pub message: String,
}

impl<R: ReasonCode> Health<R> {
    /// A health of `state` with its reason and message.
    pub fn new(state: State, reason: R, message: impl Into<String>) -> Self {
        Health {
            state,
            reason,
            message: message.into(),
        }
    }

    /// `Ready` with this reason.
    pub fn ready(reason: R, message: impl Into<String>) -> Self {
        Self::new(State::Ready, reason, message)
    }

    /// `Reconciling` with this reason.
    pub fn reconciling(reason: R, message: impl Into<String>) -> Self {
        Self::new(State::Reconciling, reason, message)
    }

    /// `Stalled` with this reason.
    pub fn stalled(reason: R, message: impl Into<String>) -> Self {
        Self::new(State::Stalled, reason, message)
    }

    /// Paused by the `cyclr.com/paused` annotation.
    pub fn paused() -> Self {
        Self::new(
            State::Paused,
            R::PAUSED,
            format!(
                "reconciliation is paused by the annotation {}=true; the spec is not applied",
                crate::annotations::PAUSED
            ),
        )
    }

    /// Whether the state is [`State::Stalled`].
    pub fn is_stalled(&self) -> bool {
        self.state == State::Stalled
    }

    /// The three kstatus conditions for this health, keeping each condition's
    /// `lastTransitionTime` from `previous` when its status did not change.
    pub fn conditions(&self, generation: Option<i64>, previous: &[Condition]) -> Vec<Condition> {
        let previous_ready = condition(previous, READY).map_or("Unknown", |c| c.status.as_str());
        let (ready, reconciling, stalled) = match self.state {
            State::Paused => (previous_ready, "False", "False"),
            State::Ready => ("True", "False", "False"),
            State::Reconciling => ("False", "True", "False"),
            State::Stalled => ("False", "False", "True"),
        };
        let condition = |type_: &str, status: &str| {
            let message = if status == "True" || type_ == READY {
                self.message.clone()
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
                reason: self.reason.as_str().to_string(),
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
    use crate::conditions::{same_conditions, stalled_reason};
    use crate::kind::tests::TestReason;

    #[test]
    fn ready_health_sets_kstatus_conditions() {
        let conditions = Health::ready(TestReason::Done, "in sync").conditions(Some(3), &[]);
        let status = |t| condition(&conditions, t).map(|c| c.status.as_str());
        assert_eq!(status(READY), Some("True"));
        assert_eq!(status(RECONCILING), Some("False"));
        assert_eq!(status(STALLED), Some("False"));
        assert!(conditions.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn stalled_health_is_not_ready_and_keeps_its_message() {
        let conditions = Health::stalled(TestReason::Refused, "no plan Gold").conditions(Some(1), &[]);
        assert_eq!(stalled_reason(&conditions), Some("Refused"));
        assert_eq!(condition(&conditions, READY).unwrap().status, "False");
        assert_eq!(condition(&conditions, READY).unwrap().message, "no plan Gold");
    }

    #[test]
    fn paused_keeps_ready_status_but_says_why() {
        let ready = Health::ready(TestReason::Done, "").conditions(Some(1), &[]);
        let paused = Health::<TestReason>::paused().conditions(Some(1), &ready);
        let r = condition(&paused, READY).unwrap();
        assert_eq!((r.status.as_str(), r.reason.as_str()), ("True", "Paused"));
        assert_eq!(condition(&paused, RECONCILING).unwrap().status, "False");
        assert_eq!(stalled_reason(&paused), None);
    }

    #[test]
    fn transition_time_is_kept_when_status_is_unchanged() {
        let first = Health::reconciling(TestReason::Working, "").conditions(Some(1), &[]);
        let old_time = Time(Timestamp::from_second(1_000).unwrap());
        let previous: Vec<Condition> = first
            .into_iter()
            .map(|c| Condition {
                last_transition_time: old_time.clone(),
                ..c
            })
            .collect();
        let next = Health::reconciling(TestReason::Unavailable, "503").conditions(Some(1), &previous);
        assert!(next.iter().all(|c| c.last_transition_time == old_time));
        assert!(!same_conditions(&previous, &next), "reason changed, so a write is due");
        let ready = Health::ready(TestReason::Done, "").conditions(Some(1), &previous);
        assert_ne!(condition(&ready, READY).unwrap().last_transition_time, old_time);
    }
}
