//! The wait phases (Propagating, Draining): wait out the timestamp, or go
//! back to a rollout phase when the Secret changed underneath.

use crate::crd::RotationPhase::*;
use crate::rotation::KeysetView;
use crate::rotation::plan::reversed;
use crate::rotation::schedule::until;

use super::Machine;

impl Machine<'_> {
    pub(super) fn wait_phase(&mut self, keyset: &KeysetView) {
        let now = self.now();
        let Some(plan) = self.desired_or_abort() else {
            return;
        };
        if !plan.matches(keyset) {
            if self.adopt_successor(keyset) {
                return;
            }
            self.event(
                true,
                "KeysetDrift",
                format!(
                    "the Secret changed during {:?}; re-verifying the rollout before waiting again",
                    self.rot.phase
                ),
            );
            // The wait assumed every pod served this keyset; it restarts after a verified rollout.
            let back = match self.rot.phase {
                Propagating => Publishing,
                _ if reversed(&self.rot) => {
                    self.rot.rollback_from = Some(Activating);
                    RollingBack
                }
                _ => Activating,
            };
            self.enter(back, keyset, None);
            return;
        }
        let end = self.rot.wait_until.unwrap_or(now);
        if now < end {
            self.requeue_soon(until(now, end));
            return;
        }
        match self.rot.phase {
            Propagating => {
                if self.evidence_allows_activation() {
                    self.enter(Activating, keyset, None);
                }
            }
            _ => self.enter(Retiring, keyset, None),
        }
    }
}
