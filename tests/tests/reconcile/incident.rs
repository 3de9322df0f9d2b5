//! The incident path at the reconciler level:
//!
//! - an emergency rotation requested while the spec is invalid runs with the
//!   last valid spec, `Degraded`/`InvalidSpec` stays, a Warning says so, and
//!   a routine rotation keeps waiting;
//! - the operator removes a handled `macp.io/emergency-rotate` annotation, so
//!   setting the same value again is seen and answered with a Warning and the
//!   `EmergencyRequest` condition naming the value and when it was handled.

use macp_auth_e2e::reconcile_harness::{Harness, condition, container_env};
use macp_auth_operator::crd::{
    EMERGENCY_ROTATE_ANNOTATION, ROTATE_ANNOTATION, RotationPhase, RotationTrigger,
};
use serde_json::{Value, json};

/// The token service's max TTL as rendered into the Deployment.
fn rendered_max_ttl(h: &Harness, name: &str) -> String {
    container_env(&h.deployment(name).unwrap())["MACP_AUTH_MAX_TTL_SECONDS"].clone()
}

/// Short token lifetimes with a pinned drain: the spec the sandbox run made
/// invalid by raising `maxTtlSeconds`.
fn pinned_drain_spec() -> Value {
    json!({
        "signingAlg": "ES256",
        "maxTtlSeconds": 5,
        "defaultTtlSeconds": 5,
        "rotation": {"drainSeconds": 65}
    })
}

#[tokio::test]
async fn an_emergency_runs_past_an_invalid_spec_with_the_last_valid_one() {
    let h = Harness::new().await;
    let suspect = h.create_ready_with("inc", pinned_drain_spec()).await;
    let valid = h.status("inc").last_valid_spec.expect("lastValidSpec");
    assert_eq!(valid.generation, Some(1));
    assert_eq!(valid.spec["maxTtlSeconds"], 5);

    // The edit: maxTtlSeconds raised past the pinned drain. This server,
    // like one without CEL, stores it; the operator refuses it.
    h.patch("inc", json!({"spec": {"maxTtlSeconds": 600}}))
        .await;
    h.reconcile("inc").await;
    let (status, reason, _) = condition(&h.status("inc"), "Degraded");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "InvalidSpec"));
    assert_eq!(
        h.status("inc").last_valid_spec.unwrap().generation,
        Some(1),
        "an invalid spec is never recorded as valid"
    );

    // A routine request waits for a valid spec.
    h.annotate("inc", ROTATE_ANNOTATION, Some("routine-1"))
        .await;
    h.reconcile("inc").await;
    assert!(
        h.status("inc")
            .rotation
            .is_none_or(|r| r.phase == RotationPhase::Idle)
    );
    assert_eq!(h.keyset("inc").active.kid, suspect);

    // The incident.
    h.annotate("inc", EMERGENCY_ROTATE_ANNOTATION, Some("INC-77"))
        .await;
    h.reconcile("inc").await;
    let rot = h.status("inc").rotation.unwrap();
    assert_eq!(rot.trigger, Some(RotationTrigger::Emergency), "{rot:?}");
    let notes = h.events("EmergencyWithLastValidSpec");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("INC-77") && notes[0].contains("generation 1"),
        "{notes:?}"
    );
    h.drive_to_idle("inc").await;

    let s = h.status("inc");
    let fresh = h.keyset("inc");
    assert_ne!(fresh.active.kid, suspect);
    assert!(
        !fresh.view().kids().contains(&suspect),
        "the suspect key is still in the Secret: {:?}",
        fresh.view().kids()
    );
    assert!(s.suspect_kids.contains(&suspect));
    let last = s.history.last().unwrap();
    assert_eq!(
        (last.trigger, last.request_id.as_deref()),
        (RotationTrigger::Emergency, Some("INC-77"))
    );
    // Rendered from the last valid spec, not from the invalid one.
    assert_eq!(rendered_max_ttl(&h, "inc"), "5");
    let (status, reason, message) = condition(&s, "Degraded");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "InvalidSpec"),
        "{message}"
    );
    assert!(message.contains("drainSeconds"), "{message}");

    // The emergency over, the routine request still waits for the spec.
    h.roll_out("inc", &[&fresh.active.kid]);
    h.reconcile("inc").await;
    h.reconcile("inc").await;
    assert!(
        h.status("inc")
            .rotation
            .is_none_or(|r| r.phase == RotationPhase::Idle)
    );
    assert_eq!(h.status("inc").history.len(), s.history.len());
    assert_eq!(h.status("inc").handled_rotate_request, None);

    // Fixed, the routine request runs.
    h.patch("inc", json!({"spec": {"maxTtlSeconds": 5}})).await;
    h.reconcile("inc").await;
    let s = h.status("inc");
    assert_eq!(s.handled_rotate_request.as_deref(), Some("routine-1"));
    assert_eq!(condition(&s, "Degraded").0, "False");
    assert_eq!(s.last_valid_spec.unwrap().generation, Some(3));
    assert_eq!(h.server.forbidden(), vec![]);
}

