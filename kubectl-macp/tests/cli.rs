//! The plugin binary against the in-process API server (no operator, no
//! pods running): the status it reads, the annotation `rotate` writes, and
//! every exit code, with the status changed by hand as the operator would.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use macp_auth_e2e::apiserver::{ApiHandle, FakeApiServer, LogOptions, PodLogs};
use macp_auth_e2e::sandbox::{kubeconfig, objects};
use macp_auth_operator::crd::{
    EMERGENCY_ROTATE_ANNOTATION, EMERGENCY_SCOPE_ANNOTATION, EMERGENCY_SCOPE_SECRET,
    ROTATE_ANNOTATION,
};
use macp_auth_operator::resources::{APP_NAME, INSTANCE_LABEL, NAME_LABEL};
use serde_json::{Value, json};

const NS: &str = "macp";
const OLD: &str = "auth-20261206110000-aaaa";
const NEW: &str = "auth-20261206120000-bbbb";

struct Env {
    server: FakeApiServer,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Self {
        let server = FakeApiServer::start().await.expect("API server");
        objects::install_crd(&server.handle());
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        // The context's namespace is `default`: every command here passes -n.
        kubeconfig::write(&kubeconfig, &server.url(), "default").expect("kubeconfig");
        Self {
            server,
            kubeconfig,
            _dir: dir,
        }
    }

    fn api(&self) -> ApiHandle {
        self.server.handle()
    }

    async fn run(&self, args: &[&str]) -> Output {
        run(&self.kubeconfig, args).await
    }
}

async fn run(kubeconfig: &Path, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-macp"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBECONFIG")
        .output()
        .await
        .expect("run kubectl-macp");
    println!(
        "$ kubectl macp {}\n{}{}(exit {:?})",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A MacpAuth with one routine rotation behind it, its audit log on.
fn macpauth() -> Value {
    json!({
        "apiVersion": "macp.io/v1alpha1",
        "kind": "MacpAuth",
        "metadata": {"name": "auth", "namespace": NS},
        "spec": {"maxTtlSeconds": 300, "audit": {"enabled": true}},
        "status": {
            "activeKid": NEW,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "", "lastTransitionTime": "2026-12-06T12:00:00Z"}],
            "rotation": {"phase": "Idle"},
            "history": [
                {"trigger": "initial", "newKid": OLD, "startedAt": "2026-12-06T11:00:00Z", "finishedAt": "2026-12-06T11:00:00Z", "outcome": "Succeeded"},
                {"trigger": "manual", "requestId": "r0", "oldKid": OLD, "newKid": NEW, "startedAt": "2026-12-06T12:00:00Z", "finishedAt": "2026-12-06T12:07:00Z", "outcome": "Succeeded", "message": "rotation complete"}
            ]
        }
    })
}

