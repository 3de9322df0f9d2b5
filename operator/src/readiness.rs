//! Whether a `MacpAuth` is Ready, judged from what a round observed. Pure: the
//! reconciler passes the rollout state, the active kid, the probed pods and the
//! current conditions, and writes the answer.
//!
//! The ecosystem's convention (a Deployment's `Available`, cert-manager's
//! `Ready`): `Ready` says whether the service works now, not whether it is
//! changing. It is `True` while the available pods, of whatever template,
//! serve the active key in their JWKS: what a verifier needs, and a pod that
//! serves the JWKS also mints. A rollout (each phase of a routine rotation
//! rolls the pods) shows in `Progressing` and `Rotating`, not as an outage.
//! `Ready` turns `False` only when a verifier would really fail: no available
//! pod serves the active key, or an available pod serves a JWKS without it.
//! A pod that does not answer its probe is named in the message but counts
//! against `Ready` only when no pod serves: during a rollout a pod may stop
//! between the listing and the probe.
//!
//! The rollout's own failure (the Deployment controller gave up) is
//! `Degraded`, while the old pods keep `Ready` up, unless a rotation already
//! holds `Degraded`: its reason (a stalled rollout, a rollback) says more, and
//! only rotation may clear it.

use crate::crd::Condition;
use crate::keyset_rollout::RolloutState;
use crate::rotation::{self, PodView};

/// `Progressing` and `Degraded` reason: the Deployment exceeded its progress deadline.
pub const REASON_PROGRESS_DEADLINE: &str = "ProgressDeadlineExceeded";
/// `Ready` reason: the available pods serve the active key.
const REASON_VERIFIED: &str = "Verified";
/// `Ready` reason: an available pod serves a JWKS without the active key, or
/// none answered.
const REASON_NOT_SERVED: &str = "ActiveKeyNotServed";
/// `Ready` reason: no pod is available to serve.
const REASON_NO_PODS: &str = "NoAvailablePods";
/// `Progressing` reason while the pods roll.
const REASON_ROLLING_OUT: &str = "RollingOut";
/// `Progressing` reason once every pod runs the current template.
const REASON_ROLLOUT_COMPLETE: &str = "RolloutComplete";

/// What the round must do to the rollout's `Degraded`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RolloutDegraded {
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

/// The `Progressing` condition to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    pub progressing: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The `Ready` condition to write, the rollout's `Progressing` and its `Degraded`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Readiness {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
    pub progress: Progress,
    pub degraded: RolloutDegraded,
}

/// Readiness from the rollout of the keyset whose active key is `active_kid`
/// and the probes of the available pods (`available`: the ready pods of
/// every template).
pub(crate) fn assess(
    rollout: &RolloutState,
    active_kid: &str,
    available: &[PodView],
    conditions: &[Condition],
) -> Readiness {
    let (progress, degraded) = match rollout {
        RolloutState::DeadlineExceeded(msg) => (
            Progress {
                progressing: false,
                reason: REASON_PROGRESS_DEADLINE,
                message: msg.clone(),
            },
            if rotation::degraded_by_rotation(conditions) {
                RolloutDegraded::Keep
            } else {
                RolloutDegraded::Set {
                    reason: REASON_PROGRESS_DEADLINE,
                    message: msg.clone(),
                }
            },
        ),
        RolloutState::InProgress(msg) => (rolling(msg.clone()), RolloutDegraded::Clear),
        RolloutState::Complete => (
            Progress {
                progressing: false,
                reason: REASON_ROLLOUT_COMPLETE,
                message: "every pod runs the current template".into(),
            },
            RolloutDegraded::Clear,
        ),
    };
    serving(active_kid, available, progress, degraded)
}

/// Readiness while the pods roll onto what this round wrote
/// (`keyset_changed`: a new keyset, else new token TTLs): `available` are the
/// pods seen before the write, which keep serving until they are replaced
/// (the rollout never takes a pod away before its successor is ready).
pub(crate) fn rolling_out(
    keyset_changed: bool,
    active_kid: &str,
    available: &[PodView],
) -> Readiness {
    let what = if keyset_changed {
        "a new keyset"
    } else {
        "new token TTLs"
    };
    serving(
        active_kid,
        available,
        rolling(format!("rolling the pods onto {what}")),
        RolloutDegraded::Clear,
    )
}

