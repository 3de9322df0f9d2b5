//! Layer 4 (docs/architecture.md, Test layers), production conventions: the
//! real operator drives the simulated cluster (real token-service processes,
//! a kubelet that mounts Secret volumes with the kubelet's file modes and
//! ownership, tests/README.md) while a load generator mints through the
//! Service and verifies every token with the MACP runtime's verifier, as in
//! `e2e_rotation.rs` (whose harness this file repeats in the part it needs).
//!
//! An operator upgrade: Deployments written by an older release, which read
//! the signing key from `secretKeyRef` environment variables, move to the
//! key files (a read-only Secret volume, mode 0400, `fsGroup`) in one rollout,
//! with no failed mint or verification, `Ready` true throughout and the
//! rollout shown in `Progressing`. The MacpAuth runs an image pinned by
//! digest (`repo@sha256:...`), as README "Pinning images by digest" shows.

use std::ops::ControlFlow::{Break, Continue};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use macp_auth_e2e::apiserver::FakeApiServer;
use macp_auth_e2e::binary::service_binary_async;
use macp_auth_e2e::cluster::{Cluster, ClusterConfig};
use macp_auth_e2e::endpoints::{ApiEndpoints, DEFAULT_ENDPOINT_LAG, LaggedEndpoints};
use macp_auth_e2e::load::{LoadConfig, LoadGenerator, LoadReport, VERIFIER_LEEWAY};
use macp_auth_e2e::proxy::ServiceProxy;
use macp_auth_e2e::wait::wait_until;
use macp_auth_operator::crd::{MacpAuth, MacpAuthStatus};
use macp_auth_operator::keyset;
use macp_auth_operator::validate::VERIFIER_LEEWAY_SECONDS;
use macp_auth_operator::{HttpProber, Settings, fixtures, rbac, resources};
use macp_auth_service::config as service_env;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const NS: &str = "e2e";
/// Scaled as in `e2e_rotation.rs`: a cache TTL several rollouts long, short tokens.
const CACHE_TTL: u64 = 20;
const MAX_TTL: u64 = 6;
const REPLICAS: i32 = 3;
const PATIENCE: Duration = Duration::from_secs(300);
/// The token service pinned by digest (the simulated cluster runs this
/// repository's build for any `macp-auth-service` image).
const PINNED_IMAGE: &str = "registry.test/platform/macp-auth-service@sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945";

/// The operator in-process, held to its namespaced RBAC; restartable.
struct Operator {
    client: kube::Client,
    task: Option<JoinHandle<()>>,
}

impl Operator {
    fn start(client: kube::Client) -> Self {
        let settings = Settings {
            service_image: "registry.test/macp-auth-service:e2e".into(),
            probe_timeout: Duration::from_secs(1),
            watch_namespaces: vec![NS.to_string()],
            ..Settings::default()
        };
        let prober = Arc::new(HttpProber::new(settings.probe_timeout).expect("prober"));
        let task = tokio::spawn(macp_auth_operator::run(
            client.clone(),
            settings,
            prober,
            std::future::pending(),
        ));
        Self {
            client,
            task: Some(task),
        }
    }

    async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

struct Sim {
    server: FakeApiServer,
    cluster: Cluster,
    operator: Operator,
}

impl Sim {
    async fn start() -> Self {
        let bin = service_binary_async().await.expect("service binary");
        let server = FakeApiServer::start().await.expect("API server");
        server.enforce_operator_rbac(&rbac::Mode::Namespaced(vec![NS.to_string()]), None);
        let cluster = Cluster::start(server.handle(), ClusterConfig::new(bin));
        let operator = Operator::start(server.operator_client().expect("operator client"));
        Self {
            server,
            cluster,
            operator,
        }
    }

    fn client(&self) -> kube::Client {
        self.server.client()
    }

    async fn status(&self, name: &str) -> MacpAuthStatus {
        Api::<MacpAuth>::namespaced(self.client(), NS)
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|m| m.status)
            .unwrap_or_default()
    }

