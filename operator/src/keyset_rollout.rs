//! How far a keyset has rolled out: what the Deployment and its pods say
//! about the pods of each keyset hash. Pure: reads objects the reconciler fetched.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;

use crate::conditions::{FALSE, TRUE};
use crate::readiness::REASON_PROGRESS_DEADLINE;
use crate::resources::KEYSET_HASH_ANNOTATION;
use crate::rotation::Rollout;

/// Rollout state of the Deployment for one keyset hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RolloutState {
    /// Template carries the hash, the Deployment controller observed this
    /// generation, every replica is updated, ready and available, and no pod
    /// of another keyset is left, not even a terminating one.
    Complete,
    /// Anything short of that; the message says what is missing.
    InProgress(String),
    /// The Deployment controller gave up (`Progressing=False`, `ProgressDeadlineExceeded`).
    DeadlineExceeded(String),
}

impl RolloutState {
    /// What the rotation machine is told: its [`Rollout::Complete`] is this
    /// [`RolloutState::Complete`], and the machine judges no rollout itself.
    pub(crate) fn for_rotation(&self) -> Rollout {
        match self {
            RolloutState::Complete => Rollout::Complete,
            RolloutState::InProgress(_) | RolloutState::DeadlineExceeded(_) => Rollout::InProgress,
        }
    }
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

/// The keyset hash a pod was created with.
fn pod_hash(p: &Pod) -> Option<&str> {
    p.metadata
        .annotations
        .as_ref()?
        .get(KEYSET_HASH_ANNOTATION)
        .map(String::as_str)
}

/// Names of the pods, terminating ones included, that run another keyset
/// than `keyset_hash`, sorted.
///
/// A terminating pod is out of the Deployment's `status.replicas`, but it
/// keeps answering until its process exits: kube-proxy still sends it
/// connections for a while, and it serves through its shutdown delay and
/// drain. Until it is gone a verifier can still fetch the old keyset from it,
/// so a wait that must start after every pod serves the new keyset (the
/// cache propagation, the drain) and the checks of the activation and the
/// retirement count it as not rolled out.
fn stale_pods(pods: &[Pod], keyset_hash: &str) -> Vec<String> {
    let mut out: Vec<String> = pods
        .iter()
        .filter(|p| pod_hash(p) != Some(keyset_hash))
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    out.sort();
    out
}

/// The rollout state of `deployment` towards `keyset_hash`; `pods` are all
/// of its pods (terminating ones included), see [`stale_pods`].
pub(crate) fn rollout_state(
    deployment: Option<&Deployment>,
    pods: &[Pod],
    keyset_hash: &str,
) -> RolloutState {
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
            && c.status == FALSE
            // The Deployment controller's reason, which ours repeats.
            && c.reason.as_deref() == Some(REASON_PROGRESS_DEADLINE)
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
    let stale = stale_pods(pods, keyset_hash);
    if !stale.is_empty() {
        return RolloutState::InProgress(format!(
            "{} pod(s) of another keyset still running or terminating: {}",
            stale.len(),
            stale.join(", ")
        ));
    }
    RolloutState::Complete
}

/// A ready pod of the current template, to probe at `ip`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodTarget {
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
            .any(|c| c.type_ == "Ready" && c.status == TRUE)
}

/// The highest max token TTL in the environment of any listed pod, running
/// or terminating, whatever its template: what a pod of an older template
/// may still mint with. `None` when no pod carries one.
pub(crate) fn highest_pod_max_ttl(pods: &[Pod]) -> Option<i64> {
    pods.iter()
        .filter_map(|p| p.spec.as_ref())
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.env.iter().flatten())
        .filter(|e| e.name == macp_auth_service::config::MAX_TTL)
        .filter_map(|e| e.value.as_deref()?.trim().parse::<i64>().ok())
        .max()
}

/// Ready, running, not terminating pods whose template carries `keyset_hash`,
/// sorted by name so probe order (and messages) are stable.
pub(crate) fn current_pods(pods: &[Pod], keyset_hash: &str) -> Vec<PodTarget> {
    ready_pods(pods, |hash| hash == Some(keyset_hash))
}

/// The ready, running, not terminating pods of every other keyset: during a
/// rollout they serve alongside the current ones (`Ready` counts them).
pub(crate) fn other_keyset_pods(pods: &[Pod], keyset_hash: &str) -> Vec<PodTarget> {
    ready_pods(pods, |hash| hash != Some(keyset_hash))
}

