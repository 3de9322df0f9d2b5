//! The user journey: the sandbox driven only through the real
//! `helm` and `kubectl` (scripts/install-tools) and plain HTTP to the
//! Services' local addresses, as a person would drive it:
//!
//! 1. helm install;
//! 2. kubectl apply both samples;
//! 3. wait Ready;
//! 4. mint a token and verify it with macp-auth;
//! 5. `kubectl macp rotate --wait` under load: it follows the phases and
//!    exits 0 on `Succeeded`, with 0 failed verifications and mints, and the
//!    old key's last tokens re-verified in their last second;
//! 6. the incident: `kubectl macp audit --kid` names who minted with the
//!    suspect key and says which pods are gone, then `kubectl macp rotate
//!    --emergency --wait` withdraws it from the JWKS;
//! 7. helm upgrade with a changed value;
//! 8. helm uninstall: the signing-key Secrets stay and the token services
//!    still serve;
//! 9. kubectl delete of the MacpAuths: garbage collection removes what they
//!    owned.
//!
//! The sandbox runs in this process (so the test needs no port of its own)
//! but nothing here touches its store: every step is a client command or an
//! HTTP request. Each prints the command and what it printed; a failure names
//! the step and shows the client's output.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use macp_auth::auth::resolvers::jwt_bearer::{JwtBearerResolver, JwtConfig};
use macp_auth_e2e::binary::{
    kubectl_macp_binary_async, operator_binary_async, service_binary_async,
};
use macp_auth_e2e::endpoints::EndpointSource;
use macp_auth_e2e::helm::{repo_root, tool_path};
use macp_auth_e2e::load::{self, LoadConfig, LoadGenerator, token_kid};
use macp_auth_e2e::proxy::ServiceProxy;
use macp_auth_e2e::sandbox::{Sandbox, SandboxConfig};
use macp_auth_e2e::wait::{Displayed, try_wait_until};
use macp_auth_operator::crd::{EMERGENCY_ROTATE_ANNOTATION, ROTATE_ANNOTATION};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

const NS: &str = "macp";
const RELEASE: &str = "macp-auth-operator";
const RELEASE_NS: &str = "macp-system";

/// The minimal sample, with lifetimes scaled down so that a routine rotation
/// (cache TTL + 10 s of propagation, then maxTtl + 60 s of drain) takes about
/// a minute and a half instead of an hour.
const MAX_TTL: u64 = 5;
const CACHE_TTL: u64 = 2;

/// A client command's outcome.
struct Out {
    ok: bool,
    /// The exit code (`None`: killed by a signal).
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// The journey's state: which step runs, and the clients' environment.
struct Journey {
    step: String,
    kubeconfig: PathBuf,
    helm_home: PathBuf,
    /// kubectl's PATH: a directory holding only the `kubectl-macp` plugin, then the inherited one.
    path: std::ffi::OsString,
    started: Instant,
}

impl Journey {
    fn step(&mut self, name: &str) {
        self.step = name.to_string();
        println!(
            "\n=== step {name} (t={:.0}s) ===",
            self.started.elapsed().as_secs_f64()
        );
    }

    fn fail(&self, what: &str) -> ! {
        panic!("journey step {:?} failed: {what}", self.step)
    }

    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(tool_path(tool));
        cmd.args(args)
            .current_dir(repo_root())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CONFIG_HOME", self.helm_home.join("config"))
            .env("HELM_CACHE_HOME", self.helm_home.join("cache"))
            .env("HELM_DATA_HOME", self.helm_home.join("data"))
            .env("PATH", &self.path)
            .kill_on_drop(true);
        cmd
    }

    /// Runs `tool args`, printing the command line and its output.
    async fn run(&self, tool: &str, args: &[&str]) -> Out {
        self.run_echo(tool, args, true).await
    }

