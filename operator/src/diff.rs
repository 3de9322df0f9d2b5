//! Deciding whether a live object already is what we would apply, so an
//! unchanged resource reconciles without a single write.
//!
//! Two checks, both needed:
//! - every field we set has that value live (the API server adds defaults,
//!   so the live object is a superset): catches drift from hand edits;
//! - the live object carries the hash of the desired object in
//!   [`APPLIED_HASH_ANNOTATION`]: catches fields we *stopped* setting (a
//!   removed toleration is not visible as a subset difference).

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::keyset::hex;

/// Hash of the object the operator last applied.
pub const APPLIED_HASH_ANNOTATION: &str = "macp.io/applied-hash";

/// Whether every member of `desired` is present with an equal value in `live`.
/// Objects may have extra members live; arrays must match element by element.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d
            .iter()
            .all(|(k, dv)| l.get(k).is_some_and(|lv| is_subset(dv, lv))),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv))
        }
        _ => desired == live,
    }
}

/// SHA-256 (hex) of the canonical JSON of `obj` (object keys are sorted by serde_json).
pub fn content_hash(obj: &Value) -> String {
    hex(&Sha256::digest(obj.to_string().as_bytes()))
}

/// `desired` with its content hash recorded in `metadata.annotations`.
pub fn with_applied_hash(mut desired: Value) -> Value {
    let hash = content_hash(&desired);
    if let Some(meta) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(APPLIED_HASH_ANNOTATION.to_string(), Value::String(hash));
        }
    }
    desired
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn live_may_have_defaults_but_not_different_values() {
        let desired = json!({"spec": {"replicas": 2, "ports": [{"port": 80}]}});
        let live = json!({"spec": {"replicas": 2, "ports": [{"port": 80, "protocol": "TCP"}], "x": 1}, "status": {}});
        assert!(is_subset(&desired, &live));
        assert!(!is_subset(&json!({"spec": {"replicas": 3}}), &live));
        assert!(!is_subset(&json!({"spec": {"ports": []}}), &live));
        assert!(!is_subset(&json!({"spec": {"missing": null}}), &live));
    }

    #[test]
    fn hash_annotation_tracks_content() {
        let a = with_applied_hash(json!({"metadata": {"name": "n"}, "spec": {"t": [1]}}));
        let b = with_applied_hash(json!({"metadata": {"name": "n"}, "spec": {}}));
        let ha = &a["metadata"]["annotations"][APPLIED_HASH_ANNOTATION];
        let hb = &b["metadata"]["annotations"][APPLIED_HASH_ANNOTATION];
        assert_ne!(ha, hb);
        // A live object applied from the old desired state is not a match for the new one,
        // even though the new desired state is a subset of it.
        assert!(is_subset(&json!({"spec": {}}), &a));
        assert!(!is_subset(&b, &a));
        assert!(is_subset(&a, &a));
        // Existing annotations are kept.
        let c = with_applied_hash(json!({"metadata": {"annotations": {"x": "y"}}}));
        assert_eq!(c["metadata"]["annotations"]["x"], "y");
    }
}