fn ready_pods(pods: &[Pod], keyset: impl Fn(Option<&str>) -> bool) -> Vec<PodTarget> {
    let mut out: Vec<PodTarget> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| keyset(pod_hash(p)))
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
    fn the_highest_max_ttl_of_any_pod_counts_terminating_and_older_ones() {
        let pod = |ttl: Option<&str>, terminating: bool| -> Pod {
            let env = ttl.map_or(
                json!([]),
                |t| json!([{"name": "MACP_AUTH_MAX_TTL_SECONDS", "value": t}]),
            );
            let mut meta = json!({"name": "p"});
            if terminating {
                meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            serde_json::from_value(json!({
                "metadata": meta,
                "spec": {"containers": [{"name": "token-service", "env": env}]}
            }))
            .unwrap()
        };
        assert_eq!(highest_pod_max_ttl(&[]), None);
        assert_eq!(
            highest_pod_max_ttl(&[
                pod(Some("5"), false),
                pod(Some("600"), true),
                pod(None, false)
            ]),
            Some(600)
        );
        assert_eq!(
            highest_pod_max_ttl(&[pod(Some("not a number"), false)]),
            None
        );
    }

    /// The rotation machine waits on exactly this module's judgement.
    #[test]
    fn the_rotation_sees_complete_only_for_a_complete_rollout() {
        assert_eq!(RolloutState::Complete.for_rotation(), Rollout::Complete);
        for short in [
            RolloutState::InProgress("1/2 replicas updated".into()),
            RolloutState::DeadlineExceeded("timed out".into()),
        ] {
            assert_eq!(short.for_rotation(), Rollout::InProgress, "{short:?}");
        }
    }

    #[test]
    fn complete_only_when_every_replica_is_current() {
        assert_eq!(
            rollout_state(Some(&deployment("h", 2, done(2))), &[], "h"),
            RolloutState::Complete
        );
        assert!(matches!(
            rollout_state(None, &[], "h"),
            RolloutState::InProgress(_)
        ));
        assert!(matches!(
            rollout_state(Some(&deployment("old", 2, done(2))), &[], "h"),
            RolloutState::InProgress(_)
        ));
        assert!(matches!(
            rollout_state(Some(&deployment("h", 3, done(2))), &[], "h"),
            RolloutState::InProgress(_)
        ));
        let surge = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2,
                           "readyReplicas": 3, "availableReplicas": 3});
        let RolloutState::InProgress(msg) =
            rollout_state(Some(&deployment("h", 2, surge)), &[], "h")
        else {
            panic!("an old pod is left")
        };
        assert!(msg.contains("1 old"), "{msg}");
        let half = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                          "readyReplicas": 1, "availableReplicas": 1});
        assert!(matches!(
            rollout_state(Some(&deployment("h", 2, half)), &[], "h"),
            RolloutState::InProgress(_)
        ));
    }

    #[test]
    fn pods_of_another_keyset_block_completion_until_gone() {
        let d = deployment("h", 2, done(2));
        let mut leaving = pod("old-1", "g", false, Some("10.0.0.3"));
        leaving.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
        let current = [
            pod("a", "h", true, Some("10.0.0.1")),
            pod("b", "h", true, Some("10.0.0.2")),
        ];
        let mut pods = current.to_vec();
        pods.push(leaving);
        // status.replicas no longer counts the terminating pod; the pod list does.
        let RolloutState::InProgress(msg) = rollout_state(Some(&d), &pods, "h") else {
            panic!("a terminating pod of the old keyset is left")
        };
        assert!(msg.contains("old-1"), "{msg}");
        assert_eq!(stale_pods(&pods, "h"), vec!["old-1".to_string()]);
        assert_eq!(
            rollout_state(Some(&d), &current, "h"),
            RolloutState::Complete
        );
    }

    #[test]
    fn progress_deadline_is_reported() {
        let st = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "False",
                            "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet x has timed out progressing."}]});
        assert_eq!(
            rollout_state(Some(&deployment("h", 2, st)), &[], "h"),
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
        // The other keysets' ready pods, for Ready during a rollout.
        assert_eq!(
            other_keyset_pods(&pods, "h"),
            vec![PodTarget {
                name: "old".into(),
                ip: "10.0.0.3".into()
            }]
        );
    }
}
