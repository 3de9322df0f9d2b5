//! Layer 4 (docs/architecture.md, Test layers), production conventions: the
//! real operator drives the simulated cluster (real token-service processes,
//! a kubelet that mounts Secret volumes with the kubelet's file modes and
//! ownership, tests/README.md) while a load generator mints through the
//! Service and verifies every token with the MACP runtime's verifier, as in
//! `e2e_rotation.rs`, with the same harness (`tests/tests/e2e/`).
//!
//! An operator upgrade: Deployments written by an older release, which read
//! the signing key from `secretKeyRef` environment variables, move to the
//! key files (a read-only Secret volume, mode 0400, `fsGroup`) in one rollout,
//! with no failed mint or verification, `Ready` true throughout and the
//! rollout shown in `Progressing`. The MacpAuth runs an image pinned by
//! digest (`repo@sha256:...`), as README "Pinning images by digest" shows.

mod e2e;

use std::ops::ControlFlow::{Break, Continue};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use macp_auth_e2e::load::VERIFIER_LEEWAY;
use macp_auth_e2e::wait::wait_until;
use macp_auth_operator::crd::{MacpAuth, MacpAuthStatus};
use macp_auth_operator::{keyset, resources};
use macp_auth_service::config as service_env;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use e2e::*;

/// The token service pinned by digest (the simulated cluster runs this
/// repository's build for any `macp-auth-service` image).
const PINNED_IMAGE: &str = "registry.test/platform/macp-auth-service@sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945";

/// The in-process operator of the simulation.
fn operator(env: &mut Env) -> &mut Operator {
    match &mut env.backend {
        Backend::Simulated(sim) => &mut sim.operator,
        Backend::Real { .. } => panic!("this scenario stops and starts the in-process operator"),
    }
}

