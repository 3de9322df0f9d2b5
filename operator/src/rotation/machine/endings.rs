//! How a rotation ends (history, outcome event, schedule restart), and the
//! once-only note about a request deferred by a rotation in flight.

use crate::rotation::reasons::{
    EVENT_ROTATION_DEFERRED, EVENT_ROTATION_FAILED, EVENT_ROTATION_SUPERSEDED, EVENT_STANDBY_READY,
    REASON_ROLLED_BACK, REASON_ROTATION_SUCCEEDED,
};
use std::time::Duration;

use crate::crd::{
    ROTATE_ANNOTATION, RotationOutcome, RotationRecord, RotationStatus, RotationTrigger,
    StandbyStatus,
};
use crate::rotation::RETRY_AFTER_ROLLBACK;
use crate::rotation::reasons::REASON_KEY_MISSING;
use crate::rotation::schedule::add;

use super::{Machine, annotation};

impl Machine<'_> {
    pub(super) fn record(&mut self, outcome: RotationOutcome, message: String) {
        let now = self.now();
        self.status.push_history(RotationRecord {
            trigger: self.rot.trigger.unwrap_or(RotationTrigger::Manual),
            request_id: self.rot.request_id.clone(),
            old_kid: self.rot.old_kid.clone(),
            new_kid: self.rot.new_kid.clone(),
            started_at: self.rot.started_at.unwrap_or(now),
            finished_at: now,
            outcome,
            message: Some(message),
        });
    }

    pub(super) fn finish(&mut self, outcome: RotationOutcome, message: &str) {
        let now = self.now();
        self.record(outcome, message.to_string());
        let (warning, reason) = match outcome {
            RotationOutcome::Succeeded => (false, REASON_ROTATION_SUCCEEDED),
            RotationOutcome::RolledBack => (true, REASON_ROLLED_BACK),
            RotationOutcome::Superseded => (true, EVENT_ROTATION_SUPERSEDED),
            RotationOutcome::Failed => (true, EVENT_ROTATION_FAILED),
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
            // Superseded: the emergency that preempted it owns the conditions.
            // Failed: `abort` set Degraded with its own reason.
            RotationOutcome::Superseded | RotationOutcome::Failed => {}
        }
        self.event(warning, reason, text);
        self.rot = RotationStatus::default();
        // The schedule restarts from this rotation; a failed one is retried sooner.
        self.status.next_rotation_time = match outcome {
            RotationOutcome::Succeeded => None,
            RotationOutcome::RolledBack | RotationOutcome::Superseded | RotationOutcome::Failed => {
                Some(add(now, RETRY_AFTER_ROLLBACK))
            }
        };
        self.update_next_rotation();
        self.requeue_soon(Duration::ZERO);
    }

    /// The standby key is propagated: Idle again, with the standby recorded.
    /// Nothing changed role, so the history and the schedule are untouched.
    pub(super) fn park_standby(&mut self) {
        let Some(kid) = self.rot.new_kid.clone() else {
            self.abort("the standby's status names no key".to_string());
            return;
        };
        let now = self.now();
        self.status.standby = Some(StandbyStatus {
            kid: kid.clone(),
            propagated: true,
            propagated_at: Some(now),
        });
        self.event(
            false,
            EVENT_STANDBY_READY,
            format!(
                "standby key {kid} is propagated: the next rotation activates it at once, and a pod-scope emergency replaces the suspect keys with it"
            ),
        );
        self.rot = RotationStatus::default();
        self.requeue_soon(Duration::ZERO);
    }

    /// Ends a rotation that cannot continue (its key material is gone, or its status is corrupt).
    pub(super) fn abort(&mut self, message: String) {
        let message = format!("rotation abandoned: {message}");
        self.degrade(REASON_KEY_MISSING, &message);
        self.finish(RotationOutcome::Failed, &message);
    }

    pub(super) fn note_deferred(&mut self) {
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
        self.event(false, EVENT_ROTATION_DEFERRED, message);
    }
}
