//! Every rotation phase in one place: one exhaustive match per question the
//! drivers in `machine/` ask. A new phase is a new variant of
//! [`RotationPhase`]; the compiler then points at each answer it needs here
//! (docs/architecture.md, "Adding a phase"). The drivers stay generic: they
//! carry out what these functions say, and never match on a phase themselves.

use crate::crd::{RotationOutcome, RotationPhase, RotationStatus, RotationTrigger};
use crate::rotation::reasons::{
    REASON_EMERGENCY_STALLED, REASON_RETIREMENT_STALLED, REASON_ROLLBACK_STALLED,
};

use super::ProbePlan;
use super::plan::{KeysetPlan, draining, layout, reversed};

use RotationPhase::*;

/// Which driver runs a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Driver {
    /// Between rotations: look for a trigger.
    Idle,
    /// Have the reserved key written to the Secret, then confirm it.
    KeyGeneration,
    /// Apply the phase's keyset and wait until every pod serves it, verified.
    Rollout,
    /// Hold the phase's keyset until a timestamp (and its gate) passes.
    Wait,
}

/// What a phase waits for once entered (`status.rotation.waitUntil`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Nothing: the phase moves on as soon as its step is done.
    Nothing,
    /// A deadline `rolloutTimeoutSeconds` away; passing it fails the phase.
    RolloutDeadline,
    /// The cache TTL in effect plus slack: verifier caches pick up a published key.
    VerifierCaches,
    /// The drain ledger of the key that stopped signing: its tokens expire.
    Drain,
}

/// What must hold, beyond the wait, before a wait phase moves on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    Open,
    /// The recent verifiers were seen fetching the new JWKS (or the ceiling passed).
    VerifierEvidence,
}

/// The facts about a rotation that decide where a phase leads.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Facts {
    /// An emergency rotation (never rolled back, nothing published beside the fresh key).
    pub emergency: bool,
    /// A routine rotation rolled back: it retires its new key instead of the old one.
    pub reversed: bool,
    /// The phase a rollback undoes.
    pub rollback_from: Option<RotationPhase>,
    /// `spec.rotation.prepublish`.
    pub prepublish: bool,
    /// The generated key is already active in the Secret (a write whose status was lost).
    pub key_active: bool,
    /// The generated key is already published in the Secret (a write whose status was lost).
    pub key_published: bool,
    /// Preparing the standby key: publish and propagate it, then stop.
    pub standby: bool,
    /// The new key is the propagated standby: it activates without publishing.
    pub from_standby: bool,
}

impl Facts {
    pub(crate) fn of(rot: &RotationStatus) -> Self {
        Self {
            emergency: rot.trigger == Some(RotationTrigger::Emergency),
            standby: rot.trigger == Some(RotationTrigger::Standby),
            from_standby: rot.from_standby,
            reversed: reversed(rot),
            rollback_from: rot.rollback_from,
            ..Self::default()
        }
    }
}

/// Where a phase goes once its step succeeded (a verified rollout, a wait over).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    Enter(RotationPhase),
    /// Enter the phase with a wait of the retry backoff instead of its own
    /// (a stalled retirement drains again before it retries).
    EnterAfterBackoff(RotationPhase),
    /// End the rotation. `final_keyset`: first write the keyset the rotation
    /// ends with (the retired key's private half goes).
    Finish {
        outcome: RotationOutcome,
        message: &'static str,
        final_keyset: bool,
    },
    /// The standby key is propagated: record it and return to Idle. No key
    /// changed role, so nothing enters the history.
    ParkStandby,
}

/// What a failed rollout phase does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Stay in the phase, `Degraded` with this reason, and retry after a backoff.
    Stall {
        reason: &'static str,
        what: &'static str,
    },
    /// Roll back (enter RollingBack from this phase). `reason` replaces the
    /// failure's own reason when set; `rolled_back` marks the rotation's outcome.
    RollBack {
        reason: Option<&'static str>,
        rolled_back: bool,
    },
}

