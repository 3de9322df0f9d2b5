//! Who owns whom: the store's index of objects by uid and of dependents by
//! owner uid, so that garbage collection on a delete costs the number of
//! dependents, not the number of objects.
//!
//! Without it every delete scanned the whole store for owner references: with
//! a thousand MacpAuths (some 6,000 objects) the pod deletions of a rotation
//! storm spent half the harness's CPU there (`scripts/bench-operator`, perf).

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use super::store::ObjKey;

// Clone: the Store derives it (a `dryRun=All` write runs on a copy).
#[derive(Clone, Default)]
pub struct OwnerIndex {
    by_uid: HashMap<String, ObjKey>,
    dependents: HashMap<String, BTreeSet<ObjKey>>,
}

fn uid(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/uid").and_then(Value::as_str)
}

/// The uids in `metadata.ownerReferences`.
pub fn owner_uids(obj: &Value) -> Vec<&str> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

impl OwnerIndex {
    /// Records that `key` now holds `new` (it held `old` before, if anything).
    pub fn stored(&mut self, key: &ObjKey, old: Option<&Value>, new: &Value) {
        if let Some(old) = old {
            self.forget(key, old);
        }
        if let Some(u) = uid(new) {
            self.by_uid.insert(u.to_string(), key.clone());
        }
        for owner in owner_uids(new) {
            self.dependents
                .entry(owner.to_string())
                .or_default()
                .insert(key.clone());
        }
    }

    /// Records that `key`, which held `old`, is gone.
    pub fn removed(&mut self, key: &ObjKey, old: &Value) {
        self.forget(key, old);
    }

    fn forget(&mut self, key: &ObjKey, old: &Value) {
        if let Some(u) = uid(old)
            && self.by_uid.get(u) == Some(key)
        {
            self.by_uid.remove(u);
        }
        for owner in owner_uids(old) {
            if let Some(set) = self.dependents.get_mut(owner) {
                set.remove(key);
                if set.is_empty() {
                    self.dependents.remove(owner);
                }
            }
        }
    }

    /// The keys of the objects that name `owner` in their owner references,
    /// in key order (as the former full scan returned them).
    pub fn dependents_of(&self, owner: &str) -> Vec<ObjKey> {
        self.dependents
            .get(owner)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn uid_exists(&self, uid: &str) -> bool {
        self.by_uid.contains_key(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str) -> ObjKey {
        ("".into(), "pods".into(), "ns".into(), name.into())
    }

    fn obj(uid: &str, owners: &[&str]) -> Value {
        let refs: Vec<Value> = owners.iter().map(|o| json!({"uid": o})).collect();
        json!({"metadata": {"uid": uid, "ownerReferences": refs}})
    }

    #[test]
    fn follows_owner_reference_changes_and_removal() {
        let mut ix = OwnerIndex::default();
        ix.stored(&key("a"), None, &obj("ua", &["o1"]));
        ix.stored(&key("b"), None, &obj("ub", &["o1", "o2"]));
        assert_eq!(ix.dependents_of("o1"), vec![key("a"), key("b")]);
        assert!(ix.uid_exists("ua"));

        // An update that drops an owner reference leaves that owner's set.
        ix.stored(
            &key("b"),
            Some(&obj("ub", &["o1", "o2"])),
            &obj("ub", &["o2"]),
        );
        assert_eq!(ix.dependents_of("o1"), vec![key("a")]);
        assert_eq!(ix.dependents_of("o2"), vec![key("b")]);

        ix.removed(&key("a"), &obj("ua", &["o1"]));
        assert!(ix.dependents_of("o1").is_empty());
        assert!(!ix.uid_exists("ua"));
        assert!(ix.uid_exists("ub"));
    }
}
