//! Step 5: decide, by the pure rotation state machine ([`rotation::decide`]),
//! from the persisted status and what step 4 saw.

use kube::ResourceExt;

use crate::keyset;
use crate::keyset_rollout;
use crate::metrics;
use crate::rotation::{self, Decision, Inputs};
use crate::spread;

use super::observe::Seen;
use super::round::Round;

impl Round<'_> {
    /// `rendered_max_ttl`: the max token TTL step 3 rendered into the template.
    pub(super) fn decide(&self, seen: &Seen, rendered_max_ttl: i64) -> Decision {
        self.ctx.metrics.verify_failed(
            &self.owner.namespace,
            &self.owner.name,
            metrics::failed_verifications(&self.status, &seen.observed),
        );
        // Proposed in case a rotation starts; the machine reserves it or ignores it.
        let new_kid = keyset::new_kid(&self.owner.name, self.now, rand::random());
        rotation::decide(&Inputs {
            spec: self.spec(),
            status: &self.status,
            annotations: self.mauth.annotations(),
            generation: self.generation,
            observed: &seen.observed,
            now: self.now,
            new_kid: &new_kid,
            max_ttl_in_effect: keyset_rollout::highest_pod_max_ttl(&seen.pods)
                .map_or(rendered_max_ttl, |t| t.max(rendered_max_ttl)),
            schedule_place: spread::place(&spread::key(&self.owner.namespace, &self.owner.name)),
        })
    }
}
