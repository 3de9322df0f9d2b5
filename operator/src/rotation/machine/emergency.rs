//! An emergency rotation starts: whatever is in flight is superseded and
//! every kid in the Secret becomes a suspect.

use crate::crd::RotationPhase::Idle;
use crate::crd::{RotationOutcome, RotationTrigger};
use crate::rotation::{Action, KeysetPlan, KeysetView};

use super::Machine;

impl Machine<'_> {
    pub(super) fn start_emergency(&mut self, id: String, keyset: &KeysetView) {
        if !self.fresh_kid_ok(keyset) {
            self.kid_collision();
            return;
        }
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
        let message = format!(
            "emergency rotation {id}: generating fresh key {}; suspect kids {} are withdrawn when it activates",
            self.inp.new_kid,
            suspects.join(", ")
        );
        let old_kid = keyset.active.kid.clone();
        self.begin(
            RotationTrigger::Emergency,
            Some(id),
            old_kid,
            (true, "EmergencyRotation", message),
        );
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
    }
}
