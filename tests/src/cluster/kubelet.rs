//! The simulated kubelet: runs one pod as a child process of the executable its
//! image maps to ([`super::images`]),
//! probes its readiness the way the pod spec says (path, port, period and
//! failure threshold, periods scaled by [`super::ClusterConfig::probe_scale`]),
//! restarts it with backoff when it exits, and stops it like the kubelet when
//! the Pod is deleted: SIGTERM at once (no preStop hook), SIGKILL after the
//! pod's `terminationGracePeriodSeconds`. The process keeps serving whatever
//! it serves until it exits; whether callers still reach it is the Service
//! proxy's business (its endpoints lag, see [`crate::endpoints`]).

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::addr::PodIp;
use super::env::{self, PodFacts, Source};
use super::podspec::{self, ContainerState, KUBELET_FINALIZER};
use super::process;
use super::volumes;
use super::{Inner, PodStart, now};

/// Lines of output kept per pod, like a container log.
pub(super) const LOG_LINES: usize = 5000;

/// Everything a pod task needs.
pub(super) struct PodRun {
    pub namespace: String,
    pub name: String,
    pub deployment: String,
    pub hash: String,
    pub container: Value,
    /// The pod template's `spec.volumes` (Secret volumes are materialized).
    pub volumes: Value,
    pub ip: PodIp,
    pub port: u16,
    /// SIGTERM to SIGKILL: the pod's `terminationGracePeriodSeconds`.
    pub grace: Duration,
    /// The pod template's `spec` (service account token mount).
    pub pod_spec: Value,
    pub logs: Arc<Mutex<VecDeque<String>>>,
}

/// The readiness probe of the container, as the kubelet runs it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct ReadinessProbe {
    pub path: String,
    pub initial_delay: Duration,
    pub period: Duration,
    pub failure_threshold: u32,
}

/// The container's `readinessProbe.httpGet`, with Kubernetes' defaults
/// (period 10 s, failure threshold 3) and its periods multiplied by `scale`;
/// `None` when it has none (the pod is ready once its process runs).
pub(super) fn readiness_probe(container: &Value, scale: f64) -> Option<ReadinessProbe> {
    let probe = container.get("readinessProbe")?;
    let path = probe
        .pointer("/httpGet/path")
        .and_then(Value::as_str)
        .unwrap_or("/")
        .to_string();
    let secs = |field: &str, default: f64| {
        let s = probe
            .get(field)
            .and_then(Value::as_f64)
            .unwrap_or(default)
            .max(0.0);
        Duration::from_secs_f64(s * scale)
    };
    Some(ReadinessProbe {
        path,
        initial_delay: secs("initialDelaySeconds", 0.0),
        period: secs("periodSeconds", 10.0).max(Duration::from_millis(10)),
        failure_threshold: probe
            .get("failureThreshold")
            .and_then(Value::as_u64)
            .unwrap_or(3)
            .max(1) as u32,
    })
}

enum Outcome {
    Exited(Option<i32>),
    Stop,
    Shutdown,
}

