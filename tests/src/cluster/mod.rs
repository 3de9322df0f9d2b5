//! A simulated cluster on top of [`crate::apiserver`]: a deployment controller and a
//! kubelet that run every pod as a real process of the token service on its own
//! loopback address (127.0.0.2 to 127.0.0.250, all pods on the same port).
//!
//! # What it does
//! - Watches Deployments in every namespace (it wakes on every store change and
//!   resyncs every 200 ms) and rolls them like the real controller: the pod template
//!   hash identifies a revision; `maxSurge`/`maxUnavailable` (ints or percentages,
//!   default 25%/25%) bound a rolling update; `Recreate` stops old pods first.
//! - Each pod is a child process of the executable its image maps to
//!   ([`images`]: the token service, and the operator when configured; any other
//!   image waits in `ErrImagePull`/`ImagePullBackOff`), run with the container's
//!   `args` and its env resolved at start like the kubelet (`value`,
//!   `valueFrom.secretKeyRef`, `configMapKeyRef`, `fieldRef`
//!   name/namespace/podIP, `envFrom`), an empty parent environment,
//!   `MACP_AUTH_BIND=<pod IP>`, `PORT` (from the env, else the first
//!   `containerPort`, else 3200), wildcard listen addresses narrowed to the pod
//!   IP and `KUBECONFIG` when configured ([`process`]). Its stdout and stderr
//!   are the pod's log ([`Cluster::pod_logs`]).
//! - Readiness: the container's `readinessProbe.httpGet` (path; `periodSeconds`,
//!   `initialDelaySeconds` and `failureThreshold` with Kubernetes' defaults, the
//!   periods multiplied by [`ClusterConfig::probe_scale`]), probed for the whole
//!   life of the process; no probe means ready once running. A process that exits
//!   is restarted in place with exponential backoff (`CrashLoopBackOff`,
//!   `restartCount`). Deleting a Pod (by the controller, GC, or a test) marks it
//!   terminating and unready and sends SIGTERM at once, SIGKILL after the pod's
//!   `terminationGracePeriodSeconds` (default 30), then releases the Pod object.
//!   The process keeps answering until it exits: what reaches it meanwhile is up
//!   to the Service proxy, whose endpoints lag ([`crate::endpoints`]).
//! - Pod objects (`<deployment>-<hash>-<suffix>`, template labels plus
//!   `pod-template-hash`, `status.podIP`, `phase`, `Ready`/`ContainersReady`
//!   conditions, `containerStatuses`) and Deployment status (`observedGeneration`,
//!   `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas`,
//!   `unavailableReplicas`, `Available`/`Progressing` conditions including
//!   `ProgressDeadlineExceeded`) are kept true in the store.
//!
//! # Simplifications vs a real cluster
//! - No ReplicaSets: Pods are owned by their Deployment directly.
//! - Only the first container runs; its image selects an executable by name
//!   only (no registry, no tag or digest check); `command`, liveness and
//!   startup probes, resources and security context are ignored; the probe's
//!   port is the container's port whatever the probe names.
//! - Of volumes only Secret volumes exist: written once at container start to a
//!   directory of their own, with env values under the mount path rewritten to it;
//!   a changed Secret is not refreshed in a running pod.
//! - Pods carry the finalizer [`podspec::KUBELET_FINALIZER`] so a deleted Pod stays
//!   `Terminating` until its process has stopped, as a kubelet-confirmed deletion would.
//! - A delete's own grace period (`gracePeriodSeconds`) is not honoured; the pod
//!   spec's is. [`Cluster::kill_pod`] is the way to kill a process at once.
//! - `minReadySeconds` is ignored: ready means available.
//! - Store access is direct (not through HTTP), so the harness never appears in the
//!   API server's request log.

mod addr;
pub mod env;
pub mod images;
mod kubelet;
mod logs;
pub mod podspec;
pub mod process;
pub mod rollout;
pub mod volumes;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

