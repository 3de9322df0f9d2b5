//! The user documentation checked against what it describes.
//!
//! - Every shell block of README.md and docs/*.md preceded by the line
//!   `<!-- runnable -->` runs, as written and in the order of its file, with
//!   `bash -euo pipefail` in the repository root against a sandbox (the
//!   in-process API server and simulated cluster) and the real kubectl of
//!   `scripts/install-tools`; any non-zero exit fails the test with the
//!   block's file and line. README.md's blocks start from a cluster without
//!   the operator (the README installs it); docs/*.md's from a sandbox running
//!   the operator with `config/samples/minimal.yaml` applied in namespace
//!   `macp`, as docs/operations.md says. Every marked block is also parsed by
//!   `bash -n` first, so a syntax error names its block without a cluster.
//! - README's block marked `<!-- runnable: upgrade -->` (the CRD step, then
//!   `helm upgrade`) runs over a CRD that `helm install` of an older chart
//!   created, so helm's field manager owns it, as on a cluster.
//! - SECURITY.md's RBAC table is the operator's rule list rendered, and
//!   docs/api.md's tables are the CRD's schema rendered.
//! - Every sample MacpAuth's memory limit covers its listeners at their
//!   connection cap, and a sample with Istio injection leaves its ports to the
//!   operator's probes; the production sample becomes Ready on the sandbox and
//!   rotates to Draining without a rollback.
//! - docs/architecture.md's Mermaid phase diagram has exactly the phases of
//!   `RotationPhase`, each entered and left, and every `Degraded` reason
//!   rotation owns on an edge.
//! - docs/troubleshooting.md has a `###` section for every condition reason
//!   the operator defines (`const REASON_...` anywhere under operator/src)
//!   and every alert of the chart's PrometheusRule.
//! - docs/install.md's block marked `<!-- runnable: rollback -->` runs after
//!   `helm install` and a `helm upgrade` of the chart on the sandbox; the
//!   operator's Deployment is then the first revision's and still rotates.
//! - The `kubectl macp` plugin is on the blocks' PATH (docs/kubectl-macp.md).
//! - Every recording of docs/timelines/ drawn by `scripts/timeline`'s program
//!   is the chart committed next to it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use macp_auth_e2e::binary::{
    kubectl_macp_binary_async, operator_binary_async, service_binary_async,
};
use macp_auth_e2e::helm::{repo_root, scratch_dir, tool_path};
use macp_auth_e2e::sandbox::{Sandbox, SandboxConfig};
use macp_auth_operator::rbac;
use tokio::process::Command;

/// The line that marks the next ```sh block as runnable in its file's
/// sequence; `<!-- runnable: <tag> -->` marks one that a test of its own runs
/// on the cluster it needs (`upgrade`: over an installed older release).
const RUNNABLE: &str = "<!-- runnable -->";
const RUNNABLE_TAGGED: &str = "<!-- runnable: ";

/// How long one block may run: the README's waits (operator rollout, Ready)
/// included, with room for a loaded machine (the suite runs tests in parallel).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a whole rotation script may run (a rotation to Draining, or to Succeeded).
const ROTATION_TIMEOUT: Duration = Duration::from_secs(900);

/// One runnable shell block.
#[derive(Debug)]
struct Block {
    file: String,
    /// The line of its opening fence (1-based).
    line: usize,
    /// `None`: runs in its file's sequence.
    tag: Option<String>,
    script: String,
}

/// The runnable blocks of `text`, in order; a marker not followed by a
/// ```sh fence, or an unterminated block, is an error naming its line.
fn runnable_blocks(file: &str, text: &str) -> Result<Vec<Block>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let marker = lines[i].trim();
        let tag = match marker.strip_prefix(RUNNABLE_TAGGED) {
            Some(rest) => match rest.strip_suffix(" -->") {
                Some(tag) if !tag.is_empty() && !tag.contains(' ') => Some(tag.to_string()),
                _ => return Err(format!("{file}:{}: malformed marker {marker}", i + 1)),
            },
            None if marker == RUNNABLE => None,
            None => {
                i += 1;
                continue;
            }
        };
        let fence = i + 1;
        if lines.get(fence).map(|l| l.trim()) != Some("```sh") {
            return Err(format!(
                "{file}:{}: {RUNNABLE} is not followed by a ```sh block",
                i + 1
            ));
        }
        let end = (fence + 1..lines.len())
            .find(|&j| lines[j].trim() == "```")
            .ok_or_else(|| format!("{file}:{}: the ```sh block never ends", fence + 1))?;
        blocks.push(Block {
            file: file.to_string(),
            line: fence + 1,
            tag,
            script: lines[fence + 1..end].join("\n") + "\n",
        });
        i = end + 1;
    }
    Ok(blocks)
}

/// docs/*.md, sorted (the order their blocks run in).
fn doc_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo_root().join("docs"))
        .expect("read docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages
}

