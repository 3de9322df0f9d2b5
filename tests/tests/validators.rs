//! The chart and every object the operator writes, put through two validators
//! this project did not write, both from PyPI (`scripts/install-tools` puts
//! them in `.cache/validators/venv`):
//!
//! - `kubernetes-validate --strict`: the Kubernetes API's own JSON schemas,
//!   offline, for the oldest and the newest Kubernetes minor the project
//!   supports ([`KUBERNETES_VERSIONS`], README "Supported Kubernetes
//!   versions"): an unknown or misplaced field fails, not only a wrong type.
//! - `checkov`: policy checks (resources, secrets in the environment, image
//!   digests, ...). Every finding left in place is listed with its reason in
//!   [`SKIPS`]; a new one fails, and so does a skip that no longer matches.
//!
//! The manifests: `helm template` of the chart (CRDs included) with its
//! default values and with each `*values.yaml` of config/samples/, and the
//! objects the operator writes for each sample MacpAuth, dumped from the
//! in-process API server after the real reconciler ran against it with its
//! pods rolled out (so the disruption budget, the autoscaler and the Events
//! are there too).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use kube::api::{Api, PostParams};
use kube::runtime::events::Reporter;
use macp_auth_e2e::apiserver::FakeApiServer;
use macp_auth_e2e::helm::{Run, repo_root, scratch_dir, template_raw};
use macp_auth_e2e::ready_pods;
use macp_auth_operator::crd::MacpAuth;
use macp_auth_operator::events::EventRecorders;
use macp_auth_operator::fixtures::FakeProber;
use macp_auth_operator::keyset::Keyset;
use macp_auth_operator::metrics::Metrics;
use macp_auth_operator::reconcile::{Context, reconcile};
use macp_auth_operator::resources;
use macp_auth_operator::{Settings, rbac};
use serde_json::Value;
use tokio::sync::OnceCell;

/// The oldest and the newest Kubernetes minor the project supports: the
/// chart's `kubeVersion` floor and the API level of k8s-openapi's feature.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.25.0", "1.33.0"];
/// The checkov findings left in place, each with its reason.
const SKIPS: &str = "tests/validators/checkov-skips.txt";
const SAMPLES: &str = "config/samples";
const VENV_BIN: &str = ".cache/validators/venv/bin";
/// The service image the dumped Deployments run: the chart's default form.
const SERVICE_IMAGE: &str = "ghcr.io/macp/macp-auth-service:0.1.0";
/// A digest, for the renders pinned by digest (README, "Pinning images").
const DIGEST: &str = "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945";

/// A validator from the virtual environment, or a panic naming how to get it.
fn validator(name: &str) -> PathBuf {
    let path = repo_root().join(VENV_BIN).join(name);
    assert!(
        path.is_file(),
        "{name} not found at {}: run scripts/install-tools (or scripts/install-tools --validators)",
        path.display()
    );
    path
}

fn run(cmd: &mut Command) -> Run {
    Run::of(cmd.output().expect("run validator"))
}

/// Sample files of config/samples: (stem, path), values files or MacpAuths.
fn samples(values: bool) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(repo_root().join(SAMPLES))
        .expect("read config/samples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| {
            let stem = p.file_stem().unwrap_or_default().to_string_lossy();
            stem.ends_with("values") == values
        })
        .map(|p| {
            let stem = p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (stem, p)
        })
        .collect();
    out.sort();
    out
}

/// A YAML stream of JSON documents: every string stays quoted, so no YAML
/// reader takes a timestamp string for a date (as `kubectl get -o yaml` quotes them).
fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_json::to_string_pretty(d).expect("JSON") + "\n")
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The chart rendered with its defaults and with each sample values file.
fn write_chart(dir: &Path) {
    let mut renders = vec![
        ("chart-default".to_string(), Vec::new()),
        (
            "chart-pinned".to_string(),
            vec![
                "--set".to_string(),
                format!("image.digest={DIGEST}"),
                "--set".to_string(),
                format!("serviceImage.digest={DIGEST}"),
            ],
        ),
    ];
    for (stem, path) in samples(true) {
        renders.push((
            format!("chart-{stem}"),
            vec!["-f".to_string(), path.to_string_lossy().into_owned()],
        ));
    }
    for (name, extra) in renders {
        let mut args: Vec<&str> = vec!["--include-crds"];
        args.extend(extra.iter().map(String::as_str));
        let r = template_raw(&args);
        assert!(r.ok, "helm template {args:?} failed:\n{}", r.stderr);
        std::fs::write(dir.join(format!("{name}.yaml")), r.stdout).expect("write render");
    }
}

/// What the operator wrote, as it would read back from a cluster, less what
/// the server adds: status and the server's bookkeeping in metadata.
fn as_written(mut obj: Value) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.remove("status");
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for server_set in [
            "managedFields",
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
        ] {
            meta.remove(server_set);
        }
    }
    obj
}

