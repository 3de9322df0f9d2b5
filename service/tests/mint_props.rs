//! Property: no body, with or without the JSON content type, makes
//! `POST /tokens` answer a 5xx, panic, or answer with anything but JSON.
//! Runs the router in-process (`oneshot`), no sockets.

mod common;

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{ec_jwk, state};
use http_body_util::BodyExt;
use macp_auth_service::app::{AppState, router};
use proptest::prelude::*;
use serde_json::Value;
use tower::ServiceExt;

fn shared_state() -> Arc<AppState> {
    static STATE: OnceLock<Arc<AppState>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            state(&[
                ("MACP_AUTH_SIGNING_ALG", "ES256".to_string()),
                ("MACP_AUTH_SIGNING_KEY_JSON", ec_jwk("prop").to_string()),
            ])
        })
        .clone()
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Posts `body` and checks the answer; returns the status.
fn post(body: Vec<u8>, content_type: Option<&str>) -> Result<StatusCode, TestCaseError> {
    let mut request = Request::post("/tokens");
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let request = request.body(Body::from(body)).unwrap();
    let (status, ct, bytes) = runtime().block_on(async {
        let response = router(shared_state()).oneshot(request).await.unwrap();
        let status = response.status();
        let ct = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, ct, bytes)
    });
    prop_assert!(!status.is_server_error(), "{status}");
    prop_assert_eq!(ct.as_deref(), Some("application/json"));
    let parsed: Result<Value, _> = serde_json::from_slice(&bytes);
    prop_assert!(parsed.is_ok(), "non-JSON body {:?}", bytes);
    let parsed = parsed.unwrap();
    if status == StatusCode::OK {
        prop_assert!(parsed["token"].is_string());
    } else {
        prop_assert!(parsed["error"].is_string(), "{parsed}");
    }
    Ok(status)
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::hash_map(".{0,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects that look like mint requests, so the later checks get exercised.
fn mint_like() -> impl Strategy<Value = Value> {
    (
        prop::option::of(json_value()),
        prop::option::of(json_value()),
        prop::option::of(json_value()),
        prop_oneof![Just(None), ".{0,12}".prop_map(Some)],
    )
        .prop_map(|(scopes, ttl, extra, sender)| {
            let mut m = serde_json::Map::new();
            if let Some(s) = sender {
                m.insert("sender".into(), Value::String(s));
            }
            if let Some(s) = scopes {
                m.insert("scopes".into(), s);
            }
            if let Some(t) = ttl {
                m.insert("ttl_seconds".into(), t);
            }
            if let Some(e) = extra {
                m.insert("extra".into(), e);
            }
            Value::Object(m)
        })
}

const CONTENT_TYPES: [Option<&str>; 4] = [
    Some("application/json"),
    None,
    Some("text/plain"),
    Some("application/json; charset=latin1"),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_5xx(bytes in prop::collection::vec(any::<u8>(), 0..512), ct in 0usize..4) {
        let status = post(bytes, CONTENT_TYPES[ct])?;
        if ct != 0 {
            prop_assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
    }

    #[test]
    fn random_json_never_5xx(value in json_value(), ct in 0usize..4) {
        post(value.to_string().into_bytes(), CONTENT_TYPES[ct])?;
    }

    #[test]
    fn mint_like_objects_never_5xx(value in mint_like()) {
        let status = post(value.to_string().into_bytes(), Some("application/json"))?;
        prop_assert!(status == StatusCode::OK || status == StatusCode::BAD_REQUEST, "{}", status);
    }
}
