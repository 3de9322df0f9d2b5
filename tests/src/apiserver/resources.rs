//! The table of resource types the fake API server serves.
//!
//! A real API server learns its types from compiled-in schemes and from CRDs;
//! here a static table covers what the operator and the harness touch, and
//! [`Registry::register`] / [`Registry::register_crd`] add more at run time.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// One served resource type (one group/version/plural).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, `""` for the core group.
    pub group: String,
    pub version: String,
    /// Plural lower-case name used in URLs, e.g. `deployments`.
    pub resource: String,
    pub kind: String,
    pub namespaced: bool,
    /// Whether `/status` is a subresource: writes to the main resource then
    /// ignore `.status`, and writes to `/status` change only `.status`.
    pub has_status: bool,
    /// Whether `metadata.generation` is maintained. Real built-in types differ
    /// (ConfigMaps and Secrets have none); CRDs and workloads have one.
    pub has_generation: bool,
    /// Discovery's `shortNames` (`kubectl get deploy`).
    pub short_names: Vec<String>,
    /// Discovery's `categories` (`kubectl get all`).
    pub categories: Vec<String>,
    /// Discovery's `singularName`.
    pub singular: String,
}

impl ResourceType {
    /// A resource type; `has_generation` defaults to `has_status`, which is
    /// what the built-in types in the default table need.
    pub fn new(
        group: &str,
        version: &str,
        resource: &str,
        kind: &str,
        namespaced: bool,
        has_status: bool,
    ) -> Self {
        Self {
            group: group.to_string(),
            version: version.to_string(),
            resource: resource.to_string(),
            kind: kind.to_string(),
            namespaced,
            has_status,
            has_generation: has_status,
            short_names: Vec::new(),
            categories: Vec::new(),
            singular: kind.to_lowercase(),
        }
    }

    /// With discovery short names (what `kubectl get <short>` resolves).
    pub fn short(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|n| n.to_string()).collect();
        self
    }

    /// With discovery categories (`all` makes `kubectl get all` include it).
    pub fn in_categories(mut self, categories: &[&str]) -> Self {
        self.categories = categories.iter().map(|c| c.to_string()).collect();
        self
    }

    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// The resource types currently served.
#[derive(Clone, Debug)]
pub struct Registry {
    types: Vec<ResourceType>,
}

impl Default for Registry {
    fn default() -> Self {
        let t = ResourceType::new;
        let mut pods = t("", "v1", "pods", "Pod", true, true)
            .short(&["po"])
            .in_categories(&["all"]);
        // Pods have no generation in the versions this project targets.
        pods.has_generation = false;
        let mut namespaces = t("", "v1", "namespaces", "Namespace", false, true).short(&["ns"]);
        namespaces.has_generation = false;
        // The real CRD type keeps a generation and has a status subresource,
        // which the server itself writes (Established) when a CRD is stored.
        let mut crds = t(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            true,
        )
        .short(&["crd", "crds"]);
        crds.has_generation = true;
        Self {
            types: vec![
                t("", "v1", "secrets", "Secret", true, false),
                t("", "v1", "configmaps", "ConfigMap", true, false).short(&["cm"]),
                t("", "v1", "services", "Service", true, false)
                    .short(&["svc"])
                    .in_categories(&["all"]),
                pods,
                t("", "v1", "events", "Event", true, false).short(&["ev"]),
                namespaces,
                t("", "v1", "serviceaccounts", "ServiceAccount", true, false).short(&["sa"]),
                t("", "v1", "endpoints", "Endpoints", true, false).short(&["ep"]),
                t("apps", "v1", "deployments", "Deployment", true, true)
                    .short(&["deploy"])
                    .in_categories(&["all"]),
                t("apps", "v1", "replicasets", "ReplicaSet", true, true)
                    .short(&["rs"])
                    .in_categories(&["all"]),
                t(
                    "autoscaling",
                    "v2",
                    "horizontalpodautoscalers",
                    "HorizontalPodAutoscaler",
                    true,
                    true,
                )
                .short(&["hpa"])
                .in_categories(&["all"]),
                t("coordination.k8s.io", "v1", "leases", "Lease", true, false),
                t("events.k8s.io", "v1", "events", "Event", true, false).short(&["ev"]),
                t("macp.io", "v1alpha1", "macpauths", "MacpAuth", true, true).short(&["macpauth"]),
                crds,
                // What the chart installs (helm needs every kind it renders served).
                t(
                    "rbac.authorization.k8s.io",
                    "v1",
                    "roles",
                    "Role",
                    true,
                    false,
                ),
                t(
                    "rbac.authorization.k8s.io",
                    "v1",
                    "rolebindings",
                    "RoleBinding",
                    true,
                    false,
                ),
                t(
                    "rbac.authorization.k8s.io",
                    "v1",
                    "clusterroles",
                    "ClusterRole",
                    false,
                    false,
                ),
                t(
                    "rbac.authorization.k8s.io",
                    "v1",
                    "clusterrolebindings",
                    "ClusterRoleBinding",
                    false,
                    false,
                ),
                t(
                    "policy",
                    "v1",
                    "poddisruptionbudgets",
                    "PodDisruptionBudget",
                    true,
                    true,
                )
                .short(&["pdb"]),
                t(
                    "networking.k8s.io",
                    "v1",
                    "networkpolicies",
                    "NetworkPolicy",
                    true,
                    false,
                )
                .short(&["netpol"]),
                // Answered, never stored (`review.rs`, `kubectl auth can-i`).
                t(
                    "authorization.k8s.io",
                    "v1",
                    "selfsubjectaccessreviews",
                    "SelfSubjectAccessReview",
                    false,
                    false,
                ),
            ],
        }
    }
}

