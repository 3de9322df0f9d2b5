//! The simulated cluster: Deployments become real service processes on loopback
//! addresses, rolled like the real controller, with a load generator verifying
//! every token through the MACP runtime's verifier.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use macp_auth_e2e::apiserver::FakeApiServer;
use macp_auth_e2e::binary::service_binary_async;
use macp_auth_e2e::cluster::{Cluster, ClusterConfig};
use macp_auth_e2e::endpoints::{DEFAULT_ENDPOINT_LAG, LaggedEndpoints, StoreEndpoints};
use macp_auth_e2e::load::{LoadConfig, LoadGenerator};
use macp_auth_e2e::proxy::ServiceProxy;
use macp_auth_e2e::wait::{try_wait_until, wait_until};
use macp_auth_service::keys::{Alg, generate_private_jwk};
use serde_json::json;

const NS: &str = "e2e";

fn setup_objects(server: &FakeApiServer, name: &str) {
    let jwk = generate_private_jwk(Alg::ES256, &format!("{name}-k1"), 2048).unwrap();
    server
        .create(
            "",
            "secrets",
            json!({"metadata": {"name": format!("{name}-keys"), "namespace": NS},
                   "stringData": {"active.jwk.json": jwk.to_string()}}),
        )
        .unwrap();
    server
        .create(
            "",
            "services",
            json!({"metadata": {"name": name, "namespace": NS},
                   "spec": {"selector": {"app": name}, "ports": [{"port": 3200, "targetPort": 3200}]}}),
        )
        .unwrap();
}

fn deployment(name: &str, roll: &str, progress_deadline: u64) -> Deployment {
    let safe =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    deployment_with(name, roll, progress_deadline, 2, safe)
}

/// A Deployment of `replicas` with `strategy` (`null`: the defaults, 25%/25%).
fn deployment_with(
    name: &str,
    roll: &str,
    progress_deadline: u64,
    replicas: usize,
    strategy: serde_json::Value,
) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": progress_deadline,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 10, "containers": [{
                    "name": "auth", "image": "macp-auth-service:test",
                    "ports": [{"containerPort": 3200}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 3200}, "periodSeconds": 1},
                    "env": [
                        {"name": "PORT", "value": "3200"},
                        {"name": "MACP_AUTH_SIGNING_ALG", "value": "ES256"},
                        {"name": "MACP_AUTH_SIGNING_KEY_JSON", "valueFrom": {"secretKeyRef": {
                            "name": format!("{name}-keys"), "key": "active.jwk.json"}}},
                        {"name": "ROLL", "value": roll}
                    ]
                }]}
            }
        }
    }))
    .unwrap()
}

fn roll_patch(roll: &str) -> Patch<serde_json::Value> {
    Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{
        "name": "auth", "image": "macp-auth-service:test",
        "ports": [{"containerPort": 3200}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 3200}, "periodSeconds": 1},
        "env": [
            {"name": "PORT", "value": "3200"},
            {"name": "MACP_AUTH_SIGNING_ALG", "value": "ES256"},
            {"name": "MACP_AUTH_SIGNING_KEY_JSON", "valueFrom": {"secretKeyRef": {
                "name": "auth-keys", "key": "active.jwk.json"}}},
            {"name": "ROLL", "value": roll}
        ]
    }]}}}}))
}

async fn start() -> (FakeApiServer, Cluster) {
    let bin = service_binary_async().await.expect("service binary");
    let server = FakeApiServer::start().await.unwrap();
    let cluster = Cluster::start(server.handle(), ClusterConfig::new(bin));
    (server, cluster)
}

/// A pod the controller starts from a read of a Deployment that is deleted
/// meanwhile names an owner that no longer exists. A real garbage collector
/// deletes it; so must the fake API server, or the pod outlives its
/// Deployment for good and `kubectl wait --for=delete` times out (as a user
/// deleting a MacpAuth mid-rollout would see it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_started_from_a_stale_read_of_a_deleted_deployment_is_collected() {
    let bin = service_binary_async().await.expect("service binary");
    let server = FakeApiServer::start().await.unwrap();
    let mut config = ClusterConfig::new(bin);
    config.stale_read_delay = Duration::from_secs(2);
    let cluster = Cluster::start(server.handle(), config);
    setup_objects(&server, "late");
    let client = server.client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let safe =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    deployments
        .create(
            &PostParams::default(),
            &deployment_with("late", "a", 600, 1, safe),
        )
        .await
        .unwrap();
    // Inside the controller's 2 s between its read and its pod's create.
    tokio::time::sleep(Duration::from_millis(500)).await;
    deployments
        .delete("late", &DeleteParams::default())
        .await
        .unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, NS);
    // The pod is created about 1.5 s from now, then stopped (SIGTERM, a
    // grace of 10 s at most) and released.
    let left = try_wait_until(
        "no pod left of the deleted Deployment",
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || {
            let names: Vec<String> = pods
                .list(&Default::default())
                .await
                .map(|l| {
                    l.items
                        .into_iter()
                        .filter_map(|p| p.metadata.name)
                        .collect()
                })
                .unwrap_or_default();
            let started = cluster.pods().iter().any(|p| p.deployment == "late");
            if names.is_empty() && !started {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("pods {names:?}, kubelet runs one: {started}"))
            }
        },
    )
    .await;
    cluster.shutdown().await;
    left.expect("the late pod is collected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_runs_rolls_and_serves_verifiable_tokens() {
    let safe =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    rolls_under_load(2, safe, 2, 3).await;
}

