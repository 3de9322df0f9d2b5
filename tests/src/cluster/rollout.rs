//! The deployment controller's decisions, as pure functions: template hash, rolling
//! update plan, and the Deployment status that describes the pods.

use serde_json::{Value, json};

/// What the controller knows about one live (not terminating) pod of a Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub hash: String,
    pub ready: bool,
    /// Creation order; larger is newer.
    pub seq: u64,
}

/// `spec.strategy` resolved to pod counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strategy {
    pub max_surge: usize,
    pub max_unavailable: usize,
    pub recreate: bool,
}

/// What to do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New-template pods to start.
    pub start: usize,
    /// Pods to delete.
    pub stop: Vec<String>,
}

/// Pod template hash, like the `pod-template-hash` label: FNV-1a over the template
/// JSON, written in the API server's "safe" alphabet.
pub fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let text = template.to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (0..10)
        .map(|i| ALPHABET[((h >> (i * 6)) % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

/// An `IntOrString` count: an integer, or a percentage of `desired` rounded up
/// (surge) or down (unavailable), like the real controller.
fn count(v: Option<&Value>, desired: usize, default_pct: u64, round_up: bool) -> usize {
    let pct = |p: u64| {
        let scaled = desired as u64 * p;
        let n = if round_up {
            scaled.div_ceil(100)
        } else {
            scaled / 100
        };
        n as usize
    };
    match v {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0) as usize,
        Some(Value::String(s)) => s
            .strip_suffix('%')
            .and_then(|p| p.trim().parse::<u64>().ok())
            .map(pct)
            .unwrap_or_else(|| pct(default_pct)),
        _ => pct(default_pct),
    }
}

/// Reads `spec.strategy` (defaults: RollingUpdate, 25% surge, 25% unavailable).
pub fn strategy(spec: &Value, desired: usize) -> Strategy {
    let s = spec.get("strategy");
    let recreate = s.and_then(|s| s.get("type")).and_then(Value::as_str) == Some("Recreate");
    let ru = s.and_then(|s| s.get("rollingUpdate"));
    let mut max_surge = count(ru.and_then(|r| r.get("maxSurge")), desired, 25, true);
    let max_unavailable = count(ru.and_then(|r| r.get("maxUnavailable")), desired, 25, false);
    if max_surge == 0 && max_unavailable == 0 {
        // The API server refuses both zero; progress needs one of them.
        max_surge = 1;
    }
    Strategy {
        max_surge,
        max_unavailable,
        recreate,
    }
}

/// One step of the rollout. `pods` are the live pods of the Deployment;
/// `terminating` counts its pods still shutting down (Recreate waits for them).
pub fn plan(
    desired: usize,
    hash: &str,
    pods: &[PodView],
    terminating: usize,
    strategy: Strategy,
) -> Plan {
    let (new, old): (Vec<&PodView>, Vec<&PodView>) = pods.iter().partition(|p| p.hash == hash);
    let mut out = Plan::default();
    if strategy.recreate {
        if !old.is_empty() {
            out.stop = old.iter().map(|p| p.name.clone()).collect();
        } else if terminating == 0 {
            out.start = desired.saturating_sub(new.len());
        }
        out.stop.extend(excess_new(&new, desired));
        return out;
    }
    out.stop.extend(excess_new(&new, desired));
    let live_new = new.len().min(desired);
    let total = live_new + old.len();
    let max_total = desired + strategy.max_surge;
    out.start = desired
        .saturating_sub(live_new)
        .min(max_total.saturating_sub(total));

    // Old pods: unready ones contribute nothing, so they can always go; ready ones
    // only while availability stays at or above desired - maxUnavailable.
    let kept_new_ready = {
        let mut ready: Vec<&&PodView> = new.iter().filter(|p| p.ready).collect();
        ready.truncate(desired);
        ready.len()
    };
    let old_ready: Vec<&&PodView> = {
        let mut v: Vec<&&PodView> = old.iter().filter(|p| p.ready).collect();
        v.sort_by_key(|p| p.seq);
        v
    };
    out.stop
        .extend(old.iter().filter(|p| !p.ready).map(|p| p.name.clone()));
    let min_available = desired.saturating_sub(strategy.max_unavailable);
    let available = kept_new_ready + old_ready.len();
    let removable = available.saturating_sub(min_available);
    out.stop
        .extend(old_ready.iter().take(removable).map(|p| p.name.clone()));
    out
}

/// New-template pods beyond `desired`: unready first, newest first.
fn excess_new(new: &[&PodView], desired: usize) -> Vec<String> {
    if new.len() <= desired {
        return Vec::new();
    }
    let mut v: Vec<&&PodView> = new.iter().collect();
    v.sort_by_key(|p| (p.ready, std::cmp::Reverse(p.seq)));
    v.iter()
        .take(new.len() - desired)
        .map(|p| p.name.clone())
        .collect()
}

/// Inputs of the Deployment status.
pub struct StatusInput<'a> {
    pub generation: i64,
    pub desired: usize,
    pub hash: &'a str,
    pub pods: &'a [PodView],
    pub strategy: Strategy,
    /// The rollout made no progress for longer than `progressDeadlineSeconds`.
    pub deadline_exceeded: bool,
    pub name: &'a str,
    pub now: &'a str,
}

fn condition(
    prev: Option<&Value>,
    ty: &str,
    status: &str,
    reason: &str,
    message: String,
    now: &str,
) -> Value {
    let prev = prev
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
        });
    let same = |f: &str, v: &str| prev.and_then(|c| c.get(f)).and_then(Value::as_str) == Some(v);
    let transition = match prev.and_then(|c| c.get("lastTransitionTime")) {
        Some(t) if same("status", status) => t.clone(),
        _ => json!(now),
    };
    let update = match prev.and_then(|c| c.get("lastUpdateTime")) {
        Some(t)
            if same("status", status) && same("reason", reason) && same("message", &message) =>
        {
            t.clone()
        }
        _ => json!(now),
    };
    json!({"type": ty, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": transition, "lastUpdateTime": update})
}

/// Whether the rollout is complete: every pod runs the current template, all ready.
pub fn complete(desired: usize, hash: &str, pods: &[PodView]) -> bool {
    pods.len() == desired && pods.iter().all(|p| p.hash == hash && p.ready)
}

/// The Deployment `status` the real controller would write; `prev` keeps condition
/// timestamps stable while nothing changes (so an idle Deployment sees no writes).
pub fn deployment_status(input: &StatusInput<'_>, prev: Option<&Value>) -> Value {
    let pods = input.pods;
    let replicas = pods.len();
    let updated = pods.iter().filter(|p| p.hash == input.hash).count();
    let ready = pods.iter().filter(|p| p.ready).count();
    let unavailable = replicas.max(input.desired).saturating_sub(ready);
    let min_available = input.desired.saturating_sub(input.strategy.max_unavailable);
    let rs = format!("{}-{}", input.name, input.hash);
    let available = if ready >= min_available {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".to_string(),
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".to_string(),
        )
    };
    let progressing = if complete(input.desired, input.hash, pods) {
        (
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{rs}\" has successfully progressed."),
        )
    } else if input.deadline_exceeded {
        (
            "False",
            "ProgressDeadlineExceeded",
            format!("ReplicaSet \"{rs}\" has timed out progressing."),
        )
    } else {
        (
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{rs}\" is progressing."),
        )
    };
    let conditions = vec![
        condition(
            prev,
            "Available",
            available.0,
            available.1,
            available.2,
            input.now,
        ),
        condition(
            prev,
            "Progressing",
            progressing.0,
            progressing.1,
            progressing.2,
            input.now,
        ),
    ];
    let mut status = json!({
        "observedGeneration": input.generation,
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "conditions": conditions,
    });
    if unavailable > 0 {
        status["unavailableReplicas"] = json!(unavailable);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, hash: &str, ready: bool, seq: u64) -> PodView {
        PodView {
            name: name.into(),
            hash: hash.into(),
            ready,
            seq,
        }
    }

    const SAFE: Strategy = Strategy {
        max_surge: 1,
        max_unavailable: 0,
        recreate: false,
    };

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = json!({"spec": {"containers": [{"image": "a"}]}});
        let b = json!({"spec": {"containers": [{"image": "b"}]}});
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
        assert_ne!(template_hash(&a), template_hash(&b));
        assert_eq!(template_hash(&a).len(), 10);
    }

    #[test]
    fn strategy_defaults_and_values() {
        let s = strategy(&json!({}), 4);
        assert_eq!((s.max_surge, s.max_unavailable, s.recreate), (1, 1, false));
        let s = strategy(
            &json!({"strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}),
            2,
        );
        assert_eq!((s.max_surge, s.max_unavailable), (1, 0));
        let s = strategy(
            &json!({"strategy": {"rollingUpdate": {"maxSurge": "50%", "maxUnavailable": "0%"}}}),
            3,
        );
        assert_eq!((s.max_surge, s.max_unavailable), (2, 0));
        let s = strategy(
            &json!({"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}),
            3,
        );
        assert_eq!(s.max_surge, 1);
        assert!(strategy(&json!({"strategy": {"type": "Recreate"}}), 1).recreate);
    }

    #[test]
    fn scale_up_from_nothing() {
        assert_eq!(
            plan(2, "h", &[], 0, SAFE),
            Plan {
                start: 2,
                stop: vec![]
            }
        );
    }

    #[test]
    fn rolling_update_never_drops_below_desired_ready() {
        // Simulate the whole rollout: each step applies the plan, then new pods become ready.
        let mut pods = vec![pod("a", "old", true, 0), pod("b", "old", true, 1)];
        let mut seq = 2;
        for _ in 0..20 {
            let p = plan(2, "new", &pods, 0, SAFE);
            pods.retain(|x| !p.stop.contains(&x.name));
            assert!(pods.iter().filter(|x| x.ready).count() >= 2, "{pods:?}");
            for _ in 0..p.start {
                pods.push(pod(&format!("n{seq}"), "new", false, seq));
                seq += 1;
            }
            assert!(pods.len() <= 3, "surge bound: {pods:?}");
            if complete(2, "new", &pods) {
                return;
            }
            for x in pods.iter_mut() {
                x.ready = true;
            }
        }
        panic!("rollout did not complete: {pods:?}");
    }

    #[test]
    fn stuck_new_pod_keeps_old_pods() {
        let pods = vec![
            pod("a", "old", true, 0),
            pod("b", "old", true, 1),
            pod("n", "new", false, 2),
        ];
        assert_eq!(plan(2, "new", &pods, 0, SAFE), Plan::default());
    }

    #[test]
    fn rollback_removes_unready_pods_of_the_abandoned_template() {
        let pods = vec![
            pod("a", "good", true, 0),
            pod("b", "good", true, 1),
            pod("n", "bad", false, 2),
        ];
        assert_eq!(
            plan(2, "good", &pods, 0, SAFE),
            Plan {
                start: 0,
                stop: vec!["n".into()]
            }
        );
    }

    #[test]
    fn scale_down_prefers_unready_and_newest() {
        let pods = vec![
            pod("a", "h", true, 0),
            pod("b", "h", false, 1),
            pod("c", "h", true, 2),
        ];
        assert_eq!(
            plan(1, "h", &pods, 0, SAFE).stop,
            vec!["b".to_string(), "c".to_string()]
        );
    }

    #[test]
    fn recreate_stops_old_then_starts_new() {
        let rec = Strategy {
            recreate: true,
            ..SAFE
        };
        let pods = vec![pod("a", "old", true, 0)];
        assert_eq!(
            plan(1, "new", &pods, 0, rec),
            Plan {
                start: 0,
                stop: vec!["a".into()]
            }
        );
        assert_eq!(plan(1, "new", &[], 1, rec), Plan::default());
        assert_eq!(plan(1, "new", &[], 0, rec).start, 1);
    }

    #[test]
    fn status_reports_progress() {
        let pods = vec![
            pod("a", "old", true, 0),
            pod("b", "old", true, 1),
            pod("n", "new", false, 2),
        ];
        let input = StatusInput {
            generation: 3,
            desired: 2,
            hash: "new",
            pods: &pods,
            strategy: SAFE,
            deadline_exceeded: false,
            name: "web",
            now: "2026-01-01T00:00:00Z",
        };
        let s = deployment_status(&input, None);
        assert_eq!(s["observedGeneration"], 3);
        assert_eq!(
            (s["replicas"].as_u64(), s["updatedReplicas"].as_u64()),
            (Some(3), Some(1))
        );
        assert_eq!(
            (
                s["readyReplicas"].as_u64(),
                s["unavailableReplicas"].as_u64()
            ),
            (Some(2), Some(1))
        );
        assert_eq!(s["conditions"][0]["status"], "True");
        assert_eq!(s["conditions"][1]["reason"], "ReplicaSetUpdated");
        // Timestamps survive an identical recomputation later.
        let later = StatusInput {
            now: "2026-01-01T00:10:00Z",
            ..input
        };
        assert_eq!(deployment_status(&later, Some(&s)), s);
        let stuck = StatusInput {
            deadline_exceeded: true,
            ..later
        };
        let s2 = deployment_status(&stuck, Some(&s));
        assert_eq!(s2["conditions"][1]["status"], "False");
        assert_eq!(s2["conditions"][1]["reason"], "ProgressDeadlineExceeded");
        assert_eq!(
            s2["conditions"][1]["lastTransitionTime"],
            "2026-01-01T00:10:00Z"
        );
        let done = vec![pod("n", "new", true, 2), pod("m", "new", true, 3)];
        let s3 = deployment_status(
            &StatusInput {
                pods: &done,
                ..stuck
            },
            Some(&s2),
        );
        assert_eq!(s3["conditions"][1]["reason"], "NewReplicaSetAvailable");
        assert!(s3.get("unavailableReplicas").is_none());
    }
}
