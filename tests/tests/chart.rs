//! The Helm chart, tested with the real helm v4 binary that `scripts/install-tools`
//! puts in `.cache/tools/bin/`: lint, schema, rendered objects, RBAC against the
//! operator's own rule list, the CRD copy, the rendered plain manifests and the
//! samples.
//!
//! Rendered YAML is parsed into `serde_json::Value`s; objects of built-in kinds
//! are also round-tripped through the k8s-openapi types, which catches misspelt
//! or misplaced fields that the API server would silently drop.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::Command;

use macp_auth_e2e::helm::{
    CHART, RELEASE, RELEASE_NS, helm, kind, one, parse_docs, render, repo_root, template_raw,
    values_file,
};
use macp_auth_operator::resources;
use serde_json::{Value, json};

const CRD_FILE: &str = "crds/macpauths.macp.io.yaml";

/// Every optional template switched on, and every value with a non-default.
const ALL_ON_VALUES: &str = r#"
replicaCount: 3
image:
  repository: registry.example/ops/macp-auth-operator
  tag: "9.9.9"
  pullPolicy: Always
serviceImage:
  repository: registry.example/ops/macp-auth-service
  tag: "9.9.8"
imagePullSecrets:
  - name: regcred
leaderElection:
  enabled: true
  leaseName: macp-lease
logFormat: text
logLevel: debug
listenPort: 9090
serviceAccount:
  create: true
  name: macp-op
  annotations:
    example.com/role: operator
podAnnotations:
  example.com/scrape: "true"
podLabels:
  team: platform
nodeSelector:
  kubernetes.io/os: linux
tolerations:
  - key: dedicated
    operator: Equal
    value: platform
    effect: NoSchedule
priorityClassName: system-cluster-critical
metrics:
  service:
    enabled: true
    type: ClusterIP
    port: 9091
  serviceMonitor:
    enabled: true
    interval: 15s
    labels:
      release: prometheus
podDisruptionBudget:
  enabled: true
  minAvailable: 2
networkPolicy:
  enabled: true
  namespaces: [agents-a, agents-b]
  ports: [3200, 3300]
  mintClients:
    podSelector:
      matchLabels:
        team: agents
    namespaceSelector:
      matchLabels:
        macp.io/clients: "true"
  extraFrom:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: monitoring
"#;

const NAMESPACED_VALUES: &str = "config/samples/namespace-scoped-values.yaml";

// ---------------------------------------------------------------- helpers

fn render_defaults() -> Vec<Value> {
    render(&[])
}

fn render_all_on() -> Vec<Value> {
    let f = values_file("all-on", ALL_ON_VALUES);
    render(&["-f", &f])
}

fn render_namespaced() -> Vec<Value> {
    render(&["-f", NAMESPACED_VALUES])
}

