//! The HTTP app: an axum `Router` built from shared, immutable state.
//!
//! Everything a request needs is prepared at startup: the parsed signing key
//! with its encoded JWT header, the serialized JWKS body, the metrics handles.
//! Signing runs inline on the async worker: an RS256 signature takes about a
//! millisecond, and handing it to a blocking pool would cost more in thread
//! hops than it saves on a machine with as many workers as cores.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::Value;

use crate::audit::{self, AuditLog, AuditRecord};
use crate::callers::{AuthResult, CallerAuth, CallerSet, Reload};
use crate::config::{Config, KeySource, LoadedKeys};
use crate::exposition;
use crate::keys::{self, SigningKey};
use crate::listener::{self, Limits, RequestDeadline};
use crate::metrics::{AuthFailure, Metrics, Outcome};
use crate::ratelimit::{self, RateLimiter};
use crate::verifiers::{VerifierLog, VerifiersReport};

/// How often `MACP_AUTH_MINT_TOKENS_FILE` is re-read.
pub const CALLERS_POLL_INTERVAL: Duration = Duration::from_secs(2);

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
    /// A strong validator of `jwks_body` (its SHA-256), for `If-None-Match`.
    jwks_etag: HeaderValue,
    /// `public, max-age=<MACP_AUTH_JWKS_MAX_AGE_SECONDS>`: HTTP-aware verifiers
    /// then cache exactly as long as the operator waits for them.
    jwks_cache_control: HeaderValue,
    jwks_max_age_seconds: u64,
    /// Who fetched the JWKS (`GET /verifiers`).
    verifiers: VerifierLog,
    metrics: Metrics,
    callers: Option<CallerFile>,
    rate_limiter: Option<RateLimiter>,
    audit: Option<AuditLog>,
    /// Set on SIGTERM: `/readyz` answers 503 from then on.
    stopping: AtomicBool,
}

/// Caller authentication state: the live token set and where it comes from.
#[derive(Debug)]
struct CallerFile {
    auth: CallerAuth,
    path: PathBuf,
    poll: Duration,
}

impl AppState {
    pub fn new(config: &Config, keys: LoadedKeys) -> Self {
        let published = keys.published();
        let published_kids = published
            .iter()
            .map(|k| k["kid"].as_str().unwrap_or_default().to_string())
            .collect();
        let jwks_body = Bytes::from(keys::jwks(&published).to_string());
        let jwks_etag = etag_of(&jwks_body);
        let jwks_max_age_seconds = config.jwks_max_age.as_secs();
        let jwks_cache_control =
            HeaderValue::from_str(&format!("public, max-age={jwks_max_age_seconds}"))
                .unwrap_or(HeaderValue::from_static("no-cache"));
        let metrics = Metrics::new(keys.active.alg(), keys.active.kid(), published.len());
        metrics.set_jwks_max_age(jwks_max_age_seconds);
        AppState {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            default_ttl_seconds: config.default_ttl_seconds,
            max_ttl_seconds: config.max_ttl_seconds,
            key: keys.active,
            key_source: keys.source,
            published_kids,
            jwks_body,
            jwks_etag,
            jwks_cache_control,
            jwks_max_age_seconds,
            verifiers: VerifierLog::new(config.verifier_records),
            metrics,
            callers: None,
            rate_limiter: config
                .rate_limit
                .map(|r| RateLimiter::new(r.per_second, r.burst)),
            audit: None,
            stopping: AtomicBool::new(false),
        }
    }

    /// What `GET /verifiers` answers now.
    pub fn verifiers_report(&self) -> VerifiersReport {
        self.verifiers.report(
            &self.published_kids,
            self.jwks_max_age_seconds,
            Instant::now(),
        )
    }

    /// Turns `/readyz` to 503 for good (the process is shutting down); every
    /// other endpoint keeps serving.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Turns on caller authentication with `set`, re-reading `path` every
    /// `poll` while [`serve`] runs.
    pub fn with_callers(mut self, set: CallerSet, path: PathBuf, poll: Duration) -> Self {
        self.metrics.set_caller_tokens(set.len());
        self.callers = Some(CallerFile {
            auth: CallerAuth::new(set),
            path,
            poll,
        });
        self
    }

    /// Sends one audit line per mint attempt to `log`.
    pub fn with_audit(mut self, log: AuditLog) -> Self {
        self.audit = Some(log);
        self
    }

