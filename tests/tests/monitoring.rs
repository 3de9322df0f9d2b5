//! The chart's monitoring: the PrometheusRule tested with the real
//! `promtool test rules` on synthetic series, both /metrics outputs checked
//! by `promtool check metrics`, the runbook links pointing at sections of
//! docs/operations.md, and every metric the alerts and the Grafana dashboard
//! query really exported by the operator or the token service.
//!
//! promtool comes from Debian's `prometheus` package (`scripts/install-tools`).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use macp_auth_e2e::helm::{Run, kind, one, render, repo_root, scratch_dir};
use macp_auth_operator::controller::State;
use macp_auth_operator::crd::{
    MacpAuthStatus, RotationOutcome, RotationPhase, RotationRecord, RotationSpec, RotationStatus,
    RotationTrigger,
};
use serde_json::Value;

const TEST_RUNBOOK: &str = "https://runbooks.test/operations.md";
const RULE_TESTS: &str = "tests/promtool/alerts.test.yaml";

/// The alerts the chart promises (docs/operations.md, "Alerts").
const ALERTS: [&str; 10] = [
    "MacpAuthRotationStuck",
    "MacpAuthRotationOverdue",
    "MacpAuthSigningKeyOld",
    "MacpAuthRotationVerifyFailures",
    "MacpAuthRotationRolledBack",
    "MacpAuthOperatorReconcileErrors",
    "MacpAuthOperatorNoLeader",
    "MacpAuthOperatorSeveralLeaders",
    "MacpAuthTokenService5xx",
    "MacpAuthMintLatencyHigh",
];

fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    found.expect("promtool not found on PATH: run scripts/install-tools")
}

fn promtool_run(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(promtool())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut input = child.stdin.take().expect("promtool stdin");
    if let Some(text) = stdin {
        input
            .write_all(text.as_bytes())
            .expect("write promtool stdin");
    }
    drop(input);
    Run::of(child.wait_with_output().expect("wait for promtool"))
}

fn render_monitoring(extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "--set",
        "prometheus.rules.enabled=true,prometheus.podMonitor.enabled=true,grafana.dashboard.enabled=true,metrics.serviceMonitor.enabled=true",
    ];
    args.extend_from_slice(extra);
    render(&args)
}

/// The rule groups of the rendered PrometheusRule, as a promtool rule file.
fn rule_groups(docs: &[Value]) -> Value {
    one(docs, "PrometheusRule")["spec"].clone()
}

fn rules(groups: &Value) -> Vec<&Value> {
    groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect()
}

fn alert_names(groups: &Value) -> BTreeSet<String> {
    rules(groups)
        .iter()
        .map(|r| r["alert"].as_str().expect("alert name").to_string())
        .collect()
}

fn dashboard(docs: &[Value]) -> Value {
    let cm = kind(docs, "ConfigMap")
        .into_iter()
        .find(|c| {
            c["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-dashboard"))
        })
        .expect("dashboard ConfigMap");
    let text = cm["data"]["macp-auth.json"]
        .as_str()
        .expect("dashboard JSON");
    serde_json::from_str(text).expect("dashboard is JSON")
}

#[test]
fn monitoring_objects_render_only_when_enabled() {
    let defaults = render(&[]);
    for k in ["PrometheusRule", "PodMonitor"] {
        assert!(kind(&defaults, k).is_empty(), "{k} rendered by default");
    }
    assert!(kind(&defaults, "ConfigMap").is_empty());

    let docs = render_monitoring(&["--set", "grafana.dashboard.namespace=monitoring"]);
    assert_eq!(
        alert_names(&rule_groups(&docs)),
        ALERTS.map(String::from).into()
    );
    let cm = one(&docs, "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    // The PodMonitor selects exactly the pods the operator labels, and names
    // each series after its MacpAuth.
    let pm = one(&docs, "PodMonitor");
    let labels = macp_auth_operator::resources::common_labels("x");
    for (k, v) in pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(labels.get(k).map(String::as_str), v.as_str(), "{k}");
    }
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "http");
    let relabel = &pm["spec"]["podMetricsEndpoints"][0]["relabelings"][0];
    assert_eq!(relabel["targetLabel"], "name");
    assert_eq!(
        relabel["sourceLabels"][0],
        "__meta_kubernetes_pod_label_app_kubernetes_io_instance"
    );
    // The per-MacpAuth `namespace` label survives the scrape of the operator.
    let sm = one(&docs, "ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["honorLabels"], true);
}

