//! What the Deployment and its pods say about a rollout. Pure: reads objects
//! the reconciler fetched.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;

use crate::resources::KEYSET_HASH_ANNOTATION;

/// Rollout state of the Deployment for one keyset hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutState {
    /// Template carries the hash, the Deployment controller observed this
    /// generation, and every replica is updated, ready and available, with no
    /// pod of an older template left.
    Complete,
    /// Anything short of that; the message says what is missing.
    InProgress(String),
    /// The Deployment controller gave up (`Progressing=False`, `ProgressDeadlineExceeded`).
    DeadlineExceeded(String),
}

fn template_hash(d: &Deployment) -> Option<&str> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(KEYSET_HASH_ANNOTATION)
        .map(String::as_str)
}

pub fn rollout_state(deployment: Option<&Deployment>, keyset_hash: &str) -> RolloutState {
    let Some(d) = deployment else {
        return RolloutState::InProgress("the Deployment does not exist yet".into());
    };
    if template_hash(d) != Some(keyset_hash) {
        return RolloutState::InProgress(
            "the pod template does not carry the current keyset yet".into(),
        );
    }
    let status = d.status.clone().unwrap_or_default();
    if let Some(c) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return RolloutState::DeadlineExceeded(
            c.message
                .clone()
                .unwrap_or_else(|| "the Deployment exceeded its progress deadline".into()),
        );
    }
    let generation = d.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return RolloutState::InProgress(
            "the Deployment controller has not observed the latest template yet".into(),
        );
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if updated < want || ready < want || available < want || total > updated {
        return RolloutState::InProgress(format!(
            "{updated}/{want} replicas updated, {ready} ready, {available} available, {} old",
            (total - updated).max(0)
        ));
    }
    RolloutState::Complete
}

/// A ready pod of the current template, to probe at `ip`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodTarget {
    pub name: String,
    pub ip: String,
}

fn is_ready(p: &Pod) -> bool {
    let Some(status) = p.status.as_ref() else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Ready, running, not terminating pods whose template carries `keyset_hash`,
/// sorted by name so probe order (and messages) are stable.
pub fn current_pods(pods: &[Pod], keyset_hash: &str) -> Vec<PodTarget> {
    let mut out: Vec<PodTarget> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(KEYSET_HASH_ANNOTATION))
                .map(String::as_str)
                == Some(keyset_hash)
        })
        .filter(|p| is_ready(p))
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            Some(PodTarget {
                name: p.metadata.name.clone()?,
                ip,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(hash: &str, generation: i64, status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "d", "generation": generation},
            "spec": {
                "replicas": 2,
                "selector": {},
                "template": {"metadata": {"annotations": {KEYSET_HASH_ANNOTATION: hash}}}
            },
            "status": status
        }))
        .unwrap()
    }

    fn done(generation: i64) -> serde_json::Value {
        json!({"observedGeneration": generation, "replicas": 2, "updatedReplicas": 2,
               "readyReplicas": 2, "availableReplicas": 2})
    }

    #[test]
    fn complete_only_when_every_replica_is_current() {
        assert_eq!(
            rollout_state(Some(&deployment("h", 2, done(2))), "h"),
            RolloutState::Complete
        );
        assert!(matches!(
            rollout_state(None, "h"),
            RolloutState::InProgress(_)
        ));
        assert!(matches!(
            rollout_state(Some(&deployment("old", 2, done(2))), "h"),
            RolloutState::InProgress(_)
        ));
        assert!(matches!(
            rollout_state(Some(&deployment("h", 3, done(2))), "h"),
            RolloutState::InProgress(_)
        ));
        let surge = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2,
                           "readyReplicas": 3, "availableReplicas": 3});
        let RolloutState::InProgress(msg) = rollout_state(Some(&deployment("h", 2, surge)), "h")
        else {
            panic!("an old pod is left")
        };
        assert!(msg.contains("1 old"), "{msg}");
        let half = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                          "readyReplicas": 1, "availableReplicas": 1});
        assert!(matches!(
            rollout_state(Some(&deployment("h", 2, half)), "h"),
            RolloutState::InProgress(_)
        ));
    }

    #[test]
    fn progress_deadline_is_reported() {
        let st = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "False",
                            "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet x has timed out progressing."}]});
        assert_eq!(
            rollout_state(Some(&deployment("h", 2, st)), "h"),
            RolloutState::DeadlineExceeded("ReplicaSet x has timed out progressing.".into())
        );
    }

    fn pod(name: &str, hash: &str, ready: bool, ip: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {KEYSET_HASH_ANNOTATION: hash}},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    #[test]
    fn only_ready_pods_of_the_current_keyset() {
        let mut terminating = pod("t", "h", true, Some("10.0.0.9"));
        terminating.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
        let pods = vec![
            pod("b", "h", true, Some("10.0.0.2")),
            pod("a", "h", true, Some("10.0.0.1")),
            pod("old", "g", true, Some("10.0.0.3")),
            pod("starting", "h", false, Some("10.0.0.4")),
            pod("noip", "h", true, None),
            terminating,
        ];
        assert_eq!(
            current_pods(&pods, "h"),
            vec![
                PodTarget {
                    name: "a".into(),
                    ip: "10.0.0.1".into()
                },
                PodTarget {
                    name: "b".into(),
                    ip: "10.0.0.2".into()
                },
            ]
        );
    }
}
