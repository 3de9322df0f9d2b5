//! The standby key: prepared while Idle (generated, published and
//! propagated like a routine rotation's new key, then parked), checked every
//! round against the Secret, and taken by the next routine or pod-scope
//! emergency rotation (docs/architecture.md, The standby key).

use crate::crd::{RotationTrigger, SigningAlg};
use crate::rotation::KeysetView;
use crate::rotation::RETRY_AFTER_ROLLBACK;
use crate::rotation::phase;
use crate::rotation::reasons::{
    EVENT_ROTATION_STARTED, EVENT_STANDBY_DISCARDED, EVENT_STANDBY_STARTED,
};
use crate::rotation::schedule::automatic_not_before;

use super::Machine;
use super::idle::Trigger;

impl Machine<'_> {
    /// The standby's kid when it can be activated now: propagated, still in
    /// the Secret exactly as it was propagated (`next`, the only published
    /// key beside the active one), and of the kind the spec asks for.
    /// Anything else discards it (once, with an event), and another is prepared.
    pub(super) fn usable_standby(&mut self, keyset: &KeysetView) -> Option<String> {
        let standby = self.status.standby.clone()?;
        let kid = standby.kid;
        let (alg, bits) = self.inp.spec.key_kind();
        let why = match keyset.next.as_ref() {
            _ if !standby.propagated => Some("it was never propagated"),
            Some(k) if k.kid != kid => Some("the Secret holds another next key"),
            None => Some("the Secret no longer holds it"),
            Some(k) if k.alg != alg || (alg == SigningAlg::RS256 && k.rsa_bits != bits) => {
                Some("the spec asks for another kind of key")
            }
            Some(_) if keyset.published != [kid.clone()] || keyset.previous.is_some() => {
                Some("the Secret's published keys changed since it was propagated")
            }
            Some(_) => None,
        };
        match why {
            None => Some(kid),
            Some(why) => {
                self.discard_standby(&kid, why);
                None
            }
        }
    }

    pub(super) fn discard_standby(&mut self, kid: &str, why: &str) {
        self.status.standby = None;
        self.event(
            false,
            EVENT_STANDBY_DISCARDED,
            format!("standby key {kid} is discarded: {why}"),
        );
    }

    /// Starts preparing a standby while Idle with none, unless the spec does
    /// not want one, rotations are paused, or a rollback holds automatic
    /// work. `true` when it started (the round ends there).
    pub(super) fn prepare_standby(&mut self, keyset: &KeysetView) -> bool {
        let rotation = &self.inp.spec.rotation;
        if !rotation.standby || rotation.paused || self.status.standby.is_some() {
            return false;
        }
        let held = automatic_not_before(&self.status, RETRY_AFTER_ROLLBACK)
            .is_some_and(|t| self.now() < t);
        if held {
            return false;
        }
        if !self.fresh_kid_ok(keyset) {
            self.kid_collision();
            return true;
        }
        let message = format!(
            "preparing standby key {}: it is published and propagated, and signs only once a rotation activates it",
            self.inp.new_kid
        );
        self.begin(
            RotationTrigger::Standby,
            None,
            keyset.active.kid.clone(),
            (false, EVENT_STANDBY_STARTED, message),
        );
        true
    }

    /// A routine rotation whose new key is the propagated standby `kid`: it
    /// is reserved like a fresh key (the status first, no write), and the
    /// next round activates it without publishing.
    pub(super) fn begin_from_standby(&mut self, t: Trigger, kid: String, keyset: &KeysetView) {
        if let Some(id) = t.annotation {
            self.status.handled_rotate_request = Some(id);
        }
        let message = format!(
            "rotation started ({}): activating the propagated standby {kid}",
            t.description
        );
        self.begin(
            t.trigger,
            t.request_id,
            keyset.active.kid.clone(),
            (false, EVENT_ROTATION_STARTED, message),
        );
        self.take_standby(kid);
    }

    /// The rotation just begun takes the standby as its new key.
    pub(super) fn take_standby(&mut self, kid: String) {
        self.rot.pending_kid = Some(kid);
        self.rot.from_standby = true;
        self.status.standby = None;
    }

    /// A routine request during the standby's preparation turns the
    /// preparation into that rotation: its key goes on to sign when
    /// propagated, instead of waiting for the preparation to end first. A
    /// change of key kind is not taken over: the key being prepared may be of
    /// the old kind.
    pub(super) fn adopt_preparation(&mut self, keyset: &KeysetView) {
        let preparing = self.rot.trigger == Some(RotationTrigger::Standby)
            && phase::standby_preparation(self.rot.phase);
        if !preparing || self.inp.spec.rotation.paused {
            return;
        }
        let Some(t) = self.routine_trigger(keyset).filter(|t| !t.kind_change) else {
            return;
        };
        if let Some(id) = t.annotation {
            self.status.handled_rotate_request = Some(id);
        }
        let kid = self
            .rot
            .new_kid
            .clone()
            .or_else(|| self.rot.pending_kid.clone())
            .unwrap_or_default();
        let message = format!(
            "rotation started ({}): the standby key {kid} being prepared becomes the new key",
            t.description
        );
        self.rot.trigger = Some(t.trigger);
        self.rot.request_id = t.request_id;
        self.rot.message = Some(message.clone());
        self.event(false, EVENT_ROTATION_STARTED, message);
    }
}
