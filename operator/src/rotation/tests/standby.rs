//! The standby key, round by round: prepared while Idle without a history
//! entry, taken by a routine request or a pod-scope emergency without a
//! publishing step, discarded by a Secret-scope emergency.

use crate::conditions::{self, ROTATING};
use crate::crd::{
    EMERGENCY_ROTATE_ANNOTATION, EMERGENCY_SCOPE_ANNOTATION, EMERGENCY_SCOPE_SECRET,
    ROTATE_ANNOTATION, RotationPhase, RotationTrigger, StandbyStatus,
};
use crate::rotation::{Action, KeysetPlan};

use super::{Fixture, TTL, at, keyset, phase, step, until_phase};

/// Idle on K0 with the standby switched on.
fn idle_with_standby_wanted() -> Fixture {
    let mut f = Fixture::idle(keyset("k0", &[], None, None));
    f.spec.rotation.standby = true;
    f
}

/// Idle on K0 with a propagated standby `ks`.
fn parked() -> Fixture {
    let mut f = idle_with_standby_wanted();
    f.settle_on(keyset("k0", &["ks"], Some("ks"), None));
    f.status.standby = Some(StandbyStatus {
        kid: "ks".into(),
        propagated: true,
        propagated_at: Some(f.now),
    });
    f.status.active_kid = Some("k0".into());
    f
}

fn rotation_trigger(f: &Fixture) -> Option<RotationTrigger> {
    f.status.rotation.as_ref().and_then(|r| r.trigger)
}

#[test]
fn an_existing_macpauth_gains_a_propagated_standby_without_a_history_entry() {
    let mut f = idle_with_standby_wanted();
    let d = step(&mut f);
    assert_eq!(phase(&f), RotationPhase::KeyGenerated);
    assert_eq!(rotation_trigger(&f), Some(RotationTrigger::Standby));
    assert!(d.events.iter().any(|e| e.reason == "StandbyStarted"));
    // Preparing a standby changes no key's role: not a rotation.
    let rotating = conditions::get(&f.status.conditions, ROTATING).expect("Rotating");
    assert_eq!(
        (rotating.status.as_str(), rotating.reason.as_str()),
        ("False", "PreparingStandby")
    );

    step(&mut f);
    until_phase(&mut f, RotationPhase::Publishing);
    let published = f.observed.keyset.clone().expect("keyset");
    assert_eq!(published.active.kid, "k0", "the standby never signs");
    assert_eq!(published.published, ["k-new"]);
    until_phase(&mut f, RotationPhase::Propagating);
    assert_eq!(
        f.status.standby, None,
        "not a standby before it is propagated"
    );
    f.now = at(TTL + 60);
    until_phase(&mut f, RotationPhase::Idle);
    let standby = f.status.standby.clone().expect("a standby");
    assert_eq!((standby.kid.as_str(), standby.propagated), ("k-new", true));
    assert!(f.status.history.is_empty(), "{:?}", f.status.history);
    // And it stays: the next rounds prepare nothing more.
    f.new_kid = "k-other".into();
    let d = step(&mut f);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(phase(&f), RotationPhase::Idle);
}

#[test]
fn a_routine_rotation_activates_the_standby_one_rollout_after_the_request() {
    let mut f = parked();
    f.annotate(ROTATE_ANNOTATION, "r1");
    // First the status alone: the standby is reserved as the new key.
    let d = step(&mut f);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    let rot = f.status.rotation.clone().expect("rotation");
    assert_eq!(
        (rot.phase, rot.pending_kid.as_deref(), rot.from_standby),
        (RotationPhase::KeyGenerated, Some("ks"), true)
    );
    assert_eq!(f.status.standby, None);
    assert_eq!(f.status.handled_rotate_request.as_deref(), Some("r1"));
    // Then Activating at once: no key generated, nothing to publish.
    let d = step(&mut f);
    assert_eq!(
        d.actions,
        [Action::ApplyKeyset(KeysetPlan {
            active: "ks".into(),
            published: vec!["k0".into()],
            next: None,
            previous: Some("k0".into()),
        })]
    );
    assert_eq!(phase(&f), RotationPhase::Activating);
}