/// Runs the pod until it is deleted or the cluster shuts down.
pub(super) async fn run_pod(inner: Arc<Inner>, run: PodRun, mut stop: watch::Receiver<bool>) {
    let mut shutdown = inner.shutdown.subscribe();
    let ip = run.ip.addr();
    let ip_text = ip.to_string();
    let start_time = now();
    let mut restarts = 0u32;
    let mut last_exit = None;
    let mut backoff = Duration::from_millis(250);
    let mut pull_failures = 0u32;
    let container_name = run
        .container
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let image = run
        .container
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let report = |state: &ContainerState, ready: bool, restarts: u32, last_exit: Option<i32>| {
        write_status(&inner, &run.namespace, &run.name, |prev| {
            podspec::status(
                prev,
                &podspec::StatusInput {
                    ip: &ip_text,
                    start_time: &start_time,
                    container: state,
                    ready,
                    restarts,
                    container_name: &container_name,
                    image: &image,
                    last_exit,
                    now: &now(),
                },
            )
        });
    };

    let outcome = loop {
        let waiting = |reason: &str, message: String| ContainerState::Waiting {
            reason: reason.to_string(),
            message,
        };
        let program = match inner.config.images.binary_for(&image) {
            Ok(p) => p.to_path_buf(),
            Err(message) => {
                // The first failure is ErrImagePull, later ones ImagePullBackOff,
                // as a real kubelet reports a pull that keeps failing.
                let reason = if pull_failures == 0 {
                    "ErrImagePull"
                } else {
                    "ImagePullBackOff"
                };
                pull_failures += 1;
                if pull_failures == 1 {
                    tracing::warn!(pod = %run.name, %image, "image cannot be pulled");
                    push_log(&run.logs, format!("[kubelet] {message}"));
                    pod_event(&inner, &run, "Failed", &message);
                }
                report(&waiting(reason, message), false, restarts, last_exit);
                if wait_or_stop(&mut stop, &mut shutdown, backoff).await {
                    break Outcome::Stop;
                }
                backoff = (backoff * 2).min(inner.config.max_restart_backoff);
                continue;
            }
        };
        let child = resolve_env(&inner, &run, &ip_text).and_then(|env| {
            let never_ready = {
                let start = PodStart {
                    namespace: &run.namespace,
                    deployment: &run.deployment,
                    template_hash: &run.hash,
                    env: &env,
                };
                let mut st = inner.state.lock();
                let never = st.rules.iter().any(|r| r(&start));
                if let Some(e) = st.pods.get_mut(&(run.namespace.clone(), run.name.clone())) {
                    e.info.never_ready = never;
                }
                never
            };
            spawn(&inner, &run, &program, env, ip, never_ready)
                .map(|c| (c, never_ready))
                .map_err(|e| ("RunContainerError", e))
        });
        let (mut child, never_ready) = match child {
            Ok(c) => c,
            Err((reason, message)) => {
                tracing::warn!(pod = %run.name, %reason, %message, "pod cannot start");
                report(&waiting(reason, message), false, restarts, last_exit);
                if wait_or_stop(&mut stop, &mut shutdown, backoff).await {
                    break Outcome::Stop;
                }
                backoff = (backoff * 2).min(inner.config.max_restart_backoff);
                continue;
            }
        };
        let running = ContainerState::Running { started_at: now() };
        report(&running, false, restarts, last_exit);
        let outcome = tokio::select! {
            status = child.wait() => Outcome::Exited(status.ok().and_then(|s| s.code())),
            _ = stop.wait_for(|s| *s) => Outcome::Stop,
            _ = shutdown.wait_for(|s| *s) => Outcome::Shutdown,
            _ = readiness(&inner, &run, ip, never_ready, |ready| report(&running, ready, restarts, last_exit)) => {
                Outcome::Shutdown
            }
        };
        if matches!(outcome, Outcome::Exited(_))
            && let Some(e) = inner
                .state
                .lock()
                .pods
                .get_mut(&(run.namespace.clone(), run.name.clone()))
        {
            e.pid = None;
        }
        match outcome {
            Outcome::Exited(code) => {
                restarts += 1;
                last_exit = Some(code.unwrap_or(-1));
                set_ready(&inner, &run, false, Some(restarts));
                tracing::warn!(pod = %run.name, code = ?code, restarts, "pod process exited; restarting with backoff");
                push_log(&run.logs, format!("[kubelet] process exited with {code:?}"));
                report(
                    &waiting("CrashLoopBackOff", format!("back-off {backoff:?}")),
                    false,
                    restarts,
                    last_exit,
                );
                if wait_or_stop(&mut stop, &mut shutdown, backoff).await {
                    break Outcome::Stop;
                }
                backoff = (backoff * 2).min(inner.config.max_restart_backoff);
            }
            Outcome::Stop => {
                set_ready(&inner, &run, false, None);
                report(&running, false, restarts, last_exit);
                // No preStop hook: SIGTERM at once. The Service still sends the
                // pod connections until its endpoints catch up; the process
                // bridges that with its own shutdown delay, or callers fail.
                terminate(&mut child, run.grace).await;
                break Outcome::Stop;
            }
            Outcome::Shutdown => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                break Outcome::Shutdown;
            } // The readiness future never completes.
        }
    };
    inner
        .state
        .lock()
        .pods
        .remove(&(run.namespace.clone(), run.name.clone()));
    drop(run.ip);
    if matches!(outcome, Outcome::Stop) {
        // Releasing the finalizer lets the API server finish the deletion.
        let _ = inner
            .api
            .modify("", "pods", Some(&run.namespace), &run.name, |v| {
                if let Some(f) = v
                    .pointer_mut("/metadata/finalizers")
                    .and_then(Value::as_array_mut)
                {
                    f.retain(|x| x.as_str() != Some(KUBELET_FINALIZER));
                }
            });
    }
    tracing::debug!(pod = %run.name, "pod stopped");
}

