//! Whether a `MacpAuth` is Ready, judged from what a round observed. Pure: the
//! reconciler passes the rollout state, the active kid, the probed pods and the
//! current conditions, and writes the answer.
//!
//! `Ready` means every ready pod of the current template serves the active
//! key: what a verifier needs. The rollout's own failure (the Deployment
//! controller gave up) is also `Degraded`, unless a rotation already holds
//! `Degraded`: its reason (a stalled rollout, a rollback) says more, and only
//! rotation may clear it.

use crate::crd::Condition;
use crate::observe::RolloutState;
use crate::rotation::{self, PodView};

/// `Ready` and `Degraded` reason: the Deployment exceeded its progress deadline.
pub const REASON_PROGRESS_DEADLINE: &str = "ProgressDeadlineExceeded";

/// What the round must do to the rollout's `Degraded`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutDegraded {
    /// Set it with this reason and message.
    Set {
        reason: &'static str,
        message: String,
    },
    /// The rollout is fine: clear it if the reconciler set it.
    Clear,
    /// Leave it as it is (rotation holds it).
    Keep,
}

/// The `Ready` condition to write, and the rollout's `Degraded`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
    pub degraded: RolloutDegraded,
}

/// Readiness from the rollout of the keyset whose active key is `active_kid`
/// and the probes of its ready pods.
pub fn assess(
    rollout: &RolloutState,
    active_kid: &str,
    pods: &[PodView],
    conditions: &[Condition],
) -> Readiness {
    match rollout {
        RolloutState::DeadlineExceeded(msg) => Readiness {
            ready: false,
            reason: REASON_PROGRESS_DEADLINE,
            message: msg.clone(),
            degraded: if rotation::degraded_by_rotation(conditions) {
                RolloutDegraded::Keep
            } else {
                RolloutDegraded::Set {
                    reason: REASON_PROGRESS_DEADLINE,
                    message: msg.clone(),
                }
            },
        },
        RolloutState::InProgress(msg) => not_ready("RollingOut", msg.clone()),
        RolloutState::Complete if pods.is_empty() => not_ready(
            "NoReadyPods",
            "no ready pod of the current template to probe".into(),
        ),
        RolloutState::Complete => {
            let problems: Vec<String> = pods
                .iter()
                .filter_map(|p| match &p.served_kids {
                    Ok(kids) if kids.iter().any(|k| k == active_kid) => None,
                    Ok(kids) => Some(format!("pod {} serves [{}]", p.name, kids.join(", "))),
                    Err(e) => Some(format!("pod {}: {e}", p.name)),
                })
                .collect();
            if problems.is_empty() {
                Readiness {
                    ready: true,
                    reason: "Verified",
                    message: format!("{} pod(s) serve the active key {active_kid}", pods.len()),
                    degraded: RolloutDegraded::Clear,
                }
            } else {
                not_ready("ActiveKeyNotServed", problems.join("; "))
            }
        }
    }
}

/// Not ready while the pods roll onto what this round wrote (`keyset_changed`:
/// a new keyset, else new token TTLs): nothing observed before the write
/// describes them.
pub fn rolling_out(keyset_changed: bool) -> Readiness {
    let what = if keyset_changed {
        "a new keyset"
    } else {
        "new token TTLs"
    };
    not_ready("RollingOut", format!("rolling the pods onto {what}"))
}