/// The pods, terminating ones included.
async fn pods(env: &Env) -> Vec<Pod> {
    Api::<Pod>::namespaced(env.client.clone(), &env.ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Waits until exactly [`REPLICAS`] pods run, all ready and none
/// terminating, each satisfying `form`.
async fn wait_pods(env: &Env, what: &str, form: impl Fn(&Pod) -> bool) {
    wait_until(what, PATIENCE, Duration::from_millis(100), async || {
        let pods = pods(env).await;
        let settled = pods.len() == REPLICAS as usize
            && pods
                .iter()
                .all(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p) && form(p));
        if settled {
            Break(())
        } else {
            Continue(pods.len())
        }
    })
    .await
}

async fn deployment(env: &Env, name: &str) -> Deployment {
    Api::<Deployment>::namespaced(env.client.clone(), &env.ns)
        .get(name)
        .await
        .expect("the Deployment")
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn condition<'a>(s: &'a MacpAuthStatus, type_: &str) -> Option<(&'a str, &'a str)> {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// The env variable names of a pod's (or template's) service container.
fn env_names(spec: Option<&k8s_openapi::api::core::v1::PodSpec>) -> Vec<String> {
    spec.and_then(|s| s.containers.first())
        .and_then(|c| c.env.as_ref())
        .map(|env| env.iter().map(|e| e.name.clone()).collect())
        .unwrap_or_default()
}

/// The pod template an older operator release wrote: the keys from
/// `secretKeyRef` environment variables, no key volume, no `fsGroup`, no
/// default resources. Applied as that release did (server-side apply, the
/// operator's field manager), so the new release's apply takes its fields over.
fn older_release_form(live: &Deployment, ns: &str, name: &str) -> Value {
    let mut spec = serde_json::to_value(live.spec.clone().expect("spec")).expect("JSON");
    let secret = resources::secret_name(name);
    let template = &mut spec["template"]["spec"];
    let container = &mut template["containers"][0];
    let env = container["env"].as_array().cloned().unwrap_or_default();
    let from_secret = |var: &str, key: &str| json!({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": false}}});
    container["env"] = Value::Array(
        env.into_iter()
            .map(|e| match e["name"].as_str() {
                Some(service_env::SIGNING_KEY_FILE) => {
                    from_secret(service_env::SIGNING_KEY_JSON, keyset::ACTIVE)
                }
                Some(service_env::VERIFICATION_KEYS_FILE) => {
                    from_secret(service_env::VERIFICATION_KEYS_JSON, keyset::PUBLISHED)
                }
                _ => e,
            })
            .collect(),
    );
    let c = container.as_object_mut().expect("container");
    c.remove("volumeMounts");
    c.remove("resources");
    let t = template.as_object_mut().expect("pod spec");
    t.remove("volumes");
    if let Some(sc) = t.get_mut("securityContext").and_then(Value::as_object_mut) {
        sc.remove("fsGroup");
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": live.metadata.labels,
            "ownerReferences": live.metadata.owner_references,
        },
        "spec": spec,
    })
}

/// Samples taken, and the `Ready` of those that were not True.
type ReadySamples = Arc<Mutex<(u32, Vec<String>)>>;

/// Samples the MacpAuth's `Ready` every 100 ms.
fn sample_ready(env: &Env, name: &str) -> (ReadySamples, JoinHandle<()>) {
    let api: Api<MacpAuth> = Api::namespaced(env.client.clone(), &env.ns);
    let name = name.to_string();
    let samples = Arc::new(Mutex::new((0u32, Vec::new())));
    let out = samples.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(m) = api.get(&name).await {
                let s = m.status.unwrap_or_default();
                let mut g = out.lock().unwrap_or_else(|e| e.into_inner());
                g.0 += 1;
                match s.conditions.iter().find(|c| c.type_ == "Ready") {
                    Some(c) if c.status == "True" => {}
                    Some(c) => {
                        g.1.push(format!("{} {}: {}", c.status, c.reason, c.message))
                    }
                    None => g.1.push("no Ready condition".into()),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (samples, task)
}

/// Ready, with every pod on the current template.
fn settled(s: &MacpAuthStatus) -> bool {
    condition(s, "Ready") == Some(("True", "Verified"))
        && condition(s, "Progressing") == Some(("False", "RolloutComplete"))
}

#[cfg_attr(
    e2e_real_cluster,
    ignore = "stops and starts the in-process operator to play the older release"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_release_s_deployment_moves_to_key_files_in_one_rollout_failing_nothing() {
    let scenario = "conventions_key_files";
    let mut env = Env::start(RbacMode::Namespaced).await;
    let mut spec = spec("ES256", true);
    spec["image"] = json!(PINNED_IMAGE);
    let name = env.create("conv", spec).await;
    env.wait_for(&name, "Ready with the rollout complete", settled)
        .await;

    // The older release wrote the Deployment; it runs its pods.
    operator(&mut env).kill().await;
    let live = deployment(&env, &name).await;
    Api::<Deployment>::namespaced(env.client.clone(), &env.ns)
        .patch(
            &name,
            &PatchParams::apply(resources::MANAGER).force(),
            &Patch::Apply(&older_release_form(&live, &env.ns, &name)),
        )
        .await
        .expect("apply the older release's Deployment");
    wait_pods(
        &env,
        "the older release's pods, keys in env variables",
        |p| env_names(p.spec.as_ref()).contains(&service_env::SIGNING_KEY_JSON.to_string()),
    )
    .await;

    let (_proxy, load) = env.load(&name, jsonwebtoken::Algorithm::ES256).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = deployment(&env, &name).await.metadata.generation;
    let (ready_samples, sampler) = sample_ready(&env, &name);

    // The new release starts.
    operator(&mut env).restart();
    wait_pods(&env, "the new release's pods, keys in files", |p| {
        let env = env_names(p.spec.as_ref());
        env.contains(&service_env::SIGNING_KEY_FILE.to_string())
            && !env.contains(&service_env::SIGNING_KEY_JSON.to_string())
    })
    .await;
    let s = env
        .wait_for(&name, "Ready with the rollout complete", settled)
        .await;
    // The older pods' last tokens live out their lifetime (and some leeway).
    tokio::time::sleep(Duration::from_secs(MAX_TTL) + VERIFIER_LEEWAY.min(Duration::from_secs(3)))
        .await;
    sampler.abort();
    let report = load.stop().await;

    println!("{}", report.summary_line(scenario));
    assert_clean_run(scenario, &report);
    let (samples, not_ready) = ready_samples
        .lock()
        .map(|g| g.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    println!("e2e {scenario}: Ready sampled {samples} times through the rollout");
    assert!(
        samples > 10,
        "{scenario}: too few Ready samples ({samples})"
    );
    assert_eq!(
        not_ready,
        Vec::<String>::new(),
        "{scenario}: Ready was not True"
    );

    // One rollout: the new release changed the template once.
    let d = deployment(&env, &name).await;
    assert_eq!(
        d.metadata.generation,
        before.map(|g| g + 1),
        "{scenario}: the move took more than one rollout"
    );
    let ps = d.spec.and_then(|s| s.template.spec).expect("pod spec");
    let c = &ps.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(PINNED_IMAGE),
        "the pinned image runs as given"
    );
    assert!(
        c.env.iter().flatten().all(|e| e.value_from.is_none()),
        "{scenario}: no value from a Secret in the environment: {:?}",
        c.env
    );
    let keys = ps
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == resources::SIGNING_KEYS_VOLUME)
        .and_then(|v| v.secret.clone())
        .expect("the signing keys' volume");
    let items: Vec<(String, Option<i32>)> = keys
        .items
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i.key, i.mode))
        .collect();
    assert_eq!(
        items,
        [
            (keyset::ACTIVE.to_string(), Some(0o400)),
            (keyset::PUBLISHED.to_string(), Some(0o400)),
        ]
    );
    assert!(s.active_kid.is_some());
    env.shutdown().await;
}
