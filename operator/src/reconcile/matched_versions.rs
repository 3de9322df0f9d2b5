//! The live versions of the applied objects that were found to match what a
//! round desired, so that the same version is not compared again.
//!
//! Step 3 reads the Deployment every round and compares it with the desired
//! one: both serialised to JSON trees, the desired one hashed, the live one
//! searched for every desired field. That comparison was a large share of
//! the operator's CPU in a storm profile (docs/performance.md, "What the figures asked for, and what changed"),
//! spent to learn what the previous round had already learnt. A uid and resourceVersion name exactly one content of
//! an object, and the applied-hash annotation ([`diff::with_applied_hash`])
//! exactly one desired content: when both are the ones last found to match,
//! they still match. Any write by anyone gives the object a new
//! resourceVersion, and any change of what is desired a new hash, and then
//! the comparison runs in full. Only matches are remembered: a version that
//! needed a write is compared again after it.

use parking_lot::Mutex;
use std::collections::HashMap;

use kube::api::ObjectMeta;
use serde_json::Value;

use crate::diff::APPLIED_HASH_ANNOTATION;

/// One object version found to match one desired content.
#[derive(Debug, PartialEq, Eq)]
struct Match {
    uid: String,
    resource_version: String,
    applied_hash: String,
    /// The uid of the MacpAuth that desires it.
    owner_uid: String,
}

/// The last match of each applied object, by kind, namespace and name.
#[derive(Default)]
pub(super) struct MatchedVersions {
    matches: Mutex<HashMap<(&'static str, String, String), Match>>,
}

impl MatchedVersions {
    /// Whether `live` is the version last found to match `desired` (with its
    /// applied hash).
    pub(super) fn known(&self, kind: &'static str, live: &ObjectMeta, desired: &Value) -> bool {
        let (Some(key), Some(found)) = (key(kind, live), version(live, desired)) else {
            return false;
        };
        self.matches.lock().get(&key) == Some(&found)
    }

    /// Records that `live` matches `desired`.
    pub(super) fn remember(&self, kind: &'static str, live: &ObjectMeta, desired: &Value) {
        if let (Some(key), Some(found)) = (key(kind, live), version(live, desired)) {
            self.matches.lock().insert(key, found);
        }
    }

    /// Drops what is known of the objects of the MacpAuth with `owner_uid`
    /// (it is gone or being deleted).
    pub(super) fn forget_owner(&self, owner_uid: &str) {
        self.matches.lock().retain(|_, m| m.owner_uid != owner_uid);
    }
}

fn key(kind: &'static str, live: &ObjectMeta) -> Option<(&'static str, String, String)> {
    Some((kind, live.namespace.clone()?, live.name.clone()?))
}

fn version(live: &ObjectMeta, desired: &Value) -> Option<Match> {
    let meta = desired.get("metadata")?;
    let applied_hash = meta
        .pointer(&format!(
            "/annotations/{}",
            APPLIED_HASH_ANNOTATION.replace('/', "~1")
        ))?
        .as_str()?;
    let owner_uid = meta
        .get("ownerReferences")?
        .as_array()?
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))?
        .get("uid")?
        .as_str()?;
    Some(Match {
        uid: live.uid.clone()?,
        resource_version: live.resource_version.clone()?,
        applied_hash: applied_hash.to_string(),
        owner_uid: owner_uid.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::with_applied_hash;
    use serde_json::json;

    fn live(uid: &str, rv: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some("auth".into()),
            namespace: Some("team-a".into()),
            uid: Some(uid.into()),
            resource_version: Some(rv.into()),
            ..ObjectMeta::default()
        }
    }

    fn desired(image: &str, owner: &str) -> Value {
        with_applied_hash(json!({
            "metadata": {
                "name": "auth",
                "ownerReferences": [{"uid": owner, "controller": true}],
            },
            "spec": {"image": image},
        }))
    }

    #[test]
    fn only_the_same_version_and_the_same_desire_are_known() {
        let matched = MatchedVersions::default();
        let want = desired("svc:1", "owner-1");
        assert!(!matched.known("Deployment", &live("u1", "10"), &want));

        matched.remember("Deployment", &live("u1", "10"), &want);

        assert!(matched.known("Deployment", &live("u1", "10"), &want));
        // Anyone's write: a new resourceVersion.
        assert!(!matched.known("Deployment", &live("u1", "11"), &want));
        // Deleted and made again under the same name.
        assert!(!matched.known("Deployment", &live("u2", "10"), &want));
        // Something else desired.
        assert!(!matched.known(
            "Deployment",
            &live("u1", "10"),
            &desired("svc:2", "owner-1")
        ));
        // Another kind of the same name.
        assert!(!matched.known("Service", &live("u1", "10"), &want));
    }

    #[test]
    fn a_desire_without_its_hash_or_owner_is_never_known() {
        let matched = MatchedVersions::default();
        let unhashed = json!({"metadata": {"ownerReferences": [{"uid": "o", "controller": true}]}});
        matched.remember("Deployment", &live("u1", "10"), &unhashed);
        assert!(!matched.known("Deployment", &live("u1", "10"), &unhashed));
        let unowned = with_applied_hash(json!({"metadata": {"name": "auth"}}));
        matched.remember("Deployment", &live("u1", "10"), &unowned);
        assert!(!matched.known("Deployment", &live("u1", "10"), &unowned));
    }

    #[test]
    fn a_gone_owner_is_forgotten() {
        let matched = MatchedVersions::default();
        let mine = desired("svc:1", "owner-1");
        matched.remember("Deployment", &live("u1", "10"), &mine);
        let theirs = desired("svc:1", "owner-2");
        let mut other = live("u9", "3");
        other.name = Some("other".into());
        matched.remember("Deployment", &other, &theirs);

        matched.forget_owner("owner-1");

        assert!(!matched.known("Deployment", &live("u1", "10"), &mine));
        assert!(matched.known("Deployment", &other, &theirs));
    }
}
