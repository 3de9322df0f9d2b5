//! A kubelet and Deployment controller stand-in for benchmarks: every
//! Deployment's pods become in-process token services at once, each on its own
//! loopback address, built from the pod template's environment exactly as the
//! real service would start from it.
//!
//! Unlike [`crate::cluster`], no process is spawned and no rollout is paced:
//! a changed template replaces the pods at once and the Deployment is marked
//! rolled out. What this keeps real is what the operator talks to: the pods'
//! JWKS, their signing kid and the Deployment status it waits on. The pods
//! are written straight into the store, so the API server's request log holds
//! the operator's requests alone.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use macp_auth_service::app::{AppState, router};
use macp_auth_service::config::Config;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::apiserver::ApiHandle;
use crate::cluster::env::{self, PodFacts, Source};
use crate::cluster::volumes;

/// How often the stand-in looks for changed Deployments (at most).
const SCAN_EVERY: Duration = Duration::from_millis(50);

/// One running pod stand-in, started from `template` (its JSON text).
struct Pod {
    name: String,
    template: String,
    stop: oneshot::Sender<()>,
}

/// The stand-in's state: the pods of each Deployment (`namespace/name`) and
/// the next loopback address to hand out.
struct Pods {
    by_deployment: HashMap<String, Vec<Pod>>,
    seen: HashMap<String, String>,
    /// The store's resource version the last sync was current to (0: none yet).
    synced_to: u64,
    next_ip: u32,
    serial: u64,
}

/// Runs until dropped or [`StandIn::shutdown`].
pub struct StandIn {
    task: JoinHandle<()>,
}

impl StandIn {
    /// Starts watching `api`'s Deployments.
    pub fn start(api: ApiHandle) -> Self {
        let task = tokio::spawn(run(api));
        StandIn { task }
    }

    pub async fn shutdown(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn run(api: ApiHandle) {
    let mut changes = api.changes();
    let mut pods = Pods {
        by_deployment: HashMap::new(),
        seen: HashMap::new(),
        synced_to: 0,
        // 127.20.0.1 onwards: clear of the simulated cluster's 127.0.0.x pods.
        next_ip: u32::from(Ipv4Addr::new(127, 20, 0, 1)),
        serial: 0,
    };
    loop {
        sync(&api, &mut pods).await;
        tokio::time::sleep(SCAN_EVERY).await;
        if changes.changed().await.is_err() {
            return;
        }
    }
}

fn key(d: &Value) -> String {
    format!(
        "{}/{}",
        d.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        d.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    )
}

/// Brings every changed Deployment's pods in line with its template: those
/// changed since the last sync, or all of them when the store's history no
/// longer reaches back that far.
async fn sync(api: &ApiHandle, pods: &mut Pods) {
    let (changed, now) = match api.changed_since("apps", "deployments", pods.synced_to) {
        Some(changed) if pods.synced_to > 0 => changed,
        _ => {
            let now = api.resource_version();
            (api.list_shared("apps", "deployments", None), now)
        }
    };
    pods.synced_to = now;
    for d in changed {
        let k = key(&d);
        let rv = d
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if pods.seen.get(&k) == Some(&rv) {
            continue;
        }
        if let Err(e) = roll(api, pods, &d).await {
            tracing::warn!(deployment = %k, error = %e, "stand-in could not roll");
            continue;
        }
        // Our own status write changed the resourceVersion: remember that one.
        let now = api
            .get("apps", "deployments", namespace(&d), name(&d))
            .and_then(|d| d.pointer("/metadata/resourceVersion").cloned())
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or(rv);
        pods.seen.insert(k, now);
    }
}

fn namespace(d: &Value) -> Option<&str> {
    d.pointer("/metadata/namespace").and_then(Value::as_str)
}

fn name(d: &Value) -> &str {
    d.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Replaces the pods of `d` when its template changed, then marks it rolled out.
async fn roll(api: &ApiHandle, pods: &mut Pods, d: &Value) -> Result<(), String> {
    let template = d.pointer("/spec/template").cloned().unwrap_or(Value::Null);
    let text = template.to_string();
    let want = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0) as usize;
    let k = key(d);
    let ns = namespace(d).unwrap_or("default").to_string();
    let current = pods.by_deployment.remove(&k).unwrap_or_default();
    let (keep, old): (Vec<Pod>, Vec<Pod>) = current.into_iter().partition(|p| p.template == text);
    let mut keep = keep;
    for p in old.into_iter().chain(keep.drain(want.min(keep.len())..)) {
        let _ = p.stop.send(());
        let _ = api.delete("", "pods", Some(&ns), &p.name);
    }
    while keep.len() < want {
        pods.serial += 1;
        let ip = Ipv4Addr::from(pods.next_ip);
        pods.next_ip += 1;
        let pod_name = format!("{}-{}", name(d), pods.serial);
        let stop = start_pod(api, d, &template, &pod_name, ip).await?;
        keep.push(Pod {
            name: pod_name,
            template: text.clone(),
            stop,
        });
    }
    pods.by_deployment.insert(k, keep);
    let generation = d
        .pointer("/metadata/generation")
        .cloned()
        .unwrap_or(json!(1));
    let n = want as i64;
    api.modify("apps", "deployments", Some(&ns), name(d), |obj| {
        obj["status"] = json!({
            "observedGeneration": generation,
            "replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            ],
        });
    })
    .map_err(|e| format!("status: {e:?}"))?;
    Ok(())
}

/// Starts one pod's token service and writes its Pod object, ready.
async fn start_pod(
    api: &ApiHandle,
    d: &Value,
    template: &Value,
    pod_name: &str,
    ip: Ipv4Addr,
) -> Result<oneshot::Sender<()>, String> {
    let ns = namespace(d).unwrap_or("default");
    let container = template
        .pointer("/spec/containers/0")
        .ok_or("the template has no container")?;
    let ip_text = ip.to_string();
    let facts = PodFacts {
        name: pod_name,
        namespace: ns,
        ip: &ip_text,
    };
    let lookup = |source: Source, obj: &str| -> Option<BTreeMap<String, String>> {
        let resource = match source {
            Source::Secret => "secrets",
            Source::ConfigMap => "configmaps",
        };
        api.get("", resource, Some(ns), obj)
            .map(|o| env::object_data(source, &o))
    };
    let vars = env::resolve(container, &facts, lookup)?;
    let port = env::port(container);
    let config = Config::from_vars(vars).map_err(|e| e.to_string())?;
    // The Secret volumes, as the kubelet would mount them (modes included),
    // read from memory: the stand-in shares the harness's filesystem.
    let mounts = volumes::secret_mounts(
        container,
        template.pointer("/spec/volumes").unwrap_or(&Value::Null),
        template.get("spec").unwrap_or(&Value::Null),
        |name| lookup(Source::Secret, name),
    )?;
    let keys = config
        .load_keys(|path| volumes::read_mounted(&mounts, path))
        .map_err(|e| e.to_string())?;
    let state = Arc::new(AppState::new(&config, keys));
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), port))
        .await
        .map_err(|e| format!("bind {ip}:{port}: {e}"))?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(state))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    let meta = template.get("metadata");
    let labels = meta
        .and_then(|m| m.get("labels"))
        .cloned()
        .unwrap_or(json!({}));
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "namespace": ns,
            "labels": labels,
            "annotations": meta.and_then(|m| m.get("annotations")).cloned().unwrap_or(json!({})),
        },
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
        "status": {
            "phase": "Running",
            "podIP": ip_text,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    });
    api.create("", "pods", pod)
        .map_err(|e| format!("create pod: {e:?}"))?;
    Ok(stop)
}