fn blocks_of(paths: &[PathBuf]) -> Vec<Block> {
    let root = repo_root();
    paths
        .iter()
        .flat_map(|p| {
            let name = p.strip_prefix(&root).unwrap_or(p).display().to_string();
            let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {name}: {e}"));
            runnable_blocks(&name, &text).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}

#[test]
fn the_marker_finds_blocks_and_refuses_a_stray_one() {
    let text = "a\n<!-- runnable -->\n```sh\necho one\necho two\n```\n```sh\nnot marked\n```\n";
    let blocks = runnable_blocks("t.md", text).expect("one block");
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].line, 3);
    assert_eq!(blocks[0].script, "echo one\necho two\n");
    let stray = runnable_blocks("t.md", "<!-- runnable -->\n```text\nx\n```\n");
    assert!(stray.is_err_and(|e| e.contains("t.md:1")));
    let tagged = runnable_blocks("t.md", "<!-- runnable: upgrade -->\n```sh\nx\n```\n");
    assert_eq!(
        tagged.expect("a tagged block")[0].tag.as_deref(),
        Some("upgrade")
    );
    let bad = runnable_blocks("t.md", "<!-- runnable: two words -->\n```sh\nx\n```\n");
    assert!(bad.is_err_and(|e| e.contains("malformed")));
    let open = runnable_blocks("t.md", "<!-- runnable -->\n```sh\nx\n");
    assert!(open.is_err_and(|e| e.contains("never ends")));
}

