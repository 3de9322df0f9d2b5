//! Kubernetes' protobuf request bodies, for the one kind the everyday verbs
//! send that way: `kubectl create namespace` uses a typed client whose
//! Content-Type is `application/vnd.kubernetes.protobuf` (and client-go only
//! falls back to JSON after a 415 for CBOR, not for protobuf), and helm
//! stores its releases in Secrets the same way. Only the envelope, the
//! common `ObjectMeta` fields, Namespaces, Secrets, ConfigMaps and
//! DeleteOptions are decoded; any other kind is a 415 naming what is.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use super::error::ApiError;

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\x00";

/// One protobuf field's payload: a varint, length-delimited bytes, or a
/// fixed-width scalar none of the decoded fields needs.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Scalar,
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn fields(b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let tag = varint(b, &mut i)?;
        let f = match tag & 7 {
            0 => Field::Varint(varint(b, &mut i)?),
            2 => {
                let n = usize::try_from(varint(b, &mut i)?).ok()?;
                let end = i.checked_add(n).filter(|e| *e <= b.len())?;
                let s = &b[i..end];
                i = end;
                Field::Bytes(s)
            }
            1 => {
                i += 8;
                Field::Scalar
            }
            5 => {
                i += 4;
                Field::Scalar
            }
            _ => return None,
        };
        out.push((tag >> 3, f));
    }
    (i == b.len()).then_some(out)
}

fn string(b: &[u8]) -> Option<String> {
    String::from_utf8(b.to_vec()).ok()
}

/// A `map<string,string>` entry.
fn entry(b: &[u8]) -> Option<(String, String)> {
    let (k, v) = bytes_entry(b)?;
    Some((k, string(&v)?))
}

/// A `map<string,bytes>` entry.
fn bytes_entry(b: &[u8]) -> Option<(String, Vec<u8>)> {
    let (mut k, mut v) = (String::new(), Vec::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => k = string(x)?,
            (2, Field::Bytes(x)) => v = x.to_vec(),
            _ => {}
        }
    }
    Some((k, v))
}

/// `metav1.Time` (seconds since the epoch) as RFC 3339; None for the zero
/// time, which is how an unset timestamp is encoded.
fn time(b: &[u8]) -> Option<String> {
    let mut secs = 0i64;
    for (n, f) in fields(b)? {
        if let (1, Field::Varint(v)) = (n, f) {
            secs = i64::try_from(v).ok()?;
        }
    }
    if secs == 0 {
        return None;
    }
    chrono::DateTime::from_timestamp(secs, 0).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn owner_reference(b: &[u8]) -> Option<Value> {
    let mut r = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                r.insert("kind".into(), json!(string(x)?));
            }
            (3, Field::Bytes(x)) => {
                r.insert("name".into(), json!(string(x)?));
            }
            (4, Field::Bytes(x)) => {
                r.insert("uid".into(), json!(string(x)?));
            }
            (5, Field::Bytes(x)) => {
                r.insert("apiVersion".into(), json!(string(x)?));
            }
            (6, Field::Varint(v)) => {
                r.insert("controller".into(), json!(v != 0));
            }
            (7, Field::Varint(v)) => {
                r.insert("blockOwnerDeletion".into(), json!(v != 0));
            }
            _ => {}
        }
    }
    Some(Value::Object(r))
}

