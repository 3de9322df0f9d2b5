//! Layer 4 (DESIGN section 7): the real operator (its `kube_runtime`
//! controller, real kube client, real HTTP prober) drives a cluster while a
//! load generator mints through the pods and verifies every token with the MACP
//! runtime's own verifier (`macp_auth`'s `JwtBearerResolver`, cache TTL = the
//! resource's `jwksCacheTtlSeconds`).
//!
//! Two backends, one set of scenarios (everything goes through the Kubernetes
//! API and the pods' IPs, never through the simulation's internals, except the
//! two hooks a real cluster does not offer: killing an in-process operator and
//! making new pods never ready):
//! - simulated (default): an in-process API server and a kubelet whose pods
//!   are real token-service processes on 127.0.0.x, with the operator
//!   in-process;
//! - real: `MACP_E2E_KUBECONFIG=<path>` (plus `MACP_E2E_NAMESPACE`, default
//!   `macp-e2e`, and `MACP_E2E_OPERATOR_NAMESPACE`, default `macp-system`): the
//!   operator installed by Helm does the work; the test must reach pod IPs
//!   (run it in the cluster or on a node). See docs/testing.md.
//!
//! Each scenario prints one line, `e2e <scenario>: minted=<n> verify_failures=<n> ...`,
//! followed by its own figures (phase timings, cutoff seconds), so runs can be
//! compared. `scripts/e2e` runs them alone with their output shown.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use macp_auth::auth::resolver::AuthResolver;
use macp_auth::auth::resolvers::jwt_bearer::{JwtBearerResolver, JwtConfig};
use macp_auth_e2e::apiserver::FakeApiServer;
use macp_auth_e2e::binary::service_binary_async;
use macp_auth_e2e::cluster::{Cluster, ClusterConfig};
use macp_auth_e2e::endpoints::{ApiEndpoints, EndpointSource};
use macp_auth_e2e::load::{LoadConfig, LoadGenerator, LoadReport, token_kid};
use macp_auth_e2e::proxy::ServiceProxy;
use macp_auth_operator::crd::{
    MacpAuth, MacpAuthStatus, RotationOutcome, RotationPhase, RotationTrigger,
};
use macp_auth_operator::{HttpProber, Settings, resources};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Namespace of the simulated scenarios.
const SIM_NS: &str = "e2e";
/// The verifiers' JWKS cache TTL in these scenarios (seconds).
const CACHE_TTL: u64 = 3;
/// Generous bound for anything the operator and the cluster do together on a
/// loaded 2-core machine; scenarios finish far sooner.
const PATIENCE: Duration = Duration::from_secs(180);

// ------------------------------------------------------------------ harness

/// The operator running in-process, restartable (abort = crash, no cleanup).
struct Operator {
    client: kube::Client,
    task: Option<JoinHandle<()>>,
    starts: u32,
}

impl Operator {
    fn start(client: kube::Client) -> Self {
        let mut op = Self {
            client,
            task: None,
            starts: 0,
        };
        op.restart();
        op
    }

    fn restart(&mut self) {
        let settings = Settings {
            service_image: "registry.test/macp-auth-service:e2e".into(),
            probe_timeout: Duration::from_secs(1),
            ..Settings::default()
        };
        let prober = Arc::new(HttpProber::new(settings.probe_timeout).expect("prober"));
        let client = self.client.clone();
        self.starts += 1;
        self.task = Some(tokio::spawn(macp_auth_operator::run(
            client,
            settings,
            prober,
            std::future::pending(),
        )));
    }

    /// Kills the operator mid-flight: the task is aborted wherever it is, as a
    /// SIGKILL would; whatever it had not written is lost.
    async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

/// A simulated cluster with its operator.
struct Sim {
    server: FakeApiServer,
    cluster: Cluster,
    operator: Operator,
}

impl Sim {
    async fn start() -> Self {
        let bin = service_binary_async().await.expect("service binary");
        let server = FakeApiServer::start().await.expect("API server");
        let cluster = Cluster::start(server.handle(), ClusterConfig::new(bin));
        let operator = Operator::start(server.client());
        Self {
            server,
            cluster,
            operator,
        }
    }