fn rolling(message: String) -> Progress {
    Progress {
        progressing: true,
        reason: REASON_ROLLING_OUT,
        message,
    }
}

/// `Ready` from what the available pods serve.
fn serving(
    active_kid: &str,
    available: &[PodView],
    progress: Progress,
    degraded: RolloutDegraded,
) -> Readiness {
    let mut serving = 0;
    let mut stale = Vec::new();
    let mut silent = Vec::new();
    for p in available {
        match &p.served_kids {
            Ok(kids) if kids.iter().any(|k| k == active_kid) => serving += 1,
            Ok(kids) => stale.push(format!("pod {} serves [{}]", p.name, kids.join(", "))),
            Err(e) => silent.push(format!("pod {}: {e}", p.name)),
        }
    }
    let (ready, reason, message) = if available.is_empty() {
        (
            false,
            REASON_NO_PODS,
            "no available pod serves the JWKS".to_string(),
        )
    } else if !stale.is_empty() || serving == 0 {
        stale.extend(silent);
        (false, REASON_NOT_SERVED, stale.join("; "))
    } else {
        let mut message = format!("{serving} available pod(s) serve the active key {active_kid}");
        if !silent.is_empty() {
            message.push_str(&format!("; not answering: {}", silent.join("; ")));
        }
        (true, REASON_VERIFIED, message)
    };
    Readiness {
        ready,
        reason,
        message,
        progress,
        degraded,
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

    fn in_progress() -> RolloutState {
        RolloutState::InProgress("1/2 replicas updated".into())
    }

    /// Each phase of a routine rotation with prepublish rolls the pods while
    /// the old ones still serve: Publishing (same active key, the next one
    /// added), Activating (the new key active, the old pods already publish
    /// it), Retiring (the old key gone). Ready stays True throughout; the
    /// rollout shows in Progressing.
    #[test]
    fn ready_stays_true_through_every_rollout_of_a_routine_rotation() {
        /// A rollout phase: the active key and the pods of the old and the
        /// new template.
        struct Rollout {
            phase: &'static str,
            active: &'static str,
            pods: Vec<PodView>,
        }
        let phases = [
            Rollout {
                phase: "Publishing",
                active: "k0",
                pods: vec![serving("old", &["k0"]), serving("new", &["k0", "k1"])],
            },
            Rollout {
                phase: "Activating",
                active: "k1",
                pods: vec![serving("old", &["k0", "k1"]), serving("new", &["k1", "k0"])],
            },
            Rollout {
                phase: "Retiring",
                active: "k1",
                pods: vec![serving("old", &["k1", "k0"]), serving("new", &["k1"])],
            },
        ];
        for Rollout {
            phase,
            active,
            pods,
        } in phases
        {
            for r in [
                assess(&in_progress(), active, &pods, &[]),
                // The round that writes the keyset judges the pods it saw before.
                rolling_out(true, active, &pods[..1]),
            ] {
                assert!(r.ready, "{phase}: {r:?}");
                assert_eq!(r.reason, REASON_VERIFIED, "{phase}");
                assert!(r.progress.progressing, "{phase}");
                assert_eq!(r.progress.reason, REASON_ROLLING_OUT, "{phase}");
            }
        }
        let r = rolling_out(false, "k1", &[serving("p0", &["k1"])]);
        assert_eq!(r.progress.message, "rolling the pods onto new token TTLs");
    }

    #[test]
    fn a_complete_rollout_whose_pods_all_serve_the_active_key_is_ready() {
        let pods = [serving("p0", &["k1", "k0"]), serving("p1", &["k1"])];
        let r = assess(&RolloutState::Complete, "k1", &pods, &[]);
        assert_eq!(
            r,
            Readiness {
                ready: true,
                reason: REASON_VERIFIED,
                message: "2 available pod(s) serve the active key k1".into(),
                progress: Progress {
                    progressing: false,
                    reason: REASON_ROLLOUT_COMPLETE,
                    message: "every pod runs the current template".into(),
                },
                degraded: RolloutDegraded::Clear,
            }
        );
    }

    /// A verifier that fetches from a pod without the active key fails on
    /// the tokens it signs: not Ready, whatever the others serve (an
    /// activation without prepublish, or a pod left on an older keyset).
    #[test]
    fn a_pod_not_serving_the_active_key_is_named_and_not_ready() {
        let pods = [
            serving("p0", &["k1"]),
            serving("p1", &["k0"]),
            unreachable("p2"),
        ];
        for rollout in [RolloutState::Complete, in_progress()] {
            let r = assess(&rollout, "k1", &pods, &[]);
            assert_eq!(
                (r.ready, r.reason, r.message.as_str()),
                (
                    false,
                    REASON_NOT_SERVED,
                    "pod p1 serves [k0]; pod p2: connection refused"
                )
            );
        }
    }

    /// A pod may stop between the listing and its probe: named, but Ready
    /// holds while the others serve; with none answering it does not.
    #[test]
    fn a_pod_not_answering_counts_only_when_no_pod_serves() {
        let r = assess(
            &in_progress(),
            "k1",
            &[serving("p0", &["k1"]), unreachable("p1")],
            &[],
        );
        assert!(r.ready);
        assert_eq!(
            r.message,
            "1 available pod(s) serve the active key k1; not answering: pod p1: connection refused"
        );
        let r = assess(&in_progress(), "k1", &[unreachable("p1")], &[]);
        assert_eq!((r.ready, r.reason), (false, REASON_NOT_SERVED));
    }

    #[test]
    fn no_available_pod_is_not_ready() {
        for rollout in [RolloutState::Complete, in_progress()] {
            let r = assess(&rollout, "k1", &[], &[]);
            assert_eq!(
                (r.ready, r.reason, r.message.as_str()),
                (false, REASON_NO_PODS, "no available pod serves the JWKS")
            );
        }
        assert!(!rolling_out(true, "k1", &[]).ready);
    }

    /// The Deployment controller gave up: Degraded (unless a rotation holds
    /// it) and no longer Progressing, while the old pods keep Ready True.
    #[test]
    fn a_stalled_rollout_is_degraded_while_the_old_pods_keep_serving() {
        let rollout = RolloutState::DeadlineExceeded("timed out progressing".into());
        let old = [serving("old-0", &["k1"]), serving("old-1", &["k1"])];
        let r = assess(&rollout, "k1", &old, &[]);
        assert_eq!(
            (r.ready, r.reason, r.degraded),
            (
                true,
                REASON_VERIFIED,
                RolloutDegraded::Set {
                    reason: REASON_PROGRESS_DEADLINE,
                    message: "timed out progressing".into(),
                }
            )
        );
        assert_eq!(
            r.progress,
            Progress {
                progressing: false,
                reason: REASON_PROGRESS_DEADLINE,
                message: "timed out progressing".into(),
            }
        );
        // The reconciler's own Degraded is replaced by the deadline.
        let ours = assess(&rollout, "k1", &old, &degraded("InvalidSpec"));
        assert!(matches!(ours.degraded, RolloutDegraded::Set { .. }));
        // Rotation's reason (a stalled rollout, a rollback) says more, and is rotation's to clear.
        let held = assess(&rollout, "k1", &old, &degraded("RolloutTimeout"));
        assert_eq!((held.ready, held.degraded), (true, RolloutDegraded::Keep));
        // With nothing serving, the stall is an outage too.
        assert!(!assess(&rollout, "k1", &[], &[]).ready);
    }

    #[test]
    fn a_rollout_in_progress_clears_the_rollout_degraded() {
        let r = assess(
            &in_progress(),
            "k1",
            &[serving("p0", &["k1"])],
            &degraded(REASON_PROGRESS_DEADLINE),
        );
        assert_eq!(r.degraded, RolloutDegraded::Clear);
        assert_eq!(
            r.progress,
            Progress {
                progressing: true,
                reason: REASON_ROLLING_OUT,
                message: "1/2 replicas updated".into(),
            }
        );
    }
}
