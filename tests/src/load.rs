//! Load generator and token holders: mints tokens continuously through a
//! Service (one connection per mint, so kube-proxy spreads them over the pods),
//! verifies each one at once, and keeps a sample of them to re-verify at
//! random moments until they expire, the way users hold tokens for minutes.
//!
//! Verification uses the MACP runtime's own verifier
//! (`macp_auth`'s `JwtBearerResolver::from_url`), several of them: each is a
//! runtime on its own node, with its own JWKS cache refreshing on its own TTL
//! and its own keep-alive connection through its own [`ServiceProxy`] (so it
//! sticks to one pod until that connection closes). Because a verifier is its
//! proxy's only JWKS client, the latest JWKS that proxy served is the
//! verifier's cache; each verification records whether the token's kid was in
//! it.
//!
//! The sample always holds every token minted with the longest lifetime asked
//! for (and a share of the others), and re-verifies each once in its last
//! second of life: the moment a drain that retires the old key too early
//! shows, for the tokens the old key signed just before it stopped signing.
//! The verifier accepts a token for [`VERIFIER_LEEWAY`] past its `exp`, and
//! the drain must cover that too, so held tokens are also re-verified inside
//! that window after expiry, once in its last second: a verifier whose cache
//! expires within the leeway refetches the JWKS there, and fails if the key
//! was retired too early.
//!
//! [`LoadReport::summary_line`] is the one format of every scenario's line.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::BTreeSet;

use base64::Engine as _;
use macp_auth::auth::resolver::AuthResolver;
use macp_auth::auth::resolvers::jwt_bearer::{JwtBearerResolver, JwtConfig};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::proxy::{ENDPOINT_HEADER, ServiceProxy};

/// The MACP runtime verifier's clock leeway: `macp-auth` keeps
/// jsonwebtoken's default validation, which accepts a token until 60 s past
/// its `exp` (whole seconds: `exp < now - 60` is refused).
pub const VERIFIER_LEEWAY: Duration = Duration::from_secs(60);

/// How many re-verifications may start too late to count (after the token's
/// window closed), per thousand that ran: more means the holders fell behind
/// and the checks that matter most, in the last second, went unmade.
pub const LATE_CHECKS_MISSED_PER_MILLE: u64 = 10;

/// What to mint and how to verify.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// The verifiers' JWKS cache TTL (`MACP_AUTH_JWKS_TTL_SECS`).
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
    /// Independent verifiers (runtimes), each with its own cache and connection.
    pub verifiers: usize,
    /// Lifetimes asked for, in turn (`ttl_seconds`); empty: the service's default.
    pub ttls: Vec<u64>,
    /// Share of the tokens with a shorter lifetime than the longest in `ttls`
    /// that are held and re-verified; the longest-lived ones always are.
    pub hold_fraction: f64,
    /// Re-verifications of a held token at random moments of its life, on top
    /// of the one in its last second.
    pub rechecks: usize,
    /// The verifier's leeway past `exp` ([`VERIFIER_LEEWAY`]); zero: no
    /// re-verification after expiry.
    pub leeway: Duration,
    /// Re-verifications of a held token at random moments of the leeway
    /// window after its expiry, on top of the one in that window's last second.
    pub leeway_rechecks: usize,
}

impl LoadConfig {
    /// Defaults matching the service's defaults: RS256 or ES256, issuer
    /// `macp-auth-service`, audience `macp-runtime`, 2 workers, 20 ms pause,
    /// 4 verifiers, 60 s / 100,000 tokens, the service's default TTL.
    pub fn new(jwks_cache_ttl_secs: u64) -> Self {
        Self {
            issuer: "macp-auth-service".into(),
            audience: "macp-runtime".into(),
            algorithms: vec![
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::Algorithm::ES256,
            ],
            jwks_cache_ttl_secs,
            workers: 2,
            pause: Duration::from_millis(20),
            max_duration: Duration::from_secs(60),
            max_tokens: 100_000,
            caller_token: None,
            verifiers: 4,
            ttls: Vec::new(),
            hold_fraction: 0.2,
            rechecks: 2,
            leeway: VERIFIER_LEEWAY,
            leeway_rechecks: 1,
        }
    }
}