fn resolve_env(
    inner: &Inner,
    run: &PodRun,
    ip: &str,
) -> Result<BTreeMap<String, String>, (&'static str, String)> {
    let facts = PodFacts {
        name: &run.name,
        namespace: &run.namespace,
        ip,
    };
    let lookup = |source: Source, name: &str| {
        let resource = match source {
            Source::Secret => "secrets",
            Source::ConfigMap => "configmaps",
        };
        inner
            .api
            .get("", resource, Some(&run.namespace), name)
            .map(|o| env::object_data(source, &o))
    };
    let mut vars = env::resolve(&run.container, &facts, lookup)
        .map_err(|e| ("CreateContainerConfigError", e))?;
    let secret = |name: &str| lookup(Source::Secret, name);
    let mounts = volumes::secret_mounts(&run.container, &run.volumes, &run.pod_spec, secret)
        .map_err(|e| ("FailedMount", e))?;
    if !mounts.is_empty() {
        let base = inner
            .config
            .state_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let root =
            base.join("macp-e2e-volumes")
                .join(format!("{}-{}", std::process::id(), run.name));
        let pairs = volumes::write_mounts(&root, &mounts)
            .map_err(|e| ("FailedMount", format!("writing {}: {e}", root.display())))?;
        volumes::rewrite_paths(&mut vars, &pairs);
    }
    vars.insert("MACP_AUTH_BIND".into(), ip.to_string());
    vars.entry("PORT".into())
        .or_insert_with(|| run.port.to_string());
    Ok(vars)
}

fn spawn(
    inner: &Inner,
    run: &PodRun,
    program: &Path,
    env: BTreeMap<String, String>,
    ip: Ipv4Addr,
    never_ready: bool,
) -> Result<Child, String> {
    let env = process::process_env(env, ip, inner.config.kubeconfig.as_deref(), &run.pod_spec);
    let mut cmd = Command::new(program);
    cmd.args(process::container_args(&run.container, ip))
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, as a container has: Ctrl-C in the terminal
        // running the harness reaches the harness, which stops pods like a
        // kubelet, not every pod at once.
        .process_group(0);
    // A pod must not outlive the cluster even when the harness itself is
    // killed (SIGKILL, a crash): the kernel kills the child when the thread
    // that started it ends, and these are the runtime's long-lived threads.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(2) is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", program.display()))?;
    tracing::debug!(pod = %run.name, %ip, port = run.port, never_ready, pid = ?child.id(), "pod process started");
    if let Some(e) = inner
        .state
        .lock()
        .pods
        .get_mut(&(run.namespace.clone(), run.name.clone()))
    {
        e.pid = child.id();
    }
    if let Some(out) = child.stdout.take() {
        pipe_logs(out, run.logs.clone());
    }
    if let Some(err) = child.stderr.take() {
        pipe_logs(err, run.logs.clone());
    }
    Ok(child)
}