use crate::apiserver::ApiHandle;
use crate::wait::{Displayed, OnChange, TimedOut, try_wait_until};
pub use images::ImageMap;
use rollout::PodView;

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Timings of the simulated cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The executables the pods' images run (see [`images`]); by default only
    /// the token service (see [`crate::binary::service_binary`]).
    pub images: ImageMap,
    /// Given to every pod as `KUBECONFIG` (unless its spec sets
    /// `automountServiceAccountToken: false`): how the processes of the
    /// operator's image reach the API server ([`process`]).
    pub kubeconfig: Option<PathBuf>,
    /// Where Secret volumes are written; the system temporary directory when unset.
    pub state_dir: Option<PathBuf>,
    /// Multiplies the probe periods of the pod spec, so that a 5 s readiness
    /// period of a real Deployment probes every second here: scaled like the
    /// scenarios' other times, never every few milliseconds.
    pub probe_scale: f64,
    /// SIGTERM to SIGKILL when the pod spec sets no `terminationGracePeriodSeconds`.
    pub default_termination_grace: Duration,
    /// Ceiling of the restart backoff of a crashing pod (starts at 250 ms, doubles).
    pub max_restart_backoff: Duration,
    /// Controller resync period, on top of waking on every store change.
    pub resync: Duration,
    /// How long the controller takes from its read of the Deployments to
    /// creating a pod from that read: zero, unless a test widens the window
    /// in which a controller acts on a read a deletion has made stale.
    pub stale_read_delay: Duration,
}

impl ClusterConfig {
    pub fn new(service_bin: PathBuf) -> Self {
        Self {
            images: ImageMap::new().with(images::SERVICE_IMAGE, service_bin),
            kubeconfig: None,
            state_dir: None,
            probe_scale: 0.2,
            default_termination_grace: Duration::from_secs(30),
            max_restart_backoff: Duration::from_secs(5),
            resync: Duration::from_millis(200),
            stale_read_delay: Duration::ZERO,
        }
    }
}

/// A snapshot of one simulated pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub deployment: String,
    pub template_hash: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub restarts: u32,
    pub terminating: bool,
    /// Chosen by a [`Cluster::never_ready_when`] rule at its last start.
    pub never_ready: bool,
}

/// What a never-ready rule sees when a pod starts.
pub struct PodStart<'a> {
    pub namespace: &'a str,
    pub deployment: &'a str,
    pub template_hash: &'a str,
    /// The resolved container environment (secrets included).
    pub env: &'a BTreeMap<String, String>,
}

