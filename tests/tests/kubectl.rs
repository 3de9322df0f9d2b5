//! The real kubectl (v1.35) and helm (v4) binaries of `scripts/install-tools`
//! against the in-process fake API server: what they request (aggregated
//! discovery, OpenAPI v3, Tables, strategic merge patches, protobuf bodies,
//! watches with field selectors, pod logs) must be served the way a real
//! server serves it, or their output shows it.
//!
//! Each test starts its own server in strict-namespace mode, writes a
//! kubeconfig into a directory of its own and runs the binaries with that
//! directory as their home and cache, so nothing outside it is read or
//! written. A missing binary fails the test with a message naming
//! `scripts/install-tools`.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use macp_auth_e2e::apiserver::{FakeApiServer, LogOptions, PodLogs};
use macp_auth_e2e::helm::{CHART, Run, repo_root, tool_path};
use macp_auth_e2e::wait::{Displayed, wait_until};
use serde_json::{Value, json};

const CRD_FILE: &str = "crds/macpauths.macp.io.yaml";
const SAMPLE: &str = "config/samples/minimal.yaml";

/// A fake API server with a kubeconfig for it.
struct Kube {
    server: FakeApiServer,
    home: PathBuf,
}

impl Kube {
    /// Strict namespaces (a missing one is a 404, as on a real cluster), the
    /// MacpAuth CRD stored as an object (printer columns, schema).
    async fn start() -> Self {
        let server = FakeApiServer::start().await.expect("start fake API server");
        server.set_strict_namespaces(true);
        let home = std::env::temp_dir().join(format!(
            "macp-kubectl-tests/{}-{}",
            std::process::id(),
            server.addr().port()
        ));
        std::fs::create_dir_all(&home).expect("create the test's home directory");
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: admin\n    namespace: default\n\
             current-context: fake\nusers:\n- name: admin\n  user: {{}}\n",
            server.url()
        );
        std::fs::write(home.join("kubeconfig"), config).expect("write kubeconfig");
        Kube { server, home }
    }

    fn with_crd(self) -> Self {
        let crd: Value =
            serde_yaml::from_str(&std::fs::read_to_string(repo_root().join(CRD_FILE)).unwrap())
                .unwrap();
        self.server
            .create("apiextensions.k8s.io", "customresourcedefinitions", crd)
            .expect("store the CRD");
        self
    }

    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let mut c = Command::new(tool_path(tool));
        c.args(args)
            .current_dir(repo_root())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("KUBECONFIG", self.home.join("kubeconfig"))
            .env("KUBECACHEDIR", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("helm-config"))
            .env("HELM_CACHE_HOME", self.home.join("helm-cache"))
            .env("HELM_DATA_HOME", self.home.join("helm-data"));
        c
    }

    /// Runs a tool to completion off the runtime (the server lives on it).
    async fn run(&self, tool: &str, args: &[&str]) -> Run {
        let mut c = self.command(tool, args);
        let shown = format!("{tool} {}", args.join(" "));
        tokio::task::spawn_blocking(move || Run::of(c.output().expect("run tool")))
            .await
            .unwrap_or_else(|e| panic!("{shown}: {e}"))
    }

    async fn kubectl(&self, args: &[&str]) -> Run {
        self.run("kubectl", args).await
    }

    /// kubectl that must succeed; its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let r = self.kubectl(args).await;
        assert!(
            r.ok,
            "kubectl {} failed:\n{}\n{}",
            args.join(" "),
            r.stdout,
            r.stderr
        );
        r.stdout
    }

    async fn helm(&self, args: &[&str]) -> Run {
        self.run("helm", args).await
    }

    /// Starts a long-running kubectl (watch, wait); stdout is piped.
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command("kubectl", args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl")
    }

    fn write(&self, name: &str, contents: &str) -> String {
        let p = self.home.join(name);
        std::fs::write(&p, contents).expect("write manifest");
        p.to_string_lossy().into_owned()
    }

    fn create_ns(&self, ns: &str) {
        self.server
            .create(
                "",
                "namespaces",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .expect("create namespace");
    }
}

