//! CustomResourceDefinitions as objects: storing one serves its kind (as the
//! real server does once the CRD is established), marks it `NamesAccepted`
//! and `Established` (helm waits for those), and keeps the object so tables
//! (printer columns) and OpenAPI (`openAPIV3Schema`) can read it. Deleting it
//! stops serving the kind and deletes its objects.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

use super::resources::ResourceType;
use super::server::Shared;
use super::store::{DeleteOpts, Store};

pub const GROUP: &str = "apiextensions.k8s.io";
pub const RESOURCE: &str = "customresourcedefinitions";

fn is_crd_type(rt: &ResourceType) -> bool {
    rt.group == GROUP && rt.resource == RESOURCE
}

/// The stored CRD serving `group/resource`, if any.
pub fn find(store: &Store, group: &str, resource: &str) -> Option<Value> {
    let rt = store.registry.find_any_version(GROUP, RESOURCE)?.clone();
    store
        .get(&rt, "", &format!("{resource}.{group}"))
        .map(|v| (*v).clone())
}

/// The `spec.versions[]` entry of a stored CRD for `version`.
pub fn version_of<'a>(crd: &'a Value, version: &str) -> Option<&'a Value> {
    crd.pointer("/spec/versions")?
        .as_array()?
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(version))
}

/// After a CRD was created or changed: serve it and mark it established.
pub fn after_write(shared: &Shared, rt: &ResourceType, obj: &Value) {
    if !is_crd_type(rt) {
        return;
    }
    let Ok(crd) = serde_json::from_value::<CustomResourceDefinition>(obj.clone()) else {
        tracing::warn!("stored CRD does not parse; its kind is not served");
        return;
    };
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let stored: Vec<Value> = crd
        .spec
        .versions
        .iter()
        .filter(|v| v.storage)
        .map(|v| json!(v.name))
        .collect();
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let condition = |t: &str, reason: &str, message: &str| {
        json!({"type": t, "status": "True", "lastTransitionTime": now,
               "reason": reason, "message": message})
    };
    let status = json!({
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": names,
        "storedVersions": stored,
    });
    shared.write(|s| {
        s.registry.register_crd(&crd);
        let already = obj
            .get("status")
            .and_then(|st| st.get("acceptedNames"))
            .is_some_and(|a| *a == status["acceptedNames"]);
        if !already {
            let _ = s.modify(rt, "", &name, |o| {
                if let Some(m) = o.as_object_mut() {
                    m.insert("status".into(), status);
                }
            });
        }
    });
}

/// After a CRD was deleted: its kind is no longer served and its objects go.
pub fn after_delete(shared: &Shared, rt: &ResourceType, gone: &Value) {
    if !is_crd_type(rt) {
        return;
    }
    let (Some(group), Some(plural)) = (
        gone.pointer("/spec/group").and_then(Value::as_str),
        gone.pointer("/spec/names/plural").and_then(Value::as_str),
    ) else {
        return;
    };
    shared.write(|s| {
        if let Some(crt) = s.registry.find_any_version(group, plural).cloned() {
            for obj in s.list(&crt, None) {
                let ns = obj
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let name = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let _ = s.delete(&crt, &ns, &name, &DeleteOpts::default());
            }
        }
        s.registry.unregister(group, plural);
    });
}
