//! The HTTP contract (docs/architecture.md, The token service; README, API) on a
//! real loopback socket.

mod common;

use std::sync::Arc;

use common::{TestServer, ec_jwk, raw_request, rsa_jwk, segment, state};
use macp_auth_service::app::{AppState, MAX_BODY_BYTES};
use macp_auth_service::keys::public_jwk;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

fn rs256_state(extra: &[(&str, String)]) -> Arc<AppState> {
    let mut vars = vec![
        ("MACP_AUTH_SIGNING_KEY_JSON", rsa_jwk().to_string()),
        ("MACP_AUTH_MAX_TTL_SECONDS", "600".to_string()),
        ("MACP_AUTH_DEFAULT_TTL_SECONDS", "120".to_string()),
        ("MACP_AUTH_ISSUER", "iss-test".to_string()),
        ("MACP_AUTH_AUDIENCE", "aud-test".to_string()),
    ];
    vars.extend(extra.iter().cloned());
    state(&vars)
}

async fn server() -> TestServer {
    TestServer::start(rs256_state(&[])).await
}

async fn post_json(
    client: &Client,
    server: &TestServer,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let response = client
        .post(server.url("/tokens"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "every answer of /tokens is JSON"
    );
    (status, response.json().await.unwrap())
}

async fn mint(client: &Client, server: &TestServer, body: Value) -> (StatusCode, Value) {
    post_json(client, server, body.to_string()).await
}

fn err(message: &str) -> Value {
    json!({ "error": message })
}

#[tokio::test]
async fn healthz_and_jwks() {
    let verification = json!({"keys": [ec_jwk("old-ec")]}).to_string();
    let server = TestServer::start(rs256_state(&[(
        "MACP_AUTH_VERIFICATION_KEYS_JSON",
        verification,
    )]))
    .await;
    let client = Client::new();

    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.headers()["content-type"], "application/json");
    assert_eq!(health.json::<Value>().await.unwrap(), json!({"ok": true}));

    let jwks: Value = client
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], public_jwk(rsa_jwk()).unwrap(), "active key first");
    assert_eq!(keys[1]["kid"], "old-ec");
    for key in keys {
        for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
            assert!(key.get(private).is_none(), "{private} published");
        }
        assert_eq!(key["use"], "sig");
    }
    server.stop().await;
}

