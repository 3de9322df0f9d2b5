//! The rollout phases (Publishing, Activating, Retiring, RollingBack):
//! verify the pods, fail and roll back, or adopt a step already written.

use crate::crd::RotationOutcome;
use crate::crd::RotationPhase::*;
use crate::rotation::plan::{desired, final_plan};
use crate::rotation::reasons::{
    REASON_EMERGENCY_STALLED, REASON_RETIREMENT_STALLED, REASON_ROLLBACK_STALLED,
    REASON_ROLLOUT_TIMEOUT, REASON_VERIFICATION_FAILED,
};
use crate::rotation::schedule::{add, until};
use crate::rotation::verify::{Verdict, verify};
use crate::rotation::{KeysetPlan, KeysetView, POLL};

use super::Machine;

impl Machine<'_> {
    /// The keyset the current phase wants; aborts the rotation when its status
    /// names no old or new key (a phase that needs a layout cannot go on).
    pub(super) fn desired_or_abort(&mut self) -> Option<KeysetPlan> {
        let plan = desired(&self.rot);
        if plan.is_none() {
            self.abort("rotation status names no old or new key".to_string());
        }
        plan
    }

    pub(super) fn rollout_phase(&mut self, keyset: &KeysetView) {
        let now = self.now();
        let Some(plan) = self.desired_or_abort() else {
            return;
        };
        let verdict = if plan.matches(keyset) {
            let signing = matches!(self.rot.phase, Activating | RollingBack);
            verify(&plan, self.inp.observed, signing)
        } else {
            if self.adopt_successor(keyset) {
                return;
            }
            self.event(
                true,
                "KeysetDrift",
                format!(
                    "the Secret does not hold the {:?} keyset; writing it again",
                    self.rot.phase
                ),
            );
            if !self.apply(plan, keyset) {
                return;
            }
            Verdict::RollingOut
        };
        match verdict {
            Verdict::Verified => self.rollout_done(keyset),
            Verdict::Mismatch(msg) => self.fail(REASON_VERIFICATION_FAILED, msg, keyset),
            Verdict::RollingOut | Verdict::Inconclusive(_) => {
                let deadline = self.rot.wait_until.unwrap_or(now);
                if now >= deadline {
                    let (reason, msg) = match verdict {
                        Verdict::Inconclusive(msg) => (REASON_VERIFICATION_FAILED, msg),
                        _ => (
                            REASON_ROLLOUT_TIMEOUT,
                            format!("the {:?} rollout did not complete in time", self.rot.phase),
                        ),
                    };
                    self.fail(reason, msg, keyset);
                } else {
                    self.requeue_soon(POLL.min(until(now, deadline)));
                }
            }
        }
    }

    fn rollout_done(&mut self, keyset: &KeysetView) {
        let now = self.now();
        match self.rot.phase {
            Publishing => self.enter(Propagating, keyset, None),
            Activating if self.is_emergency() => {
                self.status.last_rotation_time = Some(now);
                self.finish(
                    RotationOutcome::Succeeded,
                    "fresh key signs; suspect keys withdrawn",
                );
            }
            Activating => {
                self.status.last_rotation_time = Some(now);
                self.enter(Draining, keyset, None);
            }
            Retiring => {
                // No pod serves the retired key any more: its private half can go.
                if let Some(last) = final_plan(&self.rot)
                    && !last.matches(keyset)
                    && !self.apply(last, keyset)
                {
                    return;
                }
                let outcome = self.rot.outcome.unwrap_or(RotationOutcome::Succeeded);
                let message = match outcome {
                    RotationOutcome::Succeeded => "rotation complete",
                    _ => "rolled back; the new key is retired",
                };
                self.finish(outcome, message);
            }
            RollingBack => match self.rot.rollback_from {
                Some(Activating) => self.enter(Draining, keyset, None),
                Some(Retiring) => {
                    let wait = self.backoff(self.rot.attempt.unwrap_or(1));
                    self.enter(Draining, keyset, Some(wait));
                }
                _ => self.finish(
                    RotationOutcome::RolledBack,
                    "rolled back; the new key is discarded",
                ),
            },
            _ => {}
        }
    }

    fn fail(&mut self, reason: &str, msg: String, keyset: &KeysetView) {
        let now = self.now();
        let attempt = self.rot.attempt.unwrap_or(0) + 1;
        self.rot.attempt = Some(attempt);
        let phase = self.rot.phase;
        if self.is_emergency() || phase == RollingBack {
            let retry_at = add(now, self.backoff(attempt));
            let (reason, what) = if self.is_emergency() {
                (REASON_EMERGENCY_STALLED, "emergency rotation")
            } else {
                (REASON_ROLLBACK_STALLED, "rollback")
            };
            let message = format!(
                "{what} stalled ({msg}); still waiting, next alarm at {}",
                retry_at.to_rfc3339()
            );
            self.degrade(reason, &message);
            self.event(true, reason, message.clone());
            self.rot.wait_until = Some(retry_at);
            self.rot.message = Some(message);
            self.requeue_soon(POLL);
            return;
        }
        let message = format!("{phase:?} failed: {msg}");
        let reason = if phase == Retiring {
            REASON_RETIREMENT_STALLED
        } else {
            reason
        };
        self.degrade(reason, &message);
        self.event(true, reason, message);
        if phase != Retiring {
            self.rot.outcome = Some(RotationOutcome::RolledBack);
        }
        self.rot.rollback_from = Some(phase);
        self.enter(RollingBack, keyset, None);
    }

    /// Recognises a Secret already holding the keyset of the step this phase
    /// would take next: the write happened, the status write did not.
    pub(super) fn adopt_successor(&mut self, keyset: &KeysetView) -> bool {
        if self.is_emergency() {
            return false;
        }
        let next = match self.rot.phase {
            Propagating => Some((Activating, None)),
            Draining => Some((Retiring, None)),
            Publishing | Activating | Retiring => Some((RollingBack, Some(self.rot.phase))),
            _ => None,
        };
        let Some((phase, from)) = next else {
            return false;
        };
        if self.rot.phase == Retiring && final_plan(&self.rot).is_some_and(|p| p.matches(keyset)) {
            self.rollout_done(keyset);
            return true;
        }
        let mut candidate = self.rot.clone();
        candidate.phase = phase;
        candidate.rollback_from = from;
        if matches!(from, Some(Publishing | Activating)) {
            candidate.outcome = Some(RotationOutcome::RolledBack);
        }
        if !desired(&candidate).is_some_and(|p| p.matches(keyset)) {
            return false;
        }
        if phase == RollingBack {
            let reason = if self.rot.wait_until.is_some_and(|t| self.now() >= t) {
                REASON_ROLLOUT_TIMEOUT
            } else {
                REASON_VERIFICATION_FAILED
            };
            self.fail(
                reason,
                "the rollback was written before a restart".to_string(),
                keyset,
            );
        } else {
            self.enter(phase, keyset, None);
        }
        true
    }
}
