//! The `scale` subresource of Deployments and ReplicaSets (`kubectl scale`):
//! an `autoscaling/v1` Scale view of `spec.replicas` and `status.replicas`;
//! writing it changes the workload's `spec.replicas` (a merge patch by the
//! same field manager).

use serde_json::{Value, json};

use super::error::ApiError;
use super::patch::{self, PatchKind};
use super::resources::ResourceType;

/// Whether `rt` has a scale subresource.
pub fn has_scale(rt: &ResourceType) -> bool {
    rt.group == "apps" && (rt.resource == "deployments" || rt.resource == "replicasets")
}

/// The Scale of a stored workload.
pub fn view(obj: &Value) -> Value {
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    let keep = [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ];
    let meta: serde_json::Map<String, Value> = meta
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| keep.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": meta,
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// The replica count a Scale write asks for: a PUT's body, or a patch
/// applied to the current Scale (a strategic patch of a Scale is a merge).
pub fn wanted_replicas(
    current: &Value,
    patch_kind: Option<PatchKind>,
    body: &Value,
) -> Result<i64, ApiError> {
    let scale = match patch_kind {
        None => body.clone(),
        Some(PatchKind::Json) => patch::json_patch(&view(current), body)?,
        Some(_) => patch::merge_patch(&view(current), body),
    };
    scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            ApiError::invalid("Scale.autoscaling \"\" is invalid: spec.replicas: Required value")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_view_and_patch() {
        let d = json!({"metadata": {"name": "web", "namespace": "d", "labels": {"a": "b"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"replicas": 1}});
        let s = view(&d);
        assert_eq!(s["spec"]["replicas"], 2);
        assert_eq!(s["status"]["selector"], "app=web");
        assert!(s["metadata"].get("labels").is_none());
        let r = wanted_replicas(
            &d,
            Some(PatchKind::Merge),
            &json!({"spec": {"replicas": 5}}),
        );
        assert_eq!(r.unwrap(), 5);
        let bad = wanted_replicas(&d, None, &json!({"spec": {}}));
        assert_eq!(bad.unwrap_err().code, 422);
    }
}
