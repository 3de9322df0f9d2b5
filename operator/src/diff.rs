//! Deciding whether a live object already is what we would apply, so an
//! unchanged resource reconciles without a single write.
//!
//! Two checks, both needed:
//! - every field we set has that value live ([`matches_live`]): catches drift
//!   from hand edits. The live object is a superset of what we apply: the API
//!   server adds defaults, writes Quantities in canonical form (`0.5` is
//!   stored as `500m`), and other field managers add members, list items of
//!   keyed lists (an env var, a sidecar container) and keys. Server-side apply
//!   keeps what others own, so applying again would not remove them: they are
//!   no drift. A keyed-list item that only *we* own and no longer want is;
//! - the live object carries the hash of the desired object in
//!   [`APPLIED_HASH_ANNOTATION`]: catches fields we *stopped* setting (a
//!   removed toleration is not visible as a subset difference).

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::keyset::hex;

/// Hash of the object the operator last applied.
pub(crate) const APPLIED_HASH_ANNOTATION: &str = "macp.io/applied-hash";

// Twin of the test API server's `fields::list_keys` on purpose: one shared table would hide a wrong key from the tests.
/// The key fields of the items of keyed list `field` (the API's merge keys),
/// `None` for lists that are replaced whole. `item` tells container ports
/// from Service ports.
fn list_keys(field: &str, item: &Value) -> Option<&'static [&'static str]> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => &["name"],
        "ports" if item.get("containerPort").is_some() => &["containerPort", "protocol"],
        "ports" => &["port", "protocol"],
        "volumeMounts" => &["mountPath"],
        // The real schema's list-map keys (x-kubernetes-list-map-keys).
        "topologySpreadConstraints" => &["topologyKey", "whenUnsatisfiable"],
        "ownerReferences" => &["uid"],
        _ => return None,
    })
}

// Twin of the test API server's `fields::item_key` on purpose: one shared encoding would hide a wrong one from the tests.
/// The `k:` key of a keyed-list item in `managedFields` (key fields in name
/// order, compact JSON; an omitted protocol is TCP).
fn item_key(keys: &[&str], item: &Value) -> String {
    let m: BTreeMap<&str, Value> = keys
        .iter()
        .map(|k| {
            let v = match item.get(*k) {
                None | Some(Value::Null) if *k == "protocol" => Value::String("TCP".into()),
                v => v.cloned().unwrap_or(Value::Null),
            };
            (*k, v)
        })
        .collect();
    serde_json::to_string(&m).unwrap_or_default()
}

/// The `fieldsV1` of `manager`'s Apply entry in `live.metadata.managedFields`.
fn applied_fields<'a>(live: &'a Value, manager: &str) -> Option<&'a Value> {
    live.pointer("/metadata/managedFields")?
        .as_array()?
        .iter()
        .find(|e| {
            e.get("manager").and_then(Value::as_str) == Some(manager)
                && e.get("operation").and_then(Value::as_str) == Some("Apply")
                && e.get("subresource").is_none()
        })?
        .get("fieldsV1")
}

/// Whether `manager`'s Apply entry in `live.metadata.managedFields` owns the
/// field at `path` (object members only).
pub(crate) fn applies_field(live: &Value, manager: &str, path: &[&str]) -> bool {
    let mut node = applied_fields(live, manager);
    for name in path {
        node = node.and_then(|n| n.get(format!("f:{name}")));
    }
    node.is_some()
}

/// Whether the live object already is what `manager` would apply as
/// `desired`: see the module docs.
pub(crate) fn matches_live(desired: &Value, live: &Value, manager: &str) -> bool {
    subset(desired, live, "", false, applied_fields(live, manager))
}

fn subset(d: &Value, l: &Value, field: &str, quantities: bool, owned: Option<&Value>) -> bool {
    let child = |name: &str| owned.and_then(|o| o.get(name));
    match (d, l) {
        (Value::Object(dm), Value::Object(lm)) => dm.iter().all(|(k, dv)| {
            let q =
                quantities || (field == "resources" && matches!(k.as_str(), "limits" | "requests"));
            lm.get(k)
                .is_some_and(|lv| subset(dv, lv, k, q, child(&format!("f:{k}"))))
        }),
        (Value::Array(da), Value::Array(la))
            if da.first().is_some_and(|f| list_keys(field, f).is_some())
                && da.iter().chain(la).all(Value::is_object) =>
        {
            let key = |it: &Value| item_key(list_keys(field, it).unwrap_or(&[]), it);
            let wanted: Vec<String> = da.iter().map(key).collect();
            let all_present = da.iter().zip(&wanted).all(|(dv, k)| {
                la.iter()
                    .find(|lv| key(lv) == *k)
                    .is_some_and(|lv| subset(dv, lv, "", false, child(&format!("k:{k}"))))
            });
            // An extra item is drift only when we own it (we applied it before).
            let extra_ours = la
                .iter()
                .map(key)
                .filter(|k| !wanted.contains(k))
                .any(|k| child(&format!("k:{k}")).is_some());
            all_present && !extra_ours
        }
        (Value::Array(da), Value::Array(la)) => {
            da.len() == la.len()
                && da
                    .iter()
                    .zip(la)
                    .all(|(dv, lv)| subset(dv, lv, "", false, None))
        }
        (dv, lv) if quantities => dv == lv || quantity_eq(dv, lv),
        _ => d == l,
    }
}

