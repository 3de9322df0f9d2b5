//! Container environment resolution, as the kubelet does it at container start.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::Value;

/// Where a `valueFrom`/`envFrom` reference points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Secret,
    ConfigMap,
}

/// Decoded key/value data of a Secret (base64 `data`) or ConfigMap (`data`), from a stored object.
pub fn object_data(source: Source, obj: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(data) = obj.get("data").and_then(Value::as_object) else {
        return out;
    };
    for (k, v) in data {
        let Some(s) = v.as_str() else { continue };
        let value = match source {
            Source::ConfigMap => Some(s.to_string()),
            Source::Secret => base64::engine::general_purpose::STANDARD
                .decode(s)
                .ok()
                .and_then(|b| String::from_utf8(b).ok()),
        };
        if let Some(value) = value {
            out.insert(k.clone(), value);
        }
    }
    out
}

/// Pod facts available to `fieldRef`.
pub struct PodFacts<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub ip: &'a str,
}

/// Resolves `envFrom` then `env` (later entries win) of one container. `lookup`
/// returns a Secret's or ConfigMap's decoded data, `None` when it does not exist.
/// A missing non-optional reference is an error, which the kubelet reports as
/// `CreateContainerConfigError` and retries.
pub fn resolve(
    container: &Value,
    pod: &PodFacts<'_>,
    lookup: impl Fn(Source, &str) -> Option<BTreeMap<String, String>>,
) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for from in container
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let prefix = from
            .get("prefix")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for (source, field) in [
            (Source::ConfigMap, "configMapRef"),
            (Source::Secret, "secretRef"),
        ] {
            let Some(r) = from.get(field) else { continue };
            let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
            let optional = r.get("optional").and_then(Value::as_bool).unwrap_or(false);
            match lookup(source, name) {
                Some(data) => {
                    for (k, v) in data {
                        env.insert(format!("{prefix}{k}"), v);
                    }
                }
                None if optional => {}
                None => return Err(format!("{field} {name:?} not found")),
            }
        }
    }
    for var in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = var.get("name").and_then(Value::as_str) else {
            continue;
        };
        if let Some(v) = var.get("value").and_then(Value::as_str) {
            env.insert(name.to_string(), v.to_string());
            continue;
        }
        let Some(from) = var.get("valueFrom") else {
            env.insert(name.to_string(), String::new());
            continue;
        };
        if let Some(path) = from.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
            let v = match path {
                "metadata.name" => pod.name,
                "metadata.namespace" => pod.namespace,
                "status.podIP" => pod.ip,
                other => return Err(format!("env {name}: unsupported fieldRef {other:?}")),
            };
            env.insert(name.to_string(), v.to_string());
            continue;
        }
        let mut resolved = false;
        for (source, field) in [
            (Source::Secret, "secretKeyRef"),
            (Source::ConfigMap, "configMapKeyRef"),
        ] {
            let Some(r) = from.get(field) else { continue };
            resolved = true;
            let obj = r.get("name").and_then(Value::as_str).unwrap_or_default();
            let key = r.get("key").and_then(Value::as_str).unwrap_or_default();
            let optional = r.get("optional").and_then(Value::as_bool).unwrap_or(false);
            match lookup(source, obj).and_then(|d| d.get(key).cloned()) {
                Some(v) => {
                    env.insert(name.to_string(), v);
                }
                None if optional => {}
                None => return Err(format!("env {name}: {field} {obj:?} key {key:?} not found")),
            }
        }
        if !resolved {
            return Err(format!("env {name}: unsupported valueFrom"));
        }
    }
    Ok(env)
}

/// The container's listen port as the harness sees it: a literal `PORT` env value,
/// else the first `containerPort`, else the service default 3200.
pub fn port(container: &Value) -> u16 {
    let literal = container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|v| v.get("name").and_then(Value::as_str) == Some("PORT"))
        .and_then(|v| v.get("value"))
        .and_then(Value::as_str)
        .and_then(|p| p.parse().ok());
    let declared = container
        .pointer("/ports/0/containerPort")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok());
    literal.or(declared).unwrap_or(3200)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lookup(source: Source, name: &str) -> Option<BTreeMap<String, String>> {
        match (source, name) {
            (Source::Secret, "keys") => Some(object_data(
                source,
                &json!({"data": {"active": "c2VjcmV0"}}),
            )),
            (Source::ConfigMap, "cfg") => {
                Some(object_data(source, &json!({"data": {"A": "1", "B": "2"}})))
            }
            _ => None,
        }
    }

    const POD: PodFacts<'static> = PodFacts {
        name: "p",
        namespace: "ns",
        ip: "127.0.0.9",
    };

    #[test]
    fn resolves_every_source() {
        let c = json!({
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "X_"}],
            "env": [
                {"name": "PORT", "value": "4000"},
                {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "active"}}},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "nope", "optional": true}}},
                {"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "B"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "X_A", "value": "override"}
            ]
        });
        let env = resolve(&c, &POD, lookup).unwrap();
        assert_eq!(env["PORT"], "4000");
        assert_eq!(env["KEY"], "secret");
        assert!(!env.contains_key("OPT"));
        assert_eq!(env["CM"], "2");
        assert_eq!(env["IP"], "127.0.0.9");
        assert_eq!(env["X_A"], "override");
        assert_eq!(env["X_B"], "2");
        assert_eq!(port(&c), 4000);
    }

    #[test]
    fn missing_references_fail() {
        let c = json!({"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k"}}}]});
        assert!(resolve(&c, &POD, lookup).unwrap_err().contains("missing"));
        let c = json!({"envFrom": [{"secretRef": {"name": "missing"}}]});
        assert!(resolve(&c, &POD, lookup).is_err());
        let c = json!({"envFrom": [{"secretRef": {"name": "missing", "optional": true}}]});
        assert!(resolve(&c, &POD, lookup).unwrap().is_empty());
    }

    #[test]
    fn port_fallbacks() {
        assert_eq!(port(&json!({"ports": [{"containerPort": 8080}]})), 8080);
        assert_eq!(port(&json!({})), 3200);
    }
}
