//! The HorizontalPodAutoscaler `<name>` for `spec.autoscaling`.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};

use super::Owner;
use crate::crd::MacpAuthSpec;

/// The HorizontalPodAutoscaler `<name>` for `spec.autoscaling`, `None`
/// without it (the reconciler then deletes one it made before).
pub(crate) fn horizontal_pod_autoscaler(
    owner: &Owner,
    spec: &MacpAuthSpec,
) -> Option<HorizontalPodAutoscaler> {
    let a = spec.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: owner.meta(owner.name.clone()),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: owner.name.clone(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(a.target_cpu_utilization_percentage),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: None,
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::deployment;
    use super::super::testing::{mauth, owner, plain, pod_spec};
    use super::*;

    #[test]
    fn autoscaling_owns_replicas_through_an_hpa() {
        let spec = mauth(serde_json::json!({"replicas": 3,
            "autoscaling": {"minReplicas": 2, "maxReplicas": 10, "targetCPUUtilizationPercentage": 70}}))
        .spec;
        let d = deployment(&owner(), &spec, "img", "h", spec.signing_alg, plain(&spec));
        assert_eq!(
            d.spec.as_ref().unwrap().replicas,
            None,
            "replicas left to the HPA"
        );
        let json = serde_json::to_value(&d).unwrap();
        assert!(
            json["spec"].get("replicas").is_none(),
            "not even as null: {json}"
        );
        assert!(
            pod_spec(&d).topology_spread_constraints.is_some(),
            "may scale out: spread"
        );
        let hpa = horizontal_pod_autoscaler(&owner(), &spec).unwrap();
        assert_eq!(hpa.metadata.name.as_deref(), Some("prod"));
        assert_eq!(hpa.metadata.owner_references.unwrap()[0].uid, "uid-1");
        let hs = hpa.spec.unwrap();
        assert_eq!(
            (
                hs.scale_target_ref.kind.as_str(),
                hs.scale_target_ref.name.as_str()
            ),
            ("Deployment", "prod")
        );
        assert_eq!(hs.scale_target_ref.api_version.as_deref(), Some("apps/v1"));
        assert_eq!((hs.min_replicas, hs.max_replicas), (Some(2), 10));
        let m = &hs.metrics.unwrap()[0];
        assert_eq!(m.type_, "Resource");
        let r = m.resource.clone().unwrap();
        assert_eq!(r.name, "cpu");
        assert_eq!(r.target.type_, "Utilization");
        assert_eq!(r.target.average_utilization, Some(70));
        // Defaults: minReplicas 2, 80 %.
        let spec = mauth(serde_json::json!({"autoscaling": {"maxReplicas": 4}})).spec;
        let hs = horizontal_pod_autoscaler(&owner(), &spec)
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(hs.min_replicas, Some(2));
        assert_eq!(
            hs.metrics.unwrap()[0]
                .resource
                .clone()
                .unwrap()
                .target
                .average_utilization,
            Some(80)
        );
        // Without autoscaling the Deployment carries the spec's replicas.
        let spec = mauth(serde_json::json!({"replicas": 3})).spec;
        let d = deployment(&owner(), &spec, "img", "h", spec.signing_alg, plain(&spec));
        assert_eq!(d.spec.unwrap().replicas, Some(3));
    }

    #[test]
    fn one_replica_without_autoscaling_has_no_hpa() {
        let spec = mauth(serde_json::json!({"replicas": 1})).spec;
        assert!(horizontal_pod_autoscaler(&owner(), &spec).is_none());
    }
}