/// The default strategy (25%/25%: with 4 replicas one surge pod and one
/// unavailable) rolls too, never below 3 ready pods nor above 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_strategy_rolls_within_its_bounds() {
    rolls_under_load(4, serde_json::Value::Null, 3, 5).await;
}

async fn rolls_under_load(
    replicas: usize,
    strategy: serde_json::Value,
    want_min_ready: usize,
    want_max_pods: usize,
) {
    let (server, cluster) = start().await;
    setup_objects(&server, "auth");
    let deployments: Api<Deployment> = Api::namespaced(server.client(), NS);
    deployments
        .create(
            &PostParams::default(),
            &deployment_with("auth", "1", 600, replicas, strategy),
        )
        .await
        .unwrap();
    cluster
        .wait_rollout(NS, "auth", Duration::from_secs(60))
        .await
        .unwrap();

    // Pods are processes on their own addresses, and the store says so.
    let pods = cluster.ready_pods(NS, "auth");
    assert_eq!(pods.len(), replicas);
    assert_ne!(pods[0].ip, pods[1].ip);
    for p in &pods {
        let stored = server.get("", "pods", Some(NS), &p.name).unwrap();
        assert_eq!(stored["status"]["podIP"], p.ip.to_string());
        assert_eq!(stored["status"]["phase"], "Running");
        assert_eq!(
            stored["metadata"]["labels"]["pod-template-hash"],
            p.template_hash.as_str()
        );
        let health = reqwest::get(format!("http://{}:{}/healthz", p.ip, p.port))
            .await
            .unwrap();
        assert!(health.status().is_success());
    }
    let status = deployments
        .get_status("auth")
        .await
        .unwrap()
        .status
        .unwrap();
    let n = Some(replicas as i32);
    assert_eq!((status.ready_replicas, status.updated_replicas), (n, n));
    assert_eq!(status.observed_generation, Some(1));

    // Load and verifiers through a Service whose endpoints lag.
    let endpoints = Arc::new(StoreEndpoints::new(server.handle(), NS, "auth"));
    let lagged = Arc::new(LaggedEndpoints::start(
        endpoints,
        DEFAULT_ENDPOINT_LAG,
        Duration::from_millis(50),
    ));
    let proxy = ServiceProxy::start_with(lagged).await.unwrap();
    let mut config = LoadConfig::new(1);
    config.max_duration = Duration::from_secs(120);
    config.ttls = vec![2, 4];
    let load = LoadGenerator::start(proxy.clone(), config).await.unwrap();

    // Sample the rollout: ready pods never drop below 2, pods never exceed 3.
    let sampling = Arc::new(AtomicBool::new(true));
    let min_ready = Arc::new(AtomicUsize::new(usize::MAX));
    let max_pods = Arc::new(AtomicUsize::new(0));
    let cluster = Arc::new(cluster);
    let sampler = {
        let (sampling, min_ready, max_pods, cluster) = (
            sampling.clone(),
            min_ready.clone(),
            max_pods.clone(),
            cluster.clone(),
        );
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                let live: Vec<_> = cluster
                    .pods()
                    .into_iter()
                    .filter(|p| !p.terminating)
                    .collect();
                min_ready.fetch_min(live.iter().filter(|p| p.ready).count(), Ordering::SeqCst);
                max_pods.fetch_max(live.len(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old_hash = pods[0].template_hash.clone();
    deployments
        .patch("auth", &PatchParams::default(), &roll_patch("2"))
        .await
        .unwrap();
    cluster
        .wait_rollout(NS, "auth", Duration::from_secs(60))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    sampling.store(false, Ordering::SeqCst);
    sampler.await.unwrap();
    let verifier_proxy = load.verifier_proxy(0).clone();
    let report = load.stop().await;
    println!("{}", report.summary_line("cluster-rollout"));
    println!(
        "e2e cluster-rollout: min_ready={} max_pods={} failure_reasons={:?} mint_error_reasons={:?}",
        min_ready.load(Ordering::SeqCst),
        max_pods.load(Ordering::SeqCst),
        report.failure_reasons,
        report.mint_error_reasons
    );

    let new_pods = cluster.ready_pods(NS, "auth");
    assert_eq!(new_pods.len(), replicas);
    assert!(new_pods.iter().all(|p| p.template_hash != old_hash));
    assert!(
        min_ready.load(Ordering::SeqCst) >= want_min_ready,
        "a moment with fewer than {want_min_ready} ready pods"
    );
    assert!(
        max_pods.load(Ordering::SeqCst) <= want_max_pods,
        "more than replicas + maxSurge pods"
    );
    assert!(
        report.minted >= 20,
        "{}",
        report.summary_line("cluster-rollout")
    );
    assert_eq!(report.verify_failures, 0, "{:?}", report.failure_reasons);
    assert_eq!(
        report.late_verify_failures, 0,
        "{:?}",
        report.late_failure_reasons
    );
    assert!(report.late_checks > 0, "no held token re-verified");
    assert_eq!(report.unknown_kid_at_verify, 0);
    assert_eq!(report.per_kid.keys().collect::<Vec<_>>(), ["auth-k1"]);
    assert!(!verifier_proxy.jwks_served().is_empty());
    // These pods have no shutdown delay: once SIGTERM stops their listener,
    // the Service still sends them connections for the endpoint lag, and
    // those mints fail. The simulation is as unkind as a real cluster here;
    // the operator's pods bridge it with MACP_AUTH_SHUTDOWN_DELAY_SECONDS.
    assert!(
        report.mint_errors > 0,
        "no mint failed on pods that stop at SIGTERM: {:?}",
        report.mint_error_reasons
    );
    let status = deployments
        .get_status("auth")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.observed_generation, Some(2));

    // Deleting the Deployment garbage-collects its Pods and stops the processes.
    deployments
        .delete("auth", &DeleteParams::default())
        .await
        .unwrap();
    wait_until(
        "every pod and its process gone",
        Duration::from_secs(30),
        Duration::from_millis(50),
        async || {
            let pods = cluster.pods();
            let objects: Vec<_> = server
                .list("", "pods", Some(NS))
                .into_iter()
                .map(|p| p["metadata"]["name"].to_string())
                .collect();
            if pods.is_empty() && objects.is_empty() {
                ControlFlow::Break(())
            } else {
                // The kubelet's pods, and the Pod objects left in the store.
                ControlFlow::Continue((pods, objects))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_ready_pods_stall_the_rollout_and_rollback_recovers() {
    let (server, cluster) = start().await;
    setup_objects(&server, "auth");
    let deployments: Api<Deployment> = Api::namespaced(server.client(), NS);
    deployments
        .create(&PostParams::default(), &deployment("auth", "1", 2))
        .await
        .unwrap();
    cluster
        .wait_rollout(NS, "auth", Duration::from_secs(60))
        .await
        .unwrap();
    let good: Vec<String> = cluster
        .ready_pods(NS, "auth")
        .into_iter()
        .map(|p| p.name)
        .collect();

    cluster.never_ready_when(|p| p.env.get("ROLL").map(String::as_str) == Some("bad"));
    deployments
        .patch("auth", &PatchParams::default(), &roll_patch("bad"))
        .await
        .unwrap();
    let err = cluster
        .wait_rollout(NS, "auth", Duration::from_secs(4))
        .await
        .unwrap_err();
    println!("stalled as expected: {err}");
    let stuck: Vec<_> = cluster
        .pods()
        .into_iter()
        .filter(|p| p.never_ready)
        .collect();
    assert_eq!(stuck.len(), 1, "maxSurge 1: one new pod, stuck");
    let ready: Vec<String> = cluster
        .ready_pods(NS, "auth")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(ready, good, "old pods keep serving");
    let status = deployments
        .get_status("auth")
        .await
        .unwrap()
        .status
        .unwrap();
    let progressing = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_deref()),
        ("False", Some("ProgressDeadlineExceeded"))
    );

    // Rolling back to the previous template removes the stuck pod; the good ones stay.
    deployments
        .patch("auth", &PatchParams::default(), &roll_patch("1"))
        .await
        .unwrap();
    cluster
        .wait_rollout(NS, "auth", Duration::from_secs(30))
        .await
        .unwrap();
    let ready: Vec<String> = cluster
        .ready_pods(NS, "auth")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(ready, good);
    let cluster = cluster;
    cluster.shutdown().await;
}
