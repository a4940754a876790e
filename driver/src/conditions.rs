//! kstatus conditions: `Ready`, `Reconciling` and `Stalled`, so Argo CD and Flux judge health
//! without tuning.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// The condition that is `True` when the spec is applied and the external object matches it.
pub const READY: &str = "Ready";
/// The condition that is `True` while work is under way or retried.
pub const RECONCILING: &str = "Reconciling";
/// The condition that is `True` when nothing happens until something changes.
pub const STALLED: &str = "Stalled";

/// Conditions equal but for their transition times: a status write is needed only when
/// this is false.
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    fn key(c: &Condition) -> (&str, &str, &str, &str, Option<i64>) {
        (&c.type_, &c.status, &c.reason, &c.message, c.observed_generation)
    }
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}

/// The condition of type `type_`, if present.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The reason of the `Stalled` condition when it is true.
pub fn stalled_reason(conditions: &[Condition]) -> Option<&str> {
    condition(conditions, STALLED)
        .filter(|c| c.status == "True")
        .map(|c| c.reason.as_str())
}