    async fn shutdown(mut self) {
        self.operator.kill().await;
        self.cluster.shutdown().await;
    }
}

enum Backend {
    Simulated(Box<Sim>),
    /// The operator runs in the cluster; `operator_pods` selects its pods in
    /// `operator_namespace` (to kill them).
    Real {
        operator_namespace: String,
        operator_pods: String,
    },
}

struct Env {
    client: kube::Client,
    ns: String,
    backend: Backend,
    /// MacpAuth objects to delete at the end (real clusters only).
    created: Vec<String>,
}

impl Env {
    /// The backend the environment asks for (see the module docs).
    async fn start() -> Self {
        match std::env::var_os("MACP_E2E_KUBECONFIG") {
            Some(path) => {
                let ns = std::env::var("MACP_E2E_NAMESPACE").unwrap_or_else(|_| "macp-e2e".into());
                let op_ns = std::env::var("MACP_E2E_OPERATOR_NAMESPACE")
                    .unwrap_or_else(|_| "macp-system".into());
                eprintln!("e2e: real cluster from {path:?}, namespace {ns}");
                Self::real(Path::new(&path), &ns, &op_ns).await
            }
            None => {
                eprintln!(
                    "e2e: simulated cluster (MACP_E2E_KUBECONFIG is unset; docs/testing.md explains the real-cluster run)"
                );
                let sim = Sim::start().await;
                Self {
                    client: sim.server.client(),
                    ns: SIM_NS.into(),
                    backend: Backend::Simulated(Box::new(sim)),
                    created: Vec::new(),
                }
            }
        }
    }

    async fn real(kubeconfig: &Path, ns: &str, operator_namespace: &str) -> Self {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("kubeconfig");
        let client = kube::Client::try_from(config).expect("client");
        Self {
            client,
            ns: ns.into(),
            backend: Backend::Real {
                operator_namespace: operator_namespace.into(),
                operator_pods: "app.kubernetes.io/name=macp-auth-operator".into(),
            },
            created: Vec::new(),
        }
    }

    fn is_real(&self) -> bool {
        matches!(self.backend, Backend::Real { .. })
    }

    fn api(&self) -> Api<MacpAuth> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates a MacpAuth; on a real cluster the name gets a random suffix
    /// (earlier runs' objects may remain) and is returned.
    async fn create(&mut self, base: &str, spec: Value) -> String {
        let name = if self.is_real() {
            format!("{base}-{:04x}", rand::random::<u16>())
        } else {
            base.to_string()
        };
        let m = MacpAuth::new(&name, serde_json::from_value(spec).expect("spec"));
        self.api()
            .create(&PostParams::default(), &m)
            .await
            .expect("create MacpAuth");
        self.created.push(name.clone());
        name
    }

    async fn status(&self, name: &str) -> MacpAuthStatus {
        self.api()
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|m| m.status)
            .unwrap_or_default()
    }

    async fn active_private_kid(&self, name: &str) -> Option<String> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        let s = secrets
            .get_opt(&resources::secret_name(name))
            .await
            .ok()??;
        let bytes = s.data?.get("active.jwk.json")?.0.clone();
        let jwk: Value = serde_json::from_slice(&bytes).ok()?;
        jwk.get("kid")?.as_str().map(str::to_string)
    }

    async fn event_reasons(&self, name: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        events
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.reason)
            .collect()
    }

    async fn annotate(&self, name: &str, key: &str, value: &str) {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        self.api()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate");
    }

    async fn wait_for(
        &self,
        name: &str,
        what: &str,
        mut done: impl FnMut(&MacpAuthStatus) -> bool,
    ) -> MacpAuthStatus {
        let start = Instant::now();
        loop {
            let s = self.status(name).await;
            if done(&s) {
                return s;
            }
            if start.elapsed() > PATIENCE {
                panic!("timed out waiting for {what}; status: {s:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ready, no rotation in flight.
    async fn wait_ready(&self, name: &str) -> MacpAuthStatus {
        self.wait_for(name, "Ready", |s| {
            ready(s)
                && s.rotation
                    .as_ref()
                    .is_none_or(|r| r.phase == RotationPhase::Idle)
        })
        .await
    }

    /// The Service's ready endpoints, read through the API as kube-proxy would.
    async fn endpoints(&self, name: &str) -> Arc<ApiEndpoints> {
        Arc::new(
            ApiEndpoints::start(
                self.client.clone(),
                &self.ns,
                name,
                Duration::from_millis(100),
            )
            .await,
        )
    }

    /// A Service stand-in and a load generator minting through the pods.
    async fn load(
        &self,
        name: &str,
        alg: jsonwebtoken::Algorithm,
    ) -> (ServiceProxy, LoadGenerator) {
        self.load_algs(name, vec![alg]).await
    }

    /// [`Env::load`] with a verifier that accepts each of `algs`.
    async fn load_algs(
        &self,
        name: &str,
        algs: Vec<jsonwebtoken::Algorithm>,
    ) -> (ServiceProxy, LoadGenerator) {
        let endpoints = self.endpoints(name).await;
        let proxy = ServiceProxy::start_with(endpoints.clone())
            .await
            .expect("service proxy");
        let mut config = LoadConfig::new(&self.ns, name, CACHE_TTL);
        config.algorithms = algs;
        config.max_duration = PATIENCE * 2;
        config.pause = Duration::from_millis(2);
        let load = LoadGenerator::start_with(endpoints, proxy.clone(), config);
        (proxy, load)
    }

    /// Kills the operator and lets it come back: in-process, an aborted task
    /// restarted after a pause; on a real cluster, its pods deleted (their
    /// Deployment replaces them).
    async fn kill_operator(&mut self) {
        match &mut self.backend {
            Backend::Simulated(sim) => {
                sim.operator.kill().await;
                // Down long enough for timers to run out meanwhile.
                tokio::time::sleep(Duration::from_millis(700)).await;
                sim.operator.restart();
            }
            Backend::Real {
                operator_namespace,
                operator_pods,
            } => {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), operator_namespace);
                let lp = ListParams::default().labels(operator_pods);
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                };
                pods.delete_collection(&dp, &lp)
                    .await
                    .expect("delete operator pods");
            }
        }
    }

    async fn shutdown(self) {
        match self.backend {
            Backend::Simulated(sim) => sim.shutdown().await,
            Backend::Real { .. } => {
                let api: Api<MacpAuth> = Api::namespaced(self.client.clone(), &self.ns);
                for name in &self.created {
                    let _ = api.delete(name, &DeleteParams::default()).await;
                }
            }
        }
    }
}

