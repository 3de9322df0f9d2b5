//! An emergency rotation starts: whatever is in flight is superseded and
//! every kid in the Secret becomes a suspect. A value already handled and set
//! again is answered, not ignored: the reconciler removes the annotation once
//! the status records it (`reconcile::incident`), so it coming back is a
//! change, reported with a Warning and the `EmergencyRequest` condition.

use crate::conditions::{self, EMERGENCY_REQUEST};
use crate::crd::RotationPhase::Idle;
use crate::crd::{
    EMERGENCY_ROTATE_ANNOTATION, EMERGENCY_SCOPE_ANNOTATION, EMERGENCY_SCOPE_POD,
    EMERGENCY_SCOPE_SECRET, RotationOutcome, RotationTrigger, emergency_scope_spares_standby,
};
use crate::rotation::reasons::{EVENT_EMERGENCY_ROTATION, EVENT_ROTATION_SUPERSEDED};
use crate::rotation::{Action, KeysetPlan, KeysetView};

use super::{Machine, annotation};

/// Reason of the `EmergencyRequest` condition and Warning event for a value
/// already handled.
const REASON_ALREADY_HANDLED: &str = "EmergencyRequestAlreadyHandled";
/// Reason of the `EmergencyRequest` condition once a value was acted on.
const REASON_HANDLED: &str = "Handled";