impl Drop for Kube {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// Waits for a spawned kubectl and returns what it printed.
async fn finish(child: std::process::Child) -> Run {
    tokio::task::spawn_blocking(move || Run::of(child.wait_with_output().expect("wait kubectl")))
        .await
        .expect("join kubectl")
}

/// A long-running kubectl whose stdout lines arrive as it prints them, so a
/// test changes the store only once kubectl is watching (no fixed sleeps).
struct Lines {
    child: std::process::Child,
    rx: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn start(k: &Kube, args: &[&str]) -> Self {
        let mut child = k.spawn(args);
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits (up to 30 s) for a line containing `needle`.
    async fn until(&mut self, needle: &str) {
        wait_until(
            format!("kubectl to print {needle:?}"),
            Duration::from_secs(30),
            Duration::from_millis(50),
            async || {
                self.seen.extend(self.rx.try_iter());
                if self.seen.iter().any(|l| l.contains(needle)) {
                    ControlFlow::Break(())
                } else {
                    // Everything it printed so far.
                    ControlFlow::Continue(Displayed(self.seen.join("\n")))
                }
            },
        )
        .await
    }

    /// Stops kubectl; everything it printed.
    fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.seen.extend(self.rx.try_iter());
        self.seen
    }
}

fn lines_with<'a>(out: &'a str, needle: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.contains(needle)).collect()
}

