//! Objects the sandbox creates itself: the namespaces every cluster has, the
//! CRD, the operator's Deployment (unless `--no-operator`) and the sample
//! MacpAuth.

use kube::CustomResourceExt as _;
use macp_auth_operator::crd::MacpAuth;
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::apiserver::{ApiError, ApiHandle};
use crate::cluster::images::OPERATOR_IMAGE;

/// Namespaces a fresh cluster has.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Where the sandbox runs the operator, as the README's `helm install` would.
pub const OPERATOR_NAMESPACE: &str = "macp-system";
/// The operator Deployment's name (the chart's full name for release `macp-auth-operator`).
pub const OPERATOR_DEPLOYMENT: &str = "macp-auth-operator";

/// The operator image this build stands for.
pub fn operator_image() -> String {
    format!(
        "ghcr.io/macp/{OPERATOR_IMAGE}:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Creates namespace `name` unless it exists.
pub fn ensure_namespace(api: &ApiHandle, name: &str) -> Result<(), ApiError> {
    if api.get("", "namespaces", None, name).is_some() {
        return Ok(());
    }
    api.create(
        "",
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .map(|_| ())
}

/// Installs the MacpAuth CRD (what `helm install` would create from the
/// chart's crds/): the server serves the type and stores the CRD object.
pub fn install_crd(api: &ApiHandle) {
    api.register_crd(&MacpAuth::crd());
}

/// The operator's Deployment, shaped like the chart's (same image, args, env,
/// port and readiness probe; no RBAC objects, since the sandbox's clients are
/// all cluster admins).
pub fn operator_deployment() -> Value {
    let labels = json!({
        "app.kubernetes.io/name": "macp-auth-operator",
        "app.kubernetes.io/instance": "macp-auth-operator",
    });
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": OPERATOR_DEPLOYMENT,
            "namespace": OPERATOR_NAMESPACE,
            "labels": {"app.kubernetes.io/name": "macp-auth-operator", "app.kubernetes.io/managed-by": "macp-sandbox"},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "operator",
                        "image": operator_image(),
                        "args": [
                            "run",
                            "--service-image", macp_auth_operator::config::DEFAULT_SERVICE_IMAGE,
                            "--log-format", "text",
                            "--listen-address", "0.0.0.0:8080",
                        ],
                        "env": [
                            {"name": "RUST_LOG", "value": "info"},
                            // Text logs for people reading `kubectl logs`; no
                            // terminal colours in them.
                            {"name": "NO_COLOR", "value": "1"},
                            {"name": "MACP_OPERATOR_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "MACP_OPERATOR_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        ],
                        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
                    }],
                },
            },
        },
    })
}

/// Why a sample could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not YAML: {message}")]
    Yaml { path: String, message: String },
    #[error("{path}: the sandbox applies MacpAuths itself; apply {kind} with kubectl")]
    Kind { path: String, kind: String },
    #[error("{path}: {source}")]
    Api {
        path: String,
        #[source]
        source: ApiError,
    },
}

/// Creates the MacpAuths of a YAML file (and their namespaces), as `kubectl
/// apply -f` would on a cluster where they do not exist yet. Returns
/// `namespace/name` of each.
pub fn apply_macpauths(api: &ApiHandle, path: &std::path::Path) -> Result<Vec<String>, ApplyError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ApplyError::Read {
        path: p.clone(),
        source,
    })?;
    let mut created = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let obj = Value::deserialize(doc).map_err(|e| ApplyError::Yaml {
            path: p.clone(),
            message: e.to_string(),
        })?;
        if obj.is_null() {
            continue;
        }
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        if kind != "MacpAuth" {
            return Err(ApplyError::Kind {
                path: p.clone(),
                kind: kind.to_string(),
            });
        }
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let api_err = |source| ApplyError::Api {
            path: p.clone(),
            source,
        };
        ensure_namespace(api, &ns).map_err(api_err)?;
        api.create("macp.io", "macpauths", obj).map_err(api_err)?;
        created.push(format!("{ns}/{name}"));
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::process::container_args;

    #[test]
    fn the_operator_deployment_runs_the_operator_image_like_the_chart() {
        let d = operator_deployment();
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            crate::cluster::images::image_name(c["image"].as_str().unwrap()),
            OPERATOR_IMAGE
        );
        let args = container_args(c, std::net::Ipv4Addr::new(127, 0, 0, 9));
        assert!(
            args.windows(2)
                .any(|w| w == ["--listen-address", "127.0.0.9:8080"]),
            "{args:?}"
        );
        assert_eq!(
            d["spec"]["selector"]["matchLabels"],
            d["spec"]["template"]["metadata"]["labels"]
        );
    }
}
