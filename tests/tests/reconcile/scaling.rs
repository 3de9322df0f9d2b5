//! The autoscaler and the disruption budget: who owns `spec.replicas`, the
//! rollout check counting every pod, the budget following the replica count,
//! and the reads spent looking for objects the spec does not ask for.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use macp_auth_e2e::reconcile_harness::{Harness, NS, condition, es256};
use macp_auth_operator::crd::{MacpAuth, RotationOutcome, RotationPhase};
use macp_auth_operator::resources;
use serde_json::json;

/// The managers whose Apply or Update entry owns `spec.replicas` of the Deployment.
fn replicas_owners(d: &Deployment) -> Vec<String> {
    d.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| {
            e.fields_v1
                .as_ref()
                .and_then(|f| f.0.pointer("/f:spec/f:replicas"))
                .is_some()
        })
        .filter_map(|e| e.manager.clone())
        .collect()
}

/// Plays the HorizontalPodAutoscaler: it sets `spec.replicas` (through the
/// scale subresource on a real server, an Update under its own manager).
async fn autoscaler_scales(h: &Harness, name: &str, replicas: i32) {
    let admin: Api<Deployment> = Api::namespaced(h.server.client(), NS);
    admin
        .patch(
            name,
            &PatchParams {
                field_manager: Some("kube-controller-manager".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn with_autoscaling_the_hpa_owns_replicas_and_rotation_verifies_every_pod() {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let h = Harness::new().await;
    let mut spec = es256();
    spec["autoscaling"] =
        json!({"minReplicas": 2, "maxReplicas": 6, "targetCPUUtilizationPercentage": 60});
    h.create("x", spec).await;
    h.reconcile("x").await;
    let hpa = h
        .server
        .get_as::<HorizontalPodAutoscaler>(Some(NS), "x")
        .unwrap()
        .expect("HPA created");
    let hs = hpa.spec.unwrap();
    assert_eq!((hs.min_replicas, hs.max_replicas), (Some(2), 6));
    assert_eq!(hs.scale_target_ref.name, "x");
    assert!(
        h.server
            .get_as::<PodDisruptionBudget>(Some(NS), "x")
            .unwrap()
            .is_some(),
        "autoscaling may run several pods: a disruption budget"
    );
    let d = h.deployment("x").unwrap();
    assert_eq!(
        replicas_owners(&d),
        Vec::<String>::new(),
        "nobody set replicas yet"
    );

    // The autoscaler scales to 4; the operator must neither fight it nor stop
    // counting: its rollout check and probes cover all 4 pods.
    autoscaler_scales(&h, "x", 4).await;
    let kid = h.keyset("x").active.kid;
    h.roll_out("x", &[&kid]);
    h.reconcile("x").await;
    let (ready, _, message) = condition(&h.status("x"), "Ready");
    assert_eq!(ready, "True");
    assert!(message.starts_with("4 available pod(s)"), "{message}");
    h.server.reset_log();
    for _ in 0..3 {
        h.reconcile("x").await;
    }
    assert_eq!(
        h.writes(),
        vec![],
        "an autoscaled replica count is no drift"
    );

    // A whole routine rotation at 4 replicas, with the autoscaler scaling to
    // 5 halfway: every phase's rollout check waits for all of them.
    h.request_rotation("x", "r-1");
    h.reconcile("x").await;
    let mut scaled = false;
    for _ in 0..12 {
        if h.phase("x") == RotationPhase::Idle && h.status("x").history.len() > 1 {
            break;
        }
        if !scaled && h.phase("x") == RotationPhase::Activating {
            autoscaler_scales(&h, "x", 5).await;
            scaled = true;
            // Four of the five pods rolled: not complete, whatever the
            // MacpAuth's own `replicas` (2) says.
            let kids = h.served_kids("x");
            h.roll_out("x", &kids.iter().map(String::as_str).collect::<Vec<_>>());
            h.server
                .modify_as::<Deployment>(Some(NS), "x", |d| {
                    if let Some(st) = d.status.as_mut() {
                        // The fifth pod is not even created yet.
                        st.replicas = Some(4);
                        st.updated_replicas = Some(4);
                        st.ready_replicas = Some(4);
                        st.available_replicas = Some(4);
                    }
                })
                .unwrap();
            h.reconcile("x").await;
            assert_eq!(
                h.phase("x"),
                RotationPhase::Activating,
                "4 of 5 pods is no complete rollout"
            );
        }
        h.round_with_waits_over("x").await;
    }
    let status = h.status("x");
    assert_eq!(
        status.history.last().unwrap().outcome,
        RotationOutcome::Succeeded
    );
    assert!(scaled, "the rotation went through Activating");
    let d = h.deployment("x").unwrap();
    assert_eq!(
        d.spec.as_ref().unwrap().replicas,
        Some(5),
        "the autoscaler's value stands"
    );
    assert_eq!(replicas_owners(&d), ["kube-controller-manager"]);
    // The rollout check counted every pod the autoscaler asked for.
    h.roll_out(
        "x",
        &h.served_kids("x")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    h.reconcile("x").await;
    let message = condition(&h.status("x"), "Ready").2;
    assert!(message.starts_with("5 available pod(s)"), "{message}");
    h.assert_rbac_covers_requests();
}

#[tokio::test]
async fn turning_autoscaling_on_hands_replicas_over_and_off_takes_them_back() {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    let h = Harness::new().await;
    let mut spec = es256();
    spec["replicas"] = json!(3);
    h.create("x", spec).await;
    h.reconcile("x").await;
    assert_eq!(
        replicas_owners(&h.deployment("x").unwrap()),
        [resources::MANAGER]
    );
    assert!(
        h.server
            .get_as::<HorizontalPodAutoscaler>(Some(NS), "x")
            .unwrap()
            .is_none()
    );

    // On: the operator stops applying replicas without the Deployment falling
    // back to 1 (terminating signers) before the autoscaler acts.
    h.server
        .modify_as::<MacpAuth>(Some(NS), "x", |m| {
            m.spec.autoscaling = serde_json::from_value(json!({"maxReplicas": 5})).unwrap();
        })
        .unwrap();
    h.reconcile("x").await;
    let d = h.deployment("x").unwrap();
    assert_eq!(
        d.spec.as_ref().unwrap().replicas,
        Some(3),
        "kept across the handover"
    );
    let owners = replicas_owners(&d);
    assert!(
        !owners.contains(&resources::MANAGER.to_string()),
        "{owners:?}"
    );
    assert!(
        h.server
            .get_as::<HorizontalPodAutoscaler>(Some(NS), "x")
            .unwrap()
            .is_some()
    );
    autoscaler_scales(&h, "x", 4).await;
    h.reconcile("x").await;
    assert_eq!(h.deployment("x").unwrap().spec.unwrap().replicas, Some(4));

    // Off: the spec's replicas again, and the autoscaler is deleted.
    h.server
        .modify_as::<MacpAuth>(Some(NS), "x", |m| m.spec.autoscaling = None)
        .unwrap();
    h.reconcile("x").await;
    assert_eq!(h.deployment("x").unwrap().spec.unwrap().replicas, Some(3));
    assert!(
        h.server
            .get_as::<HorizontalPodAutoscaler>(Some(NS), "x")
            .unwrap()
            .is_none(),
        "the HPA the spec no longer asks for is deleted"
    );
    h.assert_rbac_covers_requests();
}

#[tokio::test]
async fn the_disruption_budget_follows_the_replica_count_and_spares_a_users_own() {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let h = Harness::new().await;
    let mut spec = es256();
    spec["replicas"] = json!(2);
    h.create("x", spec).await;
    h.reconcile("x").await;
    let pdb = h
        .server
        .get_as::<PodDisruptionBudget>(Some(NS), "x")
        .unwrap()
        .expect("budget for two replicas");
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    // One replica: a budget would block every drain, so it goes.
    h.server
        .modify_as::<MacpAuth>(Some(NS), "x", |m| m.spec.replicas = 1)
        .unwrap();
    h.reconcile("x").await;
    assert!(
        h.server
            .get_as::<PodDisruptionBudget>(Some(NS), "x")
            .unwrap()
            .is_none()
    );
    // A budget of the same name the operator did not make is never deleted.
    let theirs: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "x", "namespace": NS},
        "spec": {"minAvailable": 1}
    }))
    .unwrap();
    h.server.create_as(&theirs).unwrap();
    h.reconcile("x").await;
    assert!(
        h.server
            .get_as::<PodDisruptionBudget>(Some(NS), "x")
            .unwrap()
            .is_some()
    );
    h.assert_rbac_covers_requests();
}

/// An autoscaler and a disruption budget the spec does not ask for are
/// looked for once per generation, not in every round while the service is
/// not Ready: a rotation's rollouts make it not Ready, and those reads were
/// a large part of a storm's requests (docs/performance.md, "What the
/// figures asked for, and what changed"). A new generation looks again.
#[tokio::test]
async fn absent_scaling_objects_are_looked_for_once_per_generation() {
    let h = Harness::new().await;
    h.create("sg", json!({"signingAlg": "ES256", "replicas": 1}))
        .await;
    h.reconcile("sg").await;
    let looked = |h: &Harness| {
        (
            h.server.count("get", "horizontalpodautoscalers"),
            h.server.count("get", "poddisruptionbudgets"),
        )
    };
    assert_eq!(
        condition(&h.status("sg"), "Ready").0,
        "False",
        "no pods yet"
    );
    h.server.reset_log();
    h.reconcile("sg").await;
    assert_eq!(condition(&h.status("sg"), "Ready").0, "False");
    assert_eq!(looked(&h), (0, 0), "{:#?}", h.server.requests());

    h.server
        .modify_as::<MacpAuth>(Some(NS), "sg", |m| m.spec.replicas = 2)
        .unwrap();
    h.server.reset_log();
    h.reconcile("sg").await;
    assert_eq!(looked(&h).0, 1, "a new generation looks again");
    h.assert_rbac_covers_requests();
}