fn not_ready(reason: &'static str, message: String) -> Readiness {
    Readiness {
        ready: false,
        reason,
        message,
        degraded: RolloutDegraded::Clear,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::{self, DEGRADED};
    use chrono::{TimeZone, Utc};

    fn degraded(reason: &str) -> Vec<Condition> {
        let mut c = Vec::new();
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        conditions::set(&mut c, DEGRADED, true, reason, "earlier", t, Some(1));
        c
    }

    fn serving(name: &str, kids: &[&str]) -> PodView {
        PodView {
            name: name.into(),
            served_kids: Ok(kids.iter().map(|k| k.to_string()).collect()),
            signing_kid: None,
        }
    }

    fn unreachable(name: &str) -> PodView {
        PodView {
            name: name.into(),
            served_kids: Err("connection refused".into()),
            signing_kid: None,
        }
    }

    #[test]
    fn a_deadline_exceeded_rollout_is_not_ready_and_degraded_unless_rotation_holds_it() {
        let rollout = RolloutState::DeadlineExceeded("timed out progressing".into());
        let r = assess(&rollout, "k1", &[], &[]);
        assert_eq!(
            r,
            Readiness {
                ready: false,
                reason: REASON_PROGRESS_DEADLINE,
                message: "timed out progressing".into(),
                degraded: RolloutDegraded::Set {
                    reason: REASON_PROGRESS_DEADLINE,
                    message: "timed out progressing".into(),
                },
            }
        );
        // The reconciler's own Degraded is replaced by the deadline.
        let ours = assess(&rollout, "k1", &[], &degraded("InvalidSpec"));
        assert!(matches!(ours.degraded, RolloutDegraded::Set { .. }));
        // Rotation's reason says more, and is rotation's to clear.
        let held = assess(&rollout, "k1", &[], &degraded("RolloutTimeout"));
        assert_eq!(
            (held.ready, held.reason, held.degraded),
            (false, REASON_PROGRESS_DEADLINE, RolloutDegraded::Keep)
        );
    }

    #[test]
    fn a_rollout_in_progress_is_not_ready_and_clears_the_rollout_degraded() {
        let r = assess(
            &RolloutState::InProgress("1/2 replicas updated".into()),
            "k1",
            &[serving("p0", &["k1"])],
            &degraded(REASON_PROGRESS_DEADLINE),
        );
        assert_eq!(
            r,
            Readiness {
                ready: false,
                reason: "RollingOut",
                message: "1/2 replicas updated".into(),
                degraded: RolloutDegraded::Clear,
            }
        );
    }

    #[test]
    fn a_complete_rollout_without_ready_pods_is_not_ready() {
        let r = assess(&RolloutState::Complete, "k1", &[], &[]);
        assert_eq!(
            (r.ready, r.reason, r.message.as_str(), r.degraded),
            (
                false,
                "NoReadyPods",
                "no ready pod of the current template to probe",
                RolloutDegraded::Clear
            )
        );
    }

    #[test]
    fn a_complete_rollout_whose_pods_all_serve_the_active_key_is_ready() {
        let pods = [serving("p0", &["k1", "k0"]), serving("p1", &["k1"])];
        let r = assess(&RolloutState::Complete, "k1", &pods, &[]);
        assert_eq!(
            r,
            Readiness {
                ready: true,
                reason: "Verified",
                message: "2 pod(s) serve the active key k1".into(),
                degraded: RolloutDegraded::Clear,
            }
        );
    }

    #[test]
    fn a_pod_not_serving_the_active_key_or_not_answering_is_named() {
        let pods = [
            serving("p0", &["k1"]),
            serving("p1", &["k0"]),
            unreachable("p2"),
        ];
        let r = assess(&RolloutState::Complete, "k1", &pods, &[]);
        assert_eq!(
            (r.ready, r.reason, r.message.as_str(), r.degraded),
            (
                false,
                "ActiveKeyNotServed",
                "pod p1 serves [k0]; pod p2: connection refused",
                RolloutDegraded::Clear
            )
        );
    }

    #[test]
    fn pods_rolling_onto_this_round_s_writes_are_not_ready() {
        assert_eq!(
            rolling_out(true),
            Readiness {
                ready: false,
                reason: "RollingOut",
                message: "rolling the pods onto a new keyset".into(),
                degraded: RolloutDegraded::Clear,
            }
        );
        assert_eq!(
            rolling_out(false).message,
            "rolling the pods onto new token TTLs"
        );
    }
}
