//! The transition function. See the module documentation for the contract.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::crd::{
    EMERGENCY_ROTATE_ANNOTATION, MacpAuthStatus, ROTATE_ANNOTATION, RotationOutcome, RotationPhase,
    RotationRecord, RotationStatus, RotationTrigger, SigningAlg,
};

use super::conditions::{self, *};
use super::plan::{desired, final_plan, reversed};
use super::schedule::{add, add_secs, automatic_not_before, next_rotation, parse_interval, until};
use super::verify::{Verdict, verify};
use super::{
    Action, Decision, Event, HISTORY_LIMIT, Inputs, KeysetPlan, KeysetView, MAX_BACKOFF, POLL,
    PROPAGATION_SLACK_SECONDS, ProbePlan, RETRY_AFTER_ROLLBACK,
};

use RotationPhase::*;

/// The probes the reconciler should run before the next [`decide`], from the persisted status.
pub fn probe_plan(status: &MacpAuthStatus) -> ProbePlan {
    match status.rotation.as_ref().map(|r| r.phase) {
        Some(Publishing | Retiring) => ProbePlan {
            jwks: true,
            signing: false,
        },
        Some(Activating | RollingBack) => ProbePlan {
            jwks: true,
            signing: true,
        },
        _ => ProbePlan::default(),
    }
}

/// One round of the state machine: the next status, at most one action, events and a requeue.
pub fn decide(inputs: &Inputs<'_>) -> Decision {
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

/// A routine trigger found while Idle.
struct Trigger {
    trigger: RotationTrigger,
    request_id: Option<String>,
    /// Identifies the request for the once-only "deferred" event.
    tag: String,
    description: String,
    /// A `macp.io/rotate` value, recorded as handled when the rotation starts.
    annotation: Option<String>,
}

struct Machine<'a> {
    inp: &'a Inputs<'a>,
    status: MacpAuthStatus,
    rot: RotationStatus,
    actions: Vec<Action>,
    events: Vec<Event>,
    requeue: Option<Duration>,
}

