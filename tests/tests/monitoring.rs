//! The chart's monitoring: the PrometheusRule tested with the real
//! `promtool test rules` on synthetic series, both /metrics outputs checked
//! by `promtool check metrics`, the runbook links pointing at sections of
//! docs/operations.md, and every metric the alerts and the Grafana dashboard
//! query really exported by the operator or the token service.
//!
//! promtool comes from Debian's `prometheus` package (`scripts/install-tools`).

use std::collections::{BTreeMap, BTreeSet};
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
const ALERTS: [&str; 14] = [
    "MacpAuthRotationStuck",
    "MacpAuthRotationOverdue",
    "MacpAuthSigningKeyOld",
    "MacpAuthRotationVerifyFailures",
    "MacpAuthVerifiersNotPropagated",
    "MacpAuthRotationRolledBack",
    "MacpAuthOperatorReconcileErrors",
    "MacpAuthOperatorNoLeader",
    "MacpAuthOperatorSeveralLeaders",
    "MacpAuthTokenService5xx",
    "MacpAuthMintLatencyHigh",
    "MacpAuthVerifierCachesLonger",
    "MacpAuthCallerTokensDropped",
    "MacpAuthCallerTokensNone",
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
    m.propagation_timed_out("auth", "prod");
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
    m.set_jwks_max_age(300);
    m.record_jwks_not_modified();
    m.record_jwks_client(1, true);
    m.set_jwks_client_interval(Some(30.0));
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

/// Labels Prometheus gives every series of a target it scrapes through the
/// Prometheus Operator's ServiceMonitor (the operator) or PodMonitor (the
/// token services), before the monitors' own relabelings. An exported label
/// of the same name wins (the ServiceMonitor's `honorLabels`).
const TARGET_LABELS: [&str; 7] = [
    "namespace",
    "pod",
    "container",
    "endpoint",
    "service",
    "job",
    "instance",
];

/// The label names of each sample name in an exposition.
fn label_sets(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        for (name, labels) in selectors(line).into_iter().take(1) {
            out.entry(name).or_default().extend(labels);
        }
    }
    out
}

/// The `targetLabel`s of the relabelings of a monitor's endpoints.
fn relabel_targets(endpoints: &Value) -> BTreeSet<String> {
    endpoints
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["relabelings"].as_array().into_iter().flatten())
        .filter_map(|r| r["targetLabel"].as_str().map(String::from))
        .collect()
}

/// What a query can match on: for each sample name, the labels its binary
/// exports plus what the scrape adds (target labels and relabelings).
struct Schema(BTreeMap<String, BTreeSet<String>>);

impl Schema {
    fn new(operator: &str, service: &str, docs: &[Value]) -> Self {
        let scraped = |text: &str, relabeled: BTreeSet<String>| {
            label_sets(text).into_iter().map(move |(name, mut labels)| {
                labels.extend(TARGET_LABELS.map(String::from));
                labels.extend(relabeled.iter().cloned());
                (name, labels)
            })
        };
        let sm = one(docs, "ServiceMonitor");
        let pm = one(docs, "PodMonitor");
        let mut all: BTreeMap<String, BTreeSet<String>> =
            scraped(operator, relabel_targets(&sm["spec"]["endpoints"])).collect();
        all.extend(scraped(
            service,
            relabel_targets(&pm["spec"]["podMetricsEndpoints"]),
        ));
        Schema(all)
    }

    /// Problems of `label` on `metric` (where: the query, for the message).
    fn check(&self, metric: &str, label: &str, what: &str, problems: &mut Vec<String>) {
        match self.0.get(metric) {
            None => problems.push(format!("{what}: {metric} is not exported")),
            Some(labels) if !labels.contains(label) => problems.push(format!(
                "{what}: {metric} has no label {label:?} (it has {labels:?})"
            )),
            Some(_) => {}
        }
    }
}

/// Where an identifier starting at byte `i` of `s` ends.
fn ident_end(s: &str, i: usize) -> usize {
    s[i..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(s.len(), |n| i + n)
}

/// Byte offset of the `close` matching the `open` at `i`, skipping quoted strings.
fn matching(s: &str, i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (j, c) in s[i..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ if quoted => {}
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + j;
                }
            }
            _ => {}
        }
    }
    s.len()
}