    /// [`run`](Self::run); `echo` false prints only the size of the output
    /// (for machine output the caller parses and checks).
    async fn run_echo(&self, tool: &str, args: &[&str], echo: bool) -> Out {
        println!("$ {tool} {}", shell_words(args));
        let out = match self.command(tool, args).output().await {
            Ok(o) => o,
            Err(e) => self.fail(&format!("cannot run {tool}: {e}")),
        };
        let out = Out {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        if echo {
            print!("{}", indent(&out.stdout));
        } else {
            println!(
                "  ({} lines on stdout, checked below)",
                out.stdout.lines().count()
            );
        }
        print!("{}", indent(&out.stderr));
        out
    }

    /// Prints where the MacpAuths and their pods stood, for a failure about
    /// to be reported: the panic message then ends the test's output, where
    /// a CI log's tail shows it, with this just above.
    async fn show_state(&self) {
        println!("\n--- state at the failure ---");
        self.run("kubectl", &["macp", "status", "-n", NS]).await;
        self.run("kubectl", &["get", "pods", "-n", NS, "-o", "wide"])
            .await;
    }

    /// [`run`](Self::run) that must succeed; returns stdout.
    async fn ok(&self, tool: &str, args: &[&str]) -> String {
        let out = self.run(tool, args).await;
        if !out.ok {
            self.show_state().await;
            self.fail(&format!(
                "`{tool} {}` failed:\n{}{}",
                shell_words(args),
                out.stdout,
                out.stderr
            ));
        }
        out.stdout
    }

    async fn kubectl(&self, args: &[&str]) -> String {
        self.ok("kubectl", args).await
    }

    async fn helm(&self, args: &[&str]) -> String {
        self.ok("helm", args).await
    }

    /// `kubectl get -o json` of one object, parsed.
    async fn get_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        let out = self.command("kubectl", &a).output().await;
        let out = match out {
            Ok(o) if o.status.success() => o,
            Ok(o) => self.fail(&format!(
                "`kubectl {}` failed:\n{}",
                shell_words(&a),
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => self.fail(&format!("cannot run kubectl: {e}")),
        };
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| self.fail(&format!("`kubectl {}`: not JSON: {e}", shell_words(&a))))
    }
}

fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains([' ', '\'', '"', '{', '$', '*', '[']) {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// The local address of a Service, as the sandbox printed it.
struct Fixed(SocketAddr);

impl EndpointSource for Fixed {
    fn endpoints(&self) -> Vec<SocketAddr> {
        vec![self.0]
    }
}

fn jwt_config(issuer: &str, audience: &str) -> JwtConfig {
    JwtConfig {
        issuer: issuer.into(),
        audience: audience.into(),
        algorithms: vec![
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::Algorithm::ES256,
        ],
    }
}

/// `curl -s <url>/tokens -d '{"sender": ...}'`: the token, or what went wrong.
async fn mint(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let resp = http
        .post(format!("{url}/tokens"))
        .json(&json!({"sender": "agent://journey", "scopes": {}}))
        .send()
        .await
        .map_err(|e| format!("POST {url}/tokens: {e}"))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .map_err(|e| format!("POST {url}/tokens: body: {e}"))?;
    if !status.is_success() {
        return Err(format!("POST {url}/tokens: {status} {body}"));
    }
    body.get("token")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("POST {url}/tokens: no token in {body}"))
}

/// Verifies with the MACP runtime's verifier against `url`'s JWKS.
async fn verify(url: &str, token: &str) -> Result<(), String> {
    let resolver = JwtBearerResolver::from_url(
        jwt_config("macp-auth-service", "macp-runtime"),
        format!("{url}/.well-known/jwks.json"),
        CACHE_TTL,
    );
    load::verify(&resolver, token).await
}

/// The kids of the JWKS `url` serves (one new connection per call: the
/// Service address picks a pod per connection).
async fn jwks_kids(url: &str) -> Result<Vec<String>, String> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let body: Value = http
        .get(format!("{url}/.well-known/jwks.json"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body
        .get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|k| k.get("kid").and_then(Value::as_str).map(str::to_string))
        .collect())
}

fn write_samples(dir: &Path) -> (PathBuf, PathBuf) {
    let minimal = dir.join("minimal.yaml");
    let text = std::fs::read_to_string(repo_root().join("config/samples/minimal.yaml"))
        .expect("read config/samples/minimal.yaml");
    let scaled = text.replace(
        "spec: {}",
        &format!(
            "spec:\n  maxTtlSeconds: {MAX_TTL}\n  defaultTtlSeconds: {MAX_TTL}\n  jwksCacheTtlSeconds: {CACHE_TTL}\n  audit:\n    enabled: true"
        ),
    );
    assert_ne!(
        scaled, text,
        "config/samples/minimal.yaml no longer ends in `spec: {{}}`"
    );
    std::fs::write(&minimal, scaled).expect("write the scaled sample");
    (minimal, repo_root().join("config/samples/es256.yaml"))
}

