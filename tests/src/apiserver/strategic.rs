//! Strategic merge patch for the built-in types, with the merge keys and
//! strategies of their OpenAPI schemas ([`super::openapi`]): keyed lists are
//! merged item by item, `merge` lists of scalars are unions, other lists are
//! replaced; and the directives `kubectl apply` sends — `$patch`
//! (`replace`/`delete`/`merge`), `$retainKeys`, `$setElementOrder/<list>`
//! and `$deleteFromPrimitiveList/<list>`.

use serde_json::{Map, Value};

use super::error::ApiError;

const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

/// A position in the schema: the definitions and the current schema (None
/// when the schema says nothing, e.g. under a free-form map).
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    defs: &'a Map<String, Value>,
    schema: Option<&'a Value>,
}

/// The patch metadata of one field.
#[derive(Default)]
struct Meta {
    key: Option<String>,
    merge: bool,
}

impl<'a> Ctx<'a> {
    pub fn new(defs: &'a Map<String, Value>, root: &str) -> Self {
        Self {
            defs,
            schema: defs.get(root),
        }
    }

    /// Follows `allOf[0]` and `$ref` to the schema that has the properties.
    fn resolve(self, s: Option<&'a Value>) -> Option<&'a Value> {
        let mut s = s?;
        for _ in 0..8 {
            if let Some(first) = s.get("allOf").and_then(|a| a.get(0)) {
                s = first;
                continue;
            }
            match s.get("$ref").and_then(Value::as_str) {
                Some(r) => s = self.defs.get(r.rsplit('/').next()?)?,
                None => return Some(s),
            }
        }
        Some(s)
    }

    fn field(self, key: &str) -> (Ctx<'a>, Meta) {
        let prop = self
            .resolve(self.schema)
            .and_then(|s| s.get("properties"))
            .and_then(|p| p.get(key))
            .or_else(|| {
                // A map's values (labels, `data`, `resources.limits`).
                self.resolve(self.schema)
                    .and_then(|s| s.get("additionalProperties"))
                    .filter(|a| a.is_object())
            });
        let strategy = prop
            .and_then(|p| p.get("x-kubernetes-patch-strategy"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let meta = Meta {
            key: prop
                .and_then(|p| p.get("x-kubernetes-patch-merge-key"))
                .and_then(Value::as_str)
                .map(str::to_string),
            merge: strategy.split(',').any(|s| s == "merge"),
        };
        (
            Ctx {
                defs: self.defs,
                schema: prop,
            },
            meta,
        )
    }

    fn items(self) -> Ctx<'a> {
        let items = self.resolve(self.schema).and_then(|s| s.get("items"));
        Ctx {
            defs: self.defs,
            schema: items,
        }
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

/// Applies a strategic merge patch to `original`.
pub fn apply(ctx: Ctx<'_>, original: &Value, patch: &Value) -> Result<Value, ApiError> {
    match (original, patch) {
        (Value::Object(o), Value::Object(p)) => Ok(Value::Object(merge_map(ctx, o, p)?)),
        (_, Value::Object(p)) => Ok(Value::Object(merge_map(ctx, &Map::new(), p)?)),
        (_, other) => Ok(other.clone()),
    }
}

fn merge_map(
    ctx: Ctx<'_>,
    original: &Map<String, Value>,
    patch: &Map<String, Value>,
) -> Result<Map<String, Value>, ApiError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            return Ok(strip_directives(patch));
        }
        Some("delete") => return Ok(Map::new()),
        Some("merge") | None => {}
        Some(other) => return Err(bad(format!("unknown patch type: {other}"))),
    }
    let mut out = original.clone();
    for (k, pv) in patch {
        if k == "$patch" || k == "$retainKeys" || k.starts_with(SET_ORDER) {
            continue;
        }
        if let Some(list) = k.strip_prefix(DELETE_PRIMITIVE) {
            let gone = pv.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(items)) = out.get_mut(list) {
                items.retain(|i| !gone.contains(i));
            }
            continue;
        }
        if pv.is_null() {
            out.remove(k);
            continue;
        }
        let (sub, meta) = ctx.field(k);
        let merged = match (out.get(k), pv) {
            (Some(Value::Object(ov)), Value::Object(pm)) => Value::Object(merge_map(sub, ov, pm)?),
            (None, Value::Object(pm)) => Value::Object(merge_map(sub, &Map::new(), pm)?),
            (Some(Value::Array(ol)), Value::Array(pl)) if meta.merge => {
                let order = patch
                    .get(&format!("{SET_ORDER}{k}"))
                    .and_then(Value::as_array);
                Value::Array(merge_list(sub.items(), ol, pl, &meta, order)?)
            }
            (None, Value::Array(pl)) if meta.merge => {
                Value::Array(merge_list(sub.items(), &[], pl, &meta, None)?)
            }
            (_, other) => strip_value(other),
        };
        out.insert(k.clone(), merged);
    }
    // `$setElementOrder` alone reorders a list the patch does not otherwise touch.
    for (k, order) in patch {
        if let (Some(list), Value::Array(order)) = (k.strip_prefix(SET_ORDER), order)
            && !patch.contains_key(list)
            && let Some(Value::Array(items)) = out.get(list)
        {
            let (_, meta) = ctx.field(list);
            let sorted = reorder(items.clone(), order, meta.key.as_deref());
            out.insert(list.to_string(), Value::Array(sorted));
        }
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let keep: Vec<&str> = retain
            .as_array()
            .ok_or_else(|| bad("$retainKeys must be a list"))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(out)
}

/// Merges a `merge`-strategy list: by key for objects, as a set for scalars.
fn merge_list(
    items_ctx: Ctx<'_>,
    original: &[Value],
    patch: &[Value],
    meta: &Meta,
    order: Option<&Vec<Value>>,
) -> Result<Vec<Value>, ApiError> {
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(patch
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .map(strip_value)
            .collect());
    }
    let Some(key) = meta.key.as_deref() else {
        // A set of scalars (e.g. finalizers): append what is missing.
        let mut out = original.to_vec();
        for p in patch {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        return Ok(match order {
            Some(o) => reorder(out, o, None),
            None => out,
        });
    };
    let mut out = original.to_vec();
    for p in patch {
        let Some(pm) = p.as_object() else {
            return Err(bad(format!("a list merged by {key:?} holds a non-object")));
        };
        let id = pm.get(key);
        let pos = out.iter().position(|o| o.get(key) == id && id.is_some());
        let delete = pm.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => {
                let merged = match &out[i] {
                    Value::Object(om) => merge_map(items_ctx, om, pm)?,
                    _ => strip_directives(pm),
                };
                out[i] = Value::Object(merged);
            }
            (None, false) => out.push(Value::Object(merge_map(items_ctx, &Map::new(), pm)?)),
        }
    }
    Ok(match order {
        Some(o) => reorder(out, o, Some(key)),
        None => out,
    })
}