/// Every kind the operator writes in a MacpAuth's namespace.
const WRITTEN: [(&str, &str); 7] = [
    ("", "secrets"),
    ("", "configmaps"),
    ("", "services"),
    ("apps", "deployments"),
    ("policy", "poddisruptionbudgets"),
    ("autoscaling", "horizontalpodautoscalers"),
    ("events.k8s.io", "events"),
];

/// Plays the Deployment controller and kubelet: two ready pods of the
/// current template serving the active key, the rollout complete.
fn roll_out(server: &FakeApiServer, prober: &FakeProber, ns: &str, name: &str) {
    let secret = server
        .get_as::<k8s_openapi::api::core::v1::Secret>(Some(ns), &resources::secret_name(name))
        .unwrap()
        .expect("the operator wrote the Secret");
    let kid = Keyset::from_secret_data(&secret.data.unwrap_or_default())
        .unwrap()
        .active
        .kid;
    ready_pods::roll_out(server, ns, name, |ip| prober.serve(ip, &[&kid])).expect("roll out");
}

/// The real reconciler, against the in-process API server, for one sample
/// (with `spec.image` set to `image` when given); writes what it wrote to
/// `dir/operator-<stem>.yaml`.
async fn write_operator_objects(dir: &Path, stem: &str, sample: &Path, image: Option<&str>) {
    let text = std::fs::read_to_string(sample).expect("read sample");
    let mut mauth: MacpAuth = serde_yaml::from_str(&text).expect("sample parses");
    if let Some(image) = image {
        mauth.spec.image = Some(image.to_string());
    }
    let ns = mauth
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    mauth.metadata.namespace = Some(ns.clone());
    let name = mauth.metadata.name.clone().expect("sample has a name");

    let server = FakeApiServer::start().await.unwrap();
    server.enforce_operator_rbac(&rbac::Mode::Namespaced(vec![ns.clone()]), None);
    let prober = Arc::new(FakeProber::default());
    let client = server.operator_client().unwrap();
    let recorder = EventRecorders::new(
        &client,
        &Reporter {
            controller: "macp-auth-operator".into(),
            instance: None,
        },
    );
    let ctx = Arc::new(Context::new(
        client,
        Settings {
            service_image: SERVICE_IMAGE.into(),
            watch_namespaces: vec![ns.clone()],
            ..Settings::default()
        },
        prober.clone(),
        recorder,
        Metrics::default(),
    ));
    Api::<MacpAuth>::namespaced(server.client(), &ns)
        .create(&PostParams::default(), &mauth)
        .await
        .expect("create the sample");
    let stored = || {
        Arc::new(
            server
                .get_as::<MacpAuth>(Some(&ns), &name)
                .unwrap()
                .expect("stored"),
        )
    };
    reconcile(stored(), ctx.clone()).await.expect("first round");
    roll_out(&server, &prober, &ns, &name);
    reconcile(stored(), ctx.clone())
        .await
        .expect("second round");
    assert_eq!(server.forbidden(), vec![], "refused by the operator's RBAC");

    let mut docs = Vec::new();
    for (group, resource) in WRITTEN {
        let mut objs = server.list(group, resource, Some(&ns));
        objs.sort_by_key(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
        docs.extend(objs.into_iter().map(as_written));
    }
    if let Some(image) = image {
        let d = docs
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("Deployment");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"], image,
            "spec.image is used as given"
        );
    }
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in ["Secret", "ConfigMap", "Service", "Deployment", "Event"] {
        assert!(kinds.contains(kind), "{stem}: no {kind} written: {kinds:?}");
    }
    std::fs::write(dir.join(format!("operator-{stem}.yaml")), to_yaml(&docs)).expect("write dump");
}