/// A sandbox without the operator (helm installs it), and the journey's
/// step printer on its kubeconfig.
async fn start_no_operator() -> (Sandbox, Journey) {
    let service_bin = service_binary_async().await.expect("service binary");
    let operator_bin = operator_binary_async().await.expect("operator binary");
    let plugin_bin = kubectl_macp_binary_async()
        .await
        .expect("kubectl-macp binary");
    let sandbox = Sandbox::start(
        SandboxConfig {
            api_addr: "127.0.0.1:0".parse().expect("address"),
            run_operator: false,
            service_bin,
            operator_bin,
        },
        None,
    )
    .await
    .expect("sandbox starts");
    // kubectl finds plugins on its PATH, as `kubectl-<name>` executables.
    let plugins = sandbox.dir().join("bin");
    std::fs::create_dir_all(&plugins).expect("create the plugin directory");
    std::os::unix::fs::symlink(&plugin_bin, plugins.join("kubectl-macp"))
        .expect("link kubectl-macp into the plugin directory");
    let mut dirs = vec![plugins];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path = std::env::join_paths(dirs).expect("a PATH");
    let j = Journey {
        step: "start".into(),
        kubeconfig: sandbox.kubeconfig().to_path_buf(),
        helm_home: sandbox.dir().join("helm"),
        path,
        started: Instant::now(),
    };
    (sandbox, j)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_user_journey_through_helm_and_kubectl() {
    let (sandbox, mut j) = start_no_operator().await;
    println!(
        "sandbox (--no-operator) at {}\n$ export KUBECONFIG={}",
        sandbox.api_url(),
        j.kubeconfig.display()
    );
    let (minimal, es256) = write_samples(sandbox.dir());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");

    j.step("1 helm install");
    j.helm(&[
        "install",
        RELEASE,
        "charts/macp-auth-operator",
        "-n",
        RELEASE_NS,
        "--create-namespace",
    ])
    .await;
    j.kubectl(&[
        "rollout",
        "status",
        "-n",
        RELEASE_NS,
        "deploy/macp-auth-operator",
        "--timeout=120s",
    ])
    .await;
    j.kubectl(&["get", "pods", "-n", RELEASE_NS]).await;
    let logs = j
        .kubectl(&["logs", "-n", RELEASE_NS, "deploy/macp-auth-operator"])
        .await;
    if !logs.contains("starting controllers") {
        j.fail("the operator pod's log does not show it started its controllers");
    }

    j.step("2 kubectl apply both samples");
    println!(
        "(config/samples/minimal.yaml with maxTtlSeconds {MAX_TTL} and jwksCacheTtlSeconds {CACHE_TTL}, \
         so that a routine rotation takes about 90 s instead of an hour; es256.yaml as it is)"
    );
    j.kubectl(&["create", "namespace", NS]).await;
    let (m, e) = (minimal.display().to_string(), es256.display().to_string());
    j.kubectl(&["apply", "-f", &m, "-f", &e]).await;

    j.step("3 wait Ready");
    j.kubectl(&[
        "wait",
        "-n",
        NS,
        "macpauth/auth",
        "macpauth/auth-es256",
        "--for=condition=Ready",
        "--timeout=180s",
    ])
    .await;
    // With the defaults each prepares its standby key next: published in
    // one more rollout, then the (scaled) cache wait.
    j.kubectl(&[
        "wait",
        "-n",
        NS,
        "macpauth/auth",
        "macpauth/auth-es256",
        "--for=jsonpath={.status.standby.propagated}=true",
        "--timeout=180s",
    ])
    .await;
    j.kubectl(&["get", "macpauths", "-n", NS, "-o", "wide"])
        .await;
    j.kubectl(&["get", "deploy,svc,pods", "-n", NS, "-o", "wide"])
        .await;
    let status = j.kubectl(&["macp", "status", "-n", NS]).await;
    for part in [
        "MacpAuth macp/auth\n",
        "MacpAuth macp/auth-es256\n",
        "  Phase:          Idle",
        "   active ",
        "   standby ",
        "  Standby:        auth-",
    ] {
        if !status.contains(part) {
            j.fail(&format!("`kubectl macp status` lacks {part:?}"));
        }
    }
    // The waits of the scaled sample, and where each comes from. The
    // propagated standby takes publishing and the cache wait off the route,
    // as step 5's rotation shows.
    let plan = j.kubectl(&["macp", "plan", "auth", "-n", NS]).await;
    for part in [
        "activating the propagated standby auth-".to_string(),
        format!("drain: tokens it signed live up to {MAX_TTL}s + 60s verifier leeway"),
        "The new key signs from ".to_string(),
    ] {
        if !plan.contains(&part) {
            j.fail(&format!("`kubectl macp plan` lacks {part:?}"));
        }
    }
    for phase in ["Publishing", "Propagating"] {
        if plan.contains(&format!("    {phase} ")) {
            j.fail(&format!(
                "`kubectl macp plan` lists {phase}, though a propagated standby is ready"
            ));
        }
    }
    let missing = j
        .run("kubectl", &["macp", "status", "nosuch", "-n", NS])
        .await;
    if missing.code != Some(1) || !missing.stderr.contains("MacpAuth macp/nosuch not found") {
        j.fail("`kubectl macp status nosuch` did not exit 1 naming the object");
    }
    // The whole (short) log: stdout and stderr lines interleave in any order.
    let logs = j.kubectl(&["logs", "-n", NS, "deploy/auth"]).await;
    if !logs.contains("[auth-service] listening on port 3200") {
        j.fail("the token service pod's log lacks its startup lines");
    }

    j.step("4 mint a token and verify it with macp-auth");
    let url = match sandbox.service_url(NS, "auth") {
        Some(u) => u,
        None => j.fail("the sandbox gave Service macp/auth no local address"),
    };
    println!(
        "$ curl -s {url}/tokens -H 'content-type: application/json' -d '{{\"sender\":\"agent://journey\"}}'"
    );
    let token = mint(&http, &url).await.unwrap_or_else(|e| j.fail(&e));
    println!("  {{\"token\":\"{}...\"}}", &token[..token.len().min(40)]);
    match verify(&url, &token).await {
        Ok(()) => println!(
            "  verified by macp-auth's JwtBearerResolver against {url}/.well-known/jwks.json"
        ),
        Err(e) => j.fail(&format!("macp-auth refused the token: {e}")),
    }

    j.step("5 kubectl macp rotate --wait under load");
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| j.fail(&format!("{url}: {e}")));
    let service = ServiceProxy::start_with(Arc::new(Fixed(addr)))
        .await
        .unwrap_or_else(|e| j.fail(&format!("proxy to {url}: {e}")));
    let mut load_config = LoadConfig::new(CACHE_TTL);
    load_config.ttls = vec![2, MAX_TTL];
    load_config.max_duration = Duration::from_secs(600);
    let load = LoadGenerator::start(service, load_config)
        .await
        .unwrap_or_else(|e| j.fail(&format!("load: {e}")));
    let before = j.get_json(&["macpauth", "-n", NS, "auth"]).await;
    let old_kid = before
        .pointer("/status/activeKid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    // What a person watching sees; its output goes on the transcript.
    let mut watch = j.command(
        "kubectl",
        &[
            "get",
            "macpauth",
            "-n",
            NS,
            "auth",
            "-w",
            "--output-watch-events",
        ],
    );
    println!("$ kubectl get macpauth -n {NS} auth -w --output-watch-events &");
    let watcher = watch
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()
        .map(|mut child| {
            let out = child.stdout.take();
            let err = child.stderr.take();
            let printer = tokio::spawn(async move {
                let mut lines = Vec::new();
                if let Some(o) = out {
                    let mut r = BufReader::new(o).lines();
                    while let Ok(Some(l)) = r.next_line().await {
                        println!("  [watch] {l}");
                        lines.push(l);
                    }
                }
                if let Some(e) = err {
                    let mut r = BufReader::new(e).lines();
                    while let Ok(Some(l)) = r.next_line().await {
                        println!("  [watch stderr] {l}");
                    }
                }
                lines
            });
            (child, printer)
        });
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The rotation through the plugin, and its status (remaining steps and
    // ETA) read by the plugin while it runs.
    let rotate = j.run(
        "kubectl",
        &[
            "macp",
            "rotate",
            "auth",
            "-n",
            NS,
            "--wait",
            "--timeout",
            "300s",
        ],
    );
    let in_flight = async {
        try_wait_until(
            "kubectl macp status to show the rotation's remaining steps",
            Duration::from_secs(60),
            Duration::from_secs(3),
            async || {
                let out = j
                    .run("kubectl", &["macp", "status", "auth", "-n", NS])
                    .await;
                if out.ok && out.stdout.contains("Remaining steps") {
                    ControlFlow::Break(out.stdout)
                } else {
                    ControlFlow::Continue(Displayed(out.stdout + &out.stderr))
                }
            },
        )
        .await
    };
    let (rotated, in_flight) = tokio::join!(rotate, in_flight);
    let in_flight = match in_flight {
        Ok(status) => status,
        Err(e) => {
            j.show_state().await;
            j.fail(&e.to_string())
        }
    };
    for part in [
        "Rotation:       manual, request rotate-",
        "  ETA:  ",
        "Pods:",
    ] {
        if !in_flight.contains(part) {
            j.fail(&format!(
                "`kubectl macp status` during the rotation lacks {part:?}"
            ));
        }
    }
    if rotated.code != Some(0) {
        j.show_state().await;
        j.fail(&format!(
            "`kubectl macp rotate --wait` exited {:?}, not 0:\n{}{}",
            rotated.code, rotated.stdout, rotated.stderr
        ));
    }
    let request = rotated
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("request id: "))
        .unwrap_or_else(|| j.fail("`kubectl macp rotate` printed no request id"))
        .to_string();
    if !request.starts_with("rotate-") {
        j.fail(&format!("request id {request:?} is not a fresh rotate- id"));
    }
    // Not a terminal: one plain line per phase, then the outcome. The
    // propagated standby activates at once: no Publishing, no Propagating.
    for phase in ["Publishing", "Propagating"] {
        if rotated.stdout.contains(&format!(" {phase} (step ")) {
            j.fail(&format!(
                "`kubectl macp rotate --wait` went through {phase}, though a propagated standby was ready:\n{}",
                rotated.stdout
            ));
        }
    }
    for phase in ["Activating", "Draining", "Retiring"] {
        if !rotated.stdout.contains(&format!(" {phase} (step ")) {
            j.fail(&format!(
                "`kubectl macp rotate --wait` printed no {phase} line:\n{}",
                rotated.stdout
            ));
        }
    }
    if !rotated
        .stdout
        .contains(&format!(" Succeeded: {old_kid} -> "))
    {
        j.fail("`kubectl macp rotate --wait` did not report Succeeded from the old kid");
    }
    // The plugin's word checked against the status itself.
    let annotated = j.get_json(&["macpauth", "-n", NS, "auth"]).await;
    let recorded = annotated
        .pointer("/status/history")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|r| r.get("requestId").and_then(Value::as_str) == Some(&request));
    if recorded
        .and_then(|r| r.get("outcome"))
        .and_then(Value::as_str)
        != Some("Succeeded")
    {
        j.fail(&format!(
            "no Succeeded history entry for request {request}: {recorded:?}"
        ));
    }
    let annotation = format!(
        "/metadata/annotations/{}",
        ROTATE_ANNOTATION.replace('/', "~1")
    );
    if annotated.pointer(&annotation).and_then(Value::as_str) != Some(&request) {
        j.fail(&format!("{ROTATE_ANNOTATION} does not hold {request}"));
    }
    // Tokens minted just before the end are re-verified until they expire.
    tokio::time::sleep(Duration::from_secs(MAX_TTL + 1)).await;
    let report = load.stop().await;
    let mut watched = Vec::new();
    if let Some((mut child, printer)) = watcher {
        let _ = child.kill().await;
        watched = printer.await.unwrap_or_default();
    }
    // The printer columns show the phase: a person watching saw the drain.
    if !watched.iter().any(|l| l.contains("Draining")) {
        j.fail(&format!(
            "`kubectl get -w` showed no Draining line: {watched:?}"
        ));
    }
    let history = j.kubectl(&["macp", "history", "auth", "-n", NS]).await;
    if !history
        .lines()
        .any(|l| l.starts_with("manual") && l.contains(&request) && l.contains("Succeeded"))
    {
        j.fail("`kubectl macp history` has no Succeeded row for the request");
    }
    println!();
    println!("{}", report.summary_line("journey rotate"));
    let after = j.get_json(&["macpauth", "-n", NS, "auth"]).await;
    let new_kid = after
        .pointer("/status/activeKid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if new_kid == old_kid || new_kid.is_empty() {
        j.fail(&format!(
            "activeKid {old_kid:?} -> {new_kid:?}: no new key signs"
        ));
    }
    if report.minted == 0
        || report.mint_errors > 0
        || report.verify_failures + report.late_verify_failures > 0
    {
        j.fail(&format!(
            "expected tokens minted, 0 failed mints and 0 failed verifications: {} {:?} {:?} {:?}",
            report.summary_line("journey rotate"),
            report.mint_error_reasons,
            report.failure_reasons,
            report.late_failure_reasons
        ));
    }
    if report.late_checks == 0 {
        j.fail("no held token was re-verified later in its life");
    }
    let second = Duration::from_secs(1);
    let last_second = report.final_tokens_checked_at_end_of_life(&old_kid, second, second);
    if last_second == 0 {
        j.fail(&format!(
            "no max-TTL token of the old key {old_kid} from its last second of signing was re-verified in its own last second"
        ));
    }
    println!("  old key's final tokens re-verified in their last second: {last_second}");
    if !report.per_kid.contains_key(&new_kid) || !report.per_kid.contains_key(&old_kid) {
        j.fail(&format!(
            "the load did not see both keys sign: {:?}",
            report.per_kid.keys()
        ));
    }

    j.step("6 the incident: who minted with the suspect key, then the emergency rotation");
    let suspect = new_kid;
    // Mints the audit must find, with a subject of their own.
    for _ in 0..3 {
        mint(&http, &url).await.unwrap_or_else(|e| j.fail(&e));
    }
    println!("  minted 3 tokens as agent://journey");
    // The pods that signed with the suspect key during Activating and
    // Draining were replaced by Retiring's: the audit reads who is left and
    // says which stretch no readable pod covers (exit 5, incomplete).
    let audit = j
        .run(
            "kubectl",
            &["macp", "audit", "auth", "-n", NS, "--kid", &suspect],
        )
        .await;
    if audit.code != Some(5) {
        j.fail(&format!(
            "`kubectl macp audit` exited {:?}, not 5 (incomplete: the pods of the rotation's first rollouts are gone)",
            audit.code
        ));
    }
    if !audit
        .stdout
        .lines()
        .any(|l| l.contains("agent://journey") && l.contains("issued"))
    {
        j.fail("`kubectl macp audit` lists no token issued to agent://journey");
    }
    for part in [
        "WARNING: no pod running now ran between ",
        "MAY BE INCOMPLETE",
        "Per caller:",
    ] {
        if !audit.stdout.contains(part) {
            j.fail(&format!("`kubectl macp audit` lacks {part:?}"));
        }
    }
    if !audit.stderr.contains(&format!(
        "error: the audit of kid {suspect} in MacpAuth {NS}/auth may be incomplete"
    )) {
        j.fail("`kubectl macp audit` did not name the object and the kid on stderr");
    }
    let json = j
        .run_echo(
            "kubectl",
            &[
                "macp", "audit", "auth", "-n", NS, "--kid", &suspect, "-o", "json",
            ],
            false,
        )
        .await;
    let parsed: Value = serde_json::from_str(&json.stdout)
        .unwrap_or_else(|e| j.fail(&format!("`kubectl macp audit -o json`: not JSON: {e}")));
    // The three tokens minted above, each with its subject, TTL and pod.
    let ours: Vec<&Value> = parsed
        .get("mints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| {
            m.get("subject").and_then(Value::as_str) == Some("agent://journey")
                && m.get("status").and_then(Value::as_u64) == Some(200)
                && m.get("ttlSeconds").and_then(Value::as_u64) == Some(MAX_TTL)
                && m.get("pod")
                    .and_then(Value::as_str)
                    .is_some_and(|p| p.starts_with("auth-"))
        })
        .collect();
    let callers = parsed
        .get("callers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if json.code != Some(5)
        || parsed.get("complete") != Some(&Value::Bool(false))
        || ours.len() < 3
        || callers == 0
    {
        j.fail(&format!(
            "`kubectl macp audit -o json`: exit {:?}, complete {:?}, {} tokens of agent://journey (3 minted), {callers} callers",
            json.code,
            parsed.get("complete"),
            ours.len()
        ));
    }
    println!(
        "  -o json: {} mints of agent://journey, {callers} callers, complete=false",
        ours.len()
    );

    let emergency = j
        .run(
            "kubectl",
            &[
                "macp",
                "rotate",
                "auth",
                "-n",
                NS,
                "--emergency",
                "INC-journey",
                "--wait",
                "--timeout",
                "180s",
            ],
        )
        .await;
    if emergency.code != Some(0) || !emergency.stdout.contains(" Succeeded: ") {
        j.show_state().await;
        j.fail(&format!(
            "`kubectl macp rotate --emergency --wait` exited {:?}:\n{}{}",
            emergency.code, emergency.stdout, emergency.stderr
        ));
    }
    let incident = emergency
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("request id: "))
        .unwrap_or_default()
        .to_string();
    if !incident.starts_with("INC-journey-") {
        j.fail(&format!(
            "emergency request id {incident:?} does not carry the incident"
        ));
    }
    // The status records the request as handled, and its history entry as
    // Succeeded: the plugin's exit code checked against the operator's record.
    let status = j.get_json(&["macpauth", "-n", NS, "auth"]).await;
    if status
        .pointer("/status/handledEmergencyRequest")
        .and_then(Value::as_str)
        != Some(incident.as_str())
    {
        j.fail(&format!(
            "status.handledEmergencyRequest is not {incident} ({EMERGENCY_ROTATE_ANNOTATION})"
        ));
    }
    let recorded = status
        .pointer("/status/history")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|r| r.get("requestId").and_then(Value::as_str) == Some(incident.as_str()));
    if recorded
        .and_then(|r| r.get("outcome"))
        .and_then(Value::as_str)
        != Some("Succeeded")
    {
        j.fail(&format!(
            "no Succeeded history entry for {incident}: {recorded:?}"
        ));
    }
    j.kubectl(&["get", "macpauth", "-n", NS, "auth"]).await;
    for i in 0..6 {
        println!(
            "$ curl -s {url}/.well-known/jwks.json   # connection {}",
            i + 1
        );
        let kids = jwks_kids(&url).await.unwrap_or_else(|e| j.fail(&e));
        println!("  kids: {kids:?}");
        if kids.contains(&suspect) {
            j.fail(&format!(
                "the suspect key {suspect} is still published: {kids:?}"
            ));
        }
        if kids.is_empty() {
            j.fail("the JWKS is empty");
        }
    }
    // Every pod that signed with the suspect key is gone now: the audit finds
    // none of its lines and says so.
    let after = j
        .run(
            "kubectl",
            &["macp", "audit", "auth", "-n", NS, "--kid", &suspect],
        )
        .await;
    if after.code != Some(5)
        || !after
            .stdout
            .contains("No mint with this kid in the logs read.")
    {
        j.fail(&format!(
            "`kubectl macp audit` after the emergency: exit {:?}, expected 5 and no mint found",
            after.code
        ));
    }
    // The fresh key, over the last seconds only, on pods that all ran then: complete.
    let fresh = status
        .pointer("/status/activeKid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    mint(&http, &url).await.unwrap_or_else(|e| j.fail(&e));
    let recent = j
        .run(
            "kubectl",
            &[
                "macp", "audit", "auth", "-n", NS, "--kid", &fresh, "--since", "5s",
            ],
        )
        .await;
    if recent.code != Some(0)
        || !recent
            .stdout
            .contains("every pod that could have signed with it was read")
    {
        j.fail(&format!(
            "`kubectl macp audit --kid {fresh} --since 5s` exited {:?}, not 0 with a complete answer",
            recent.code
        ));
    }
    j.kubectl(&["macp", "history", "auth", "-n", NS, "-o", "wide"])
        .await;

    j.step("7 helm upgrade with a changed value");
    let operator_pods = [
        "get",
        "pods",
        "-n",
        RELEASE_NS,
        "-l",
        "app.kubernetes.io/name=macp-auth-operator",
        "-o",
        "name",
    ];
    let before_upgrade = j.kubectl(&operator_pods).await;
    j.helm(&[
        "upgrade",
        RELEASE,
        "charts/macp-auth-operator",
        "-n",
        RELEASE_NS,
        "--set",
        "logLevel=debug",
    ])
    .await;
    j.kubectl(&[
        "rollout",
        "status",
        "-n",
        RELEASE_NS,
        "deploy/macp-auth-operator",
        "--timeout=120s",
    ])
    .await;
    let level = j
        .kubectl(&[
            "get",
            "deploy",
            "-n",
            RELEASE_NS,
            "macp-auth-operator",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[?(@.name==\"RUST_LOG\")].value}",
        ])
        .await;
    if level.trim() != "debug" {
        j.fail(&format!(
            "RUST_LOG after the upgrade is {level:?}, not debug"
        ));
    }
    let after_upgrade = j.kubectl(&operator_pods).await;
    if after_upgrade.trim().is_empty() || after_upgrade == before_upgrade {
        j.fail("the upgrade did not replace the operator pod");
    }
    // Debug lines in the new pod's log show the changed value reached the
    // process (the operator logs at debug as it reconciles and resyncs).
    let debug_line = try_wait_until(
        "a DEBUG line in the upgraded operator's log",
        Duration::from_secs(30),
        Duration::from_secs(2),
        async || {
            let out = j
                .run(
                    "kubectl",
                    &[
                        "logs",
                        "-n",
                        RELEASE_NS,
                        "deploy/macp-auth-operator",
                        "--tail=3",
                    ],
                )
                .await;
            if out.ok && out.stdout.contains("DEBUG") {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(Displayed(out.stdout + &out.stderr))
            }
        },
    )
    .await;
    if let Err(e) = debug_line {
        j.fail(&e.to_string());
    }
    j.helm(&["status", RELEASE, "-n", RELEASE_NS]).await;
    j.kubectl(&[
        "wait",
        "-n",
        NS,
        "macpauth/auth",
        "macpauth/auth-es256",
        "--for=condition=Ready",
        "--timeout=120s",
    ])
    .await;

    j.step("8 helm uninstall: the signing keys stay and the token services serve");
    j.helm(&["uninstall", RELEASE, "-n", RELEASE_NS]).await;
    j.kubectl(&[
        "wait",
        "--for=delete",
        "pod",
        "-n",
        RELEASE_NS,
        "-l",
        "app.kubernetes.io/name=macp-auth-operator",
        "--timeout=60s",
    ])
    .await;
    j.kubectl(&["get", "deploy,pods", "-n", RELEASE_NS]).await;
    let secrets = j.kubectl(&["get", "secrets", "-n", NS]).await;
    for name in ["auth-signing-keys", "auth-es256-signing-keys"] {
        if !secrets
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name))
        {
            j.fail(&format!("Secret {name} is gone after helm uninstall"));
        }
    }
    for svc in ["auth", "auth-es256"] {
        let Some(u) = sandbox.service_url(NS, svc) else {
            j.fail(&format!("Service {NS}/{svc} has no local address"));
        };
        println!("$ curl -s {u}/tokens ...   # then verify with macp-auth");
        let token = mint(&http, &u).await.unwrap_or_else(|e| j.fail(&e));
        if let Err(e) = verify(&u, &token).await {
            j.fail(&format!(
                "{svc}: macp-auth refused a token without the operator: {e}"
            ));
        }
        println!(
            "  minted and verified (kid {})",
            token_kid(&token).unwrap_or_default()
        );
    }

    j.step("9 kubectl delete the MacpAuths: garbage collection removes what they owned");
    j.kubectl(&["get", "deploy,svc,secrets,configmaps", "-n", NS])
        .await;
    j.kubectl(&["delete", "-n", NS, "macpauth/auth", "macpauth/auth-es256"])
        .await;
    let deleted = j
        .run(
            "kubectl",
            &[
                "wait",
                "--for=delete",
                "pod",
                "-n",
                NS,
                "-l",
                "app.kubernetes.io/managed-by=macp-auth-operator",
                // Garbage collection, then each pod's shutdown (20 s at most): the
                // bound only keeps a broken collector from hanging the test, and a
                // loaded machine (a full suite beside other builds) took over 60 s.
                "--timeout=180s",
            ],
        )
        .await;
    if !deleted.ok {
        j.show_state().await;
        // Which pods stayed, and what holds each: its owners, a deletion
        // timestamp without the kubelet's release, or none at all.
        let pods = j.get_json(&["pods", "-n", NS]).await;
        let left: Vec<String> = pods
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                let m = &p["metadata"];
                format!(
                    "{} owners={} deletionTimestamp={} finalizers={} phase={}",
                    m["name"],
                    m["ownerReferences"],
                    m["deletionTimestamp"],
                    m["finalizers"],
                    p["status"]["phase"]
                )
            })
            .collect();
        j.fail(&format!(
            "pods outlived their MacpAuths: {}{}\n{}",
            deleted.stdout,
            deleted.stderr,
            left.join("\n")
        ));
    }
    let left = j
        .kubectl(&[
            "get",
            "deploy,svc,secrets,configmaps,pods",
            "-n",
            NS,
            "-o",
            "name",
        ])
        .await;
    let owned: Vec<&str> = left.lines().filter(|l| l.contains("/auth")).collect();
    if !owned.is_empty() {
        j.fail(&format!("left after deleting the MacpAuths: {owned:?}"));
    }
    println!(
        "\njourney complete in {:.0} s",
        j.started.elapsed().as_secs_f64()
    );
    sandbox.shutdown().await;
}

