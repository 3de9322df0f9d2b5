//! Load generator and verifier: mints tokens continuously, round-robin over the
//! ready pods of a Service, and verifies each one at once with the MACP runtime's
//! own verifier (`macp_auth`'s `JwtBearerResolver::from_url`), which fetches and
//! caches the JWKS through the [`ServiceProxy`] exactly as a runtime in the
//! cluster would.
//!
//! Because the verifier is the proxy's only JWKS client, the latest JWKS the
//! proxy served is the verifier's cache; each token records whether its kid was
//! in it when the token was verified.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use macp_auth::auth::resolver::AuthResolver;
use macp_auth::auth::resolvers::jwt_bearer::{JwtBearerResolver, JwtConfig};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::apiserver::ApiHandle;
use crate::endpoints::{EndpointSource, StoreEndpoints};
use crate::proxy::ServiceProxy;

/// What to mint and how to verify.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub namespace: String,
    /// The Service whose ready pods are minted through (round-robin).
    pub service: String,
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// The verifier's JWKS cache TTL (`MACP_AUTH_JWKS_TTL_SECS`).
    pub jwks_cache_ttl_secs: u64,
    /// Concurrent mint-and-verify loops.
    pub workers: usize,
    /// Sleep between two mints of one worker.
    pub pause: Duration,
    /// Stop after this long...
    pub max_duration: Duration,
    /// ...or after this many minted tokens.
    pub max_tokens: usize,
    /// Caller token sent as `Authorization: Bearer` on every mint (the
    /// service's `MACP_AUTH_MINT_TOKENS_FILE`), when set.
    pub caller_token: Option<String>,
}

impl LoadConfig {
    /// Defaults matching the service's defaults: RS256, issuer `macp-auth-service`,
    /// audience `macp-runtime`, 2 workers, 5 ms pause, 60 s / 100,000 tokens.
    pub fn new(namespace: &str, service: &str, jwks_cache_ttl_secs: u64) -> Self {
        Self {
            namespace: namespace.to_string(),
            service: service.to_string(),
            issuer: "macp-auth-service".into(),
            audience: "macp-runtime".into(),
            algorithms: vec![
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::Algorithm::ES256,
            ],
            jwks_cache_ttl_secs,
            workers: 2,
            pause: Duration::from_millis(5),
            max_duration: Duration::from_secs(60),
            max_tokens: 100_000,
            caller_token: None,
        }
    }
}

/// One minted token's fate.
#[derive(Clone, Debug)]
pub struct TokenRecord {
    /// Since the generator started.
    pub at: Duration,
    pub kid: String,
    pub endpoint: SocketAddr,
    pub verified: bool,
    /// Whether the verifier's cached JWKS held the kid when it verified.
    pub kid_known: bool,
    pub error: Option<String>,
}

/// Per-kid counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KidCounts {
    pub minted: u64,
    pub verify_failures: u64,
    pub unknown_at_verify: u64,
}

/// Totals of a run.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub minted: u64,
    /// Mint requests that did not yield a token (no endpoint, HTTP error, ...).
    pub mint_errors: u64,
    pub mint_error_reasons: BTreeMap<String, u64>,
    pub verified: u64,
    pub verify_failures: u64,
    pub failure_reasons: BTreeMap<String, u64>,
    pub per_kid: BTreeMap<String, KidCounts>,
    /// Tokens whose kid the verifier's cache did not hold when verifying.
    pub unknown_kid_at_verify: u64,
    pub records: Vec<TokenRecord>,
    pub elapsed: Duration,
}

impl LoadReport {
    /// `e2e <scenario>: minted=<n> verify_failures=<n> mint_errors=<n> unknown_kid=<n> kids=<kid:count,...>`
    pub fn summary_line(&self, scenario: &str) -> String {
        let kids: Vec<String> = self
            .per_kid
            .iter()
            .map(|(k, c)| format!("{k}:{}", c.minted))
            .collect();
        format!(
            "e2e {scenario}: minted={} verify_failures={} mint_errors={} unknown_kid={} elapsed_s={:.1} kids={}",
            self.minted,
            self.verify_failures,
            self.mint_errors,
            self.unknown_kid_at_verify,
            self.elapsed.as_secs_f64(),
            kids.join(",")
        )
    }

    fn record(&mut self, r: TokenRecord) {
        self.minted += 1;
        let kid = self.per_kid.entry(r.kid.clone()).or_default();
        kid.minted += 1;
        if !r.kid_known {
            kid.unknown_at_verify += 1;
            self.unknown_kid_at_verify += 1;
        }
        if r.verified {
            self.verified += 1;
        } else {
            kid.verify_failures += 1;
            self.verify_failures += 1;
            let reason = r.error.clone().unwrap_or_default();
            *self.failure_reasons.entry(reason).or_default() += 1;
        }
        self.records.push(r);
    }

    fn mint_error(&mut self, reason: String) {
        self.mint_errors += 1;
        *self.mint_error_reasons.entry(reason).or_default() += 1;
    }
}

struct Shared {
    config: LoadConfig,
    endpoints: Arc<dyn EndpointSource>,
    proxy: ServiceProxy,
    resolver: JwtBearerResolver,
    http: reqwest::Client,
    start: Instant,
    next: AtomicUsize,
    stop: AtomicBool,
    report: Mutex<LoadReport>,
}