fn pipe_logs(reader: impl AsyncRead + Unpin + Send + 'static, logs: Arc<Mutex<VecDeque<String>>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            push_log(&logs, line);
        }
    });
}

fn push_log(logs: &Mutex<VecDeque<String>>, line: String) {
    let mut l = logs.lock();
    if l.len() >= LOG_LINES {
        l.pop_front();
    }
    l.push_back(line);
}

/// Runs the container's readiness probe for as long as the process lives:
/// ready after one success, unready after `failureThreshold` failures in a
/// row; without a probe, ready at once. A pod chosen to never become ready is
/// never probed successfully.
async fn readiness(
    inner: &Inner,
    run: &PodRun,
    ip: Ipv4Addr,
    never_ready: bool,
    on_change: impl Fn(bool),
) {
    if never_ready {
        return std::future::pending().await;
    }
    let Some(probe) = readiness_probe(&run.container, inner.config.probe_scale) else {
        if set_ready(inner, run, true, None) {
            on_change(true);
        }
        return std::future::pending().await;
    };
    let url = format!("http://{ip}:{}{}", run.port, probe.path);
    tokio::time::sleep(probe.initial_delay).await;
    let (mut ready, mut failures) = (false, 0u32);
    loop {
        let ok = inner
            .http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            failures = 0;
            if !ready && set_ready(inner, run, true, None) {
                ready = true;
                on_change(true);
            }
        } else {
            failures += 1;
            if ready && failures >= probe.failure_threshold {
                ready = false;
                set_ready(inner, run, false, None);
                on_change(false);
            }
        }
        tokio::time::sleep(probe.period).await;
    }
}

/// Updates the controller's view; false when the pod is already terminating.
fn set_ready(inner: &Inner, run: &PodRun, ready: bool, restarts: Option<u32>) -> bool {
    let mut st = inner.state.lock();
    let Some(e) = st.pods.get_mut(&(run.namespace.clone(), run.name.clone())) else {
        return false;
    };
    if let Some(r) = restarts {
        e.info.restarts = r;
    }
    if ready && e.info.terminating {
        return false;
    }
    e.info.ready = ready;
    true
}

fn write_status(inner: &Inner, ns: &str, name: &str, make: impl FnOnce(Option<&Value>) -> Value) {
    let r = inner.api.modify("", "pods", Some(ns), name, |pod| {
        let status = make(pod.get("status"));
        pod["status"] = status;
    });
    if let Err(e) = r {
        tracing::debug!(pod = %name, error = %e, "pod status not written");
    }
}

/// A Warning Event about the pod, as the kubelet records one (`kubectl
/// describe pod` lists it).
fn pod_event(inner: &Inner, run: &PodRun, reason: &str, message: &str) {
    let uid = inner
        .api
        .get("", "pods", Some(&run.namespace), &run.name)
        .and_then(|p| p.pointer("/metadata/uid").cloned())
        .unwrap_or(Value::Null);
    let at = now();
    let event = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{}.", run.name), "namespace": run.namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": run.name, "namespace": run.namespace, "uid": uid},
        "reason": reason,
        "message": message,
        "type": "Warning",
        "source": {"component": "kubelet", "host": podspec::NODE_NAME},
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
    });
    if let Err(e) = inner.api.create("", "events", event) {
        tracing::debug!(pod = %run.name, error = %e, "pod event not recorded");
    }
}

/// Sleeps `d`; true when a stop or shutdown arrived meanwhile.
async fn wait_or_stop(
    stop: &mut watch::Receiver<bool>,
    shutdown: &mut watch::Receiver<bool>,
    d: Duration,
) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
        _ = shutdown.wait_for(|s| *s) => true,
    }
}

/// SIGTERM, then SIGKILL after `grace`, like the kubelet.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) on the pid of a child we own and have not reaped yet
        // (`id()` is `None` after reaping), so it cannot hit a recycled pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(pid = ?child.id(), "pod ignored SIGTERM for the grace period; killing");
        let _ = child.kill().await;
    }
}