#[tokio::test]
async fn mint_issues_a_token_with_the_contract_claims() {
    let server = server().await;
    let client = Client::new();
    let scopes = json!({
        "allowed_modes": ["decision", "task"],
        "can_start_sessions": true,
        "custom": {"nested": [1, 2, {"x": null}]},
        "unknown_key": "kept"
    });
    let (status, body) = mint(
        &client,
        &server,
        json!({"sender": "agent://a", "scopes": scopes, "ttl_seconds": 60}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sender"], "agent://a");
    assert_eq!(body["expires_in_seconds"], 60);
    let token = body["token"].as_str().unwrap();
    assert_eq!(
        segment(token, 0),
        json!({"alg": "RS256", "kid": "rsa-test-1", "typ": "JWT"})
    );
    let claims = segment(token, 1);
    assert_eq!(claims["iss"], "iss-test");
    assert_eq!(claims["aud"], "aud-test");
    assert_eq!(claims["sub"], "agent://a");
    assert_eq!(claims["macp_scopes"], scopes, "scopes copied verbatim");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 60);
    let mut names: Vec<&String> = claims.as_object().unwrap().keys().collect();
    names.sort();
    assert_eq!(names, ["aud", "exp", "iat", "iss", "macp_scopes", "sub"]);
    server.stop().await;
}

#[tokio::test]
async fn scopes_empty_or_omitted() {
    let server = server().await;
    let client = Client::new();
    for body in [json!({"sender": "a", "scopes": {}}), json!({"sender": "a"})] {
        let (status, answer) = mint(&client, &server, body).await;
        assert_eq!(status, 200);
        assert_eq!(
            segment(answer["token"].as_str().unwrap(), 1)["macp_scopes"],
            json!({})
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn ttl_default_null_clamp_and_floor() {
    let server = server().await;
    let client = Client::new();
    for (ttl, expected) in [
        (None, 120),
        (Some(json!(null)), 120),
        (Some(json!(601)), 600),
        (Some(json!(1e12)), 600),
        (Some(json!(600)), 600),
        (Some(json!(30.9)), 30),
        (Some(json!(0.2)), 1),
    ] {
        let mut body = json!({"sender": "a"});
        if let Some(ttl) = &ttl {
            body["ttl_seconds"] = ttl.clone();
        }
        let (status, answer) = mint(&client, &server, body).await;
        assert_eq!(status, 200, "{ttl:?}");
        assert_eq!(answer["expires_in_seconds"], expected, "{ttl:?}");
        let claims = segment(answer["token"].as_str().unwrap(), 1);
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            expected,
            "expires_in_seconds == exp - iat"
        );
    }
    server.stop().await;
}

/// The 400 answer `message` and the request bodies that get it.
struct Refusal {
    message: &'static str,
    bodies: &'static [&'static str],
}

#[tokio::test]
async fn error_table_400s() {
    let server = server().await;
    let client = Client::new();
    // Each body is its own case's name; grouped by the answer it gets.
    let refusals = [
        Refusal {
            message: "invalid JSON body",
            bodies: &[
                "{",
                "",
                r#"{"sender": "a",}"#,
                "\u{0}",
                // Non-finite numbers are not JSON: the parser refuses them first.
                r#"{"sender": "a", "ttl_seconds": NaN}"#,
                r#"{"sender": "a", "ttl_seconds": 1e999}"#,
            ],
        },
        Refusal {
            message: "sender is required",
            bodies: &[
                "[]",
                r#""agent""#,
                "42",
                "null",
                "{}",
                r#"{"sender": ""}"#,
                r#"{"sender": "  \t"}"#,
                r#"{"sender": 7}"#,
                r#"{"sender": null}"#,
                r#"{"sender": ["a"]}"#,
                // Check order: sender before scopes before ttl.
                r#"{"scopes": 1, "ttl_seconds": 0}"#,
            ],
        },
        Refusal {
            message: "scopes must be an object",
            bodies: &[
                r#"{"sender": "a", "scopes": "all"}"#,
                r#"{"sender": "a", "scopes": ["a"]}"#,
                r#"{"sender": "a", "scopes": 1}"#,
                r#"{"sender": "a", "scopes": true}"#,
                r#"{"sender": "a", "scopes": null}"#,
                r#"{"sender": "a", "scopes": 1, "ttl_seconds": 0}"#,
            ],
        },
        Refusal {
            message: "ttl_seconds must be a positive number",
            bodies: &[
                r#"{"sender": "a", "ttl_seconds": 0}"#,
                r#"{"sender": "a", "ttl_seconds": -5}"#,
                r#"{"sender": "a", "ttl_seconds": -0.0}"#,
                r#"{"sender": "a", "ttl_seconds": "60"}"#,
                r#"{"sender": "a", "ttl_seconds": true}"#,
                r#"{"sender": "a", "ttl_seconds": {}}"#,
            ],
        },
    ];
    for Refusal { message, bodies } in refusals {
        for &body in bodies {
            let (status, answer) = post_json(&client, &server, body).await;
            assert_eq!(status, 400, "{body:?}");
            assert_eq!(answer, err(message), "{body:?}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn content_type_is_checked_first() {
    let server = server().await;
    let client = Client::new();
    let valid = json!({"sender": "a"}).to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=iso-8859-1"),
    ] {
        let mut request = client.post(server.url("/tokens")).body(valid.clone());
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 415, "{content_type:?}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            err("content-type must be application/json")
        );
    }
    // Even an unparseable or oversized body gets 415 when the type is wrong.
    let response = client
        .post(server.url("/tokens"))
        .header("content-type", "text/plain")
        .body(vec![b'x'; MAX_BODY_BYTES + 10])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    let response = client
        .post(server.url("/tokens"))
        .header("content-type", "application/json; charset=utf-8")
        .body(valid)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn body_size_limit() {
    let server = server().await;
    let client = Client::new();

    // Exactly 100 KiB is allowed: valid JSON padded with spaces.
    let mut exact = json!({"sender": "a"}).to_string().into_bytes();
    exact.resize(MAX_BODY_BYTES, b' ');
    let (status, _) = post_json(&client, &server, exact).await;
    assert_eq!(status, 200);

    // One byte more is not, with a declared length...
    let mut over = json!({"sender": "a"}).to_string().into_bytes();
    over.resize(MAX_BODY_BYTES + 1, b' ');
    let (status, answer) = post_json(&client, &server, over).await;
    assert_eq!(status, 413);
    assert_eq!(answer, err("request body too large"));

    // ...or streamed in chunks without a declared length.
    let mut chunked = Vec::new();
    for _ in 0..30 {
        chunked.extend_from_slice(format!("{:x}\r\n", 8 * 1024).as_bytes());
        chunked.extend_from_slice(&[b' '; 8 * 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let response = raw_request(
        server.addr,
        "POST /tokens HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked",
        &chunked,
    )
    .await;
    assert_eq!(response.status, 413);
    assert_eq!(response.json(), err("request body too large"));

    // A huge declared length is refused before any body byte is sent.
    let response = raw_request(
        server.addr,
        "POST /tokens HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1073741824",
        b"",
    )
    .await;
    assert_eq!(response.status, 413);
    assert_eq!(response.json(), err("request body too large"));
    assert_eq!(
        response.header("content-type").as_deref(),
        Some("application/json")
    );

    // The server is still fine afterwards.
    let (status, _) = mint(&client, &server, json!({"sender": "a"})).await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn deeply_nested_body_is_a_400_not_a_crash() {
    let server = server().await;
    let client = Client::new();
    for depth in [200, 10_000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let (status, answer) = post_json(&client, &server, nested).await;
        assert_eq!(status, 400);
        assert_eq!(answer, err("invalid JSON body"));
        let nested = format!(
            "{{\"sender\":\"a\",\"scopes\":{}{}}}",
            "{\"a\":".repeat(depth),
            "}".repeat(depth)
        );
        let (status, answer) = post_json(&client, &server, nested).await;
        assert_eq!(status, 400);
        assert_eq!(answer, err("invalid JSON body"));
    }
    let (status, _) = mint(&client, &server, json!({"sender": "still-alive"})).await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn not_found_and_method_not_allowed_are_json() {
    let server = server().await;
    let client = Client::new();
    for (method, path, status, message) in [
        ("GET", "/nope", 404, "not found"),
        ("POST", "/nope", 404, "not found"),
        ("GET", "/tokens/", 404, "not found"),
        ("GET", "/tokens", 405, "method not allowed"),
        ("PUT", "/tokens", 405, "method not allowed"),
        ("POST", "/healthz", 405, "method not allowed"),
        (
            "DELETE",
            "/.well-known/jwks.json",
            405,
            "method not allowed",
        ),
    ] {
        let response = client
            .request(method.parse().unwrap(), server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.json::<Value>().await.unwrap(), err(message));
    }
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_mints() {
    let server = server().await;
    let client = Client::new();
    mint(&client, &server, json!({"sender": "a"})).await;
    mint(&client, &server, json!({"sender": ""})).await;
    // A client that does not ask for OpenMetrics (curl, promtool) gets the
    // Prometheus text format, whose counter metadata names the _total samples.
    let plain = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(plain.status(), 200);
    assert!(
        plain.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let plain = plain.text().await.unwrap();
    assert!(
        plain.contains("# TYPE macp_auth_mints_total counter\n"),
        "{plain}"
    );
    assert!(!plain.contains("# EOF"), "{plain}");
    let response = client
        .get(server.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains(r#"macp_auth_mints_total{outcome="issued",alg="RS256"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"macp_auth_mints_total{outcome="invalid_sender",alg="RS256"} 1"#));
    assert!(text.contains(r#"macp_auth_signing_key_info{kid="rsa-test-1",alg="RS256"} 1"#));
    assert!(text.contains("macp_auth_published_keys 1"));
    server.stop().await;
}

#[tokio::test]
async fn es256_mints() {
    let server = TestServer::start(state(&[
        ("MACP_AUTH_SIGNING_ALG", "ES256".to_string()),
        (
            "MACP_AUTH_SIGNING_KEY_JSON",
            ec_jwk("ec-active").to_string(),
        ),
    ]))
    .await;
    let client = Client::new();
    let (status, body) = mint(&client, &server, json!({"sender": "b"})).await;
    assert_eq!(status, 200);
    let token = body["token"].as_str().unwrap();
    assert_eq!(
        segment(token, 0),
        json!({"alg": "ES256", "kid": "ec-active", "typ": "JWT"})
    );
    assert_eq!(body["expires_in_seconds"], 300);
    server.stop().await;
}
