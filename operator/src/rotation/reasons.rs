//! The condition reasons rotation sets, and the `Degraded` ones it owns.
//! The conditions themselves are [`crate::conditions`].

use crate::crd::Condition;

pub(crate) const REASON_ROLLOUT_TIMEOUT: &str = "RolloutTimeout";
pub(crate) const REASON_VERIFICATION_FAILED: &str = "VerificationFailed";
pub(crate) const REASON_ROLLED_BACK: &str = "RotationRolledBack";
pub(crate) const REASON_ROLLBACK_STALLED: &str = "RollbackStalled";
pub(crate) const REASON_EMERGENCY_STALLED: &str = "EmergencyRotationStalled";
pub(crate) const REASON_RETIREMENT_STALLED: &str = "RetirementStalled";
pub(crate) const REASON_KEY_MISSING: &str = "RotationKeyMissing";
pub(crate) const REASON_INVALID_INTERVAL: &str = "InvalidRotationInterval";
pub(crate) const REASON_ROTATION_SUCCEEDED: &str = "RotationSucceeded";
/// `VerifiersPropagated=False`, and the Warning event: the ceiling passed
/// with verifiers that never fetched the new key.
pub const REASON_PROPAGATION_TIMEOUT: &str = "PropagationTimeout";
/// `VerifiersPropagated=True`: every verifier seen fetching got the new key.
pub(crate) const REASON_VERIFIERS_FETCHED: &str = "AllVerifiersFetched";
/// `VerifiersPropagated=True`: the rotation did not wait for evidence
/// (switched off, or the pods do not report verifiers).
pub(crate) const REASON_EVIDENCE_NOT_USED: &str = "EvidenceNotUsed";

// Reasons of rotation's events that no condition carries. They are `EVENT_`
// rather than `REASON_`: docs/troubleshooting.md has a section for every
// `REASON_` (a condition a user finds on the MacpAuth), not for each event.
// A finished rotation's event reuses its condition's reason where it has one
// (`REASON_ROTATION_SUCCEEDED`, `REASON_ROLLED_BACK`).

/// Normal: a routine rotation starts (its trigger in the message).
pub(crate) const EVENT_ROTATION_STARTED: &str = "RotationStarted";
/// Normal: a due rotation waits because `rotation.paused` is set.
pub(crate) const EVENT_ROTATION_PAUSED: &str = "RotationPaused";
/// Normal: the rotation's new key is stored in the Secret.
pub(crate) const EVENT_KEY_GENERATED: &str = "KeyGenerated";
/// Warning: the Secret's keyset is not the one the phase expects.
pub(crate) const EVENT_KEYSET_DRIFT: &str = "KeysetDrift";
/// Warning: the kid reserved for the new key is already taken.
pub(crate) const EVENT_KID_COLLISION: &str = "KidCollision";
/// Warning: an emergency rotation replaced the routine one in flight.
pub(crate) const EVENT_ROTATION_SUPERSEDED: &str = "RotationSuperseded";
/// Warning: a rotation ended `Failed` (its history entry says why).
pub(crate) const EVENT_ROTATION_FAILED: &str = "RotationFailed";
/// Normal, once per request: a rotation request waits for the one in flight.
pub(crate) const EVENT_ROTATION_DEFERRED: &str = "RotationDeferred";
/// Normal: Propagating waits for verifiers that have not fetched the new key.
pub(crate) const EVENT_WAITING_FOR_VERIFIERS: &str = "WaitingForVerifiers";
/// Warning: verifier evidence was asked for but the pods do not report it.
pub(crate) const EVENT_VERIFIER_EVIDENCE_UNAVAILABLE: &str = "VerifierEvidenceUnavailable";
/// Normal: the standby key's preparation starts (after a rotation, or for a
/// MacpAuth that has none).
pub(crate) const EVENT_STANDBY_STARTED: &str = "StandbyStarted";
/// Normal: the standby key is published everywhere and the caches waited out.
pub(crate) const EVENT_STANDBY_READY: &str = "StandbyReady";
/// Normal: the standby key no longer fits (the Secret changed, or the spec
/// asks for another kind of key); another is prepared.
pub(crate) const EVENT_STANDBY_DISCARDED: &str = "StandbyDiscarded";
/// Warning: an emergency rotation starts.
pub(crate) const EVENT_EMERGENCY_ROTATION: &str = "EmergencyRotation";

/// `Degraded` reasons owned by rotation; rotation clears only these.
pub const DEGRADED_REASONS: &[&str] = &[
    REASON_ROLLOUT_TIMEOUT,
    REASON_VERIFICATION_FAILED,
    REASON_ROLLED_BACK,
    REASON_ROLLBACK_STALLED,
    REASON_EMERGENCY_STALLED,
    REASON_RETIREMENT_STALLED,
    REASON_KEY_MISSING,
    REASON_INVALID_INTERVAL,
];

/// Whether `Degraded` is currently held by rotation (so rotation may clear it).
pub fn degraded_by_rotation(conditions: &[Condition]) -> bool {
    crate::conditions::degraded_by(conditions, DEGRADED_REASONS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::{DEGRADED, set};
    use chrono::{TimeZone, Utc};

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let t1 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 1, 0).unwrap();
        let mut c = Vec::new();
        set(
            &mut c,
            DEGRADED,
            true,
            REASON_ROLLOUT_TIMEOUT,
            "a",
            t0,
            Some(1),
        );
        set(&mut c, DEGRADED, true, REASON_ROLLED_BACK, "b", t1, Some(2));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, t0);
        assert_eq!(c[0].reason, REASON_ROLLED_BACK);
        assert!(degraded_by_rotation(&c));
        set(
            &mut c,
            DEGRADED,
            false,
            REASON_ROTATION_SUCCEEDED,
            "ok",
            t1,
            Some(2),
        );
        assert_eq!(c[0].last_transition_time, t1);
        assert!(!degraded_by_rotation(&c));
    }

    #[test]
    fn foreign_degraded_reason_is_not_rotations() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut c = Vec::new();
        set(&mut c, DEGRADED, true, "InvalidSpec", "x", t0, None);
        assert!(!degraded_by_rotation(&c));
    }
}
