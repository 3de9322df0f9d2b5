//! The one list of Kubernetes API permissions the operator uses.
//!
//! The Helm chart's RBAC is asserted equal to this list, and the reconciler
//! tests assert that every request the operator sends to the (in-memory) API
//! server is covered by it, so a new API call without a rule fails a test
//! instead of failing in a user's cluster.

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

const RULES: &[Rule] = &[
    Rule {
        group: "macp.io",
        resource: "macpauths",
        verbs: &["get", "list", "watch"],
    },
    Rule {
        group: "macp.io",
        resource: "macpauths/status",
        verbs: &["get", "patch"],
    },
    Rule {
        group: "",
        resource: "secrets",
        verbs: OWNED,
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

/// Whether `verb` on `group`/`resource` is granted by `rules`.
pub fn allows(rules: &[Rule], group: &str, resource: &str, verb: &str) -> bool {
    rules
        .iter()
        .any(|r| r.group == group && r.resource == resource && r.verbs.contains(&verb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_read_only() {
        let rules = required_rules(false);
        assert!(allows(&rules, "", "pods", "list"));
        assert!(!allows(&rules, "", "pods", "patch"));
        assert!(!allows(&rules, "", "pods", "delete"));
    }

    #[test]
    fn no_rule_deletes_anything() {
        // Deleting is how keys get lost; the operator removes keys by rewriting the Secret.
        for r in required_rules(true) {
            assert!(!r.verbs.contains(&"delete"), "{r:?}");
            assert!(!r.verbs.contains(&"deletecollection"), "{r:?}");
        }
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