#[test]
fn every_runnable_block_parses() {
    let mut files = vec![repo_root().join("README.md")];
    files.extend(doc_pages());
    let blocks = blocks_of(&files);
    assert!(
        blocks.iter().any(|b| b.file == "README.md")
            && blocks.iter().any(|b| b.file == "docs/operations.md"),
        "README.md and docs/operations.md have runnable blocks"
    );
    for b in &blocks {
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", &b.script])
            .output()
            .expect("run bash -n");
        assert!(
            out.status.success(),
            "{}:{}: bash -n: {}",
            b.file,
            b.line,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A directory holding `kubectl-macp` (the plugin this workspace builds, or
/// `MACP_KUBECTL_MACP_BIN`) under the name kubectl looks for, so that the
/// docs' `kubectl macp` commands run as a user's would.
async fn plugin_dir() -> Result<PathBuf, String> {
    let plugin = kubectl_macp_binary_async()
        .await
        .map_err(|e| format!("kubectl-macp: {e}"))?;
    let dir = scratch_dir(&format!("docs-plugins-{}", std::process::id()));
    let link = dir.join("kubectl-macp");
    let linked = |l: &Path| std::fs::read_link(l).ok().as_deref() == Some(plugin.as_path());
    if !linked(&link) {
        // A link left by an earlier run points elsewhere; the tests of this
        // process may race to create it, which is fine once it points here.
        let _ = std::fs::remove_file(&link);
        if let Err(e) = std::os::unix::fs::symlink(&plugin, &link)
            && !linked(&link)
        {
            return Err(format!(
                "link {} to {}: {e}",
                link.display(),
                plugin.display()
            ));
        }
    }
    Ok(dir)
}

/// Runs `script` with bash in the repository root against `kubeconfig`,
/// printing it and its output; the error says what failed.
async fn run_script(
    kubeconfig: &Path,
    home: &Path,
    script: &str,
    timeout: Duration,
) -> Result<(), String> {
    let kubectl = tool_path("kubectl");
    let tools = kubectl.parent().expect("tools dir");
    let plugins = plugin_dir().await?;
    let path = std::env::join_paths([plugins, tools.to_path_buf()].into_iter().chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");
    println!("$ {}", script.trim_end().replace('\n', "\n$ "));
    let child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(repo_root())
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("still running after {timeout:?}"))?
        .map_err(|e| format!("waiting for bash: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}{stderr}");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("exit {:?}:\n{stdout}{stderr}", out.status.code()))
    }
}

async fn sandbox(run_operator: bool) -> Sandbox {
    Sandbox::start(
        SandboxConfig {
            api_addr: "127.0.0.1:0".parse().expect("address"),
            run_operator,
            service_bin: service_binary_async().await.expect("service binary"),
            operator_bin: operator_binary_async().await.expect("operator binary"),
        },
        None,
    )
    .await
    .expect("sandbox starts")
}

/// Runs `blocks` in order on `sandbox`, after `setup`; panics naming the first that fails.
async fn run_blocks(sandbox: Sandbox, setup: Option<&str>, blocks: &[Block]) {
    let home = scratch_dir(&format!(
        "docs-home-{}-{}",
        std::process::id(),
        sandbox.api_url().rsplit(':').next().unwrap_or("0")
    ));
    if let Some(setup) = setup
        && let Err(e) = run_script(sandbox.kubeconfig(), &home, setup, BLOCK_TIMEOUT).await
    {
        panic!("the test's setup failed: {e}");
    }
    let mut failure = None;
    for b in blocks.iter().filter(|b| b.tag.is_none()) {
        println!("\n=== {}:{} ===", b.file, b.line);
        if let Err(e) = run_script(sandbox.kubeconfig(), &home, &b.script, BLOCK_TIMEOUT).await {
            failure = Some(format!(
                "{}:{}: the block fails as written: {e}",
                b.file, b.line
            ));
            break;
        }
    }
    sandbox.shutdown().await;
    if let Some(f) = failure {
        panic!("{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_runnable_blocks_run_on_a_cluster_without_the_operator() {
    let blocks = blocks_of(&[repo_root().join("README.md")]);
    assert!(!blocks.is_empty(), "README.md has runnable blocks");
    run_blocks(sandbox(false).await, None, &blocks).await;
}

/// What docs/operations.md says its examples start from.
const DOCS_SETUP: &str = "kubectl create namespace macp\n\
    kubectl apply -f config/samples/minimal.yaml\n\
    kubectl wait -n macp macpauth/auth --for=condition=Ready --timeout=120s\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_runnable_blocks_run_against_the_operator_and_the_minimal_sample() {
    let blocks = blocks_of(&doc_pages());
    assert!(!blocks.is_empty(), "docs/ has runnable blocks");
    run_blocks(sandbox(true).await, Some(DOCS_SETUP), &blocks).await;
}

// ------------------------------------------------------------ SECURITY.md, RBAC

const RBAC_BEGIN: &str =
    "<!-- rbac-table: generated from operator/src/rbac.rs; tests/tests/docs.rs -->";
const RBAC_END: &str = "<!-- end rbac-table -->";

/// The rule list as a Markdown table: one row per resource, the leases last.
fn rbac_table() -> String {
    let base = rbac::required_rules(false);
    let mut out = String::from("| API group | Resource | Verbs | Where |\n|---|---|---|---|\n");
    for r in rbac::required_rules(true) {
        let group = if r.group.is_empty() { "core" } else { r.group };
        let where_ = if base.contains(&r) {
            "every watched namespace"
        } else {
            "the release namespace, with leader election only"
        };
        out.push_str(&format!(
            "| `{group}` | `{}` | {} | {where_} |\n",
            r.resource,
            r.verbs
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out
}

#[test]
fn security_md_rbac_table_is_the_operator_rule_list() {
    let text = std::fs::read_to_string(repo_root().join("SECURITY.md")).expect("read SECURITY.md");
    let begin = text
        .find(RBAC_BEGIN)
        .unwrap_or_else(|| panic!("SECURITY.md has no line {RBAC_BEGIN}"));
    let body_start = begin + RBAC_BEGIN.len();
    let end = text[body_start..]
        .find(RBAC_END)
        .map(|e| body_start + e)
        .unwrap_or_else(|| panic!("SECURITY.md has no line {RBAC_END} after the table"));
    let documented = text[body_start..end].trim();
    let expected = rbac_table();
    assert_eq!(
        documented,
        expected.trim(),
        "SECURITY.md's RBAC table drifted from operator/src/rbac.rs; replace the lines between the markers with:\n{expected}"
    );
}

// ------------------------------------------------------------ the samples

/// What an open connection costs the token service (docs/performance.md,
/// "Memory per open connection").
const CONNECTION_BYTES: u64 = 16 * 1024;
/// The service's default connection cap per listener.
const DEFAULT_MAX_CONNECTIONS: u64 = 4096;
/// The process itself and the verifier records, with headroom.
const BASE_BYTES: u64 = 32 * 1024 * 1024;

/// A memory quantity in bytes (the suffixes a sample would use).
fn memory_bytes(q: &str) -> Option<u64> {
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().ok().map(|n| n * factor);
        }
    }
    q.parse().ok()
}

/// Why a sample MacpAuth would fail in a cluster, if it would.
fn sample_problems(m: &serde_json::Value) -> Vec<String> {
    let spec = &m["spec"];
    let mut problems = Vec::new();
    let port = spec["port"].as_u64().unwrap_or(3200);
    let mint_port = spec["mintPort"].as_u64();
    let listeners = 1 + u64::from(mint_port.is_some());
    let cap = spec["connectionLimits"]["maxConnections"]
        .as_u64()
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if let Some(limit) = spec["resources"]["limits"]["memory"].as_str() {
        let need = listeners * cap * CONNECTION_BYTES + BASE_BYTES;
        match memory_bytes(limit) {
            Some(bytes) if bytes >= need => {}
            Some(bytes) => problems.push(format!(
                "memory limit {limit} ({} MiB) is below {} MiB: {listeners} listener(s) at {cap} connections of 16 KiB, plus 32 MiB",
                bytes >> 20,
                need >> 20
            )),
            None => problems.push(format!("memory limit {limit:?} does not parse")),
        }
    }
    let injected = ["podLabels", "podAnnotations"]
        .iter()
        .any(|f| spec[f]["sidecar.istio.io/inject"].as_str() == Some("true"));
    if injected {
        let excluded: Vec<u64> =
            spec["podAnnotations"]["traffic.sidecar.istio.io/excludeInboundPorts"]
                .as_str()
                .unwrap_or("")
                .split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect();
        for p in std::iter::once(port).chain(mint_port) {
            if !excluded.contains(&p) {
                problems.push(format!(
                    "Istio injection without port {p} in traffic.sidecar.istio.io/excludeInboundPorts: the operator's plain-HTTP probes are refused under STRICT mTLS and every rotation rolls back"
                ));
            }
        }
    }
    problems
}

fn sample_macpauths() -> Vec<(String, serde_json::Value)> {
    let dir = repo_root().join("config/samples");
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read config/samples")
        .map(|e| e.expect("entry").path())
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("read sample");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = <serde_json::Value as serde::Deserialize>::deserialize(doc);
            if let Ok(v) = v
                && v["kind"] == "MacpAuth"
            {
                out.push((path.display().to_string(), v));
            }
        }
    }
    out
}

#[test]
fn the_safety_check_catches_what_made_the_production_sample_unsafe() {
    let unsafe_sample = serde_json::json!({"spec": {
        "mintPort": 3201,
        "resources": {"limits": {"memory": "64Mi"}},
        "podLabels": {"sidecar.istio.io/inject": "true"},
    }});
    let problems = sample_problems(&unsafe_sample);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("below 160 MiB"), "{problems:?}");
    let capped = serde_json::json!({"spec": {
        "connectionLimits": {"maxConnections": 1024},
        "resources": {"limits": {"memory": "64Mi"}},
    }});
    assert!(sample_problems(&capped).is_empty());
}

#[test]
fn every_sample_fits_its_memory_limit_and_its_mesh() {
    let samples = sample_macpauths();
    assert!(
        samples.iter().any(|(p, _)| p.ends_with("production.yaml")),
        "config/samples/production.yaml is a MacpAuth"
    );
    for (path, m) in samples {
        let problems = sample_problems(&m);
        assert!(problems.is_empty(), "{path}: {}", problems.join("; "));
    }
}

/// The production sample as written, except the verifiers' cache TTL (2 s
/// instead of 300 s, so that the new key signs within the test), with the
/// callers Secret its header asks for: Ready, then a requested rotation
/// reaches Draining (the new key signs on every pod: the operator's probes
/// passed on both ports under caller authentication) without a rollback.
const PRODUCTION_SAMPLE_RUN: &str = r#"
kubectl create namespace macp
printf 'caller-token-of-the-docs-test-0001\n' > "$HOME/callers.txt"
kubectl -n macp create secret generic macp-auth-callers --from-file=tokens="$HOME/callers.txt"
sed 's/^  jwksCacheTtlSeconds: 300$/  jwksCacheTtlSeconds: 2/' config/samples/production.yaml | grep '^  jwksCacheTtlSeconds: 2$' >/dev/null
sed 's/^  jwksCacheTtlSeconds: 300$/  jwksCacheTtlSeconds: 2/' config/samples/production.yaml | kubectl apply -f -
kubectl wait -n macp macpauth/prod --for=condition=Ready --timeout=5m
old=$(kubectl get macpauth -n macp prod -o jsonpath='{.status.activeKid}')
kubectl annotate macpauth -n macp prod macp.io/rotate=docs-test --overwrite
kubectl wait -n macp macpauth/prod --for=jsonpath='{.status.rotation.phase}'=Draining --timeout=10m
new=$(kubectl get macpauth -n macp prod -o jsonpath='{.status.activeKid}')
test "$new" != "$old"
if kubectl get macpauth -n macp prod -o jsonpath='{.status.history}' | grep RolledBack; then exit 1; fi
kubectl get macpauth -n macp prod
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_sample_is_ready_and_rotates_without_rollback() {
    let sandbox = sandbox(true).await;
    let home = scratch_dir(&format!("docs-production-{}", std::process::id()));
    let result = run_script(
        sandbox.kubeconfig(),
        &home,
        PRODUCTION_SAMPLE_RUN,
        ROTATION_TIMEOUT,
    )
    .await;
    sandbox.shutdown().await;
    if let Err(e) = result {
        panic!("config/samples/production.yaml on the sandbox: {e}");
    }
}

// ------------------------------------------------------------ the phase diagram

const PHASES_MARKER: &str = "<!-- rotation-phases: checked by tests/tests/docs.rs -->";

/// The edges `from --> to: label` of the Mermaid block after the marker.
fn phase_diagram(text: &str) -> Result<Vec<(String, String, String)>, String> {
    let start = text
        .find(PHASES_MARKER)
        .ok_or_else(|| format!("no line {PHASES_MARKER}"))?;
    let mut lines = text[start..].lines().skip(1);
    if lines.next().map(str::trim) != Some("```mermaid") {
        return Err("the marker is not followed by a ```mermaid block".to_string());
    }
    let mut edges = Vec::new();
    for line in lines.by_ref() {
        let line = line.trim();
        if line == "```" {
            return Ok(edges);
        }
        let Some((from, rest)) = line.split_once("-->") else {
            continue;
        };
        let (to, label) = rest.split_once(':').unwrap_or((rest, ""));
        edges.push((
            from.trim().to_string(),
            to.trim().to_string(),
            label.trim().to_string(),
        ));
    }
    Err("the ```mermaid block never ends".to_string())
}

fn phase_name(p: macp_auth_operator::crd::RotationPhase) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("{p:?} serialises to a string"))
}