/// An image the sandbox cannot map: the pod says so, as a node that cannot
/// pull it would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_image_waits_in_image_pull_back_off() {
    let (sandbox, mut j) = start_no_operator().await;
    j.step("an unmapped image");
    // `kubectl create deployment` sends a protobuf body, which the fake API
    // server decodes only for a few kinds (tests/README.md): apply a manifest.
    let manifest = sandbox.dir().join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n\
         spec:\n  selector:\n    matchLabels: {app: web}\n  template:\n    \
         metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      \
         - name: web\n        image: nginx:1.27\n",
    )
    .expect("write the manifest");
    j.kubectl(&["apply", "-f", &manifest.display().to_string()])
        .await;
    let reason = try_wait_until(
        "the pod to wait in ImagePullBackOff",
        Duration::from_secs(30),
        Duration::from_millis(500),
        async || {
            let pods = j.get_json(&["pods", "-l", "app=web"]).await;
            let waiting = pods
                .pointer("/items/0/status/containerStatuses/0/state/waiting")
                .cloned();
            let field = |f: &str| {
                waiting
                    .as_ref()
                    .and_then(|w| w.get(f))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let reason = field("reason");
            if reason == "ImagePullBackOff" {
                let message = field("message");
                if !message.contains("nginx:1.27") {
                    j.fail(&format!("the message does not name the image: {message}"));
                }
                ControlFlow::Break(reason)
            } else {
                // The waiting reason seen last.
                ControlFlow::Continue(reason)
            }
        },
    )
    .await
    .unwrap_or_else(|e| j.fail(&e.to_string()));
    j.kubectl(&["get", "pods", "-l", "app=web"]).await;
    let described = j.kubectl(&["describe", "pods", "-l", "app=web"]).await;
    if !described.contains(&reason) || !described.contains("failed to pull image \"nginx:1.27\"") {
        j.fail("kubectl describe shows neither the waiting reason nor the kubelet's event");
    }
    sandbox.shutdown().await;
}
