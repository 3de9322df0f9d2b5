//! The HTTP app: an axum `Router` built from shared, immutable state.
//!
//! Everything a request needs is prepared at startup: the parsed signing key
//! with its encoded JWT header, the serialized JWKS body, the metrics handles.
//! Signing runs inline on the async worker: an RS256 signature takes about a
//! millisecond, and handing it to a blocking pool would cost more in thread
//! hops than it saves on a machine with as many workers as cores.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::Value;

use crate::config::{Config, KeySource, LoadedKeys};
use crate::keys::{self, SigningKey};
use crate::metrics::{self, Metrics, Outcome};

/// Largest accepted `POST /tokens` body (the reference's 100 KiB).
pub const MAX_BODY_BYTES: usize = 100 * 1024;
/// How much of an oversized body is read and discarded before answering 413.
/// Closing a socket with unread data makes the kernel send a reset, which can
/// destroy the 413 before the client reads it; draining a moderate overshoot
/// lets ordinary clients see the error. Larger bodies are cut off.
const DRAIN_BYTES: usize = 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Immutable state shared by all requests.
#[derive(Debug)]
pub struct AppState {
    pub issuer: String,
    pub audience: String,
    pub default_ttl_seconds: u64,
    pub max_ttl_seconds: u64,
    pub key: SigningKey,
    pub key_source: KeySource,
    /// Kids in JWKS order (active first).
    pub published_kids: Vec<String>,
    /// The serialized JWKS, built once.
    jwks_body: Bytes,
    metrics: Metrics,
}

impl AppState {
    pub fn new(config: &Config, keys: LoadedKeys) -> Self {
        let published = keys.published();
        let published_kids = published
            .iter()
            .map(|k| k["kid"].as_str().unwrap_or_default().to_string())
            .collect();
        let jwks_body = Bytes::from(keys::jwks(&published).to_string());
        let metrics = Metrics::new(keys.active.alg(), keys.active.kid(), published.len());
        AppState {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            default_ttl_seconds: config.default_ttl_seconds,
            max_ttl_seconds: config.max_ttl_seconds,
            key: keys.active,
            key_source: keys.source,
            published_kids,
            jwks_body,
            metrics,
        }
    }
}

/// Effective lifetime for a request's `ttl_seconds` member (absent or `null`:
/// `default`). A positive finite number is floored to whole seconds, at least
/// 1, and clamped to `max`; anything else (zero, negative, a string, a bool, an
/// object) is `None`, answered with 400. JSON cannot carry NaN or infinities.
pub fn effective_ttl(requested: Option<&Value>, default: u64, max: u64) -> Option<u64> {
    match requested {
        None | Some(Value::Null) => Some(default.min(max)),
        Some(Value::Number(n)) => {
            let secs = n.as_f64().filter(|s| s.is_finite() && *s > 0.0)?;
            // Float-to-int `as` saturates, so huge values clamp to the max.
            let whole = (secs.floor() as u64).max(1);
            Some(whole.min(max))
        }
        Some(_) => None,
    }
}

/// Builds the router: `/healthz`, `/.well-known/jwks.json`, `/tokens`,
/// `/metrics`, with JSON 404 and 405 for everything else.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/tokens", post(mint))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for in-flight requests (graceful shutdown).
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: F,
) -> std::io::Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