fn ready(s: &MacpAuthStatus) -> bool {
    s.conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn spec(alg: &str, prepublish: bool) -> Value {
    json!({
        "replicas": 2,
        "signingAlg": alg,
        "jwksCacheTtlSeconds": CACHE_TTL,
        "maxTtlSeconds": 600,
        "rotation": {
            "prepublish": prepublish,
            "drainSeconds": 3,
            "rolloutTimeoutSeconds": 60
        }
    })
}

/// Records when the MacpAuth's rotation phase changes, polling its status.
#[derive(Default)]
struct PhaseLog(Vec<(RotationPhase, Instant)>);

impl PhaseLog {
    /// Whether `phase` is new.
    fn note(&mut self, phase: RotationPhase) -> bool {
        if self.0.last().map(|(p, _)| *p) != Some(phase) {
            self.0.push((phase, Instant::now()));
            true
        } else {
            false
        }
    }

    fn phases(&self) -> Vec<RotationPhase> {
        self.0.iter().map(|(p, _)| *p).collect()
    }

    /// `Publishing=1.2s,Propagating=3.1s,...`: time spent in each observed phase.
    fn timings(&self) -> String {
        self.0
            .windows(2)
            .map(|w| format!("{:?}={:.1}s", w[0].0, (w[1].1 - w[0].1).as_secs_f64()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Waits until a rotation has started and then finished (history grew past
/// `history_before`), noting every phase on the way; when `kill_in` says so for
/// a newly observed phase, the operator is killed there (scenario 4).
async fn follow_rotation(
    env: &mut Env,
    name: &str,
    history_before: usize,
    log: &mut PhaseLog,
    kill_in: impl Fn(RotationPhase) -> bool,
) -> MacpAuthStatus {
    let start = Instant::now();
    loop {
        let s = env.status(name).await;
        let phase = s
            .rotation
            .as_ref()
            .map(|r| r.phase)
            .unwrap_or(RotationPhase::Idle);
        if log.note(phase) && kill_in(phase) {
            env.kill_operator().await;
        }
        if s.history.len() > history_before && phase == RotationPhase::Idle {
            return s;
        }
        if start.elapsed() > PATIENCE {
            panic!("rotation did not finish; status: {s:#?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Counts the samples in which the Secret had no active key (must stay 0).
fn watch_active_key(env: &Env, name: &str) -> (Arc<Mutex<u64>>, JoinHandle<()>) {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let secret = resources::secret_name(name);
    let missing = Arc::new(Mutex::new(0u64));
    let m = missing.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(s) = secrets.get(&secret).await
                && !s.data.is_some_and(|d| d.contains_key("active.jwk.json"))
            {
                *m.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (missing, task)
}

fn assert_clean_run(scenario: &str, report: &LoadReport) {
    assert!(
        report.minted > 500,
        "{scenario}: too few tokens to judge: {}",
        report.summary_line(scenario)
    );
    assert_eq!(
        report.verify_failures, 0,
        "{scenario}: {:?}",
        report.failure_reasons
    );
    assert_eq!(report.unknown_kid_at_verify, 0, "{scenario}");
}

/// Keeps minting until the verifier's cache has certainly refreshed: the
/// minimum a scenario runs before and after a rotation.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(CACHE_TTL + 1)).await;
}

// ------------------------------------------------------------------ scenarios

/// Scenarios 1 and 2: a routine rotation under continuous minting.
async fn routine(env: &mut Env, scenario: &str, prepublish: bool) -> LoadReport {
    let name = env.create("routine", spec("RS256", prepublish)).await;
    let before = env.wait_ready(&name).await;
    let old_kid = before.active_kid.clone().expect("active kid");
    let (_proxy, load) = env.load(&name, jsonwebtoken::Algorithm::RS256).await;
    settle().await;

    let t0 = Instant::now();
    env.annotate(&name, "macp.io/rotate", "e2e-1").await;
    let mut log = PhaseLog::default();
    let after = follow_rotation(env, &name, before.history.len(), &mut log, |_| false).await;
    let rotation_s = t0.elapsed().as_secs_f64();
    settle().await;
    let report = load.stop().await;

    let rec = after.history.last().expect("history entry");
    assert_eq!(rec.outcome, RotationOutcome::Succeeded, "{rec:?}");
    assert_eq!(rec.request_id.as_deref(), Some("e2e-1"));
    assert_eq!(rec.old_kid.as_deref(), Some(old_kid.as_str()));
    let new_kid = after.active_kid.clone().expect("active kid");
    assert_ne!(new_kid, old_kid);
    assert!(
        report.per_kid.get(&new_kid).is_some_and(|c| c.minted > 0),
        "no token signed by the new key {new_kid}: {}",
        report.summary_line(scenario)
    );
    if prepublish {
        assert!(log.phases().contains(&RotationPhase::Propagating));
    }
    println!(
        "{} rotation_s={rotation_s:.1} phases={}",
        report.summary_line(scenario),
        log.timings()
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_1_routine_rotation_with_prepublish_fails_no_verification() {
    let mut env = Env::start().await;
    let report = routine(&mut env, "routine_prepublish", true).await;
    env.shutdown().await;
    assert_clean_run("routine_prepublish", &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_2_routine_rotation_without_prepublish_measures_the_gap() {
    let mut env = Env::start().await;
    let report = routine(&mut env, "routine_no_prepublish", false).await;
    env.shutdown().await;
    // What prepublish buys: tokens of the new key reach a verifier whose cached
    // JWKS predates it. Not asserted as a count (it depends on timing); the
    // figure is printed next to scenario 1's for comparison.
    eprintln!(
        "routine_no_prepublish: {} of {} tokens carried a kid the verifier's cache did not hold; {} failed verification",
        report.unknown_kid_at_verify, report.minted, report.verify_failures
    );
}

/// Scenario 3: emergency rotation; tokens of the suspect key stop verifying
/// within the rollout time plus the cache TTL, and the suspect key never comes
/// back to any pod's JWKS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_3_emergency_rotation_cuts_off_the_suspect_key() {
    let mut env = Env::start().await;
    let name = env.create("emergency", spec("ES256", true)).await;
    let before = env.wait_ready(&name).await;
    let suspect = before.active_kid.clone().expect("active kid");
    let (proxy, load) = env.load(&name, jsonwebtoken::Algorithm::ES256).await;
    settle().await;

    // A token minted with the suspect key, as a thief would hold it.
    let stolen = mint(&proxy.url()).await;
    assert_eq!(token_kid(&stolen).as_deref(), Some(suspect.as_str()));
    // A second verifier (a runtime elsewhere) that already cached the suspect key.
    let verifier = resolver(&proxy.jwks_url(), jsonwebtoken::Algorithm::ES256);
    assert!(
        verify(&verifier, &stolen).await,
        "stolen token verifies before the emergency"
    );

    let seen = JwksWatch::start(proxy.endpoint_source());
    let t0 = Instant::now();
    env.annotate(&name, "macp.io/emergency-rotate", "INC-1")
        .await;
    let mut log = PhaseLog::default();
    let history_before = before.history.len();
    let follow = follow_rotation(&mut env, &name, history_before, &mut log, |_| false);
    let (after, cutoff) = tokio::join!(follow, async {
        loop {
            if !verify(&verifier, &stolen).await {
                return t0.elapsed();
            }
            if t0.elapsed() > PATIENCE {
                panic!("the stolen token still verifies after {PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let emergency_s = t0.elapsed().as_secs_f64();
    settle().await;
    let report = load.stop().await;
    let served = seen.stop().await;
    env.shutdown().await;

    let rec = after.history.last().expect("history entry");
    assert_eq!(rec.trigger, RotationTrigger::Emergency);
    assert_eq!(rec.request_id.as_deref(), Some("INC-1"));
    assert_eq!(rec.outcome, RotationOutcome::Succeeded, "{rec:?}");
    assert!(after.suspect_kids.contains(&suspect));
    assert!(!after.published_kids.contains(&suspect));
    assert_ne!(after.active_kid.as_deref(), Some(suspect.as_str()));
    // Cutoff bound: the emergency rotation (its rollout) plus one cache TTL,
    // plus polling slack.
    assert!(
        cutoff.as_secs_f64() <= emergency_s + CACHE_TTL as f64 + 2.0,
        "cutoff {cutoff:?} exceeds the rotation's {emergency_s:.1}s + TTL {CACHE_TTL}s"
    );
    // Once no pod served the suspect key, none ever did again.
    let gone = served
        .iter()
        .position(|(_, kids)| !kids.is_empty() && !kids.contains(&suspect))
        .expect("the suspect key was withdrawn");
    let back = served[gone..]
        .iter()
        .find(|(_, kids)| kids.contains(&suspect));
    assert!(back.is_none(), "suspect key served again: {back:?}");
    println!(
        "{} cutoff_s={:.1} emergency_rotation_s={emergency_s:.1} ttl_s={CACHE_TTL} phases={}",
        report.summary_line("emergency"),
        cutoff.as_secs_f64(),
        log.timings()
    );
    // New-key tokens that fail here are the verifier's cache catching up with
    // a key that could not be prepublished: an emergency trades them for the cutoff.
    eprintln!(
        "emergency: {} tokens of the fresh key reached the verifier before its cache refreshed",
        report.unknown_kid_at_verify
    );
}

/// Scenario 4: the operator is killed as soon as each phase is observed (an
/// aborted task in the simulation, deleted pods on a real cluster) and comes
/// back; the rotation still completes with zero failed verifications, the
/// active key is never missing, and no phase effect is skipped (every phase is
/// seen, in order) or repeated (one new key, one history entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_4_operator_killed_in_every_phase_completes_the_rotation() {
    let mut env = Env::start().await;
    let name = env.create("restarts", spec("ES256", true)).await;
    let before = env.wait_ready(&name).await;
    let old_kid = before.active_kid.clone().expect("active kid");
    let (_proxy, load) = env.load(&name, jsonwebtoken::Algorithm::ES256).await;
    let (missing, watcher) = watch_active_key(&env, &name);
    settle().await;

    env.annotate(&name, "macp.io/rotate", "crash-test").await;
    let mut log = PhaseLog::default();
    let after = follow_rotation(&mut env, &name, before.history.len(), &mut log, |p| {
        p != RotationPhase::Idle
    })
    .await;
    settle().await;
    let report = load.stop().await;
    watcher.abort();
    let active_in_secret = env.active_private_kid(&name).await;
    let restarts = match &env.backend {
        Backend::Simulated(sim) => sim.operator.starts - 1,
        Backend::Real { .. } => 0,
    };
    env.shutdown().await;

    let rec = after.history.last().expect("history entry");
    assert_eq!(rec.outcome, RotationOutcome::Succeeded, "{rec:?}");
    assert_eq!(
        after.history.len(),
        before.history.len() + 1,
        "one rotation, recorded once"
    );
    let new_kid = after.active_kid.clone().expect("active kid");
    assert_ne!(new_kid, old_kid);
    assert_eq!(rec.new_kid.as_deref(), Some(new_kid.as_str()));
    assert_eq!(active_in_secret.as_deref(), Some(new_kid.as_str()));
    // Exactly two keys ever signed: no key was generated twice.
    let kids: BTreeSet<&String> = report.per_kid.keys().collect();
    assert!(kids.len() <= 2, "kids seen: {kids:?}");
    assert_eq!(
        *missing.lock().unwrap_or_else(|e| e.into_inner()),
        0,
        "active key missing"
    );
    use RotationPhase::*;
    let seen = log.phases();
    let mut it = seen.iter();
    for p in [Publishing, Propagating, Activating, Draining, Retiring] {
        assert!(it.any(|s| *s == p), "phase {p:?} skipped: saw {seen:?}");
    }
    assert_clean_run("operator_restarts", &report);
    let killed_in: Vec<_> = seen.iter().filter(|p| **p != Idle).collect();
    println!(
        "{} restarts={restarts} killed_in={killed_in:?} phases={}",
        report.summary_line("operator_restarts"),
        log.timings()
    );
}

/// Scenario 5: the new key's pods never become ready: the rotation rolls back,
/// the old key keeps signing, and history says `RolledBack`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_5_new_key_never_ready_rolls_back() {
    let mut env = Env::start().await;
    if env.is_real() {
        eprintln!(
            "e2e rollback: SKIPPED on a real cluster: making only the new key's pods never ready needs the simulated kubelet"
        );
        env.shutdown().await;
        return;
    }
    let mut s = spec("ES256", true);
    s["rotation"]["rolloutTimeoutSeconds"] = json!(6);
    let name = env.create("rollback", s).await;
    let before = env.wait_ready(&name).await;
    let old_kid = before.active_kid.clone().expect("active kid");
    let (_proxy, load) = env.load(&name, jsonwebtoken::Algorithm::ES256).await;
    settle().await;

    // Pods of any template other than today's never pass their readiness probe.
    if let Backend::Simulated(sim) = &env.backend {
        let good: BTreeSet<String> = sim
            .cluster
            .ready_pods(&env.ns, &name)
            .into_iter()
            .map(|p| p.template_hash)
            .collect();
        sim.cluster
            .never_ready_when(move |p| !good.contains(p.template_hash));
    }

    env.annotate(&name, "macp.io/rotate", "doomed").await;
    let mut log = PhaseLog::default();
    let after = follow_rotation(&mut env, &name, before.history.len(), &mut log, |_| false).await;
    if let Backend::Simulated(sim) = &env.backend {
        sim.cluster.clear_never_ready();
    }
    settle().await;
    let report = load.stop().await;
    let active_in_secret = env.active_private_kid(&name).await;
    let reasons = env.event_reasons(&name).await;
    env.shutdown().await;

    let rec = after.history.last().expect("history entry");
    assert_eq!(rec.outcome, RotationOutcome::RolledBack, "{rec:?}");
    assert_eq!(after.active_kid.as_deref(), Some(old_kid.as_str()));
    assert_eq!(active_in_secret.as_deref(), Some(old_kid.as_str()));
    // (The RollingBack phase itself can be too short to observe: the old pods
    // never went away, so the rollback's rollout is complete at once.)
    assert!(
        reasons.iter().any(|r| r == "RotationRolledBack"),
        "no RotationRolledBack event: {reasons:?}"
    );
    // Only the old key ever signed, and every token verified.
    assert_eq!(report.per_kid.keys().collect::<Vec<_>>(), vec![&old_kid]);
    assert_clean_run("rollback", &report);
    let degraded = after
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| format!("{}={} ({})", c.type_, c.status, c.reason));
    println!(
        "{} outcome={:?} degraded={degraded:?} phases={}",
        report.summary_line("rollback"),
        rec.outcome,
        log.timings()
    );
}

/// Scenario 6: changing `signingAlg` is a routine rotation to a key of the
/// new kind, with the same zero-failure guarantee (verifiers accept both algs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_6_signing_alg_change_is_a_zero_failure_rotation() {
    let mut env = Env::start().await;
    let name = env.create("algchange", spec("RS256", true)).await;
    let before = env.wait_ready(&name).await;
    let old_kid = before.active_kid.clone().expect("active kid");
    let algs = vec![
        jsonwebtoken::Algorithm::RS256,
        jsonwebtoken::Algorithm::ES256,
    ];
    let (_proxy, load) = env.load_algs(&name, algs).await;
    settle().await;

    let patch = json!({"spec": {"signingAlg": "ES256"}});
    env.api()
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch signingAlg");
    let mut log = PhaseLog::default();
    let after = follow_rotation(&mut env, &name, before.history.len(), &mut log, |_| false).await;
    settle().await;
    let report = load.stop().await;
    env.shutdown().await;

    let rec = after.history.last().expect("history entry");
    assert_eq!(rec.outcome, RotationOutcome::Succeeded, "{rec:?}");
    assert_eq!(rec.request_id.as_deref(), Some("spec:ES256"), "{rec:?}");
    assert_eq!(rec.old_kid.as_deref(), Some(old_kid.as_str()));
    assert!(log.phases().contains(&RotationPhase::Propagating));
    let new_kid = after.active_kid.clone().expect("active kid");
    let es256_tokens = report.records.iter().filter(|r| r.kid == new_kid).count();
    assert!(es256_tokens > 0, "no token signed by the ES256 key");
    assert_clean_run("alg_change", &report);
    println!(
        "{} es256_tokens={es256_tokens} phases={}",
        report.summary_line("alg_change"),
        log.timings()
    );
}

/// Scenario 7: `rotation.interval` rotates by itself (trigger `scheduled`,
/// zero failed verifications), and `paused` stops the schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_7_scheduled_rotation_and_pause() {
    let mut env = Env::start().await;
    let mut s = spec("ES256", true);
    s["rotation"]["interval"] = json!("8s");
    let name = env.create("scheduled", s).await;
    let before = env.wait_ready(&name).await;
    assert!(before.next_rotation_time.is_some(), "{before:#?}");
    let (_proxy, load) = env.load(&name, jsonwebtoken::Algorithm::ES256).await;

    let mut log = PhaseLog::default();
    let after = follow_rotation(&mut env, &name, before.history.len(), &mut log, |_| false).await;
    let rec = after.history.last().expect("history entry");
    assert_eq!(rec.trigger, RotationTrigger::Scheduled, "{rec:?}");
    assert_eq!(rec.outcome, RotationOutcome::Succeeded, "{rec:?}");

    let patch = json!({"spec": {"rotation": {"paused": true}}});
    env.api()
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("pause");
    // A rotation the schedule started just before the pause may still finish.
    let paused = env
        .wait_for(&name, "no rotation in flight", |s| {
            s.rotation
                .as_ref()
                .is_none_or(|r| r.phase == RotationPhase::Idle)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2 * 8)).await;
    let later = env.status(&name).await;
    let report = load.stop().await;
    env.shutdown().await;

    assert_eq!(
        later.history.len(),
        paused.history.len(),
        "a rotation started while paused: {:?}",
        later.history.last()
    );
    assert_clean_run("scheduled", &report);
    println!(
        "{} rotations={} phases={}",
        report.summary_line("scheduled"),
        later.history.len(),
        log.timings()
    );
}

/// Scenario 8: the production controls of the MacpAuth reach the pods: with
/// `callerAuth` only holders of a listed token mint (401 otherwise), `audit`
/// writes one line per mint, and a rotation under authenticated load still
/// fails no verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_8_caller_auth_and_audit_reach_the_pods() {
    let mut env = Env::start().await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let callers = format!("callers-{:04x}", rand::random::<u16>());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": callers},
        "stringData": {"tokens": "first-caller-token\nload-caller-token\n"}
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create caller tokens Secret");
    let mut s = spec("ES256", true);
    s["callerAuth"] = json!({"secretName": callers});
    s["audit"] = json!({"enabled": true});
    let name = env.create("controls", s).await;
    let before = env.wait_ready(&name).await;
    let endpoints = env.endpoints(&name).await;
    let proxy = ServiceProxy::start_with(endpoints.clone())
        .await
        .expect("service proxy");

    let anonymous = reqwest::Client::new()
        .post(format!("{}/tokens", proxy.url()))
        .json(&json!({"sender": "anonymous", "scopes": {}}))
        .send()
        .await
        .expect("mint");
    assert_eq!(anonymous.status().as_u16(), 401);
    let body: Value = anonymous.json().await.expect("JSON error body");
    assert!(body["error"].is_string(), "{body}");

    let mut config = LoadConfig::new(&env.ns, &name, CACHE_TTL);
    config.algorithms = vec![jsonwebtoken::Algorithm::ES256];
    config.max_duration = PATIENCE * 2;
    config.pause = Duration::from_millis(2);
    config.caller_token = Some("load-caller-token".into());
    let load = LoadGenerator::start_with(endpoints.clone(), proxy.clone(), config);
    settle().await;
    env.annotate(&name, "macp.io/rotate", "with-controls").await;
    let mut log = PhaseLog::default();
    let after = follow_rotation(&mut env, &name, before.history.len(), &mut log, |_| false).await;
    settle().await;
    let report = load.stop().await;

    let audit_lines = match &env.backend {
        Backend::Simulated(sim) => sim
            .cluster
            .pods()
            .iter()
            .filter(|p| p.deployment == name)
            .flat_map(|p| sim.cluster.pod_logs(&p.namespace, &p.name))
            .filter(|l| l.contains("\"outcome\"") && l.contains("load-"))
            .count(),
        Backend::Real { .. } => 0,
    };
    let simulated = !env.is_real();
    env.shutdown().await;

    let rec = after.history.last().expect("history entry");
    assert_eq!(rec.outcome, RotationOutcome::Succeeded, "{rec:?}");
    assert_eq!(report.mint_errors, 0, "{:?}", report.mint_error_reasons);
    assert_clean_run("controls", &report);
    // (On a real cluster the pods' logs are not read: `kubectl logs` shows them.)
    if simulated {
        assert!(audit_lines > 0, "no audit line in the pods' logs");
    }
    println!(
        "{} audit_lines={audit_lines} phases={}",
        report.summary_line("controls"),
        log.timings()
    );
}

/// Scenario 9: `emergency.maxTtlSeconds`: from the emergency annotation the
/// pods mint with the lower max TTL, and once the emergency is over and
/// `drainSeconds` have passed the operator restores the normal one by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_9_emergency_ttl_clamp_is_applied_and_lifted() {
    let mut env = Env::start().await;
    let mut s = spec("ES256", true);
    s["emergency"] = json!({"maxTtlSeconds": 60});
    let name = env.create("clamp", s).await;
    let before = env.wait_ready(&name).await;
    let endpoints = env.endpoints(&name).await;
    // Every pod must agree: ask each one directly, not through a Service.
    let all_pods_grant = |ttl: u64| {
        let endpoints = endpoints.clone();
        async move {
            let eps = endpoints.endpoints();
            if eps.is_empty() {
                return false;
            }
            for ep in eps {
                match mint_ttl(&format!("http://{ep}"), 600).await {
                    Some(t) if t == ttl => {}
                    _ => return false,
                }
            }
            true
        }
    };
    assert!(
        all_pods_grant(600).await,
        "600 s tokens before the emergency"
    );

    let t0 = Instant::now();
    env.annotate(&name, "macp.io/emergency-rotate", "INC-TTL")
        .await;
    let clamped = env
        .wait_for(&name, "the clamp in status", |s| {
            s.emergency_ttl_clamp.is_some()
        })
        .await;
    assert_eq!(
        clamped
            .emergency_ttl_clamp
            .as_ref()
            .map(|c| c.max_ttl_seconds),
        Some(60)
    );
    wait_until("every pod grants at most 60 s", || all_pods_grant(60)).await;
    let clamp_s = t0.elapsed().as_secs_f64();

    let mut log = PhaseLog::default();
    let after = follow_rotation(&mut env, &name, before.history.len(), &mut log, |_| false).await;
    let rec = after.history.last().expect("history entry");
    assert_eq!(rec.trigger, RotationTrigger::Emergency);
    assert_eq!(rec.outcome, RotationOutcome::Succeeded, "{rec:?}");
    let lifted = env
        .wait_for(&name, "the clamp lifted", |s| {
            s.emergency_ttl_clamp.is_none()
        })
        .await;
    assert!(lifted.emergency_ttl_clamp.is_none());
    wait_until("every pod grants 600 s again", || all_pods_grant(600)).await;
    let restored_s = t0.elapsed().as_secs_f64();
    let reasons = env.event_reasons(&name).await;
    env.shutdown().await;
    for r in ["EmergencyTtlClamp", "EmergencyTtlRestored"] {
        assert!(reasons.iter().any(|x| x == r), "no {r} event: {reasons:?}");
    }
    println!(
        "e2e emergency_ttl_clamp: clamped_after_s={clamp_s:.1} restored_after_s={restored_s:.1} phases={}",
        log.timings()
    );
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        if start.elapsed() > PATIENCE {
            panic!("timed out: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Mints asking for `ttl` seconds; the lifetime granted (`expires_in_seconds`).
async fn mint_ttl(base: &str, ttl: u64) -> Option<u64> {
    let body: Value = reqwest::Client::new()
        .post(format!("{base}/tokens"))
        .json(&json!({"sender": "ttl-check", "scopes": {}, "ttl_seconds": ttl}))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["expires_in_seconds"].as_u64()
}

/// The real-cluster backend, run in CI against the simulation exposed through
/// a kubeconfig file: the code path `MACP_E2E_KUBECONFIG` takes, end to end
/// (kubeconfig loading, API-only endpoints and status, cleanup), with
/// scenario 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_real_cluster_backend_through_a_kubeconfig() {
    let sim = Sim::start().await;
    let dir = std::env::temp_dir().join(format!("macp-e2e-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {}\nusers:\n- name: sim\n  user: {{}}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\ncurrent-context: sim\n",
            sim.server.url()
        ),
    )
    .expect("write kubeconfig");
    let mut env = Env::real(&kubeconfig, SIM_NS, "macp-system").await;
    let report = routine(&mut env, "routine_prepublish_via_kubeconfig", true).await;
    let created = env.created.clone();
    env.shutdown().await;
    // Cleanup deleted what the scenario created.
    for name in created {
        assert!(
            sim.server
                .get_as::<MacpAuth>(Some(SIM_NS), &name)
                .expect("get")
                .is_none(),
            "{name} left behind"
        );
    }
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_clean_run("routine_prepublish_via_kubeconfig", &report);
}

// ------------------------------------------------------------------ helpers

fn resolver(jwks_url: &str, alg: jsonwebtoken::Algorithm) -> JwtBearerResolver {
    let config = JwtConfig {
        issuer: "macp-auth-service".into(),
        audience: "macp-runtime".into(),
        algorithms: vec![alg],
    };
    JwtBearerResolver::from_url(config, jwks_url.to_string(), CACHE_TTL)
}

async fn verify(resolver: &JwtBearerResolver, token: &str) -> bool {
    let mut md = tonic::metadata::MetadataMap::new();
    let Ok(value) = format!("Bearer {token}").parse() else {
        return false;
    };
    md.insert("authorization", value);
    matches!(resolver.resolve(&md).await, Ok(Some(_)))
}

async fn mint(base: &str) -> String {
    let body: Value = reqwest::Client::new()
        .post(format!("{base}/tokens"))
        .json(&json!({"sender": "thief", "scopes": {}}))
        .send()
        .await
        .expect("mint")
        .json()
        .await
        .expect("mint body");
    body["token"].as_str().expect("token").to_string()
}

type JwksSamples = Vec<(Instant, BTreeSet<String>)>;

/// Polls every ready pod's JWKS directly, recording the union of kids served
/// at each sample.
struct JwksWatch {
    samples: Arc<Mutex<JwksSamples>>,
    task: JoinHandle<()>,
}

impl JwksWatch {
    fn start(endpoints: Arc<dyn EndpointSource>) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let out = samples.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_millis(500))
                .build()
                .unwrap_or_default();
            loop {
                let mut kids = BTreeSet::new();
                for ep in endpoints.endpoints() {
                    let url = format!("http://{ep}/.well-known/jwks.json");
                    if let Ok(resp) = http.get(&url).send().await
                        && let Ok(v) = resp.json::<Value>().await
                    {
                        for k in v["keys"].as_array().into_iter().flatten() {
                            if let Some(kid) = k["kid"].as_str() {
                                kids.insert(kid.to_string());
                            }
                        }
                    }
                }
                out.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), kids));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { samples, task }
    }

    async fn stop(self) -> JwksSamples {
        self.task.abort();
        let _ = self.task.await;
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