#[test]
fn the_phase_diagram_has_every_phase_and_every_degraded_reason() {
    use std::collections::BTreeSet;
    let text = std::fs::read_to_string(repo_root().join("docs/architecture.md"))
        .expect("read docs/architecture.md");
    let edges = phase_diagram(&text).unwrap_or_else(|e| panic!("docs/architecture.md: {e}"));
    let drawn: BTreeSet<String> = edges
        .iter()
        .flat_map(|(f, t, _)| [f.clone(), t.clone()])
        .filter(|s| s != "[*]")
        .collect();
    let phases: BTreeSet<String> =
        <macp_auth_operator::crd::RotationPhase as macp_auth_operator::crd::VariantArray>::VARIANTS
            .iter()
            .copied()
            .map(phase_name)
            .collect();
    assert_eq!(
        drawn, phases,
        "the diagram's states are not the phases of RotationPhase"
    );
    // Every phase but Idle is left somewhere, and every phase is entered.
    for p in &phases {
        assert!(edges.iter().any(|(_, t, _)| t == p), "no edge enters {p}");
        assert!(
            edges.iter().any(|(f, t, _)| f == p && t != p),
            "no edge leaves {p}"
        );
    }
    // The edges are the phase table's (`rotation::phase`), both ways. The
    // one edge drawn that is not a phase change: an invalid interval keeps Idle.
    let table: BTreeSet<(String, String)> = macp_auth_operator::rotation::phase::edges()
        .into_iter()
        .map(|(f, t)| (phase_name(f), phase_name(t)))
        .collect();
    let drawn_edges: BTreeSet<(String, String)> = edges
        .iter()
        .filter(|(f, t, _)| f != "[*]" && !(f == "Idle" && t == "Idle"))
        .map(|(f, t, _)| (f.clone(), t.clone()))
        .collect();
    let missing: Vec<_> = table.difference(&drawn_edges).collect();
    let extra: Vec<_> = drawn_edges.difference(&table).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the diagram's edges are not rotation::phase::edges(): not drawn {missing:?}, drawn but not in the table {extra:?}"
    );
    for reason in macp_auth_operator::rotation::DEGRADED_REASONS {
        assert!(
            edges.iter().any(|(_, _, l)| l
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| w == *reason)),
            "no edge of the diagram names the Degraded reason {reason}"
        );
    }
}

