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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::Registry;

    fn widget_crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object"}}}]},
        })
    }

    #[test]
    fn a_stored_crd_is_served_established_and_its_deletion_removes_its_objects() {
        let shared = Shared::new(Store::new(Registry::default()));
        let rt = shared
            .read(|s| s.registry.find(GROUP, "v1", RESOURCE).cloned())
            .unwrap();
        let crd = shared
            .write(|s| s.create(&rt, "", widget_crd(), true))
            .unwrap();
        after_write(&shared, &rt, &crd);
        let widgets = shared
            .read(|s| s.registry.find("example.com", "v1", "widgets").cloned())
            .expect("served");
        assert_eq!(widgets.short_names, ["wd"]);
        let stored = shared.read(|s| find(s, "example.com", "widgets")).unwrap();
        let conditions = stored.pointer("/status/conditions").unwrap();
        assert_eq!(conditions[1]["type"], "Established");
        assert_eq!(conditions[1]["status"], "True");

        shared
            .write(|s| {
                s.create(
                    &widgets,
                    "ns",
                    json!({"metadata": {"name": "w1"}, "spec": {}}),
                    true,
                )
            })
            .unwrap();
        let gone = shared
            .write(|s| s.delete(&rt, "", "widgets.example.com", &DeleteOpts::default()))
            .unwrap();
        let super::super::store::Deleted::Gone(gone) = gone else {
            panic!("a CRD without finalizers goes at once")
        };
        after_delete(&shared, &rt, &gone);
        assert!(
            shared
                .read(|s| s.registry.find("example.com", "v1", "widgets").cloned())
                .is_none()
        );
        assert!(shared.read(|s| s.get(&widgets, "ns", "w1")).is_none());
    }
}