fn json_bytes(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: &'static str) -> Response {
    #[derive(Serialize)]
    struct ErrorBody {
        error: &'static str,
    }
    let body = serde_json::to_vec(&ErrorBody { error: message })
        .unwrap_or_else(|_| br#"{"error":"internal error"}"#.to_vec());
    json_bytes(status, body)
}

async fn healthz() -> Response {
    json_bytes(StatusCode::OK, Bytes::from_static(br#"{"ok":true}"#))
}

async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    json_bytes(StatusCode::OK, state.jwks_body.clone())
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed"),
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// `application/json`, optionally with `charset=utf-8` (JSON is UTF-8 by
/// definition; any other charset is refused rather than misread).
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|param| {
        let param = param.trim();
        match param.split_once('=') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
                let value = value.trim().trim_matches('"');
                value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
            }
            Some(_) => true,
            None => param.is_empty(),
        }
    })
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads at most [`MAX_BODY_BYTES`]; a larger body (declared or streamed) is
/// [`Rejection::TooLarge`] after a bounded drain.
async fn read_body(mut body: Body, declared: Option<u64>) -> Result<Bytes, Rejection> {
    if let Some(len) = declared.filter(|len| *len > MAX_BODY_BYTES as u64) {
        if len <= DRAIN_BYTES as u64 {
            drain(body, DRAIN_BYTES).await;
        }
        return Err(Rejection::TooLarge);
    }
    let capacity = declared.map_or(1024, |len| len as usize);
    let mut buf: Vec<u8> = Vec::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        // A body that could not be read in full (client went away, bad
        // chunking) cannot be parsed either.
        let frame = frame.map_err(|_| Rejection::Json)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY_BYTES {
                drain(body, DRAIN_BYTES - MAX_BODY_BYTES).await;
                return Err(Rejection::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

async fn drain(mut body: Body, budget: usize) {
    let mut left = budget;
    let discard = async {
        while left > 0 {
            match body.frame().await {
                Some(Ok(frame)) => {
                    let len = frame.data_ref().map_or(0, Bytes::len);
                    left = left.saturating_sub(len);
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, discard).await;
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: u64,
    exp: u64,
    macp_scopes: &'a Value,
}

#[derive(Serialize)]
struct MintResponse<'a> {
    token: &'a str,
    sender: &'a str,
    expires_in_seconds: u64,
}

enum Rejection {
    ContentType,
    TooLarge,
    Json,
    Sender,
    Scopes,
    Ttl,
    Signing,
}

impl Rejection {
    fn outcome(&self) -> Outcome {
        match self {
            Rejection::ContentType => Outcome::unsupported_content_type,
            Rejection::TooLarge => Outcome::body_too_large,
            Rejection::Json => Outcome::invalid_json,
            Rejection::Sender => Outcome::invalid_sender,
            Rejection::Scopes => Outcome::invalid_scopes,
            Rejection::Ttl => Outcome::invalid_ttl,
            Rejection::Signing => Outcome::signing_failed,
        }
    }

    fn response(&self) -> Response {
        match self {
            Rejection::ContentType => error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content-type must be application/json",
            ),
            Rejection::TooLarge => error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
            Rejection::Json => error(StatusCode::BAD_REQUEST, "invalid JSON body"),
            Rejection::Sender => error(StatusCode::BAD_REQUEST, "sender is required"),
            Rejection::Scopes => error(StatusCode::BAD_REQUEST, "scopes must be an object"),
            Rejection::Ttl => error(
                StatusCode::BAD_REQUEST,
                "ttl_seconds must be a positive number",
            ),
            Rejection::Signing => error(StatusCode::INTERNAL_SERVER_ERROR, "token signing failed"),
        }
    }
}

async fn mint(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    let (outcome, response) = match mint_inner(&state, request).await {
        Ok(response) => (Outcome::issued, response),
        Err(rejection) => (rejection.outcome(), rejection.response()),
    };
    state.metrics.record_mint(outcome, started.elapsed());
    response
}

/// Checks in the contract's order: content type, size, JSON, sender, scopes, ttl.
async fn mint_inner(state: &AppState, request: Request) -> Result<Response, Rejection> {
    let (parts, body) = request.into_parts();
    if !is_json_content_type(&parts.headers) {
        return Err(Rejection::ContentType);
    }
    let bytes = read_body(body, declared_length(&parts.headers)).await?;
    // serde_json stops at 128 nesting levels, so deep bodies fail here
    // instead of exhausting the stack.
    let body: Value = serde_json::from_slice(&bytes).map_err(|_| Rejection::Json)?;
    let Value::Object(mut body) = body else {
        return Err(Rejection::Sender);
    };
    let sender = match body.remove("sender") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        _ => return Err(Rejection::Sender),
    };
    let scopes = match body.remove("scopes") {
        None => Value::Object(serde_json::Map::new()),
        Some(obj @ Value::Object(_)) => obj,
        Some(_) => return Err(Rejection::Scopes),
    };
    let ttl = effective_ttl(
        body.get("ttl_seconds"),
        state.default_ttl_seconds,
        state.max_ttl_seconds,
    )
    .ok_or(Rejection::Ttl)?;

    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let claims = Claims {
        iss: &state.issuer,
        aud: &state.audience,
        sub: &sender,
        iat,
        exp: iat.saturating_add(ttl),
        macp_scopes: &scopes,
    };
    let token = state.key.sign_claims(&claims).map_err(|e| {
        tracing::error!(error = %e, kid = state.key.kid(), "token signing failed");
        Rejection::Signing
    })?;
    let body = serde_json::to_vec(&MintResponse {
        token: &token,
        sender: &sender,
        expires_in_seconds: claims.exp - claims.iat,
    })
    .map_err(|_| Rejection::Signing)?;
    Ok(json_bytes(StatusCode::OK, body))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        h
    }

    #[test]
    fn ttl_rules() {
        let ttl = |v: Option<Value>| effective_ttl(v.as_ref(), 300, 3600);
        assert_eq!(ttl(None), Some(300));
        assert_eq!(ttl(Some(Value::Null)), Some(300));
        assert_eq!(ttl(Some(json!(60))), Some(60));
        assert_eq!(ttl(Some(json!(60.9))), Some(60));
        assert_eq!(ttl(Some(json!(0.5))), Some(1));
        assert_eq!(ttl(Some(json!(3600))), Some(3600));
        assert_eq!(ttl(Some(json!(3601))), Some(3600));
        assert_eq!(ttl(Some(json!(1e300))), Some(3600));
        assert_eq!(ttl(Some(json!(u64::MAX))), Some(3600));
        for bad in [
            json!(0),
            json!(-1),
            json!(-0.5),
            json!(0.0),
            json!("60"),
            json!(true),
            json!([60]),
            json!({"s": 1}),
        ] {
            assert_eq!(ttl(Some(bad.clone())), None, "{bad}");
        }
    }

    #[test]
    fn content_type_rules() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json; charset=\"utf-8\"",
        ] {
            assert!(is_json_content_type(&headers(ok)), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonp",
            "application/json; charset=latin1",
            "multipart/form-data",
        ] {
            assert!(!is_json_content_type(&headers(bad)), "{bad}");
        }
        assert!(!is_json_content_type(&HeaderMap::new()));
    }
}
