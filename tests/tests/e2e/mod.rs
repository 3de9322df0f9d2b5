//! The end-to-end scenarios' harness, shared by the scenario files
//! (`e2e_rotation.rs`, `e2e_evidence.rs`, ...): the operator in-process or on
//! a real cluster, the simulated cluster, the MacpAuth and its Service, the
//! load, and the assertions every routine scenario makes. See
//! `e2e_rotation.rs` for the backends and what the cluster simulates.

// Each scenario file uses a different subset.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ops::ControlFlow::{Break, Continue};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use macp_auth_e2e::apiserver::FakeApiServer;
use macp_auth_e2e::binary::service_binary_async;
use macp_auth_e2e::cluster::{Cluster, ClusterConfig};
use macp_auth_e2e::endpoints::{ApiEndpoints, DEFAULT_ENDPOINT_LAG, LaggedEndpoints};
use macp_auth_e2e::load::{
    LATE_CHECKS_MISSED_PER_MILLE, LoadConfig, LoadGenerator, LoadReport, VERIFIER_LEEWAY, token_kid,
};
use macp_auth_e2e::proxy::ServiceProxy;
use macp_auth_e2e::wait::wait_until;
use macp_auth_operator::crd::{MacpAuth, MacpAuthStatus, RotationPhase};
use macp_auth_operator::fixtures;
use macp_auth_operator::validate::VERIFIER_LEEWAY_SECONDS;
use macp_auth_operator::{HttpProber, Settings, rbac, resources};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Namespace of the simulated scenarios.
pub const SIM_NS: &str = "e2e";
/// The verifiers' JWKS cache TTL in these scenarios (seconds): several
/// rollouts long (a rollout of three pods takes about 5 to 10 s here, the
/// terminating pods' shutdown delay included), as 300 s is to a real one.
pub const CACHE_TTL: u64 = 20;
/// The longest token lifetime (`maxTtlSeconds`), and the mix the load asks for.
pub const MAX_TTL: u64 = 6;
pub const TTLS: [u64; 3] = [2, 3, MAX_TTL];
/// The shortest drain the operator accepts: the longest token plus the
/// verifier's clock leeway (which is not scaled: `macp-auth` fixes it).
pub const DRAIN: i64 = MAX_TTL as i64 + VERIFIER_LEEWAY_SECONDS;
pub const REPLICAS: i32 = 3;
/// Generous bound for anything the operator and the cluster do together on a
/// loaded 2-core machine; scenarios finish far sooner.
pub const PATIENCE: Duration = Duration::from_secs(300);

/// How long, from the emergency annotation, the operator may take to withdraw
/// the suspect key from every pod's JWKS, terminating pods included: one
/// rollout of the three pods (each new pod ready within a few scaled probe
/// periods, each old one serving on through its shutdown delay), with room
/// for a loaded machine. The test's own figure, not the operator's.
pub const WITHDRAW_BOUND: Duration = Duration::from_secs(45);

// ------------------------------------------------------------------ harness

/// How the simulated API server binds the operator's RBAC (operator/src/rbac.rs):
/// every request outside the rules gets 403, as on a real cluster.
#[derive(Clone, Copy, Debug)]
pub enum RbacMode {
    /// A ClusterRole: the operator watches every namespace.
    ClusterWide,
    /// A Role in the scenario's namespace only, which the operator watches.
    Namespaced,
}

impl RbacMode {
    pub fn rbac(self) -> rbac::Mode {
        match self {
            RbacMode::ClusterWide => rbac::Mode::ClusterWide,
            RbacMode::Namespaced => rbac::Mode::Namespaced(vec![SIM_NS.to_string()]),
        }
    }

    pub fn watch_namespaces(self) -> Vec<String> {
        match self {
            RbacMode::ClusterWide => Vec::new(),
            RbacMode::Namespaced => vec![SIM_NS.to_string()],
        }
    }
}

/// The operator running in-process, restartable (abort = crash, no cleanup).
pub struct Operator {
    pub client: kube::Client,
    pub mode: RbacMode,
    pub task: Option<JoinHandle<()>>,
    pub starts: u32,
}

impl Operator {
    pub fn start(client: kube::Client, mode: RbacMode) -> Self {
        let mut op = Self {
            client,
            mode,
            task: None,
            starts: 0,
        };
        op.restart();
        op
    }