type Rule = Arc<dyn Fn(&PodStart<'_>) -> bool + Send + Sync>;

/// Failures of cluster helpers.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// What was awaited, how long, and the last status seen.
    #[error(transparent)]
    Timeout(#[from] TimedOut),
}

struct PodEntry {
    info: PodInfo,
    /// The running process, once started.
    pid: Option<u32>,
    owner_uid: String,
    seq: u64,
    stop: watch::Sender<bool>,
    /// The name of the container that runs (the first), for log requests.
    container_name: String,
    logs: Arc<Mutex<VecDeque<String>>>,
}

#[derive(Default)]
struct State {
    pods: BTreeMap<(String, String), PodEntry>,
    rules: Vec<Rule>,
    /// Per Deployment uid: the last (hash, updated, ready) and since when.
    progress: HashMap<String, ((String, usize, usize), Instant)>,
    seq: u64,
}

pub(crate) struct Inner {
    api: ApiHandle,
    config: ClusterConfig,
    state: Mutex<State>,
    /// Stops the controller loop.
    stop_controller: watch::Sender<bool>,
    /// Kills every pod process at once.
    shutdown: watch::Sender<bool>,
    http: reqwest::Client,
}

/// The running simulated cluster. Dropping it kills every pod process at once;
/// [`shutdown`](Self::shutdown) stops them gracefully.
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// Starts the controller and kubelet against `api`'s store.
    pub fn start(api: ApiHandle, config: ClusterConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap_or_default();
        let inner = Arc::new(Inner {
            api,
            config,
            state: Mutex::new(State::default()),
            stop_controller: watch::Sender::new(false),
            shutdown: watch::Sender::new(false),
            http,
        });
        tokio::spawn(controller(inner.clone()));
        Self { inner }
    }

    /// Every pod process, running or shutting down, in (namespace, name) order.
    pub fn pods(&self) -> Vec<PodInfo> {
        self.inner
            .state
            .lock()
            .pods
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    /// The ready, non-terminating pods of one Deployment.
    pub fn ready_pods(&self, namespace: &str, deployment: &str) -> Vec<PodInfo> {
        self.pods()
            .into_iter()
            .filter(|p| {
                p.namespace == namespace && p.deployment == deployment && p.ready && !p.terminating
            })
            .collect()
    }

    /// Serves the pods' output as `kubectl logs` reads it, from the API
    /// server this cluster runs on.
    pub fn serve_logs(&self) {
        self.inner
            .api
            .set_pod_logs(Arc::new(logs::ClusterLogs(Arc::downgrade(&self.inner))));
    }

    /// The pod's captured stdout and stderr lines (the last ones; see the `logs` module).
    pub fn pod_logs(&self, namespace: &str, name: &str) -> Vec<String> {
        self.inner
            .state
            .lock()
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .map(|e| e.logs.lock().iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Pods started from now on for which `rule` holds never become ready (their
    /// process runs, the readiness probe never succeeds): a stuck rollout.
    pub fn never_ready_when(&self, rule: impl Fn(&PodStart<'_>) -> bool + Send + Sync + 'static) {
        self.inner.state.lock().rules.push(Arc::new(rule));
    }

    /// Kills the pod's process at once (SIGKILL), as a node or OOM kill would:
    /// its connections break, and the kubelet restarts it with backoff. False
    /// when there is no such running process.
    pub fn kill_pod(&self, namespace: &str, name: &str) -> bool {
        let st = self.inner.state.lock();
        let Some(pid) = st
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .and_then(|e| e.pid)
            .and_then(|p| i32::try_from(p).ok())
        else {
            return false;
        };
        // SAFETY: kill(2) on the pid of a child process this cluster started.
        // The pod task clears `pid` right after reaping an exited process and
        // removes the entry after a stopped one, so a recycled pid could only
        // be hit if the kernel wrapped its pid space within that instant.
        unsafe { libc::kill(pid, libc::SIGKILL) == 0 }
    }

    /// Every pod started from now on never becomes ready.
    pub fn never_ready_from_now(&self) {
        self.never_ready_when(|_| true);
    }

    /// Forgets every never-ready rule (pods already stuck stay stuck until replaced).
    pub fn clear_never_ready(&self) {
        self.inner.state.lock().rules.clear();
    }

    /// Waits until the Deployment's rollout is complete: status observed the current
    /// generation and every desired pod runs the current template and is ready.
    pub async fn wait_rollout(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let every = OnChange {
            changes: self.inner.api.changes(),
            at_most: Duration::from_millis(100),
        };
        try_wait_until(
            format!("the rollout of deployment {namespace}/{name}"),
            timeout,
            every,
            async || match self
                .inner
                .api
                .get("apps", "deployments", Some(namespace), name)
            {
                Some(d) if rollout_done(&d) => ControlFlow::Break(()),
                d => ControlFlow::Continue(Displayed(
                    d.and_then(|d| d.get("status").cloned())
                        .unwrap_or(Value::Null),
                )),
            },
        )
        .await?;
        Ok(())
    }

    /// Stops every pod gracefully (SIGTERM) and waits until all processes are gone.
    pub async fn shutdown(self) {
        // The controller goes first so it does not replace what we stop.
        self.inner.stop_controller.send_replace(true);
        for e in self.inner.state.lock().pods.values_mut() {
            e.info.terminating = true;
            e.info.ready = false;
            e.stop.send_replace(true);
        }
        // Only processes are waited for: a pod with none (its image cannot be
        // pulled, or it is between restarts) has nothing to stop, and the
        // drop below ends its task. One that outlives its grace period (plus
        // a margin for the SIGKILL) is left to that drop too.
        let _ = try_wait_until(
            "every pod process to exit",
            self.inner.config.default_termination_grace + Duration::from_secs(2),
            Duration::from_millis(20),
            async || {
                !self
                    .inner
                    .state
                    .lock()
                    .pods
                    .values()
                    .any(|e| e.pid.is_some())
            },
        )
        .await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.inner.stop_controller.send_replace(true);
        self.inner.shutdown.send_replace(true);
    }
}

/// Whether a stored Deployment's status says its rollout is complete.
pub fn rollout_done(d: &Value) -> bool {
    let int = |p: &str| d.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let desired = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    int("/status/observedGeneration") >= int("/metadata/generation")
        && int("/status/updatedReplicas") == desired
        && int("/status/replicas") == desired
        && int("/status/readyReplicas") == desired
        && d.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.get("reason").and_then(Value::as_str) == Some("NewReplicaSetAvailable")
                })
            })
}

async fn controller(inner: Arc<Inner>) {
    let mut changes = inner.api.changes();
    let mut shutdown = inner.stop_controller.subscribe();
    loop {
        reconcile(&inner);
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(inner.config.resync) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

fn meta<'a>(v: &'a Value, f: &str) -> &'a str {
    v.get("metadata")
        .and_then(|m| m.get(f))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn reconcile(inner: &Arc<Inner>) {
    let deployments = inner.api.list("apps", "deployments", None);
    let pods = inner.api.list("", "pods", None);
    let stored: HashMap<(String, String), &Value> = pods
        .iter()
        .map(|p| {
            (
                (
                    meta(p, "namespace").to_string(),
                    meta(p, "name").to_string(),
                ),
                p,
            )
        })
        .collect();
    let mut st = inner.state.lock();

    // Deleted Pods: stop their processes.
    for (key, e) in st.pods.iter_mut() {
        let deleted = stored
            .get(key)
            .is_none_or(|p| p.pointer("/metadata/deletionTimestamp").is_some());
        if deleted && !e.info.terminating {
            e.info.terminating = true;
            e.info.ready = false;
            e.stop.send_replace(true);
        }
    }
    // Terminating Pods nobody runs (e.g. left by an earlier cluster): release them.
    for (key, p) in &stored {
        let ours = p
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| {
                f.iter()
                    .any(|x| x.as_str() == Some(podspec::KUBELET_FINALIZER))
            });
        if ours && p.pointer("/metadata/deletionTimestamp").is_some() && !st.pods.contains_key(key)
        {
            let _ = inner.api.modify("", "pods", Some(&key.0), &key.1, |v| {
                if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("finalizers");
                }
            });
        }
    }
    for d in &deployments {
        if d.pointer("/metadata/deletionTimestamp").is_none() {
            reconcile_deployment(inner, &mut st, d);
        }
    }
    let live: Vec<&str> = deployments.iter().map(|d| meta(d, "uid")).collect();
    st.progress.retain(|uid, _| live.contains(&uid.as_str()));
}