fn annotation(api: &ApiHandle, key: &str) -> Option<String> {
    api.get("macp.io", "macpauths", Some(NS), "auth")?
        .pointer(&format!("/metadata/annotations/{}", key.replace('/', "~1")))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Waits for `rotate` to write its annotation, then returns its value.
async fn written(api: &ApiHandle, key: &str) -> String {
    for _ in 0..100 {
        if let Some(v) = annotation(api, key) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{key} was never written");
}

/// What the operator would record when the rotation of `id` ends.
fn finish(api: &ApiHandle, id: &str, outcome: &str, message: &str) {
    api.modify("macp.io", "macpauths", Some(NS), "auth", |m| {
        let history = m["status"]["history"].as_array_mut().expect("history");
        history.push(json!({
            "trigger": "manual", "requestId": id, "oldKid": NEW, "newKid": "auth-20261206130000-cccc",
            "startedAt": "2026-12-06T13:00:00Z", "finishedAt": "2026-12-06T13:01:00Z",
            "outcome": outcome, "message": message
        }));
    })
    .expect("write the status");
}

#[tokio::test]
async fn status_and_history_read_the_macpauth_and_name_a_missing_one() {
    let env = Env::start().await;
    env.api()
        .create("macp.io", "macpauths", macpauth())
        .expect("create");
    let out = env.run(&["status", "auth", "-n", NS]).await;
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.starts_with("MacpAuth macp/auth\n  Ready:          True\n  Phase:          Idle"),
        "{text}"
    );
    assert!(text.contains(&format!("    {NEW}   active")), "{text}");
    assert!(text.contains("  Pods:\n    (none)\n"), "{text}");

    let out = env.run(&["history", "auth", "-n", NS, "-o", "json"]).await;
    let history: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(history[1]["requestId"], "r0");

    let out = env.run(&["status", "nosuch", "-n", NS]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("error: MacpAuth macp/nosuch not found"),
        "{}",
        stderr(&out)
    );
    let out = env
        .run(&["rotate", "auth", "-n", NS, "--emergency", "INC 1"])
        .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a blank in the incident id is a usage error"
    );
    assert_eq!(annotation(&env.api(), EMERGENCY_ROTATE_ANNOTATION), None);
    // A scope without an emergency is a usage error, and writes nothing.
    let out = env
        .run(&["rotate", "auth", "-n", NS, "--scope", "secret"])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(annotation(&env.api(), EMERGENCY_SCOPE_ANNOTATION), None);
    // With an emergency, the scope goes in the same write as the request.
    let out = env
        .run(&[
            "rotate",
            "auth",
            "-n",
            NS,
            "--emergency",
            "INC-2",
            "--scope",
            "secret",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        annotation(&env.api(), EMERGENCY_SCOPE_ANNOTATION).as_deref(),
        Some(EMERGENCY_SCOPE_SECRET)
    );
    let incident = annotation(&env.api(), EMERGENCY_ROTATE_ANNOTATION).expect("annotated");
    assert!(incident.starts_with("INC-2-"), "{incident}");
    assert!(
        stdout(&out).contains(&format!(
            "annotated: {EMERGENCY_SCOPE_ANNOTATION}={EMERGENCY_SCOPE_SECRET} {EMERGENCY_ROTATE_ANNOTATION}={incident}"
        )),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn rotate_wait_exits_0_on_succeeded_3_on_rolled_back_and_4_on_timeout() {
    let env = Env::start().await;
    env.api()
        .create("macp.io", "macpauths", macpauth())
        .expect("create");

    // Succeeded.
    let kc = env.kubeconfig.clone();
    let waiting = tokio::spawn(async move {
        run(
            &kc,
            &["rotate", "auth", "-n", NS, "--wait", "--timeout", "30s"],
        )
        .await
    });
    let id = written(&env.api(), ROTATE_ANNOTATION).await;
    assert!(id.starts_with("rotate-"), "{id}");
    finish(&env.api(), &id, "Succeeded", "rotation complete");
    let out = waiting.await.expect("join");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("request id: {id}\n")));
    assert!(stdout(&out).contains(&format!(
        " Succeeded: {NEW} -> auth-20261206130000-cccc in 60s\n"
    )));

    // Rolled back: exit 3 with the reason, naming the object.
    let kc = env.kubeconfig.clone();
    let waiting = tokio::spawn(async move {
        run(
            &kc,
            &["rotate", "auth", "-n", NS, "--wait", "--timeout", "30s"],
        )
        .await
    });
    let second = loop {
        let v = written(&env.api(), ROTATE_ANNOTATION).await;
        if v != id {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    finish(
        &env.api(),
        &second,
        "RolledBack",
        "rolled back; the new key is discarded",
    );
    let out = waiting.await.expect("join");
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains(&format!(
            "error: rotation {second} of MacpAuth macp/auth did not succeed: RolledBack: rolled back; the new key is discarded"
        )),
        "{}",
        stderr(&out)
    );

    // Nobody acts on the request: exit 4.
    let out = env
        .run(&[
            "rotate",
            "auth",
            "-n",
            NS,
            "--emergency",
            "INC-9",
            "--wait",
            "--timeout",
            "2s",
        ])
        .await;
    assert_eq!(out.status.code(), Some(4));
    let incident = annotation(&env.api(), EMERGENCY_ROTATE_ANNOTATION).expect("annotated");
    assert!(incident.starts_with("INC-9-"), "{incident}");
    assert!(
        stderr(&out).contains(
            "did not end within 2s; last seen: the operator had not acted on the request"
        ),
        "{}",
        stderr(&out)
    );
}

/// The logs of the pods that exist in the store, by name.
struct Logs(Vec<(String, String)>);

impl PodLogs for Logs {
    fn logs(&self, _ns: &str, pod: &str, _c: Option<&str>, _o: &LogOptions) -> Option<Vec<u8>> {
        self.0
            .iter()
            .find(|(p, _)| p == pod)
            .map(|(_, l)| l.clone().into_bytes())
    }
}

fn pod(name: &str, started: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {NAME_LABEL: APP_NAME, INSTANCE_LABEL: "auth"}},
        "spec": {"containers": [{"name": "auth-service", "image": "macp-auth-service"}]},
        "status": {"phase": "Running", "startTime": started}
    })
}

