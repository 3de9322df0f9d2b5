//! The minimal patch between two statuses (none when nothing changed, so an
//! unchanged resource costs no write). Conditions are [`crate::conditions`].

use serde_json::{Map, Value};

use crate::crd::MacpAuthStatus;

/// RFC 7386 merge patch turning `old` into `new`, or `None` when they are equal.
/// Removed members become `null`; arrays and scalars are replaced whole.
fn merge_diff(old: &Value, new: &Value) -> Option<Value> {
    if old == new {
        return None;
    }
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) => {
                        if let Some(p) = merge_diff(ov, nv) {
                            patch.insert(k.clone(), p);
                        }
                    }
                    None => {
                        patch.insert(k.clone(), nv.clone());
                    }
                }
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            Some(Value::Object(patch))
        }
        // A null in a merge patch means "delete", so a new null value cannot be
        // expressed; statuses never contain one (options are skipped).
        _ => Some(new.clone()),
    }
}

/// The `/status` merge patch from `old` to `new`, or `None` when nothing
/// changed. With `resource_version` (the one `old` was read at) the API
/// server applies it only if the object is still at that version, else 409:
/// a status decided from a stale read never overwrites a newer one.
pub(crate) fn status_patch(
    old: &MacpAuthStatus,
    new: &MacpAuthStatus,
    resource_version: Option<&str>,
) -> Result<Option<Value>, serde_json::Error> {
    let (o, n) = (serde_json::to_value(old)?, serde_json::to_value(new)?);
    Ok(merge_diff(&o, &n).map(|p| {
        let mut patch = serde_json::json!({ "status": p });
        if let Some(rv) = resource_version {
            patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
        }
        patch
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_diff_is_minimal_and_deletes_with_null() {
        assert_eq!(merge_diff(&json!({"a": 1}), &json!({"a": 1})), None);
        assert_eq!(
            merge_diff(
                &json!({"a": 1, "b": {"x": 1, "y": 2}, "c": [1], "gone": true}),
                &json!({"a": 1, "b": {"x": 1, "y": 3}, "c": [1, 2], "new": "n"})
            ),
            Some(json!({"b": {"y": 3}, "c": [1, 2], "new": "n", "gone": null}))
        );
    }

    #[test]
    fn merge_diff_applies_back_to_new() {
        // Applying the patch with RFC 7386 semantics yields `new`.
        fn apply(target: &mut Value, patch: &Value) {
            match patch {
                Value::Object(p) => {
                    if !target.is_object() {
                        *target = json!({});
                    }
                    let obj = target.as_object_mut().unwrap();
                    for (k, v) in p {
                        if v.is_null() {
                            obj.remove(k);
                        } else {
                            apply(obj.entry(k.clone()).or_insert(Value::Null), v);
                        }
                    }
                }
                other => *target = other.clone(),
            }
        }
        let old = json!({"rotation": {"phase": "Draining", "waitUntil": "x"}, "activeKid": "a"});
        let new = json!({"rotation": {"phase": "Idle"}, "activeKid": "b", "publishedKids": ["a"]});
        let mut target = old.clone();
        apply(&mut target, &merge_diff(&old, &new).unwrap());
        assert_eq!(target, new);
    }

    #[test]
    fn unchanged_status_needs_no_patch() {
        let mut s = MacpAuthStatus {
            active_kid: Some("k".into()),
            ..Default::default()
        };
        assert_eq!(status_patch(&s, &s.clone(), Some("7")).unwrap(), None);
        let old = s.clone();
        s.observed_generation = Some(3);
        assert_eq!(
            status_patch(&old, &s, None).unwrap(),
            Some(json!({"status": {"observedGeneration": 3}}))
        );
        assert_eq!(
            status_patch(&old, &s, Some("7")).unwrap(),
            Some(
                json!({"metadata": {"resourceVersion": "7"}, "status": {"observedGeneration": 3}})
            )
        );
    }
}
