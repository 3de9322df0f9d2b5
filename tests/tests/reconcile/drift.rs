//! What is drift and what is not: fields other field managers own (an
//! injected sidecar, an adopted Secret's entries), values the API server
//! normalises, and edits of fields the operator owns.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use macp_auth_e2e::reconcile_harness::{
    Harness, NS, condition, container, container_env, es256, pod_spec, secret_with,
};
use macp_auth_operator::crd::{
    MacpAuth, RotationOutcome, RotationPhase, RotationTrigger, SigningAlg,
};
use macp_auth_operator::keyset::{self, Keyset, PrivateKey};
use macp_auth_operator::resources;
use serde_json::json;

/// Other managers add to keyed lists (an env var, a
/// sidecar from a webhook) and the API server normalises Quantities and fills
/// defaults. None of that is drift: an unchanged resource still costs zero
/// writes, and an apply after a spec change keeps what the others own.
#[tokio::test]
async fn fields_of_other_managers_and_normalised_values_cost_no_writes() {
    let h = Harness::new().await;
    let mut spec = es256();
    spec["resources"] = json!({"requests": {"cpu": "0.5", "memory": "2048Mi"},
                               "limits": {"cpu": "1000m", "memory": "2Gi"}});
    h.create("x", spec).await;
    h.reconcile("x").await;
    let kid = h.keyset("x").active.kid;
    h.roll_out("x", &[&kid]);
    h.reconcile("x").await;
    assert_eq!(condition(&h.status("x"), "Ready").0, "True");
    // The server stored the canonical forms.
    let res = container(&h.deployment("x").unwrap())
        .resources
        .clone()
        .unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "500m");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "2Gi");
    assert_eq!(res.limits.as_ref().unwrap()["cpu"].0, "1");
    h.server.reset_log();
    h.reconcile("x").await;
    assert_eq!(h.writes(), vec![], "normalised Quantities are no drift");

    // A webhook injects an env var and a sidecar, with its own field manager.
    let injected = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"template": {"spec": {"containers": [
            {"name": resources::CONTAINER_NAME, "env": [{"name": "INJECTED", "value": "1"}]},
            {"name": "sidecar", "image": "registry.test/sidecar:1"}
        ]}}}
    });
    let admin: Api<Deployment> = Api::namespaced(h.server.client(), NS);
    admin
        .patch(
            "x",
            &PatchParams::apply("injector"),
            &Patch::Apply(&injected),
        )
        .await
        .unwrap();
    let d = h.deployment("x").unwrap();
    let ps = pod_spec(&d);
    assert_eq!(ps.containers.len(), 2);
    assert!(container_env(&d).contains_key("INJECTED"));
    h.roll_out("x", &[&kid]);
    h.reconcile("x").await;
    h.server.reset_log();
    h.reconcile("x").await;
    h.reconcile("x").await;
    assert_eq!(
        h.writes(),
        vec![],
        "fields other managers own must not make the drift check write"
    );

    // A spec change is applied; the injector's env var and sidecar stay.
    h.server
        .modify_as::<MacpAuth>(Some(NS), "x", |m| m.spec.issuer = "iss-2".into())
        .unwrap();
    h.reconcile("x").await;
    let d = h.deployment("x").unwrap();
    let env = container_env(&d);
    assert_eq!(env["MACP_AUTH_ISSUER"], "iss-2");
    assert_eq!(env["INJECTED"], "1");
    assert_eq!(pod_spec(&d).containers.len(), 2);
    h.roll_out("x", &[&kid]);
    h.reconcile("x").await;
    h.server.reset_log();
    h.reconcile("x").await;
    assert_eq!(h.writes(), vec![]);
    h.assert_rbac_covers_requests();
}

