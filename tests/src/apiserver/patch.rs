//! Patch semantics: JSON merge patch and JSON patch (server-side apply, with
//! field ownership, is in [`super::fields`]).
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
    fn secret_string_data_becomes_data() {
        let mut s = json!({"data": {"a": "eA=="}, "stringData": {"b": "hello"}});
        normalize_secret(&mut s);
        assert_eq!(s, json!({"data": {"a": "eA==", "b": "aGVsbG8="}}));
        let mut none = json!({"data": {}});
        normalize_secret(&mut none);
        assert_eq!(none, json!({"data": {}}));
    }
}