/// One minted token's fate at the moment it was minted.
#[derive(Clone, Debug)]
pub struct TokenRecord {
    /// Since the generator started.
    pub at: Duration,
    pub kid: String,
    /// The pod that minted it, as the Service proxy reported.
    pub endpoint: Option<SocketAddr>,
    /// Lifetime granted (`expires_in_seconds`).
    pub ttl: u64,
    /// Which verifier checked it.
    pub verifier: usize,
    pub verified: bool,
    /// Whether that verifier's cached JWKS held the kid when it verified.
    pub kid_known: bool,
    pub error: Option<String>,
}

/// One re-verification of a held token before it expired, or after its
/// expiry within the verifier's leeway.
#[derive(Clone, Debug)]
pub struct LateCheck {
    pub kid: String,
    /// When the token was minted, since the generator started.
    pub minted_at: Duration,
    pub ttl: u64,
    /// Lifetime left when the check started (zero in the leeway window).
    pub remaining: Duration,
    /// For a check after expiry: how much of the leeway window was left
    /// when it started; `None` for a check within the token's life.
    pub leeway_left: Option<Duration>,
    pub verifier: usize,
    pub ok: bool,
    pub error: Option<String>,
}

/// Per-kid counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KidCounts {
    pub minted: u64,
    pub verify_failures: u64,
    pub unknown_at_verify: u64,
    /// Time of the last mint with this kid, since the generator started.
    pub last_minted_ms: u64,
}

/// Totals of a run.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub minted: u64,
    /// Mint requests that did not yield a token (no endpoint, connection
    /// error, non-2xx answer, ...).
    pub mint_errors: u64,
    pub mint_error_reasons: BTreeMap<String, u64>,
    pub verified: u64,
    pub verify_failures: u64,
    pub failure_reasons: BTreeMap<String, u64>,
    pub per_kid: BTreeMap<String, KidCounts>,
    /// Tokens whose kid the verifier's cache did not hold when verifying.
    pub unknown_kid_at_verify: u64,
    pub records: Vec<TokenRecord>,
    /// Re-verifications of held tokens before they expired or within the
    /// verifier's leeway after (those are also in `leeway_checks`).
    pub late_checks: u64,
    /// Held tokens that failed a re-verification while the verifier still
    /// had to accept them: unexpired, or within the leeway after expiry.
    pub late_verify_failures: u64,
    pub late_failure_reasons: BTreeMap<String, u64>,
    /// Re-verifications that started too late (after expiry, or after the
    /// leeway window for the ones after expiry) and were not counted.
    pub late_checks_missed: u64,
    /// The part of `late_checks` made after expiry, within the leeway.
    pub leeway_checks: u64,
    /// The part of `late_verify_failures` in the leeway window.
    pub leeway_verify_failures: u64,
    pub late: Vec<LateCheck>,
    pub elapsed: Duration,
}

impl LoadReport {
    /// `e2e <scenario>: minted=<n> verify_failures=<n> late_verify_failures=<n> mint_errors=<n> ...
    /// late_checks=<n> leeway_checks=<n> late_checks_missed=<n> ...`
    pub fn summary_line(&self, scenario: &str) -> String {
        self.summary_line_with(scenario, "")
    }

