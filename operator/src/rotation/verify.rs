//! Checks the pods of the current template against a keyset plan.

use super::{KeysetPlan, Observed, Rollout};

/// Verdict of one verification round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Rollout complete and every pod serves exactly the plan (and signs with its active key when asked).
    Verified,
    /// The rollout is still in progress.
    RollingOut,
    /// Rollout complete but the evidence is incomplete (no pods listed, probe errors): retry.
    Inconclusive(String),
    /// A pod of the new template contradicts the plan: a definite failure.
    Mismatch(String),
}

/// Verifies `observed` against `plan`; `signing` requires each pod's probe mint to carry the active kid.
pub(crate) fn verify(plan: &KeysetPlan, observed: &Observed, signing: bool) -> Verdict {
    if observed.rollout != Rollout::Complete {
        return Verdict::RollingOut;
    }
    if observed.pods.is_empty() {
        return Verdict::Inconclusive("no ready pod of the current template to probe".into());
    }
    let mut expected = plan.served();
    expected.sort();
    let mut inconclusive = Vec::new();
    for pod in &observed.pods {
        match &pod.served_kids {
            Err(e) => inconclusive.push(format!("pod {}: JWKS probe failed: {e}", pod.name)),
            Ok(served) => {
                let mut got = served.clone();
                got.sort();
                got.dedup();
                if got != expected {
                    return Verdict::Mismatch(format!(
                        "pod {} serves kids [{}], expected [{}]",
                        pod.name,
                        served.join(", "),
                        plan.served().join(", ")
                    ));
                }
            }
        }
        if signing {
            match &pod.signing_kid {
                None => inconclusive.push(format!("pod {}: no probe mint yet", pod.name)),
                Some(Err(e)) => {
                    inconclusive.push(format!("pod {}: probe mint failed: {e}", pod.name))
                }
                Some(Ok(kid)) if *kid != plan.active => {
                    return Verdict::Mismatch(format!(
                        "pod {} signs with {kid}, expected {}",
                        pod.name, plan.active
                    ));
                }
                Some(Ok(_)) => {}
            }
        }
    }
    if inconclusive.is_empty() {
        Verdict::Verified
    } else {
        Verdict::Inconclusive(inconclusive.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::PodView;

    fn plan() -> KeysetPlan {
        KeysetPlan {
            active: "b".into(),
            published: vec!["a".into()],
            next: None,
            previous: Some("a".into()),
        }
    }

    fn pod(served: &[&str], signing: Option<&str>) -> PodView {
        PodView {
            name: "p".into(),
            served_kids: Ok(served.iter().map(|s| s.to_string()).collect()),
            signing_kid: signing.map(|s| Ok(s.to_string())),
        }
    }

    fn observed(rollout: Rollout, pods: Vec<PodView>) -> Observed {
        Observed {
            keyset: None,
            rollout,
            pods,
            verifiers: Vec::new(),
        }
    }

    #[test]
    fn verdicts() {
        let p = plan();
        let ok = pod(&["b", "a"], Some("b"));
        assert_eq!(
            verify(&p, &observed(Rollout::InProgress, vec![ok.clone()]), true),
            Verdict::RollingOut
        );
        assert_eq!(
            verify(&p, &observed(Rollout::Complete, vec![ok.clone()]), true),
            Verdict::Verified
        );
        assert!(matches!(
            verify(&p, &observed(Rollout::Complete, vec![]), false),
            Verdict::Inconclusive(_)
        ));
        assert!(matches!(
            verify(
                &p,
                &observed(Rollout::Complete, vec![pod(&["b"], None)]),
                false
            ),
            Verdict::Mismatch(_)
        ));
        assert!(matches!(
            verify(
                &p,
                &observed(Rollout::Complete, vec![pod(&["b", "a"], Some("a"))]),
                true
            ),
            Verdict::Mismatch(_)
        ));
        assert!(matches!(
            verify(
                &p,
                &observed(Rollout::Complete, vec![pod(&["b", "a"], None)]),
                true
            ),
            Verdict::Inconclusive(_)
        ));
        let broken = PodView {
            served_kids: Err("timeout".into()),
            ..ok
        };
        assert!(matches!(
            verify(&p, &observed(Rollout::Complete, vec![broken]), false),
            Verdict::Inconclusive(_)
        ));
    }
}
