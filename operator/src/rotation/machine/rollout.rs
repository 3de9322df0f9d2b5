//! The rollout phases (Publishing, Activating, Retiring, RollingBack):
//! verify the pods, fail and roll back, or adopt a step already written.

use crate::crd::RotationOutcome;
use crate::crd::RotationPhase::RollingBack;
use crate::rotation::phase::{self, Drift, Failure, Next};
use crate::rotation::plan::final_plan;
use crate::rotation::reasons::EVENT_KEYSET_DRIFT;
use crate::rotation::reasons::{REASON_ROLLOUT_TIMEOUT, REASON_VERIFICATION_FAILED};
use crate::rotation::schedule::{add, until};
use crate::rotation::verify::{Verdict, verify};
use crate::rotation::{KeysetPlan, KeysetView, POLL};

use super::Machine;

impl Machine<'_> {
    /// The keyset the current phase wants; aborts the rotation when its status
    /// names no old or new key (a phase that needs a layout cannot go on).
    pub(super) fn desired_or_abort(&mut self) -> Option<KeysetPlan> {
        let plan = phase::keyset(&self.rot);
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
            let signing = phase::probes(self.rot.phase).signing;
            verify(&plan, self.inp.observed, signing)
        } else {
            if self.adopt_successor(keyset) {
                return;
            }
            debug_assert_eq!(
                phase::on_drift(self.rot.phase, self.facts()),
                Some(Drift::Rewrite)
            );
            self.event(
                true,
                EVENT_KEYSET_DRIFT,
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
            Verdict::Verified => self.step_done(keyset),
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

    /// The phase's step succeeded: move on as the phase table says.
    pub(super) fn step_done(&mut self, keyset: &KeysetView) {
        let phase = self.rot.phase;
        let Some(next) = phase::on_success(phase, self.facts()) else {
            return;
        };
        if phase::new_key_signs_after(phase) {
            self.status.last_rotation_time = Some(self.now());
        }
        match next {
            Next::Enter(next) => self.enter(next, keyset, None),
            Next::EnterAfterBackoff(next) => {
                let wait = self.backoff(self.rot.attempt.unwrap_or(1));
                self.enter(next, keyset, Some(wait));
            }
            Next::Finish {
                outcome,
                message,
                final_keyset,
            } => {
                // No pod serves the retired key any more: its private half can go.
                if final_keyset
                    && let Some(last) = final_plan(&self.rot)
                    && !last.matches(keyset)
                    && !self.apply(last, keyset)
                {
                    return;
                }
                self.finish(outcome, message);
            }
            Next::ParkStandby => self.park_standby(),
        }
    }

    fn fail(&mut self, reason: &str, msg: String, keyset: &KeysetView) {
        let now = self.now();
        let attempt = self.rot.attempt.unwrap_or(0) + 1;
        self.rot.attempt = Some(attempt);
        let phase = self.rot.phase;
        match phase::on_failure(phase, self.facts()) {
            None => self.abort(format!("{phase:?} has no rollout to fail: {msg}")),
            Some(Failure::Stall { reason, what }) => {
                let retry_at = add(now, self.backoff(attempt));
                let message = format!(
                    "{what} stalled ({msg}); still waiting, next alarm at {}",
                    retry_at.to_rfc3339()
                );
                self.degrade(reason, &message);
                self.event(true, reason, message.clone());
                self.rot.wait_until = Some(retry_at);
                self.rot.message = Some(message);
                self.requeue_soon(POLL);
            }
            Some(Failure::RollBack {
                reason: instead,
                rolled_back,
            }) => {
                let reason = instead.unwrap_or(reason);
                let message = format!("{phase:?} failed: {msg}");
                self.degrade(reason, &message);
                self.event(true, reason, message);
                if rolled_back {
                    self.rot.outcome = Some(RotationOutcome::RolledBack);
                }
                self.rot.rollback_from = Some(phase);
                self.enter(RollingBack, keyset, None);
            }
        }
    }

    /// Recognises a Secret already holding the keyset of the step this phase
    /// would take next: the write happened, the status write did not.
    pub(super) fn adopt_successor(&mut self, keyset: &KeysetView) -> bool {
        let facts = self.facts();
        let Some((phase, from)) = phase::successor(self.rot.phase, facts) else {
            return false;
        };
        // A retirement whose final write happened: the rotation is over.
        if phase::on_success(self.rot.phase, facts).is_some_and(|n| {
            matches!(
                n,
                Next::Finish {
                    final_keyset: true,
                    ..
                }
            )
        }) && final_plan(&self.rot).is_some_and(|p| p.matches(keyset))
        {
            self.step_done(keyset);
            return true;
        }
        let mut candidate = self.rot.clone();
        candidate.phase = phase;
        candidate.rollback_from = from;
        if let Some(from) = from
            && phase::on_failure(from, facts).is_some_and(|f| {
                matches!(
                    f,
                    Failure::RollBack {
                        rolled_back: true,
                        ..
                    }
                )
            })
        {
            candidate.outcome = Some(RotationOutcome::RolledBack);
        }
        if !phase::keyset(&candidate).is_some_and(|p| p.matches(keyset)) {
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