    /// Re-reads the caller tokens file if caller authentication is on. The
    /// set becomes the file's valid lines; an unreadable file admits no
    /// caller ([`crate::callers`]).
    pub async fn reload_callers(&self) -> Option<Reload> {
        let callers = self.callers.as_ref()?;
        let reload = match tokio::fs::read_to_string(&callers.path).await {
            Ok(text) => callers.auth.reload(&text),
            Err(e) => callers.auth.unreadable(e.to_string()),
        };
        if let Some(result) = reload.result() {
            self.metrics.set_caller_tokens(callers.auth.token_count());
            self.metrics
                .record_caller_file(result, reload.dropped_lines().len());
        }
        Some(reload)
    }
}

/// A quoted, strong entity tag: the SHA-256 of the body, hex, first 128 bits.
fn etag_of(body: &[u8]) -> HeaderValue {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"jwks\""))
}

/// Whether an `If-None-Match` header names `etag` (or `*`). Weak tags match
/// too (RFC 9110 13.1.2 compares `If-None-Match` weakly).
fn none_match(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    let ours = etag.as_bytes();
    list.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
}

/// Polls the caller tokens file (by path: a Secret volume swaps a symlink,
/// which inode watches miss). Each change is logged once, with the line
/// numbers of dropped lines and never their content.
async fn poll_callers(state: Arc<AppState>) {
    let Some(callers) = state.callers.as_ref() else {
        return;
    };
    loop {
        tokio::time::sleep(callers.poll).await;
        let Some(reload) = state.reload_callers().await else {
            return;
        };
        let path = callers.path.display();
        match &reload {
            Reload::Unchanged => {}
            Reload::Replaced { tokens: 0, .. } => tracing::error!(
                %path,
                dropped_lines = ?reload.dropped_lines(),
                "caller tokens file holds no valid token: no caller is admitted"
            ),
            Reload::Replaced { tokens, dropped } if !dropped.is_empty() => tracing::warn!(
                %path,
                tokens,
                dropped_lines = ?reload.dropped_lines(),
                "caller tokens reloaded; invalid lines dropped (each: shorter than 16 characters, or whitespace inside)"
            ),
            Reload::Replaced { tokens, .. } => {
                tracing::info!(%path, tokens, "caller tokens reloaded")
            }
            Reload::Unreadable { error } => tracing::error!(
                %path,
                %error,
                "caller tokens file cannot be read: no caller is admitted until it can"
            ),
        }
    }
}

/// Fetches a client needs before its shortest interval counts as its cache
/// time: with two, one slow verification after an idle spell looks like a
/// long cache.
pub const MIN_FETCHES_FOR_INTERVAL: u64 = 3;

/// The longest cache time among the clients with enough fetches: each one's
/// shortest interval between fetches (a caching verifier never fetches
/// sooner than its TTL). `None` when no client qualifies.
pub fn longest_caching_interval(report: &VerifiersReport) -> Option<f64> {
    report
        .clients
        .iter()
        .filter(|c| c.fetches >= MIN_FETCHES_FOR_INTERVAL)
        .filter_map(|c| c.shortest_interval_seconds)
        .reduce(f64::max)
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

/// Builds the router: `/healthz` (liveness), `/readyz` (readiness),
/// `/.well-known/jwks.json`, `/tokens`, `/metrics`, with JSON 404 and 405 for
/// everything else.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/verifiers", get(verifiers))
        .route("/tokens", post(mint))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The main port's router when `POST /tokens` has its own listener
/// (`MACP_AUTH_MINT_PORT`): everything [`router`] serves except minting,
/// which answers a JSON 404 naming the mint port, so a client still pointed
/// at the old port learns where minting went instead of a bare "not found".
pub fn router_without_mint(state: Arc<AppState>, mint_port: u16) -> Router {
    let moved = Bytes::from(
        serde_json::json!({
            "error": format!("POST /tokens is served on the mint port {mint_port}, not on this port")
        })
        .to_string(),
    );
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/verifiers", get(verifiers))
        .route(
            "/tokens",
            post(move || {
                let body = moved.clone();
                async move { json_bytes(StatusCode::NOT_FOUND, body) }
            }),
        )
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The mint listener's router: `POST /tokens`, plus `/healthz` and `/readyz`
/// so a load balancer or probe can check the port it sends minters to.
/// Nothing else: the JWKS and `/metrics` stay on the main port, which is the
/// one verifiers and scrapers are admitted to.
pub fn mint_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/tokens", post(mint))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Serves `router(state)` on `listener` under `limits` (see
/// [`crate::listener`]) until `shutdown` resolves, then stops accepting and
/// waits for in-flight requests (graceful shutdown).
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    limits: Limits,
    shutdown: F,
) -> std::io::Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let poller = state
        .callers
        .is_some()
        .then(|| tokio::spawn(poll_callers(state.clone())));
    let metrics = state.metrics.connections().clone();
    let result = listener::serve(listener, router(state), limits, metrics, shutdown).await;
    if let Some(poller) = poller {
        poller.abort();
    }
    result
}

