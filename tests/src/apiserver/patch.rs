//! Patch semantics: JSON merge patch, JSON patch and the simplified server-side apply.
//!
//! Server-side apply is simplified for a world with one field manager per
//! object. The real algorithm tracks ownership of every field in
//! `managedFields`; here the last object each manager applied is remembered and:
//! - `metadata.labels` / `metadata.annotations` are merged key by key: keys in
//!   the apply are set, keys this manager applied last time but not now are removed,
//!   keys set by anyone else are kept;
//! - `metadata.ownerReferences` / `metadata.finalizers` are replaced when present
//!   in the apply, removed when this manager applied them last time but not now;
//! - every other top-level field (`spec`, `data`, `type`, `status`, ...) present in
//!   the apply REPLACES the stored one wholesale (no merge inside `spec`), and one
//!   this manager applied last time but omits now is removed;
//! - conflicts between managers are never reported, so `force` has no effect.
//!
//! A strategic merge patch is treated as a JSON merge patch (lists are replaced,
//! never merged by key; `$patch` directives are not supported).

use base64::Engine as _;
use serde_json::{Map, Value};

use super::error::ApiError;

/// The patch flavours kube can send, by `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Apply,
    Merge,
    Strategic,
    Json,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let base = ct.split(';').next().unwrap_or_default().trim();
        match base {
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(Self::Apply),
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/json-patch+json" => Ok(Self::Json),
            _ => Err(ApiError::unsupported_media_type(ct)),
        }
    }

    /// Parses the body: JSON, or YAML for apply (kube sends JSON, which is YAML too).
    pub fn parse_body(self, body: &[u8]) -> Result<Value, ApiError> {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => Ok(v),
            Err(json_err) if self == Self::Apply => serde_yaml::from_slice::<Value>(body)
                .map_err(|e| ApiError::bad_request(format!("invalid apply body: {json_err}; {e}"))),
            Err(e) => Err(ApiError::bad_request(format!("invalid patch body: {e}"))),
        }
    }
}

/// RFC 7386 merge patch.
pub fn merge_patch(current: &Value, patch: &Value) -> Value {
    let mut out = current.clone();
    json_patch::merge(&mut out, patch);
    out
}

/// RFC 6902 JSON patch (all operations, including `test`).
pub fn json_patch(current: &Value, patch: &Value) -> Result<Value, ApiError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    let mut out = current.clone();
    json_patch::patch(&mut out, &ops.0)
        .map_err(|e| ApiError::invalid(format!("the JSON patch could not be applied: {e}")))?;
    Ok(out)
}

const MERGED_METADATA_MAPS: [&str; 2] = ["labels", "annotations"];
const REPLACED_METADATA_LISTS: [&str; 2] = ["ownerReferences", "finalizers"];

/// Simplified server-side apply (see the module doc). `last_applied` is the object this
/// field manager applied last time, if any; `current` is the stored object, if any.
pub fn server_side_apply(
    current: Option<&Value>,
    applied: &Value,
    last_applied: Option<&Value>,
) -> Value {
    let Some(current) = current else {
        return applied.clone();
    };
    let mut out = current.clone();
    let empty = Map::new();
    let applied_obj = applied.as_object().unwrap_or(&empty);
    let last_obj = last_applied.and_then(Value::as_object).unwrap_or(&empty);
    let skip = |k: &str| matches!(k, "apiVersion" | "kind" | "metadata");

    if let Some(out_obj) = out.as_object_mut() {
        for (k, v) in applied_obj.iter().filter(|(k, _)| !skip(k)) {
            out_obj.insert(k.clone(), v.clone());
        }
        for k in last_obj
            .keys()
            .filter(|k| !skip(k) && !applied_obj.contains_key(*k))
        {
            out_obj.remove(k);
        }
    }

    let applied_meta = applied.get("metadata");
    let last_meta = last_applied.and_then(|l| l.get("metadata"));
    let meta = ensure_object(&mut out, "metadata");
    for field in MERGED_METADATA_MAPS {
        let new_map = applied_meta
            .and_then(|m| m.get(field))
            .and_then(Value::as_object);
        let old_map = last_meta
            .and_then(|m| m.get(field))
            .and_then(Value::as_object);
        let target = ensure_object(meta, field);
        if let (Some(old_map), Some(t)) = (old_map, target.as_object_mut()) {
            for k in old_map
                .keys()
                .filter(|k| !new_map.is_some_and(|n| n.contains_key(*k)))
            {
                t.remove(k);
            }
        }
        if let (Some(new_map), Some(t)) = (new_map, target.as_object_mut()) {
            for (k, v) in new_map {
                t.insert(k.clone(), v.clone());
            }
        }
        if target.as_object().is_some_and(Map::is_empty)
            && let Some(m) = meta.as_object_mut()
        {
            m.remove(field);
        }
    }
    for field in REPLACED_METADATA_LISTS {
        let new_list = applied_meta.and_then(|m| m.get(field));
        let had = last_meta.and_then(|m| m.get(field)).is_some();
        if let Some(m) = meta.as_object_mut() {
            match new_list {
                Some(l) => {
                    m.insert(field.to_string(), l.clone());
                }
                None if had => {
                    m.remove(field);
                }
                None => {}
            }
        }
    }
    out
}

