//! Kubernetes' protobuf request bodies, for the one kind the everyday verbs
//! send that way: `kubectl create namespace` uses a typed client whose
//! Content-Type is `application/vnd.kubernetes.protobuf` (and client-go only
//! falls back to JSON after a 415 for CBOR, not for protobuf). Only the
//! envelope and a Namespace's name, labels, annotations and finalizers are
//! decoded; any other kind is a 415 naming what is supported.

use serde_json::{Map, Value, json};

use super::error::ApiError;

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\x00";

/// One protobuf field's payload: length-delimited bytes, or a scalar none
/// of the decoded fields needs.
enum Field<'a> {
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
            0 => {
                varint(b, &mut i)?;
                Field::Scalar
            }
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
    let (mut k, mut v) = (String::new(), String::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => k = string(x)?,
            (2, Field::Bytes(x)) => v = string(x)?,
            _ => {}
        }
    }
    Some((k, v))
}

fn object_meta(b: &[u8]) -> Option<Value> {
    let mut meta = Map::new();
    let (mut labels, mut annotations, mut finalizers) = (Map::new(), Map::new(), Vec::new());
    for (n, f) in fields(b)? {
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
    if !labels.is_empty() {
        meta.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
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
        other => Err(ApiError::unsupported_media_type(&format!(
            "{CONTENT_TYPE} (this server decodes protobuf only for Namespace, not {other:?}; send JSON)"
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
        let meta = [ld(1, b"macp"), ld(11, &label)].concat();
        let raw = ld(1, &meta);
        let type_meta = [ld(1, b"v1"), ld(2, b"Namespace")].concat();
        let body = [MAGIC.to_vec(), ld(1, &type_meta), ld(2, &raw)].concat();
        let ns = decode(&body).unwrap();
        assert_eq!(ns["metadata"]["name"], "macp");
        assert_eq!(ns["metadata"]["labels"]["team"], "a");
        let other = [MAGIC.to_vec(), ld(1, &[ld(2, b"Secret")].concat())].concat();
        assert_eq!(decode(&other).unwrap_err().code, 415);
        assert_eq!(decode(b"nope").unwrap_err().code, 400);
    }
}
