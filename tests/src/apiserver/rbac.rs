//! RBAC: who may do what, answered like the real authorizer.
//!
//! A client made with `FakeApiServer::client_as(user)` (or `operator_client()`)
//! authenticates with a bearer token naming `user`; every request it sends is
//! checked against the grants given to that user with
//! [`ApiHandle::enforce_rbac`](super::ApiHandle::enforce_rbac) /
//! [`grant`](super::ApiHandle::grant), and refused with 403 `Forbidden` and the
//! real server's Status message when none allows it. A user without grants may
//! do nothing. Requests without a token (`FakeApiServer::client()`, the test's
//! own) act as a cluster admin and are never checked.
//!
//! A grant is a rule list bound cluster-wide (ClusterRole + ClusterRoleBinding)
//! or in one namespace (Role + RoleBinding): a namespaced grant allows only
//! requests whose URL names that namespace, so an all-namespaces list or watch
//! needs a cluster-wide grant, as on a real cluster. Not modelled:
//! `resourceNames`, non-resource URLs (discovery is open to everyone, as
//! `system:discovery` makes it), aggregated roles, impersonation, escalation
//! checks.

/// The user `operator_client()` authenticates as.
pub const OPERATOR_USER: &str = "system:serviceaccount:macp-system:macp-auth-operator";

/// The bearer-token prefix the fake server reads the user name from.
pub(crate) const TOKEN_PREFIX: &str = "fake-user:";

/// One RBAC `PolicyRule` (one group, one resource with `/subresource` where
/// relevant, verbs; `*` matches anything).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    pub group: String,
    pub resource: String,
    pub verbs: Vec<String>,
}

impl PolicyRule {
    pub fn new(group: &str, resource: &str, verbs: &[&str]) -> Self {
        Self {
            group: group.to_string(),
            resource: resource.to_string(),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn allows(&self, group: &str, resource: &str, verb: &str) -> bool {
        let m = |pat: &str, v: &str| pat == "*" || pat == v;
        m(&self.group, group)
            && m(&self.resource, resource)
            && self.verbs.iter().any(|p| m(p, verb))
    }
}

/// Where a rule list is bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RbacScope {
    /// ClusterRole + ClusterRoleBinding: every namespace and cluster-scoped requests.
    Cluster,
    /// Role + RoleBinding in this namespace: only requests in it.
    Namespace(String),
}

#[derive(Clone, Debug)]
pub(crate) struct Grant {
    pub user: String,
    pub scope: RbacScope,
    pub rules: Vec<PolicyRule>,
}

/// Whether `grants` let `user` send `verb` on `group`/`resource` in `namespace`
/// (`None`: a cluster-scoped request, or a list/watch across all namespaces).
pub(crate) fn allowed(
    grants: &[Grant],
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    grants.iter().filter(|g| g.user == user).any(|g| {
        let in_scope = match (&g.scope, namespace) {
            (RbacScope::Cluster, _) => true,
            (RbacScope::Namespace(ns), Some(req)) => ns == req,
            (RbacScope::Namespace(_), None) => false,
        };
        in_scope && g.rules.iter().any(|r| r.allows(group, resource, verb))
    })
}

/// The user a request authenticates as, from `Authorization: Bearer fake-user:<name>`;
/// `None` for the unchecked admin.
pub(crate) fn user_of(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?;
    token.strip_prefix(TOKEN_PREFIX).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_grants_do_not_reach_other_namespaces_or_the_cluster_scope() {
        let grants = vec![
            Grant {
                user: "op".into(),
                scope: RbacScope::Namespace("auth".into()),
                rules: vec![PolicyRule::new("", "secrets", &["get", "list"])],
            },
            Grant {
                user: "op".into(),
                scope: RbacScope::Cluster,
                rules: vec![PolicyRule::new("macp.io", "macpauths", &["*"])],
            },
        ];
        assert!(allowed(&grants, "op", "list", "", "secrets", Some("auth")));
        assert!(!allowed(
            &grants,
            "op",
            "list",
            "",
            "secrets",
            Some("other")
        ));
        assert!(!allowed(&grants, "op", "list", "", "secrets", None));
        assert!(!allowed(
            &grants,
            "op",
            "update",
            "",
            "secrets",
            Some("auth")
        ));
        assert!(!allowed(
            &grants,
            "someone",
            "get",
            "",
            "secrets",
            Some("auth")
        ));
        assert!(allowed(
            &grants,
            "op",
            "watch",
            "macp.io",
            "macpauths",
            None
        ));
        assert!(!allowed(
            &grants,
            "op",
            "patch",
            "macp.io",
            "macpauths/status",
            Some("a")
        ));
    }
}
