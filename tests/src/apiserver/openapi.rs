//! OpenAPI v3: the `/openapi/v3` index and one document per served
//! group-version, which `kubectl explain`, `kubectl apply` (to learn that the
//! server validates fields itself, and the strategic-merge keys of built-in
//! types) and helm read.
//!
//! Built-in schemas come from k8s-openapi's `schemars` implementations (the
//! same field docs a real server publishes), with the strategic-merge
//! metadata of the keyed lists added from [`PATCH_META`] (k8s-openapi does
//! not carry the Go struct tags). A CRD's document is its own
//! `openAPIV3Schema`, with `metadata` pointing at `ObjectMeta` as on a real
//! server.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use k8s_openapi::api::{apps, coordination, core, events, networking, policy, rbac};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::schemars::JsonSchema;
use k8s_openapi::schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use super::crds;
use super::resources::ResourceType;
use super::store::Store;

const REF_PREFIX: &str = "#/components/schemas/";
const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// Strategic-merge metadata of the keyed lists (and `retainKeys` structs) of
/// the served built-in types, from the `patchMergeKey`/`patchStrategy` tags
/// of k8s.io/api: (schema, property, merge key, strategy).
pub const PATCH_META: &[(&str, &str, Option<&str>, &str)] = &[
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        Some("name"),
        "merge,retainKeys",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "containers",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "hostAliases",
        Some("ip"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        Some("topologyKey"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        Some("name"),
        "merge,retainKeys",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        Some("containerPort"),
        "merge",
    ),
    ("io.k8s.api.core.v1.Container", "env", Some("name"), "merge"),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        Some("mountPath"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        Some("devicePath"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        Some("containerPort"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        Some("mountPath"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        Some("devicePath"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.ServiceSpec",
        "ports",
        Some("port"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    (
        "io.k8s.api.apps.v1.DeploymentSpec",
        "strategy",
        None,
        "retainKeys",
    ),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    (
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    (
        "io.k8s.api.policy.v1.PodDisruptionBudgetStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    (OBJECT_META, "finalizers", None, "merge"),
    (OBJECT_META, "ownerReferences", Some("uid"), "merge"),
];

/// Adds the built-in kind's schema (and everything it refers to) to `generator`;
/// its schema name, or None for a kind without a compiled-in schema.
fn add_builtin(generator: &mut SchemaGenerator, group: &str, kind: &str) -> Option<String> {
    fn add<T: JsonSchema>(generator: &mut SchemaGenerator) -> Option<String> {
        generator.subschema_for::<T>();
        Some(T::schema_name().into_owned())
    }
    match (group, kind) {
        ("", "Pod") => add::<core::v1::Pod>(generator),
        ("", "Secret") => add::<core::v1::Secret>(generator),
        ("", "ConfigMap") => add::<core::v1::ConfigMap>(generator),
        ("", "Service") => add::<core::v1::Service>(generator),
        ("", "Event") => add::<core::v1::Event>(generator),
        ("", "Namespace") => add::<core::v1::Namespace>(generator),
        ("", "ServiceAccount") => add::<core::v1::ServiceAccount>(generator),
        ("", "Endpoints") => add::<core::v1::Endpoints>(generator),
        ("apps", "Deployment") => add::<apps::v1::Deployment>(generator),
        ("apps", "ReplicaSet") => add::<apps::v1::ReplicaSet>(generator),
        ("coordination.k8s.io", "Lease") => add::<coordination::v1::Lease>(generator),
        ("events.k8s.io", "Event") => add::<events::v1::Event>(generator),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            add::<CustomResourceDefinition>(generator)
        }
        ("rbac.authorization.k8s.io", "Role") => add::<rbac::v1::Role>(generator),
        ("rbac.authorization.k8s.io", "RoleBinding") => add::<rbac::v1::RoleBinding>(generator),
        ("rbac.authorization.k8s.io", "ClusterRole") => add::<rbac::v1::ClusterRole>(generator),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            add::<rbac::v1::ClusterRoleBinding>(generator)
        }
        ("policy", "PodDisruptionBudget") => add::<policy::v1::PodDisruptionBudget>(generator),
        ("networking.k8s.io", "NetworkPolicy") => add::<networking::v1::NetworkPolicy>(generator),
        _ => None,
    }
}

/// `io.macp.v1alpha1.MacpAuth`: the name a real server gives a CRD's schema.
fn crd_schema_name(rt: &ResourceType) -> String {
    let reversed: Vec<&str> = rt.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), rt.version, rt.kind)
}

fn gvk(rt: &ResourceType) -> Value {
    json!({"group": rt.group, "version": rt.version, "kind": rt.kind})
}

/// The schema of a served custom resource: the CRD's `openAPIV3Schema`.
fn crd_schema(store: &Store, rt: &ResourceType) -> Option<Value> {
    let crd = crds::find(store, &rt.group, &rt.resource)?;
    let mut schema = crds::version_of(&crd, &rt.version)?
        .pointer("/schema/openAPIV3Schema")?
        .clone();
    let props = schema
        .as_object_mut()?
        .entry("properties")
        .or_insert_with(|| json!({}));
    if let Some(p) = props.as_object_mut() {
        p.insert(
            "metadata".into(),
            json!({"allOf": [{"$ref": format!("{REF_PREFIX}{OBJECT_META}")}],
                   "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}),
        );
        p.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
        p.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
    }
    Some(schema)
}

fn add_patch_meta(defs: &mut Map<String, Value>) {
    for (schema, prop, key, strategy) in PATCH_META {
        let Some(p) = defs
            .get_mut(*schema)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(*prop))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if let Some(k) = key {
            p.insert("x-kubernetes-patch-merge-key".into(), json!(k));
        }
        p.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
    }
}

/// Query parameters of a PATCH; `fieldValidation` is what kubectl looks for
/// to leave validation to the server.
fn patch_parameters() -> Value {
    let q = |name: &str, desc: &str| json!({"name": name, "in": "query", "description": desc, "schema": {"type": "string"}, "uniqueItems": true});
    json!([
        q("dryRun", "When present, indicates that modifications should not be persisted."),
        q("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes."),
        q("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields: Ignore, Warn or Strict."),
        {"name": "force", "in": "query", "description": "Force is going to force Apply requests.", "schema": {"type": "boolean"}, "uniqueItems": true},
    ])
}

/// The operations of one served type, at the paths a real server publishes.
fn type_paths(rt: &ResourceType, schema: &str, strategic: bool, paths: &mut Map<String, Value>) {
    let prefix = if rt.group.is_empty() {
        format!("/api/{}", rt.version)
    } else {
        format!("/apis/{}/{}", rt.group, rt.version)
    };
    let collection = if rt.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}", rt.resource)
    } else {
        format!("{prefix}/{}", rt.resource)
    };
    let body = json!({"content": {"application/json": {"schema": {"$ref": format!("{REF_PREFIX}{schema}")}}}});
    let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("{REF_PREFIX}{schema}")}}}}});
    let op = |action: &str, id: &str| {
        json!({"operationId": format!("{id}{}", rt.kind), "x-kubernetes-action": action,
               "x-kubernetes-group-version-kind": gvk(rt), "responses": ok})
    };
    let mut post = op("post", "create");
    post["requestBody"] = body.clone();
    paths.insert(
        collection.clone(),
        json!({"get": op("list", "list"), "post": post}),
    );
    let mut patch_types = Map::new();
    let mut types = vec![
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/apply-patch+yaml",
    ];
    if strategic {
        types.push("application/strategic-merge-patch+json");
    }
    for t in types {
        patch_types.insert(t.to_string(), json!({"schema": {"type": "object"}}));
    }
    let mut patch = op("patch", "patch");
    patch["requestBody"] = json!({"content": patch_types});
    patch["parameters"] = patch_parameters();
    let mut put = op("put", "replace");
    put["requestBody"] = body;
    paths.insert(
        format!("{collection}/{{name}}"),
        json!({"get": op("get", "read"), "put": put, "patch": patch, "delete": op("delete", "delete")}),
    );
}