impl Machine<'_> {
    /// Acts on `macp.io/emergency-rotate`: `true` when an emergency started
    /// (the round ends there).
    pub(super) fn emergency_request(&mut self, keyset: &KeysetView) -> bool {
        let Some(id) = annotation(self.inp, EMERGENCY_ROTATE_ANNOTATION) else {
            self.forget_reused_request();
            return false;
        };
        if self.status.handled_emergency_request.as_deref() != Some(id) {
            self.start_emergency(id.to_string(), keyset);
            return true;
        }
        // Still there while its own rotation runs: the reconciler is removing it.
        let own = self.rot.phase != Idle
            && self.is_emergency()
            && self.rot.request_id.as_deref() == Some(id);
        if !own {
            self.reused_request(id.to_string());
        }
        false
    }

    /// A handled value set again: a Warning (once) and the condition naming
    /// the value and when it was handled. Nothing rotates.
    fn reused_request(&mut self, id: String) {
        let when = self
            .status
            .handled_emergency_request_time
            .or_else(|| {
                self.status
                    .history
                    .iter()
                    .rev()
                    .find(|r| {
                        r.trigger == RotationTrigger::Emergency
                            && r.request_id.as_deref() == Some(id.as_str())
                    })
                    .map(|r| r.started_at)
            })
            .map_or_else(
                || "earlier".to_string(),
                |t| {
                    format!(
                        "at {}",
                        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )
                },
            );
        let message = format!(
            "{EMERGENCY_ROTATE_ANNOTATION}={id} was already handled {when}: nothing was rotated now. \
             Each value acts once; to rotate again set a new one, e.g. INC-$(date +%s)"
        );
        let shown = conditions::get(&self.status.conditions, EMERGENCY_REQUEST)
            .is_some_and(|c| c.reason == REASON_ALREADY_HANDLED && c.message == message);
        if !shown {
            self.event(true, REASON_ALREADY_HANDLED, message.clone());
        }
        self.set_request_condition(false, REASON_ALREADY_HANDLED, &message);
    }

    /// Once a reused value is taken away, setting it again is news again.
    fn forget_reused_request(&mut self) {
        let reused = conditions::get(&self.status.conditions, EMERGENCY_REQUEST)
            .is_some_and(|c| c.reason == REASON_ALREADY_HANDLED);
        if reused {
            let message = self.handled_message();
            self.set_request_condition(true, REASON_HANDLED, &message);
        }
    }

    fn handled_message(&self) -> String {
        let id = self
            .status
            .handled_emergency_request
            .as_deref()
            .unwrap_or("?");
        match self.status.handled_emergency_request_time {
            Some(t) => format!(
                "{EMERGENCY_ROTATE_ANNOTATION}={id} handled at {}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => format!("{EMERGENCY_ROTATE_ANNOTATION}={id} handled"),
        }
    }

    fn set_request_condition(&mut self, value: bool, reason: &str, message: &str) {
        conditions::set(
            &mut self.status.conditions,
            EMERGENCY_REQUEST,
            value,
            reason,
            message,
            self.inp.now,
            self.inp.generation,
        );
    }

    /// Which standby replaces the suspects: the propagated one, unless the
    /// request's scope says the Secret itself leaked (its private half was
    /// in it), or the scope is unknown (read as the Secret, the safe side).
    fn emergency_standby(&mut self, keyset: &KeysetView) -> (Option<String>, String) {
        let scope = annotation(self.inp, EMERGENCY_SCOPE_ANNOTATION);
        if !emergency_scope_spares_standby(scope) {
            let shown = scope.unwrap_or_default();
            let why = if shown == EMERGENCY_SCOPE_SECRET {
                format!("{EMERGENCY_SCOPE_ANNOTATION}={shown}: the standby was in the Secret")
            } else {
                format!(
                    "{EMERGENCY_SCOPE_ANNOTATION}={shown} is neither {EMERGENCY_SCOPE_POD} nor {EMERGENCY_SCOPE_SECRET}; read as {EMERGENCY_SCOPE_SECRET}"
                )
            };
            if let Some(standby) = self.status.standby.clone() {
                self.discard_standby(&standby.kid, &why);
            }
            return (None, why);
        }
        match self.usable_standby(keyset) {
            Some(kid) => (Some(kid), String::new()),
            None => (None, "no propagated standby".to_string()),
        }
    }

    pub(super) fn start_emergency(&mut self, id: String, keyset: &KeysetView) {
        let (standby, without) = self.emergency_standby(keyset);
        if standby.is_none() && !self.fresh_kid_ok(keyset) {
            self.kid_collision();
            return;
        }
        let suspects: Vec<String> = keyset
            .kids()
            .into_iter()
            .filter(|k| standby.as_ref() != Some(k))
            .collect();
        for kid in &suspects {
            if !self.status.suspect_kids.contains(kid) {
                self.status.suspect_kids.push(kid.clone());
            }
        }
        // A standby's preparation is not a rotation: it leaves no history.
        if self.rot.phase != Idle && self.rot.trigger != Some(RotationTrigger::Standby) {
            let outcome = self.rot.outcome.unwrap_or(RotationOutcome::Superseded);
            let message = format!("preempted by emergency rotation {id}");
            self.record(outcome, message.clone());
            self.event(true, EVENT_ROTATION_SUPERSEDED, message);
        }
        self.status.handled_emergency_request = Some(id.clone());
        self.status.handled_emergency_request_time = Some(self.now());
        let handled = self.handled_message();
        self.set_request_condition(true, REASON_HANDLED, &handled);
        let message = match &standby {
            Some(kid) => format!(
                "emergency rotation {id}: activating the propagated standby {kid}, which every verifier already holds; suspect kids {} are withdrawn when it activates",
                suspects.join(", ")
            ),
            None => format!(
                "emergency rotation {id}: generating fresh key {} ({without}); suspect kids {} are withdrawn when it activates",
                self.inp.new_kid,
                suspects.join(", ")
            ),
        };
        let old_kid = keyset.active.kid.clone();
        self.begin(
            RotationTrigger::Emergency,
            Some(id),
            old_kid,
            (true, EVENT_EMERGENCY_ROTATION, message),
        );
        if let Some(kid) = standby {
            self.take_standby(kid);
        }
        // Suspects that only verify (a draining or prepublished key) are
        // withdrawn now: nothing signs with them, and the pod template derived
        // from the Secret must not roll them back onto pods while the fresh key
        // is generated. Not through `apply`: the active key is a suspect too,
        // and it keeps signing until the fresh key replaces it. A standby
        // taken as the new key stays published.
        let published: Vec<String> = keyset
            .published
            .iter()
            .filter(|k| !suspects.contains(k))
            .cloned()
            .collect();
        if published != keyset.published {
            self.actions.push(Action::ApplyKeyset(KeysetPlan {
                active: keyset.active.kid.clone(),
                published,
                next: keyset.next.as_ref().map(|k| k.kid.clone()),
                previous: keyset.previous.as_ref().map(|k| k.kid.clone()),
            }));
        }
    }
}
