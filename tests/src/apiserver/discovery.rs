//! Discovery documents, generated from the registry: the legacy ones
//! (`/api`, `/apis`, `/api/v1`, `/apis/{g}/{v}`) and the aggregated
//! `apidiscovery.k8s.io/v2` lists that kubectl (client-go) asks for first on
//! `/api` and `/apis` — one request instead of one per group-version.

use serde_json::{Value, json};

use super::error::ApiError;
use super::path::Target;
use super::resources::ResourceType;

/// The content type (and `Accept` value) of aggregated discovery.
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// The verbs every served type supports (no `deletecollection`: DELETE on a
/// collection is not implemented).
const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The verbs of one type: access reviews can only be created.
fn verbs(t: &ResourceType) -> Vec<&'static str> {
    if t.group == super::review::GROUP && t.resource == super::review::RESOURCE {
        vec!["create"]
    } else {
        VERBS.to_vec()
    }
}

/// Whether the client accepts aggregated discovery v2 (client-go puts it first).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.first() == Some(&"application/json")
            && params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
            && params.contains(&"as=APIGroupDiscoveryList")
    })
}

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-macp-fake", "gitCommit": "0",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
        "compiler": "gc", "platform": "linux/amd64",
    })
}

/// Subresources a type serves, with their verbs.
fn subresources(t: &ResourceType) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out = Vec::new();
    if t.has_status {
        out.push(("status", vec!["get", "patch", "update"]));
    }
    if t.group.is_empty() && t.resource == "pods" {
        out.push(("log", vec!["get"]));
    }
    if super::scale::has_scale(t) {
        out.push(("scale", vec!["get", "patch", "update"]));
    }
    out
}

/// A legacy document for `target`, or None for a resource path.
pub fn legacy(types: &[ResourceType], target: &Target) -> Option<Result<Value, ApiError>> {
    Some(Ok(match target {
        Target::Version => version(),
        Target::CoreVersions => json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        }),
        Target::Groups => {
            let groups: Vec<Value> = group_versions(types)
                .iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, versions)| {
                    let gvs: Vec<Value> = versions
                        .iter()
                        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                        .collect();
                    json!({"name": g, "versions": gvs, "preferredVersion": gvs[0]})
                })
                .collect();
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        }
        Target::ResourceList { group, version } => {
            let mut resources = Vec::new();
            for t in types
                .iter()
                .filter(|t| t.group == *group && t.version == *version)
            {
                let mut r = json!({"name": t.resource, "singularName": t.singular,
                    "namespaced": t.namespaced, "kind": t.kind, "verbs": verbs(t)});
                if !t.short_names.is_empty() {
                    r["shortNames"] = json!(t.short_names);
                }
                if !t.categories.is_empty() {
                    r["categories"] = json!(t.categories);
                }
                resources.push(r);
                for (sub, verbs) in subresources(t) {
                    let mut r = json!({"name": format!("{}/{sub}", t.resource), "singularName": "",
                        "namespaced": t.namespaced, "kind": t.kind, "verbs": verbs});
                    // kubectl scale learns the Scale kind from here.
                    if sub == "scale" {
                        r["group"] = json!("autoscaling");
                        r["version"] = json!("v1");
                        r["kind"] = json!("Scale");
                    }
                    resources.push(r);
                }
            }
            if resources.is_empty() {
                return Some(Err(ApiError::unknown_path(&format!("{group}/{version}"))));
            }
            let gv = if group.is_empty() {
                version.clone()
            } else {
                format!("{group}/{version}")
            };
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
        }
        Target::Resource(_) => return None,
    }))
}

/// Groups in the order served (first registration first), each with its versions.
fn group_versions(types: &[ResourceType]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for t in types {
        match out.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, versions)) => {
                if !versions.contains(&t.version) {
                    versions.push(t.version.clone());
                }
            }
            None => out.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    out
}

/// The aggregated list for `/api` (`core = true`) or `/apis`.
pub fn aggregated(types: &[ResourceType], core: bool) -> Value {
    let items: Vec<Value> = group_versions(types)
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = types
                        .iter()
                        .filter(|t| t.group == group && t.version == *v)
                        .map(aggregated_resource)
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let mut meta = json!({"creationTimestamp": null});
            if !group.is_empty() {
                meta["name"] = json!(group);
            }
            json!({"metadata": meta, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {}, "items": items,
    })
}

fn aggregated_resource(t: &ResourceType) -> Value {
    let kind = json!({"group": t.group, "version": t.version, "kind": t.kind});
    let mut r = json!({
        "resource": t.resource,
        "responseKind": kind,
        "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": t.singular,
        "verbs": verbs(t),
    });
    if !t.short_names.is_empty() {
        r["shortNames"] = json!(t.short_names);
    }
    if !t.categories.is_empty() {
        r["categories"] = json!(t.categories);
    }
    let subs: Vec<Value> = subresources(t)
        .into_iter()
        .map(|(sub, verbs)| {
            let kind = match sub {
                "log" => json!({"group": "", "version": "", "kind": ""}),
                "scale" => json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
                _ => kind.clone(),
            };
            json!({"subresource": sub, "responseKind": kind, "verbs": verbs})
        })
        .collect();
    if !subs.is_empty() {
        r["subresources"] = json!(subs);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::Registry;

    #[test]
    fn accept_header_detection() {
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json, */*"));
        assert!(!wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
        ));
    }

    #[test]
    fn aggregated_lists_groups_with_short_names() {
        let r = Registry::default();
        let core = aggregated(r.all(), true);
        assert_eq!(core["items"].as_array().unwrap().len(), 1);
        let v1 = &core["items"][0]["versions"][0];
        let pods = v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap();
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["subresources"][1]["subresource"], "log");
        let apis = aggregated(r.all(), false);
        let apps = apis["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["metadata"]["name"] == "apps")
            .unwrap();
        assert_eq!(apps["versions"][0]["resources"][0]["scope"], "Namespaced");
    }
}