/// The columns of a printed table row, split on runs of spaces.
fn cells(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

fn ready_status(phase: &str) -> Value {
    json!({
        "conditions": [{"type": "Ready", "status": "True", "reason": "Serving",
                        "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "rotation": {"phase": phase},
        "activeKid": "kid-1",
    })
}

fn mark_ready(k: &Kube, ns: &str, name: &str, phase: &str) {
    k.server
        .modify("macp.io", "macpauths", Some(ns), name, |o| {
            o["status"] = ready_status(phase);
        })
        .expect("set MacpAuth status");
}

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1
        env:
        - {name: A, value: "1"}
        - {name: B, value: "2"}
        ports: [{containerPort: 80}]
      - name: side
        image: busybox:1
"#;

#[tokio::test(flavor = "multi_thread")]
async fn api_resources_and_explain_read_discovery_and_openapi() {
    let k = Kube::start().await.with_crd();
    let out = k.ok(&["api-resources"]).await;
    let row = lines_with(&out, "macpauths");
    assert_eq!(row.len(), 1, "{out}");
    assert_eq!(
        cells(row[0]),
        [
            "macpauths",
            "macpauth,macp",
            "macp.io/v1alpha1",
            "true",
            "MacpAuth"
        ]
    );
    assert!(
        lines_with(&out, "deployments")[0].contains("deploy"),
        "{out}"
    );

    // kubectl asks for aggregated discovery first: with it, no per-group
    // resource lists are fetched.
    // (A cache of its own: the run above cached discovery.)
    let cache = format!("--cache-dir={}", k.home.join("fresh-cache").display());
    let r = k.kubectl(&["get", "deploy", "-v=6", &cache]).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains("/api?timeout=32s\" status=\"200 OK\""),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("/apis/apps/v1?timeout") && !r.stderr.contains("/api/v1?timeout"),
        "kubectl fell back to legacy discovery:\n{}",
        r.stderr
    );

    assert_eq!(k.ok(&["get", "--raw", "/readyz"]).await, "ok");
    let out = k.ok(&["version", "-o", "json"]).await;
    assert!(
        out.contains("\"gitVersion\": \"v1.33.0-macp-fake\""),
        "{out}"
    );
    let out = k.ok(&["explain", "macpauth.spec.rotation"]).await;
    assert!(out.contains("KIND:       MacpAuth"), "{out}");
    assert!(out.contains("interval\t<string>"), "{out}");
    assert!(out.contains("How often to rotate"), "{out}");
    let out = k
        .ok(&["explain", "deployment.spec.template.spec.containers.env"])
        .await;
    assert!(out.contains("FIELD: env <[]EnvVar>"), "{out}");
    assert!(out.contains("valueFrom\t<EnvVarSource>"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_prints_printer_columns_and_the_built_in_tables() {
    let k = Kube::start().await.with_crd();
    k.create_ns("macp");
    k.ok(&["apply", "-f", SAMPLE]).await;
    mark_ready(&k, "macp", "auth", "Idle");
    let out = k.ok(&["get", "macpauth", "-n", "macp"]).await;
    let mut lines = out.lines();
    assert_eq!(
        cells(lines.next().unwrap_or_default()),
        [
            "NAME",
            "READY",
            "PHASE",
            "ACTIVE KID",
            "LAST ROTATION",
            "AGE"
        ],
        "{out}"
    );
    let row = cells(lines.next().unwrap_or_default());
    assert_eq!(&row[..4], ["auth", "True", "Idle", "kid-1"], "{out}");
    // `-o wide` adds the standby and whether it is propagated.
    k.server
        .modify("macp.io", "macpauths", Some("macp"), "auth", |o| {
            o["status"]["standby"] = json!({"kid": "kid-2", "propagated": true});
        })
        .expect("set the standby");
    let wide = k.ok(&["get", "macpauth", "-n", "macp", "-o", "wide"]).await;
    let mut wide_lines = wide.lines();
    let header = cells(wide_lines.next().unwrap_or_default());
    let row = cells(wide_lines.next().unwrap_or_default());
    let at = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name}: {wide}"))
    };
    assert_eq!(
        (
            row[at("STANDBY")].as_str(),
            row[at("STANDBY PROPAGATED")].as_str()
        ),
        ("kid-2", "true"),
        "{wide}"
    );
    // The CRD's short name and category: `kubectl get macp` lists them too.
    let short = k.ok(&["get", "macp", "-n", "macp", "--no-headers"]).await;
    assert_eq!(
        cells(short.lines().next().unwrap_or_default())[..2],
        ["auth", "True"],
        "{short}"
    );

    k.server
        .create(
            "apps",
            "deployments",
            serde_yaml::from_str(DEPLOYMENT).unwrap(),
        )
        .unwrap();
    k.server
        .modify("apps", "deployments", Some("default"), "web", |d| {
            d["status"] = json!({"replicas": 2, "readyReplicas": 1, "updatedReplicas": 2, "availableReplicas": 1});
        })
        .unwrap();
    let out = k.ok(&["get", "deploy"]).await;
    assert_eq!(
        cells(out.lines().next().unwrap_or_default()),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert_eq!(
        &cells(out.lines().nth(1).unwrap_or_default())[..4],
        ["web", "1/2", "2", "1"]
    );
    let out = k.ok(&["get", "deploy", "-o", "wide"]).await;
    assert!(
        out.contains("nginx:1,busybox:1") && out.contains("app=web"),
        "{out}"
    );

    k.server
        .create(
            "",
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1"}], "nodeName": "sim"},
                "status": {"phase": "Running", "podIP": "127.0.0.7",
                           "containerStatuses": [{"name": "web", "ready": true, "restartCount": 3,
                               "image": "nginx:1", "imageID": "", "state": {"running": {}}}]}}),
        )
        .unwrap();
    let out = k.ok(&["get", "pods", "-o", "wide"]).await;
    assert_eq!(
        &cells(out.lines().next().unwrap_or_default())[..7],
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    );
    let row = cells(out.lines().nth(1).unwrap_or_default());
    assert_eq!(&row[..4], ["web-1", "1/1", "Running", "3"], "{out}");
    assert_eq!(&row[5..7], ["127.0.0.7", "sim"], "{out}");

    k.server
        .create(
            "",
            "secrets",
            json!({"metadata": {"name": "keys", "namespace": "default"}, "data": {"a": "eA==", "b": "eQ=="}}),
        )
        .unwrap();
    // kubectl's typed client sends this Secret as protobuf.
    k.ok(&[
        "create",
        "secret",
        "generic",
        "literal",
        "--from-literal=k=v",
    ])
    .await;
    let out = k.ok(&["get", "secret", "literal", "--no-headers"]).await;
    assert_eq!(&cells(&out)[..3], ["literal", "Opaque", "1"], "{out}");
    let out = k.ok(&["get", "secrets"]).await;
    assert_eq!(
        &cells(out.lines().nth(1).unwrap_or_default())[..3],
        ["keys", "Opaque", "2"]
    );

    // Client-side apply of a changed MacpAuth: a merge patch (kubectl has no
    // compiled-in type for it) that keeps the status the operator wrote.
    let changed = std::fs::read_to_string(repo_root().join(SAMPLE))
        .unwrap()
        .replace("spec: {}", "spec: {replicas: 3}");
    let changed = k.write("changed.yaml", &changed);
    let out = k.ok(&["apply", "-f", &changed]).await;
    assert!(out.contains("macpauth.macp.io/auth configured"), "{out}");
    let stored = k
        .server
        .get("macp.io", "macpauths", Some("macp"), "auth")
        .unwrap();
    assert_eq!(stored["spec"]["replicas"], 3);
    assert_eq!(stored["status"]["activeKid"], "kid-1");
    let out = k
        .ok(&[
            "get",
            "macpauth",
            "auth",
            "-n",
            "macp",
            "-o",
            "jsonpath={.status.activeKid}",
        ])
        .await;
    assert_eq!(out, "kid-1");
    let out = k
        .ok(&["get", "macpauth", "auth", "-n", "macp", "-o", "yaml"])
        .await;
    assert!(
        out.contains("kind: MacpAuth") && out.contains("activeKid: kid-1"),
        "{out}"
    );
    let out = k.ok(&["get", "ns"]).await;
    assert!(
        lines_with(&out, "macp")[0].contains("Active"),
        "namespaces are Active:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_side_apply_merges_keyed_lists_by_their_merge_keys() {
    let k = Kube::start().await;
    let first = k.write("web.yaml", DEPLOYMENT);
    assert!(
        k.ok(&["apply", "-f", &first])
            .await
            .contains("deployment.apps/web created")
    );

    // The second apply drops env A, changes one image and switches strategy:
    // kubectl sends a strategic merge patch with `$setElementOrder`, a
    // `$patch: delete` for A and `$retainKeys` for the strategy.
    let second = DEPLOYMENT
        .replace("        - {name: A, value: \"1\"}\n", "")
        .replace("nginx:1", "nginx:2")
        .replace(
            "    type: RollingUpdate\n    rollingUpdate: {maxSurge: 1}\n",
            "    type: Recreate\n",
        );
    let second = k.write("web2.yaml", &second);
    assert!(
        k.ok(&["apply", "-f", &second])
            .await
            .contains("deployment.apps/web configured")
    );
    let d = k
        .server
        .get("apps", "deployments", Some("default"), "web")
        .unwrap();
    let containers = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().map(Vec::len), Some(2), "{d:#}");
    assert_eq!(containers[0]["image"], "nginx:2");
    assert_eq!(containers[0]["env"], json!([{"name": "B", "value": "2"}]));
    assert_eq!(containers[1]["name"], "side");
    assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
    assert_eq!(d["metadata"]["generation"], 2);

    // A field another writer added survives the apply (a merge, not a replace).
    k.server
        .modify("apps", "deployments", Some("default"), "web", |d| {
            d["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "INJECTED", "value": "x"}));
        })
        .unwrap();
    let third = std::fs::read_to_string(&second)
        .unwrap()
        .replace("nginx:2", "nginx:3");
    let third = k.write("web3.yaml", &third);
    k.ok(&["apply", "-f", &third]).await;
    let d = k
        .server
        .get("apps", "deployments", Some("default"), "web")
        .unwrap();
    let env = &d["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(
        env,
        &json!([{"name": "B", "value": "2"}, {"name": "INJECTED", "value": "x"}])
    );
    let out = k
        .ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await;
    assert_eq!(out, "nginx:3");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_side_apply_dry_run_annotate_label_and_delete() {
    let k = Kube::start().await.with_crd();
    k.create_ns("macp");
    let out = k.ok(&["apply", "--server-side", "-f", SAMPLE]).await;
    assert!(
        out.contains("macpauth.macp.io/auth serverside-applied"),
        "{out}"
    );
    let changed = std::fs::read_to_string(repo_root().join(SAMPLE))
        .unwrap()
        .replace("spec: {}", "spec: {replicas: 3}");
    let changed = k.write("changed.yaml", &changed);
    let out = k
        .ok(&["apply", "--server-side", "--dry-run=server", "-f", &changed])
        .await;
    assert!(out.contains("(server dry run)"), "{out}");
    let stored = k
        .server
        .get("macp.io", "macpauths", Some("macp"), "auth")
        .unwrap();
    assert!(
        stored["spec"].get("replicas").is_none(),
        "a dry run wrote: {stored:#}"
    );
    // `kubectl diff` is a dry-run apply: the change, and no new resourceVersion.
    let r = k.kubectl(&["diff", "-f", &changed]).await;
    assert!(
        r.stdout.contains("+  replicas: 3"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(!r.stdout.contains("+  resourceVersion"), "{}", r.stdout);
    k.ok(&["apply", "--server-side", "-f", &changed]).await;
    let stored = k
        .server
        .get("macp.io", "macpauths", Some("macp"), "auth")
        .unwrap();
    assert_eq!(stored["spec"]["replicas"], 3);
    let managers: Vec<&str> = stored["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(managers, ["kubectl"], "{stored:#}");

    k.ok(&[
        "annotate",
        "macpauth",
        "auth",
        "-n",
        "macp",
        "macp.io/rotate=1",
    ])
    .await;
    k.ok(&["label", "macpauth", "auth", "-n", "macp", "team=platform"])
        .await;
    let stored = k
        .server
        .get("macp.io", "macpauths", Some("macp"), "auth")
        .unwrap();
    assert_eq!(stored["metadata"]["annotations"]["macp.io/rotate"], "1");
    assert_eq!(stored["metadata"]["labels"]["team"], "platform");
    let out = k
        .ok(&[
            "get",
            "macpauth",
            "-n",
            "macp",
            "-l",
            "team=platform",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(out.trim(), "macpauth.macp.io/auth");

    // kubectl leaves validation to the server (fieldValidation=Strict): a
    // typo is the real strict decoding error, for a CRD and a built-in type.
    let typo = k.write(
        "typo.yaml",
        &std::fs::read_to_string(&changed)
            .unwrap()
            .replace("replicas", "replcas"),
    );
    let r = k.kubectl(&["apply", "-f", &typo]).await;
    assert!(!r.ok, "{}", r.stdout);
    assert!(
        r.stderr.contains("MacpAuth in version \"v1alpha1\" cannot be handled as a MacpAuth: strict decoding error: unknown field \"spec.replcas\""),
        "{}",
        r.stderr
    );
    let typo = k.write(
        "typo-deploy.yaml",
        &DEPLOYMENT.replace("containerPort", "containerPrt"),
    );
    let r = k.kubectl(&["apply", "--server-side", "-f", &typo]).await;
    assert!(
        !r.ok && r.stderr.contains("strict decoding error: unknown field \"spec.template.spec.containers[0].ports[0].containerPrt\""),
        "{}",
        r.stderr
    );
    let r = k.kubectl(&["apply", "--validate=warn", "-f", &typo]).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "Warning: unknown field \"spec.template.spec.containers[0].ports[0].containerPrt\""
        ),
        "{}",
        r.stderr
    );

    let out = k.ok(&["delete", "macpauth", "auth", "-n", "macp"]).await;
    assert!(out.contains("macpauth.macp.io \"auth\" deleted"), "{out}");
    assert!(
        k.server
            .get("macp.io", "macpauths", Some("macp"), "auth")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn namespaces_must_exist_and_take_their_contents_with_them() {
    let k = Kube::start().await.with_crd();
    let r = k.kubectl(&["apply", "-f", SAMPLE]).await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("namespaces \"macp\" not found"),
        "{}",
        r.stderr
    );
    let out = k.ok(&["create", "namespace", "macp"]).await;
    assert!(out.contains("namespace/macp created"), "{out}");
    k.ok(&["apply", "-f", SAMPLE]).await;
    assert!(
        k.server
            .get("macp.io", "macpauths", Some("macp"), "auth")
            .is_some()
    );
    k.ok(&["delete", "namespace", "macp"]).await;
    assert!(
        k.server
            .get("macp.io", "macpauths", Some("macp"), "auth")
            .is_none()
    );
    let out = k.ok(&["get", "ns", "-o", "name"]).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "namespace/default",
            "namespace/kube-public",
            "namespace/kube-system"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn describe_lists_the_operators_events_and_get_events_shows_them() {
    let k = Kube::start().await.with_crd();
    k.create_ns("macp");
    k.ok(&["apply", "-f", SAMPLE]).await;
    let auth = k
        .server
        .get("macp.io", "macpauths", Some("macp"), "auth")
        .unwrap();
    // What the operator does: kube's Recorder writes events.k8s.io/v1 Events.
    let recorder = kube::runtime::events::Recorder::new(
        k.server.client(),
        kube::runtime::events::Reporter {
            controller: "macp-auth-operator".into(),
            instance: Some("op-0".into()),
        },
    );
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("macp.io/v1alpha1".into()),
        kind: Some("MacpAuth".into()),
        name: Some("auth".into()),
        namespace: Some("macp".into()),
        uid: auth["metadata"]["uid"].as_str().map(str::to_string),
        ..Default::default()
    };
    recorder
        .publish(
            &kube::runtime::events::Event {
                type_: kube::runtime::events::EventType::Normal,
                reason: "KeyGenerated".into(),
                note: Some("generated signing key kid-1".into()),
                action: "Reconcile".into(),
                secondary: None,
            },
            &reference,
        )
        .await
        .expect("publish event");
    let out = k.ok(&["describe", "macpauth", "auth", "-n", "macp"]).await;
    let events = out.split("Events:").nth(1).unwrap_or_default();
    let row = lines_with(events, "KeyGenerated");
    assert_eq!(row.len(), 1, "{out}");
    let row = cells(row[0]);
    assert_eq!(row[0], "Normal");
    assert_eq!(row[3], "macp-auth-operator");
    assert_eq!(row[4], "generated signing key kid-1");

    let out = k.ok(&["get", "events", "-n", "macp"]).await;
    assert!(
        lines_with(&out, "KeyGenerated")[0].contains("macpauth/auth"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_and_watch_see_status_changes() {
    let k = Kube::start().await.with_crd();
    k.create_ns("macp");
    k.ok(&["apply", "-f", SAMPLE]).await;
    let mut watch = Lines::start(&k, &["get", "macpauth", "-n", "macp", "-w"]);
    watch.until("auth").await;
    let ready = k.spawn(&[
        "wait",
        "macpauth/auth",
        "-n",
        "macp",
        "--for=condition=Ready",
        "--timeout=30s",
    ]);
    let phase = k.spawn(&[
        "wait",
        "macpauth/auth",
        "-n",
        "macp",
        "--for=jsonpath={.status.rotation.phase}=Idle",
        "--timeout=30s",
    ]);
    mark_ready(&k, "macp", "auth", "Idle");
    for (what, child) in [("condition", ready), ("jsonpath", phase)] {
        let r = finish(child).await;
        assert!(r.ok, "wait --for={what}: {}\n{}", r.stdout, r.stderr);
        assert!(
            r.stdout.contains("macpauth.macp.io/auth condition met"),
            "{}",
            r.stdout
        );
    }
    watch.until("kid-1").await;
    let printed = watch.stop();
    let rows: Vec<&String> = printed.iter().filter(|l| l.contains("auth")).collect();
    assert!(rows.len() >= 2, "a watch row per change:\n{printed:?}");
    assert_eq!(
        cells(&printed[0])[..3],
        ["NAME", "READY", "PHASE"],
        "{printed:?}"
    );
    let last = cells(rows[rows.len() - 1]);
    assert_eq!(&last[..4], ["auth", "True", "Idle", "kid-1"], "{printed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rollout_status_follows_the_deployment_status() {
    let k = Kube::start().await;
    k.server
        .create(
            "apps",
            "deployments",
            serde_yaml::from_str(DEPLOYMENT).unwrap(),
        )
        .unwrap();
    let mut rollout = Lines::start(
        &k,
        &["rollout", "status", "deployment/web", "--timeout=30s"],
    );
    rollout
        .until("Waiting for deployment spec update to be observed")
        .await;
    k.server
        .modify("apps", "deployments", Some("default"), "web", |d| {
            d["status"] = json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 1,
                                 "readyReplicas": 1, "availableReplicas": 1});
        })
        .unwrap();
    rollout
        .until("Waiting for deployment \"web\" rollout to finish: 1 out of 2 new replicas have been updated...")
        .await;
    k.server
        .modify("apps", "deployments", Some("default"), "web", |d| {
            d["status"] = json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                                 "readyReplicas": 2, "availableReplicas": 2});
        })
        .unwrap();
    rollout
        .until("deployment \"web\" successfully rolled out")
        .await;
    rollout.stop();

    // `kubectl scale` writes the scale subresource; `rollout restart` patches
    // the template (a new generation).
    let out = k.ok(&["scale", "deployment/web", "--replicas=4"]).await;
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    let d = k
        .server
        .get("apps", "deployments", Some("default"), "web")
        .unwrap();
    assert_eq!(d["spec"]["replicas"], 4);
    k.ok(&["rollout", "restart", "deployment/web"]).await;
    let d = k
        .server
        .get("apps", "deployments", Some("default"), "web")
        .unwrap();
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{d:#}"
    );
    assert_eq!(d["metadata"]["generation"], 3);
}

/// A fixed log per pod, as the simulated kubelet would keep the output.
/// The output so far; the test appends to it to see `logs -f` follow.
struct FakeLogs(std::sync::Mutex<Vec<u8>>);

impl PodLogs for FakeLogs {
    fn logs(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        _: &LogOptions,
    ) -> Option<Vec<u8>> {
        (namespace == "default" && pod == "web-1" && container.is_none_or(|c| c == "web"))
            .then(|| self.0.lock().unwrap().clone())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_come_from_the_pod_log_hook() {
    let k = Kube::start().await;
    let logs = Arc::new(FakeLogs(std::sync::Mutex::new(
        b"line 1\nline 2\nline 3\n".to_vec(),
    )));
    k.server.set_pod_logs(logs.clone());
    k.server
        .create(
            "apps",
            "deployments",
            serde_yaml::from_str(DEPLOYMENT).unwrap(),
        )
        .unwrap();
    k.server
        .create(
            "",
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1"}]},
                "status": {"phase": "Running"}}),
        )
        .unwrap();
    assert_eq!(k.ok(&["logs", "web-1"]).await, "line 1\nline 2\nline 3\n");
    assert_eq!(k.ok(&["logs", "web-1", "--tail=1"]).await, "line 3\n");
    assert_eq!(
        k.ok(&["logs", "deploy/web"]).await,
        "line 1\nline 2\nline 3\n"
    );
    let r = k.kubectl(&["logs", "web-2"]).await;
    assert!(
        !r.ok && r.stderr.contains("pods \"web-2\" not found"),
        "{}",
        r.stderr
    );
    // `logs -f` streams what the container prints later.
    let mut follow = Lines::start(&k, &["logs", "-f", "--tail=1", "web-1"]);
    follow.until("line 3").await;
    logs.0.lock().unwrap().extend_from_slice(b"line 4\n");
    follow.until("line 4").await;
    assert_eq!(follow.stop(), ["line 3", "line 4"]);

    // A pod the log source does not know: the server's 404 Status.
    k.server
        .create(
            "",
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web-9", "namespace": "default"},
                "spec": {"containers": [{"name": "web", "image": "nginx:1"}]}}),
        )
        .unwrap();
    let r = k.kubectl(&["logs", "web-9"]).await;
    assert!(!r.ok, "{}", r.stdout);
    assert!(
        r.stderr.contains(
            "Error from server (NotFound): no logs for container \"web\" in pod \"web-9\""
        ),
        "{}",
        r.stderr
    );
}

/// Marks every Deployment ready as soon as it appears or changes, so that
/// `helm --wait` (which watches them) can finish without a kubelet.
fn roll_deployments(server: &FakeApiServer) -> tokio::task::JoinHandle<()> {
    let handle = server.handle();
    let mut changes = server.changes();
    tokio::spawn(async move {
        loop {
            for d in handle.list("apps", "deployments", None) {
                let ns = d["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let name = d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
                let generation = d["metadata"]["generation"].clone();
                let _ = handle.modify("apps", "deployments", Some(&ns), &name, |d| {
                    d["status"] = json!({"observedGeneration": generation, "replicas": replicas,
                        "updatedReplicas": replicas, "readyReplicas": replicas,
                        "availableReplicas": replicas,
                        "conditions": [
                            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]});
                });
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_installs_upgrades_reports_and_uninstalls_the_chart() {
    let k = Kube::start().await;
    let roller = roll_deployments(&k.server);
    let ns = "macp-helm";
    let r = k
        .helm(&[
            "install",
            "op",
            CHART,
            "-n",
            ns,
            "--create-namespace",
            "--wait",
            "--timeout",
            "60s",
        ])
        .await;
    assert!(r.ok, "helm install:\n{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("STATUS: deployed"), "{}", r.stdout);
    // The chart's crds/ directory: the CRD is stored, established and served.
    let out = k.ok(&["get", "crd", "macpauths.macp.io"]).await;
    assert!(out.contains("macpauths.macp.io"), "{out}");
    let out = k.ok(&["get", "deploy", "-n", ns]).await;
    assert!(
        lines_with(&out, "op-macp-auth-operator")[0].contains("1/1"),
        "{out}"
    );
    let releases = k.server.list("", "secrets", Some(ns));
    assert_eq!(releases.len(), 1);
    assert_eq!(releases[0]["metadata"]["labels"]["owner"], "helm");

    let r = k
        .helm(&[
            "upgrade",
            "op",
            CHART,
            "-n",
            ns,
            "--set",
            "logLevel=debug",
            "--wait",
            "--timeout",
            "60s",
        ])
        .await;
    assert!(r.ok, "helm upgrade:\n{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("REVISION: 2"), "{}", r.stdout);
    let d = k
        .server
        .get("apps", "deployments", Some(ns), "op-macp-auth-operator")
        .unwrap();
    let rust_log: Vec<&str> = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["env"].as_array().into_iter().flatten())
        .filter(|e| e["name"] == "RUST_LOG")
        .filter_map(|e| e["value"].as_str())
        .collect();
    assert_eq!(
        rust_log,
        vec!["debug"],
        "the upgrade's logLevel is the operator's RUST_LOG: {d:#}"
    );

    let r = k.helm(&["status", "op", "-n", ns]).await;
    assert!(
        r.ok && r.stdout.contains("STATUS: deployed"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    let r = k.helm(&["list", "-n", ns]).await;
    assert!(
        r.ok && lines_with(&r.stdout, "op")[0].contains("deployed"),
        "{}",
        r.stdout
    );

    let r = k.helm(&["uninstall", "op", "-n", ns, "--wait"]).await;
    assert!(r.ok, "helm uninstall:\n{}\n{}", r.stdout, r.stderr);
    assert!(k.server.list("apps", "deployments", Some(ns)).is_empty());
    assert!(k.server.list("", "secrets", Some(ns)).is_empty());
    // helm keeps CRDs.
    assert!(
        k.server
            .get(
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                None,
                "macpauths.macp.io"
            )
            .is_some()
    );
    roller.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_works_for_a_kind_registered_without_a_crd_object() {
    // The default registry serves MacpAuths without a stored CRD (as most
    // harness tests use it): kubectl must still find the kind's PATCH in the
    // OpenAPI document, or it falls back to /openapi/v2 and refuses to apply.
    let k = Kube::start().await;
    k.create_ns("macp");
    let out = k.ok(&["apply", "-f", SAMPLE]).await;
    assert!(out.contains("macpauth.macp.io/auth created"), "{out}");
    let out = k.ok(&["get", "macpauth", "-n", "macp"]).await;
    assert_eq!(
        cells(out.lines().next().unwrap_or_default()),
        ["NAME", "AGE"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_can_i_is_answered() {
    // kubectl sends no credentials to a plain-HTTP server, so it is always the
    // fake server's unauthenticated admin (per-user answers are unit-tested in
    // review.rs); the review must still be answered, not stored.
    let k = Kube::start().await;
    let out = k
        .ok(&["auth", "can-i", "delete", "secrets", "-n", "x"])
        .await;
    assert_eq!(out.trim(), "yes");
    assert!(k.server.requests().iter().all(|r| r.verb != "create"));
}