    /// [`Self::summary_line`] with `extra` (e.g. `cutoff_s=<x>`) right after `mint_errors`.
    pub fn summary_line_with(&self, scenario: &str, extra: &str) -> String {
        let kids: Vec<String> = self
            .per_kid
            .iter()
            .map(|(k, c)| format!("{k}:{}", c.minted))
            .collect();
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(" {extra}")
        };
        format!(
            "e2e {scenario}: minted={} verify_failures={} late_verify_failures={} mint_errors={}{extra} unknown_kid={} late_checks={} leeway_checks={} late_checks_missed={} minting_pods={} elapsed_s={:.1} kids={}",
            self.minted,
            self.verify_failures,
            self.late_verify_failures,
            self.mint_errors,
            self.unknown_kid_at_verify,
            self.late_checks,
            self.leeway_checks,
            self.late_checks_missed,
            self.minting_pods().len(),
            self.elapsed.as_secs_f64(),
            kids.join(",")
        )
    }

    /// Re-verifications, in the last `last` of their life, of tokens `kid`
    /// signed with the longest lifetime granted within `window` before its
    /// last mint: the old key's final tokens, checked just before they expire.
    pub fn final_tokens_checked_at_end_of_life(
        &self,
        kid: &str,
        window: Duration,
        last: Duration,
    ) -> usize {
        self.final_tokens_checks(kid, window)
            .filter(|c| c.leeway_left.is_none() && c.remaining <= last)
            .count()
    }

    /// Like [`Self::final_tokens_checked_at_end_of_life`], for the checks in
    /// the last `last` of the leeway window after expiry: the latest moment
    /// the verifier accepts the old key's final tokens, which the drain covers.
    pub fn final_tokens_checked_at_end_of_leeway(
        &self,
        kid: &str,
        window: Duration,
        last: Duration,
    ) -> usize {
        self.final_tokens_checks(kid, window)
            .filter(|c| c.leeway_left.is_some_and(|left| left <= last))
            .count()
    }

    /// Re-verifications of tokens `kid` signed with the longest lifetime
    /// granted within `window` before its last mint.
    fn final_tokens_checks(&self, kid: &str, window: Duration) -> impl Iterator<Item = &LateCheck> {
        let last_mint = self
            .per_kid
            .get(kid)
            .map(|c| Duration::from_millis(c.last_minted_ms));
        let max_ttl = self.late.iter().map(|c| c.ttl).max().unwrap_or(0);
        self.late
            .iter()
            .filter(move |c| c.kid == kid && c.ttl == max_ttl)
            .filter(move |c| last_mint.is_some_and(|last| c.minted_at + window >= last))
    }

    /// The pods (endpoints) that minted the tokens, as the Service proxy reported.
    pub fn minting_pods(&self) -> BTreeSet<SocketAddr> {
        self.records.iter().filter_map(|r| r.endpoint).collect()
    }

    /// Whether the re-verifications that started too late to count stay
    /// within [`LATE_CHECKS_MISSED_PER_MILLE`] of those that ran.
    pub fn late_checks_missed_within_bound(&self) -> bool {
        self.late_checks_missed * 1000 <= self.late_checks * LATE_CHECKS_MISSED_PER_MILLE
    }

    fn record(&mut self, r: TokenRecord) {
        self.minted += 1;
        let kid = self.per_kid.entry(r.kid.clone()).or_default();
        kid.minted += 1;
        kid.last_minted_ms = kid.last_minted_ms.max(r.at.as_millis() as u64);
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

    fn late_check(&mut self, c: LateCheck) {
        self.late_checks += 1;
        let leeway = c.leeway_left.is_some();
        if leeway {
            self.leeway_checks += 1;
        }
        if !c.ok {
            self.late_verify_failures += 1;
            if leeway {
                self.leeway_verify_failures += 1;
            }
            let reason = format!("{}: {}", c.kid, c.error.clone().unwrap_or_default());
            *self.late_failure_reasons.entry(reason).or_default() += 1;
        }
        self.late.push(c);
    }

    fn mint_error(&mut self, reason: String) {
        self.mint_errors += 1;
        *self.mint_error_reasons.entry(reason).or_default() += 1;
    }
}

/// A runtime's verifier: its own cache, its own path through the Service.
struct Verifier {
    resolver: JwtBearerResolver,
    proxy: ServiceProxy,
}

/// A token held until it expires.
struct Held {
    token: String,
    kid: String,
    ttl: u64,
    minted_at: Duration,
    expires: Instant,
}

struct Shared {
    config: LoadConfig,
    service: ServiceProxy,
    verifiers: Vec<Verifier>,
    http: reqwest::Client,
    start: Instant,
    stop: AtomicBool,
    report: Mutex<LoadReport>,
    held: Mutex<Vec<Held>>,
    /// (due, index into `held`, whether after expiry), earliest first.
    due: Mutex<BinaryHeap<Reverse<(Instant, usize, bool)>>>,
    next_ttl: AtomicUsize,
}

