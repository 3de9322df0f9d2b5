//! The committed CRD matches the types, and the sample resources validate
//! against its schema (so `kubectl apply` of a sample is accepted and a bad
//! resource is refused by the API server's schema validation).

use std::path::PathBuf;

use kube::CustomResourceExt;
use macp_auth_operator::crd::MacpAuth;
use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn generated_yaml() -> String {
    serde_yaml::to_string(&MacpAuth::crd()).unwrap()
}

#[test]
fn committed_crd_matches_the_types() {
    let path = repo_root().join("crds/macpauths.macp.io.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated_yaml(),
        "{} is out of date with operator/src/crd.rs; regenerate it with\n  \
         cargo run -p macp-auth-operator -- crd > crds/macpauths.macp.io.yaml",
        path.display()
    );
}

fn schema() -> Value {
    let crd = serde_json::to_value(MacpAuth::crd()).unwrap();
    let versions = crd["spec"]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0]["name"], "v1alpha1");
    versions[0]["schema"]["openAPIV3Schema"].clone()
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).unwrap()
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance).map(|e| e.to_string()).collect()
}

fn sample(name: &str) -> Value {
    let path = repo_root().join("config/samples").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

#[test]
fn samples_validate_and_deserialize() {
    let v = validator();
    for name in ["minimal.yaml", "production.yaml", "es256.yaml"] {
        let s = sample(name);
        assert_eq!(errors(&v, &s), Vec::<String>::new(), "{name}");
        // The operator reads every sample too.
        let m: MacpAuth = serde_json::from_value(s).unwrap();
        assert!(
            macp_auth_operator::validate::validate(&m.spec).is_empty(),
            "{name}"
        );
    }
    let prod: MacpAuth = serde_json::from_value(sample("production.yaml")).unwrap();
    assert_eq!(prod.spec.replicas, 3);
    assert_eq!(prod.spec.rotation.interval.as_deref(), Some("720h"));
    assert!(prod.spec.resources.is_some());
    assert!(prod.spec.caller_auth.is_some() && prod.spec.rate_limit.is_some());
    assert!(prod.spec.audit.is_some_and(|a| a.enabled));
    assert_eq!(prod.spec.emergency.map(|e| e.max_ttl_seconds), Some(300));
    // production.yaml shows every production setting.
    assert_eq!(prod.spec.mint_port, Some(3201));
    assert!(prod.spec.autoscaling.is_some() && prod.spec.disruption_budget.is_some());
    assert!(prod.spec.affinity.is_some());
    assert_eq!(
        prod.spec.topology_spread_constraints.map(|t| t.len()),
        Some(2)
    );
    assert!(prod.spec.priority_class_name.is_some());
    assert!(!prod.spec.image_pull_secrets.is_empty());
    assert!(prod.spec.service_account_name.is_some());
    assert!(!prod.spec.pod_labels.is_empty() && !prod.spec.pod_annotations.is_empty());
}

/// Rules the schema carries as CEL (`x-kubernetes-validations`), which the
/// JSON Schema validator above cannot evaluate: asserted present, with the
/// reconciler's own check (validate.rs) covering servers without CEL.
#[test]
fn cross_field_rules_are_cel_in_the_schema() {
    let s = schema();
    let spec = &s["properties"]["spec"];
    let rules = |v: &Value| -> Vec<String> {
        v["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["rule"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        rules(spec),
        [
            "!has(self.mintPort) || self.mintPort != self.port",
            "!has(self.rotation) || !has(self.rotation.drainSeconds) || !has(self.maxTtlSeconds) || self.rotation.drainSeconds >= self.maxTtlSeconds + 60",
            "!has(self.defaultTtlSeconds) || !has(self.maxTtlSeconds) || self.defaultTtlSeconds <= self.maxTtlSeconds",
            "!has(self.emergency) || !has(self.maxTtlSeconds) || self.emergency.maxTtlSeconds <= self.maxTtlSeconds",
        ]
    );
    assert_eq!(
        rules(&spec["properties"]["autoscaling"]),
        ["self.minReplicas <= self.maxReplicas"]
    );
    assert_eq!(
        rules(&spec["properties"]["disruptionBudget"]),
        ["!(has(self.maxUnavailable) && has(self.minAvailable))"]
    );
    assert_eq!(
        spec["properties"]["autoscaling"]["required"],
        json!(["maxReplicas"])
    );
}

#[test]
fn bad_resources_are_refused_by_the_schema() {
    let v = validator();
    let base = sample("minimal.yaml");
    let bad_specs = [
        json!({"rsaKeyBits": 1024}),
        json!({"signingAlg": "HS256"}),
        json!({"replicas": 0}),
        json!({"port": 0}),
        json!({"port": 70000}),
        json!({"maxTtlSeconds": 0}),
        json!({"issuer": ""}),
        json!({"jwksCacheTtlSeconds": 0}),
        json!({"rotation": {"interval": "30 days"}}),
        json!({"rotation": {"rolloutTimeoutSeconds": 0}}),
        json!({"rotation": {"drainSeconds": -1}}),
        json!({"replicas": "two"}),
        json!({"callerAuth": {}}),
        json!({"callerAuth": {"secretName": "Not_A_Name"}}),
        json!({"callerAuth": {"secretName": "s", "key": "a/b"}}),
        json!({"rateLimit": {"perSecond": 0}}),
        json!({"rateLimit": {"burst": 10}}),
        json!({"rateLimit": {"perSecond": 10, "burst": 0}}),
        json!({"audit": {"enabled": "yes"}}),
        json!({"emergency": {"maxTtlSeconds": 59}}),
        json!({"emergency": {}}),
        json!({"mintPort": 0}),
        json!({"mintPort": 65536}),
        json!({"autoscaling": {"minReplicas": 2}}),
        json!({"autoscaling": {"maxReplicas": 0}}),
        json!({"autoscaling": {"maxReplicas": 3, "minReplicas": 0}}),
        json!({"autoscaling": {"maxReplicas": 3, "targetCPUUtilizationPercentage": 0}}),
        json!({"disruptionBudget": {"enabled": "yes"}}),
        json!({"serviceAccountName": "Not_A_Name"}),
        json!({"priorityClassName": ""}),
        json!({"imagePullSecrets": "regcred"}),
        json!({"topologySpreadConstraints": [{"topologyKey": "zone"}]}),
    ];
    for spec in bad_specs {
        let mut r = base.clone();
        r["spec"] = spec.clone();
        assert!(!errors(&v, &r).is_empty(), "schema accepted {spec}");
    }
}

#[test]
fn crd_shape() {
    let crd = serde_json::to_value(MacpAuth::crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "macpauths.macp.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(
        crd["spec"]["names"]["shortNames"],
        json!(["macpauth", "macp"])
    );
    // `kubectl get macp` lists them, by short name and by category alike.
    assert_eq!(crd["spec"]["names"]["categories"], json!(["macp"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Ready",
            "Phase",
            "Active Kid",
            "Standby",
            "Standby Propagated",
            "Last Rotation",
            "Age"
        ]
    );
    // The standby's columns only with `-o wide`.
    let wide: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["priority"] == 1)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(wide, ["Standby", "Standby Propagated"]);
    // Defaults are in the schema, so the API server fills them in.
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(spec["replicas"]["default"], 2);
    assert_eq!(spec["port"]["default"], 3200);
    assert_eq!(spec["rsaKeyBits"]["default"], 2048);
    assert_eq!(spec["signingAlg"]["default"], "RS256");
}

/// Paths under `node` whose schema has no description: every named field
/// (of the spec, the status and the Kubernetes types they embed) and every
/// object in a list. A list's scalar items and a map's values are described
/// by their field.
fn undescribed(node: &Value, path: &str, out: &mut Vec<String>) {
    let described = node["description"]
        .as_str()
        .is_some_and(|d| !d.trim().is_empty());
    let is_item = path.ends_with("[]");
    let is_object = node["type"] == "object" || node.get("properties").is_some();
    if !described && !path.is_empty() && !path.ends_with("{}") && (!is_item || is_object) {
        out.push(path.to_string());
    }
    if let Some(props) = node["properties"].as_object() {
        for (name, child) in props {
            undescribed(child, &format!("{path}.{name}"), out);
        }
    }
    if node.get("items").is_some() {
        undescribed(&node["items"], &format!("{path}[]"), out);
    }
    if node["additionalProperties"].is_object() {
        undescribed(&node["additionalProperties"], &format!("{path}{{}}"), out);
    }
}

/// `kubectl explain` prints each field's description: none may be empty.
#[test]
fn every_field_object_and_status_field_is_described() {
    let root = schema();
    let mut missing = Vec::new();
    for part in ["spec", "status"] {
        undescribed(&root["properties"][part], &format!(".{part}"), &mut missing);
    }
    assert_eq!(
        missing,
        Vec::<String>::new(),
        "fields without a description"
    );
    // The walk reaches nested fields and list items (or it would pass on anything).
    let rotation = &root["properties"]["spec"]["properties"]["rotation"];
    assert!(rotation["properties"]["rolloutTimeoutSeconds"]["description"].is_string());
    let history = &root["properties"]["status"]["properties"]["history"];
    assert!(history["items"]["properties"]["outcome"]["description"].is_string());
}