    pub fn restart(&mut self) {
        let settings = Settings {
            service_image: "registry.test/macp-auth-service:e2e".into(),
            probe_timeout: Duration::from_secs(1),
            watch_namespaces: self.mode.watch_namespaces(),
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
    pub async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

/// A simulated cluster with its operator.
pub struct Sim {
    pub server: FakeApiServer,
    pub cluster: Cluster,
    pub operator: Operator,
}

impl Sim {
    /// The operator's client is held to its RBAC rules in `mode`.
    pub async fn start(mode: RbacMode) -> Self {
        let bin = service_binary_async().await.expect("service binary");
        let server = FakeApiServer::start().await.expect("API server");
        server.enforce_operator_rbac(&mode.rbac(), None);
        let cluster = Cluster::start(server.handle(), ClusterConfig::new(bin));
        let client = server.operator_client().expect("operator client");
        let operator = Operator::start(client, mode);
        Self {
            server,
            cluster,
            operator,
        }
    }

    /// Stops the operator and the cluster; the operator's RBAC refused
    /// nothing meanwhile (a refused request is a missing rule, or a request
    /// the chart's RBAC would break on a real cluster).
    pub async fn shutdown(mut self) {
        self.operator.kill().await;
        self.cluster.shutdown().await;
        let refused: Vec<String> = self
            .server
            .forbidden()
            .iter()
            .map(|r| format!("{r:?}"))
            .collect();
        assert!(
            refused.is_empty(),
            "the API server refused {} of the operator's requests (403): {refused:#?}",
            refused.len()
        );
    }
}

pub enum Backend {
    Simulated(Box<Sim>),
    /// The operator runs in the cluster; `operator_pods` selects its pods in
    /// `operator_namespace` (to kill them).
    Real {
        operator_namespace: String,
        operator_pods: String,
    },
}

pub struct Env {
    pub client: kube::Client,
    pub ns: String,
    pub backend: Backend,
    /// MacpAuth objects to delete at the end (real clusters only).
    pub created: Vec<String>,
}

impl Env {
    /// The backend the environment asks for (see the module docs); in the
    /// simulation the operator's RBAC is enforced in `mode`.
    pub async fn start(mode: RbacMode) -> Self {
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
                let sim = Sim::start(mode).await;
                Self {
                    client: sim.server.client(),
                    ns: SIM_NS.into(),
                    backend: Backend::Simulated(Box::new(sim)),
                    created: Vec::new(),
                }
            }
        }
    }

    pub async fn real(kubeconfig: &Path, ns: &str, operator_namespace: &str) -> Self {
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

    pub fn is_real(&self) -> bool {
        matches!(self.backend, Backend::Real { .. })
    }

    pub fn api(&self) -> Api<MacpAuth> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates a MacpAuth; on a real cluster the name gets a random suffix
    /// (earlier runs' objects may remain) and is returned.
    pub async fn create(&mut self, base: &str, spec: Value) -> String {
        let name = if self.is_real() {
            format!("{base}-{:04x}", rand::random::<u16>())
        } else {
            base.to_string()
        };
        let m = fixtures::macpauth(&name).spec(spec).build();
        self.api()
            .create(&PostParams::default(), &m)
            .await
            .expect("create MacpAuth");
        self.created.push(name.clone());
        name
    }

    pub async fn status(&self, name: &str) -> MacpAuthStatus {
        self.api()
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|m| m.status)
            .unwrap_or_default()
    }

    pub async fn active_private_kid(&self, name: &str) -> Option<String> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        let s = secrets
            .get_opt(&resources::secret_name(name))
            .await
            .ok()??;
        let bytes = s.data?.get("active.jwk.json")?.0.clone();
        let jwk: Value = serde_json::from_slice(&bytes).ok()?;
        jwk.get("kid")?.as_str().map(str::to_string)
    }

    /// Every event about the MacpAuth `name`.
    pub async fn events_about(&self, name: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        events
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect()
    }

    pub async fn event_reasons(&self, name: &str) -> Vec<String> {
        self.events_about(name)
            .await
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }

    /// Events about `name` with one of `reasons` that occurred after `since`
    /// (a repeated event counts from its series' last occurrence): (reason, when).
    pub async fn events_since(
        &self,
        name: &str,
        reasons: &[&str],
        since: DateTime<Utc>,
    ) -> Vec<(String, DateTime<Utc>)> {
        self.events_about(name)
            .await
            .into_iter()
            .filter_map(|e| {
                let reason = e.reason.clone()?;
                let at = e
                    .series
                    .as_ref()
                    .map(|s| s.last_observed_time.0)
                    .or(e.event_time.as_ref().map(|t| t.0))
                    .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))?;
                Some((
                    reason,
                    DateTime::from_timestamp_micros(at.as_microsecond())?,
                ))
            })
            .filter(|(reason, at)| reasons.contains(&reason.as_str()) && *at > since)
            .collect()
    }

    pub async fn patch(&self, name: &str, patch: Value) {
        self.api()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch MacpAuth");
    }

    pub async fn annotate(&self, name: &str, key: &str, value: &str) {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        self.api()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate");
    }

    /// Waits until the MacpAuth's status satisfies `done`; returns that status.
    pub async fn wait_for(
        &self,
        name: &str,
        what: &str,
        mut done: impl FnMut(&MacpAuthStatus) -> bool,
    ) -> MacpAuthStatus {
        wait_until(what, PATIENCE, Duration::from_millis(50), async || {
            let s = self.status(name).await;
            if done(&s) { Break(s) } else { Continue(s) }
        })
        .await
    }

    /// Ready, no rotation in flight, and no rollout either (`Ready` holds
    /// through rollouts: every replica is up only once `Progressing` is not
    /// `True`).
    pub async fn wait_ready(&self, name: &str) -> MacpAuthStatus {
        self.wait_for(name, "Ready, rolled out", |s| {
            ready(s)
                && !s
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Progressing" && c.status == "True")
                && s.rotation
                    .as_ref()
                    .is_none_or(|r| r.phase == RotationPhase::Idle)
        })
        .await
    }

    /// The Service's endpoints read through the API: (every pod, what a
    /// kube-proxy that learns changes [`DEFAULT_ENDPOINT_LAG`] late routes to).
    pub async fn endpoints(&self, name: &str) -> (Arc<ApiEndpoints>, Arc<LaggedEndpoints>) {
        self.endpoints_on(name, None).await
    }

    /// [`Env::endpoints`] of the Service port named `port` (the first when `None`).
    pub async fn endpoints_on(
        &self,
        name: &str,
        port: Option<&str>,
    ) -> (Arc<ApiEndpoints>, Arc<LaggedEndpoints>) {
        let api = Arc::new(
            ApiEndpoints::start_on(
                self.client.clone(),
                &self.ns,
                name,
                port,
                Duration::from_millis(100),
            )
            .await,
        );
        let lagged = Arc::new(LaggedEndpoints::start(
            api.clone(),
            DEFAULT_ENDPOINT_LAG,
            Duration::from_millis(50),
        ));
        (api, lagged)
    }

    /// A Service stand-in and a load generator minting through the pods.
    pub async fn load(
        &self,
        name: &str,
        alg: jsonwebtoken::Algorithm,
    ) -> (ServiceProxy, LoadGenerator) {
        self.load_algs(name, vec![alg]).await
    }

    /// [`Env::load`] with a verifier that accepts each of `algs`.
    pub async fn load_algs(
        &self,
        name: &str,
        algs: Vec<jsonwebtoken::Algorithm>,
    ) -> (ServiceProxy, LoadGenerator) {
        let mut config = load_config();
        config.algorithms = algs;
        self.load_with(name, config).await
    }

    /// A Service stand-in and a load generator with `config`.
    pub async fn load_with(&self, name: &str, config: LoadConfig) -> (ServiceProxy, LoadGenerator) {
        let (_, lagged) = self.endpoints(name).await;
        let proxy = ServiceProxy::start_with(lagged)
            .await
            .expect("service proxy");
        let load = LoadGenerator::start(proxy.clone(), config)
            .await
            .expect("load generator");
        (proxy, load)
    }

    /// A load generator for a MacpAuth with `mintPort`: it mints through the
    /// Service's `mint` port and its verifiers fetch the JWKS from the `http`
    /// port, as minters and verifiers do behind the chart's NetworkPolicy.
    pub async fn load_mint_port(&self, name: &str) -> (ServiceProxy, LoadGenerator) {
        let (_, mint) = self
            .endpoints_on(name, Some(resources::MINT_PORT_NAME))
            .await;
        let (_, jwks) = self
            .endpoints_on(name, Some(resources::HTTP_PORT_NAME))
            .await;
        let proxy = ServiceProxy::start_with(mint)
            .await
            .expect("mint service proxy");
        let load = LoadGenerator::start_split(proxy.clone(), jwks, load_config())
            .await
            .expect("load generator");
        (proxy, load)
    }

    /// Kills the pod at `ip` at once: SIGKILL in the simulation, a forced
    /// deletion (grace period 0) on a real cluster.
    pub async fn kill_pod_at(&self, name: &str, ip: std::net::IpAddr) -> Option<String> {
        match &self.backend {
            Backend::Simulated(sim) => {
                let pod = sim
                    .cluster
                    .pods()
                    .into_iter()
                    .find(|p| p.deployment == name && std::net::IpAddr::V4(p.ip) == ip)?;
                sim.cluster
                    .kill_pod(&pod.namespace, &pod.name)
                    .then_some(pod.name)
            }
            Backend::Real { .. } => {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
                let list = pods.list(&ListParams::default()).await.ok()?;
                let pod = list.items.into_iter().find(|p| {
                    p.status.as_ref().and_then(|s| s.pod_ip.as_deref())
                        == Some(ip.to_string().as_str())
                })?;
                let pod_name = pod.metadata.name?;
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                };
                pods.delete(&pod_name, &dp).await.ok()?;
                Some(pod_name)
            }
        }
    }

    /// Kills the operator and lets it come back: in-process, an aborted task
    /// restarted after a pause; on a real cluster, its pods deleted (their
    /// Deployment replaces them).
    pub async fn kill_operator(&mut self) {
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

    pub async fn shutdown(self) {
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

pub fn ready(s: &MacpAuthStatus) -> bool {
    s.conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

pub fn spec(alg: &str, prepublish: bool) -> Value {
    json!({
        "replicas": REPLICAS,
        "signingAlg": alg,
        "jwksCacheTtlSeconds": CACHE_TTL,
        "maxTtlSeconds": MAX_TTL,
        "defaultTtlSeconds": MAX_TTL,
        "rotation": {
            "prepublish": prepublish,
            "drainSeconds": DRAIN,
            "rolloutTimeoutSeconds": 120,
            // These scenarios measure rotations without a standby; the
            // standby's own scenarios switch it on.
            "standby": false
        }
    })
}

/// Token holders: a mix of lifetimes up to the maximum, several verifiers.
pub fn load_config() -> LoadConfig {
    let mut config = LoadConfig::new(CACHE_TTL);
    config.max_duration = PATIENCE * 2;
    config.pause = Duration::from_millis(20);
    config.ttls = TTLS.to_vec();
    config
}

/// Records when the MacpAuth's rotation phase changes, polling its status.
#[derive(Default)]
pub struct PhaseLog(pub Vec<(RotationPhase, Instant)>);

impl PhaseLog {
    /// Whether `phase` is new.
    pub fn note(&mut self, phase: RotationPhase) -> bool {
        if self.0.last().map(|(p, _)| *p) != Some(phase) {
            self.0.push((phase, Instant::now()));
            true
        } else {
            false
        }
    }

    pub fn phases(&self) -> Vec<RotationPhase> {
        self.0.iter().map(|(p, _)| *p).collect()
    }

    /// `Publishing=1.2s,Propagating=3.1s,...`: time spent in each observed phase.
    pub fn timings(&self) -> String {
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
pub async fn follow_rotation(
    env: &mut Env,
    name: &str,
    history_before: usize,
    log: &mut PhaseLog,
    kill_in: impl Fn(RotationPhase) -> bool,
) -> MacpAuthStatus {
    let mut record = Recording::from_env(name);
    let done = wait_until(
        "the rotation to finish",
        PATIENCE,
        Duration::from_millis(25),
        async || {
            let s = env.status(name).await;
            if let Some(r) = record.as_mut() {
                r.observe(env, name, &s).await;
            }
            let phase = s
                .rotation
                .as_ref()
                .map(|r| r.phase)
                .unwrap_or(RotationPhase::Idle);
            if log.note(phase) && kill_in(phase) {
                env.kill_operator().await;
            }
            if s.history.len() > history_before && phase == RotationPhase::Idle {
                Break(s)
            } else {
                Continue(s)
            }
        },
    )
    .await;
    if let Some(r) = record {
        r.finish(env, name).await;
    }
    done
}

/// `MACP_E2E_RECORD=<dir>`: what [`follow_rotation`] saw, as JSON lines in
/// `<dir>/<MacpAuth name>.jsonl` for `scripts/timeline` (docs/timelines/):
/// each change of the status's keys and rotation, each change of the pods,
/// then the MacpAuth's events.
pub const RECORD_ENV: &str = "MACP_E2E_RECORD";

pub struct Recording {
    out: std::fs::File,
    status: Value,
    pods: Value,
}

impl Recording {
    fn from_env(name: &str) -> Option<Self> {
        let dir = std::env::var_os(RECORD_ENV)?;
        std::fs::create_dir_all(&dir).expect("create the recording directory");
        let path = Path::new(&dir).join(format!("{name}.jsonl"));
        let out = std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Some(Self {
            out,
            status: Value::Null,
            pods: Value::Null,
        })
    }

    fn write(&mut self, line: Value) {
        use std::io::Write as _;
        writeln!(self.out, "{line}").expect("write the recording");
    }

    async fn observe(&mut self, env: &Env, name: &str, s: &MacpAuthStatus) {
        let full = serde_json::to_value(s).unwrap_or_default();
        let conditions: Vec<Value> = s
            .conditions
            .iter()
            .map(|c| json!({"type": c.type_, "status": c.status, "reason": c.reason}))
            .collect();
        let status = json!({
            "activeKid": full["activeKid"],
            "publishedKids": full["publishedKids"],
            "rotation": full["rotation"],
            "keys": full["keys"],
            "conditions": conditions,
            "history": full["history"].as_array().and_then(|h| h.last()).cloned(),
        });
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        if status != self.status {
            self.write(json!({"t": now, "status": status}));
            self.status = status;
        }
        let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
        let selector = format!("app.kubernetes.io/instance={name}");
        let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await else {
            return;
        };
        let mut seen: Vec<Value> = list
            .items
            .iter()
            .map(|p| {
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|st| st.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                json!({
                    "name": p.metadata.name,
                    "keysetHash": p.metadata.annotations.as_ref()
                        .and_then(|a| a.get("macp.io/keyset-hash")),
                    "ready": ready,
                    "terminating": p.metadata.deletion_timestamp.is_some(),
                })
            })
            .collect();
        seen.sort_by_key(|p| p["name"].as_str().unwrap_or("").to_string());
        let seen = Value::Array(seen);
        if seen != self.pods {
            self.write(json!({"t": now, "pods": seen}));
            self.pods = seen;
        }
    }

    async fn finish(mut self, env: &Env, name: &str) {
        let mut events: Vec<Value> = env
            .events_about(name)
            .await
            .into_iter()
            .map(|e| {
                let at = e.event_time.as_ref().map(|t| t.0.to_string()).or(e
                    .deprecated_first_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string()));
                json!({"at": at, "type": e.type_, "reason": e.reason, "note": e.note})
            })
            .collect();
        events.sort_by_key(|e| e["at"].as_str().unwrap_or("").to_string());
        for e in events {
            self.write(json!({"event": e}));
        }
    }
}

/// Counts the samples in which the Secret had no active key (must stay 0).
pub fn watch_active_key(env: &Env, name: &str) -> (Arc<Mutex<u64>>, JoinHandle<()>) {
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

/// What every routine scenario asserts: enough tokens to judge, no failed
/// verification at mint time or later in any token's life, no failed mint.
pub fn assert_clean_run(scenario: &str, report: &LoadReport) {
    assert_no_failed_verification(scenario, report);
    assert_eq!(
        report.mint_errors, 0,
        "{scenario}: {:?}",
        report.mint_error_reasons
    );
}

/// Enough tokens to judge, and none failed verification, at mint time or
/// later in its life.
pub fn assert_no_failed_verification(scenario: &str, report: &LoadReport) {
    let line = report.summary_line(scenario);
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
    assert_eq!(report.unknown_kid_at_verify, 0, "{scenario}");
    assert_late_checks_made(scenario, report);
}

/// The re-verifications that started too late to count (the holders fell
/// behind) stay within [`LATE_CHECKS_MISSED_PER_MILLE`] of those made: a
/// missed check is a failure nobody saw.
pub fn assert_late_checks_made(scenario: &str, report: &LoadReport) {
    assert!(
        report.late_checks_missed_within_bound(),
        "{scenario}: {} late checks started too late to count, more than {LATE_CHECKS_MISSED_PER_MILLE} per thousand of {}: {}",
        report.late_checks_missed,
        report.late_checks,
        report.summary_line(scenario)
    );
}

/// The old key's last tokens with the longest lifetime were re-verified in
/// their last second, and in the last second of the verifier's leeway after
/// their expiry: the moments a drain shorter than their life, or than their
/// life plus the leeway, would break. (life, leeway) checks.
pub fn assert_old_key_held_to_the_end(
    scenario: &str,
    report: &LoadReport,
    old_kid: &str,
) -> (usize, usize) {
    let second = Duration::from_secs(1);
    let life = report.final_tokens_checked_at_end_of_life(old_kid, second, second);
    assert!(
        life > 0,
        "{scenario}: no max-TTL token of {old_kid} from its last second re-verified in its last second"
    );
    let leeway = report.final_tokens_checked_at_end_of_leeway(old_kid, second, second);
    assert!(
        leeway > 0,
        "{scenario}: no max-TTL token of {old_kid} from its last second re-verified in the last second of the verifier's leeway"
    );
    (life, leeway)
}

/// Keeps the load running until the verifier's leeway has closed for the old
/// key's last tokens (its last mint, plus the longest lifetime, plus the
/// leeway and the second `exp` is rounded to): their last checks are made
/// before the report is taken.
pub async fn hold_past_the_leeway(load: &LoadGenerator, old_kid: &str) {
    let now = load.snapshot();
    let Some(last) = now.per_kid.get(old_kid).map(|c| c.last_minted_ms) else {
        return;
    };
    let closes = Duration::from_millis(last)
        + Duration::from_secs(MAX_TTL)
        + VERIFIER_LEEWAY
        + Duration::from_secs(1);
    tokio::time::sleep(closes.saturating_sub(now.elapsed)).await;
}

/// After a rotation: the old key's last token has long expired (the drain
/// covers it), a little more minting on the final keyset.
pub async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

pub type JwksSamples = Vec<(Instant, BTreeSet<String>)>;

/// Polls the JWKS of every pod of the Service directly, terminating and
/// unready ones included (whatever can still answer), recording the union of
/// kids served at each sample.
pub struct JwksWatch {
    samples: Arc<Mutex<JwksSamples>>,
    task: JoinHandle<()>,
}

impl JwksWatch {
    pub const PERIOD: Duration = Duration::from_millis(100);

    pub fn start(pods: Arc<ApiEndpoints>) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let out = samples.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_millis(500))
                .build()
                .unwrap_or_default();
            loop {
                let mut kids = BTreeSet::new();
                for ep in pods.all_pods() {
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
                tokio::time::sleep(Self::PERIOD).await;
            }
        });
        Self { samples, task }
    }

    /// The samples so far.
    pub fn samples(&self) -> JwksSamples {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub async fn stop(self) -> JwksSamples {
        self.task.abort();
        let _ = self.task.await;
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

// ------------------------------------------------------------ the stolen tokens' cutoff

/// What a verifier adds to its cache TTL before it refuses a withdrawn key:
/// the cutoff loop's round over every verifier and stolen token, and one JWKS
/// fetch. The test's own figure, not the operator's propagation slack.
pub const CUTOFF_SLACK: Duration = Duration::from_secs(3);

/// Per verifier, when the stolen tokens were first refused (`None`: never),
/// any that verified again after that (verifier, cutoff, at), and why they
/// were refused.
pub struct StolenCutoff {
    pub cutoffs: Vec<Option<Duration>>,
    pub came_back: Vec<(usize, Duration, Duration)>,
    pub reasons: BTreeSet<String>,
}

/// Three tokens of the longest lifetime minted through the Service at
/// `base`, as a thief would hold them, each signed by `suspect` and accepted
/// by every verifier of `load` before the emergency (the verifier's leeway
/// keeps them acceptable by time alone far beyond the cutoff).
pub async fn steal_tokens(
    scenario: &str,
    base: &str,
    load: &LoadGenerator,
    suspect: &str,
) -> Vec<String> {
    let mut stolen = Vec::new();
    for _ in 0..3 {
        let body: Value = reqwest::Client::new()
            .post(format!("{base}/tokens"))
            .json(&json!({"sender": "thief", "scopes": {}, "ttl_seconds": MAX_TTL}))
            .send()
            .await
            .expect("mint")
            .json()
            .await
            .expect("mint body");
        let t = body["token"].as_str().expect("token").to_string();
        assert_eq!(token_kid(&t).as_deref(), Some(suspect), "{scenario}");
        stolen.push(t);
    }
    for i in 0..load.verifiers() {
        for t in &stolen {
            let r = load.verify_with(i, t).await;
            assert!(
                r.is_ok(),
                "{scenario}: stolen token verifies before the emergency: {r:?}"
            );
        }
    }
    stolen
}

/// Checks the stolen tokens on every verifier of `load` until each refused
/// them, then 5 s more (to see any come back), timing from `t0`.
pub async fn watch_stolen_cutoff(
    load: &LoadGenerator,
    stolen: &[String],
    t0: Instant,
) -> StolenCutoff {
    let n = load.verifiers();
    let mut cutoffs: Vec<Option<Duration>> = vec![None; n];
    let mut came_back = Vec::new();
    let mut reasons = BTreeSet::new();
    let mut all_cut_at = None;
    wait_until(
        "every verifier to refuse the stolen tokens, then 5 s more",
        PATIENCE,
        Duration::from_millis(100),
        async || {
            for (i, c) in cutoffs.iter_mut().enumerate() {
                for t in stolen {
                    match (load.verify_with(i, t).await, &c) {
                        (Err(e), None) => {
                            *c = Some(t0.elapsed());
                            reasons.insert(e);
                        }
                        (Err(e), Some(_)) => {
                            reasons.insert(e);
                        }
                        (Ok(()), Some(at)) => came_back.push((i, *at, t0.elapsed())),
                        (Ok(()), None) => {}
                    }
                }
            }
            if all_cut_at.is_none() && cutoffs.iter().all(Option::is_some) {
                all_cut_at = Some(Instant::now());
            }
            if all_cut_at.is_some_and(|a| a.elapsed() > Duration::from_secs(5)) {
                Break(())
            } else {
                // When each verifier first refused them (None: not yet).
                Continue(cutoffs.clone())
            }
        },
    )
    .await;
    StolenCutoff {
        cutoffs,
        came_back,
        reasons,
    }
}

/// The suspect key's cutoff, judged against a bound from pod polling alone
/// (`served`, never the cutoff loop): the last moment a pod served the
/// suspect key, within [`WITHDRAW_BOUND`] of the annotation at `t0`, plus one
/// poll, one cache TTL and [`CUTOFF_SLACK`]. No stolen token verifies again
/// after its cutoff, none fails by age instead, and once no pod serves the
/// suspect key none ever does again. Returns (each verifier's cutoff, the
/// bound, the last moment served).
pub fn assert_suspect_cut_off(
    scenario: &str,
    suspect: &str,
    served: &JwksSamples,
    t0: Instant,
    cut: StolenCutoff,
) -> (Vec<Duration>, Duration, Duration) {
    assert!(
        cut.came_back.is_empty(),
        "{scenario}: a stolen token verified again after its cutoff (verifier, cutoff, at): {:?}",
        cut.came_back
    );
    assert!(
        !cut.reasons
            .iter()
            .any(|r| r.to_lowercase().contains("expired")),
        "{scenario}: stolen tokens failed by age, not by the cutoff: {:?}",
        cut.reasons
    );
    let last_served = served
        .iter()
        .filter(|(_, kids)| kids.contains(suspect))
        .map(|(at, _)| at.saturating_duration_since(t0))
        .max()
        .expect("the suspect key was served after the annotation");
    assert!(
        last_served <= WITHDRAW_BOUND,
        "{scenario}: a pod still served the suspect key {last_served:?} after the annotation (bound {WITHDRAW_BOUND:?})"
    );
    let bound = last_served + JwksWatch::PERIOD + Duration::from_secs(CACHE_TTL) + CUTOFF_SLACK;
    let cutoffs: Vec<Duration> = cut.cutoffs.into_iter().flatten().collect();
    for (i, c) in cutoffs.iter().enumerate() {
        assert!(
            *c <= bound,
            "{scenario}: verifier {i}: cutoff {c:?} exceeds last-served {last_served:?} + TTL {CACHE_TTL}s + slack {CUTOFF_SLACK:?}"
        );
    }
    let gone = served
        .iter()
        .position(|(_, kids)| !kids.is_empty() && !kids.contains(suspect))
        .expect("the suspect key was withdrawn");
    let back = served[gone..]
        .iter()
        .find(|(_, kids)| kids.contains(suspect));
    assert!(
        back.is_none(),
        "{scenario}: suspect key served again: {back:?}"
    );
    (cutoffs, bound, last_served)
}
