//! The optional mint controls on a real loopback socket: caller
//! authentication (with reload), the per-caller rate limit, the audit log and
//! their metrics.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, ec_jwk};
use macp_auth_service::app::AppState;
use macp_auth_service::audit::AuditLog;
use macp_auth_service::callers::identity_of;
use macp_auth_service::config::Config;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const TOKEN_A: &str = "token-a-0123456789abcdef";
const TOKEN_B: &str = "token-b-0123456789abcdef";

fn app_state(extra: &[(&str, &str)]) -> AppState {
    let jwk = ec_jwk("ec-hard").to_string();
    let mut vars = vec![
        ("MACP_AUTH_SIGNING_ALG".to_string(), "ES256".to_string()),
        ("MACP_AUTH_SIGNING_KEY_JSON".to_string(), jwk),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = Config::from_vars(vars).unwrap();
    let keys = config.load_keys(|p| std::fs::read_to_string(p)).unwrap();
    let state = AppState::new(&config, keys);
    match config.load_callers(|p| std::fs::read_to_string(p)).unwrap() {
        Some(set) => state.with_callers(
            set,
            config.mint_tokens_file.clone().unwrap(),
            Duration::from_millis(50),
        ),
        None => state,
    }
}

fn tokens_file(dir: &Path, text: &str) -> String {
    let path = dir.join("callers");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

async fn mint(
    client: &Client,
    server: &TestServer,
    bearer: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = client
        .post(server.url("/tokens"))
        .header("content-type", "application/json")
        .body(json!({"sender": "agent-1", "scopes": {"x": 1}}).to_string());
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    (status, headers, response.json().await.unwrap())
}

async fn metrics(client: &Client, server: &TestServer) -> String {
    let response = client.get(server.url("/metrics")).send().await.unwrap();
    response.text().await.unwrap()
}

#[tokio::test]
async fn caller_auth_401_and_200() {
    let dir = tempfile::tempdir().unwrap();
    let path = tokens_file(dir.path(), &format!("# callers\n{TOKEN_A}\n\n{TOKEN_B}\n"));
    let server = TestServer::start(Arc::new(app_state(&[(
        "MACP_AUTH_MINT_TOKENS_FILE",
        &path,
    )])))
    .await;
    let client = Client::new();

    for bearer in [None, Some("wrong-token-0123456789"), Some("")] {
        let (status, headers, body) = mint(&client, &server, bearer).await;
        assert_eq!(status, 401, "{bearer:?}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert_eq!(body, json!({"error": "unauthorized"}));
    }
    // Basic auth with a valid token is still refused.
    let response = client
        .post(server.url("/tokens"))
        .header("content-type", "application/json")
        .header("authorization", format!("Basic {TOKEN_A}"))
        .body(r#"{"sender":"a"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    for token in [TOKEN_A, TOKEN_B] {
        let (status, _, body) = mint(&client, &server, Some(token)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["sender"], "agent-1");
    }
    // Authentication comes before body validation.
    let response = client
        .post(server.url("/tokens"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // JWKS, health and metrics stay open.
    for path in ["/healthz", "/.well-known/jwks.json", "/metrics"] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let text = metrics(&client, &server).await;
    for line in [
        r#"macp_auth_auth_failures_total{reason="missing"} 2"#,
        r#"macp_auth_auth_failures_total{reason="invalid"} 3"#,
        r#"macp_auth_mints_total{outcome="unauthorized",alg="ES256"} 5"#,
        r#"macp_auth_mints_total{outcome="issued",alg="ES256"} 2"#,
        "macp_auth_caller_tokens 2",
        "macp_auth_rate_limited_total 0",
        r#"macp_auth_signing_key_info{kid="ec-hard",alg="ES256"} 1"#,
        "macp_auth_signing_key_age_seconds ",
        "macp_auth_published_keys 1",
    ] {
        assert!(text.contains(line), "{line} missing in {text}");
    }
    server.stop().await;
}

/// Replaces the tokens file the way a Secret volume does: a new file
/// renamed over the path.
fn replace_file(path: &str, text: &str) {
    let next = format!("{path}.next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// Mints with `bearer` until the answer is `want` (the file is polled every
/// 50 ms); panics after 10 s.
async fn until_status(client: &Client, server: &TestServer, bearer: &str, want: u16) {
    let mut waited = Duration::ZERO;
    while mint(client, server, Some(bearer)).await.0 != want {
        assert!(
            waited < Duration::from_secs(10),
            "reload not seen: never {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
        waited += Duration::from_millis(25);
    }
}

#[tokio::test]
async fn caller_tokens_reload_on_file_change_and_a_bad_file_admits_no_caller() {
    let dir = tempfile::tempdir().unwrap();
    let path = tokens_file(dir.path(), &format!("{TOKEN_A}\n"));
    let server = TestServer::start(Arc::new(app_state(&[(
        "MACP_AUTH_MINT_TOKENS_FILE",
        &path,
    )])))
    .await;
    let client = Client::new();
    assert_eq!(mint(&client, &server, Some(TOKEN_A)).await.0, 200);
    assert_eq!(mint(&client, &server, Some(TOKEN_B)).await.0, 401);

    replace_file(&path, &format!("{TOKEN_B}\n"));
    until_status(&client, &server, TOKEN_B, 200).await;
    assert_eq!(mint(&client, &server, Some(TOKEN_A)).await.0, 401);

    // An emptied file admits no caller, and neither does a missing one.
    replace_file(&path, "# emptied by mistake\n");
    until_status(&client, &server, TOKEN_B, 401).await;
    let text = metrics(&client, &server).await;
    assert!(
        text.contains(r#"macp_auth_caller_token_file_problems{problem="no_tokens"} 1"#),
        "{text}"
    );
    assert!(text.contains("macp_auth_caller_tokens 0"), "{text}");
    replace_file(&path, &format!("{TOKEN_B}\n"));
    until_status(&client, &server, TOKEN_B, 200).await;
    std::fs::remove_file(&path).unwrap();
    until_status(&client, &server, TOKEN_B, 401).await;
    let text = metrics(&client, &server).await;
    for line in [
        r#"macp_auth_caller_token_reloads_total{result="ok"} 2"#,
        r#"macp_auth_caller_token_reloads_total{result="empty"} 1"#,
        r#"macp_auth_caller_token_reloads_total{result="unreadable"} 1"#,
        r#"macp_auth_caller_token_file_problems{problem="unreadable"} 1"#,
        r#"macp_auth_caller_token_file_problems{problem="no_tokens"} 0"#,
    ] {
        assert!(text.contains(line), "{line} missing in {text}");
    }
    server.stop().await;
}

/// Revoking one of two tokens with a file that also has a mistake: the
/// revoked token is refused as soon as the file is re-read, the other one
/// keeps minting, and the bad line is dropped and reported, not fatal.
#[tokio::test]
async fn a_revoked_token_is_refused_even_when_the_new_file_has_an_invalid_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = tokens_file(dir.path(), &format!("{TOKEN_A}\n{TOKEN_B}\n"));
    let server = TestServer::start(Arc::new(app_state(&[(
        "MACP_AUTH_MINT_TOKENS_FILE",
        &path,
    )])))
    .await;
    let client = Client::new();
    assert_eq!(mint(&client, &server, Some(TOKEN_A)).await.0, 200);
    assert_eq!(mint(&client, &server, Some(TOKEN_B)).await.0, 200);

    replace_file(&path, &format!("# B revoked\n{TOKEN_A}\nshort\n"));
    until_status(&client, &server, TOKEN_B, 401).await;
    // From the reload on, every attempt of the revoked token is refused.
    for _ in 0..20 {
        assert_eq!(mint(&client, &server, Some(TOKEN_B)).await.0, 401);
    }
    assert_eq!(mint(&client, &server, Some(TOKEN_A)).await.0, 200);
    let text = metrics(&client, &server).await;
    for line in [
        "macp_auth_caller_tokens 1",
        r#"macp_auth_caller_token_reloads_total{result="invalid_lines"} 1"#,
        r#"macp_auth_caller_token_file_problems{problem="invalid_lines"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing in {text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let server = TestServer::start(Arc::new(app_state(&[
        ("MACP_AUTH_RATE_LIMIT_PER_SECOND", "0.2"),
        ("MACP_AUTH_RATE_LIMIT_BURST", "2"),
    ])))
    .await;
    let client = Client::new();
    assert_eq!(mint(&client, &server, None).await.0, 200);
    assert_eq!(mint(&client, &server, None).await.0, 200);
    let (status, headers, body) = mint(&client, &server, None).await;
    assert_eq!(status, 429);
    assert_eq!(body, json!({"error": "rate limit exceeded"}));
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    // Other endpoints are not limited.
    assert_eq!(
        client
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let text = metrics(&client, &server).await;
    assert!(text.contains("macp_auth_rate_limited_total 1"), "{text}");
    assert!(text.contains(r#"macp_auth_mints_total{outcome="rate_limited",alg="ES256"} 1"#));
    server.stop().await;
}

#[tokio::test]
async fn rate_limit_is_per_caller_with_auth_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = tokens_file(dir.path(), &format!("{TOKEN_A}\n{TOKEN_B}\n"));
    let server = TestServer::start(Arc::new(app_state(&[
        ("MACP_AUTH_MINT_TOKENS_FILE", &path),
        ("MACP_AUTH_RATE_LIMIT_PER_SECOND", "0.1"),
        ("MACP_AUTH_RATE_LIMIT_BURST", "1"),
    ])))
    .await;
    let client = Client::new();
    assert_eq!(mint(&client, &server, Some(TOKEN_A)).await.0, 200);
    assert_eq!(mint(&client, &server, Some(TOKEN_A)).await.0, 429);
    // Same address, different caller: its own bucket.
    assert_eq!(mint(&client, &server, Some(TOKEN_B)).await.0, 200);
    server.stop().await;
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn audit_line_per_attempt_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = tokens_file(dir.path(), &format!("{TOKEN_A}\n"));
    let out = Captured::default();
    let state = app_state(&[
        ("MACP_AUTH_MINT_TOKENS_FILE", &path),
        ("MACP_AUTH_MAX_TTL_SECONDS", "600"),
    ])
    .with_audit(AuditLog::spawn(out.clone()).unwrap());
    let server = TestServer::start(Arc::new(state)).await;
    let client = Client::new();
    let (status, _, body) = mint(&client, &server, Some(TOKEN_A)).await;
    assert_eq!(status, 200);
    let jwt = body["token"].as_str().unwrap().to_string();
    assert_eq!(
        mint(&client, &server, Some("bad-token-0123456789")).await.0,
        401
    );
    let response = client
        .post(server.url("/tokens"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {TOKEN_A}"))
        .body(r#"{"sender":"agent-2","ttl_seconds":0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let text = loop {
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        if text.lines().count() >= 3 {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(!text.contains(TOKEN_A), "bearer token leaked: {text}");
    assert!(!text.contains(&jwt), "minted JWT leaked: {text}");
    assert!(
        !text.contains("bad-token"),
        "presented token leaked: {text}"
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);

    let issued = &lines[0];
    assert_eq!(issued["event"], "mint");
    assert_eq!(issued["outcome"], "issued");
    assert_eq!(issued["status"], 200);
    assert_eq!(issued["caller"], identity_of(TOKEN_A));
    assert_eq!(issued["sender"], "agent-1");
    assert_eq!(issued["scopes"], json!({"x": 1}));
    assert_eq!(issued["ttl_seconds"], 300);
    assert_eq!(issued["kid"], "ec-hard");
    assert_eq!(issued["alg"], "ES256");
    assert!(issued["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(chrono_like(issued["ts"].as_str().unwrap()), "{issued}");

    let refused = &lines[1];
    assert_eq!(refused["outcome"], "unauthorized");
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["caller"], Value::Null);
    assert_eq!(refused["sender"], Value::Null);

    let invalid = &lines[2];
    assert_eq!(invalid["outcome"], "ttl_seconds must be a positive number");
    assert_eq!(invalid["status"], 400);
    assert_eq!(invalid["caller"], identity_of(TOKEN_A));
    server.stop().await;
}

/// `2026-11-27T01:02:03.456Z`.
fn chrono_like(ts: &str) -> bool {
    let b = ts.as_bytes();
    ts.len() == 24 && b[4] == b'-' && b[10] == b'T' && b[19] == b'.' && ts.ends_with('Z')
}
