//! KeyGenerated: have the reserved key generated into `next.jwk.json`,
//! then move on once the Secret holds it.

use std::time::Duration;

use crate::crd::RotationPhase::{Activating, Publishing};
use crate::rotation::{Action, KeysetView};

use super::Machine;

impl Machine<'_> {
    pub(super) fn key_generated(&mut self, keyset: &KeysetView) {
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
}