impl Registry {
    /// Finds the type served at `group/version/resource`.
    pub fn find(&self, group: &str, version: &str, resource: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.resource == resource)
    }

    /// Finds a type by group and plural in any served version (direct store access).
    pub fn find_any_version(&self, group: &str, resource: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.resource == resource)
    }

    /// Adds or replaces (same group/version/resource) a served type.
    pub fn register(&mut self, rt: ResourceType) {
        self.types.retain(|t| {
            !(t.group == rt.group && t.version == rt.version && t.resource == rt.resource)
        });
        self.types.push(rt);
    }

    /// Serves every version of a CRD, the way the real server does once the CRD is established.
    pub fn register_crd(&mut self, crd: &CustomResourceDefinition) {
        let spec = &crd.spec;
        for v in spec.versions.iter().filter(|v| v.served) {
            let has_status = v.subresources.as_ref().is_some_and(|s| s.status.is_some());
            let mut rt = ResourceType::new(
                &spec.group,
                &v.name,
                &spec.names.plural,
                &spec.names.kind,
                spec.scope == "Namespaced",
                has_status,
            );
            rt.has_generation = true;
            rt.short_names = spec.names.short_names.clone().unwrap_or_default();
            rt.categories = spec.names.categories.clone().unwrap_or_default();
            if let Some(singular) = &spec.names.singular {
                rt.singular = singular.clone();
            }
            self.register(rt);
        }
    }

    /// Stops serving every version of `group/resource` (a deleted CRD).
    pub fn unregister(&mut self, group: &str, resource: &str) {
        self.types
            .retain(|t| !(t.group == group && t.resource == resource));
    }

    /// All served types, for discovery.
    pub fn all(&self) -> &[ResourceType] {
        &self.types
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table_has_the_operator_types() {
        let r = Registry::default();
        let d = r.find("apps", "v1", "deployments").unwrap();
        assert!(d.has_status && d.has_generation && d.namespaced);
        assert_eq!(d.api_version(), "apps/v1");
        let s = r.find("", "v1", "secrets").unwrap();
        assert!(!s.has_status && !s.has_generation);
        assert_eq!(s.api_version(), "v1");
        assert!(
            r.find("macp.io", "v1alpha1", "macpauths")
                .unwrap()
                .has_status
        );
        assert!(r.find("macp.io", "v1", "macpauths").is_none());
        assert!(!r.find("", "v1", "namespaces").unwrap().namespaced);
    }

    #[test]
    fn register_replaces_same_gvr() {
        let mut r = Registry::default();
        let n = r.all().len();
        r.register(ResourceType::new(
            "macp.io",
            "v1alpha1",
            "macpauths",
            "MacpAuth",
            true,
            false,
        ));
        assert_eq!(r.all().len(), n);
        assert!(
            !r.find("macp.io", "v1alpha1", "macpauths")
                .unwrap()
                .has_status
        );
    }
}