fn object_meta(b: &[u8]) -> Option<Value> {
    let mut meta = Map::new();
    let (mut labels, mut annotations, mut finalizers) = (Map::new(), Map::new(), Vec::new());
    let mut owners = Vec::new();
    for (n, f) in fields(b)? {
        if let (7, Field::Varint(g)) = (n, &f)
            && *g != 0
        {
            meta.insert("generation".into(), json!(g));
        }
        let Field::Bytes(x) = f else { continue };
        match n {
            1 => {
                meta.insert("name".into(), json!(string(x)?));
            }
            2 => {
                meta.insert("generateName".into(), json!(string(x)?));
            }
            3 => {
                meta.insert("namespace".into(), json!(string(x)?));
            }
            5 => {
                meta.insert("uid".into(), json!(string(x)?));
            }
            6 => {
                meta.insert("resourceVersion".into(), json!(string(x)?));
            }
            8 => {
                if let Some(t) = time(x) {
                    meta.insert("creationTimestamp".into(), json!(t));
                }
            }
            13 => owners.push(owner_reference(x)?),
            11 => {
                let (k, v) = entry(x)?;
                labels.insert(k, json!(v));
            }
            12 => {
                let (k, v) = entry(x)?;
                annotations.insert(k, json!(v));
            }
            14 => finalizers.push(json!(string(x)?)),
            _ => {}
        }
    }
    // Go's protobuf encoder writes unset optional strings as empty ones.
    meta.retain(|_, v| v.as_str() != Some(""));
    if !labels.is_empty() {
        meta.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    if !owners.is_empty() {
        meta.insert("ownerReferences".into(), Value::Array(owners));
    }
    Some(Value::Object(meta))
}

fn namespace(raw: &[u8]) -> Option<Value> {
    let mut ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {}});
    for (n, f) in fields(raw)? {
        if let (1, Field::Bytes(x)) = (n, f) {
            ns["metadata"] = object_meta(x)?;
        }
    }
    Some(ns)
}

/// A Secret (helm keeps its releases in Secrets, written by a typed client).
fn secret(raw: &[u8]) -> Option<Value> {
    let mut out = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {}});
    let mut data = Map::new();
    for (n, f) in fields(raw)? {
        match (n, f) {
            (1, Field::Bytes(x)) => out["metadata"] = object_meta(x)?,
            (2, Field::Bytes(x)) => {
                let (k, v) = bytes_entry(x)?;
                data.insert(k, json!(BASE64.encode(v)));
            }
            (3, Field::Bytes(x)) if !x.is_empty() => out["type"] = json!(string(x)?),
            (5, Field::Varint(v)) => out["immutable"] = json!(v != 0),
            _ => {}
        }
    }
    if !data.is_empty() {
        out["data"] = Value::Object(data);
    }
    Some(out)
}

/// A ConfigMap (helm's other release storage driver).
fn config_map(raw: &[u8]) -> Option<Value> {
    let mut out = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}});
    let (mut data, mut binary) = (Map::new(), Map::new());
    for (n, f) in fields(raw)? {
        match (n, f) {
            (1, Field::Bytes(x)) => out["metadata"] = object_meta(x)?,
            (2, Field::Bytes(x)) => {
                let (k, v) = entry(x)?;
                data.insert(k, json!(v));
            }
            (3, Field::Bytes(x)) => {
                let (k, v) = bytes_entry(x)?;
                binary.insert(k, json!(BASE64.encode(v)));
            }
            (4, Field::Varint(v)) => out["immutable"] = json!(v != 0),
            _ => {}
        }
    }
    if !data.is_empty() {
        out["data"] = Value::Object(data);
    }
    if !binary.is_empty() {
        out["binaryData"] = Value::Object(binary);
    }
    Some(out)
}

/// `DeleteOptions`: the propagation policy and preconditions, as JSON.
fn delete_options(raw: &[u8]) -> Option<Value> {
    let mut out = json!({"kind": "DeleteOptions", "apiVersion": "v1"});
    for (n, f) in fields(raw)? {
        match (n, f) {
            (2, Field::Bytes(x)) => {
                let mut pre = Map::new();
                for (m, g) in fields(x)? {
                    match (m, g) {
                        (1, Field::Bytes(y)) => {
                            pre.insert("uid".into(), json!(string(y)?));
                        }
                        (2, Field::Bytes(y)) => {
                            pre.insert("resourceVersion".into(), json!(string(y)?));
                        }
                        _ => {}
                    }
                }
                out["preconditions"] = Value::Object(pre);
            }
            (4, Field::Bytes(x)) => out["propagationPolicy"] = json!(string(x)?),
            _ => {}
        }
    }
    Some(out)
}

