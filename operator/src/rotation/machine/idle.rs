//! Idle: find a routine trigger (a `macp.io/rotate` value, a signing-kind
//! change, the schedule) and reserve a kid for the rotation it starts (or
//! take the propagated standby); with none, prepare a standby.

use crate::crd::{ROTATE_ANNOTATION, RotationStatus, RotationTrigger, SigningAlg};
use crate::rotation::reasons::{EVENT_ROTATION_PAUSED, EVENT_ROTATION_STARTED};
use crate::rotation::schedule::{automatic_not_before, until};
use crate::rotation::{KeysetView, RETRY_AFTER_ROLLBACK};

use super::{Machine, annotation};

/// A routine trigger found while Idle.
pub(super) struct Trigger {
    pub(super) trigger: RotationTrigger,
    pub(super) request_id: Option<String>,
    /// Identifies the request for the once-only "deferred" event.
    tag: String,
    pub(super) description: String,
    /// A `macp.io/rotate` value, recorded as handled when the rotation starts.
    pub(super) annotation: Option<String>,
    /// The spec asks for another kind of key than the active one.
    pub(super) kind_change: bool,
}

impl Machine<'_> {
    pub(super) fn routine_trigger(&self, keyset: &KeysetView) -> Option<Trigger> {
        if let Some(id) = annotation(self.inp, ROTATE_ANNOTATION)
            .filter(|id| self.status.handled_rotate_request.as_deref() != Some(*id))
        {
            return Some(Trigger {
                trigger: RotationTrigger::Manual,
                request_id: Some(id.to_string()),
                tag: id.to_string(),
                description: format!("{ROTATE_ANNOTATION}={id}"),
                annotation: Some(id.to_string()),
                kind_change: false,
            });
        }
        let now = self.now();
        let held =
            automatic_not_before(&self.status, RETRY_AFTER_ROLLBACK).is_some_and(|t| now < t);
        if held {
            return None;
        }
        let (alg, bits) = self.inp.spec.key_kind();
        let active = &keyset.active;
        let bits_differ =
            alg == SigningAlg::RS256 && active.rsa_bits.is_some_and(|b| Some(b) != bits);
        if active.alg != alg || bits_differ {
            let to = alg.kind_label(bits);
            return Some(Trigger {
                trigger: RotationTrigger::Manual,
                request_id: Some(format!("spec:{to}")),
                tag: format!("spec:{to}"),
                description: format!(
                    "the spec asks for {to} keys, the active key is {}",
                    active.alg.kind_label(active.rsa_bits)
                ),
                annotation: None,
                kind_change: true,
            });
        }
        if self.status.next_rotation_time.is_some_and(|t| t <= now) {
            return Some(Trigger {
                trigger: RotationTrigger::Scheduled,
                request_id: None,
                tag: "scheduled".to_string(),
                description: "the rotation interval elapsed".to_string(),
                annotation: None,
                kind_change: false,
            });
        }
        None
    }

    pub(super) fn idle(&mut self, keyset: &KeysetView) {
        let now = self.now();
        let standby = self.usable_standby(keyset);
        let Some(t) = self.routine_trigger(keyset) else {
            self.rot = RotationStatus::default();
            if standby.is_none() && self.prepare_standby(keyset) {
                return;
            }
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
                    EVENT_ROTATION_PAUSED,
                    format!(
                        "rotation requested ({}) waits: spec.rotation.paused is true",
                        t.description
                    ),
                );
                self.rot.deferred_request = Some(t.tag);
            }
            return;
        }
        if let Some(kid) = standby {
            self.begin_from_standby(t, kid, keyset);
            return;
        }
        if !self.fresh_kid_ok(keyset) {
            self.kid_collision();
            return;
        }
        if let Some(id) = t.annotation {
            self.status.handled_rotate_request = Some(id);
        }
        let message = format!(
            "rotation started ({}): generating key {}",
            t.description, self.inp.new_kid
        );
        let old_kid = keyset.active.kid.clone();
        self.begin(
            t.trigger,
            t.request_id,
            old_kid,
            (false, EVENT_ROTATION_STARTED, message),
        );
    }
}
