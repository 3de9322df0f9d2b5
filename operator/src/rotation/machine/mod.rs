//! The transition function. See the module documentation for the contract.
//!
//! Generic drivers: what each phase does is in `rotation::phase`, and these
//! files carry it out. `run` (here) dispatches on the phase's driver to idle,
//! key_generated, rollout or wait, which move on through enter (the next
//! phase, its wait and its keyset) or endings (history and the outcome);
//! emergency preempts them all, and next_rotation keeps `nextRotationTime`.

mod emergency;
mod endings;
mod enter;
mod idle;
mod key_generated;
mod next_rotation;
mod rollout;
mod standby;
mod verifiers;
mod wait;

use crate::rotation::reasons::EVENT_KID_COLLISION;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::crd::{MacpAuthStatus, RotationStatus, RotationTrigger};

use crate::conditions::{self, DEGRADED, ROTATING};

use super::ledger;
use super::phase::{self, Driver, Facts};
use super::reasons::REASON_ROTATION_SUCCEEDED;
use super::{Action, Decision, Event, Inputs, KeysetView, MAX_BACKOFF, ProbePlan};

use crate::crd::RotationPhase::{Idle, KeyGenerated};

/// The probes the reconciler should run before the next [`decide`], from the persisted status.
pub(crate) fn probe_plan(status: &MacpAuthStatus) -> ProbePlan {
    phase::probes(status.rotation.as_ref().map_or(Idle, |r| r.phase))
}

/// One round of the state machine: the next status, at most one action, events and a requeue.
pub(crate) fn decide(inputs: &Inputs<'_>) -> Decision {
    let mut m = Machine {
        inp: inputs,
        status: inputs.status.clone(),
        rot: inputs.status.rotation.clone().unwrap_or_default(),
        actions: Vec::new(),
        events: Vec::new(),
        requeue: None,
    };
    m.run();
    m.into_decision()
}

/// The working state of one [`decide`].
struct Machine<'a> {
    inp: &'a Inputs<'a>,
    status: MacpAuthStatus,
    rot: RotationStatus,
    actions: Vec<Action>,
    events: Vec<Event>,
    requeue: Option<Duration>,
}