/// The manifests, written once per test binary: the chart renders and the
/// operator's objects for each sample MacpAuth.
async fn manifests() -> &'static (PathBuf, Vec<PathBuf>) {
    static DIR: OnceCell<(PathBuf, Vec<PathBuf>)> = OnceCell::const_new();
    DIR.get_or_init(|| async {
        let dir = scratch_dir(&format!("validators-{}", std::process::id()));
        write_chart(&dir);
        for (stem, path) in samples(false) {
            write_operator_objects(&dir, &stem, &path, None).await;
        }
        // spec.image pinned by digest, as README shows.
        let minimal = repo_root().join(SAMPLES).join("minimal.yaml");
        let pinned = format!("ghcr.io/macp/macp-auth-service@{DIGEST}");
        write_operator_objects(&dir, "minimal-pinned", &minimal, Some(&pinned)).await;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("read dump dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        (dir, files)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_validate_accepts_the_chart_and_the_operator_s_objects() {
    let (dir, files) = manifests().await;
    let bin = validator("kubernetes-validate");
    let names: BTreeSet<String> = files
        .iter()
        .map(|f| {
            f.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(
        names.contains("chart-default.yaml") && names.contains("operator-production.yaml"),
        "{names:?}"
    );
    for version in KUBERNETES_VERSIONS {
        let r = run(Command::new(&bin)
            .args(["--strict", "--kubernetes-version", version])
            .args(files));
        // It prints one line per object: an error for a bad one, INFO when valid.
        assert!(
            r.ok && !r.stdout.contains("ERROR") && !r.stderr.contains("ERROR"),
            "kubernetes-validate --strict for Kubernetes {version} failed on {}:\n{}{}",
            dir.display(),
            r.stdout,
            r.stderr
        );
        let valid = r.stdout.lines().filter(|l| l.starts_with("INFO")).count();
        assert!(
            valid >= files.len(),
            "too few objects checked:\n{}",
            r.stdout
        );
    }
}

/// One line of [`SKIPS`]: `CHECK SOURCE RESOURCE reason...`; SOURCE (the
/// manifest file's stem) and RESOURCE (checkov's `Kind.namespace.name`) may
/// hold `*` wildcards.
struct Skip {
    check: String,
    source: String,
    resource: String,
    reason: String,
    line: usize,
}

fn skips() -> Vec<Skip> {
    let text = std::fs::read_to_string(repo_root().join(SKIPS)).expect("read the skip list");
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            let mut parts = l.split_whitespace();
            let mut next = || parts.next().unwrap_or_default().to_string();
            let (check, source, resource) = (next(), next(), next());
            let reason = parts.collect::<Vec<_>>().join(" ");
            Skip {
                check,
                source,
                resource,
                reason,
                line: i + 1,
            }
        })
        .collect()
}

/// `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    if !text.ends_with(last) {
        return false;
    }
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(at) => rest = &rest[at + mid.len()..],
            None => return false,
        }
    }
    true
}

/// A failed check: (check id, source file stem, resource, title).
type Finding = (String, String, String, String);

/// checkov over one manifest file: each file is judged alone, since its
/// graph checks (a NetworkPolicy covering a pod) would otherwise join
/// objects of different installs.
fn checkov_findings(file: &Path) -> Vec<Finding> {
    let r = run(Command::new(validator("checkov"))
        .args(["--file"])
        .arg(file)
        .args([
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--quiet",
            "--skip-download",
        ])
        // No calls home: the checks are the ones in the package.
        .env("BC_SKIP_MAPPING", "TRUE")
        .env("CHECKOV_RUN_SCA_PACKAGE_SCAN_V2", "false"));
    let report: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON report ({e}):\n{}\n{}",
            r.stdout, r.stderr
        )
    });
    // One report per framework: an object, or a list of them.
    let reports = match report {
        Value::Array(all) => all,
        one => vec![one],
    };
    let mut out = Vec::new();
    for report in reports {
        for f in report["results"]["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let file = f["file_path"].as_str().unwrap_or_default();
            let source = Path::new(file)
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            out.push((
                f["check_id"].as_str().unwrap_or_default().to_string(),
                source,
                f["resource"].as_str().unwrap_or_default().to_string(),
                f["check_name"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn checkov_finds_nothing_beyond_the_skip_list() {
    let (dir, files) = manifests().await;
    let findings: Vec<Finding> = files.iter().flat_map(|f| checkov_findings(f)).collect();
    let skips = skips();
    for s in &skips {
        assert!(
            s.check.starts_with("CKV") && !s.resource.is_empty() && s.reason.len() >= 20,
            "{SKIPS}:{}: a skip is `CHECK SOURCE RESOURCE reason`, with its reason",
            s.line
        );
    }
    let matches =
        |s: &Skip, f: &Finding| s.check == f.0 && glob(&s.source, &f.1) && glob(&s.resource, &f.2);
    let new: Vec<String> = findings
        .iter()
        .filter(|f| !skips.iter().any(|s| matches(s, f)))
        .map(|(check, source, resource, title)| format!("{check} {source} {resource}  ({title})"))
        .collect();
    assert!(
        new.is_empty(),
        "checkov findings not in {SKIPS} (fix them, or add a line with the reason):\n{}\n(manifests in {})",
        new.join("\n"),
        dir.display()
    );
    let stale: Vec<String> = skips
        .iter()
        .filter(|s| !findings.iter().any(|f| matches(s, f)))
        .map(|s| {
            format!(
                "{SKIPS}:{}: {} {} {}",
                s.line, s.check, s.source, s.resource
            )
        })
        .collect();
    assert!(
        stale.is_empty(),
        "skips that match no finding any more (remove them):\n{}",
        stale.join("\n")
    );
}

#[test]
fn the_skip_list_globs_match_as_documented() {
    assert!(glob("Deployment.*.prod", "Deployment.macp.prod"));
    assert!(glob("operator-*", "operator-production"));
    assert!(glob("*", "anything"));
    assert!(!glob("operator-*", "chart-default"));
    assert!(!glob("Deployment.*.prod", "Deployment.macp.prod2"));
    assert!(glob("exact", "exact") && !glob("exact", "exactly"));
}