/// Whether two Quantities (`0.5` and `500m`, `2048Mi` and `2Gi`) are the same amount.
fn quantity_eq(a: &Value, b: &Value) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match (
        text(a).and_then(|s| quantity_nanos(&s)),
        text(b).and_then(|s| quantity_nanos(&s)),
    ) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// A Quantity in nano-units (rounded up, like the API server), or `None` when
/// `s` is not one.
fn quantity_nanos(s: &str) -> Option<i128> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let (negative, digits) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |p: &str| p.chars().all(|c| c.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty())
        || !all_digits(int_part)
        || !all_digits(frac_part)
    {
        return None;
    }
    let mantissa: i128 = format!("{int_part}{frac_part}").parse().ok()?;
    let (exp10, mult): (i32, i128) = match suffix {
        "n" => (-9, 1),
        "u" => (-6, 1),
        "m" => (-3, 1),
        "" => (0, 1),
        "k" => (3, 1),
        "M" => (6, 1),
        "G" => (9, 1),
        "T" => (12, 1),
        "P" => (15, 1),
        "E" => (18, 1),
        "Ki" => (0, 1 << 10),
        "Mi" => (0, 1 << 20),
        "Gi" => (0, 1 << 30),
        "Ti" => (0, 1 << 40),
        "Pi" => (0, 1 << 50),
        "Ei" => (0, 1 << 60),
        other => (other.strip_prefix(['e', 'E'])?.parse().ok()?, 1),
    };
    let scale = exp10 - i32::try_from(frac_part.len()).ok()? + 9;
    let base = mantissa.checked_mul(mult)?;
    let nanos = if scale >= 0 {
        base.checked_mul(10i128.checked_pow(u32::try_from(scale).ok()?)?)?
    } else {
        let div = 10i128.checked_pow(u32::try_from(-scale).ok()?)?;
        (base + div - 1) / div
    };
    Some(if negative { -nanos } else { nanos })
}

/// SHA-256 (hex) of the canonical JSON of `obj` (object keys are sorted by serde_json).
fn content_hash(obj: &Value) -> String {
    hex(&Sha256::digest(obj.to_string().as_bytes()))
}

/// `desired` with its content hash recorded in `metadata.annotations`.
pub(crate) fn with_applied_hash(mut desired: Value) -> Value {
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

    /// The plain subset relation, which the applied hash goes beyond: every
    /// member of `desired` is present with an equal value in `live`.
    /// Objects may have extra members live; arrays must match element by element.
    fn is_subset(desired: &Value, live: &Value) -> bool {
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

    #[test]
    fn canonical_quantities_are_no_drift() {
        let desired = json!({"spec": {"containers": [{"name": "c", "resources": {
            "requests": {"cpu": "0.5", "memory": "2048Mi"}, "limits": {"cpu": 1}}}]}});
        let live = json!({"spec": {"containers": [{"name": "c", "resources": {
            "requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"cpu": "1"}}}]}});
        assert!(matches_live(&desired, &live, "op"));
        let more = json!({"spec": {"containers": [{"name": "c", "resources": {
            "requests": {"cpu": "600m", "memory": "2Gi"}, "limits": {"cpu": "1"}}}]}});
        assert!(!matches_live(&desired, &more, "op"));
        // Only resources hold Quantities: an env value "0.5" is not "500m".
        let env = |v: &str| json!({"env": [{"name": "X", "value": v}]});
        assert!(!matches_live(&env("0.5"), &env("500m"), "op"));
        assert_eq!(quantity_nanos("1.5Gi"), quantity_nanos("1536Mi"));
        assert_eq!(quantity_nanos("1e3"), quantity_nanos("1k"));
        assert_eq!(quantity_nanos("x"), None);
    }

    #[test]
    fn keyed_list_items_of_other_managers_are_no_drift_but_our_own_are() {
        let desired = json!({"metadata": {"name": "d"}, "env": [{"name": "A", "value": "1"}]});
        let live = |managed: Value| {
            json!({"metadata": {"name": "d", "managedFields": managed},
                   "env": [{"name": "A", "value": "1"}, {"name": "X", "value": "x"}]})
        };
        let theirs = json!([
            {"manager": "op", "operation": "Apply", "fieldsV1": {"f:env": {"k:{\"name\":\"A\"}": {".": {}}}}},
            {"manager": "injector", "operation": "Apply", "fieldsV1": {"f:env": {"k:{\"name\":\"X\"}": {".": {}}}}}
        ]);
        assert!(matches_live(&desired, &live(theirs), "op"));
        // X was ours: we stopped setting it, so applying again removes it.
        let ours = json!([{"manager": "op", "operation": "Apply", "fieldsV1": {"f:env": {
            "k:{\"name\":\"A\"}": {".": {}}, "k:{\"name\":\"X\"}": {".": {}}}}}]);
        assert!(!matches_live(&desired, &live(ours), "op"));
        // Order does not matter; a changed value of ours does.
        let reordered = json!({"env": [{"name": "X", "value": "x"}, {"name": "A", "value": "1"}]});
        assert!(matches_live(
            &json!({"env": [{"name": "A", "value": "1"}]}),
            &reordered,
            "op"
        ));
        assert!(!matches_live(
            &json!({"env": [{"name": "A", "value": "2"}]}),
            &reordered,
            "op"
        ));
        // Ports are keyed by port and protocol (TCP when omitted).
        let ports = json!({"ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}]});
        assert!(matches_live(
            &json!({"ports": [{"port": 80}]}),
            &ports,
            "op"
        ));
        // Atomic lists still compare whole.
        assert!(!matches_live(
            &json!({"args": ["a"]}),
            &json!({"args": ["a", "b"]}),
            "op"
        ));
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
