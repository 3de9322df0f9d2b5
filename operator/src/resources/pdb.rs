//! The PodDisruptionBudget `<name>` over the pods.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Owner, selector_labels};
use crate::crd::MacpAuthSpec;

/// The disruption budget's limit when the spec sets none.
const DEFAULT_MAX_UNAVAILABLE: i32 = 1;

/// The PodDisruptionBudget `<name>`: when more than one pod may run (and
/// `disruptionBudget.enabled` is not false), so that a node drain evicts one
/// signer at a time instead of all of them. `None` otherwise: a budget over a
/// single replica would block every drain.
pub(crate) fn pod_disruption_budget(
    owner: &Owner,
    spec: &MacpAuthSpec,
) -> Option<PodDisruptionBudget> {
    let budget = spec.disruption_budget.clone().unwrap_or_default();
    if !budget.enabled || !spec.may_run_several() {
        return None;
    }
    let max_unavailable = match (&budget.max_unavailable, &budget.min_available) {
        (None, None) => Some(IntOrString::Int(DEFAULT_MAX_UNAVAILABLE)),
        (max, _) => max.clone(),
    };
    Some(PodDisruptionBudget {
        metadata: owner.meta(owner.name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&owner.name)),
                match_expressions: None,
            }),
            max_unavailable,
            min_available: budget.min_available.clone(),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{mauth, owner};
    use super::*;

    #[test]
    fn a_disruption_budget_guards_several_replicas() {
        let spec = mauth(serde_json::json!({"replicas": 2})).spec;
        let pdb = pod_disruption_budget(&owner(), &spec).unwrap();
        assert_eq!(pdb.metadata.name.as_deref(), Some("prod"));
        let ps = pdb.spec.unwrap();
        assert_eq!(ps.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(ps.min_available, None);
        assert_eq!(
            ps.selector.unwrap().match_labels.unwrap(),
            selector_labels("prod")
        );
        // Autoscaling, even from a single replica, may run several.
        let spec = mauth(serde_json::json!({"replicas": 1,
            "autoscaling": {"minReplicas": 1, "maxReplicas": 3}}))
        .spec;
        assert!(pod_disruption_budget(&owner(), &spec).is_some());
        let spec = mauth(serde_json::json!({"disruptionBudget": {"minAvailable": "50%"}})).spec;
        let ps = pod_disruption_budget(&owner(), &spec)
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(ps.min_available, Some(IntOrString::String("50%".into())));
        assert_eq!(ps.max_unavailable, None, "one of the two only");
        let spec = mauth(serde_json::json!({"disruptionBudget": {"enabled": false}})).spec;
        assert!(pod_disruption_budget(&owner(), &spec).is_none());
    }

    #[test]
    fn one_replica_has_no_budget() {
        let spec = mauth(serde_json::json!({"replicas": 1})).spec;
        assert!(
            pod_disruption_budget(&owner(), &spec).is_none(),
            "a budget over one pod would block every drain"
        );
    }
}
