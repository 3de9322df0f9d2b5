//! Layer 4 (DESIGN section 7): the real operator (its `kube_runtime`
//! controller, real kube client, real HTTP prober) drives a simulated cluster
//! whose pods are real token-service processes on 127.0.0.x, while a load
//! generator mints through the pods and verifies every token with the MACP
//! runtime's own verifier (`macp_auth`'s `JwtBearerResolver`, cache TTL = the
//! resource's `jwksCacheTtlSeconds`).
//!
//! Each scenario prints one line, `e2e <scenario>: minted=<n> verify_failures=<n> ...`,
//! followed by its own figures (phase timings, cutoff seconds), so runs can be
//! compared. `scripts/e2e` runs them alone with their output shown.
//!
//! Against a real cluster: see [`macp_auth_e2e::real`] and docs/testing.md.
//! Without `MACP_E2E_KUBECONFIG` every scenario runs against the simulation and
//! says so on stderr.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use macp_auth::auth::resolver::AuthResolver;
use macp_auth::auth::resolvers::jwt_bearer::{JwtBearerResolver, JwtConfig};
use macp_auth_e2e::apiserver::FakeApiServer;
use macp_auth_e2e::binary::service_binary_async;
use macp_auth_e2e::cluster::{Cluster, ClusterConfig};
use macp_auth_e2e::load::{LoadConfig, LoadGenerator, LoadReport, token_kid};
use macp_auth_e2e::proxy::ServiceProxy;
use macp_auth_operator::crd::{
    MacpAuth, MacpAuthStatus, RotationOutcome, RotationPhase, RotationTrigger,
};
use macp_auth_operator::{HttpProber, Settings, resources};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const NS: &str = "e2e";
/// The verifiers' JWKS cache TTL in these scenarios (seconds).
const CACHE_TTL: u64 = 3;
/// Generous bound for anything the operator and the simulated kubelet do
/// together on a loaded 2-core machine; scenarios finish far sooner.
const PATIENCE: Duration = Duration::from_secs(120);

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

struct Env {
    server: FakeApiServer,
    cluster: Cluster,
    operator: Operator,
}