fn reconcile_deployment(inner: &Arc<Inner>, st: &mut State, d: &Value) {
    let (ns, name, uid) = (meta(d, "namespace"), meta(d, "name"), meta(d, "uid"));
    let empty = Value::Null;
    let spec = d.get("spec").unwrap_or(&empty);
    let template = spec.get("template").unwrap_or(&empty);
    let desired = spec.get("replicas").and_then(Value::as_u64).unwrap_or(1) as usize;
    let hash = rollout::template_hash(template);
    let strategy = rollout::strategy(spec, desired);
    let views = |st: &State| -> Vec<PodView> {
        st.pods
            .values()
            .filter(|e| e.owner_uid == uid && !e.info.terminating)
            .map(|e| PodView {
                name: e.info.name.clone(),
                hash: e.info.template_hash.clone(),
                ready: e.info.ready,
                seq: e.seq,
            })
            .collect()
    };
    let terminating = st
        .pods
        .values()
        .filter(|e| e.owner_uid == uid && e.info.terminating)
        .count();
    let paused = spec.get("paused").and_then(Value::as_bool).unwrap_or(false);
    if !paused {
        let plan = rollout::plan(desired, &hash, &views(&*st), terminating, strategy);
        for pod in &plan.stop {
            if let Some(e) = st.pods.get_mut(&(ns.to_string(), pod.clone())) {
                e.info.terminating = true;
                e.info.ready = false;
                e.stop.send_replace(true);
            }
            if let Err(e) = inner.api.delete("", "pods", Some(ns), pod) {
                tracing::debug!(pod = %pod, error = %e, "pod delete");
            }
        }
        for _ in 0..plan.start {
            start_pod(inner, st, d, template, &hash);
        }
    }

    let pods = views(&*st);
    let updated = pods.iter().filter(|p| p.hash == hash).count();
    let ready = pods.iter().filter(|p| p.ready).count();
    let key = (hash.clone(), updated, ready);
    let since = match st.progress.get(uid) {
        Some((k, t)) if *k == key => *t,
        _ => {
            st.progress.insert(uid.to_string(), (key, Instant::now()));
            Instant::now()
        }
    };
    let deadline = spec
        .get("progressDeadlineSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(600);
    let input = rollout::StatusInput {
        generation: d
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0),
        desired,
        hash: &hash,
        pods: &pods,
        strategy,
        deadline_exceeded: since.elapsed() > Duration::from_secs(deadline),
        name,
        now: &now(),
    };
    let status = rollout::deployment_status(&input, d.get("status"));
    if d.get("status") != Some(&status) {
        let r = inner
            .api
            .modify("apps", "deployments", Some(ns), name, |v| {
                v["status"] = status;
            });
        if let Err(e) = r {
            tracing::debug!(deployment = %name, error = %e, "deployment status not written");
        }
    }
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn start_pod(inner: &Arc<Inner>, st: &mut State, d: &Value, template: &Value, hash: &str) {
    let (ns, deployment) = (meta(d, "namespace"), meta(d, "name"));
    let Some(container) = template.pointer("/spec/containers/0").cloned() else {
        tracing::warn!(%deployment, "pod template has no container; nothing to run");
        return;
    };
    let volumes = template
        .pointer("/spec/volumes")
        .cloned()
        .unwrap_or(Value::Null);
    let port = env::port(&container);
    let grace = template
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .unwrap_or(inner.config.default_termination_grace);
    let Some(ip) = addr::allocate(port) else {
        tracing::warn!(%deployment, port, "no free loopback address for a pod");
        return;
    };
    let name = format!("{deployment}-{hash}-{}", random_suffix());
    let obj = podspec::pod_object(d, template, &name, hash, &ip.addr().to_string(), &now());
    if !inner.config.stale_read_delay.is_zero() {
        // Blocks the controller (and the kubelet's state) like a slow
        // controller would; only tests that ask for it pay.
        std::thread::sleep(inner.config.stale_read_delay);
    }
    if let Err(e) = inner.api.create("", "pods", obj) {
        tracing::warn!(pod = %name, error = %e, "pod object not created");
        return;
    }
    st.seq += 1;
    let (stop_tx, stop_rx) = watch::channel(false);
    let logs = Arc::new(Mutex::new(VecDeque::new()));
    st.pods.insert(
        (ns.to_string(), name.clone()),
        PodEntry {
            info: PodInfo {
                namespace: ns.to_string(),
                name: name.clone(),
                deployment: deployment.to_string(),
                template_hash: hash.to_string(),
                ip: ip.addr(),
                port,
                ready: false,
                restarts: 0,
                terminating: false,
                never_ready: false,
            },
            pid: None,
            owner_uid: meta(d, "uid").to_string(),
            seq: st.seq,
            stop: stop_tx,
            container_name: podspec::container_field(template, "name"),
            logs: logs.clone(),
        },
    );
    let run = kubelet::PodRun {
        namespace: ns.to_string(),
        name,
        deployment: deployment.to_string(),
        hash: hash.to_string(),
        container,
        volumes,
        ip,
        port,
        grace,
        pod_spec: template.get("spec").cloned().unwrap_or(Value::Null),
        logs,
    };
    tokio::spawn(kubelet::run_pod(inner.clone(), run, stop_rx));
}