fn annotation<'a>(inputs: &'a Inputs<'_>, name: &str) -> Option<&'a str> {
    inputs
        .annotations
        .get(name)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

impl Machine<'_> {
    fn now(&self) -> DateTime<Utc> {
        self.inp.now
    }

    fn into_decision(mut self) -> Decision {
        let (now, generation) = (self.now(), self.inp.generation);
        if self.rot.phase == Idle {
            conditions::set(
                &mut self.status.conditions,
                ROTATING,
                false,
                "Idle",
                "no rotation in progress",
                now,
                generation,
            );
        } else if self.rot.trigger == Some(RotationTrigger::Standby) {
            // No key changes role while a standby is prepared.
            let message = self.rot.message.clone().unwrap_or_default();
            conditions::set(
                &mut self.status.conditions,
                ROTATING,
                false,
                "PreparingStandby",
                &message,
                now,
                generation,
            );
        } else {
            let message = self.rot.message.clone().unwrap_or_default();
            conditions::set(
                &mut self.status.conditions,
                ROTATING,
                true,
                &format!("{:?}", self.rot.phase),
                &message,
                now,
                generation,
            );
        }
        if let Some(Action::ApplyKeyset(plan)) = self.actions.last() {
            self.status.keys = ledger::after_plan(&self.status.keys, plan);
        }
        self.status.rotation = Some(self.rot);
        Decision {
            status: self.status,
            actions: self.actions,
            events: self.events,
            requeue_after: self.requeue,
        }
    }

    fn run(&mut self) {
        // The reconciler creates the first key; there is nothing to rotate before it exists.
        let Some(keyset) = self.inp.observed.keyset.as_ref() else {
            return;
        };
        self.status.active_kid = Some(keyset.active.kid.clone());
        self.status.published_kids = keyset.published.clone();
        self.status.keys = ledger::update(
            &self.status.keys,
            keyset,
            self.inp.max_ttl_in_effect,
            self.inp.observed.rollout == super::Rollout::InProgress,
        );
        self.observe_verifiers();
        self.update_next_rotation();
        if self.emergency_request(keyset) {
            return;
        }
        self.adopt_preparation(keyset);
        match phase::driver(self.rot.phase) {
            Driver::Idle => self.idle(keyset),
            Driver::KeyGeneration => self.key_generated(keyset),
            Driver::Rollout => self.rollout_phase(keyset),
            Driver::Wait => self.wait_phase(keyset),
        }
        if self.rot.phase != Idle {
            self.note_deferred();
        }
    }

    fn event(&mut self, warning: bool, reason: &str, message: String) {
        self.events.push(Event {
            warning,
            reason: reason.to_string(),
            message,
        });
    }

    fn degrade(&mut self, reason: &str, message: &str) {
        conditions::set(
            &mut self.status.conditions,
            DEGRADED,
            true,
            reason,
            message,
            self.inp.now,
            self.inp.generation,
        );
    }

    fn undegrade(&mut self, message: &str) {
        if super::degraded_by_rotation(&self.status.conditions) {
            conditions::set(
                &mut self.status.conditions,
                DEGRADED,
                false,
                REASON_ROTATION_SUCCEEDED,
                message,
                self.inp.now,
                self.inp.generation,
            );
        }
    }

    /// Starts a rotation in `KeyGenerated` with the fresh kid reserved: the
    /// reservation is persisted before the key exists, so a restart after
    /// the key's write recognises it. Announces it (`(warning, reason,
    /// message)`) and asks to go on at once.
    fn begin(
        &mut self,
        trigger: RotationTrigger,
        request_id: Option<String>,
        old_kid: String,
        (warning, reason, message): (bool, &str, String),
    ) {
        let now = self.now();
        self.rot = RotationStatus {
            phase: KeyGenerated,
            trigger: Some(trigger),
            request_id,
            started_at: Some(now),
            phase_since: Some(now),
            old_kid: Some(old_kid),
            pending_kid: Some(self.inp.new_kid.to_string()),
            message: Some(message.clone()),
            ..RotationStatus::default()
        };
        self.event(warning, reason, message);
        self.requeue_soon(Duration::ZERO);
    }

    fn requeue_soon(&mut self, after: Duration) {
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }

    fn is_emergency(&self) -> bool {
        self.rot.trigger == Some(RotationTrigger::Emergency)
    }

    /// What the phase table needs to know about this rotation.
    fn facts(&self) -> Facts {
        Facts {
            prepublish: self.inp.spec.rotation.prepublish,
            ..Facts::of(&self.rot)
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base =
            Duration::from_secs(self.inp.spec.rotation.rollout_timeout_seconds.max(1) as u64);
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        base.saturating_mul(factor).min(MAX_BACKOFF)
    }

    /// Whether the proposed kid can name a new key: not empty and never seen before.
    fn fresh_kid_ok(&self, keyset: &KeysetView) -> bool {
        let kid = self.inp.new_kid;
        !kid.is_empty()
            && !keyset.contains(kid)
            && !self.status.suspect_kids.iter().any(|k| k == kid)
            && self.rot.old_kid.as_deref() != Some(kid)
            && self.rot.new_kid.as_deref() != Some(kid)
            && !self
                .status
                .history
                .iter()
                .any(|r| r.old_kid.as_deref() == Some(kid) || r.new_kid.as_deref() == Some(kid))
    }

    fn kid_collision(&mut self) {
        self.event(
            true,
            EVENT_KID_COLLISION,
            format!(
                "proposed kid {:?} is empty or already used; waiting for another",
                self.inp.new_kid
            ),
        );
        self.requeue_soon(Duration::ZERO);
    }
}