fn kind_label(alg: SigningAlg, rsa_bits: Option<u32>) -> String {
    match (alg, rsa_bits) {
        (SigningAlg::RS256, Some(bits)) => format!("RS256/{bits}"),
        (SigningAlg::RS256, None) => "RS256".to_string(),
        (SigningAlg::ES256, _) => "ES256".to_string(),
    }
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
        self.schedule();
        if let Some(id) = annotation(self.inp, EMERGENCY_ROTATE_ANNOTATION)
            .filter(|id| self.status.handled_emergency_request.as_deref() != Some(*id))
        {
            self.start_emergency(id.to_string(), keyset);
            return;
        }
        match self.rot.phase {
            Idle => self.idle(keyset),
            KeyGenerated => self.key_generated(keyset),
            Publishing | Activating | Retiring | RollingBack => self.rollout_phase(keyset),
            Propagating | Draining => self.wait_phase(keyset),
        }
        if self.rot.phase != Idle {
            self.note_deferred();
        }
    }

    // ----- helpers -----

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
        if conditions::degraded_by_rotation(&self.status.conditions) {
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

    fn requeue_soon(&mut self, after: Duration) {
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }

    fn is_emergency(&self) -> bool {
        self.rot.trigger == Some(RotationTrigger::Emergency)
    }

    fn desired_kind(&self) -> (SigningAlg, Option<u32>) {
        let spec = self.inp.spec;
        match spec.signing_alg {
            SigningAlg::RS256 => (SigningAlg::RS256, Some(spec.rsa_key_bits)),
            SigningAlg::ES256 => (SigningAlg::ES256, None),
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
            "KidCollision",
            format!(
                "proposed kid {:?} is empty or already used; waiting for another",
                self.inp.new_kid
            ),
        );
        self.requeue_soon(Duration::ZERO);
    }

    // ----- schedule -----

    fn schedule(&mut self) {
        let now = self.now();
        match self.inp.spec.rotation.interval.as_deref() {
            None => self.status.next_rotation_time = None,
            Some(text) => match parse_interval(text) {
                Ok(interval) => {
                    self.status.next_rotation_time =
                        Some(next_rotation(&self.status, interval, now));
                    let held = conditions::get(&self.status.conditions, DEGRADED)
                        .is_some_and(|c| c.status == "True" && c.reason == REASON_INVALID_INTERVAL);
                    if held {
                        self.undegrade("rotation interval is valid");
                    }
                }
                Err(e) => {
                    self.status.next_rotation_time = None;
                    let already = conditions::get(&self.status.conditions, DEGRADED)
                        .is_some_and(|c| c.status == "True" && c.reason == REASON_INVALID_INTERVAL);
                    if !already {
                        self.event(true, REASON_INVALID_INTERVAL, e.to_string());
                    }
                    self.degrade(REASON_INVALID_INTERVAL, &e.to_string());
                }
            },
        }
    }

    // ----- Idle -----

    fn routine_trigger(&self, keyset: &KeysetView) -> Option<Trigger> {
        if let Some(id) = annotation(self.inp, ROTATE_ANNOTATION)
            .filter(|id| self.status.handled_rotate_request.as_deref() != Some(*id))
        {
            return Some(Trigger {
                trigger: RotationTrigger::Manual,
                request_id: Some(id.to_string()),
                tag: id.to_string(),
                description: format!("{ROTATE_ANNOTATION}={id}"),
                annotation: Some(id.to_string()),
            });
        }
        let now = self.now();
        let held =
            automatic_not_before(&self.status, RETRY_AFTER_ROLLBACK).is_some_and(|t| now < t);
        if held {
            return None;
        }
        let (alg, bits) = self.desired_kind();
        let active = &keyset.active;
        let bits_differ =
            alg == SigningAlg::RS256 && active.rsa_bits.is_some_and(|b| Some(b) != bits);
        if active.alg != alg || bits_differ {
            let to = kind_label(alg, bits);
            return Some(Trigger {
                trigger: RotationTrigger::Manual,
                request_id: Some(format!("spec:{to}")),
                tag: format!("spec:{to}"),
                description: format!(
                    "the spec asks for {to} keys, the active key is {}",
                    kind_label(active.alg, active.rsa_bits)
                ),
                annotation: None,
            });
        }
        if self.status.next_rotation_time.is_some_and(|t| t <= now) {
            return Some(Trigger {
                trigger: RotationTrigger::Scheduled,
                request_id: None,
                tag: "scheduled".to_string(),
                description: "the rotation interval elapsed".to_string(),
                annotation: None,
            });
        }
        None
    }

    fn idle(&mut self, keyset: &KeysetView) {
        let now = self.now();
        let Some(t) = self.routine_trigger(keyset) else {
            self.rot = RotationStatus::default();
            let wake = [
                self.status.next_rotation_time,
                automatic_not_before(&self.status, RETRY_AFTER_ROLLBACK),
            ]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .min();
            if let Some(wake) = wake {
                self.requeue_soon(until(now, wake));
            }
            return;
        };
        if self.inp.spec.rotation.paused {
            if self.rot.deferred_request.as_deref() != Some(t.tag.as_str()) {
                self.event(
                    false,
                    "RotationPaused",
                    format!(
                        "rotation requested ({}) waits: spec.rotation.paused is true",
                        t.description
                    ),
                );
                self.rot.deferred_request = Some(t.tag);
            }
            return;
        }
        if !self.fresh_kid_ok(keyset) {
            self.kid_collision();
            return;
        }
        if let Some(id) = t.annotation {
            self.status.handled_rotate_request = Some(id);
        }
        let kid = self.inp.new_kid.to_string();
        let message = format!("rotation started ({}): generating key {kid}", t.description);
        self.rot = RotationStatus {
            phase: KeyGenerated,
            trigger: Some(t.trigger),
            request_id: t.request_id,
            started_at: Some(now),
            phase_since: Some(now),
            old_kid: Some(keyset.active.kid.clone()),
            pending_kid: Some(kid),
            message: Some(message.clone()),
            ..RotationStatus::default()
        };
        self.event(false, "RotationStarted", message);
        self.requeue_soon(Duration::ZERO);
    }

    // ----- Emergency -----

    fn start_emergency(&mut self, id: String, keyset: &KeysetView) {
        if !self.fresh_kid_ok(keyset) {
            self.kid_collision();
            return;
        }
        let now = self.now();
        let suspects = keyset.kids();
        for kid in &suspects {
            if !self.status.suspect_kids.contains(kid) {
                self.status.suspect_kids.push(kid.clone());
            }
        }
        if self.rot.phase != Idle {
            let outcome = self.rot.outcome.unwrap_or(RotationOutcome::Superseded);
            let message = format!("preempted by emergency rotation {id}");
            self.record(outcome, message.clone());
            self.event(true, "RotationSuperseded", message);
        }
        self.status.handled_emergency_request = Some(id.clone());
        let kid = self.inp.new_kid.to_string();
        let message = format!(
            "emergency rotation {id}: generating fresh key {kid}; suspect kids {} are withdrawn when it activates",
            suspects.join(", ")
        );
        self.rot = RotationStatus {
            phase: KeyGenerated,
            trigger: Some(RotationTrigger::Emergency),
            request_id: Some(id),
            started_at: Some(now),
            phase_since: Some(now),
            old_kid: Some(keyset.active.kid.clone()),
            pending_kid: Some(kid),
            message: Some(message.clone()),
            ..RotationStatus::default()
        };
        self.event(true, "EmergencyRotation", message);
        // Suspects that only verify (a draining or prepublished key) are
        // withdrawn now: nothing signs with them, and the pod template derived
        // from the Secret must not roll them back onto pods while the fresh key
        // is generated. Not through `apply`: the active key is a suspect too,
        // and it keeps signing until the fresh key replaces it.
        if !keyset.published.is_empty() {
            self.actions.push(Action::ApplyKeyset(KeysetPlan {
                active: keyset.active.kid.clone(),
                published: Vec::new(),
                next: keyset.next.as_ref().map(|k| k.kid.clone()),
                previous: keyset.previous.as_ref().map(|k| k.kid.clone()),
            }));
        }
        self.requeue_soon(Duration::ZERO);
    }

    // ----- KeyGenerated -----

    fn key_generated(&mut self, keyset: &KeysetView) {
        let Some(pending) = self.rot.pending_kid.clone() else {
            // A confirmed key and a KeyGenerated phase is never persisted; repair by re-reserving.
            if !self.fresh_kid_ok(keyset) {
                self.kid_collision();
                return;
            }
            self.rot.pending_kid = Some(self.inp.new_kid.to_string());
            self.rot.new_kid = None;
            self.requeue_soon(Duration::ZERO);
            return;
        };
        let in_next = keyset.next.as_ref().is_some_and(|k| k.kid == pending);
        let in_active = keyset.active.kid == pending;
        if !in_next && !in_active {
            let (alg, rsa_bits) = self.desired_kind();
            self.actions.push(Action::GenerateNextKey {
                kid: pending.clone(),
                alg,
                rsa_bits,
            });
            self.requeue_soon(Duration::ZERO);
            return;
        }
        self.rot.new_kid = Some(pending.clone());
        self.rot.pending_kid = None;
        self.event(
            false,
            "KeyGenerated",
            format!("key {pending} is stored in the Secret"),
        );
        // A write whose status was lost already published or activated the key: resume
        // that step whatever `prepublish` says now.
        let published = keyset.published.contains(&pending);
        let next = if self.is_emergency() || in_active {
            Activating
        } else if published || self.inp.spec.rotation.prepublish {
            Publishing
        } else {
            Activating
        };
        self.enter(next, keyset, None);
    }

    // ----- entering a phase -----

    /// Moves to `phase`, arms its wait, emits its event and applies its keyset.
    fn enter(&mut self, phase: RotationPhase, keyset: &KeysetView, wait: Option<Duration>) {
        let now = self.now();
        let spec = self.inp.spec;
        self.rot.phase = phase;
        self.rot.phase_since = Some(now);
        if phase != RollingBack {
            self.rot.rollback_from = None;
        }
        let old = self.rot.old_kid.clone().unwrap_or_default();
        let new = self.rot.new_kid.clone().unwrap_or_default();
        let (retiring, keeping) = if reversed(&self.rot) {
            (new.clone(), old.clone())
        } else {
            (old.clone(), new.clone())
        };
        let (wait_until, warning, message) = match phase {
            Publishing => (
                add_secs(now, spec.rotation.rollout_timeout_seconds),
                false,
                format!("publishing {new} next to the active key {old}"),
            ),
            Propagating => (
                add_secs(now, spec.jwks_cache_ttl_seconds + PROPAGATION_SLACK_SECONDS),
                false,
                format!(
                    "every pod serves {new}; waiting {}s (cache TTL {}s + slack) for verifier caches",
                    spec.jwks_cache_ttl_seconds + PROPAGATION_SLACK_SECONDS,
                    spec.jwks_cache_ttl_seconds
                ),
            ),
            Activating if self.is_emergency() => (
                add_secs(now, spec.rotation.rollout_timeout_seconds),
                true,
                format!("activating fresh key {new}; nothing else is published"),
            ),
            Activating => (
                add_secs(now, spec.rotation.rollout_timeout_seconds),
                false,
                format!("activating {new}; {old} stays published"),
            ),
            Draining => {
                let wait = wait.unwrap_or(Duration::from_secs(
                    spec.effective_drain_seconds().max(0) as u64,
                ));
                (
                    add(now, wait),
                    false,
                    format!(
                        "{keeping} signs; {retiring} stays published for {}s while its tokens expire",
                        wait.as_secs()
                    ),
                )
            }
            Retiring => (
                add_secs(now, spec.rotation.rollout_timeout_seconds),
                false,
                format!("retiring {retiring}"),
            ),
            RollingBack => (
                add_secs(now, spec.rotation.rollout_timeout_seconds),
                true,
                format!(
                    "rolling back the failed {} step: {old} signs",
                    self.rot
                        .rollback_from
                        .map(|p| format!("{p:?}"))
                        .unwrap_or_default()
                ),
            ),
            Idle | KeyGenerated => (now, false, String::new()),
        };
        self.rot.wait_until = Some(wait_until);
        self.rot.message = Some(message.clone());
        self.event(warning, &format!("{phase:?}"), message);
        if let Some(plan) = desired(&self.rot)
            && !plan.matches(keyset)
            && !self.apply(plan, keyset)
        {
            return;
        }
        match phase {
            Propagating | Draining => self.requeue_soon(until(now, wait_until)),
            _ => self.requeue_soon(POLL),
        }
    }

    /// Emits the write of `plan`; aborts the rotation instead when the Secret
    /// cannot hold it or it would publish a suspect key.
    fn apply(&mut self, plan: KeysetPlan, keyset: &KeysetView) -> bool {
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

    // ----- rollout phases -----

    /// The keyset the current phase wants; aborts the rotation when its status
    /// names no old or new key (a phase that needs a layout cannot go on).
    fn desired_or_abort(&mut self) -> Option<KeysetPlan> {
        let plan = desired(&self.rot);
        if plan.is_none() {
            self.abort("rotation status names no old or new key".to_string());
        }
        plan
    }

    fn rollout_phase(&mut self, keyset: &KeysetView) {
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
    fn adopt_successor(&mut self, keyset: &KeysetView) -> bool {
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

    // ----- wait phases -----

    fn wait_phase(&mut self, keyset: &KeysetView) {
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
            Propagating => self.enter(Activating, keyset, None),
            _ => self.enter(Retiring, keyset, None),
        }
    }

    // ----- endings -----

    fn record(&mut self, outcome: RotationOutcome, message: String) {
        let now = self.now();
        self.status.history.push(RotationRecord {
            trigger: self.rot.trigger.unwrap_or(RotationTrigger::Manual),
            request_id: self.rot.request_id.clone(),
            old_kid: self.rot.old_kid.clone(),
            new_kid: self.rot.new_kid.clone(),
            started_at: self.rot.started_at.unwrap_or(now),
            finished_at: now,
            outcome,
            message: Some(message),
        });
        let excess = self.status.history.len().saturating_sub(HISTORY_LIMIT);
        self.status.history.drain(..excess);
    }

    fn finish(&mut self, outcome: RotationOutcome, message: &str) {
        let now = self.now();
        self.record(outcome, message.to_string());
        let (warning, reason) = match outcome {
            RotationOutcome::Succeeded => (false, "RotationSucceeded"),
            RotationOutcome::RolledBack => (true, "RotationRolledBack"),
            RotationOutcome::Superseded => (true, "RotationSuperseded"),
            RotationOutcome::Failed => (true, "RotationFailed"),
        };
        let trigger = format!("{:?}", self.rot.trigger.unwrap_or(RotationTrigger::Manual));
        let text = format!(
            "{} rotation {} -> {}: {message}",
            trigger.to_lowercase(),
            self.rot.old_kid.as_deref().unwrap_or("?"),
            self.rot.new_kid.as_deref().unwrap_or("?"),
        );
        match outcome {
            RotationOutcome::Succeeded => self.undegrade(&text),
            RotationOutcome::RolledBack => self.degrade(REASON_ROLLED_BACK, &text),
            _ => {}
        }
        self.event(warning, reason, text);
        self.rot = RotationStatus::default();
        // The schedule restarts from this rotation; a failed one is retried sooner.
        self.status.next_rotation_time = match outcome {
            RotationOutcome::Succeeded => None,
            _ => Some(add(now, RETRY_AFTER_ROLLBACK)),
        };
        self.schedule();
        self.requeue_soon(Duration::ZERO);
    }

    /// Ends a rotation that cannot continue (its key material is gone, or its status is corrupt).
    fn abort(&mut self, message: String) {
        let message = format!("rotation abandoned: {message}");
        self.degrade(REASON_KEY_MISSING, &message);
        self.finish(RotationOutcome::Failed, &message);
    }

    fn note_deferred(&mut self) {
        let Some(id) = annotation(self.inp, ROTATE_ANNOTATION)
            .filter(|id| self.status.handled_rotate_request.as_deref() != Some(*id))
        else {
            return;
        };
        if self.rot.deferred_request.as_deref() == Some(id) {
            return;
        }
        let message = format!(
            "{ROTATE_ANNOTATION}={id} arrived during a rotation ({:?}); it starts when this one finishes",
            self.rot.phase
        );
        self.rot.deferred_request = Some(id.to_string());
        self.event(false, "RotationDeferred", message);
    }
}
