//! The Deployment controller and kubelet played by hand, for the tests that
//! run the reconciler without the simulated cluster: every replica of a
//! Deployment's current template is up and ready, and its rollout complete.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::apiserver::{ApiError, ApiHandle};

/// Replaces the pods of Deployment `ns/name` with ready pods of its current
/// template at 10.0.0.1, 10.0.0.2, ... (its `replicas`, two when it leaves
/// them to an autoscaler), calls `serve` with each pod's IP (for the test's
/// prober), and marks the rollout complete.
pub fn roll_out(
    api: &ApiHandle,
    ns: &str,
    name: &str,
    mut serve: impl FnMut(&str),
) -> Result<(), ApiError> {
    let Some(d) = api.get_as::<Deployment>(Some(ns), name)? else {
        return Err(ApiError::not_found("apps", "deployments", name));
    };
    let spec = d.spec.unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(2);
    let template = spec.template.metadata.unwrap_or_default();
    for p in api.list_as::<Pod>(Some(ns))? {
        if let Some(pod) = p.metadata.name {
            api.delete_as::<Pod>(Some(ns), &pod)?;
        }
    }
    for i in 0..replicas {
        let ip = format!("10.0.0.{}", i + 1);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{name}-{i}"), "namespace": ns,
                         "labels": template.labels, "annotations": template.annotations},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        api.create_as(&pod)?;
        serve(&ip);
    }
    api.modify_as::<Deployment>(Some(ns), name, |d| {
        let generation = d.metadata.generation;
        d.status = Some(DeploymentStatus {
            observed_generation: generation,
            replicas: Some(replicas),
            updated_replicas: Some(replicas),
            ready_replicas: Some(replicas),
            available_replicas: Some(replicas),
            ..DeploymentStatus::default()
        });
    })?;
    Ok(())
}