/// The document of one group-version, or None when nothing is served there.
pub fn document(store: &Store, group: &str, version: &str) -> Option<Value> {
    let types: Vec<ResourceType> = store
        .registry
        .all()
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .cloned()
        .collect();
    if types.is_empty() {
        return None;
    }
    let mut generator = SchemaSettings::openapi3().into_generator();
    generator.subschema_for::<ObjectMeta>();
    let mut paths = Map::new();
    // (type, schema name, the CRD's schema for custom resources)
    let mut named: Vec<(&ResourceType, String, Option<Value>)> = Vec::new();
    for rt in &types {
        if let Some(name) = add_builtin(&mut generator, &rt.group, &rt.kind) {
            type_paths(rt, &name, true, &mut paths);
            named.push((rt, name, None));
        } else {
            // A type registered without a stored CRD still gets its paths (so
            // kubectl sees the `fieldValidation` parameter and leaves validation
            // here) and a schema that accepts any member.
            let schema = crd_schema(store, rt).unwrap_or_else(|| {
                json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                       "description": format!("{} (registered without a CRD: no schema)", rt.kind)})
            });
            let name = crd_schema_name(rt);
            type_paths(rt, &name, false, &mut paths);
            named.push((rt, name, Some(schema)));
        }
    }
    let mut defs: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    for (rt, name, schema) in named {
        if let Some(schema) = schema {
            defs.insert(name.clone(), schema);
        }
        if let Some(s) = defs.get_mut(&name).and_then(Value::as_object_mut) {
            s.insert("x-kubernetes-group-version-kind".into(), json!([gvk(rt)]));
        }
    }
    add_patch_meta(&mut defs);
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0-macp-fake"},
        "paths": paths,
        "components": {"schemas": defs},
    }))
}