#[test]
fn a_pod_scope_emergency_activates_the_standby_and_suspects_everything_else() {
    let mut f = parked();
    f.annotate(EMERGENCY_ROTATE_ANNOTATION, "INC-1");
    let d = step(&mut f);
    assert!(
        d.actions.is_empty(),
        "the standby stays published: {:?}",
        d.actions
    );
    assert_eq!(f.status.suspect_kids, ["k0"]);
    let d = step(&mut f);
    assert_eq!(
        d.actions,
        [Action::ApplyKeyset(KeysetPlan {
            active: "ks".into(),
            published: vec![],
            next: None,
            previous: None,
        })]
    );
    assert_eq!(rotation_trigger(&f), Some(RotationTrigger::Emergency));
}

#[test]
fn a_secret_scope_emergency_discards_the_standby_as_a_suspect() {
    let mut f = parked();
    f.annotate(EMERGENCY_SCOPE_ANNOTATION, EMERGENCY_SCOPE_SECRET);
    f.annotate(EMERGENCY_ROTATE_ANNOTATION, "INC-2");
    let d = step(&mut f);
    assert_eq!(f.status.standby, None);
    assert_eq!(f.status.suspect_kids, ["k0", "ks"]);
    assert!(d.events.iter().any(|e| e.reason == "StandbyDiscarded"));
    // The standby leaves the JWKS at once, and a fresh key is generated.
    assert_eq!(
        d.actions,
        [Action::ApplyKeyset(KeysetPlan {
            active: "k0".into(),
            published: vec![],
            next: Some("ks".into()),
            previous: None,
        })]
    );
    let d = step(&mut f);
    assert!(
        matches!(&d.actions[..], [Action::GenerateNextKey { kid, .. }] if kid == "k-new"),
        "{:?}",
        d.actions
    );
}

#[test]
fn an_unknown_scope_is_read_as_the_secret() {
    let mut f = parked();
    f.annotate(EMERGENCY_SCOPE_ANNOTATION, "node");
    f.annotate(EMERGENCY_ROTATE_ANNOTATION, "INC-3");
    let d = step(&mut f);
    assert!(f.status.suspect_kids.contains(&"ks".to_string()));
    let started = d
        .events
        .iter()
        .find(|e| e.reason == "EmergencyRotation")
        .expect("the emergency's event");
    assert!(
        started.message.contains("read as secret"),
        "{}",
        started.message
    );
}

#[test]
fn a_standby_of_another_kind_is_discarded_and_a_fresh_key_rotates() {
    let mut f = parked();
    f.spec.signing_alg = crate::crd::SigningAlg::RS256;
    let d = step(&mut f);
    assert_eq!(f.status.standby, None);
    assert!(d.events.iter().any(|e| e.reason == "StandbyDiscarded"));
    let rot = f.status.rotation.clone().expect("rotation");
    assert_eq!(
        (rot.pending_kid.as_deref(), rot.from_standby),
        (Some("k-new"), false)
    );
}

#[test]
fn a_routine_request_takes_over_the_standby_being_prepared() {
    let mut f = idle_with_standby_wanted();
    step(&mut f);
    step(&mut f);
    until_phase(&mut f, RotationPhase::Publishing);
    f.annotate(ROTATE_ANNOTATION, "r2");
    let d = step(&mut f);
    assert_eq!(rotation_trigger(&f), Some(RotationTrigger::Manual));
    assert_eq!(f.status.handled_rotate_request.as_deref(), Some("r2"));
    assert!(d.events.iter().any(|e| e.reason == "RotationStarted"));
    until_phase(&mut f, RotationPhase::Propagating);
    f.now = at(TTL + 60);
    // Propagated, it goes on to sign instead of parking.
    until_phase(&mut f, RotationPhase::Activating);
    assert_eq!(f.status.standby, None);
}