/// A running load generator.
pub struct LoadGenerator {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `kid` of a compact JWS header, if readable.
pub fn token_kid(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("kid")?.as_str().map(str::to_string)
}

impl LoadGenerator {
    /// Starts the workers, minting on the simulated cluster's ready pods. The
    /// verifier fetches the JWKS from `proxy`.
    pub fn start(api: ApiHandle, proxy: ServiceProxy, config: LoadConfig) -> Self {
        let endpoints = Arc::new(StoreEndpoints::new(api, &config.namespace, &config.service));
        Self::start_with(endpoints, proxy, config)
    }

    /// Starts the workers, minting round-robin on `endpoints`.
    pub fn start_with(
        endpoints: Arc<dyn EndpointSource>,
        proxy: ServiceProxy,
        config: LoadConfig,
    ) -> Self {
        let jwt = JwtConfig {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            algorithms: config.algorithms.clone(),
        };
        let resolver =
            JwtBearerResolver::from_url(jwt, proxy.jwks_url(), config.jwks_cache_ttl_secs);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            config,
            endpoints,
            proxy,
            resolver,
            http,
            start: Instant::now(),
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            report: Mutex::new(LoadReport::default()),
        });
        let workers = (0..shared.config.workers.max(1))
            .map(|i| tokio::spawn(worker(shared.clone(), i)))
            .collect();
        Self { shared, workers }
    }

    /// Counts so far (records included).
    pub fn snapshot(&self) -> LoadReport {
        let mut r = lock(&self.shared.report).clone();
        r.elapsed = self.shared.start.elapsed();
        r
    }

    /// Whether the generator stopped by itself (time or token bound reached).
    pub fn finished(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }

    /// Stops the workers (each finishes its current token) and returns the report.
    pub async fn stop(self) -> LoadReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            let _ = w.await;
        }
        let mut r = lock(&self.shared.report).clone();
        r.elapsed = self.shared.start.elapsed();
        r
    }
}

impl Shared {
    fn done(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
            || self.start.elapsed() >= self.config.max_duration
            || lock(&self.report).minted as usize >= self.config.max_tokens
    }

    /// Round-robin over the ready endpoints, in a stable order.
    fn pick(&self) -> Option<SocketAddr> {
        let eps = self.endpoints.endpoints();
        if eps.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(eps[i % eps.len()])
    }

    async fn mint(&self, ep: SocketAddr, worker: usize) -> Result<String, String> {
        let mut req = self
            .http
            .post(format!("http://{ep}/tokens"))
            .json(&json!({"sender": format!("load-{worker}"), "scopes": {}}));
        if let Some(token) = &self.config.caller_token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| {
            format!(
                "request: {}",
                if e.is_connect() {
                    "connect".into()
                } else {
                    e.to_string()
                }
            )
        })?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| format!("body: {e}"))?;
        if !status.is_success() {
            return Err(format!("HTTP {status}: {body}"));
        }
        body.get("token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| "no token in response".to_string())
    }

    async fn verify(&self, token: &str) -> Result<(), String> {
        let mut md = tonic::metadata::MetadataMap::new();
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "token is not a header value".to_string())?;
        md.insert("authorization", value);
        match self.resolver.resolve(&md).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("resolver ignored the token".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

async fn worker(shared: Arc<Shared>, id: usize) {
    while !shared.done() {
        let Some(ep) = shared.pick() else {
            lock(&shared.report).mint_error("no ready endpoints".into());
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        match shared.mint(ep, id).await {
            Ok(token) => {
                let kid = token_kid(&token).unwrap_or_default();
                let verdict = shared.verify(&token).await;
                let kid_known = shared
                    .proxy
                    .last_jwks_kids()
                    .is_some_and(|k| k.contains(&kid));
                let record = TokenRecord {
                    at: shared.start.elapsed(),
                    kid,
                    endpoint: ep,
                    verified: verdict.is_ok(),
                    kid_known,
                    error: verdict.err(),
                };
                lock(&shared.report).record(record);
            }
            Err(reason) => lock(&shared.report).mint_error(reason),
        }
        if !shared.config.pause.is_zero() {
            tokio::time::sleep(shared.config.pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_from_header() {
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"RS256","kid":"k1"}"#);
        assert_eq!(
            token_kid(&format!("{header}.e30.sig")).as_deref(),
            Some("k1")
        );
        assert_eq!(token_kid("garbage"), None);
    }

    #[test]
    fn report_counts() {
        let mut r = LoadReport::default();
        let ep: SocketAddr = "127.0.0.2:3200".parse().unwrap();
        let rec = |kid: &str, ok: bool, known: bool| TokenRecord {
            at: Duration::ZERO,
            kid: kid.into(),
            endpoint: ep,
            verified: ok,
            kid_known: known,
            error: (!ok).then(|| "bad".to_string()),
        };
        r.record(rec("a", true, true));
        r.record(rec("b", false, false));
        r.mint_error("x".into());
        assert_eq!(
            (
                r.minted,
                r.verified,
                r.verify_failures,
                r.unknown_kid_at_verify
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(
            r.per_kid["b"],
            KidCounts {
                minted: 1,
                verify_failures: 1,
                unknown_at_verify: 1
            }
        );
        assert_eq!(r.failure_reasons["bad"], 1);
        assert!(
            r.summary_line("s")
                .starts_with("e2e s: minted=2 verify_failures=1 ")
        );
    }
}