/// A running load generator.
pub struct LoadGenerator {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

fn claims(token: &str, part: usize) -> Option<Value> {
    let p = token.split('.').nth(part)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The `kid` of a compact JWS header, if readable.
pub fn token_kid(token: &str) -> Option<String> {
    claims(token, 0)?.get("kid")?.as_str().map(str::to_string)
}

/// The token's `exp` as an [`Instant`] on this machine's clock.
fn expiry(token: &str) -> Option<Instant> {
    let exp = claims(token, 1)?.get("exp")?.as_f64()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    let left = exp - now.as_secs_f64();
    Some(Instant::now() + Duration::from_secs_f64(left.max(0.0)))
}

/// When to re-verify a token that expires at `expires`: `n` random moments of
/// its life and one in its last second.
fn schedule(now: Instant, expires: Instant, n: usize) -> Vec<Instant> {
    let life = expires.saturating_duration_since(now);
    if life <= Duration::from_millis(200) {
        return Vec::new();
    }
    let mut out: Vec<Instant> = (0..n)
        .map(|_| now + life.mul_f64(rand::random_range(0.05..0.9)))
        .collect();
    let last = life.min(Duration::from_secs(1));
    out.push(expires - last.mul_f64(rand::random_range(0.15..0.85)));
    out
}

/// When to re-verify a token after its expiry at `expires`, while the
/// verifier's `leeway` still accepts it: `n` random moments of that window
/// and one in its last second. `exp` has whole seconds and the verifier
/// compares whole seconds, so the window is at least `leeway` long.
fn schedule_leeway(expires: Instant, leeway: Duration, n: usize) -> Vec<Instant> {
    if leeway < Duration::from_secs(2) {
        return Vec::new();
    }
    let mut out: Vec<Instant> = (0..n)
        .map(|_| expires + leeway.mul_f64(rand::random_range(0.05..0.9)))
        .collect();
    out.push(expires + leeway - Duration::from_secs(1).mul_f64(rand::random_range(0.15..0.85)));
    out
}

impl LoadGenerator {
    /// Starts minting through `service` (a Service proxy) and verifying with
    /// `config.verifiers` verifiers, each through a proxy of its own onto the
    /// same endpoints.
    pub async fn start(service: ServiceProxy, config: LoadConfig) -> std::io::Result<Self> {
        let jwks = service.endpoint_source();
        Self::start_split(service, jwks, config).await
    }

    /// [`LoadGenerator::start`] with the verifiers' proxies onto `jwks`
    /// instead of the mint Service's endpoints: the token service with a
    /// separate mint port, where `service` routes to the mint port and the
    /// JWKS is on the other one.
    pub async fn start_split(
        service: ServiceProxy,
        jwks: Arc<dyn crate::endpoints::EndpointSource>,
        config: LoadConfig,
    ) -> std::io::Result<Self> {
        let jwt = JwtConfig {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            algorithms: config.algorithms.clone(),
        };
        let mut verifiers = Vec::new();
        for _ in 0..config.verifiers.max(1) {
            let proxy = ServiceProxy::start_with(jwks.clone()).await?;
            let resolver = JwtBearerResolver::from_url(
                jwt.clone(),
                proxy.jwks_url(),
                config.jwks_cache_ttl_secs,
            );
            verifiers.push(Verifier { resolver, proxy });
        }
        // One connection per mint: kube-proxy balances connections, so this
        // spreads the mints over every pod the Service routes to.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(0)
            .build()
            .map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            config,
            service,
            verifiers,
            http,
            start: Instant::now(),
            stop: AtomicBool::new(false),
            report: Mutex::new(LoadReport::default()),
            held: Mutex::new(Vec::new()),
            due: Mutex::new(BinaryHeap::new()),
            next_ttl: AtomicUsize::new(0),
        });
        let mut tasks: Vec<JoinHandle<()>> = (0..shared.config.workers.max(1))
            .map(|i| tokio::spawn(worker(shared.clone(), i)))
            .collect();
        tasks.extend((0..2).map(|_| tokio::spawn(holder(shared.clone()))));
        Ok(Self { shared, tasks })
    }

    /// Counts so far (records included).
    pub fn snapshot(&self) -> LoadReport {
        let mut r = self.shared.report.lock().clone();
        r.elapsed = self.shared.start.elapsed();
        r
    }

    /// The number of verifiers.
    pub fn verifiers(&self) -> usize {
        self.shared.verifiers.len()
    }

    /// Verifies `token` with verifier `i` (its cache, its connection).
    pub async fn verify_with(&self, i: usize, token: &str) -> Result<(), String> {
        let v = &self.shared.verifiers[i % self.shared.verifiers.len()];
        verify(&v.resolver, token).await
    }

    /// Verifier `i`'s own Service proxy (its node's kube-proxy).
    pub fn verifier_proxy(&self, i: usize) -> &ServiceProxy {
        &self.shared.verifiers[i % self.shared.verifiers.len()].proxy
    }

    /// The Service the mints go through.
    pub fn service(&self) -> &ServiceProxy {
        &self.shared.service
    }

    /// Stops minting and re-verifying (each loop finishes its current token)
    /// and returns the report; checks of tokens still alive are dropped.
    pub async fn stop(self) -> LoadReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        let mut r = self.shared.report.lock().clone();
        r.elapsed = self.shared.start.elapsed();
        r
    }
}