/// A `SelfSubjectAccessReview` (`kubectl auth can-i`): its resource or
/// non-resource attributes.
fn access_review(raw: &[u8]) -> Option<Value> {
    let mut spec = Map::new();
    for (n, f) in fields(raw)? {
        let (2, Field::Bytes(s)) = (n, f) else {
            continue;
        };
        for (m, g) in fields(s)? {
            let Field::Bytes(a) = g else { continue };
            let names: &[&str] = match m {
                1 => &[
                    "namespace",
                    "verb",
                    "group",
                    "version",
                    "resource",
                    "subresource",
                    "name",
                ],
                2 => &["path", "verb"],
                _ => continue,
            };
            let mut attrs = Map::new();
            for (k, h) in fields(a)? {
                if let (Some(name), Field::Bytes(x)) = (
                    usize::try_from(k)
                        .ok()
                        .and_then(|k| names.get(k.checked_sub(1)?)),
                    h,
                ) && !x.is_empty()
                {
                    attrs.insert((*name).to_string(), json!(string(x)?));
                }
            }
            let key = if m == 1 {
                "resourceAttributes"
            } else {
                "nonResourceAttributes"
            };
            spec.insert(key.into(), Value::Object(attrs));
        }
    }
    Some(
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "metadata": {}, "spec": spec}),
    )
}

/// Decodes a protobuf request body into the JSON object it encodes.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let bad = || ApiError::bad_request("the protobuf request body could not be decoded");
    let unknown = body.strip_prefix(MAGIC).ok_or_else(bad)?;
    let (mut kind, mut raw) = (String::new(), None);
    for (n, f) in fields(unknown).ok_or_else(bad)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (m, g) in fields(tm).ok_or_else(bad)? {
                    if let (2, Field::Bytes(k)) = (m, g) {
                        kind = string(k).ok_or_else(bad)?;
                    }
                }
            }
            (2, Field::Bytes(r)) => raw = Some(r),
            _ => {}
        }
    }
    match kind.as_str() {
        "Namespace" => namespace(raw.ok_or_else(bad)?).ok_or_else(bad),
        "Secret" => secret(raw.ok_or_else(bad)?).ok_or_else(bad),
        "ConfigMap" => config_map(raw.ok_or_else(bad)?).ok_or_else(bad),
        "DeleteOptions" => delete_options(raw.ok_or_else(bad)?).ok_or_else(bad),
        "SelfSubjectAccessReview" => access_review(raw.ok_or_else(bad)?).ok_or_else(bad),
        other => Err(ApiError::unsupported_media_type(&format!(
            "{CONTENT_TYPE} (this server decodes protobuf only for Namespace, Secret, ConfigMap and DeleteOptions, not {other:?}; send JSON)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(field: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(field << 3) | 2, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn namespace_from_kubectl_create() {
        let label = [ld(1, b"team"), ld(2, b"a")].concat();
        let meta = [ld(1, b"macp"), ld(2, b""), ld(11, &label), ld(8, b"")].concat();
        let raw = ld(1, &meta);
        let type_meta = [ld(1, b"v1"), ld(2, b"Namespace")].concat();
        let body = [MAGIC.to_vec(), ld(1, &type_meta), ld(2, &raw)].concat();
        let ns = decode(&body).unwrap();
        assert_eq!(ns["metadata"]["name"], "macp");
        assert_eq!(ns["metadata"]["labels"]["team"], "a");
        assert!(ns["metadata"].get("generateName").is_none(), "{ns}");
        assert!(ns["metadata"].get("creationTimestamp").is_none(), "{ns}");
        let data = [ld(1, b"k"), ld(2, b"\x00\x01")].concat();
        let raw = [
            ld(1, &ld(1, b"s")),
            ld(2, &data),
            ld(3, b"helm.sh/release.v1"),
        ]
        .concat();
        let type_meta = [ld(1, b"v1"), ld(2, b"Secret")].concat();
        let body = [MAGIC.to_vec(), ld(1, &type_meta), ld(2, &raw)].concat();
        let s = decode(&body).unwrap();
        assert_eq!(s["data"]["k"], "AAE=");
        assert_eq!(s["type"], "helm.sh/release.v1");
        let other = [MAGIC.to_vec(), ld(1, &[ld(2, b"Pod")].concat())].concat();
        assert_eq!(decode(&other).unwrap_err().code, 415);
        assert_eq!(decode(b"nope").unwrap_err().code, 400);
    }
}