    async fn wait_status(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&MacpAuthStatus) -> bool,
    ) -> MacpAuthStatus {
        wait_until(what, PATIENCE, Duration::from_millis(50), async || {
            let s = self.status(name).await;
            if done(&s) { Break(s) } else { Continue(s) }
        })
        .await
    }

    /// The pods, terminating ones included.
    async fn pods(&self) -> Vec<Pod> {
        Api::<Pod>::namespaced(self.client(), NS)
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    /// Waits until exactly [`REPLICAS`] pods run, all ready and none
    /// terminating, each satisfying `form`.
    async fn wait_pods(&self, what: &str, form: impl Fn(&Pod) -> bool) {
        wait_until(what, PATIENCE, Duration::from_millis(100), async || {
            let pods = self.pods().await;
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

    async fn deployment(&self, name: &str) -> Deployment {
        Api::<Deployment>::namespaced(self.client(), NS)
            .get(name)
            .await
            .expect("the Deployment")
    }

    /// A Service stand-in balancing per connection over the endpoints (with
    /// kube-proxy's lag), and a load generator minting and verifying through it.
    async fn load(&self, name: &str) -> (ServiceProxy, LoadGenerator) {
        let api = Arc::new(
            ApiEndpoints::start_on(self.client(), NS, name, None, Duration::from_millis(100)).await,
        );
        let lagged = Arc::new(LaggedEndpoints::start(
            api,
            DEFAULT_ENDPOINT_LAG,
            Duration::from_millis(50),
        ));
        let proxy = ServiceProxy::start_with(lagged)
            .await
            .expect("service proxy");
        let mut config = LoadConfig::new(CACHE_TTL);
        config.max_duration = PATIENCE * 2;
        config.pause = Duration::from_millis(20);
        config.ttls = vec![2, 3, MAX_TTL];
        config.algorithms = vec![jsonwebtoken::Algorithm::ES256];
        let load = LoadGenerator::start(proxy.clone(), config)
            .await
            .expect("load generator");
        (proxy, load)
    }

    /// Stops everything; the operator's RBAC refused nothing meanwhile.
    async fn shutdown(mut self) {
        self.operator.stop().await;
        self.cluster.shutdown().await;
        assert_eq!(
            self.server.forbidden().len(),
            0,
            "the API server refused the operator's requests: {:#?}",
            self.server.forbidden()
        );
    }
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
fn older_release_form(live: &Deployment, name: &str) -> Value {
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
            "namespace": NS,
            "labels": live.metadata.labels,
            "ownerReferences": live.metadata.owner_references,
        },
        "spec": spec,
    })
}

/// Samples taken, and the `Ready` of those that were not True.
type ReadySamples = Arc<Mutex<(u32, Vec<String>)>>;

/// Samples the MacpAuth's `Ready` every 100 ms.
fn sample_ready(sim: &Sim, name: &str) -> (ReadySamples, JoinHandle<()>) {
    let api: Api<MacpAuth> = Api::namespaced(sim.client(), NS);
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

fn assert_clean(scenario: &str, report: &LoadReport) {
    let line = report.summary_line(scenario);
    println!("{line}");
    assert!(
        report.minted > 200,
        "{scenario}: too few tokens to judge: {line}"
    );
    assert!(
        report.late_checks > 100,
        "{scenario}: too few late checks: {line}"
    );
    assert_eq!(
        report.verify_failures, 0,
        "{scenario}: {:?}",
        report.failure_reasons
    );
    assert_eq!(
        report.late_verify_failures, 0,
        "{scenario}: {:?}",
        report.late_failure_reasons
    );
    assert_eq!(
        report.mint_errors, 0,
        "{scenario}: {:?}",
        report.mint_error_reasons
    );
    assert!(
        report.late_checks_missed_within_bound(),
        "{scenario}: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_release_s_deployment_moves_to_key_files_in_one_rollout_failing_nothing() {
    let scenario = "conventions_key_files";
    let mut sim = Sim::start().await;
    let name = "conv";
    let m = fixtures::macpauth(name)
        .spec(json!({
            "image": PINNED_IMAGE,
            "replicas": REPLICAS,
            "signingAlg": "ES256",
            "jwksCacheTtlSeconds": CACHE_TTL,
            "maxTtlSeconds": MAX_TTL,
            "defaultTtlSeconds": MAX_TTL,
            "rotation": {"drainSeconds": MAX_TTL as i64 + VERIFIER_LEEWAY_SECONDS,
                         "rolloutTimeoutSeconds": 120}
        }))
        .build();
    Api::<MacpAuth>::namespaced(sim.client(), NS)
        .create(&PostParams::default(), &m)
        .await
        .expect("create the MacpAuth");
    sim.wait_status(name, "Ready with the rollout complete", |s| {
        condition(s, "Ready") == Some(("True", "Verified"))
            && condition(s, "Progressing") == Some(("False", "RolloutComplete"))
    })
    .await;

    // The older release wrote the Deployment; it runs its pods.
    sim.operator.stop().await;
    let live = sim.deployment(name).await;
    Api::<Deployment>::namespaced(sim.client(), NS)
        .patch(
            name,
            &PatchParams::apply(resources::MANAGER).force(),
            &Patch::Apply(&older_release_form(&live, name)),
        )
        .await
        .expect("apply the older release's Deployment");
    sim.wait_pods("the older release's pods, keys in env variables", |p| {
        env_names(p.spec.as_ref()).contains(&service_env::SIGNING_KEY_JSON.to_string())
    })
    .await;

    let (proxy, load) = sim.load(name).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = sim.deployment(name).await.metadata.generation;
    let (ready_samples, sampler) = sample_ready(&sim, name);

    // The new release starts.
    sim.operator = Operator::start(sim.operator.client.clone());
    sim.wait_pods("the new release's pods, keys in files", |p| {
        let env = env_names(p.spec.as_ref());
        env.contains(&service_env::SIGNING_KEY_FILE.to_string())
            && !env.contains(&service_env::SIGNING_KEY_JSON.to_string())
    })
    .await;
    let s = sim
        .wait_status(name, "Ready with the rollout complete", |s| {
            condition(s, "Ready") == Some(("True", "Verified"))
                && condition(s, "Progressing") == Some(("False", "RolloutComplete"))
        })
        .await;
    // The tokens of the older pods live out their lifetime and the leeway.
    tokio::time::sleep(Duration::from_secs(MAX_TTL) + VERIFIER_LEEWAY.min(Duration::from_secs(3)))
        .await;
    sampler.abort();
    let report = load.stop().await;
    drop(proxy);

    assert_clean(scenario, &report);
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
    let d = sim.deployment(name).await;
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
    sim.shutdown().await;
}
