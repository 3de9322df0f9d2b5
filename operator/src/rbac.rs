//! The one list of Kubernetes API permissions the operator uses.
//!
//! The Helm chart's RBAC is asserted equal to this list, and the reconciler
//! and leader-election tests run against an API server that enforces it
//! ([`grants`], in both [`Mode`]s), so a new API call without a rule fails a
//! test with 403 instead of failing in a user's cluster.

/// One RBAC rule: an API group, a resource (with `/subresource` where relevant) and verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

/// Server-side apply of an object that does not exist yet is authorised as `create`,
/// so every applied kind carries both `create` and `patch`.
const OWNED: &[&str] = &["get", "list", "watch", "create", "patch"];

/// Secrets are written exactly (create, then update with a resourceVersion
/// precondition), never applied: see `reconcile`.
const SECRETS: &[&str] = &["get", "list", "watch", "create", "patch", "update"];

/// The autoscaler and the disruption budget are applied, and deleted when the
/// spec stops asking for them. Not watched (a hand edit is reverted at the
/// next resync, not at once), so no list or watch.
const OPTIONAL_OWNED: &[&str] = &["get", "create", "patch", "delete"];

const RULES: &[Rule] = &[
    // `patch`: only to remove a handled `macp.io/emergency-rotate`
    // annotation (`reconcile::incident`); the spec is never written.
    Rule {
        group: "macp.io",
        resource: "macpauths",
        verbs: &["get", "list", "watch", "patch"],
    },
    Rule {
        group: "macp.io",
        resource: "macpauths/status",
        verbs: &["get", "patch"],
    },
    Rule {
        group: "",
        resource: "secrets",
        verbs: SECRETS,
    },
    Rule {
        group: "",
        resource: "services",
        verbs: OWNED,
    },
    Rule {
        group: "",
        resource: "configmaps",
        verbs: OWNED,
    },
    Rule {
        group: "apps",
        resource: "deployments",
        verbs: OWNED,
    },
    Rule {
        group: "autoscaling",
        resource: "horizontalpodautoscalers",
        verbs: OPTIONAL_OWNED,
    },
    Rule {
        group: "policy",
        resource: "poddisruptionbudgets",
        verbs: OPTIONAL_OWNED,
    },
    Rule {
        group: "",
        resource: "pods",
        verbs: &["get", "list", "watch"],
    },
    Rule {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
    },
];

// Exactly what `leader::Elector` sends: get, create, and replace (update) with a
// resourceVersion precondition; no patch.
const LEADER_ELECTION_RULES: &[Rule] = &[Rule {
    group: "coordination.k8s.io",
    resource: "leases",
    verbs: &["get", "create", "update"],
}];

/// The rules the operator needs; leases only when leader election is on.
pub fn required_rules(leader_election: bool) -> Vec<Rule> {
    let mut rules = RULES.to_vec();
    if leader_election {
        rules.extend_from_slice(LEADER_ELECTION_RULES);
    }
    rules
}

/// How the rules are bound, as the Helm chart renders them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A ClusterRole + ClusterRoleBinding: every namespace (`watchNamespaces` empty).
    ClusterWide,
    /// A Role + RoleBinding in each watched namespace, nothing cluster-wide.
    Namespaced(Vec<String>),
}

/// One binding of rules: cluster-wide (`namespace: None`) or in one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub namespace: Option<String>,
    pub rules: Vec<Rule>,
}

/// The bindings the chart creates for `mode`; with leader election
/// (`lease_namespace`), the lease rules in that namespace only.
pub fn grants(mode: &Mode, lease_namespace: Option<&str>) -> Vec<Grant> {
    let mut out = match mode {
        Mode::ClusterWide => vec![Grant {
            namespace: None,
            rules: required_rules(false),
        }],
        Mode::Namespaced(namespaces) => namespaces
            .iter()
            .map(|ns| Grant {
                namespace: Some(ns.clone()),
                rules: required_rules(false),
            })
            .collect(),
    };
    if let Some(ns) = lease_namespace {
        out.push(Grant {
            namespace: Some(ns.to_string()),
            rules: LEADER_ELECTION_RULES.to_vec(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `verb` on `group`/`resource` is granted by `rules`.
    fn allows(rules: &[Rule], group: &str, resource: &str, verb: &str) -> bool {
        rules
            .iter()
            .any(|r| r.group == group && r.resource == resource && r.verbs.contains(&verb))
    }

    #[test]
    fn pods_are_read_only() {
        let rules = required_rules(false);
        assert!(allows(&rules, "", "pods", "list"));
        assert!(!allows(&rules, "", "pods", "patch"));
        assert!(!allows(&rules, "", "pods", "delete"));
    }

    #[test]
    fn only_the_optional_autoscaler_and_budget_may_be_deleted() {
        // Deleting is how keys get lost; the operator removes keys by
        // rewriting the Secret. It deletes only the HorizontalPodAutoscaler
        // and PodDisruptionBudget that the spec stopped asking for.
        for r in required_rules(true) {
            let optional = matches!(
                (r.group, r.resource),
                ("autoscaling", "horizontalpodautoscalers") | ("policy", "poddisruptionbudgets")
            );
            assert_eq!(r.verbs.contains(&"delete"), optional, "{r:?}");
            assert!(!r.verbs.contains(&"deletecollection"), "{r:?}");
        }
    }

    #[test]
    fn namespaced_mode_binds_the_same_rules_per_namespace_and_leases_apart() {
        let g = grants(&Mode::Namespaced(vec!["a".into(), "b".into()]), Some("ops"));
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].namespace.as_deref(), Some("a"));
        assert_eq!(g[1].rules, required_rules(false));
        assert_eq!(g[2].namespace.as_deref(), Some("ops"));
        assert!(allows(
            &g[2].rules,
            "coordination.k8s.io",
            "leases",
            "update"
        ));
        assert!(!allows(&g[2].rules, "", "secrets", "get"));
        let c = grants(&Mode::ClusterWide, None);
        assert_eq!(
            c,
            vec![Grant {
                namespace: None,
                rules: required_rules(false)
            }]
        );
        assert!(allows(&c[0].rules, "", "secrets", "update"));
    }

    #[test]
    fn leases_only_with_leader_election() {
        assert!(!allows(
            &required_rules(false),
            "coordination.k8s.io",
            "leases",
            "get"
        ));
        assert!(allows(
            &required_rules(true),
            "coordination.k8s.io",
            "leases",
            "update"
        ));
    }
}