// ------------------------------------------------------------ the CRD upgrade step

/// README's upgrade, the CRD step first, over a CRD that `helm install` of an
/// older chart created (so helm's field manager owns its fields, as on a
/// cluster): the older chart is this one with a CRD description changed.
const CRD_UPGRADE_RUN: &str = r#"
kubectl delete crd macpauths.macp.io
cp -r charts/macp-auth-operator "$HOME/older-chart"
sed -i 's/The token service a MacpAuth runs:/An older description:/' "$HOME/older-chart/crds/macpauths.macp.io.yaml"
grep -q 'An older description' "$HOME/older-chart/crds/macpauths.macp.io.yaml"
helm install macp-auth-operator "$HOME/older-chart" --namespace macp-system --create-namespace
kubectl get crd macpauths.macp.io -o jsonpath='{.metadata.managedFields[*].manager}'; echo
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_upgrade_step_applies_over_the_crd_helm_installed() {
    let sandbox = sandbox(false).await;
    let home = scratch_dir(&format!("docs-crd-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(home.join("older-chart"));
    let upgrade = blocks_of(&[repo_root().join("README.md")])
        .into_iter()
        .find(|b| b.tag.as_deref() == Some("upgrade"))
        .map(|b| b.script)
        .unwrap_or_else(|| panic!("README.md has no block marked <!-- runnable: upgrade -->"));
    let script = format!(
        "{CRD_UPGRADE_RUN}{upgrade}kubectl get crd macpauths.macp.io -o yaml | grep -c 'The token service a MacpAuth runs'\n"
    );
    let result = run_script(sandbox.kubeconfig(), &home, &script, BLOCK_TIMEOUT).await;
    sandbox.shutdown().await;
    if let Err(e) = result {
        panic!("README's upgrade over an older chart's CRD: {e}");
    }
}

// ------------------------------------------------------------ the API reference

const API_BEGIN: &str =
    "<!-- api-reference: generated from crds/macpauths.macp.io.yaml; tests/tests/docs.rs -->";
const API_END: &str = "<!-- end api-reference -->";

/// Fields of Kubernetes' own types: their schema is Kubernetes', described
/// by `kubectl explain`, not expanded here.
const KUBERNETES_TYPES: &[&str] = &[
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "resources",
    "imagePullSecrets",
    "nodeSelector",
    "podLabels",
    "podAnnotations",
];

fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn schema_type(v: &serde_json::Value) -> String {
    match v["type"].as_str() {
        Some("array") => match v["items"]["type"].as_str() {
            Some(t) => format!("[]{t}"),
            None => "array".to_string(),
        },
        Some(t) => t.to_string(),
        None if v["x-kubernetes-int-or-string"] == true => "int or string".to_string(),
        None => "any".to_string(),
    }
}

fn api_rows(path: &str, node: &serde_json::Value, out: &mut String) {
    let Some(props) = node["properties"].as_object() else {
        return;
    };
    let required: Vec<&str> = node["required"]
        .as_array()
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    for (name, v) in props {
        let field = format!("{path}{name}");
        let mut notes = Vec::new();
        if let Some(e) = v["enum"].as_array() {
            let values: Vec<String> = e
                .iter()
                .map(|x| format!("`{}`", x.as_str().unwrap_or("?")))
                .collect();
            notes.push(format!("One of {}.", values.join(", ")));
        }
        match (v["minimum"].as_i64(), v["maximum"].as_i64()) {
            (Some(lo), Some(hi)) => notes.push(format!("{lo} to {hi}.")),
            (Some(lo), None) => notes.push(format!("At least {lo}.")),
            (None, Some(hi)) => notes.push(format!("At most {hi}.")),
            (None, None) => {}
        }
        if required.contains(&name.as_str()) {
            notes.push("Required.".to_string());
        }
        let default = match &v["default"] {
            serde_json::Value::Null => String::new(),
            d => format!("`{d}`"),
        };
        let description = v["description"].as_str().unwrap_or("");
        out.push_str(&format!(
            "| `{field}` | {} | {default} | {} |\n",
            schema_type(v),
            cell(&format!("{description} {}", notes.join(" ")))
        ));
        if KUBERNETES_TYPES.contains(&name.as_str()) || field == "status.lastValidSpec.spec" {
            continue;
        }
        match v["type"].as_str() {
            Some("object") => api_rows(&format!("{field}."), v, out),
            Some("array") if v["items"]["type"] == "object" => {
                api_rows(&format!("{field}[]."), &v["items"], out);
            }
            _ => {}
        }
    }
}

/// The reference of spec and status, one table each, from the CRD's schema.
fn api_reference() -> String {
    let text = std::fs::read_to_string(repo_root().join("crds/macpauths.macp.io.yaml"))
        .expect("read the CRD");
    let crd: serde_json::Value = serde_yaml::from_str(&text).expect("the CRD parses");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut out = String::new();
    for part in ["spec", "status"] {
        out.push_str(&format!(
            "\n### `{part}`\n\n| Field | Type | Default | Description |\n|---|---|---|---|\n"
        ));
        api_rows(&format!("{part}."), &schema["properties"][part], &mut out);
    }
    out
}

#[test]
fn the_api_reference_is_the_crd_schema() {
    let path = repo_root().join("docs/api.md");
    let text = std::fs::read_to_string(&path).expect("read docs/api.md");
    let (Some(begin), Some(end)) = (text.find(API_BEGIN), text.find(API_END)) else {
        panic!("docs/api.md has no {API_BEGIN} ... {API_END}");
    };
    let body_start = begin + API_BEGIN.len();
    let expected = api_reference();
    if text[body_start..end].trim() == expected.trim() {
        return;
    }
    // Regenerating is this test with MACP_UPDATE_DOCS=1; it still fails, so
    // that a run that rewrote the file is never green.
    if std::env::var_os("MACP_UPDATE_DOCS").is_some() {
        let updated = format!(
            "{}\n\n{}\n\n{}",
            &text[..body_start],
            expected.trim(),
            &text[end..]
        );
        std::fs::write(&path, updated).expect("write docs/api.md");
        panic!("docs/api.md regenerated from the CRD; run the test again");
    }
    panic!(
        "docs/api.md drifted from crds/macpauths.macp.io.yaml: run MACP_UPDATE_DOCS=1 cargo test -p macp-auth-e2e --test docs -- the_api_reference"
    );
}

/// The minimal sample with lifetimes scaled down (as in the journey), so that
/// a routine rotation takes about a minute and a half instead of an hour.
const SHORT_ROTATION_SETUP: &str = r#"
kubectl create namespace macp
sed 's/^spec: {}$/spec: {maxTtlSeconds: 5, defaultTtlSeconds: 5, jwksCacheTtlSeconds: 2}/' config/samples/minimal.yaml | grep 'maxTtlSeconds: 5' >/dev/null
sed 's/^spec: {}$/spec: {maxTtlSeconds: 5, defaultTtlSeconds: 5, jwksCacheTtlSeconds: 2}/' config/samples/minimal.yaml | kubectl apply -f -
kubectl wait -n macp macpauth/auth --for=condition=Ready --timeout=120s
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotation_block_waits_for_the_new_key_then_for_succeeded() {
    let block = blocks_of(&[repo_root().join("docs/operations.md")])
        .into_iter()
        .find(|b| b.tag.as_deref() == Some("rotation"))
        .unwrap_or_else(|| {
            panic!("docs/operations.md has no block marked <!-- runnable: rotation -->")
        });
    // Done: the entry reads Succeeded and no key changes role any more (a
    // standby being prepared right after is no rotation: Rotating is False).
    let check = "\nkubectl get macpauth -n macp auth -o jsonpath='{.status.conditions[?(@.type==\"Rotating\")].status} {.status.history[-1:].outcome}{\"\\n\"}' | grep -x 'False Succeeded'\n";
    let script = format!("{SHORT_ROTATION_SETUP}{}{check}", block.script);
    let sandbox = sandbox(true).await;
    let home = scratch_dir(&format!("docs-rotation-{}", std::process::id()));
    let result = run_script(sandbox.kubeconfig(), &home, &script, ROTATION_TIMEOUT).await;
    sandbox.shutdown().await;
    if let Err(e) = result {
        panic!("{}:{}: {e}", block.file, block.line);
    }
}

// ------------------------------------------------------------ troubleshooting

/// The value of every `const REASON_...: &str = "..."` under `dir`: the
/// reasons the operator writes into conditions and events, wherever a
/// module defines them.
fn reason_constants(dir: &Path, out: &mut std::collections::BTreeSet<String>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            reason_constants(&path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        for line in text.lines() {
            let Some((_, rest)) = line.split_once("const REASON_") else {
                continue;
            };
            let Some((_, value)) = rest.split_once(": &str = \"") else {
                continue;
            };
            if let Some((value, _)) = value.split_once('"') {
                out.insert(value.to_string());
            }
        }
    }
}

/// The alert names of the chart's PrometheusRule.
fn chart_alerts() -> Vec<String> {
    let path = repo_root().join("charts/macp-auth-operator/templates/prometheusrule.yaml");
    std::fs::read_to_string(&path)
        .expect("read the PrometheusRule template")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|a| a.trim().to_string())
        .collect()
}

/// What of `names` has no `###` heading of its own on `page`.
fn missing_headings<'a>(page: &str, names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let headings: Vec<Vec<&str>> = page
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| {
            h.split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .collect()
        })
        .collect();
    names
        .into_iter()
        .filter(|n| !headings.iter().any(|h| h.contains(n)))
        .collect()
}

