//! KeyGenerated: have the reserved key generated into `next.jwk.json`,
//! then move on once the Secret holds it.

use crate::rotation::reasons::EVENT_KEY_GENERATED;
use std::time::Duration;

use crate::crd::RotationPhase::KeyGenerated;
use crate::rotation::phase::{self, Facts, Next};
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
            let (alg, rsa_bits) = self.inp.spec.key_kind();
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
            EVENT_KEY_GENERATED,
            format!("key {pending} is stored in the Secret"),
        );
        let facts = Facts {
            key_active: in_active,
            key_published: keyset.published.contains(&pending),
            ..self.facts()
        };
        let Some(Next::Enter(next)) = phase::on_success(KeyGenerated, facts) else {
            self.abort(format!("no phase follows {KeyGenerated:?}"));
            return;
        };
        self.enter(next, keyset, None);
    }
}