/// Byte offsets of the `macp_...` metric names in a PromQL expression.
fn metric_positions(expr: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = expr[from..].find("macp_").map(|n| from + n) {
        let end = ident_end(expr, i);
        let standalone = expr[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if standalone {
            out.push((i, expr[i..end].to_string()));
        }
        from = end;
    }
    out
}

/// The vector selectors of a PromQL expression (or of a series line):
/// each metric and the label names of its matchers.
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    metric_positions(expr)
        .into_iter()
        .map(|(i, name)| {
            let after = i + name.len();
            let rest = &expr[after..];
            let labels = if rest.trim_start().starts_with('{') {
                let open = after + (rest.len() - rest.trim_start().len());
                let close = matching(expr, open, '{', '}');
                split_matchers(&expr[open + 1..close.min(expr.len())])
            } else {
                Vec::new()
            };
            (name, labels)
        })
        .collect()
}

/// The label names of `a="x", b=~"y"`.
fn split_matchers(body: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    let mut push = |part: &str| {
        let label: String = part
            .trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !label.is_empty() {
            labels.push(label);
        }
    };
    for (j, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                push(&body[start..j]);
                start = j + 1;
            }
            _ => {}
        }
    }
    push(&body[start..]);
    labels
}

/// Every label a PromQL expression relies on, and on which metrics it must
/// be: matchers on their selector's metric; `by`/`without` labels on every
/// metric of the aggregated argument; `on`/`ignoring` labels on both
/// operands (their nearest metrics); `group_left`/`group_right` labels on the
/// "one" side; `label_values(metric, label)` on its metric.
fn label_uses(expr: &str) -> Vec<(String, String)> {
    let mut uses = Vec::new();
    for (metric, labels) in selectors(expr) {
        uses.extend(labels.into_iter().map(|l| (metric.clone(), l)));
    }
    let metrics = metric_positions(expr);
    let before = |i: usize| {
        metrics
            .iter()
            .rev()
            .find(|(p, _)| *p < i)
            .map(|(_, m)| m.clone())
    };
    let after = |i: usize| metrics.iter().find(|(p, _)| *p > i).map(|(_, m)| m.clone());
    let mut i = 0;
    while i < expr.len() {
        if !expr[i..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            i += expr[i..].chars().next().map_or(1, char::len_utf8);
            continue;
        }
        let end = ident_end(expr, i);
        let word = &expr[i..end];
        let rest = expr[end..].trim_start();
        let open = expr.len() - rest.len();
        let clause = [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
            "label_values",
        ]
        .contains(&word)
            && rest.starts_with('(');
        if !clause {
            i = end;
            continue;
        }
        let close = matching(expr, open, '(', ')');
        let inner = &expr[open + 1..close.min(expr.len())];
        let list: Vec<String> = inner
            .split(',')
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        let mut on = |metric: Option<String>, labels: &[String]| {
            if let Some(m) = metric {
                uses.extend(labels.iter().map(|l| (m.clone(), l.clone())));
            }
        };
        match word {
            "by" | "without" => {
                let arg = expr[close + 1..].trim_start();
                if arg.starts_with('(') {
                    let a = expr.len() - arg.len();
                    let b = matching(expr, a, '(', ')');
                    for (_, m) in metric_positions(&expr[a..b]) {
                        on(Some(m), &list);
                    }
                }
            }
            "on" | "ignoring" => {
                on(before(i), &list);
                on(after(close), &list);
            }
            "group_left" => on(after(close), &list),
            "group_right" => on(before(i), &list),
            _ => {
                // label_values(metric{...}, label): the last argument.
                let label = inner.rsplit(',').next().unwrap_or("").trim().to_string();
                if let Some((_, m)) = metric_positions(inner).into_iter().next() {
                    on(Some(m), &[label]);
                }
            }
        }
        // `label_values`' own selector is inside: keep scanning it.
        i = if word == "label_values" {
            open + 1
        } else {
            close + 1
        };
    }
    uses
}

