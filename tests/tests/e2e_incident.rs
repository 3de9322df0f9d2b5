//! Layer 4 (docs/architecture.md, Test layers), the incident path: the real
//! operator (its controller, kube client and HTTP prober, in-process) drives
//! the simulated cluster of `macp_auth_e2e::cluster`, whose pods are real
//! token-service processes on 127.0.0.x, as `e2e_rotation.rs` does.
//!
//! A spec made invalid by an edit must not block an emergency rotation: the
//! suspect key leaves every pod within the bound of an ordinary emergency
//! (`e2e_3` in `e2e_rotation.rs`), with `Degraded`/`InvalidSpec` still set.

use std::ops::ControlFlow::{Break, Continue};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use macp_auth_e2e::endpoints::ApiEndpoints;
use macp_auth_e2e::wait::wait_until;
use macp_auth_operator::crd::{
    EMERGENCY_ROTATE_ANNOTATION, MacpAuthStatus, RotationOutcome, RotationTrigger,
};
use serde_json::json;

mod e2e;

use e2e::{
    CACHE_TTL, DRAIN, Env, JwksWatch, MAX_TTL, PATIENCE, REPLICAS, RbacMode, WITHDRAW_BOUND,
};

fn condition(s: &MacpAuthStatus, type_: &str) -> Option<(String, String, String)> {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn degraded_by_invalid_spec(s: &MacpAuthStatus) -> bool {
    condition(s, "Degraded")
        .is_some_and(|(status, reason, _)| status == "True" && reason == "InvalidSpec")
}

/// The token service's max TTL rendered into the Deployment.
async fn rendered_max_ttl(env: &Env, name: &str) -> Option<String> {
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    let d = deployments.get(name).await.ok()?;
    d.spec?.template.spec?.containers[0]
        .env
        .clone()?
        .into_iter()
        .find(|e| e.name == "MACP_AUTH_MAX_TTL_SECONDS")?
        .value
}

/// The sandbox's incident: `maxTtlSeconds` raised with `drainSeconds` pinned
/// (a spec the operator refuses; this API server, like one without the CRD's
/// CEL rules, stores it), then an emergency annotation. The suspect key
/// leaves every pod within [`WITHDRAW_BOUND`], rendered from the last valid
/// spec, while `Degraded`/`InvalidSpec` stays set.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_emergency_past_an_invalid_spec_withdraws_the_suspect_key_within_the_usual_bound() {
    let mut env = Env::start(RbacMode::Namespaced).await;
    let spec = json!({
        "replicas": REPLICAS,
        "signingAlg": "ES256",
        "jwksCacheTtlSeconds": CACHE_TTL,
        "maxTtlSeconds": MAX_TTL,
        "defaultTtlSeconds": MAX_TTL,
        "rotation": {"prepublish": true, "drainSeconds": DRAIN, "rolloutTimeoutSeconds": 120, "standby": false}
    });
    let name = env.create("incident", spec).await;
    let name = name.as_str();
    let before = env.wait_ready(name).await;
    let suspect = before.active_kid.clone().expect("active kid");

    // The edit that makes the spec invalid.
    env.patch(name, json!({"spec": {"maxTtlSeconds": 600}}))
        .await;
    let invalid = env
        .wait_for(name, "Degraded InvalidSpec", degraded_by_invalid_spec)
        .await;
    assert!(
        condition(&invalid, "Degraded").is_some_and(|(_, _, m)| m.contains("drainSeconds")),
        "{invalid:#?}"
    );

    let pods = Arc::new(
        ApiEndpoints::start_on(
            env.client.clone(),
            &env.ns,
            name,
            None,
            Duration::from_millis(100),
        )
        .await,
    );
    let watch = JwksWatch::start(pods);
    // The suspect key is served before the annotation.
    wait_until(
        "a JWKS sample",
        PATIENCE,
        JwksWatch::PERIOD,
        async || match watch.samples().last() {
            Some((_, kids)) if kids.contains(&suspect) => Break(()),
            _ => Continue(()),
        },
    )
    .await;

    let incident = format!("INC-{}", chrono::Utc::now().timestamp());
    let t0 = Instant::now();
    env.patch(
        name,
        json!({"metadata": {"annotations": {EMERGENCY_ROTATE_ANNOTATION: incident}}}),
    )
    .await;
    let history = before.history.len();
    let after = env
        .wait_for(name, "the emergency rotation to finish", |s| {
            s.history.len() > history
                && s.history
                    .last()
                    .is_some_and(|r| r.request_id.as_deref() == Some(incident.as_str()))
        })
        .await;
    let emergency_s = t0.elapsed().as_secs_f64();
    // Keep sampling until a few periods after no pod served the suspect.
    wait_until(
        "no pod to serve the suspect key",
        PATIENCE,
        JwksWatch::PERIOD,
        async || {
            let samples = watch.samples();
            let recent: Vec<_> = samples.iter().rev().take(5).collect();
            if recent.len() == 5
                && recent
                    .iter()
                    .all(|(_, kids)| !kids.is_empty() && !kids.contains(&suspect))
            {
                Break(())
            } else {
                Continue(())
            }
        },
    )
    .await;
    let served = watch.stop().await;
    let ttl = rendered_max_ttl(&env, name).await;
    let reasons_notes: Vec<String> = env
        .events_about(name)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("EmergencyWithLastValidSpec"))
        .filter_map(|e| e.note)
        .collect();
    let annotation = env
        .api()
        .get(name)
        .await
        .expect("get MacpAuth")
        .metadata
        .annotations
        .and_then(|a| a.get(EMERGENCY_ROTATE_ANNOTATION).cloned());
    let end = env.status(name).await;
    env.shutdown().await;

    let rec = after.history.last().expect("history entry");
    assert_eq!(rec.trigger, RotationTrigger::Emergency, "{rec:?}");
    assert_eq!(rec.outcome, RotationOutcome::Succeeded, "{rec:?}");
    assert!(after.suspect_kids.contains(&suspect));
    assert_ne!(after.active_kid.as_deref(), Some(suspect.as_str()));
    assert!(!after.published_kids.contains(&suspect));
    let last_served = served
        .iter()
        .filter(|(at, kids)| *at >= t0 && kids.contains(&suspect))
        .map(|(at, _)| at.saturating_duration_since(t0))
        .max()
        .expect("the suspect key was served after the annotation");
    assert!(
        last_served <= WITHDRAW_BOUND,
        "a pod still served the suspect key {last_served:?} after the annotation (bound {WITHDRAW_BOUND:?})"
    );
    // Degraded stays: the spec is still invalid.
    assert!(degraded_by_invalid_spec(&end), "{end:#?}");
    assert!(degraded_by_invalid_spec(&after), "{after:#?}");
    assert_eq!(
        reasons_notes.len(),
        1,
        "one Warning says the emergency used the last valid spec: {reasons_notes:?}"
    );
    assert!(reasons_notes[0].contains(&incident), "{reasons_notes:?}");
    // The pods run the last valid spec, not the invalid one.
    assert_eq!(ttl.as_deref(), Some(MAX_TTL.to_string().as_str()));
    // The handled request is recorded and its annotation removed.
    assert_eq!(
        end.handled_emergency_request.as_deref(),
        Some(incident.as_str())
    );
    assert_eq!(annotation, None);
    println!(
        "e2e incident_invalid_spec: last_served_s={:.1} withdraw_bound_s={:.0} emergency_rotation_s={emergency_s:.1}",
        last_served.as_secs_f64(),
        WITHDRAW_BOUND.as_secs_f64()
    );
}
