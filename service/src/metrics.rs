//! Prometheus metrics (`GET /metrics`, OpenMetrics text).
//!
//! The mint path must stay cheap: every counter handle it touches is created
//! once at startup (a `Family` lookup takes a lock and hashes the labels), so
//! recording an outcome is one atomic increment plus one histogram observation.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::keys::Alg;
use crate::listener::ConnectionMetrics;

/// How a `POST /tokens` ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    issued,
    unsupported_content_type,
    body_too_large,
    invalid_json,
    invalid_sender,
    invalid_scopes,
    invalid_ttl,
    signing_failed,
    unauthorized,
    rate_limited,
    /// The body did not arrive within `MACP_AUTH_REQUEST_TIMEOUT_SECONDS`.
    request_timeout,
}

const OUTCOMES: usize = 11;

impl Outcome {
    const ALL: [Outcome; OUTCOMES] = [
        Outcome::issued,
        Outcome::unsupported_content_type,
        Outcome::body_too_large,
        Outcome::invalid_json,
        Outcome::invalid_sender,
        Outcome::invalid_scopes,
        Outcome::invalid_ttl,
        Outcome::signing_failed,
        Outcome::unauthorized,
        Outcome::rate_limited,
        Outcome::request_timeout,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MintLabels {
    outcome: Outcome,
    alg: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlgLabel {
    alg: &'static str,
}

/// Why caller authentication refused a request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AuthFailure {
    missing,
    invalid,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthFailureLabel {
    reason: AuthFailure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProblemLabel {
    problem: &'static str,
}

const CALLER_FILE_INVALID_LINES: &str = "invalid_lines";
const CALLER_FILE_NO_TOKENS: &str = "no_tokens";
const CALLER_FILE_UNREADABLE: &str = "unreadable";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    kid: String,
    alg: &'static str,
}

/// The service's metrics registry and the pre-resolved handles the mint path uses.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Indexed by `Outcome as usize` (declaration order equals `Outcome::ALL`).
    mints: [Counter; OUTCOMES],
    latency: Histogram,
    /// `[missing, invalid]`.
    auth_failures: [Counter; 2],
    rate_limited: Counter,
    caller_tokens: Gauge,
    /// In the order of [`crate::callers::RELOAD_RESULTS`].
    caller_reloads: [Counter; 4],
    /// `[invalid_lines, no_tokens, unreadable]` of the tokens file as last read.
    caller_file_problems: [Gauge; 3],
    key_age: Gauge,
    key_loaded: std::time::Instant,
    connections: ConnectionMetrics,
    jwks: JwksMetrics,
}

/// The JWKS endpoint's caching and its clients.
#[derive(Debug, Default)]
struct JwksMetrics {
    max_age: Gauge,
    not_modified: Counter,
    clients: Gauge,
    evicted: Counter,
    client_interval: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    /// Registers every metric: mint counters for all outcomes (so absent
    /// outcomes show as 0 instead of missing), the mint latency histogram,
    /// `macp_auth_signing_key_info{kid,alg} 1` and the published key count.
    pub fn new(alg: Alg, active_kid: &str, published_keys: usize) -> Self {
        let mut registry = Registry::with_prefix("macp_auth");

        let mint_family = Family::<MintLabels, Counter>::default();
        let mints = Outcome::ALL.map(|outcome| {
            mint_family
                .get_or_create(&MintLabels {
                    outcome,
                    alg: alg.as_str(),
                })
                .clone()
        });
        registry.register(
            "mints",
            "POST /tokens requests by outcome and signing algorithm",
            mint_family,
        );

        // 100 us .. ~1.6 s: ES256 mints take tens of microseconds, RS256 about
        // a millisecond, and anything past 100 ms means CPU starvation.
        let latency_family = Family::<AlgLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0001, 2.0, 15))) as fn() -> Histogram,
        );
        let latency = latency_family
            .get_or_create(&AlgLabel { alg: alg.as_str() })
            .clone();
        registry.register_with_unit(
            "mint_duration",
            "Time to handle POST /tokens, from headers received to response built",
            prometheus_client::registry::Unit::Seconds,
            latency_family,
        );

        let key_info = Family::<KeyLabels, Gauge>::default();
        key_info
            .get_or_create(&KeyLabels {
                kid: active_kid.to_string(),
                alg: alg.as_str(),
            })
            .set(1);
        registry.register(
            "signing_key_info",
            "The active signing key (value is always 1)",
            key_info,
        );

        let published = Gauge::<i64>::default();
        published.set(i64::try_from(published_keys).unwrap_or(i64::MAX));
        registry.register(
            "published_keys",
            "Keys in the served JWKS (active plus verification-only)",
            published,
        );

        let key_age = Gauge::<i64>::default();
        registry.register_with_unit(
            "signing_key_age",
            "Time since this process loaded the active signing key",
            prometheus_client::registry::Unit::Seconds,
            key_age.clone(),
        );

        let auth_family = Family::<AuthFailureLabel, Counter>::default();
        let auth_failures = [AuthFailure::missing, AuthFailure::invalid].map(|reason| {
            auth_family
                .get_or_create(&AuthFailureLabel { reason })
                .clone()
        });
        registry.register(
            "auth_failures",
            "POST /tokens refused by caller authentication (missing or invalid bearer token)",
            auth_family,
        );

        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "POST /tokens refused by the per-caller rate limit",
            rate_limited.clone(),
        );

        let caller_tokens = Gauge::<i64>::default();
        registry.register(
            "caller_tokens",
            "Accepted caller bearer tokens loaded (0: caller authentication off)",
            caller_tokens.clone(),
        );
        let reload_family = Family::<ReloadLabel, Counter>::default();
        let caller_reloads = crate::callers::RELOAD_RESULTS
            .map(|result| reload_family.get_or_create(&ReloadLabel { result }).clone());
        registry.register(
            "caller_token_reloads",
            "Changes of MACP_AUTH_MINT_TOKENS_FILE applied: every line (ok), the valid lines only \
             (invalid_lines), none as the file holds no valid token (empty) or cannot be read \
             (unreadable); the last two admit no caller",
            reload_family,
        );
        let problem_family = Family::<ProblemLabel, Gauge>::default();
        let caller_file_problems = [
            CALLER_FILE_INVALID_LINES,
            CALLER_FILE_NO_TOKENS,
            CALLER_FILE_UNREADABLE,
        ]
        .map(|problem| {
            problem_family
                .get_or_create(&ProblemLabel { problem })
                .clone()
        });
        registry.register(
            "caller_token_file_problems",
            "Problems of MACP_AUTH_MINT_TOKENS_FILE as last read: invalid_lines (lines dropped), \
             no_tokens (1: no caller admitted), unreadable (1: no caller admitted)",
            problem_family,
        );

        let connections = ConnectionMetrics::default();
        connections.register(&mut registry);

        let jwks = JwksMetrics::default();
        registry.register_with_unit(
            "jwks_max_age",
            "Cache-Control max-age of the JWKS (MACP_AUTH_JWKS_MAX_AGE_SECONDS; the MacpAuth's jwksCacheTtlSeconds)",
            prometheus_client::registry::Unit::Seconds,
            jwks.max_age.clone(),
        );
        registry.register(
            "jwks_not_modified",
            "JWKS requests answered 304 Not Modified (If-None-Match matched the ETag)",
            jwks.not_modified.clone(),
        );
        registry.register(
            "jwks_clients",
            "JWKS clients (peer address and User-Agent) remembered for GET /verifiers",
            jwks.clients.clone(),
        );
        registry.register(
            "jwks_clients_evicted",
            "JWKS client records dropped at MACP_AUTH_VERIFIER_RECORDS for a newer client",
            jwks.evicted.clone(),
        );
        registry.register_with_unit(
            "jwks_client_interval",
            "Longest cache time among JWKS clients with at least 3 fetches (each one's shortest time between two fetches); NaN when none",
            prometheus_client::registry::Unit::Seconds,
            jwks.client_interval.clone(),
        );

        Metrics {
            registry,
            mints,
            latency,
            auth_failures,
            rate_limited,
            caller_tokens,
            caller_reloads,
            caller_file_problems,
            key_age,
            key_loaded: std::time::Instant::now(),
            connections,
            jwks,
        }
    }

    /// The listener's connection counters, registered in this registry.
    pub fn connections(&self) -> &ConnectionMetrics {
        &self.connections
    }

    pub fn record_auth_failure(&self, reason: AuthFailure) {
        self.auth_failures[reason as usize].inc();
    }

    pub fn record_rate_limited(&self) {
        self.rate_limited.inc();
    }

    pub fn set_caller_tokens(&self, count: usize) {
        self.caller_tokens
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// [`Metrics::record_caller_file`] for a file applied whole (`ok`) or
    /// not read at all.
    pub fn record_caller_reload(&self, ok: bool) {
        let result = if ok {
            crate::callers::RELOAD_OK
        } else {
            crate::callers::RELOAD_UNREADABLE
        };
        self.record_caller_file(result, 0);
    }

    /// Counts one applied change of the tokens file (`result`, one of
    /// [`crate::callers::RELOAD_RESULTS`]) and sets the file's problems.
    pub fn record_caller_file(&self, result: &str, invalid_lines: usize) {
        if let Some(i) = crate::callers::RELOAD_RESULTS
            .iter()
            .position(|r| *r == result)
        {
            self.caller_reloads[i].inc();
        }
        let [invalid, none, unreadable] = &self.caller_file_problems;
        invalid.set(i64::try_from(invalid_lines).unwrap_or(i64::MAX));
        none.set(i64::from(result == crate::callers::RELOAD_EMPTY));
        unreadable.set(i64::from(result == crate::callers::RELOAD_UNREADABLE));
    }

    pub fn set_jwks_max_age(&self, seconds: u64) {
        self.jwks
            .max_age
            .set(i64::try_from(seconds).unwrap_or(i64::MAX));
    }

    pub fn record_jwks_not_modified(&self) {
        self.jwks.not_modified.inc();
    }

    /// One JWKS fetch recorded: `held` records now, `evicted` if one was dropped for it.
    pub fn record_jwks_client(&self, held: usize, evicted: bool) {
        self.jwks
            .clients
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        if evicted {
            self.jwks.evicted.inc();
        }
    }

    pub fn set_jwks_client_interval(&self, seconds: Option<f64>) {
        self.jwks.client_interval.set(seconds.unwrap_or(f64::NAN));
    }

    /// Records one `POST /tokens` outcome and how long it took.
    pub fn record_mint(&self, outcome: Outcome, elapsed: Duration) {
        if let Some(counter) = self.mints.get(outcome as usize) {
            counter.inc();
        }
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let age = self.key_loaded.elapsed().as_secs();
        self.key_age.set(i64::try_from(age).unwrap_or(i64::MAX));
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_index_matches_declaration_order() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i);
        }
    }

    #[test]
    fn exposes_counters_histogram_and_key_info() {
        let metrics = Metrics::new(Alg::ES256, "kid-1", 3);
        metrics.record_mint(Outcome::issued, Duration::from_micros(50));
        metrics.record_mint(Outcome::issued, Duration::from_micros(70));
        metrics.record_mint(Outcome::invalid_ttl, Duration::from_micros(5));
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(r#"macp_auth_mints_total{outcome="issued",alg="ES256"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"macp_auth_mints_total{outcome="invalid_ttl",alg="ES256"} 1"#));
        assert!(text.contains(r#"macp_auth_mints_total{outcome="signing_failed",alg="ES256"} 0"#));
        assert!(text.contains(r#"macp_auth_mint_duration_seconds_count{alg="ES256"} 3"#));
        assert!(text.contains(r#"macp_auth_signing_key_info{kid="kid-1",alg="ES256"} 1"#));
        assert!(text.contains("macp_auth_published_keys 3"));
        assert!(
            text.contains("macp_auth_signing_key_age_seconds 0"),
            "{text}"
        );
    }

    #[test]
    fn exposes_mint_control_counters() {
        let metrics = Metrics::new(Alg::ES256, "kid-1", 1);
        metrics.record_auth_failure(AuthFailure::missing);
        metrics.record_auth_failure(AuthFailure::invalid);
        metrics.record_auth_failure(AuthFailure::invalid);
        metrics.record_rate_limited();
        metrics.set_caller_tokens(4);
        metrics.record_caller_reload(true);
        metrics.record_caller_file("invalid_lines", 2);
        let text = metrics.encode().unwrap();
        for line in [
            r#"macp_auth_auth_failures_total{reason="missing"} 1"#,
            r#"macp_auth_auth_failures_total{reason="invalid"} 2"#,
            "macp_auth_rate_limited_total 1",
            "macp_auth_caller_tokens 4",
            r#"macp_auth_caller_token_reloads_total{result="ok"} 1"#,
            r#"macp_auth_caller_token_reloads_total{result="invalid_lines"} 1"#,
            r#"macp_auth_caller_token_reloads_total{result="unreadable"} 0"#,
            r#"macp_auth_caller_token_file_problems{problem="invalid_lines"} 2"#,
            r#"macp_auth_caller_token_file_problems{problem="no_tokens"} 0"#,
            r#"macp_auth_mints_total{outcome="unauthorized",alg="ES256"} 0"#,
            r#"macp_auth_mints_total{outcome="request_timeout",alg="ES256"} 0"#,
            "macp_auth_connections_open 0",
            "macp_auth_connections_shed_total 0",
            "macp_auth_connections_evicted_total 0",
            r#"macp_auth_connections_timed_out_total{stage="headers"} 0"#,
            r#"macp_auth_connections_timed_out_total{stage="request"} 0"#,
            "macp_auth_accept_errors_total 0",
        ] {
            assert!(text.contains(line), "{line} missing in {text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
