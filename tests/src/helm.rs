//! The real helm v4 binary that `scripts/install-tools` puts in
//! `.cache/tools/bin/`, run against the chart in `charts/` with no cluster and
//! no user configuration, and its rendered YAML parsed into JSON values.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;
use serde_json::Value;

pub const RELEASE: &str = "macp-auth-operator";
pub const RELEASE_NS: &str = "macp-system";
pub const CHART: &str = "charts/macp-auth-operator";

/// The repository root (the parent of the tests crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A tool installed by `scripts/install-tools`, or a panic saying how to get it.
pub fn tool_path(name: &str) -> PathBuf {
    let path = repo_root().join(".cache/tools/bin").join(name);
    assert!(
        path.is_file(),
        "{name} not found at {}: run scripts/install-tools",
        path.display()
    );
    path
}

/// What a finished command printed.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn of(out: std::process::Output) -> Self {
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs helm in the repository root, kept away from any user config or cluster.
pub fn helm(args: &[&str]) -> Run {
    let out = Command::new(tool_path("helm"))
        .args(args)
        .current_dir(repo_root())
        .env("HELM_CONFIG_HOME", scratch_dir("helm-config"))
        .env("HELM_CACHE_HOME", scratch_dir("helm-cache"))
        .env("HELM_DATA_HOME", scratch_dir("helm-data"))
        .env("KUBECONFIG", scratch_dir("no-kube").join("config"))
        .output()
        .expect("run helm");
    Run::of(out)
}

/// A directory for files the chart tests write, shared by the test binaries.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join("macp-auth-chart-tests")
        .join(name);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Writes a values file into the scratch dir and returns its path.
pub fn values_file(name: &str, contents: &str) -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = scratch_dir("values");
    let path = dir.join(format!("{name}.yaml"));
    // Tests run in parallel and share names: write aside, then rename atomically,
    // so helm never reads a half-written file.
    let tmp = dir.join(format!(
        "{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(&tmp, contents).expect("write values file");
    fs::rename(&tmp, &path).expect("move values file in place");
    path.to_string_lossy().into_owned()
}

/// `helm template` of the chart in the release namespace, with extra arguments.
pub fn template_raw(extra: &[&str]) -> Run {
    let mut args = vec!["template", RELEASE, CHART, "--namespace", RELEASE_NS];
    args.extend_from_slice(extra);
    helm(&args)
}

/// `helm template` with extra arguments, parsed into one JSON value per object.
pub fn render(extra: &[&str]) -> Vec<Value> {
    let run = template_raw(extra);
    assert!(run.ok, "helm template {extra:?} failed:\n{}", run.stderr);
    parse_docs(&run.stdout)
}

pub fn parse_docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The rendered objects of one kind.
pub fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The one rendered object of a kind.
pub fn one<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let found = kind(docs, k);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {k}, got {}",
        found.len()
    );
    found[0]
}