/// The `{{ $labels.x }}` an alert's annotations print.
fn annotation_labels(rule: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for text in rule["annotations"].as_object().into_iter().flatten() {
        let mut rest = text.1.as_str().unwrap_or("");
        while let Some(i) = rest.find("$labels.") {
            let tail = &rest[i + "$labels.".len()..];
            let end = ident_end(tail, 0);
            out.push(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    out
}

/// Every label the alerts, the dashboard and the promtool input series use,
/// checked against `schema`; the problems, and how many uses were checked.
fn label_problems(schema: &Schema, docs: &[Value]) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let mut checked = 0;
    let groups = rule_groups(docs);
    let mut queries: Vec<(String, String)> = rules(&groups)
        .iter()
        .map(|r| {
            (
                format!("alert {}", r["alert"].as_str().unwrap_or("?")),
                r["expr"].as_str().expect("expr").to_string(),
            )
        })
        .collect();
    queries.extend(
        dashboard_queries(&dashboard(docs))
            .into_iter()
            .map(|q| ("dashboard".to_string(), q)),
    );
    for (what, q) in &queries {
        for (metric, label) in label_uses(q) {
            schema.check(&metric, &label, &format!("{what}: {q}"), &mut problems);
            checked += 1;
        }
    }
    // What an alert prints must be a label of its result: at least one of
    // the metrics it is computed from carries it.
    for rule in rules(&groups) {
        let name = rule["alert"].as_str().unwrap_or("?");
        let expr = rule["expr"].as_str().unwrap_or("");
        let metrics: Vec<String> = metric_positions(expr).into_iter().map(|(_, m)| m).collect();
        for label in annotation_labels(rule) {
            checked += 1;
            let carried = metrics
                .iter()
                .any(|m| schema.0.get(m).is_some_and(|ls| ls.contains(&label)));
            if !carried {
                problems.push(format!(
                    "alert {name}: prints $labels.{label}, which none of {metrics:?} has"
                ));
            }
        }
    }
    // The promtool input series stand for what the binaries export: each
    // of their labels must be one a scrape really gives that metric.
    let text = fs::read_to_string(repo_root().join(RULE_TESTS)).expect("read rule tests");
    let tests: Value = serde_yaml::from_str(&text).expect("rule tests parse");
    for case in tests["tests"].as_array().expect("tests") {
        for s in case["input_series"].as_array().into_iter().flatten() {
            let series = s["series"].as_str().expect("series");
            for (metric, labels) in selectors(series) {
                if labels.is_empty() {
                    schema.check(&metric, "__name__", series, &mut problems);
                }
                for label in labels {
                    schema.check(
                        &metric,
                        &label,
                        &format!("{RULE_TESTS}: {series}"),
                        &mut problems,
                    );
                    checked += 1;
                }
            }
        }
    }
    (problems, checked)
}

#[test]
fn alerts_dashboard_and_rule_tests_match_only_exported_labels() {
    let docs = render_monitoring(&[]);
    let schema = Schema::new(&operator_metrics(), &service_metrics(), &docs);
    let (problems, checked) = label_problems(&schema, &docs);
    assert!(
        problems.is_empty(),
        "labels the binaries do not export:\n{}",
        problems.join("\n")
    );
    // The alerts' and the dashboard queries' matchers and groupings, the
    // annotations' labels and the input series' labels.
    eprintln!("label uses checked: {checked}");
    assert!(checked > 150, "only {checked} label uses checked");
}

/// The label check itself: a label renamed in either binary's output fails
/// it, in the alerts, the dashboard and the promtool input series alike.
#[test]
fn a_renamed_exported_label_fails_the_label_check() {
    let docs = render_monitoring(&[]);
    let operator = operator_metrics().replace("name=\"", "macpauth=\"");
    let schema = Schema::new(&operator, &service_metrics(), &docs);
    let (problems, _) = label_problems(&schema, &docs);
    let text = problems.join("\n");
    for wanted in [
        "alert MacpAuthRotationStuck",
        "dashboard",
        RULE_TESTS,
        "prints $labels.name",
    ] {
        assert!(
            text.contains(wanted),
            "renaming `name` on the operator went unseen in {wanted}:\n{text}"
        );
    }
    let service = service_metrics().replace("outcome=\"", "result=\"");
    let schema = Schema::new(&operator_metrics(), &service, &docs);
    let (problems, _) = label_problems(&schema, &docs);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("alert MacpAuthTokenService5xx") && p.contains("\"outcome\"")),
        "renaming `outcome` on the service went unseen: {problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(RULE_TESTS) && p.contains("\"outcome\"")),
        "renaming `outcome` went unseen in the input series: {problems:#?}"
    );
}

#[test]
fn promql_label_uses_are_found() {
    let uses = label_uses(
        r#"sum by (namespace, le) (rate(macp_a_bucket{x=~"a,b", y!="}"}[5m])) * on (namespace) group_left (phase) (macp_b == 1)"#,
    );
    let got: BTreeSet<(String, String)> = uses.into_iter().collect();
    let want: BTreeSet<(String, String)> = [
        ("macp_a_bucket", "x"),
        ("macp_a_bucket", "y"),
        ("macp_a_bucket", "namespace"),
        ("macp_a_bucket", "le"),
        ("macp_b", "namespace"),
        ("macp_b", "phase"),
    ]
    .into_iter()
    .map(|(m, l)| (m.to_string(), l.to_string()))
    .collect();
    assert_eq!(got, want);
    let uses = label_uses(r#"label_values(macp_c{namespace=~"$namespace"}, name)"#);
    assert_eq!(
        uses.into_iter().collect::<BTreeSet<_>>(),
        [("macp_c", "namespace"), ("macp_c", "name")]
            .into_iter()
            .map(|(m, l)| (m.to_string(), l.to_string()))
            .collect()
    );
}
