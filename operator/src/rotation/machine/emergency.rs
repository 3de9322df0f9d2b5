//! An emergency rotation starts: whatever is in flight is superseded and
//! every kid in the Secret becomes a suspect.

use std::time::Duration;

use crate::crd::RotationPhase::{Idle, KeyGenerated};
use crate::crd::{RotationOutcome, RotationStatus, RotationTrigger};
use crate::rotation::{Action, KeysetPlan, KeysetView};

use super::Machine;

impl Machine<'_> {
    pub(super) fn start_emergency(&mut self, id: String, keyset: &KeysetView) {
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
}
