//! Pod objects as the simulated kubelet and deployment controller write them.

use serde_json::{Value, json};

/// Holds a Pod object after deletion until its process has stopped, the way a real
/// pod stays `Terminating` until the kubelet confirms.
pub const KUBELET_FINALIZER: &str = "e2e.macp.io/kubelet";

/// The node every simulated pod runs on.
pub const NODE_NAME: &str = "macp-e2e-node";

/// The container's state as the kubelet reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Waiting { reason: String, message: String },
    Running { started_at: String },
}

/// A new Pod for `deployment`'s `template`. Real pods are owned by a ReplicaSet;
/// here the Deployment owns them directly.
pub fn pod_object(
    deployment: &Value,
    template: &Value,
    name: &str,
    hash: &str,
    ip: &str,
    now: &str,
) -> Value {
    let meta = template.get("metadata");
    let mut labels = meta
        .and_then(|m| m.get("labels"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    labels["pod-template-hash"] = json!(hash);
    let annotations = meta
        .and_then(|m| m.get("annotations"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut spec = template.get("spec").cloned().unwrap_or_else(|| json!({}));
    spec["nodeName"] = json!(NODE_NAME);
    let dmeta = deployment.get("metadata");
    let field = |f: &str| dmeta.and_then(|m| m.get(f)).cloned().unwrap_or(Value::Null);
    let waiting = ContainerState::Waiting {
        reason: "ContainerCreating".into(),
        message: String::new(),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": field("namespace"),
            "labels": labels,
            "annotations": annotations,
            "finalizers": [KUBELET_FINALIZER],
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": field("name"), "uid": field("uid"),
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
        "status": status(None, &StatusInput {
            ip, start_time: now, container: &waiting, ready: false, restarts: 0,
            container_name: &container_field(template, "name"), image: &container_field(template, "image"),
            last_exit: None, now,
        }),
    })
}

/// A field of the template's first container, `""` when absent.
pub fn container_field(template: &Value, field: &str) -> String {
    template
        .pointer(&format!("/spec/containers/0/{field}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

pub struct StatusInput<'a> {
    pub ip: &'a str,
    pub start_time: &'a str,
    pub container: &'a ContainerState,
    pub ready: bool,
    pub restarts: u32,
    pub container_name: &'a str,
    pub image: &'a str,
    pub last_exit: Option<i32>,
    pub now: &'a str,
}

fn condition(prev: Option<&Value>, ty: &str, ok: bool, now: &str) -> Value {
    let status = if ok { "True" } else { "False" };
    let since = prev
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
        })
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|c| c.get("lastTransitionTime"))
        .cloned()
        .unwrap_or_else(|| json!(now));
    json!({"type": ty, "status": status, "lastTransitionTime": since})
}

/// Pod `status`; `prev` keeps condition transition times stable.
pub fn status(prev: Option<&Value>, s: &StatusInput<'_>) -> Value {
    let running = matches!(s.container, ContainerState::Running { .. });
    let state = match s.container {
        ContainerState::Waiting { reason, message } => {
            json!({"waiting": {"reason": reason, "message": message}})
        }
        ContainerState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
    };
    let mut cs = json!({
        "name": s.container_name, "image": s.image, "imageID": "", "ready": s.ready,
        "restartCount": s.restarts, "started": running, "state": state,
    });
    if let Some(code) = s.last_exit {
        cs["lastState"] = json!({"terminated": {"exitCode": code, "reason": "Error"}});
    }
    json!({
        "phase": if running || s.restarts > 0 { "Running" } else { "Pending" },
        "hostIP": "127.0.0.1",
        "podIP": s.ip,
        "podIPs": [{"ip": s.ip}],
        "startTime": s.start_time,
        "conditions": [
            condition(prev, "PodScheduled", true, s.now),
            condition(prev, "Initialized", true, s.now),
            condition(prev, "ContainersReady", s.ready, s.now),
            condition(prev, "Ready", s.ready, s.now),
        ],
        "containerStatuses": [cs],
    })
}

/// Whether a stored Pod is a ready endpoint: Ready=True, not terminating, has an IP.
pub fn is_ready_endpoint(pod: &Value) -> bool {
    let ready = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        });
    ready
        && pod.pointer("/metadata/deletionTimestamp").is_none()
        && pod
            .pointer("/status/podIP")
            .and_then(Value::as_str)
            .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_from_template() {
        let d = json!({"metadata": {"name": "web", "namespace": "ns", "uid": "u1"}});
        let t = json!({"metadata": {"labels": {"app": "web"}, "annotations": {"macp.io/keyset-hash": "k"}},
                       "spec": {"containers": [{"name": "svc", "image": "img:1"}]}});
        let p = pod_object(
            &d,
            &t,
            "web-h-abcde",
            "h",
            "127.0.0.7",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            p["metadata"]["labels"],
            json!({"app": "web", "pod-template-hash": "h"})
        );
        assert_eq!(p["metadata"]["annotations"]["macp.io/keyset-hash"], "k");
        assert_eq!(p["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(p["metadata"]["namespace"], "ns");
        assert_eq!(p["spec"]["nodeName"], NODE_NAME);
        assert_eq!(p["status"]["podIP"], "127.0.0.7");
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(p["status"]["containerStatuses"][0]["image"], "img:1");
        assert!(!is_ready_endpoint(&p));
    }

    #[test]
    fn ready_status_and_stable_times() {
        let running = ContainerState::Running {
            started_at: "t0".into(),
        };
        let input = StatusInput {
            ip: "127.0.0.2",
            start_time: "t0",
            container: &running,
            ready: true,
            restarts: 1,
            container_name: "c",
            image: "i",
            last_exit: Some(1),
            now: "t1",
        };
        let s = status(None, &input);
        assert_eq!(s["phase"], "Running");
        assert_eq!(
            s["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
            1
        );
        let later = StatusInput { now: "t2", ..input };
        assert_eq!(status(Some(&s), &later), s);
        let pod = json!({"metadata": {}, "status": s});
        assert!(is_ready_endpoint(&pod));
        let mut terminating = pod.clone();
        terminating["metadata"]["deletionTimestamp"] = json!("t3");
        assert!(!is_ready_endpoint(&terminating));
    }
}
