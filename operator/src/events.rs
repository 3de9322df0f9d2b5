//! Kubernetes Events of the rounds, through kube's [`Recorder`] split in
//! shards.
//!
//! kube's `Recorder` keeps every event it published in the last six minutes
//! (to aggregate repeats into a series), and on each publish it scans that
//! whole cache under a write lock to drop expired entries. A rotation
//! publishes eight events, so a storm of a thousand rotations made every
//! publish scan up to eight thousand entries while every other round waited
//! for the lock (its share of the operator's CPU in a perf profile of the
//! storm: docs/performance.md, "What the figures asked for, and what changed").
//! Each shard is a `Recorder` of its own, with its own cache and lock, and an
//! object's events always go to the same shard, so repeats of one object's
//! event are still aggregated exactly as one `Recorder` would.

use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, Recorder, Reporter};

/// Shards of the recorder: with a thousand objects, a few dozen entries each
/// to scan per publish in a storm's six minutes.
const SHARDS: usize = 64;

/// kube's [`Recorder`], one per shard of the objects.
#[derive(Clone)]
pub struct EventRecorders {
    shards: Vec<Recorder>,
}

impl EventRecorders {
    pub fn new(client: &Client, reporter: &Reporter) -> Self {
        let shards = (0..SHARDS)
            .map(|_| Recorder::new(client.clone(), reporter.clone()))
            .collect();
        Self { shards }
    }

    /// Publishes `event` about `regarding` through the object's own shard.
    pub(crate) async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        self.shards[shard_of(regarding, self.shards.len())]
            .publish(event, regarding)
            .await
    }
}

/// The shard of an object: by namespace and name only, so that every event of
/// one object (whatever its resourceVersion at the time) lands in one cache.
fn shard_of(regarding: &ObjectReference, shards: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    regarding.namespace.hash(&mut hasher);
    regarding.name.hash(&mut hasher);
    // The remainder is below `shards`, which is a usize.
    (hasher.finish() % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(ns: &str, name: &str, rv: &str) -> ObjectReference {
        ObjectReference {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            resource_version: Some(rv.into()),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn one_object_stays_in_one_shard_and_objects_spread() {
        let first = shard_of(&reference("team-a", "auth", "1"), SHARDS);
        assert_eq!(first, shard_of(&reference("team-a", "auth", "982"), SHARDS));
        let used: std::collections::HashSet<usize> = (0..1000)
            .map(|i| shard_of(&reference("team-a", &format!("auth-{i}"), "1"), SHARDS))
            .collect();
        // A thousand objects over 64 shards: all but a freak few are used.
        assert!(
            used.len() > SHARDS * 3 / 4,
            "only {} shards used",
            used.len()
        );
        assert!(used.iter().all(|s| *s < SHARDS));
    }
}