/// Returns `v[key]`, making it an empty object first if it is missing or not an object.
pub fn ensure_object<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    let Value::Object(map) = v else {
        unreachable!("made an object above")
    };
    let entry = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry
}

/// Folds a Secret's write-only `stringData` into base64 `data`, as the real server does.
pub fn normalize_secret(obj: &mut Value) {
    let Some(string_data) = obj.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    let Value::Object(entries) = string_data else {
        return;
    };
    let data = ensure_object(obj, "data");
    if let Some(d) = data.as_object_mut() {
        for (k, v) in entries {
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
            d.insert(k, Value::String(encoded));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_types() {
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml").unwrap(),
            PatchKind::Apply
        );
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8").unwrap(),
            PatchKind::Merge
        );
        assert_eq!(
            PatchKind::from_content_type("application/json-patch+json").unwrap(),
            PatchKind::Json
        );
        assert_eq!(
            PatchKind::from_content_type("text/plain").unwrap_err().code,
            415
        );
    }

    #[test]
    fn apply_body_may_be_yaml() {
        let v = PatchKind::Apply
            .parse_body(b"metadata:\n  name: x\n")
            .unwrap();
        assert_eq!(v["metadata"]["name"], "x");
        assert!(
            PatchKind::Merge
                .parse_body(b"metadata:\n  name: x\n")
                .is_err()
        );
    }

    #[test]
    fn merge_and_json_patch() {
        let cur = json!({"a": 1, "b": {"c": 2, "d": 3}});
        assert_eq!(
            merge_patch(&cur, &json!({"b": {"c": null, "e": 4}})),
            json!({"a": 1, "b": {"d": 3, "e": 4}})
        );
        let p = json!([{"op": "test", "path": "/a", "value": 1}, {"op": "replace", "path": "/a", "value": 5},
                       {"op": "add", "path": "/b/x", "value": [1]}, {"op": "remove", "path": "/b/c"}]);
        assert_eq!(
            json_patch(&cur, &p).unwrap(),
            json!({"a": 5, "b": {"d": 3, "x": [1]}})
        );
        let failing = json!([{"op": "test", "path": "/a", "value": 2}]);
        assert_eq!(json_patch(&cur, &failing).unwrap_err().code, 422);
        assert_eq!(json_patch(&cur, &json!({"op": 1})).unwrap_err().code, 400);
    }

    #[test]
    fn apply_replaces_top_level_and_merges_metadata_maps() {
        let current = json!({
            "metadata": {"name": "x", "uid": "u", "labels": {"mine": "1", "theirs": "t", "dropped": "d"},
                          "annotations": {"keep": "k"}},
            "spec": {"replicas": 3, "template": {"a": 1}},
            "status": {"ready": 1},
            "extra": "applied-before"
        });
        let last = json!({"metadata": {"labels": {"mine": "1", "dropped": "d"}}, "spec": {}, "extra": "x"});
        let applied = json!({"apiVersion": "v1", "kind": "K",
            "metadata": {"name": "x", "labels": {"mine": "2"}, "ownerReferences": [{"uid": "o"}]},
            "spec": {"template": {"b": 2}}});
        let out = server_side_apply(Some(&current), &applied, Some(&last));
        assert_eq!(out["spec"], json!({"template": {"b": 2}}));
        assert_eq!(out["status"], json!({"ready": 1}));
        assert!(out.get("extra").is_none());
        assert_eq!(
            out["metadata"]["labels"],
            json!({"mine": "2", "theirs": "t"})
        );
        assert_eq!(out["metadata"]["annotations"], json!({"keep": "k"}));
        assert_eq!(out["metadata"]["uid"], "u");
        assert_eq!(out["metadata"]["ownerReferences"], json!([{"uid": "o"}]));
        // Applying the same again changes nothing.
        assert_eq!(server_side_apply(Some(&out), &applied, Some(&applied)), out);
        // Absent object: the apply is the object.
        assert_eq!(server_side_apply(None, &applied, None), applied);
    }

    #[test]
    fn secret_string_data_becomes_data() {
        let mut s = json!({"data": {"a": "eA=="}, "stringData": {"b": "hello"}});
        normalize_secret(&mut s);
        assert_eq!(s, json!({"data": {"a": "eA==", "b": "aGVsbG8="}}));
        let mut none = json!({"data": {}});
        normalize_secret(&mut none);
        assert_eq!(none, json!({"data": {}}));
    }
}
