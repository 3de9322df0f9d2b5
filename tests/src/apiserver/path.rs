//! URL path shapes of the Kubernetes REST API.

use super::error::ApiError;

/// What a request path addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `/version`
    Version,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/api/v1` or `/apis/{group}/{version}`
    ResourceList { group: String, version: String },
    /// Anything under a group/version.
    Resource(ResourcePath),
}

/// `.../[namespaces/{ns}/]{resource}[/{name}[/{subresource}]]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Subresources of `namespaces/{name}`, which must not be read as a resource type.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

pub fn parse(path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Target::Version),
        ["api"] => return Ok(Target::CoreVersions),
        ["apis"] => return Ok(Target::Groups),
        ["api", v] => {
            return Ok(Target::ResourceList {
                group: String::new(),
                version: v.to_string(),
            });
        }
        ["apis", g, v] => {
            return Ok(Target::ResourceList {
                group: g.to_string(),
                version: v.to_string(),
            });
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::unknown_path(path)),
    };
    let namespaced = rest.len() >= 3
        && rest[0] == "namespaces"
        && !(rest.len() == 3 && NAMESPACE_SUBRESOURCES.contains(&rest[2]));
    let (namespace, tail) = if namespaced {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    if tail.is_empty() || tail.len() > 3 {
        return Err(ApiError::unknown_path(path));
    }
    Ok(Target::Resource(ResourcePath {
        group: group.to_string(),
        version: version.to_string(),
        resource: tail[0].to_string(),
        namespace,
        name: tail.get(1).map(|s| s.to_string()),
        subresource: tail.get(2).map(|s| s.to_string()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(p: &str) -> ResourcePath {
        match parse(p).unwrap() {
            Target::Resource(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shapes() {
        let r = res("/api/v1/namespaces/ns/secrets/s");
        assert_eq!((r.group.as_str(), r.resource.as_str()), ("", "secrets"));
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_deref()),
            (Some("ns"), Some("s"))
        );
        let r = res("/apis/macp.io/v1alpha1/namespaces/ns/macpauths/a/status");
        assert_eq!(r.subresource.as_deref(), Some("status"));
        assert_eq!(r.version, "v1alpha1");
        let r = res("/apis/apps/v1/deployments");
        assert_eq!((r.namespace, r.name), (None, None));
        let r = res("/api/v1/namespaces");
        assert_eq!(r.resource, "namespaces");
        let r = res("/api/v1/namespaces/ns");
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref()),
            ("namespaces", Some("ns"))
        );
        let r = res("/api/v1/namespaces/ns/status");
        assert_eq!(
            (r.resource.as_str(), r.subresource.as_deref()),
            ("namespaces", Some("status"))
        );
        let r = res("/api/v1/namespaces/ns/pods");
        assert_eq!(
            (r.resource.as_str(), r.namespace.as_deref()),
            ("pods", Some("ns"))
        );
        assert_eq!(parse("/version").unwrap(), Target::Version);
        assert!(matches!(
            parse("/apis/apps/v1").unwrap(),
            Target::ResourceList { .. }
        ));
        assert!(parse("/healthz").is_err());
        assert!(parse("/api/v1/namespaces/ns/pods/a/b/c").is_err());
    }
}