/// What a phase does when the Secret no longer holds its keyset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Drift {
    /// Write the keyset again and keep verifying the rollout.
    Rewrite,
    /// The wait assumed every pod served the keyset: go back to the rollout
    /// phase that verifies it, then wait again.
    Reverify {
        phase: RotationPhase,
        rollback_from: Option<RotationPhase>,
    },
}

/// The step after this phase whose keyset a lost status write may already
/// have put in the Secret: (phase, the phase a rollback undoes).
pub(crate) type Successor = (RotationPhase, Option<RotationPhase>);

pub(crate) fn driver(phase: RotationPhase) -> Driver {
    match phase {
        Idle => Driver::Idle,
        KeyGenerated => Driver::KeyGeneration,
        Publishing | Activating | Retiring | RollingBack => Driver::Rollout,
        Propagating | Draining => Driver::Wait,
    }
}

/// The probes the reconciler runs in a round that starts in `phase`.
pub(crate) fn probes(phase: RotationPhase) -> ProbePlan {
    let (jwks, signing, verifiers) = match phase {
        Publishing | Retiring => (true, false, false),
        // The rollout is verified by what each pod mints with, too.
        Activating | RollingBack => (true, true, false),
        // KeyGenerated: the snapshot of the verifiers the old pods saw, taken
        // in the round that starts publishing. Propagating: the evidence.
        KeyGenerated | Propagating => (false, false, true),
        Idle | Draining => (false, false, false),
    };
    ProbePlan {
        jwks,
        signing,
        verifiers,
    }
}

pub fn wait(phase: RotationPhase) -> Wait {
    match phase {
        Idle | KeyGenerated => Wait::Nothing,
        Publishing | Activating | Retiring | RollingBack => Wait::RolloutDeadline,
        Propagating => Wait::VerifierCaches,
        Draining => Wait::Drain,
    }
}

pub(crate) fn gate(phase: RotationPhase) -> Gate {
    match phase {
        Propagating => Gate::VerifierEvidence,
        Idle | KeyGenerated | Publishing | Activating | Draining | Retiring | RollingBack => {
            Gate::Open
        }
    }
}

/// The keyset the rotation's current phase wants, or `None` where it wants no
/// particular layout (Idle, or KeyGenerated before the key is confirmed).
pub fn keyset(rot: &RotationStatus) -> Option<KeysetPlan> {
    let (old, new) = (rot.old_kid.as_deref()?, rot.new_kid.as_deref()?);
    let facts = Facts::of(rot);
    Some(match rot.phase {
        Idle | KeyGenerated => return None,
        Activating if facts.emergency => layout(new, &[], None, None),
        Publishing | Propagating => layout(old, &[new], Some(new), None),
        Activating => layout(new, &[old], None, Some(old)),
        Draining => draining(old, new, facts.reversed),
        // The retiring key stays in `previous` until every pod stopped serving it, for rollback.
        Retiring if facts.reversed => layout(old, &[], None, Some(new)),
        Retiring => layout(new, &[], None, Some(old)),
        RollingBack => match facts.rollback_from {
            // The new key never signed: back to the old key alone.
            Some(Publishing) | None => layout(old, &[], None, None),
            Some(Retiring) => draining(old, new, facts.reversed),
            // The new key may have signed, so it stays published.
            Some(Activating) => draining(old, new, true),
            // Not rolled back from (no rollout to undo); kept safe like Activating.
            Some(Idle | KeyGenerated | Propagating | Draining | RollingBack) => {
                draining(old, new, true)
            }
        },
    })
}

