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

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
}

const OUTCOMES: usize = 8;

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

        Metrics {
            registry,
            mints,
            latency,
        }
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
        assert!(text.ends_with("# EOF\n"));
    }
}