impl Env {
    async fn start() -> Self {
        eprintln!(
            "e2e: simulated cluster (set MACP_E2E_KUBECONFIG to run against a real one; docs/testing.md)"
        );
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

    fn api(&self) -> Api<MacpAuth> {
        Api::namespaced(self.server.client(), NS)
    }

    async fn create(&self, name: &str, spec: Value) {
        let m = MacpAuth::new(name, serde_json::from_value(spec).expect("spec"));
        self.api()
            .create(&PostParams::default(), &m)
            .await
            .expect("create MacpAuth");
    }

    fn status(&self, name: &str) -> MacpAuthStatus {
        self.server
            .get_as::<MacpAuth>(Some(NS), name)
            .ok()
            .flatten()
            .and_then(|m| m.status)
            .unwrap_or_default()
    }

    fn active_private_kid(&self, name: &str) -> Option<String> {
        let s = self
            .server
            .get_as::<Secret>(Some(NS), &resources::secret_name(name))
            .ok()??;
        let bytes = s.data?.get("active.jwk.json")?.0.clone();
        let jwk: Value = serde_json::from_slice(&bytes).ok()?;
        jwk.get("kid")?.as_str().map(str::to_string)
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
            let s = self.status(name);
            if done(&s) {
                return s;
            }
            if start.elapsed() > PATIENCE {
                panic!("timed out waiting for {what}; status: {s:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ready, no rotation in flight, and the active kid is what every pod signs with.
    async fn wait_ready(&self, name: &str) -> MacpAuthStatus {
        self.wait_for(name, "Ready", |s| {
            ready(s)
                && s.rotation
                    .as_ref()
                    .is_none_or(|r| r.phase == RotationPhase::Idle)
        })
        .await
    }

    async fn load(
        &self,
        name: &str,
        alg: jsonwebtoken::Algorithm,
    ) -> (ServiceProxy, LoadGenerator) {
        let proxy = ServiceProxy::start(self.server.handle(), NS, name)
            .await
            .expect("service proxy");
        let mut config = LoadConfig::new(NS, name, CACHE_TTL);
        config.algorithms = vec![alg];
        config.max_duration = PATIENCE * 2;
        config.pause = Duration::from_millis(2);
        let load = LoadGenerator::start(self.server.handle(), proxy.clone(), config);
        (proxy, load)
    }

    async fn shutdown(mut self) {
        self.operator.kill().await;
        self.cluster.shutdown().await;
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
#[derive(Clone, Default)]
struct PhaseLog(Arc<Mutex<Vec<(RotationPhase, Instant)>>>);

impl PhaseLog {
    fn note(&self, phase: RotationPhase) -> bool {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if log.last().map(|(p, _)| *p) != Some(phase) {
            log.push((phase, Instant::now()));
            true
        } else {
            false
        }
    }

    fn phases(&self) -> Vec<RotationPhase> {
        let log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().map(|(p, _)| *p).collect()
    }

    /// `Publishing=1.2s,Propagating=3.1s,...`: time spent in each observed phase.
    fn timings(&self) -> String {
        let log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        log.windows(2)
            .map(|w| format!("{:?}={:.1}s", w[0].0, (w[1].1 - w[0].1).as_secs_f64()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Waits until a rotation has started and then finished (history grew past
/// `history_before`), noting every phase on the way; `on_phase` runs at each
/// newly observed phase (scenario 4 kills the operator there).
async fn follow_rotation(
    env: &mut Env,
    name: &str,
    history_before: usize,
    log: &PhaseLog,
    mut on_phase: impl FnMut(RotationPhase) -> bool,
) -> MacpAuthStatus {
    let start = Instant::now();
    loop {
        let s = env.status(name);
        let phase = s
            .rotation
            .as_ref()
            .map(|r| r.phase)
            .unwrap_or(RotationPhase::Idle);
        if log.note(phase) && on_phase(phase) {
            env.operator.kill().await;
            // Down long enough for timers to run out meanwhile.
            tokio::time::sleep(Duration::from_millis(700)).await;
            env.operator.restart();
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

/// Watches the Secret's active key: the scenario fails if it is ever missing.
fn watch_active_key(server: &FakeApiServer, name: &str) -> (Arc<Mutex<u64>>, JoinHandle<()>) {
    let handle = server.handle();
    let secret = resources::secret_name(name);
    let missing = Arc::new(Mutex::new(0u64));
    let m = missing.clone();
    let task = tokio::spawn(async move {
        loop {
            let present = handle
                .get("", "secrets", Some(NS), &secret)
                .and_then(|s| s.pointer("/data/active.jwk.json").cloned())
                .is_some();
            if !present {
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

/// Mints on every pod until the verifier's cache (and the pods) settle on the
/// new key: the minimum a scenario should run after the rotation.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(CACHE_TTL + 1)).await;
}

// ------------------------------------------------------------------ scenarios

/// Scenario 1 (and 2): a routine rotation under continuous minting.
async fn routine(scenario: &str, prepublish: bool) -> LoadReport {
    let mut env = Env::start().await;
    env.create("auth", spec("RS256", prepublish)).await;
    let before = env.wait_ready("auth").await;
    let old_kid = before.active_kid.clone().expect("active kid");
    let (_proxy, load) = env.load("auth", jsonwebtoken::Algorithm::RS256).await;
    // Warm the verifier on the old key first.
    settle().await;

    let t0 = Instant::now();
    env.annotate("auth", "macp.io/rotate", "e2e-1").await;
    let log = PhaseLog::default();
    let after = follow_rotation(&mut env, "auth", before.history.len(), &log, |_| false).await;
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
    env.shutdown().await;
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_1_routine_rotation_with_prepublish_fails_no_verification() {
    let report = routine("routine_prepublish", true).await;
    assert_clean_run("routine_prepublish", &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_2_routine_rotation_without_prepublish_measures_the_gap() {
    let report = routine("routine_no_prepublish", false).await;
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
    env.create("auth", spec("ES256", true)).await;
    let before = env.wait_ready("auth").await;
    let suspect = before.active_kid.clone().expect("active kid");
    let (proxy, load) = env.load("auth", jsonwebtoken::Algorithm::ES256).await;
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

    let seen = JwksWatch::start(&env.cluster);
    let t0 = Instant::now();
    env.annotate("auth", "macp.io/emergency-rotate", "INC-1")
        .await;
    let log = PhaseLog::default();
    let follow = follow_rotation(&mut env, "auth", before.history.len(), &log, |_| false);
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
    let rollout = after
        .history
        .last()
        .map(|r| (r.finished_at - r.started_at).num_milliseconds() as f64 / 1000.0)
        .unwrap_or_default();
    settle().await;
    let report = load.stop().await;
    let served = seen.stop().await;

    let rec = after.history.last().expect("history entry");
    assert_eq!(rec.trigger, RotationTrigger::Emergency);
    assert_eq!(rec.request_id.as_deref(), Some("INC-1"));
    assert_eq!(rec.outcome, RotationOutcome::Succeeded, "{rec:?}");
    assert!(after.suspect_kids.contains(&suspect));
    assert!(!after.published_kids.contains(&suspect));
    assert_ne!(after.active_kid.as_deref(), Some(suspect.as_str()));
    // Cutoff bound: the emergency's own rollout plus one cache TTL (+ polling slack).
    assert!(
        cutoff.as_secs_f64() <= rollout + CACHE_TTL as f64 + 2.0,
        "cutoff {cutoff:?} exceeds rollout {rollout}s + TTL {CACHE_TTL}s"
    );
    // Once no pod served the suspect key, none ever did again.
    let gone = served
        .iter()
        .position(|(_, kids)| !kids.contains(&suspect))
        .expect("the suspect key was withdrawn");
    let back = served[gone..]
        .iter()
        .find(|(_, kids)| kids.contains(&suspect));
    assert!(back.is_none(), "suspect key served again: {back:?}");
    println!(
        "{} cutoff_s={:.1} rollout_s={rollout:.1} ttl_s={CACHE_TTL} phases={}",
        report.summary_line("emergency"),
        cutoff.as_secs_f64(),
        log.timings()
    );
    env.shutdown().await;
}

/// Scenario 4: the operator is killed (task aborted, nothing flushed) as soon
/// as each phase is observed, and restarted; the rotation still completes with
/// zero failed verifications, the active key is never missing, and no phase
/// effect is skipped (every phase is seen, in order) or repeated (one new key,
/// one history entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_4_operator_killed_in_every_phase_completes_the_rotation() {
    let mut env = Env::start().await;
    env.create("auth", spec("ES256", true)).await;
    let before = env.wait_ready("auth").await;
    let old_kid = before.active_kid.clone().expect("active kid");
    let (_proxy, load) = env.load("auth", jsonwebtoken::Algorithm::ES256).await;
    let (missing, watcher) = watch_active_key(&env.server, "auth");
    settle().await;

    env.annotate("auth", "macp.io/rotate", "crash-test").await;
    let log = PhaseLog::default();
    let mut kills = Vec::new();
    let after = follow_rotation(&mut env, "auth", before.history.len(), &log, |p| {
        if p != RotationPhase::Idle {
            kills.push(p);
            true
        } else {
            false
        }
    })
    .await;
    settle().await;
    let report = load.stop().await;
    watcher.abort();

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
    assert_eq!(
        env.active_private_kid("auth").as_deref(),
        Some(new_kid.as_str())
    );
    // Exactly two keys ever signed: no key was generated twice.
    let kids: BTreeSet<&String> = report.per_kid.keys().collect();
    assert!(kids.len() <= 2, "kids seen: {kids:?}");
    assert_eq!(
        *missing.lock().unwrap_or_else(|e| e.into_inner()),
        0,
        "active key missing"
    );
    use RotationPhase::*;
    let expected = [Publishing, Propagating, Activating, Draining, Retiring];
    let seen = log.phases();
    let mut it = seen.iter();
    for p in expected {
        assert!(it.any(|s| *s == p), "phase {p:?} skipped: saw {seen:?}");
    }
    assert_clean_run("operator_restarts", &report);
    println!(
        "{} restarts={} killed_in={:?} phases={}",
        report.summary_line("operator_restarts"),
        env.operator.starts - 1,
        kills,
        log.timings()
    );
    env.shutdown().await;
}

/// Scenario 5: the new key's pods never become ready: the rotation rolls back,
/// the old key keeps signing, and history says `RolledBack`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_5_new_key_never_ready_rolls_back() {
    let mut env = Env::start().await;
    let mut s = spec("ES256", true);
    s["rotation"]["rolloutTimeoutSeconds"] = json!(6);
    env.create("auth", s).await;
    let before = env.wait_ready("auth").await;
    let old_kid = before.active_kid.clone().expect("active kid");
    let (_proxy, load) = env.load("auth", jsonwebtoken::Algorithm::ES256).await;
    settle().await;

    // Pods of any template other than today's never pass their readiness probe.
    let good: BTreeSet<String> = env
        .cluster
        .ready_pods(NS, "auth")
        .into_iter()
        .map(|p| p.template_hash)
        .collect();
    env.cluster
        .never_ready_when(move |p| !good.contains(p.template_hash));

    env.annotate("auth", "macp.io/rotate", "doomed").await;
    let log = PhaseLog::default();
    let after = follow_rotation(&mut env, "auth", before.history.len(), &log, |_| false).await;
    env.cluster.clear_never_ready();
    settle().await;
    let report = load.stop().await;

    let rec = after.history.last().expect("history entry");
    assert_eq!(rec.outcome, RotationOutcome::RolledBack, "{rec:?}");
    assert_eq!(after.active_kid.as_deref(), Some(old_kid.as_str()));
    assert_eq!(
        env.active_private_kid("auth").as_deref(),
        Some(old_kid.as_str())
    );
    // (The RollingBack phase itself can be too short to observe: the old pods
    // never went away, so the rollback rollout is complete at once.)
    let reasons: Vec<String> = env
        .server
        .list("events.k8s.io", "events", Some(NS))
        .into_iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect();
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
    env.shutdown().await;
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

/// Polls every ready pod's JWKS directly, recording the union of kids served
/// at each sample.
type JwksSamples = Vec<(Instant, BTreeSet<String>)>;

struct JwksWatch {
    samples: Arc<Mutex<JwksSamples>>,
    task: JoinHandle<()>,
}

impl JwksWatch {
    fn start(cluster: &Cluster) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let out = samples.clone();
        let pods = PodLister(cluster.pods_handle());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_millis(500))
                .build()
                .unwrap_or_default();
            loop {
                let mut kids = BTreeSet::new();
                for (ip, port) in pods.ready() {
                    let url = format!("http://{ip}:{port}/.well-known/jwks.json");
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

struct PodLister(macp_auth_e2e::cluster::PodsHandle);

impl PodLister {
    fn ready(&self) -> Vec<(std::net::Ipv4Addr, u16)> {
        self.0
            .pods()
            .into_iter()
            .filter(|p| p.ready && !p.terminating)
            .map(|p| (p.ip, p.port))
            .collect()
    }
}