/// A mesh's sidecar injector, as a mutating webhook would, writes the
/// Deployment under its own field manager: a container, a volume, an env
/// var and a pod annotation. With every production pod setting on, the
/// operator must then reconcile with zero writes, round after round.
#[tokio::test]
async fn an_injected_sidecar_costs_zero_writes_per_unchanged_reconcile() {
    let h = Harness::new().await;
    let mut spec = es256();
    spec["replicas"] = json!(3);
    spec["mintPort"] = json!(3201);
    spec["podLabels"] = json!({"sidecar.istio.io/inject": "true", "team": "identity"});
    spec["podAnnotations"] = json!({"proxy.istio.io/config": "{}"});
    spec["affinity"] = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
         "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "x"}}}}]}});
    spec["priorityClassName"] = json!("platform-critical");
    spec["imagePullSecrets"] = json!([{"name": "regcred"}]);
    spec["serviceAccountName"] = json!("macp-auth");
    h.create("x", spec).await;
    h.reconcile("x").await;
    let kid = h.keyset("x").active.kid;
    h.roll_out("x", &[&kid]);
    h.reconcile("x").await;
    assert_eq!(condition(&h.status("x"), "Ready").0, "True");
    let ps = pod_spec(&h.deployment("x").unwrap());
    assert_eq!(
        ps.topology_spread_constraints.as_ref().map(Vec::len),
        Some(2)
    );
    assert_eq!(ps.service_account_name.as_deref(), Some("macp-auth"));

    let injected = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"template": {
            "metadata": {"annotations": {"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"}},
            "spec": {
                "containers": [
                    {"name": resources::CONTAINER_NAME,
                     "env": [{"name": "ISTIO_META_APP", "value": "macp"}],
                     "volumeMounts": [{"name": "istio-envoy", "mountPath": "/etc/istio/proxy"}]},
                    {"name": "istio-proxy", "image": "registry.test/proxyv2:1.24",
                     "ports": [{"containerPort": 15090, "name": "http-envoy-prom"}]}
                ],
                "volumes": [{"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}],
                "imagePullSecrets": [{"name": "istio-pull"}]
            }
        }}
    });
    let admin: Api<Deployment> = Api::namespaced(h.server.client(), NS);
    admin
        .patch(
            "x",
            &PatchParams::apply("istio-sidecar-injector"),
            &Patch::Apply(&injected),
        )
        .await
        .unwrap();
    let d = h.deployment("x").unwrap();
    let ps = pod_spec(&d);
    assert_eq!(ps.containers.len(), 2);
    // The signing keys' and the injector's.
    assert_eq!(ps.volumes.as_ref().map(Vec::len), Some(2));
    assert_eq!(ps.image_pull_secrets.as_ref().map(Vec::len), Some(2));
    h.roll_out("x", &[&kid]);
    h.reconcile("x").await;
    h.server.reset_log();
    for _ in 0..5 {
        h.reconcile("x").await;
    }
    assert_eq!(
        h.writes(),
        vec![],
        "the injector's container, volume, env, pull secret and annotation are no drift"
    );
    // No autoscaling asked for and none removed this generation: not even a read of one.
    let hpa_requests: Vec<_> = h
        .server
        .requests()
        .into_iter()
        .filter(|r| r.resource == "horizontalpodautoscalers")
        .collect();
    assert_eq!(hpa_requests, vec![], "steady state reads no autoscaler");
    // And a rotation still works with the sidecar in the pods.
    h.request_rotation("x", "r-1");
    for _ in 0..12 {
        h.round_with_waits_over("x").await;
        if h.phase("x") == RotationPhase::Idle && h.status("x").history.len() > 1 {
            break;
        }
    }
    let status = h.status("x");
    assert_eq!(
        status.history.last().unwrap().outcome,
        RotationOutcome::Succeeded
    );
    let d = h.deployment("x").unwrap();
    assert_eq!(
        pod_spec(&d).containers.len(),
        2,
        "the sidecar survived every apply"
    );
    // The activation's signing probes minted on the mint port, nowhere else.
    let ports = h.prober.mint_ports();
    assert!(
        !ports.is_empty() && ports.iter().all(|p| *p == 3201),
        "{ports:?}"
    );
    assert!(container_env(&d).contains_key("ISTIO_META_APP"));
    h.assert_rbac_covers_requests();
}

