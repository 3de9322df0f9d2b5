//! The wait phases (Propagating, Draining): wait out the timestamp, or go
//! back to a rollout phase when the Secret changed underneath.

use crate::rotation::phase::{self, Drift, Gate};
use crate::rotation::reasons::EVENT_KEYSET_DRIFT;
use crate::rotation::schedule::until;
use crate::rotation::{KeysetView, POLL};

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
                EVENT_KEYSET_DRIFT,
                format!(
                    "the Secret changed during {:?}; re-verifying the rollout before waiting again",
                    self.rot.phase
                ),
            );
            // The wait assumed every pod served this keyset; it restarts after a verified rollout.
            match phase::on_drift(self.rot.phase, self.facts()) {
                Some(Drift::Reverify {
                    phase,
                    rollback_from,
                }) => {
                    if rollback_from.is_some() {
                        self.rot.rollback_from = rollback_from;
                    }
                    self.enter(phase, keyset, None);
                }
                Some(Drift::Rewrite) | None => {
                    if self.apply(plan, keyset) {
                        self.requeue_soon(POLL);
                    }
                }
            }
            return;
        }
        let end = self.rot.wait_until.unwrap_or(now);
        if now < end {
            self.requeue_soon(until(now, end));
            return;
        }
        let open = match phase::gate(self.rot.phase) {
            Gate::Open => true,
            Gate::VerifierEvidence => self.evidence_allows_activation(),
        };
        if open {
            self.step_done(keyset);
        }
    }
}
