//! Kubernetes `Status` failures, so kube's client yields `kube::Error::Api` with the right code.

use serde_json::{Value, json};

/// A failed API call, rendered as a `Status` object with the HTTP code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    /// The machine-readable `reason` (`NotFound`, `AlreadyExists`, `Conflict`, ...).
    pub reason: String,
    pub message: String,
    /// `details` of the Status: name, group and kind (plural) of the object concerned.
    /// Boxed so `Result<_, ApiError>` stays small (clippy::result_large_err).
    pub details: Option<Box<(String, String, String)>>,
}

impl ApiError {
    fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, group: &str, resource: &str, name: &str) -> Self {
        self.details = Some(Box::new((
            name.to_string(),
            group.to_string(),
            resource.to_string(),
        )));
        self
    }

    fn qualified(group: &str, resource: &str) -> String {
        if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        }
    }

    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        let q = Self::qualified(group, resource);
        Self::new(404, "NotFound", format!("{q} \"{name}\" not found"))
            .with_details(group, resource, name)
    }

    /// A URL the server does not serve (unknown resource type or path shape).
    pub fn unknown_path(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        let q = Self::qualified(group, resource);
        Self::new(
            409,
            "AlreadyExists",
            format!("{q} \"{name}\" already exists"),
        )
        .with_details(group, resource, name)
    }

    pub fn conflict(group: &str, resource: &str, name: &str) -> Self {
        let q = Self::qualified(group, resource);
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {q} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again"
            ),
        )
        .with_details(group, resource, name)
    }

    /// A server-side apply that would take fields other managers own (not forced).
    pub fn apply_conflict(
        group: &str,
        resource: &str,
        name: &str,
        conflicts: &[super::fields::Conflict],
    ) -> Self {
        let list: Vec<String> = conflicts
            .iter()
            .map(|c| format!("conflict with \"{}\": {}", c.manager, c.path))
            .collect();
        let n = conflicts.len();
        let plural = if n == 1 { "" } else { "s" };
        Self::new(
            409,
            "Conflict",
            format!(
                "Apply failed with {n} conflict{plural}: {}",
                list.join("\n")
            ),
        )
        .with_details(group, resource, name)
    }

    /// What RBAC answers to a request it does not allow, word for word.
    pub fn forbidden(
        user: &str,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Self {
        let q = Self::qualified(group, resource.split('/').next().unwrap_or(resource));
        let subject = match name {
            Some(n) => format!("{q} \"{n}\""),
            None => q,
        };
        let scope = match namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        Self::new(
            403,
            "Forbidden",
            format!(
                "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}"
            ),
        )
        .with_details(group, resource.split('/').next().unwrap_or(resource), name.unwrap_or_default())
    }

    /// A 404 with a message of its own (e.g. a pod's logs that no source has).
    pub fn not_found_message(message: impl Into<String>) -> Self {
        Self::new(404, "NotFound", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {content_type:?}"
            ),
        )
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// An injected failure (see `FakeApiServer::fail_next_writes`).
    pub fn injected(code: u16) -> Self {
        let reason = match code {
            409 => "Conflict",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            500 => "InternalError",
            _ => "Unknown",
        };
        Self::new(code, reason, format!("injected failure (HTTP {code})"))
    }

    /// The `Status` object a real API server returns.
    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            let (name, group, kind) = details.as_ref();
            let mut d = serde_json::Map::new();
            // The real server leaves empty members out.
            for (k, val) in [("name", name), ("group", group), ("kind", kind)] {
                if !val.is_empty() {
                    d.insert(k.to_string(), Value::String(val.clone()));
                }
            }
            v["details"] = Value::Object(d);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shape_matches_kubernetes() {
        let s = ApiError::not_found("apps", "deployments", "x").to_status();
        assert_eq!(s["kind"], "Status");
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["code"], 404);
        assert_eq!(s["message"], "deployments.apps \"x\" not found");
        assert_eq!(s["details"]["kind"], "deployments");
        let parsed: kube::core::Status = serde_json::from_value(s).unwrap();
        assert_eq!(parsed.code, 404);
        assert_eq!(ApiError::conflict("", "secrets", "s").code, 409);
        assert_eq!(ApiError::injected(500).reason, "InternalError");
    }
}