#[test]
fn troubleshooting_has_a_section_for_every_reason_and_alert() {
    let page = std::fs::read_to_string(repo_root().join("docs/troubleshooting.md"))
        .expect("read docs/troubleshooting.md");
    let mut reasons = std::collections::BTreeSet::new();
    reason_constants(&repo_root().join("operator/src"), &mut reasons);
    // The Degraded reasons by name too, in case one is ever defined without
    // the REASON_ prefix the scan looks for.
    reasons.extend(
        macp_auth_operator::rotation::DEGRADED_REASONS
            .iter()
            .map(|r| r.to_string()),
    );
    reasons.extend(
        [
            macp_auth_operator::validate::REASON_INVALID_SPEC,
            macp_auth_operator::validate::REASON_INVALID_NAME,
            macp_auth_operator::reconcile::REASON_INVALID_SIGNING_KEY,
            macp_auth_operator::reconcile::REASON_MISSING_SIGNING_KEY,
            macp_auth_operator::reconcile::REASON_PROGRESS_DEADLINE,
        ]
        .map(str::to_string),
    );
    assert!(
        reasons.len() >= 20,
        "the scan of operator/src found too few reasons: {reasons:?}"
    );
    let alerts = chart_alerts();
    assert!(alerts.len() >= 10, "too few alerts found: {alerts:?}");
    let missing = missing_headings(
        &page,
        reasons
            .iter()
            .map(String::as_str)
            .chain(alerts.iter().map(String::as_str)),
    );
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md has no ### section for: {}",
        missing.join(", ")
    );
}