/// `api/v1` / `apis/{group}/{version}`: the index key of a group-version.
fn index_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: every group-version with a content hash, so clients that
/// cache documents refetch when a CRD changes.
pub fn index(store: &Store) -> Value {
    let mut gvs: Vec<(String, String)> = store
        .registry
        .all()
        .iter()
        .map(|t| (t.group.clone(), t.version.clone()))
        .collect();
    gvs.sort();
    gvs.dedup();
    let mut paths = Map::new();
    for (g, v) in gvs {
        let Some(doc) = document(store, &g, &v) else {
            continue;
        };
        let mut h = DefaultHasher::new();
        doc.to_string().hash(&mut h);
        let key = index_key(&g, &v);
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={:016X}", h.finish())}),
        );
    }
    json!({"paths": paths})
}

/// The group-version of `/openapi/v3/{api/v1 | apis/g/v}`.
pub fn parse_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/openapi/v3/")?;
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["api", v] => Some((String::new(), v.to_string())),
        ["apis", g, v] => Some((g.to_string(), v.to_string())),
        _ => None,
    }
}

/// The schema name of a built-in kind and every definition it refers to,
/// with the patch metadata (for the strategic merge patch). Generated once
/// per kind: the built-in schemas never change.
pub fn builtin_schema(group: &str, kind: &str) -> Option<(String, Map<String, Value>)> {
    type Cache = Mutex<HashMap<(String, String), Option<Arc<(String, Map<String, Value>)>>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    let key = (group.to_string(), kind.to_string());
    let mut guard = cache.lock();
    let entry = guard.entry(key).or_insert_with(|| {
        let mut generator = SchemaSettings::openapi3().into_generator();
        let name = add_builtin(&mut generator, group, kind)?;
        let mut defs: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
        add_patch_meta(&mut defs);
        Some(Arc::new((name, defs)))
    });
    entry.as_ref().map(|e| (e.0.clone(), e.1.clone()))
}

/// The schema of any served kind: built-in, else the CRD's (with `ObjectMeta`).
pub fn schema_for(store: &Store, rt: &ResourceType) -> Option<(String, Map<String, Value>)> {
    if let Some(s) = builtin_schema(&rt.group, &rt.kind) {
        return Some(s);
    }
    let schema = crd_schema(store, rt)?;
    let mut generator = SchemaSettings::openapi3().into_generator();
    generator.subschema_for::<ObjectMeta>();
    let mut defs: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    let name = crd_schema_name(rt);
    defs.insert(name.clone(), schema);
    Some((name, defs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::Registry;

    #[test]
    fn builtin_documents_carry_gvk_and_merge_keys() {
        let store = Store::new(Registry::default());
        let doc = document(&store, "apps", "v1").unwrap();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
        );
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert!(
            patch["requestBody"]["content"]["application/strategic-merge-patch+json"].is_object()
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        let index = index(&store);
        assert!(
            index["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
        // macpauths is registered, but no CRD object is stored: paths, no schema.
        let doc = document(&store, "macp.io", "v1alpha1").unwrap();
        let patch = &doc["paths"]["/apis/macp.io/v1alpha1/namespaces/{namespace}/macpauths/{name}"]
            ["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "MacpAuth");
        assert_eq!(
            doc["components"]["schemas"]["io.macp.v1alpha1.MacpAuth"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
        assert_eq!(
            parse_path("/openapi/v3/api/v1"),
            Some((String::new(), "v1".to_string()))
        );
    }
}