/// Where `phase` goes once its step succeeded; `None` where it has no step
/// to succeed (Idle).
pub(crate) fn on_success(phase: RotationPhase, facts: Facts) -> Option<Next> {
    Some(match phase {
        Idle => return None,
        // A write whose status was lost already published or activated the
        // key: resume that step whatever `prepublish` says now.
        // A propagated standby was published long before: it activates at once.
        KeyGenerated if facts.emergency || facts.key_active || facts.from_standby => {
            Next::Enter(Activating)
        }
        // A standby is always published first: that is what it is for.
        KeyGenerated if facts.key_published || facts.prepublish || facts.standby => {
            Next::Enter(Publishing)
        }
        KeyGenerated => Next::Enter(Activating),
        Publishing => Next::Enter(Propagating),
        Propagating if facts.standby => Next::ParkStandby,
        Propagating => Next::Enter(Activating),
        Activating if facts.emergency => Next::Finish {
            outcome: RotationOutcome::Succeeded,
            message: "fresh key signs; suspect keys withdrawn",
            final_keyset: false,
        },
        Activating => Next::Enter(Draining),
        Draining => Next::Enter(Retiring),
        Retiring if facts.reversed => Next::Finish {
            outcome: RotationOutcome::RolledBack,
            message: "rolled back; the new key is retired",
            final_keyset: true,
        },
        Retiring => Next::Finish {
            outcome: RotationOutcome::Succeeded,
            message: "rotation complete",
            final_keyset: true,
        },
        RollingBack => match facts.rollback_from {
            Some(Activating) => Next::Enter(Draining),
            Some(Retiring) => Next::EnterAfterBackoff(Draining),
            Some(Publishing) | None => Next::Finish {
                outcome: RotationOutcome::RolledBack,
                message: "rolled back; the new key is discarded",
                final_keyset: false,
            },
            // Never rolled back from; the keyset above keeps the new key
            // published, so it drains like an Activating rollback.
            Some(Idle | KeyGenerated | Propagating | Draining | RollingBack) => {
                Next::Enter(Draining)
            }
        },
    })
}

/// Whether the new key starts signing when `phase` succeeds (`lastRotationTime`).
pub(crate) fn new_key_signs_after(phase: RotationPhase) -> bool {
    match phase {
        Activating => true,
        Idle | KeyGenerated | Publishing | Propagating | Draining | Retiring | RollingBack => false,
    }
}

/// What a failed rollout phase does; `None` for a phase that has no rollout to fail.
pub(crate) fn on_failure(phase: RotationPhase, facts: Facts) -> Option<Failure> {
    let failure = match phase {
        Idle | KeyGenerated | Propagating | Draining => return None,
        // Never rolled back to a suspect key: an emergency keeps retrying.
        Publishing | Activating | Retiring | RollingBack if facts.emergency => Failure::Stall {
            reason: REASON_EMERGENCY_STALLED,
            what: "emergency rotation",
        },
        // A rollback never rolls back further.
        RollingBack => Failure::Stall {
            reason: REASON_ROLLBACK_STALLED,
            what: "rollback",
        },
        Publishing | Activating => Failure::RollBack {
            reason: None,
            rolled_back: true,
        },
        // The new key already signs: nothing is undone, retiring is retried.
        Retiring => Failure::RollBack {
            reason: Some(REASON_RETIREMENT_STALLED),
            rolled_back: false,
        },
    };
    Some(failure)
}

/// What `phase` does when the Secret no longer holds its keyset; `None` where
/// it holds no keyset (Idle, KeyGenerated).
pub(crate) fn on_drift(phase: RotationPhase, facts: Facts) -> Option<Drift> {
    Some(match phase {
        Idle | KeyGenerated => return None,
        Publishing | Activating | Retiring | RollingBack => Drift::Rewrite,
        Propagating => Drift::Reverify {
            phase: Publishing,
            rollback_from: None,
        },
        Draining if facts.reversed => Drift::Reverify {
            phase: RollingBack,
            rollback_from: Some(Activating),
        },
        Draining => Drift::Reverify {
            phase: Activating,
            rollback_from: None,
        },
    })
}

/// The step after `phase` whose keyset a lost status write may already have
/// put in the Secret. Emergencies never adopt: they must not take a layout
/// they did not write.
pub(crate) fn successor(phase: RotationPhase, facts: Facts) -> Option<Successor> {
    if facts.emergency {
        return None;
    }
    match phase {
        Idle | KeyGenerated | RollingBack => None,
        // A standby's propagation ends without a write.
        Propagating if facts.standby => None,
        Propagating => Some((Activating, None)),
        Draining => Some((Retiring, None)),
        Publishing | Activating | Retiring => Some((RollingBack, Some(phase))),
    }
}