/// Puts the items named in `order` first, in that order; the others (only the
/// server knows them) follow in their previous order.
fn reorder(items: Vec<Value>, order: &[Value], key: Option<&str>) -> Vec<Value> {
    let id = |v: &Value| -> Value {
        match key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let mut rest = items;
    let mut out = Vec::with_capacity(rest.len());
    for o in order {
        let w = id(o);
        if let Some(i) = rest.iter().position(|v| id(v) == w) {
            out.push(rest.remove(i));
        }
    }
    out.extend(rest);
    out
}

fn strip_directives(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| {
            !(k.as_str() == "$patch"
                || k.as_str() == "$retainKeys"
                || k.starts_with(SET_ORDER)
                || k.starts_with(DELETE_PRIMITIVE))
        })
        .map(|(k, v)| (k.clone(), strip_value(v)))
        .collect()
}

/// A patch value stored as is, minus directives and nulls (a null in a patch
/// means "absent", never a stored null).
fn strip_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            strip_directives(m)
                .into_iter()
                .filter(|(_, v)| !v.is_null())
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_value).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::openapi;
    use serde_json::json;

    fn deployment_ctx() -> (Map<String, Value>, String) {
        let (name, defs) = openapi::builtin_schema("apps", "Deployment").unwrap();
        (defs, name)
    }

    #[test]
    fn containers_and_env_merge_by_name() {
        let (defs, root) = deployment_ctx();
        let ctx = Ctx::new(&defs, &root);
        let old = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
            {"name": "b", "image": "b:1"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "image": "a:2",
                "$setElementOrder/env": [{"name": "Y"}, {"name": "Z"}],
                "env": [{"name": "X", "$patch": "delete"}, {"name": "Z", "value": "3"}]}]}}}});
        let out = apply(ctx, &old, &patch).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["name"], "b");
        assert_eq!(cs[1]["image"], "a:2");
        assert_eq!(
            cs[1]["env"],
            json!([{"name": "Y", "value": "2"}, {"name": "Z", "value": "3"}])
        );
    }

    #[test]
    fn retain_keys_replace_and_null() {
        let (defs, root) = deployment_ctx();
        let ctx = Ctx::new(&defs, &root);
        let old = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                     "selector": {"matchLabels": {"app": "a", "tier": "t"}}}});
        let patch = json!({"metadata": {"labels": {"b": null, "c": "3"}, "finalizers": ["y"]},
            "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null},
                     "selector": {"$patch": "replace", "matchLabels": {"app": "a"}}}});
        let out = apply(ctx, &old, &patch).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"a": "1", "c": "3"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(
            out["spec"]["selector"],
            json!({"matchLabels": {"app": "a"}})
        );
    }

    #[test]
    fn unkeyed_lists_are_replaced_and_primitive_deletes_apply() {
        let (defs, root) = deployment_ctx();
        let ctx = Ctx::new(&defs, &root);
        let old = json!({"metadata": {"finalizers": ["x", "y"]},
            "spec": {"template": {"spec": {"tolerations": [{"key": "a"}, {"key": "b"}]}}}});
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]},
            "spec": {"template": {"spec": {"tolerations": [{"key": "c"}]}}}});
        let out = apply(ctx, &old, &patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["y"]));
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "c"}])
        );
    }
}