/// Serves the JWKS (and everything but minting) on `listener` and
/// `POST /tokens` on `mint`, each under its own copy of `limits` (each
/// listener has its own connection cap, so a flood on one port cannot take
/// the other's slots), until `shutdown` resolves; then both stop accepting
/// and drain. Returns the first error of either listener.
pub async fn serve_with_mint<F>(
    listener: tokio::net::TcpListener,
    mint: tokio::net::TcpListener,
    state: Arc<AppState>,
    limits: Limits,
    shutdown: F,
) -> std::io::Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mint_port = mint.local_addr()?.port();
    let poller = state
        .callers
        .is_some()
        .then(|| tokio::spawn(poll_callers(state.clone())));
    let metrics = state.metrics.connections().clone();
    // One shutdown future, two listeners: a watch channel fans it out.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        // An error means the sender is gone, which only happens after it sent.
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let main = listener::serve(
        listener,
        router_without_mint(state.clone(), mint_port),
        limits,
        metrics.clone(),
        stopped(stop_rx.clone()),
    );
    let minting = listener::serve(mint, mint_router(state), limits, metrics, stopped(stop_rx));
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (a, b) = tokio::join!(main, minting);
    signal.abort();
    if let Some(poller) = poller {
        poller.abort();
    }
    a.and(b)
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

