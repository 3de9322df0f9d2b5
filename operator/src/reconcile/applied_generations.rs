//! The generation of each MacpAuth whose autoscaler and disruption budget
//! this process applied or removed, so that a spec asking for neither costs
//! no read of them while the generation stays.

use parking_lot::Mutex;
use std::collections::HashMap;

/// The generation of each MacpAuth (by uid) whose optional objects (the
/// autoscaler and the disruption budget) a round of this process applied or
/// removed. A spec that asks for neither costs no read of them while the
/// generation stays (step 3): `Ready=True` of the generation proves the same
/// across restarts, but a rotation's rollouts set `Ready=False`, and then
/// every round of a rotation read both, a fifth of a storm's requests.
#[derive(Default)]
pub(super) struct AppliedGenerations {
    applied: Mutex<HashMap<String, i64>>,
}

impl AppliedGenerations {
    pub(super) fn is_applied(&self, owner_uid: &str, generation: Option<i64>) -> bool {
        generation.is_some_and(|g| self.applied.lock().get(owner_uid) == Some(&g))
    }

    pub(super) fn record(&self, owner_uid: &str, generation: Option<i64>) {
        if let Some(g) = generation {
            self.applied.lock().insert(owner_uid.to_string(), g);
        }
    }

    pub(super) fn forget_owner(&self, owner_uid: &str) {
        self.applied.lock().remove(owner_uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_generation_applied_is_known_until_the_owner_is_forgotten() {
        let applied = AppliedGenerations::default();
        assert!(!applied.is_applied("owner-1", Some(3)));
        applied.record("owner-1", Some(3));
        assert!(applied.is_applied("owner-1", Some(3)));
        assert!(!applied.is_applied("owner-1", Some(4)), "a new spec");
        assert!(!applied.is_applied("owner-2", Some(3)));
        assert!(!applied.is_applied("owner-1", None));
        applied.record("owner-1", None);
        assert!(
            applied.is_applied("owner-1", Some(3)),
            "no generation records nothing"
        );
        applied.forget_owner("owner-1");
        assert!(!applied.is_applied("owner-1", Some(3)));
    }
}