/// Verifies `token` as the MACP runtime does: a bearer header through `resolver`.
pub async fn verify(resolver: &JwtBearerResolver, token: &str) -> Result<(), String> {
    let mut md = tonic::metadata::MetadataMap::new();
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| "token is not a header value".to_string())?;
    md.insert("authorization", value);
    match resolver.resolve(&md).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("resolver ignored the token".into()),
        Err(e) => Err(e.to_string()),
    }
}

impl Shared {
    fn done(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
            || self.start.elapsed() >= self.config.max_duration
            || self.report.lock().minted as usize >= self.config.max_tokens
    }

    fn ttl(&self) -> Option<u64> {
        let ttls = &self.config.ttls;
        if ttls.is_empty() {
            return None;
        }
        Some(ttls[self.next_ttl.fetch_add(1, Ordering::Relaxed) % ttls.len()])
    }

    /// Mints through the Service: the token, its lifetime and the pod that minted it.
    async fn mint(
        &self,
        worker: usize,
        ttl: Option<u64>,
    ) -> Result<(String, u64, Option<SocketAddr>), String> {
        let mut body = json!({"sender": format!("load-{worker}"), "scopes": {}});
        if let Some(ttl) = ttl {
            body["ttl_seconds"] = json!(ttl);
        }
        let mut req = self
            .http
            .post(format!("{}/tokens", self.service.url()))
            .json(&body);
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
        let endpoint = resp
            .headers()
            .get(ENDPOINT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body: Value = resp.json().await.map_err(|e| format!("body: {e}"))?;
        if !status.is_success() {
            return Err(format!("HTTP {status}: {body}"));
        }
        let token = body
            .get("token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| "no token in response".to_string())?;
        let granted = body
            .get("expires_in_seconds")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Ok((token, granted, endpoint))
    }

    fn hold(&self, token: String, kid: String, ttl: u64, minted_at: Duration) {
        let longest = self.config.ttls.iter().copied().max().unwrap_or(ttl);
        if ttl < longest && rand::random::<f64>() >= self.config.hold_fraction {
            return;
        }
        let Some(expires) = expiry(&token) else {
            return;
        };
        let checks = schedule(Instant::now(), expires, self.config.rechecks);
        let after = schedule_leeway(expires, self.config.leeway, self.config.leeway_rechecks);
        let idx = {
            let mut held = self.held.lock();
            held.push(Held {
                token,
                kid,
                ttl,
                minted_at,
                expires,
            });
            held.len() - 1
        };
        let mut due = self.due.lock();
        for at in checks {
            due.push(Reverse((at, idx, false)));
        }
        for at in after {
            due.push(Reverse((at, idx, true)));
        }
    }
}

async fn worker(shared: Arc<Shared>, id: usize) {
    while !shared.done() {
        let ttl = shared.ttl();
        match shared.mint(id, ttl).await {
            Ok((token, granted, endpoint)) => {
                let at = shared.start.elapsed();
                let kid = token_kid(&token).unwrap_or_default();
                let vi = rand::random_range(0..shared.verifiers.len());
                let v = &shared.verifiers[vi];
                let verdict = verify(&v.resolver, &token).await;
                let kid_known = v.proxy.last_jwks_kids().is_some_and(|k| k.contains(&kid));
                let record = TokenRecord {
                    at,
                    kid: kid.clone(),
                    endpoint,
                    ttl: granted,
                    verifier: vi,
                    verified: verdict.is_ok(),
                    kid_known,
                    error: verdict.err(),
                };
                shared.report.lock().record(record);
                shared.hold(token, kid, granted, at);
            }
            Err(reason) => shared.report.lock().mint_error(reason),
        }
        if !shared.config.pause.is_zero() {
            tokio::time::sleep(shared.config.pause).await;
        }
    }
}

/// Re-verifies held tokens when they are due, with a random verifier each time.
async fn holder(shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let next = {
            let mut due = shared.due.lock();
            match due.peek() {
                Some(Reverse((at, _, _))) if *at <= Instant::now() => due.pop().map(|Reverse(x)| x),
                _ => None,
            }
        };
        let Some((_, idx, after_expiry)) = next else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let (token, kid, ttl, minted_at, expires) = {
            let held = shared.held.lock();
            let h = &held[idx];
            (
                h.token.clone(),
                h.kid.clone(),
                h.ttl,
                h.minted_at,
                h.expires,
            )
        };
        let started = Instant::now();
        let closes = if after_expiry {
            expires + shared.config.leeway
        } else {
            expires
        };
        if started >= closes {
            shared.report.lock().late_checks_missed += 1;
            continue;
        }
        let vi = rand::random_range(0..shared.verifiers.len());
        let verdict = verify(&shared.verifiers[vi].resolver, &token).await;
        shared.report.lock().late_check(LateCheck {
            kid,
            minted_at,
            ttl,
            remaining: expires.saturating_duration_since(started),
            leeway_left: after_expiry.then(|| closes - started),
            verifier: vi,
            ok: verdict.is_ok(),
            error: verdict.err(),
        });
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
    fn expiry_and_schedule() {
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let token = format!(
            "{}.{}.sig",
            b64("{}"),
            b64(&format!("{{\"exp\":{}}}", now_s + 10))
        );
        let exp = expiry(&token).unwrap();
        let left = exp.saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_secs(8) && left <= Duration::from_secs(10),
            "{left:?}"
        );
        let now = Instant::now();
        let s = schedule(now, now + Duration::from_secs(10), 2);
        assert_eq!(s.len(), 3);
        assert!(
            s.iter()
                .all(|t| *t > now && *t < now + Duration::from_secs(10))
        );
        // The last check falls in the token's last second.
        assert!(s[2] >= now + Duration::from_secs(9));
        assert!(schedule(now, now + Duration::from_millis(100), 2).is_empty());
        // After expiry: within the leeway window, the last in its last second.
        let exp = now + Duration::from_secs(6);
        let s = schedule_leeway(exp, VERIFIER_LEEWAY, 1);
        assert_eq!(s.len(), 2);
        assert!(s.iter().all(|t| *t > exp && *t < exp + VERIFIER_LEEWAY));
        assert!(s[1] >= exp + VERIFIER_LEEWAY - Duration::from_secs(1));
        assert!(schedule_leeway(exp, Duration::ZERO, 1).is_empty());
    }

    #[test]
    fn report_counts() {
        let mut r = LoadReport::default();
        let rec = |kid: &str, ok: bool, known: bool, at: u64| TokenRecord {
            at: Duration::from_millis(at),
            kid: kid.into(),
            endpoint: None,
            ttl: 6,
            verifier: 0,
            verified: ok,
            kid_known: known,
            error: (!ok).then(|| "bad".to_string()),
        };
        r.record(rec("a", true, true, 100));
        r.record(rec("b", false, false, 200));
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
                unknown_at_verify: 1,
                last_minted_ms: 200,
            }
        );
        assert_eq!(r.failure_reasons["bad"], 1);
        let check = |ok: bool, minted_ms: u64, remaining_ms: u64| LateCheck {
            kid: "a".into(),
            minted_at: Duration::from_millis(minted_ms),
            ttl: 6,
            remaining: Duration::from_millis(remaining_ms),
            leeway_left: None,
            verifier: 1,
            ok,
            error: (!ok).then(|| "gone".to_string()),
        };
        r.late_check(check(true, 90, 500));
        r.late_check(check(false, 50, 3000));
        assert_eq!((r.late_checks, r.late_verify_failures), (2, 1));
        let n = r.final_tokens_checked_at_end_of_life(
            "a",
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert_eq!(n, 1);
        // A check after expiry is a leeway check, never an end-of-life one.
        let mut after = check(false, 95, 0);
        after.leeway_left = Some(Duration::from_millis(400));
        r.late_check(after);
        assert_eq!((r.late_checks, r.late_verify_failures), (3, 2));
        assert_eq!((r.leeway_checks, r.leeway_verify_failures), (1, 1));
        let window = Duration::from_secs(1);
        assert_eq!(
            r.final_tokens_checked_at_end_of_life("a", window, window),
            1
        );
        assert_eq!(
            r.final_tokens_checked_at_end_of_leeway("a", window, window),
            1
        );
        assert_eq!(
            r.final_tokens_checked_at_end_of_leeway("b", window, window),
            0
        );
        r.late_checks_missed = 1;
        assert!(!r.late_checks_missed_within_bound());
        r.late_checks = 100;
        assert!(r.late_checks_missed_within_bound());
        let line = r.summary_line_with("s", "cutoff_s=1.0");
        assert!(
            line.starts_with(
                "e2e s: minted=2 verify_failures=1 late_verify_failures=2 mint_errors=1 cutoff_s=1.0 "
            ),
            "{line}"
        );
        assert!(
            line.contains(" late_checks=100 leeway_checks=1 late_checks_missed=1 minting_pods=0 "),
            "{line}"
        );
    }
}