fn line(ts: &str, kid: &str, sender: &str) -> String {
    format!(
        r#"{{"ts":"{ts}","event":"mint","caller":null,"client":"10.0.0.5:4000","sender":"{sender}","scopes":{{}},"ttl_seconds":300,"kid":"{kid}","alg":"RS256","status":200,"outcome":"issued"}}"#
    )
}

#[tokio::test]
async fn audit_is_complete_only_when_every_pod_that_could_sign_was_read() {
    let env = Env::start().await;
    env.api()
        .create("macp.io", "macpauths", macpauth())
        .expect("create");
    // auth-a ran through the whole time NEW signs; auth-b is listed but its log is gone.
    env.api()
        .create("", "pods", pod("auth-a", "2026-12-06T11:30:00Z"))
        .expect("pod");
    let log = [
        "[auth-service] listening on port 3200".to_string(),
        line("2026-12-06T12:10:00.000Z", NEW, "agent://alice"),
        line("2026-12-06T12:11:00.000Z", NEW, "agent://alice"),
        line("2026-12-06T12:12:00.000Z", OLD, "agent://bob"),
    ]
    .join("\n");
    env.server
        .set_pod_logs(Arc::new(Logs(vec![("auth-a".into(), log)])));

    let out = env.run(&["audit", "auth", "-n", NS, "--kid", NEW]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("client 10.0.0.5   agent://alice   300s   issued    2 "),
        "{text}"
    );
    assert!(text.ends_with("2 tokens issued with auth-20261206120000-bbbb (0 refused) to 1 callers; every pod that could have signed with it was read.\n"), "{text}");

    env.api()
        .create("", "pods", pod("auth-b", "2026-12-06T11:30:00Z"))
        .expect("pod");
    let out = env
        .run(&["audit", "auth", "-n", NS, "--kid", NEW, "-o", "json"])
        .await;
    assert_eq!(out.status.code(), Some(5));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["complete"], false);
    assert_eq!(report["issued"], 2);
    assert_eq!(report["podsUnreadable"][0]["pod"], "auth-b");

    // The audit log off: said, and incomplete.
    env.api()
        .modify("macp.io", "macpauths", Some(NS), "auth", |m| {
            m["spec"]["audit"]["enabled"] = json!(false);
        })
        .expect("turn audit off");
    env.api()
        .delete("", "pods", Some(NS), "auth-b")
        .expect("delete");
    let out = env.run(&["audit", "auth", "-n", NS, "--kid", NEW]).await;
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stdout(&out).contains("the mint audit log is off"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("may be incomplete: the audit log is off"),
        "{}",
        stderr(&out)
    );
}