#[test]
fn a_reason_named_only_in_passing_has_no_section() {
    let page =
        "### RolloutTimeout\nSee also RollbackStalled.\n### RollingOut and RolloutComplete\n";
    assert_eq!(
        missing_headings(
            page,
            ["RolloutTimeout", "RollbackStalled", "RolloutComplete"]
        ),
        vec!["RollbackStalled"]
    );
}

// ------------------------------------------------------------ helm rollback

/// docs/install.md's rollback block starts from a release installed with
/// the defaults and upgraded once with an operator flag added, with a
/// MacpAuth (lifetimes scaled down) Ready under it.
const ROLLBACK_SETUP: &str = r#"
helm install macp-auth-operator charts/macp-auth-operator --namespace macp-system --create-namespace
kubectl rollout status -n macp-system deploy/macp-auth-operator --timeout=5m
kubectl get deploy -n macp-system macp-auth-operator -o jsonpath='{.spec.template.spec.containers[0].args}' > "$HOME/args-1"
kubectl create namespace macp
sed 's/^spec: {}$/spec: {maxTtlSeconds: 5, defaultTtlSeconds: 5, jwksCacheTtlSeconds: 2}/' config/samples/minimal.yaml | kubectl apply -f -
kubectl wait -n macp macpauth/auth --for=condition=Ready --timeout=5m
helm upgrade macp-auth-operator charts/macp-auth-operator --namespace macp-system --set 'extraArgs={--max-concurrent-keygens=3}'
kubectl rollout status -n macp-system deploy/macp-auth-operator --timeout=5m
kubectl get deploy -n macp-system macp-auth-operator -o jsonpath='{.spec.template.spec.containers[0].args}' | grep -- --max-concurrent-keygens=3
"#;