/// Whether the machine's event for entering `phase` is a Warning.
pub(crate) fn entry_is_warning(phase: RotationPhase, facts: Facts) -> bool {
    match phase {
        Activating => facts.emergency,
        RollingBack => true,
        Idle | KeyGenerated | Publishing | Propagating | Draining | Retiring => false,
    }
}

/// Whether `phase` is one a standby's preparation passes through before it
/// parks (a routine request may take such a preparation over).
pub(crate) fn standby_preparation(phase: RotationPhase) -> bool {
    match phase {
        KeyGenerated | Publishing | Propagating => true,
        Idle | Activating | Draining | Retiring | RollingBack => false,
    }
}

/// What the verifier reports of a round are for (`machine/verifiers.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VerifierWatch {
    /// Start the list afresh: the verifiers the old pods saw, before publishing.
    Baseline,
    /// Record which verifiers fetched a JWKS holding the new key (the evidence).
    NewKey,
    /// Keep the list and the cache TTL in effect current.
    Background,
}

pub(crate) fn verifier_watch(phase: RotationPhase) -> VerifierWatch {
    match phase {
        KeyGenerated => VerifierWatch::Baseline,
        Propagating => VerifierWatch::NewKey,
        Idle | Publishing | Activating | Draining | Retiring | RollingBack => {
            VerifierWatch::Background
        }
    }
}

/// The announcement of entering a rollout phase (waits announce themselves
/// with their figures in `machine/enter.rs`).
pub(crate) fn rollout_announcement(rot: &RotationStatus, facts: Facts) -> String {
    let old = rot.old_kid.as_deref().unwrap_or_default();
    let new = rot.new_kid.as_deref().unwrap_or_default();
    let retiring = if facts.reversed { new } else { old };
    match rot.phase {
        Publishing if facts.standby => {
            format!("publishing standby key {new} next to the active key {old}")
        }
        Publishing => format!("publishing {new} next to the active key {old}"),
        Activating if facts.emergency && facts.from_standby => {
            format!("activating the propagated standby {new}; nothing else is published")
        }
        Activating if facts.emergency => {
            format!("activating fresh key {new}; nothing else is published")
        }
        Activating if facts.from_standby => {
            format!("activating the propagated standby {new}; {old} stays published")
        }
        Activating => format!("activating {new}; {old} stays published"),
        Retiring => format!("retiring {retiring}"),
        RollingBack => format!(
            "rolling back the failed {} step: {old} signs",
            facts
                .rollback_from
                .map(|p| format!("{p:?}"))
                .unwrap_or_default()
        ),
        Idle | KeyGenerated | Propagating | Draining => format!("{:?}", rot.phase),
    }
}

/// The phases a rotation started from Idle goes through when every step
/// succeeds, in order: `on_success` followed from KeyGenerated.
/// `from_standby`: its new key is the propagated standby, which activates
/// without publishing.
pub fn route(emergency: bool, prepublish: bool, from_standby: bool) -> Vec<RotationPhase> {
    let facts = Facts {
        emergency,
        prepublish,
        from_standby,
        ..Facts::default()
    };
    let mut route = vec![KeyGenerated];
    let mut phase = KeyGenerated;
    while let Some(Next::Enter(next) | Next::EnterAfterBackoff(next)) = on_success(phase, facts) {
        // Every phase is entered once at most on a successful route.
        if route.contains(&next) {
            break;
        }
        route.push(next);
        phase = next;
    }
    route
}