fn render_namespaced_without_leader_election() -> Vec<Value> {
    render(&[
        "-f",
        NAMESPACED_VALUES,
        "--set",
        "leaderElection.enabled=false,replicaCount=1",
    ])
}

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().expect("label value is a string").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every label of `selector` is carried, with the same value, by `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn args(deploy: &Value) -> Vec<String> {
    deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("operator container has args")
        .iter()
        .map(|a| a.as_str().expect("arg is a string").to_string())
        .collect()
}

/// The value following `flag` in `args`, if the flag is there.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

type Triple = (String, String, String);

/// The operator's own rule list, expanded to (group, resource, verb).
fn required_triples(leader_election: bool) -> BTreeSet<Triple> {
    macp_auth_operator::rbac::required_rules(leader_election)
        .iter()
        .flat_map(|r| {
            r.verbs
                .iter()
                .map(|v| (r.group.to_string(), r.resource.to_string(), v.to_string()))
        })
        .collect()
}

/// A rendered Role's or ClusterRole's rules, expanded to (group, resource, verb).
fn role_triples(role: &Value) -> BTreeSet<Triple> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("rule field is a list")
            .iter()
            .map(|s| s.as_str().expect("string").to_string())
            .collect()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("role has rules") {
        assert!(
            rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
            "unexpected rule shape: {rule}"
        );
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    assert!(g != "*" && r != "*" && v != "*", "wildcard in rule {rule}");
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

fn namespace_of(obj: &Value) -> &str {
    obj["metadata"]["namespace"].as_str().unwrap_or("")
}

fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().expect("object has a name")
}

fn chart_app_version() -> String {
    let chart: Value = serde_yaml::from_str(
        &fs::read_to_string(repo_root().join(CHART).join("Chart.yaml")).unwrap(),
    )
    .unwrap();
    chart["appVersion"]
        .as_str()
        .expect("appVersion")
        .to_string()
}

// ---------------------------------------------------------------- lint and schema

#[test]
fn lint_strict_passes_with_every_values_set() {
    let all_on = values_file("lint-all-on", ALL_ON_VALUES);
    for extra in [
        vec![],
        vec!["-f", NAMESPACED_VALUES],
        vec!["-f", all_on.as_str()],
    ] {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend_from_slice(&extra);
        let run = helm(&args);
        assert!(
            run.ok,
            "helm lint --strict {extra:?} failed:\n{}{}",
            run.stdout, run.stderr
        );
    }
}

#[test]
fn chart_version_is_the_crate_version() {
    let chart: Value = serde_yaml::from_str(
        &fs::read_to_string(repo_root().join(CHART).join("Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
}

/// Chart values the schema refuses, named for the failure message: the
/// values file's `contents` and where the refusal points (`at`).
struct Refused {
    name: &'static str,
    contents: &'static str,
    at: &'static str,
}

#[test]
fn schema_refuses_wrong_types_and_unknown_keys() {
    let cases = [
        Refused {
            name: "replica-string",
            contents: "replicaCount: \"two\"\n",
            at: "/replicaCount",
        },
        Refused {
            name: "replica-zero",
            contents: "replicaCount: 0\n",
            at: "/replicaCount",
        },
        Refused {
            name: "watch-string",
            contents: "watchNamespaces: \"a,b\"\n",
            at: "/watchNamespaces",
        },
        Refused {
            name: "watch-bad-name",
            contents: "watchNamespaces: [\"Not_A_Namespace\"]\n",
            at: "/watchNamespaces/0",
        },
        Refused {
            name: "le-string",
            contents: "leaderElection:\n  enabled: \"yes\"\n",
            at: "/leaderElection/enabled",
        },
        Refused {
            name: "pull-policy",
            contents: "image:\n  pullPolicy: Sometimes\n",
            at: "/image/pullPolicy",
        },
        Refused {
            name: "log-format",
            contents: "logFormat: xml\n",
            at: "/logFormat",
        },
        Refused {
            name: "port-range",
            contents: "listenPort: 70000\n",
            at: "/listenPort",
        },
        Refused {
            name: "np-port-string",
            contents: "networkPolicy:\n  ports: [\"http\"]\n",
            at: "/networkPolicy/ports/0",
        },
        Refused {
            name: "unknown-top",
            contents: "replicas: 2\n",
            at: "replicas",
        },
        Refused {
            name: "unknown-nested",
            contents: "image:\n  digest: sha256:abc\n",
            at: "digest",
        },
        Refused {
            name: "pdb-percent",
            contents: "podDisruptionBudget:\n  minAvailable: \"half\"\n",
            at: "/podDisruptionBudget/minAvailable",
        },
    ];
    for Refused { name, contents, at } in cases {
        let f = values_file(name, contents);
        let run = template_raw(&["-f", &f]);
        assert!(
            !run.ok,
            "{name}: values {contents:?} were accepted; the schema must refuse them"
        );
        assert!(
            run.stderr.contains(at),
            "{name}: refusal of {contents:?} does not name {at:?}:\n{}",
            run.stderr
        );
    }
}

#[test]
fn several_replicas_need_leader_election() {
    let run = template_raw(&["--set", "replicaCount=2"]);
    assert!(!run.ok, "two replicas without leader election rendered");
    assert!(
        run.stderr.contains("leaderElection.enabled"),
        "{}",
        run.stderr
    );
    render(&["--set", "replicaCount=2,leaderElection.enabled=true"]);
}

#[test]
fn install_dry_run_with_defaults_prints_notes_for_first_macpauth_and_rotations() {
    let run = helm(&[
        "install",
        RELEASE,
        CHART,
        "--namespace",
        RELEASE_NS,
        "--dry-run=client",
    ]);
    assert!(
        run.ok,
        "helm install --dry-run=client failed:\n{}",
        run.stderr
    );
    let notes = run
        .stdout
        .split("NOTES:")
        .nth(1)
        .expect("install prints NOTES");
    for needle in [
        "kind: MacpAuth",
        "apiVersion: macp.io/v1alpha1",
        &format!("{}=", macp_auth_operator::crd::ROTATE_ANNOTATION),
        &format!(
            "{}=\"INC-$(date +%s)\"",
            macp_auth_operator::crd::EMERGENCY_ROTATE_ANNOTATION
        ),
        "kubectl annotate macpauth",
        "kubectl delete crd macpauths.macp.io",
    ] {
        assert!(notes.contains(needle), "NOTES lack {needle:?}:\n{notes}");
    }
    // The MacpAuth in the notes is one a user can paste: it validates against the CRD.
    let sample = notes
        .split("<<'YAML'\n")
        .nth(1)
        .and_then(|s| s.split("  YAML\n").next())
        .expect("NOTES hold a heredoc MacpAuth");
    let unindented: String = sample
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
        .collect();
    let obj: Value = serde_yaml::from_str(&unindented).expect("NOTES MacpAuth parses");
    let errors = crd_validation_errors(&obj);
    assert!(errors.is_empty(), "NOTES MacpAuth is invalid: {errors:?}");
}

// ---------------------------------------------------------------- rendered objects

#[test]
fn objects_round_trip_through_the_kubernetes_types() {
    use k8s_openapi::api::{
        apps::v1::Deployment,
        core::v1::{Service, ServiceAccount},
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(obj: &Value) -> Value {
        let typed: T = serde_json::from_value(obj.clone()).unwrap_or_else(|e| {
            panic!(
                "{} {} does not parse: {e}",
                obj["kind"], obj["metadata"]["name"]
            )
        });
        serde_json::to_value(typed).expect("serialise")
    }

    let all_on = values_file("roundtrip-all-on", ALL_ON_VALUES);
    for extra in [
        vec!["--include-crds"],
        vec!["-f", NAMESPACED_VALUES],
        vec!["-f", all_on.as_str()],
    ] {
        for obj in render(&extra) {
            let back = match obj["kind"].as_str().expect("kind") {
                "Deployment" => round_trip::<Deployment>(&obj),
                "Service" => round_trip::<Service>(&obj),
                "ServiceAccount" => round_trip::<ServiceAccount>(&obj),
                "NetworkPolicy" => round_trip::<NetworkPolicy>(&obj),
                "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(&obj),
                "ClusterRole" => round_trip::<ClusterRole>(&obj),
                "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(&obj),
                "Role" => round_trip::<Role>(&obj),
                "RoleBinding" => round_trip::<RoleBinding>(&obj),
                "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(&obj),
                "ServiceMonitor" => continue,
                other => panic!("the chart renders an unexpected kind {other}"),
            };
            assert_eq!(
                back,
                obj,
                "fields of {} {} are lost by the API types",
                obj["kind"],
                name_of(&obj)
            );
        }
    }
}

#[test]
fn every_namespaced_object_is_in_its_intended_namespace() {
    for docs in [render_defaults(), render_all_on()] {
        for obj in &docs {
            match obj["kind"].as_str().unwrap() {
                "ClusterRole" | "ClusterRoleBinding" => assert_eq!(namespace_of(obj), ""),
                "NetworkPolicy" => assert_ne!(namespace_of(obj), ""),
                _ => assert_eq!(
                    namespace_of(obj),
                    RELEASE_NS,
                    "{} {}",
                    obj["kind"],
                    name_of(obj)
                ),
            }
        }
    }
}

#[test]
fn operator_runs_locked_down() {
    for docs in [render_defaults(), render_all_on(), render_namespaced()] {
        let deploy = one(&docs, "Deployment");
        let pod = &deploy["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let uid = pod["securityContext"]["runAsUser"]
            .as_i64()
            .expect("runAsUser");
        assert!(uid > 0, "runs as root");
        let containers = pod["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        let c = &containers[0];
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["privileged"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert!(sc["capabilities"].get("add").is_none());
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert!(pod.get("hostNetwork").is_none() && pod.get("hostPID").is_none());

        // Probes hit the operator's health endpoints on the port it listens on.
        let port = c["ports"][0]["containerPort"].as_i64().unwrap();
        assert_eq!(c["ports"][0]["name"], "http");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
        let listen = flag_value(&args(deploy), "--listen-address")
            .expect("--listen-address")
            .to_string();
        assert_eq!(listen, format!("0.0.0.0:{port}"));

        let env = c["env"].as_array().expect("env");
        assert!(env.contains(&json!({
            "name": "MACP_OPERATOR_POD_NAME",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}
        })));
        // The default leader-election namespace.
        assert!(env.contains(&json!({
            "name": "MACP_OPERATOR_POD_NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}
        })));
        assert!(env.iter().any(|e| e["name"] == "RUST_LOG"));

        assert!(c["resources"]["requests"]["cpu"].is_string());
        assert!(c["resources"]["requests"]["memory"].is_string());
        assert!(c["resources"]["limits"]["memory"].is_string());
    }
}

#[test]
fn images_default_to_the_app_version_and_follow_values() {
    let app = chart_app_version();
    let docs = render_defaults();
    let deploy = one(&docs, "Deployment");
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], format!("ghcr.io/macp/macp-auth-operator:{app}"));
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        flag_value(&args(deploy), "--service-image"),
        Some(format!("ghcr.io/macp/macp-auth-service:{app}").as_str())
    );
    // The chart's default is the operator's own built-in default.
    assert_eq!(
        flag_value(&args(deploy), "--service-image"),
        Some(macp_auth_operator::config::DEFAULT_SERVICE_IMAGE)
    );

    let docs = render_all_on();
    let deploy = one(&docs, "Deployment");
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "registry.example/ops/macp-auth-operator:9.9.9");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(
        flag_value(&args(deploy), "--service-image"),
        Some("registry.example/ops/macp-auth-service:9.9.8")
    );
    assert_eq!(
        deploy["spec"]["template"]["spec"]["imagePullSecrets"],
        json!([{"name": "regcred"}])
    );
}

#[test]
fn labels_and_selectors_agree() {
    for docs in [render_defaults(), render_all_on(), render_namespaced()] {
        let deploy = one(&docs, "Deployment");
        let selector = str_map(&deploy["spec"]["selector"]["matchLabels"]);
        let pod_labels = str_map(&deploy["spec"]["template"]["metadata"]["labels"]);
        assert!(
            selects(&selector, &pod_labels),
            "Deployment selector {selector:?} misses its pods {pod_labels:?}"
        );
        assert_eq!(
            selector
                .get("app.kubernetes.io/instance")
                .map(String::as_str),
            Some(RELEASE)
        );

        // Every object carries the chart's standard labels.
        for obj in &docs {
            let labels = str_map(&obj["metadata"]["labels"]);
            for key in [
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "helm.sh/chart",
            ] {
                assert!(
                    labels.contains_key(key),
                    "{} {} lacks label {key}",
                    obj["kind"],
                    name_of(obj)
                );
            }
            assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm");
        }

        if let Some(svc) = kind(&docs, "Service").first() {
            assert_eq!(
                str_map(&svc["spec"]["selector"]),
                selector,
                "metrics Service selector"
            );
            assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
        }
        for pdb in kind(&docs, "PodDisruptionBudget") {
            assert_eq!(
                str_map(&pdb["spec"]["selector"]["matchLabels"]),
                selector,
                "PDB selector"
            );
        }
        for sm in kind(&docs, "ServiceMonitor") {
            let svc = one(&docs, "Service");
            let svc_labels = str_map(&svc["metadata"]["labels"]);
            assert!(selects(
                &str_map(&sm["spec"]["selector"]["matchLabels"]),
                &svc_labels
            ));
            assert_eq!(
                sm["spec"]["endpoints"][0]["port"],
                svc["spec"]["ports"][0]["name"]
            );
            assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
            assert_eq!(
                sm["spec"]["namespaceSelector"]["matchNames"],
                json!([RELEASE_NS])
            );
        }
        let sa = deploy["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .unwrap();
        assert_eq!(name_of(one(&docs, "ServiceAccount")), sa);
        for binding in kind(&docs, "RoleBinding")
            .into_iter()
            .chain(kind(&docs, "ClusterRoleBinding"))
        {
            assert_eq!(
                binding["subjects"],
                json!([{"kind": "ServiceAccount", "name": sa, "namespace": RELEASE_NS}])
            );
        }
    }
}

#[test]
fn args_carry_the_operator_flags() {
    let app = chart_app_version();
    let default_args = args(one(&render_defaults(), "Deployment"));
    assert_eq!(
        default_args,
        [
            "run".to_string(),
            "--service-image".into(),
            format!("ghcr.io/macp/macp-auth-service:{app}"),
            "--log-format".into(),
            "json".into(),
            "--listen-address".into(),
            "0.0.0.0:8080".into(),
        ]
    );

    let namespaced = args(one(&render_namespaced(), "Deployment"));
    assert_eq!(namespaced[0], "run");
    assert_eq!(
        flag_value(&namespaced, "--watch-namespaces"),
        Some("agents-prod,agents-staging")
    );
    assert!(namespaced.contains(&"--leader-election".to_string()));
    assert_eq!(
        flag_value(&namespaced, "--leader-election-namespace"),
        Some(RELEASE_NS)
    );
    assert_eq!(
        flag_value(&namespaced, "--leader-election-lease-name"),
        Some(RELEASE)
    );

    let all_on = render_all_on();
    let deploy = one(&all_on, "Deployment");
    let a = args(deploy);
    assert!(a.contains(&"--leader-election".to_string()));
    assert_eq!(
        flag_value(&a, "--leader-election-lease-name"),
        Some("macp-lease")
    );
    assert_eq!(flag_value(&a, "--log-format"), Some("text"));
    assert_eq!(flag_value(&a, "--listen-address"), Some("0.0.0.0:9090"));
    assert_eq!(
        flag_value(&a, "--watch-namespaces"),
        None,
        "cluster-wide install restricted to namespaces"
    );
    assert_eq!(deploy["spec"]["replicas"], 3);
    // With leader election a surge pod waits for the lease; without it two operators must never overlap.
    assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        one(&render_defaults(), "Deployment")["spec"]["strategy"]["type"],
        "Recreate"
    );

    let no_le = args(one(
        &render_namespaced_without_leader_election(),
        "Deployment",
    ));
    assert!(
        !no_le.iter().any(|a| a.starts_with("--leader-election")),
        "{no_le:?}"
    );
}

/// Parses the rendered args with the operator's own command line
/// (`macp_auth_operator::cli::Cli`), as the container would.
fn parse_operator_args(args: &[String]) -> macp_auth_operator::Settings {
    use clap::Parser;
    use macp_auth_operator::cli::{Cli, Command};
    let argv = std::iter::once("macp-auth-operator".to_string()).chain(args.iter().cloned());
    match Cli::try_parse_from(argv).map(Cli::into_command) {
        Ok(Command::Run(settings)) => settings,
        Ok(other) => panic!("the chart's args {args:?} select {other:?}, not run"),
        Err(e) => panic!("the operator refuses the chart's args {args:?}:\n{e}"),
    }
}

#[test]
fn operator_accepts_the_rendered_args() {
    use macp_auth_operator::config::LogFormat;

    let settings = parse_operator_args(&args(one(&render_defaults(), "Deployment")));
    assert_eq!(settings.namespaces(), None);
    assert_eq!(settings.log_format, LogFormat::Json);
    assert_eq!(settings.listen_address, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(
        settings.service_image,
        macp_auth_operator::config::DEFAULT_SERVICE_IMAGE
    );
    assert!(!settings.leader_election);

    let settings = parse_operator_args(&args(one(
        &render_namespaced_without_leader_election(),
        "Deployment",
    )));
    assert_eq!(
        settings.namespaces(),
        Some(vec![
            "agents-prod".to_string(),
            "agents-staging".to_string()
        ])
    );
    assert!(!settings.leader_election);

    let settings = parse_operator_args(&args(one(&render_namespaced(), "Deployment")));
    assert!(settings.leader_election);
    assert_eq!(
        settings.leader_election_namespace.as_deref(),
        Some(RELEASE_NS)
    );
    assert_eq!(settings.leader_election_lease_name, RELEASE);

    let settings = parse_operator_args(&args(one(&render_all_on(), "Deployment")));
    assert!(settings.leader_election);
    assert_eq!(
        settings.leader_election_namespace.as_deref(),
        Some(RELEASE_NS)
    );
    assert_eq!(settings.leader_election_lease_name, "macp-lease");
    // The rendered settings pass the operator's startup validation.
    let election = settings
        .leader_election("host")
        .expect("valid leader-election settings")
        .expect("leader election on");
    assert_eq!(election.namespace, RELEASE_NS);
    assert_eq!(election.lease_name, "macp-lease");
    assert_eq!(settings.log_format, LogFormat::Text);
    assert_eq!(settings.listen_address, "0.0.0.0:9090".parse().unwrap());
    assert_eq!(
        settings.service_image,
        "registry.example/ops/macp-auth-service:9.9.8"
    );
}

// ---------------------------------------------------------------- RBAC

/// Cluster-wide mode: one ClusterRole with exactly the operator's rules, and
/// leases (when on) in a Role in the release namespace only.
fn assert_cluster_wide_rbac(docs: &[Value], leader_election: bool) {
    let cluster_role = one(docs, "ClusterRole");
    assert_eq!(
        role_triples(cluster_role),
        required_triples(false),
        "ClusterRole rules"
    );
    let crb = one(docs, "ClusterRoleBinding");
    assert_eq!(crb["roleRef"]["kind"], "ClusterRole");
    assert_eq!(crb["roleRef"]["name"], cluster_role["metadata"]["name"]);

    let roles = kind(docs, "Role");
    let mut granted = role_triples(cluster_role);
    if leader_election {
        assert_eq!(roles.len(), 1, "one leader-election Role");
        assert_eq!(namespace_of(roles[0]), RELEASE_NS);
        granted.extend(role_triples(roles[0]));
    } else {
        assert!(roles.is_empty(), "Roles rendered without leader election");
    }
    assert_eq!(granted, required_triples(leader_election));
    assert_bindings_match_roles(docs);
}

/// Namespace-scoped mode: no cluster-wide permission at all; in each watched
/// namespace a Role with exactly the operator's rules; leases in the release namespace.
fn assert_namespaced_rbac(docs: &[Value], watched: &[&str], leader_election: bool) {
    assert!(
        kind(docs, "ClusterRole").is_empty(),
        "ClusterRole in namespace-scoped mode"
    );
    assert!(
        kind(docs, "ClusterRoleBinding").is_empty(),
        "ClusterRoleBinding in namespace-scoped mode"
    );

    let base = required_triples(false);
    let lease_only: BTreeSet<Triple> = required_triples(true).difference(&base).cloned().collect();
    let mut seen_namespaces = BTreeSet::new();
    let mut granted = BTreeSet::new();
    for role in kind(docs, "Role") {
        let triples = role_triples(role);
        if triples == lease_only {
            assert!(leader_election, "lease Role without leader election");
            assert_eq!(
                namespace_of(role),
                RELEASE_NS,
                "leases outside the release namespace"
            );
        } else {
            assert_eq!(
                triples,
                base,
                "Role {} in {}",
                name_of(role),
                namespace_of(role)
            );
            assert!(
                seen_namespaces.insert(namespace_of(role).to_string()),
                "two Roles in one namespace"
            );
        }
        granted.extend(triples);
    }
    let expected: BTreeSet<String> = watched.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        seen_namespaces, expected,
        "Roles exactly in the watched namespaces"
    );
    assert_eq!(granted, required_triples(leader_election));
    assert_bindings_match_roles(docs);
}

fn assert_bindings_match_roles(docs: &[Value]) {
    let roles: BTreeSet<(String, String)> = kind(docs, "Role")
        .iter()
        .map(|r| (namespace_of(r).to_string(), name_of(r).to_string()))
        .collect();
    let bound: BTreeSet<(String, String)> = kind(docs, "RoleBinding")
        .iter()
        .map(|b| {
            assert_eq!(b["roleRef"]["kind"], "Role");
            (
                namespace_of(b).to_string(),
                b["roleRef"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        roles, bound,
        "every Role is bound exactly once, in its own namespace"
    );
}

#[test]
fn rbac_cluster_wide_equals_the_operator_rule_list() {
    assert_cluster_wide_rbac(&render_defaults(), false);
    assert_cluster_wide_rbac(&render(&["--set", "leaderElection.enabled=true"]), true);
    assert_cluster_wide_rbac(&render_all_on(), true);
}

#[test]
fn rbac_namespace_scoped_equals_the_operator_rule_list() {
    let watched = ["agents-prod", "agents-staging"];
    assert_namespaced_rbac(&render_namespaced(), &watched, true);
    assert_namespaced_rbac(
        &render_namespaced_without_leader_election(),
        &watched,
        false,
    );
    // The release namespace watched too: its Role and the lease Role coexist under different names.
    let docs = render(&[
        "--set",
        "watchNamespaces={macp-system},leaderElection.enabled=true",
    ]);
    assert_namespaced_rbac(&docs, &["macp-system"], true);
}

#[test]
fn rbac_can_be_left_to_the_user() {
    let docs = render(&["--set", "rbac.create=false"]);
    for k in ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        assert!(
            kind(&docs, k).is_empty(),
            "{k} rendered with rbac.create=false"
        );
    }
}

// ---------------------------------------------------------------- NetworkPolicy

#[test]
fn network_policy_admits_only_chosen_clients_and_the_operator() {
    assert!(
        kind(&render_defaults(), "NetworkPolicy").is_empty(),
        "NetworkPolicy is opt-in"
    );

    // Namespaces default to the watched ones.
    let docs = render_namespaced();
    let policies = kind(&docs, "NetworkPolicy");
    let namespaces: BTreeSet<&str> = policies.iter().map(|p| namespace_of(p)).collect();
    assert_eq!(
        namespaces,
        BTreeSet::from(["agents-prod", "agents-staging"])
    );

    let operator_pod_labels =
        str_map(&one(&docs, "Deployment")["spec"]["template"]["metadata"]["labels"]);
    for np in &policies {
        let spec = &np["spec"];
        // Selects the pods of every MacpAuth (the labels the operator puts on them), nothing else.
        let selector = str_map(&spec["podSelector"]["matchLabels"]);
        assert!(selects(
            &selector,
            &resources::common_labels("any-macpauth")
        ));
        assert_eq!(
            selector.keys().collect::<Vec<_>>(),
            [resources::MANAGED_BY_LABEL, resources::NAME_LABEL]
        );
        assert_eq!(spec["policyTypes"], json!(["Ingress"]));
        let ingress = spec["ingress"].as_array().unwrap();
        assert_eq!(ingress.len(), 1);
        assert_eq!(
            ingress[0]["ports"],
            json!([{"protocol": "TCP", "port": 3200}])
        );
        let from = ingress[0]["from"].as_array().unwrap();
        assert_eq!(from.len(), 2);
        assert_eq!(
            from[0],
            json!({"podSelector": {"matchLabels": {"macp.io/auth-client": "true"}}})
        );
        // The operator peer: its own pods, in the release namespace only.
        assert!(selects(
            &str_map(&from[1]["podSelector"]["matchLabels"]),
            &operator_pod_labels
        ));
        assert_eq!(
            from[1]["namespaceSelector"],
            json!({"matchLabels": {"kubernetes.io/metadata.name": RELEASE_NS}})
        );
    }

    // Explicit namespaces, ports, client selector, namespace selector and extra peers.
    let docs = render_all_on();
    let policies = kind(&docs, "NetworkPolicy");
    let namespaces: BTreeSet<&str> = policies.iter().map(|p| namespace_of(p)).collect();
    assert_eq!(namespaces, BTreeSet::from(["agents-a", "agents-b"]));
    for np in policies {
        let rule = &np["spec"]["ingress"][0];
        assert_eq!(
            rule["ports"],
            json!([{"protocol": "TCP", "port": 3200}, {"protocol": "TCP", "port": 3300}])
        );
        let from = rule["from"].as_array().unwrap();
        assert_eq!(
            from[0],
            json!({
                "podSelector": {"matchLabels": {"team": "agents"}},
                "namespaceSelector": {"matchLabels": {"macp.io/clients": "true"}}
            })
        );
        assert_eq!(
            from[2],
            json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}})
        );
        // No peer admits everything.
        for peer in from {
            assert_ne!(peer, &json!({}), "empty peer admits every pod");
            assert_ne!(
                peer["podSelector"],
                json!({}),
                "empty podSelector admits every pod"
            );
        }
    }

    // Cluster-wide without explicit namespaces the chart cannot know where
    // the token services run: it refuses rather than render a policy in the
    // release namespace, where none runs and it would isolate nothing.
    let run = template_raw(&["--set", "networkPolicy.enabled=true"]);
    assert!(
        !run.ok && run.stderr.contains("networkPolicy.namespaces"),
        "a cluster-wide policy without namespaces renders:\n{}{}",
        run.stdout,
        run.stderr
    );
    let docs = render(&[
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.namespaces={macp}",
    ]);
    assert_eq!(namespace_of(one(&docs, "NetworkPolicy")), "macp");
}

/// The PodMonitor scrapes the token services' /metrics on the service port:
/// with a policy there, Prometheus must be one of its peers.
#[test]
fn network_policy_never_drops_the_pod_monitor_scrapes() {
    let base = [
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.namespaces={macp}",
        "--set",
        "prometheus.podMonitor.enabled=true",
    ];
    let run = template_raw(&base);
    assert!(
        !run.ok && run.stderr.contains("networkPolicy.extraFrom"),
        "a policy that drops the PodMonitor's scrapes renders:\n{}{}",
        run.stdout,
        run.stderr
    );
    let mut args = base.to_vec();
    args.extend([
        "--set",
        "networkPolicy.extraFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
    ]);
    let docs = render(&args);
    let np = one(&docs, "NetworkPolicy");
    let pm = one(&docs, "PodMonitor");
    // The port the PodMonitor scrapes (named `http`: the service port) is the
    // policy's first rule, and Prometheus's namespace is among its peers.
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "http");
    let rule = &np["spec"]["ingress"][0];
    assert_eq!(rule["ports"], json!([{"protocol": "TCP", "port": 3200}]));
    assert!(
        rule["from"].as_array().unwrap().contains(&json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
        })),
        "{rule}"
    );
}

#[test]
fn extra_args_reach_the_operator_after_the_charts_own() {
    let docs = render(&[
        "--set",
        "extraArgs={--max-concurrent-reconciles=32,--reconcile-debounce=1s}",
    ]);
    let a = args(one(&docs, "Deployment"));
    assert_eq!(
        a[a.len() - 2..],
        ["--max-concurrent-reconciles=32", "--reconcile-debounce=1s"]
    );
    let settings = parse_operator_args(&a);
    assert_eq!(settings.max_concurrent_reconciles, 32);
    // The schema refuses something that is not a flag.
    let run = template_raw(&["--set", "extraArgs={max-concurrent-reconciles}"]);
    assert!(!run.ok, "a non-flag extraArgs item renders");
}

/// With mint ports, the JWKS port admits verifiers (not minters)
/// and the mint port admits minters (not verifiers); the operator reaches both.
#[test]
fn network_policy_with_mint_ports_fences_minting_off() {
    let docs = render(&[
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.namespaces={macp}",
        "--set",
        "networkPolicy.ports={3200}",
        "--set",
        "networkPolicy.mintPorts={3201}",
        "--set",
        "networkPolicy.mintClients.podSelector.matchLabels.team=agents",
        "--set",
        "networkPolicy.verifiers.podSelector.matchLabels.app=macp-runtime",
        "--set",
        "networkPolicy.verifiers.namespaceSelector.matchLabels.tier=runtime",
    ]);
    let operator_pod_labels =
        str_map(&one(&docs, "Deployment")["spec"]["template"]["metadata"]["labels"]);
    let np = one(&docs, "NetworkPolicy");
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 2, "{ingress:?}");
    let (jwks, mint) = (&ingress[0], &ingress[1]);
    assert_eq!(jwks["ports"], json!([{"protocol": "TCP", "port": 3200}]));
    assert_eq!(mint["ports"], json!([{"protocol": "TCP", "port": 3201}]));
    let minters = json!({"podSelector": {"matchLabels": {"team": "agents"}}});
    let verifiers = json!({
        "podSelector": {"matchLabels": {"app": "macp-runtime"}},
        "namespaceSelector": {"matchLabels": {"tier": "runtime"}}
    });
    let jwks_from = jwks["from"].as_array().unwrap();
    let mint_from = mint["from"].as_array().unwrap();
    assert_eq!(jwks_from[0], verifiers);
    assert!(
        !jwks_from.contains(&minters),
        "minters are not admitted to the JWKS port"
    );
    assert_eq!(mint_from[0], minters);
    assert!(
        !mint_from.contains(&verifiers),
        "verifiers cannot reach the mint port"
    );
    assert_eq!(
        mint_from.len(),
        2,
        "minters and the operator only: {mint_from:?}"
    );
    for from in [jwks_from, mint_from] {
        let operator = from
            .iter()
            .find(|p| {
                selects(
                    &str_map(&p["podSelector"]["matchLabels"]),
                    &operator_pod_labels,
                )
            })
            .expect("the operator reaches the port");
        assert_eq!(
            operator["namespaceSelector"],
            json!({"matchLabels": {"kubernetes.io/metadata.name": RELEASE_NS}})
        );
        for peer in from {
            assert_ne!(
                peer["podSelector"],
                json!({}),
                "empty podSelector admits every pod"
            );
        }
    }
    // An empty verifier selector falls back to a fixed label, never to every pod.
    let docs = render(&[
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.namespaces={macp}",
        "--set",
        "networkPolicy.mintPorts={3201}",
    ]);
    let np = one(&docs, "NetworkPolicy");
    assert_eq!(
        np["spec"]["ingress"][0]["from"][0],
        json!({"podSelector": {"matchLabels": {"macp.io/auth-verifier": "true"}}})
    );
}

// ---------------------------------------------------------------- CRD, manifests, samples

#[test]
fn chart_crd_is_byte_identical_to_the_generated_crd() {
    let generated = repo_root().join(CRD_FILE);
    let in_chart = repo_root().join(CHART).join(CRD_FILE);
    let a = fs::read(&generated).unwrap_or_else(|e| panic!("{}: {e}", generated.display()));
    let b = fs::read(&in_chart).unwrap_or_else(|e| panic!("{}: {e}", in_chart.display()));
    assert!(
        a == b,
        "{} differs from {}: copy it (cp {CRD_FILE} {CHART}/{CRD_FILE}) and run scripts/render-manifests",
        in_chart.display(),
        generated.display()
    );

    // And helm ships it as-is with --include-crds.
    let docs = render(&["--include-crds"]);
    let crd = one(&docs, "CustomResourceDefinition");
    let expected: Value = serde_yaml::from_slice(&a).unwrap();
    assert_eq!(crd, &expected);
    assert_eq!(crd["metadata"]["name"], "macpauths.macp.io");
}

#[test]
fn install_manifests_match_a_fresh_render() {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/render-manifests"))
        .arg("--check")
        .current_dir(repo_root())
        .output()
        .expect("run scripts/render-manifests --check");
    assert!(
        out.status.success(),
        "config/install.yaml drifted from the chart: run scripts/render-manifests\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The committed file is the default, cluster-wide install including the CRD.
    let docs = parse_docs(&fs::read_to_string(repo_root().join("config/install.yaml")).unwrap());
    one(&docs, "CustomResourceDefinition");
    one(&docs, "ClusterRole");
    assert_eq!(namespace_of(one(&docs, "Deployment")), RELEASE_NS);
}

fn crd_schema() -> Value {
    let crd: Value =
        serde_yaml::from_str(&fs::read_to_string(repo_root().join(CRD_FILE)).unwrap()).unwrap();
    let versions = crd["spec"]["versions"].as_array().expect("CRD versions");
    let v1alpha1 = versions
        .iter()
        .find(|v| v["name"] == "v1alpha1")
        .expect("CRD serves v1alpha1");
    v1alpha1["schema"]["openAPIV3Schema"].clone()
}

/// Validation errors of `obj` against the CRD's OpenAPI schema (empty when valid).
/// The samples in config/samples are validated by operator/tests/crd.rs; here it
/// checks the MacpAuth that NOTES.txt tells users to paste.
fn crd_validation_errors(obj: &Value) -> Vec<String> {
    let validator = jsonschema::validator_for(&crd_schema()).expect("CRD schema compiles");
    validator
        .iter_errors(obj)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn namespace_scoped_values_sample_is_valid_chart_input() {
    // Rendering it at all proves the schema accepts it; lint covers the rest.
    let docs = render_namespaced();
    assert_eq!(one(&docs, "Deployment")["spec"]["replicas"], 2);
    assert_eq!(one(&docs, "PodDisruptionBudget")["spec"]["minAvailable"], 1);
}
