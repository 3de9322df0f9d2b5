//! The standby key through the real reconciler: an existing MacpAuth gains
//! one without losing Ready, its private half stays out of every pod, and a
//! routine rotation activates it in the round after the request.

use macp_auth_e2e::reconcile_harness::{Harness, condition, container_env, es256};
use macp_auth_operator::crd::RotationPhase;
use serde_json::json;

/// Rounds with every wait over, each after the pods caught up, until the
/// MacpAuth is Idle with a propagated standby; once Ready, it stays Ready.
async fn until_standby_propagated(h: &Harness, name: &str) -> String {
    let mut was_ready = false;
    for _ in 0..12 {
        if let Some(s) = h.status(name).standby.filter(|s| s.propagated) {
            return s.kid;
        }
        h.round_with_waits_over(name).await;
        let status = h.status(name);
        let ready = condition(&status, "Ready").0 == "True";
        assert!(
            ready || !was_ready,
            "Ready lost while the standby is prepared: {status:#?}"
        );
        was_ready = ready;
        // The standby's private half reaches no pod: the pods' signing key
        // stays the active one.
        assert_eq!(status.active_kid, Some(h.keyset(name).active.kid.clone()));
    }
    panic!("no propagated standby: {:#?}", h.status(name));
}

#[tokio::test]
async fn an_existing_macpauth_gains_a_standby_without_losing_ready_and_a_rotation_takes_it() {
    let h = Harness::new().await;
    let old = h.create_ready("sb").await;
    assert_eq!(h.status("sb").standby, None);
    // Switched on for a MacpAuth that had none.
    h.patch("sb", json!({"spec": {"rotation": {"standby": true}}}))
        .await;
    h.reconcile("sb").await;
    let standby = until_standby_propagated(&h, "sb").await;
    assert_ne!(standby, old);
    let ks = h.keyset("sb");
    assert_eq!(ks.active.kid, old, "the standby never signs");
    assert_eq!(h.served_kids("sb"), [old.clone(), standby.clone()]);
    let env = container_env(&h.deployment("sb").expect("the Deployment"));
    assert!(
        !env.values()
            .any(|v| v.contains(&format!("\"kid\":\"{standby}\"")) && v.contains("\"d\"")),
        "the standby's private key is in the pod template"
    );
    assert!(
        h.status("sb").history.len() == 1,
        "a standby is no rotation"
    );

    // A routine request: the standby is reserved, then activated, with no
    // key generated and no publishing step.
    h.request_rotation("sb", "r1");
    h.reconcile("sb").await;
    let rot = h.status("sb").rotation.expect("a rotation");
    assert!(rot.from_standby, "{rot:#?}");
    h.reconcile("sb").await;
    assert_eq!(h.phase("sb"), RotationPhase::Activating);
    assert_eq!(h.keyset("sb").active.kid, standby);
    assert_eq!(h.status("sb").standby, None);
}

#[tokio::test]
async fn the_crd_default_prepares_a_standby_for_a_new_macpauth() {
    let h = Harness::new().await;
    let mut spec = es256();
    spec["rotation"] = json!({"standby": true});
    h.create("nd", spec).await;
    h.reconcile("nd").await;
    let kid = until_standby_propagated(&h, "nd").await;
    assert_eq!(condition(&h.status("nd"), "Ready").0, "True");
    let events = h.events("StandbyReady");
    assert!(
        events.iter().any(|e| e.contains(&kid)),
        "no StandbyReady event naming {kid}: {events:?}"
    );
}
