//! `fieldValidation=Strict|Warn`: unknown fields measured against the type's
//! OpenAPI schema (the built-in types' from k8s-openapi, a CRD's own
//! `openAPIV3Schema`). kubectl sends `Strict` by default once the OpenAPI
//! document says PATCH takes the parameter, and then leaves validation to
//! the server: a typo in a manifest must come back as the real
//! `strict decoding error`. Only field names are checked (not types,
//! formats or CEL rules).

use serde_json::{Map, Value};

use super::error::ApiError;

/// What the client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ignore,
    Warn,
    Strict,
}

impl Mode {
    pub fn from_query(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("") | Some("Ignore") => Ok(Self::Ignore),
            Some("Warn") => Ok(Self::Warn),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation {other:?} is invalid: must be one of Ignore, Warn or Strict"
            ))),
        }
    }
}

fn resolve<'a>(defs: &'a Map<String, Value>, mut s: &'a Value) -> &'a Value {
    for _ in 0..8 {
        if let Some(first) = s.get("allOf").and_then(|a| a.get(0)) {
            s = first;
            continue;
        }
        match s
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| defs.get(r.rsplit('/').next().unwrap_or_default()))
        {
            Some(next) => s = next,
            None => return s,
        }
    }
    s
}

fn walk(defs: &Map<String, Value>, schema: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    let schema = resolve(defs, schema);
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in m {
                // Strategic-merge directives (`$patch`, `$setElementOrder/...`).
                if k.starts_with('$') {
                    continue;
                }
                let child_path = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (props.and_then(|p| p.get(k)), extra) {
                    (Some(s), _) => walk(defs, s, child, &child_path, out),
                    (None, Some(s)) => walk(defs, s, child, &child_path, out),
                    // A schema without properties says nothing about members.
                    (None, None) if props.is_none() => {}
                    (None, None) => out.push(child_path),
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(defs, s, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The dotted paths of the members of `obj` the schema `root` does not know.
pub fn unknown_fields(defs: &Map<String, Value>, root: &str, obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(schema) = defs.get(root) {
        walk(defs, schema, obj, "", &mut out);
    }
    out
}

/// The real server's error for unknown fields under `Strict`.
pub fn strict_error(kind: &str, version: &str, unknown: &[String]) -> ApiError {
    let list: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    ApiError::bad_request(format!(
        "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
        list.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::openapi;
    use serde_json::json;

    #[test]
    fn unknown_members_by_path() {
        let (root, defs) = openapi::builtin_schema("apps", "Deployment").unwrap();
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "x", "labels": {"any": "thing"}, "nmae": "typo"},
            "spec": {"replica": 1, "template": {"spec": {"containers": [
                {"name": "c", "image": "i", "imagePullPolicy": "Always", "ports": [{"containerPort": 1, "prot": "TCP"}]}]}}}});
        let mut got = unknown_fields(&defs, &root, &d);
        got.sort();
        assert_eq!(
            got,
            [
                "metadata.nmae",
                "spec.replica",
                "spec.template.spec.containers[0].ports[0].prot"
            ]
        );
        let e = strict_error("Deployment", "v1", &got[..1]);
        assert_eq!(e.code, 400);
        assert!(
            e.message
                .ends_with("strict decoding error: unknown field \"metadata.nmae\"")
        );
        assert_eq!(Mode::from_query(Some("Strict")).unwrap(), Mode::Strict);
        assert!(Mode::from_query(Some("strict")).is_err());
    }
}