/// Every transition the answers above allow, for the diagram in
/// docs/architecture.md (checked by `tests/tests/docs.rs`): the start from
/// Idle, success, failure (a rollback, or a stall that stays), drift, and the
/// abandonment of a phase whose keyset the Secret can no longer hold.
pub fn edges() -> Vec<(RotationPhase, RotationPhase)> {
    use strum::VariantArray;
    let mut edges = vec![(Idle, KeyGenerated)];
    let mut add = |edge| {
        if !edges.contains(&edge) {
            edges.push(edge);
        }
    };
    let emergency_route = route(true, true, false);
    let standby_route = [KeyGenerated, Publishing, Propagating, RollingBack];
    for &phase in RotationPhase::VARIANTS {
        let emergencies: &[bool] = if emergency_route.contains(&phase) {
            &[false, true]
        } else {
            &[false]
        };
        let standbys: &[bool] = if standby_route.contains(&phase) {
            &[false, true]
        } else {
            &[false]
        };
        let rollback_froms: &[Option<RotationPhase>] = if phase == RollingBack {
            &[None, Some(Publishing), Some(Activating), Some(Retiring)]
        } else {
            &[None]
        };
        for &emergency in emergencies {
            for &reversed in &[false, true] {
                for &rollback_from in rollback_froms {
                    for (&prepublish, &standby) in [false, true]
                        .iter()
                        .flat_map(|p| standbys.iter().map(move |s| (p, s)))
                    {
                        let facts = Facts {
                            emergency,
                            reversed: reversed && !emergency,
                            rollback_from,
                            prepublish,
                            standby: standby && !emergency,
                            ..Facts::default()
                        };
                        match on_success(phase, facts) {
                            Some(Next::Enter(to) | Next::EnterAfterBackoff(to)) => add((phase, to)),
                            Some(Next::Finish { .. } | Next::ParkStandby) => add((phase, Idle)),
                            None => {}
                        }
                        match on_failure(phase, facts) {
                            Some(Failure::Stall { .. }) => add((phase, phase)),
                            Some(Failure::RollBack { .. }) => add((phase, RollingBack)),
                            None => {}
                        }
                        if let Some(Drift::Reverify { phase: to, .. }) = on_drift(phase, facts) {
                            add((phase, to));
                        }
                    }
                }
            }
        }
        // Abandoned when the Secret cannot hold the phase's keyset.
        if on_drift(phase, Facts::default()).is_some() {
            add((phase, Idle));
        }
    }
    edges
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray;

    #[test]
    fn routes_follow_the_success_edges() {
        assert_eq!(
            route(false, true, false),
            [
                KeyGenerated,
                Publishing,
                Propagating,
                Activating,
                Draining,
                Retiring
            ]
        );
        assert_eq!(
            route(false, false, false),
            [KeyGenerated, Activating, Draining, Retiring]
        );
        // A propagated standby skips what prepublishing would add.
        assert_eq!(
            route(false, true, true),
            [KeyGenerated, Activating, Draining, Retiring]
        );
        assert_eq!(route(true, true, false), [KeyGenerated, Activating]);
        assert_eq!(route(true, true, true), [KeyGenerated, Activating]);
    }

    #[test]
    fn every_phase_with_a_rollout_can_fail_and_every_other_cannot() {
        for &phase in RotationPhase::VARIANTS {
            let rollout = driver(phase) == Driver::Rollout;
            assert_eq!(
                on_failure(phase, Facts::default()).is_some(),
                rollout,
                "{phase:?}"
            );
            assert_eq!(wait(phase) == Wait::RolloutDeadline, rollout, "{phase:?}");
        }
    }

    #[test]
    fn every_wait_phase_reverifies_on_drift_and_every_rollout_rewrites() {
        for &phase in RotationPhase::VARIANTS {
            let drift = on_drift(phase, Facts::default());
            match driver(phase) {
                Driver::Rollout => assert_eq!(drift, Some(Drift::Rewrite), "{phase:?}"),
                Driver::Wait => assert!(
                    matches!(drift, Some(Drift::Reverify { phase: back, .. }) if driver(back) == Driver::Rollout),
                    "{phase:?}"
                ),
                Driver::Idle | Driver::KeyGeneration => assert_eq!(drift, None, "{phase:?}"),
            }
        }
    }
}