/// `{"error": message}`: the body of every error answer.
fn error_body(message: &'static str) -> Vec<u8> {
    #[derive(Serialize)]
    struct ErrorBody {
        error: &'static str,
    }
    serde_json::to_vec(&ErrorBody { error: message })
        .unwrap_or_else(|_| br#"{"error":"internal error"}"#.to_vec())
}

fn error(status: StatusCode, message: &'static str) -> Response {
    json_bytes(status, error_body(message))
}

async fn healthz() -> Response {
    json_bytes(StatusCode::OK, Bytes::from_static(br#"{"ok":true}"#))
}

/// Readiness: 503 from SIGTERM on, so that load balancers stop sending new
/// connections during the shutdown delay while `/healthz` stays 200.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_stopping() {
        error(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else {
        json_bytes(StatusCode::OK, Bytes::from_static(br#"{"ready":true}"#))
    }
}

/// The JWKS, with `Cache-Control` and an `ETag`; a matching `If-None-Match`
/// gets a 304 and no body. Every answer is recorded as a fetch by its client.
async fn jwks(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let headers = request.headers();
    if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        let agent = || {
            headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
        };
        if let Some(recorded) = state
            .verifiers
            .record_connection(*peer, agent, Instant::now())
        {
            state
                .metrics
                .record_jwks_client(recorded.held, recorded.evicted);
        }
    }
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| none_match(v, &state.jwks_etag));
    let mut response = if not_modified {
        state.metrics.record_jwks_not_modified();
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        json_bytes(StatusCode::OK, state.jwks_body.clone())
    };
    let out = response.headers_mut();
    out.insert(header::ETAG, state.jwks_etag.clone());
    out.insert(header::CACHE_CONTROL, state.jwks_cache_control.clone());
    response
}

/// The JWKS clients seen by this process. It carries no secret (addresses,
/// user agents, counts and the public kids), and is served only on the main
/// port, the one verifiers and the operator reach, never on the mint port.
async fn verifiers(State(state): State<Arc<AppState>>) -> Response {
    let report = state.verifiers_report();
    match serde_json::to_vec(&report) {
        Ok(body) => json_bytes(StatusCode::OK, body),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed"),
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    state
        .metrics
        .set_jwks_client_interval(longest_caching_interval(&state.verifiers_report()));
    match state.metrics.encode() {
        Ok(text) => {
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let (content_type, body) = exposition::negotiate(accept, text);
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
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

/// Reads at most [`MAX_BODY_BYTES`] by `deadline`; a larger body (declared or
/// streamed) is [`Rejection::TooLarge`] after a bounded drain, a late one
/// [`Rejection::Timeout`].
async fn read_body(
    body: Body,
    declared: Option<u64>,
    deadline: Option<RequestDeadline>,
) -> Result<Bytes, Rejection> {
    match deadline {
        Some(RequestDeadline(at)) => tokio::time::timeout_at(at, read_body_inner(body, declared))
            .await
            .unwrap_or(Err(Rejection::Timeout)),
        None => read_body_inner(body, declared).await,
    }
}

async fn read_body_inner(mut body: Body, declared: Option<u64>) -> Result<Bytes, Rejection> {
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

/// Why a `POST /tokens` was refused; [`Rejection::status`] and
/// [`Rejection::message`] are what the caller sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    Unauthorized(AuthFailure),
    /// Seconds until the caller's bucket has a token again.
    RateLimited(u64),
    ContentType,
    TooLarge,
    /// The body did not arrive within the request timeout.
    Timeout,
    Json,
    Sender,
    Scopes,
    Ttl,
    Signing,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Rejection::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Rejection::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::Timeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::Json | Rejection::Sender | Rejection::Scopes | Rejection::Ttl => {
                StatusCode::BAD_REQUEST
            }
            Rejection::Signing => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            Rejection::Unauthorized(_) => "unauthorized",
            Rejection::RateLimited(_) => "rate limit exceeded",
            Rejection::ContentType => "content-type must be application/json",
            Rejection::TooLarge => "request body too large",
            Rejection::Timeout => "request timeout",
            Rejection::Json => "invalid JSON body",
            Rejection::Sender => "sender is required",
            Rejection::Scopes => "scopes must be an object",
            Rejection::Ttl => "ttl_seconds must be a positive number",
            Rejection::Signing => "token signing failed",
        }
    }

    fn outcome(&self) -> Outcome {
        match self {
            Rejection::Unauthorized(_) => Outcome::unauthorized,
            Rejection::RateLimited(_) => Outcome::rate_limited,
            Rejection::ContentType => Outcome::unsupported_content_type,
            Rejection::TooLarge => Outcome::body_too_large,
            Rejection::Timeout => Outcome::request_timeout,
            Rejection::Json => Outcome::invalid_json,
            Rejection::Sender => Outcome::invalid_sender,
            Rejection::Scopes => Outcome::invalid_scopes,
            Rejection::Ttl => Outcome::invalid_ttl,
            Rejection::Signing => Outcome::signing_failed,
        }
    }

    fn response(&self) -> Response {
        let mut response = error(self.status(), self.message());
        match self {
            Rejection::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Rejection::RateLimited(secs) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            Rejection::Timeout => {
                // The rest of the body is never read: the connection closes.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// A valid mint request.
#[derive(Debug, Clone, PartialEq)]
pub struct MintRequest {
    pub sender: String,
    pub scopes: Value,
    /// Effective lifetime (defaulted and clamped).
    pub ttl_seconds: u64,
}

/// Parses a `POST /tokens` body. Pure: the checks after content type and size,
/// in the contract's order (JSON, sender, scopes, ttl).
pub fn parse_mint_request(
    bytes: &[u8],
    default_ttl: u64,
    max_ttl: u64,
) -> Result<MintRequest, Rejection> {
    // serde_json stops at 128 nesting levels, so deep bodies fail here
    // instead of exhausting the stack.
    let body: Value = serde_json::from_slice(bytes).map_err(|_| Rejection::Json)?;
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
    let ttl_seconds =
        effective_ttl(body.get("ttl_seconds"), default_ttl, max_ttl).ok_or(Rejection::Ttl)?;
    Ok(MintRequest {
        sender,
        scopes,
        ttl_seconds,
    })
}

/// Signs a token for `request` and returns the JSON response body.
pub fn issue(state: &AppState, request: &MintRequest) -> Result<Vec<u8>, Rejection> {
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let claims = Claims {
        iss: &state.issuer,
        aud: &state.audience,
        sub: &request.sender,
        iat,
        exp: iat.saturating_add(request.ttl_seconds),
        macp_scopes: &request.scopes,
    };
    let token = state.key.sign_claims(&claims).map_err(|e| {
        tracing::error!(error = %e, kid = state.key.kid(), "token signing failed");
        Rejection::Signing
    })?;
    serde_json::to_vec(&MintResponse {
        token: &token,
        sender: &request.sender,
        expires_in_seconds: claims.exp - claims.iat,
    })
    .map_err(|_| Rejection::Signing)
}

/// The whole mint outcome for a body that passed the content-type and size
/// checks: `(status, JSON body)`. For fuzzing and property tests.
pub fn mint_from_body(state: &AppState, bytes: &[u8]) -> (StatusCode, Vec<u8>) {
    match parse_mint_request(bytes, state.default_ttl_seconds, state.max_ttl_seconds)
        .and_then(|request| issue(state, &request))
    {
        Ok(body) => (StatusCode::OK, body),
        Err(rejection) => (rejection.status(), error_body(rejection.message())),
    }
}

/// What is known about one mint attempt, for the audit log.
#[derive(Default)]
struct Attempt {
    caller: Option<String>,
    request: Option<MintRequest>,
}

async fn mint(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let mut attempt = Attempt::default();
    let result = mint_inner(&state, request, client, &mut attempt).await;
    let outcome = match &result {
        Ok(_) => Outcome::issued,
        Err(rejection) => rejection.outcome(),
    };
    state.metrics.record_mint(outcome, started.elapsed());
    if let Some(audit) = &state.audit {
        let (status, text) = match &result {
            Ok(_) => (StatusCode::OK, "issued"),
            Err(rejection) => (rejection.status(), rejection.message()),
        };
        let request = attempt.request.as_ref();
        audit
            .record(&AuditRecord {
                ts: audit::now_rfc3339(),
                event: "mint",
                caller: attempt.caller.as_deref(),
                client: client.map(|c| c.to_string()),
                sender: request.map(|r| r.sender.as_str()),
                scopes: request.map(|r| &r.scopes),
                ttl_seconds: request.map(|r| r.ttl_seconds),
                kid: state.key.kid(),
                alg: state.key.alg().as_str(),
                status: status.as_u16(),
                outcome: text,
            })
            .await;
    }
    match result {
        Ok(body) => json_bytes(StatusCode::OK, body),
        Err(rejection) => rejection.response(),
    }
}

/// Checks in order: caller authentication, rate limit, then the contract's
/// content type, size, JSON, sender, scopes, ttl.
async fn mint_inner(
    state: &AppState,
    request: Request,
    client: Option<SocketAddr>,
    attempt: &mut Attempt,
) -> Result<Vec<u8>, Rejection> {
    let (parts, body) = request.into_parts();
    if let Some(callers) = &state.callers {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let failure = match callers.auth.check(header) {
            AuthResult::Ok(identity) => {
                attempt.caller = Some(identity);
                None
            }
            AuthResult::Missing => Some(AuthFailure::missing),
            AuthResult::Invalid => Some(AuthFailure::invalid),
        };
        if let Some(reason) = failure {
            state.metrics.record_auth_failure(reason);
            return Err(Rejection::Unauthorized(reason));
        }
    }
    if let Some(limiter) = &state.rate_limiter {
        // Keyed by caller identity with authentication on (callers behind one
        // NAT do not starve each other), else by client address (no port).
        let key = match (&attempt.caller, client) {
            (Some(identity), _) => identity.clone(),
            (None, Some(addr)) => addr.ip().to_string(),
            (None, None) => "unknown".to_string(),
        };
        if let Err(wait) = limiter.check(&key, Instant::now()) {
            state.metrics.record_rate_limited();
            return Err(Rejection::RateLimited(ratelimit::retry_after_seconds(wait)));
        }
    }
    if !is_json_content_type(&parts.headers) {
        return Err(Rejection::ContentType);
    }
    let deadline = parts.extensions.get::<RequestDeadline>().copied();
    let bytes = read_body(body, declared_length(&parts.headers), deadline).await?;
    let request = parse_mint_request(&bytes, state.default_ttl_seconds, state.max_ttl_seconds)?;
    let response = issue(state, &request);
    attempt.request = Some(request);
    response
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