/// After the block: the Deployment is the first revision's, helm recorded
/// the rollback, and the operator still rotates the MacpAuth's key.
const ROLLBACK_CHECK: &str = r#"
kubectl get deploy -n macp-system macp-auth-operator -o jsonpath='{.spec.template.spec.containers[0].args}' > "$HOME/args-3"
diff "$HOME/args-1" "$HOME/args-3"
helm history macp-auth-operator --namespace macp-system -o json | jq -e 'length == 3 and (.[-1].description | test("Rollback to 1"))'
old=$(kubectl get macpauth -n macp auth -o jsonpath='{.status.activeKid}')
kubectl annotate macpauth -n macp auth macp.io/rotate=after-rollback --overwrite
kubectl wait -n macp macpauth/auth --for=jsonpath='{.status.rotation.phase}'=Draining --timeout=10m
test "$(kubectl get macpauth -n macp auth -o jsonpath='{.status.activeKid}')" != "$old"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_rollback_restores_the_previous_operator_which_keeps_rotating() {
    let block = blocks_of(&[repo_root().join("docs/install.md")])
        .into_iter()
        .find(|b| b.tag.as_deref() == Some("rollback"))
        .unwrap_or_else(|| {
            panic!("docs/install.md has no block marked <!-- runnable: rollback -->")
        });
    let script = format!("{ROLLBACK_SETUP}{}{ROLLBACK_CHECK}", block.script);
    let sandbox = sandbox(false).await;
    let home = scratch_dir(&format!("docs-rollback-{}", std::process::id()));
    let result = run_script(sandbox.kubeconfig(), &home, &script, ROTATION_TIMEOUT).await;
    sandbox.shutdown().await;
    if let Err(e) = result {
        panic!("{}:{}: {e}", block.file, block.line);
    }
}

// ------------------------------------------------------------ timelines

/// Every recording in docs/timelines/ drawn again by `scripts/timeline`'s
/// program, against the chart committed next to it.
#[test]
fn the_committed_timelines_are_their_recordings_drawn() {
    let dir = repo_root().join("docs/timelines");
    let mut recordings: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read docs/timelines")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    recordings.sort();
    let names: Vec<String> = recordings
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(
        names,
        ["emergency", "routine"],
        "docs/timelines/ has the routine and the emergency recordings"
    );
    let mut stale = Vec::new();
    for recording in &recordings {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_timeline"))
            .arg(recording)
            .output()
            .expect("run the timeline program");
        assert!(
            out.status.success(),
            "timeline {}: {}",
            recording.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let drawn = String::from_utf8(out.stdout).expect("UTF-8");
        let chart = recording.with_extension("md");
        let committed = std::fs::read_to_string(&chart).unwrap_or_default();
        if committed != drawn {
            if std::env::var_os("MACP_UPDATE_DOCS").is_some() {
                std::fs::write(&chart, &drawn).expect("write the chart");
            }
            stale.push(chart.display().to_string());
        }
        // What the chart must show, whatever the run's timing.
        for needle in [
            "```mermaid\ngantt",
            "section Keys",
            "section Pods",
            " published :",
            " active :",
        ] {
            assert!(drawn.contains(needle), "{}: no {needle:?}", chart.display());
        }
        if recording.ends_with("routine.jsonl") {
            for needle in [
                "Propagating (verifier caches) :",
                "Draining (old tokens expire) :",
                "section Drain",
                " last token (",
                "leeway (60 s) :",
                " kept published :",
            ] {
                assert!(drawn.contains(needle), "{}: no {needle:?}", chart.display());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{} differ from their recordings drawn by scripts/timeline: run MACP_UPDATE_DOCS=1 cargo test -p macp-auth-e2e --test docs -- timelines (then run it again)",
        stale.join(", ")
    );
}