#[tokio::test]
async fn a_reused_emergency_id_is_answered_with_a_warning_naming_when_it_was_handled() {
    let h = Harness::new().await;
    let first = h
        .create_ready_with("drill", json!({"signingAlg": "ES256"}))
        .await;

    // The drill, run from the docs with a fixed id.
    h.annotate("drill", EMERGENCY_ROTATE_ANNOTATION, Some("INC-1234"))
        .await;
    h.reconcile("drill").await;
    let s = h.status("drill");
    assert_eq!(s.handled_emergency_request.as_deref(), Some("INC-1234"));
    let handled_at = s.handled_emergency_request_time.expect("handled time");
    assert_eq!(
        h.annotation("drill", EMERGENCY_ROTATE_ANNOTATION),
        None,
        "the handled annotation is removed once the status records it"
    );
    h.drive_to_idle("drill").await;
    let after_drill = h.keyset("drill").active.kid;
    assert_ne!(after_drill, first);
    let rotations = h.status("drill").history.len();

    // The real incident, with the same id: a change, answered.
    h.annotate("drill", EMERGENCY_ROTATE_ANNOTATION, Some("INC-1234"))
        .await;
    h.reconcile("drill").await;
    let s = h.status("drill");
    assert_eq!(s.history.len(), rotations, "a reused id rotated");
    assert!(
        s.rotation
            .as_ref()
            .is_none_or(|r| r.phase == RotationPhase::Idle)
    );
    assert_eq!(h.keyset("drill").active.kid, after_drill);
    let when = handled_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, reason, message) = condition(&s, "EmergencyRequest");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "EmergencyRequestAlreadyHandled")
    );
    assert!(
        message.contains("INC-1234") && message.contains(&when),
        "{message}"
    );
    let warnings = h.events("EmergencyRequestAlreadyHandled");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains(&when), "{warnings:?}");
    // Left in place (a GitOps tool re-applying it sees it stay) and warned once.
    assert_eq!(
        h.annotation("drill", EMERGENCY_ROTATE_ANNOTATION)
            .as_deref(),
        Some("INC-1234")
    );
    h.reconcile("drill").await;
    assert_eq!(h.occurrences("EmergencyRequestAlreadyHandled"), 1);

    // Taken away and set again: answered again.
    h.annotate("drill", EMERGENCY_ROTATE_ANNOTATION, None).await;
    h.reconcile("drill").await;
    assert_eq!(condition(&h.status("drill"), "EmergencyRequest").0, "True");
    h.annotate("drill", EMERGENCY_ROTATE_ANNOTATION, Some("INC-1234"))
        .await;
    h.reconcile("drill").await;
    assert_eq!(h.occurrences("EmergencyRequestAlreadyHandled"), 2);

    // A fresh id rotates at once.
    h.annotate("drill", EMERGENCY_ROTATE_ANNOTATION, Some("INC-1701"))
        .await;
    h.reconcile("drill").await;
    let s = h.status("drill");
    assert_eq!(
        s.rotation.clone().map(|r| (r.trigger, r.request_id)),
        Some((Some(RotationTrigger::Emergency), Some("INC-1701".into())))
    );
    assert_eq!(condition(&s, "EmergencyRequest").0, "True");
    assert_eq!(h.server.forbidden(), vec![]);
}
