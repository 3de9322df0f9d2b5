//! The `MacpAuth` conditions: their types, their values and the helpers that
//! read and write them, one implementation for every writer.
//!
//! Its own module, not part of the reconciler or of rotation, because both
//! write the same list and share `Degraded`: rotation sets it with its reasons
//! ([`crate::rotation::DEGRADED_REASONS`]), the reconciler with its own, and
//! each clears only what it set, so both must test "who holds it" the same way
//! ([`degraded_by`]). The reasons stay with the code that decides them; the
//! [`Condition`] type is part of the CRD ([`crate::crd`]).

use chrono::{DateTime, Utc};

use crate::crd::Condition;

/// The available pods, of whatever template, serve the active key
/// ([`crate::readiness`]): `True` through the rollouts of a routine rotation.
pub(crate) const READY: &str = "Ready";
/// The Deployment is rolling the pods onto a new template (`True`), is done
/// (`False`, `RolloutComplete`) or gave up (`False`, `ProgressDeadlineExceeded`).
pub(crate) const PROGRESSING: &str = "Progressing";
/// Something needs attention; the reason says whose it is to clear.
pub(crate) const DEGRADED: &str = "Degraded";
/// A rotation is in flight (maintained by [`crate::rotation`] alone).
pub(crate) const ROTATING: &str = "Rotating";
/// The last `macp.io/emergency-rotate` value: `True` once acted on, `False`
/// (reason `EmergencyRequestAlreadyHandled`) while a value already handled is
/// set again (maintained by [`crate::rotation`] alone).
pub(crate) const EMERGENCY_REQUEST: &str = "EmergencyRequest";
/// Whether the last rotation's new key reached every verifier seen fetching
/// the JWKS before it signed (maintained by [`crate::rotation`] alone).
pub(crate) const VERIFIERS_PROPAGATED: &str = "VerifiersPropagated";

pub(crate) const TRUE: &str = "True";
pub(crate) const FALSE: &str = "False";

/// Sets condition `type_`; `lastTransitionTime` moves only when the status flips.
pub(crate) fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
    generation: Option<i64>,
) {
    let status = if status { TRUE } else { FALSE };
    let since = match get(conditions, type_) {
        Some(c) if c.status == status => c.last_transition_time,
        _ => now,
    };
    let fresh = Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time: since,
        observed_generation: generation,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => *existing = fresh,
        None => conditions.push(fresh),
    }
}

/// The current condition of a type, if any.
pub(crate) fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether condition `type_` is `True` (with `reason`, when given).
pub(crate) fn is_true(conditions: &[Condition], type_: &str, reason: Option<&str>) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == TRUE && reason.is_none_or(|r| c.reason == r))
}

/// Whether `Degraded` is `True` with one of `reasons`: held by whoever owns
/// those reasons, and theirs alone to clear.
pub(crate) fn degraded_by(conditions: &[Condition], reasons: &[&str]) -> bool {
    get(conditions, DEGRADED)
        .is_some_and(|c| c.status == TRUE && reasons.contains(&c.reason.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, min, 0).unwrap()
    }

    #[test]
    fn transition_time_only_moves_on_flip() {
        let mut c = Vec::new();
        set(&mut c, READY, false, "RollingOut", "a", t(0), Some(1));
        set(&mut c, READY, false, "Probing", "b", t(1), Some(2));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, t(0));
        assert_eq!(
            (c[0].reason.as_str(), c[0].observed_generation),
            ("Probing", Some(2))
        );
        set(&mut c, READY, true, "Verified", "ok", t(2), Some(2));
        assert_eq!(c[0].last_transition_time, t(2));
        assert_eq!(c[0].status, TRUE);
        set(&mut c, DEGRADED, false, "AsExpected", "", t(3), Some(2));
        assert_eq!(c.len(), 2);
        assert!(is_true(&c, READY, None));
        assert!(is_true(&c, READY, Some("Verified")));
        assert!(!is_true(&c, READY, Some("Other")));
        assert!(!is_true(&c, DEGRADED, None));
    }
}
