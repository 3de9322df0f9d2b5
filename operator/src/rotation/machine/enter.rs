//! Entering a phase: its wait, its event and the write of its keyset.

use std::time::Duration;

use crate::crd::RotationPhase::{self, RollingBack};
use crate::rotation::ledger;
use crate::rotation::phase::{self, Wait};
use crate::rotation::plan::reversed;
use crate::rotation::schedule::{add, add_secs, until};
use crate::rotation::{Action, KeysetPlan, KeysetView, POLL, PROPAGATION_SLACK_SECONDS};

use super::Machine;

impl Machine<'_> {
    /// Moves to `phase`, arms its wait, emits its event and applies its keyset.
    pub(super) fn enter(
        &mut self,
        phase: RotationPhase,
        keyset: &KeysetView,
        wait: Option<Duration>,
    ) {
        let now = self.now();
        let spec = self.inp.spec;
        self.rot.phase = phase;
        self.rot.phase_since = Some(now);
        if phase != RollingBack {
            self.rot.rollback_from = None;
        }
        let (old, new) = self.kids();
        let (retiring, keeping) = if reversed(&self.rot) {
            (new.clone(), old)
        } else {
            (old, new.clone())
        };
        let facts = self.facts();
        let rollout_deadline = add_secs(now, spec.rotation.rollout_timeout_seconds);
        let (wait_until, message) = match phase::wait(phase) {
            Wait::Nothing => (now, String::new()),
            Wait::RolloutDeadline => (
                rollout_deadline,
                phase::rollout_announcement(&self.rot, facts),
            ),
            Wait::VerifierCaches => {
                let ttl = self.cache_ttl();
                let lowered = if ttl > spec.jwks_cache_ttl_seconds {
                    format!(
                        ", the earlier TTL: verifiers have not shown caching for jwksCacheTtlSeconds {}s yet",
                        spec.jwks_cache_ttl_seconds
                    )
                } else {
                    String::new()
                };
                (
                    add_secs(now, ttl + PROPAGATION_SLACK_SECONDS),
                    format!(
                        "every pod serves {new}; waiting {}s (cache TTL {ttl}s{lowered} + slack) for verifier caches",
                        ttl + PROPAGATION_SLACK_SECONDS,
                    ),
                )
            }
            Wait::Drain => {
                let (drain, why) = ledger::drain_seconds(spec, &self.status.keys, &retiring);
                let wait = wait.unwrap_or(Duration::from_secs(drain.max(0).unsigned_abs()));
                // The e2e control that shows the harness sees an early retirement.
                #[cfg(feature = "fixtures")]
                let wait =
                    match super::annotation(self.inp, crate::fixtures::RETIRE_EARLY_ANNOTATION) {
                        Some(_) => Duration::ZERO,
                        None => wait,
                    };
                let retire_after = add(now, wait);
                ledger::mark_stopped(
                    &mut self.status.keys,
                    &retiring,
                    now,
                    retire_after,
                    why.clone(),
                );
                (
                    retire_after,
                    format!(
                        "{keeping} signs; {retiring} stays published for {}s while its tokens expire ({why})",
                        wait.as_secs()
                    ),
                )
            }
        };
        let warning = phase::entry_is_warning(phase, facts);
        self.rot.wait_until = Some(wait_until);
        self.rot.message = Some(message.clone());
        self.event(warning, &format!("{phase:?}"), message);
        if let Some(plan) = phase::keyset(&self.rot)
            && !plan.matches(keyset)
            && !self.apply(plan, keyset)
        {
            return;
        }
        match phase::wait(phase) {
            Wait::VerifierCaches | Wait::Drain => self.requeue_soon(until(now, wait_until)),
            Wait::Nothing | Wait::RolloutDeadline => self.requeue_soon(POLL),
        }
    }

    /// The rotation's old and new kid, empty where not known yet.
    fn kids(&self) -> (String, String) {
        (
            self.rot.old_kid.clone().unwrap_or_default(),
            self.rot.new_kid.clone().unwrap_or_default(),
        )
    }

    /// Emits the write of `plan`; aborts the rotation instead when the Secret
    /// cannot hold it or it would publish a suspect key.
    pub(super) fn apply(&mut self, plan: KeysetPlan, keyset: &KeysetView) -> bool {
        let suspect = std::iter::once(&plan.active)
            .chain(plan.published.iter())
            .find(|k| self.status.suspect_kids.contains(*k))
            .cloned();
        if let Some(kid) = suspect {
            self.abort(format!("refusing to publish suspect key {kid}"));
            return false;
        }
        if let Err(e) = plan.check(keyset) {
            self.abort(e.to_string());
            return false;
        }
        self.actions.push(Action::ApplyKeyset(plan));
        true
    }
}