#[test]
fn alert_rules_pass_promtool_unit_tests() {
    let docs = render_monitoring(&[
        "--set",
        &format!("prometheus.rules.runbookUrl={TEST_RUNBOOK}"),
    ]);
    let dir = scratch_dir("promtool");
    let rules_file = dir.join("rules.yaml");
    fs::write(
        &rules_file,
        serde_yaml::to_string(&rule_groups(&docs)).expect("rules as YAML"),
    )
    .expect("write rules.yaml");
    let tests_file = dir.join("alerts.test.yaml");
    fs::copy(repo_root().join(RULE_TESTS), &tests_file).expect("copy the rule tests");

    let check = promtool_run(&["check", "rules", &rules_file.to_string_lossy()], None);
    assert!(
        check.ok,
        "promtool check rules:\n{}{}",
        check.stdout, check.stderr
    );
    let test = promtool_run(&["test", "rules", &tests_file.to_string_lossy()], None);
    assert!(
        test.ok && test.stdout.contains("SUCCESS"),
        "promtool test rules:\n{}{}",
        test.stdout,
        test.stderr
    );
}

#[test]
fn every_alert_is_tested_firing_and_not_firing() {
    let text = fs::read_to_string(repo_root().join(RULE_TESTS)).expect("read rule tests");
    let tests: Value = serde_yaml::from_str(&text).expect("rule tests parse");
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in tests["tests"].as_array().expect("tests") {
        for t in case["alert_rule_test"].as_array().expect("alert_rule_test") {
            let name = t["alertname"].as_str().expect("alertname").to_string();
            let expected = t["exp_alerts"].as_array().map_or(0, Vec::len);
            if expected > 0 {
                firing.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    for alert in ALERTS {
        assert!(firing.contains(alert), "{alert} has no case where it fires");
        assert!(
            quiet.contains(alert),
            "{alert} has no case where it stays quiet"
        );
    }
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_has_a_summary_a_description_and_a_runbook_section() {
    let docs = render_monitoring(&[]);
    let operations =
        fs::read_to_string(repo_root().join("docs/operations.md")).expect("read operations.md");
    let anchors: BTreeSet<String> = operations
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let chart: Value = serde_yaml::from_str(
        &fs::read_to_string(repo_root().join("charts/macp-auth-operator/Chart.yaml"))
            .expect("read Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    let docs_url = format!(
        "{}/blob/v{}/docs/operations.md#",
        chart["home"].as_str().expect("home"),
        chart["appVersion"].as_str().expect("appVersion")
    );
    for rule in rules(&rule_groups(&docs)) {
        let name = rule["alert"].as_str().expect("alert");
        let a = &rule["annotations"];
        for field in ["summary", "description"] {
            assert!(
                a[field].as_str().is_some_and(|s| s.len() > 20),
                "{name}: {field} missing or empty"
            );
        }
        assert!(
            ["warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity"
        );
        let url = a["runbook_url"].as_str().expect("runbook_url");
        let section = url
            .strip_prefix(&docs_url)
            .unwrap_or_else(|| panic!("{name}: runbook {url} is not under {docs_url}"));
        assert!(
            anchors.contains(section),
            "{name}: docs/operations.md has no section #{section}"
        );
        assert_eq!(section, name.to_lowercase(), "{name}: runbook section");
    }
}

/// The operator's /metrics with every family holding at least one series.
fn operator_metrics() -> String {
    let state = State::default();
    let m = &state.metrics;
    let t = |s: i64| {
        Utc.timestamp_opt(1_767_225_600 + s, 0)
            .single()
            .expect("time")
    };
    m.reconciled(Duration::from_millis(4));
    m.failed("Kube");
    m.wrote("secrets");
    let spec = RotationSpec {
        interval: Some("720h".into()),
        ..RotationSpec::default()
    };
    let status = MacpAuthStatus {
        rotation: Some(RotationStatus {
            phase: RotationPhase::Propagating,
            phase_since: Some(t(100)),
            wait_until: Some(t(400)),
            ..RotationStatus::default()
        }),
        last_rotation_time: Some(t(0)),
        history: vec![RotationRecord {
            trigger: RotationTrigger::Manual,
            request_id: None,
            old_kid: Some("a".into()),
            new_kid: Some("b".into()),
            started_at: t(10),
            finished_at: t(20),
            outcome: RotationOutcome::RolledBack,
            message: None,
        }],
        ..MacpAuthStatus::default()
    };
    m.observe_rotation("auth", "prod", &spec, &status, t(200));
    m.verify_failed("auth", "prod", 1);
    state.metrics.leader.set(1);
    state.render_metrics()
}

/// The token service's /metrics after one mint of each outcome.
fn service_metrics() -> String {
    use macp_auth_service::metrics::{Metrics, Outcome};
    let m = Metrics::new(macp_auth_service::keys::Alg::RS256, "kid-1", 2);
    m.record_mint(Outcome::issued, Duration::from_millis(2));
    m.record_mint(Outcome::signing_failed, Duration::from_millis(1));
    m.record_auth_failure(macp_auth_service::metrics::AuthFailure::missing);
    m.record_rate_limited();
    m.set_caller_tokens(1);
    m.record_caller_reload(true);
    m.encode().expect("encode service metrics")
}

/// What `/metrics` answers a client that does not ask for OpenMetrics
/// (promtool reads the Prometheus text format only).
fn served_as_text(openmetrics: String) -> String {
    let (content_type, body) = macp_auth_service::exposition::negotiate(None, openmetrics);
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    body
}

#[test]
fn operator_and_service_metrics_pass_promtool_check_metrics() {
    for (who, text) in [
        ("service", served_as_text(service_metrics())),
        ("operator", served_as_text(operator_metrics())),
    ] {
        let run = promtool_run(&["check", "metrics"], Some(&text));
        assert!(
            run.ok,
            "promtool check metrics on the {who}'s /metrics:\n{}{}\n--- input:\n{text}",
            run.stdout, run.stderr
        );
    }
}

/// Sample names (with `_total`, `_bucket`, ... suffixes) in an exposition.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(String::from)
        .collect()
}

/// Every `macp_...` metric name a PromQL expression mentions.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("macp_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn dashboard_queries(dash: &Value) -> Vec<String> {
    let mut queries: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets"))
        .map(|t| t["expr"].as_str().expect("expr").to_string())
        .collect();
    for var in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = var["definition"].as_str() {
            queries.push(q.to_string());
        }
    }
    queries
}

#[test]
fn dashboard_and_alerts_query_only_exported_metrics() {
    let exported: BTreeSet<String> = sample_names(&operator_metrics())
        .union(&sample_names(&service_metrics()))
        .cloned()
        .collect();
    let docs = render_monitoring(&[]);
    let dash = dashboard(&docs);
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for wanted in [
        "Rotation phase",
        "Signing key age",
        "Mints per second by outcome",
        "Mint latency",
        "Rotation verification failures",
    ] {
        assert!(
            titles.contains(&wanted),
            "no panel {wanted:?} in {titles:?}"
        );
    }
    let mut queries = dashboard_queries(&dash);
    let groups = rule_groups(&docs);
    queries.extend(
        rules(&groups)
            .iter()
            .map(|r| r["expr"].as_str().expect("expr").to_string()),
    );
    let mut checked = 0;
    for q in &queries {
        let names = metric_names(q);
        assert!(!names.is_empty(), "query names no macp metric: {q}");
        for name in names {
            assert!(
                exported.contains(&name),
                "{name} (in {q}) is not exported; exported: {exported:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} metric references checked");
}
