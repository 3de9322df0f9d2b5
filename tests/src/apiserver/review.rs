//! `SelfSubjectAccessReview` (`kubectl auth can-i`): the requesting user's
//! RBAC grants ([`super::rbac`]) answer whether a resource request would be
//! allowed; the unauthenticated client is an admin and may do anything.
//! Nothing is stored. Non-resource URLs (discovery, OpenAPI) are open here,
//! so those reviews always allow.

use serde_json::{Value, json};

use super::rbac::{self, Grant};

pub const GROUP: &str = "authorization.k8s.io";
pub const RESOURCE: &str = "selfsubjectaccessreviews";

/// The answer to a review: the request echoed with `status.allowed`.
pub fn answer(review: &Value, user: Option<&str>, grants: &[Grant]) -> Value {
    let attrs = review.pointer("/spec/resourceAttributes");
    let allowed = match (user, attrs) {
        (None, _) | (_, None) => true,
        (Some(user), Some(a)) => {
            let s = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or_default();
            let resource = match s("subresource") {
                "" => s("resource").to_string(),
                sub => format!("{}/{sub}", s("resource")),
            };
            let ns = Some(s("namespace")).filter(|n| !n.is_empty());
            rbac::allowed(grants, user, s("verb"), s("group"), &resource, ns)
        }
    };
    let mut out = json!({
        "kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
        "metadata": {}, "spec": review.get("spec").cloned().unwrap_or(json!({})),
        "status": {"allowed": allowed},
    });
    if !allowed {
        out["status"]["reason"] = json!("no RBAC grant of the fake API server allows it");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::{PolicyRule, RbacScope};

    #[test]
    fn reviews_follow_the_users_grants() {
        let grants = vec![Grant {
            user: "op".into(),
            scope: RbacScope::Namespace("auth".into()),
            rules: vec![PolicyRule::new("", "secrets", &["get"])],
        }];
        let review = |verb: &str, ns: &str| json!({"spec": {"resourceAttributes": {"verb": verb, "resource": "secrets", "namespace": ns}}});
        let allowed = |v: Value| v["status"]["allowed"] == true;
        assert!(allowed(answer(&review("get", "auth"), Some("op"), &grants)));
        assert!(!allowed(answer(
            &review("delete", "auth"),
            Some("op"),
            &grants
        )));
        assert!(!allowed(answer(
            &review("get", "other"),
            Some("op"),
            &grants
        )));
        assert!(allowed(answer(&review("delete", "x"), None, &grants)));
    }
}