/// A Deployment version found to match is not compared again in the next
/// round (the comparison's share of a storm's CPU: docs/performance.md,
/// "What the figures asked for, and what changed"),
/// but any write by anyone is a new version: an edit of a field the operator
/// owns is seen and repaired in the next round.
#[tokio::test]
async fn a_deployment_edited_after_it_was_verified_is_compared_again_and_repaired() {
    let h = Harness::new().await;
    h.create_ready("dv").await;
    let image = container(&h.deployment("dv").unwrap()).image.clone();
    h.server.reset_log();
    h.reconcile("dv").await;
    assert_eq!(h.writes(), vec![], "an unchanged round writes nothing");

    h.server
        .modify_as::<Deployment>(Some(NS), "dv", |d| {
            let pod = d.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
            pod.containers[0].image = Some("example.com/not-ours:1".into());
        })
        .unwrap();
    h.reconcile("dv").await;

    assert_eq!(container(&h.deployment("dv").unwrap()).image, image);
    assert_eq!(
        h.server.count("patch", "deployments"),
        1,
        "{:#?}",
        h.writes()
    );
}

fn jwk_text(key: &PrivateKey) -> String {
    String::from_utf8(
        Keyset::initial(key.clone()).to_secret_data()[keyset::ACTIVE]
            .0
            .clone(),
    )
    .unwrap()
}

/// On a real API server an apply removes a Secret key that
/// the operator stops setting only when no other field manager owns it. A
/// Secret made with `kubectl create secret --from-file` (manager
/// `kubectl-create`) keeps `previous.jwk.json` after retirement if the keyset
/// is applied; the operator writes it with an exact, resourceVersion-checked
/// update instead, so after a full rotation it holds exactly the plan's keys.
#[tokio::test]
async fn a_secret_adopted_from_another_manager_holds_exactly_the_plans_keys_after_a_rotation() {
    let h = Harness::new().await;
    let active = PrivateKey::generate(SigningAlg::ES256, "adopted-1", 2048).unwrap();
    let previous = PrivateKey::generate(SigningAlg::ES256, "adopted-0", 2048).unwrap();
    let published = json!({"keys": [previous.public_jwk()]}).to_string();
    let secret = secret_with(
        &[
            (keyset::ACTIVE, &jwk_text(&active)),
            (keyset::PREVIOUS, &jwk_text(&previous)),
            (keyset::PUBLISHED, &published),
        ],
        "ad",
    );
    let admin: Api<Secret> = Api::namespaced(h.server.client(), NS);
    let pp = PostParams {
        field_manager: Some("kubectl-create".into()),
        ..PostParams::default()
    };
    admin.create(&pp, &secret).await.unwrap();
    let mut spec = es256();
    spec["maxTtlSeconds"] = json!(600);
    spec["defaultTtlSeconds"] = json!(60);
    spec["rotation"] = json!({"drainSeconds": 660});
    h.create("ad", spec).await;

    h.reconcile("ad").await;
    assert_eq!(h.keyset("ad").active.kid, "adopted-1");
    for _ in 0..4 {
        h.round_with_waits_over("ad").await;
    }
    h.request_rotation("ad", "r1");
    let mut phases = vec![];
    for _ in 0..20 {
        h.round_with_waits_over("ad").await;
        let p = h.phase("ad");
        phases.push(p);
        if p == RotationPhase::Idle {
            break;
        }
    }
    assert_eq!(phases.last(), Some(&RotationPhase::Idle), "{phases:?}");
    let s = h.status("ad");
    let last = s.history.last().unwrap();
    assert_eq!(last.trigger, RotationTrigger::Manual, "{:?}", s.history);
    let ks = h.keyset("ad");
    assert_ne!(ks.active.kid, "adopted-1");
    // Exactly the keys of the plan: what the operator would render for this keyset.
    let mut want: Vec<String> = ks.to_secret_data().into_keys().collect();
    want.sort();
    assert_eq!(h.secret_keys("ad"), want);
    assert!(!ks.published_kids().contains(&"adopted-0".to_string()));
    h.assert_rbac_covers_requests();
}
