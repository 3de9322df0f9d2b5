//! Checks of a `MacpAuth` spec beyond what the CRD schema can express (and a
//! repeat of the schema's bounds, for API servers that skipped validation).
//!
//! A spec that fails here would make every token-service pod exit at startup,
//! so the reconciler reports it as `Degraded` and changes nothing.
//! `rotation.interval`'s syntax is checked by the rotation state machine,
//! which owns the schedule (reason `InvalidRotationInterval`); its minimum,
//! which depends on the rest of the spec, is checked here.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use macp_auth_service::config::RATE_LIMIT_CEILING;

use crate::crd::{MIN_EMERGENCY_MAX_TTL_SECONDS, MacpAuthSpec};
use crate::rotation;

// Re-exported where the drain rule is checked, for the e2e tests that size
// their drains with it; defined once, beside the CRD rule it also shapes.
pub use crate::crd::VERIFIER_LEEWAY_SECONDS;

/// `Degraded` reason for a spec refused here.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("defaultTtlSeconds ({default}) must not exceed maxTtlSeconds ({max})")]
    DefaultAboveMax { default: i64, max: i64 },
    #[error("{field} must be at least {min}, got {value}")]
    TooSmall {
        field: &'static str,
        min: i64,
        value: i64,
    },
    #[error("port must be between 1 and 65535, got {0}")]
    Port(i32),
    #[error("rsaKeyBits must be 2048, 3072 or 4096, got {0}")]
    RsaKeyBits(u32),
    #[error("image must not be empty (omit it to use the operator's default)")]
    EmptyImage,
    #[error(
        "image {0:?} has a malformed digest: pin it as repository@sha256:<64 lower-case hex digits>"
    )]
    ImageDigest(String),
    #[error("emergency.maxTtlSeconds ({emergency}) must not exceed maxTtlSeconds ({max})")]
    EmergencyAboveMax { emergency: i64, max: i64 },
    #[error("callerAuth.{0} must not be empty")]
    EmptyCallerAuth(&'static str),
    #[error(
        "callerAuth.key {0:?} is not a valid Secret key (letters, digits, '-', '_' and '.' only)"
    )]
    CallerAuthKey(String),
    #[error(
        "rotation.drainSeconds ({drain}) must cover maxTtlSeconds ({max_ttl}) plus the verifiers' \
         {VERIFIER_LEEWAY_SECONDS}s clock leeway: at least {}, or unset",
        max_ttl + VERIFIER_LEEWAY_SECONDS
    )]
    DrainTooShort { drain: i64, max_ttl: i64 },
    #[error(
        "rotation.interval {interval:?} is shorter than one rotation can take: at least {min_seconds}s \
         (drainSeconds {drain} + propagation wait {propagation}s + {rollouts} rollouts of \
         rolloutTimeoutSeconds {rollout_timeout}), or the key would sign longer than the interval"
    )]
    IntervalTooShort {
        interval: String,
        min_seconds: u64,
        drain: i64,
        propagation: i64,
        rollouts: u32,
        rollout_timeout: i64,
    },
    #[error("rateLimit.{field} must be between 1 and {RATE_LIMIT_CEILING}, got {value}")]
    RateLimit { field: &'static str, value: u32 },
    #[error("mintPort must be between 1 and 65535, got {0}")]
    MintPort(i32),
    #[error("mintPort ({0}) must differ from port: minting moves to a second listener")]
    MintPortIsPort(i32),
    #[error("autoscaling.minReplicas ({min}) must not exceed autoscaling.maxReplicas ({max})")]
    AutoscalingRange { min: i32, max: i32 },
    #[error("autoscaling.targetCPUUtilizationPercentage must be between 1 and 1000, got {0}")]
    AutoscalingTarget(i32),
    #[error(
        "autoscaling.targetCPUUtilizationPercentage needs a CPU request, but resources.requests.cpu \
         is unset (and no resources.limits.cpu stands in for it): a HorizontalPodAutoscaler never \
         scales pods without one (\"missing request for cpu\"); set resources.requests.cpu, or \
         leave resources unset for the operator's defaults"
    )]
    AutoscalingWithoutCpuRequest,
    #[error("disruptionBudget: set maxUnavailable or minAvailable, not both")]
    BudgetBoth,
    #[error(
        "disruptionBudget.{field} must be a non-negative integer or a percentage such as \"50%\", got {value}"
    )]
    BudgetValue { field: &'static str, value: String },
    #[error(
        "disruptionBudget.{field} {value} lets no pod be evicted with {replicas} replica(s): every node drain would hang; \
         allow at least one (maxUnavailable >= 1, or minAvailable below {replicas})"
    )]
    BudgetBlocksDrains {
        field: &'static str,
        value: String,
        replicas: i32,
    },
    #[error(
        "topologySpreadConstraints has two constraints for topologyKey {key:?} and whenUnsatisfiable {when:?}; the API server refuses duplicates"
    )]
    DuplicateSpread { key: String, when: String },
}

/// Every problem of `spec`, in field order; empty when it is valid.
pub fn validate(spec: &MacpAuthSpec) -> Vec<SpecError> {
    let mut errors = Vec::new();
    let mut min = |field, min, value| {
        if value < min {
            errors.push(SpecError::TooSmall { field, min, value });
        }
    };
    min("replicas", 1, i64::from(spec.replicas));
    min("maxTtlSeconds", 1, spec.max_ttl_seconds);
    min("defaultTtlSeconds", 1, spec.default_ttl_seconds);
    min("jwksCacheTtlSeconds", 1, spec.jwks_cache_ttl_seconds);
    min(
        "rotation.rolloutTimeoutSeconds",
        1,
        spec.rotation.rollout_timeout_seconds,
    );
    if let Some(d) = spec.rotation.drain_seconds {
        min("rotation.drainSeconds", 0, d);
    }
    if !(1..=65535).contains(&spec.port) {
        errors.push(SpecError::Port(spec.port));
    }
    if spec.default_ttl_seconds > spec.max_ttl_seconds {
        errors.push(SpecError::DefaultAboveMax {
            default: spec.default_ttl_seconds,
            max: spec.max_ttl_seconds,
        });
    }
    if !macp_auth_service::keys::RSA_BITS_CHOICES.contains(&spec.rsa_key_bits) {
        errors.push(SpecError::RsaKeyBits(spec.rsa_key_bits));
    }
    if spec.image.as_deref().is_some_and(|i| i.trim().is_empty()) {
        errors.push(SpecError::EmptyImage);
    }
    if let Some(image) = spec.image.as_deref().filter(|i| !valid_digest(i)) {
        errors.push(SpecError::ImageDigest(image.to_string()));
    }
    errors.extend(validate_mint_controls_and_emergency(spec));
    errors.extend(validate_production(spec));
    errors.extend(validate_drain(spec));
    errors.extend(validate_interval(spec));
    errors
}

/// A key signs from its activation until the next key's, and a rotation
/// runs only when the previous one is over (drained and retired), so an
/// interval shorter than [`rotation::min_interval`] cannot be kept: rotations
/// would run back to back and each key still sign longer than the interval.
/// An interval that does not parse is the rotation machine's to report.
fn validate_interval(spec: &MacpAuthSpec) -> Option<SpecError> {
    let text = spec.rotation.interval.as_deref()?;
    let interval = rotation::parse_interval(text).ok()?;
    let min = rotation::min_interval(spec);
    (interval < min).then(|| {
        let prepublish = spec.rotation.prepublish;
        SpecError::IntervalTooShort {
            interval: text.to_string(),
            min_seconds: min.as_secs(),
            drain: spec.effective_drain_seconds(),
            propagation: i64::try_from(rotation::propagation_wait(spec).as_secs())
                .unwrap_or(i64::MAX),
            rollouts: if prepublish { 4 } else { 3 },
            rollout_timeout: spec.rotation.rollout_timeout_seconds,
        }
    })
}

/// The old key stays published `drainSeconds` after it stopped signing; the
/// last token it signed may live `maxTtlSeconds` and verifiers accept it
/// [`VERIFIER_LEEWAY_SECONDS`] past that. A shorter drain retires the key
/// while its tokens are still valid. The emergency TTL clamp does not relax
/// this: it bounds tokens minted during an emergency, not the ones the old
/// key signed before a routine rotation.
fn validate_drain(spec: &MacpAuthSpec) -> Option<SpecError> {
    let drain = spec.rotation.drain_seconds?;
    (drain < spec.max_ttl_seconds + VERIFIER_LEEWAY_SECONDS).then_some(SpecError::DrainTooShort {
        drain,
        max_ttl: spec.max_ttl_seconds,
    })
}

/// The optional mint controls (caller auth, rate limit) and the emergency max TTL.
fn validate_mint_controls_and_emergency(spec: &MacpAuthSpec) -> Vec<SpecError> {
    let mut errors = Vec::new();
    if let Some(auth) = &spec.caller_auth {
        if auth.secret_name.trim().is_empty() {
            errors.push(SpecError::EmptyCallerAuth("secretName"));
        }
        if auth.key.is_empty() {
            errors.push(SpecError::EmptyCallerAuth("key"));
        } else if !auth
            .key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            errors.push(SpecError::CallerAuthKey(auth.key.clone()));
        }
    }
    if let Some(rl) = &spec.rate_limit {
        let fields = [("perSecond", Some(rl.per_second)), ("burst", rl.burst)];
        for (field, value) in fields {
            if let Some(value) = value
                && !(1..=RATE_LIMIT_CEILING).contains(&value)
            {
                errors.push(SpecError::RateLimit { field, value });
            }
        }
    }
    if let Some(em) = &spec.emergency {
        if em.max_ttl_seconds < MIN_EMERGENCY_MAX_TTL_SECONDS {
            errors.push(SpecError::TooSmall {
                field: "emergency.maxTtlSeconds",
                min: MIN_EMERGENCY_MAX_TTL_SECONDS,
                value: em.max_ttl_seconds,
            });
        }
        // A larger cap would not clamp anything: almost surely a mistake
        // that would leave the incident without its shortened lifetimes.
        if em.max_ttl_seconds > spec.max_ttl_seconds {
            errors.push(SpecError::EmergencyAboveMax {
                emergency: em.max_ttl_seconds,
                max: spec.max_ttl_seconds,
            });
        }
    }
    errors
}

/// A PodDisruptionBudget value: a non-negative integer or `N%`.
fn budget_value(v: &IntOrString) -> Result<(), String> {
    match v {
        IntOrString::Int(n) if *n >= 0 => Ok(()),
        IntOrString::String(s)
            if s.strip_suffix('%')
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())) =>
        {
            Ok(())
        }
        IntOrString::Int(n) => Err(n.to_string()),
        IntOrString::String(s) => Err(format!("{s:?}")),
    }
}

/// An image pinned by digest (`repo@sha256:...`, `repo:tag@sha256:...`)
/// names a well-formed one; an image without `@` has nothing to check. The
/// kubelet would refuse a malformed reference (`InvalidImageName`) on every
/// pod; here it is refused before any is rolled.
fn valid_digest(image: &str) -> bool {
    let Some((repo, digest)) = image.split_once('@') else {
        return true;
    };
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    !repo.is_empty()
        && hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether the pods get a CPU request: the operator's defaults have one; a
/// given `resources` replaces them whole, and the API server defaults a
/// missing request to the limit.
fn has_cpu_request(spec: &MacpAuthSpec) -> bool {
    let Some(r) = &spec.resources else {
        return true;
    };
    [&r.requests, &r.limits]
        .into_iter()
        .flatten()
        .any(|m| m.contains_key("cpu"))
}

/// The production settings: mint port, autoscaling, disruption budget, spread.
/// Some repeat CEL rules of the schema (for API servers without CEL); the
/// budget and spread checks are cross-field or defaulted combinations the
/// schema cannot express, which the API server would accept and then fail on
/// (a budget that blocks every drain) or refuse with a 422 on every round.
fn validate_production(spec: &MacpAuthSpec) -> Vec<SpecError> {
    let mut errors = Vec::new();
    if let Some(mint) = spec.mint_port {
        if !(1..=65535).contains(&mint) {
            errors.push(SpecError::MintPort(mint));
        } else if mint == spec.port {
            errors.push(SpecError::MintPortIsPort(mint));
        }
    }
    let mut least_replicas = spec.replicas;
    if let Some(a) = &spec.autoscaling {
        for (field, value) in [
            ("autoscaling.minReplicas", a.min_replicas),
            ("autoscaling.maxReplicas", a.max_replicas),
        ] {
            if value < 1 {
                errors.push(SpecError::TooSmall {
                    field,
                    min: 1,
                    value: i64::from(value),
                });
            }
        }
        if a.min_replicas > a.max_replicas {
            errors.push(SpecError::AutoscalingRange {
                min: a.min_replicas,
                max: a.max_replicas,
            });
        }
        if !(1..=1000).contains(&a.target_cpu_utilization_percentage) {
            errors.push(SpecError::AutoscalingTarget(
                a.target_cpu_utilization_percentage,
            ));
        }
        if !has_cpu_request(spec) {
            errors.push(SpecError::AutoscalingWithoutCpuRequest);
        }
        least_replicas = a.min_replicas;
    }
    if let Some(b) = spec.disruption_budget.as_ref().filter(|b| b.enabled) {
        if b.max_unavailable.is_some() && b.min_available.is_some() {
            errors.push(SpecError::BudgetBoth);
        }
        for (field, value) in [
            ("maxUnavailable", &b.max_unavailable),
            ("minAvailable", &b.min_available),
        ] {
            if let Some(Err(value)) = value.as_ref().map(budget_value) {
                errors.push(SpecError::BudgetValue { field, value });
            }
        }
        // Only the integer forms are decidable here; a percentage depends on
        // the replica count the autoscaler picks.
        let blocks = match (&b.max_unavailable, &b.min_available) {
            (Some(IntOrString::Int(0)), _) => Some(("maxUnavailable", "0".to_string())),
            (_, Some(IntOrString::Int(n))) if *n >= least_replicas && spec.may_run_several() => {
                Some(("minAvailable", n.to_string()))
            }
            _ => None,
        };
        if let Some((field, value)) = blocks {
            errors.push(SpecError::BudgetBlocksDrains {
                field,
                value,
                replicas: least_replicas,
            });
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in spec.topology_spread_constraints.iter().flatten() {
        if !seen.insert((c.topology_key.clone(), c.when_unsatisfiable.clone())) {
            errors.push(SpecError::DuplicateSpread {
                key: c.topology_key.clone(),
                when: c.when_unsatisfiable.clone(),
            });
        }
    }
    errors
}

/// `Degraded` reason for a `MacpAuth` name its owned objects cannot carry.
pub const REASON_INVALID_NAME: &str = "InvalidName";

/// Longest name of an object of most kinds (DNS-1123 subdomain).
const MAX_SUBDOMAIN: usize = 253;
/// Longest Service name (DNS-1035 label) and label value.
const MAX_LABEL: usize = 63;

/// Why the objects named after a `MacpAuth` cannot be created. A real API
/// server refuses them with 422 Invalid; the operator refuses first, before
/// any key is generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NameError {
    #[error(
        "metadata.name {0:?} cannot name the Service: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character"
    )]
    ServiceName(String),
    #[error(
        "metadata.name {name:?} is {len} characters: the Service name and the label value app.kubernetes.io/instance must be no more than {MAX_LABEL} characters"
    )]
    TooLong { name: String, len: usize },
    #[error(
        "the derived name {derived:?} is {len} characters: object names must be no more than {MAX_SUBDOMAIN} characters"
    )]
    Derived { derived: String, len: usize },
}

/// The rules the owned objects put on a `MacpAuth` name: the Service is named
/// after it (DNS-1035 label), it is the `app.kubernetes.io/instance` label
/// value (at most 63 characters), and `<name>-signing-keys` and
/// `<name>-verifier-config` must be object names. The CRD schema repeats the
/// first two as a CEL rule; this check covers API servers that skipped it.
pub(crate) fn validate_name(name: &str) -> Vec<NameError> {
    let mut errors = Vec::new();
    let lower_alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let dns1035 = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(lower_alnum)
        && name.chars().all(|c| lower_alnum(c) || c == '-');
    if !dns1035 {
        errors.push(NameError::ServiceName(name.to_string()));
    }
    if name.len() > MAX_LABEL {
        errors.push(NameError::TooLong {
            name: name.to_string(),
            len: name.len(),
        });
    }
    for derived in [
        crate::resources::secret_name(name),
        crate::resources::config_map_name(name),
    ] {
        if derived.len() > MAX_SUBDOMAIN {
            errors.push(NameError::Derived {
                len: derived.len(),
                derived,
            });
        }
    }
    errors
}

/// One message for all problems, for the `Degraded` condition.
pub(crate) fn message(errors: &[SpecError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::spec;

    #[test]
    fn defaults_are_valid() {
        let s = spec(serde_json::json!({}));
        assert_eq!(s.replicas, 2);
        assert_eq!(s.port, 3200);
        assert_eq!(s.max_ttl_seconds, 3600);
        assert_eq!(s.default_ttl_seconds, 300);
        assert_eq!(s.rsa_key_bits, 2048);
        assert_eq!(s.jwks_cache_ttl_seconds, 300);
        assert!(s.rotation.prepublish);
        assert_eq!(s.rotation.rollout_timeout_seconds, 600);
        assert_eq!(s.effective_drain_seconds(), 3660);
        assert_eq!(validate(&s), vec![]);
    }

    #[test]
    fn an_interval_shorter_than_one_rotation_is_refused_naming_the_minimum() {
        let base = serde_json::json!({
            "maxTtlSeconds": 5,
            "defaultTtlSeconds": 5,
            "jwksCacheTtlSeconds": 2,
            "rotation": {"interval": "3m", "rolloutTimeoutSeconds": 20, "propagationTimeoutSeconds": 12}
        });
        // Drain 65 + propagation 12 (the evidence ceiling) + 4 rollouts of 20 = 157 s: 3m is enough.
        assert_eq!(validate(&spec(base.clone())), vec![]);
        let mut short = base;
        short["rotation"]["interval"] = serde_json::json!("2m");
        short["rotation"]["rolloutTimeoutSeconds"] = serde_json::json!(30);
        let errs = validate(&spec(short));
        assert_eq!(
            errs,
            vec![SpecError::IntervalTooShort {
                interval: "2m".into(),
                min_seconds: 65 + 12 + 4 * 30,
                drain: 65,
                propagation: 12,
                rollouts: 4,
                rollout_timeout: 30,
            }]
        );
        assert!(
            message(&errs).contains("at least 197s"),
            "{}",
            message(&errs)
        );
        // `1s` is no interval at all with the defaults.
        let errs = validate(&spec(serde_json::json!({"rotation": {"interval": "1s"}})));
        assert!(
            matches!(
                errs.as_slice(),
                [SpecError::IntervalTooShort {
                    min_seconds: 7860,
                    ..
                }]
            ),
            "{errs:?}"
        );
        // A syntax error is the rotation machine's to report.
        assert_eq!(
            validate(&spec(serde_json::json!({"rotation": {"interval": "soon"}}))),
            vec![]
        );
    }

    #[test]
    fn default_ttl_above_max_is_refused() {
        let errs = validate(&spec(
            serde_json::json!({"maxTtlSeconds": 60, "defaultTtlSeconds": 61}),
        ));
        assert_eq!(
            errs,
            vec![SpecError::DefaultAboveMax {
                default: 61,
                max: 60
            }]
        );
        assert_eq!(
            message(&errs),
            "defaultTtlSeconds (61) must not exceed maxTtlSeconds (60)"
        );
    }

    #[test]
    fn schema_bounds_are_rechecked() {
        let errs = validate(&spec(serde_json::json!({
            "replicas": 0, "port": 70000, "rsaKeyBits": 1024, "image": " ",
            "maxTtlSeconds": 0, "defaultTtlSeconds": 0, "jwksCacheTtlSeconds": 0,
            "rotation": {"rolloutTimeoutSeconds": 0, "drainSeconds": -1}
        })));
        assert_eq!(errs.len(), 10, "{errs:?}");
        assert!(errs.contains(&SpecError::RsaKeyBits(1024)));
        assert!(errs.contains(&SpecError::Port(70000)));
        assert!(errs.contains(&SpecError::EmptyImage));
        let msg = message(&errs);
        // Pinned by digest: accepted when well formed (README, "Pinning images by digest").
        let digest = "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945";
        for image in [
            format!("registry.example.com/platform/macp-auth-service@{digest}"),
            format!("registry.example.com:5000/macp-auth-service:0.1.0@{digest}"),
            "macp-auth-service:0.1.0".to_string(),
        ] {
            assert_eq!(
                validate(&spec(serde_json::json!({"image": image}))),
                vec![],
                "{image}"
            );
        }
        for image in [
            "repo@sha256:abc",
            "repo@sha512:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945",
            "repo@sha256:4F53CDA18C2BAA0C0354BB5F9A3ECBE5ED12AB4D8E11BA873C2F11161202B945",
            "@sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945",
        ] {
            let errs = validate(&spec(serde_json::json!({"image": image})));
            assert_eq!(errs, vec![SpecError::ImageDigest(image.into())], "{image}");
            assert!(
                errs[0].to_string().contains("repository@sha256:"),
                "{image}"
            );
        }
        assert!(msg.contains("replicas must be at least 1, got 0"), "{msg}");
    }

    #[test]
    fn mint_controls_and_emergency_are_off_by_default_and_valid_when_sane() {
        let s = spec(serde_json::json!({}));
        assert!(s.caller_auth.is_none() && s.rate_limit.is_none());
        assert!(s.audit.is_none() && s.emergency.is_none());
        let s = spec(serde_json::json!({
            "callerAuth": {"secretName": "minters"},
            "rateLimit": {"perSecond": 50, "burst": 100},
            "audit": {"enabled": true},
            "emergency": {"maxTtlSeconds": 300}
        }));
        assert_eq!(s.caller_auth.as_ref().unwrap().key, "tokens");
        assert_eq!(validate(&s), vec![]);
        // Equal to maxTtlSeconds is allowed (a no-op clamp).
        let s = spec(
            serde_json::json!({"maxTtlSeconds": 300, "defaultTtlSeconds": 60,
            "emergency": {"maxTtlSeconds": 300}}),
        );
        assert_eq!(validate(&s), vec![]);
    }

    #[test]
    fn drain_must_cover_max_ttl_plus_the_verifier_leeway() {
        let errs = validate(&spec(
            serde_json::json!({"maxTtlSeconds": 600, "rotation": {"drainSeconds": 600}}),
        ));
        assert_eq!(
            errs,
            vec![SpecError::DrainTooShort {
                drain: 600,
                max_ttl: 600
            }]
        );
        let msg = message(&errs);
        assert!(msg.contains("rotation.drainSeconds (600)"), "{msg}");
        assert!(msg.contains("maxTtlSeconds (600)"), "{msg}");
        assert!(msg.contains("at least 660"), "{msg}");
        let ok = spec(serde_json::json!({"maxTtlSeconds": 600, "rotation": {"drainSeconds": 660}}));
        assert_eq!(validate(&ok), vec![]);
        // Unset means maxTtlSeconds + 60, which always covers it.
        let unset = spec(serde_json::json!({"maxTtlSeconds": 7200}));
        assert_eq!(validate(&unset), vec![]);
        assert_eq!(
            unset.effective_drain_seconds(),
            7200 + VERIFIER_LEEWAY_SECONDS
        );
        // The emergency clamp shortens emergency tokens, not a routine drain.
        let clamped = spec(serde_json::json!({"maxTtlSeconds": 600,
            "emergency": {"maxTtlSeconds": 60}, "rotation": {"drainSeconds": 120}}));
        assert_eq!(
            validate(&clamped),
            vec![SpecError::DrainTooShort {
                drain: 120,
                max_ttl: 600
            }]
        );
    }

    #[test]
    fn emergency_max_ttl_must_be_at_least_a_minute_and_at_most_max() {
        let errs = validate(&spec(serde_json::json!({
            "maxTtlSeconds": 600, "emergency": {"maxTtlSeconds": 900}
        })));
        assert_eq!(
            errs,
            vec![SpecError::EmergencyAboveMax {
                emergency: 900,
                max: 600
            }]
        );
        assert_eq!(
            message(&errs),
            "emergency.maxTtlSeconds (900) must not exceed maxTtlSeconds (600)"
        );
        let errs = validate(&spec(
            serde_json::json!({"emergency": {"maxTtlSeconds": 30}}),
        ));
        assert_eq!(
            message(&errs),
            "emergency.maxTtlSeconds must be at least 60, got 30"
        );
    }

    #[test]
    fn caller_auth_and_rate_limit_bounds_are_rechecked() {
        let errs = validate(&spec(serde_json::json!({
            "callerAuth": {"secretName": " ", "key": "../tokens"},
            "rateLimit": {"perSecond": 0, "burst": 2_000_000}
        })));
        assert_eq!(
            errs,
            vec![
                SpecError::EmptyCallerAuth("secretName"),
                SpecError::CallerAuthKey("../tokens".into()),
                SpecError::RateLimit {
                    field: "perSecond",
                    value: 0
                },
                SpecError::RateLimit {
                    field: "burst",
                    value: 2_000_000
                },
            ]
        );
        let errs = validate(&spec(
            serde_json::json!({"callerAuth": {"secretName": "s", "key": ""}}),
        ));
        assert_eq!(message(&errs), "callerAuth.key must not be empty");
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn names_the_owned_objects_cannot_carry_are_refused() {
        for ok in ["a", "prod", "auth-1", &"a".repeat(63)] {
            assert_eq!(validate_name(ok), vec![], "{ok}");
        }
        assert_eq!(
            validate_name("a.b"),
            vec![NameError::ServiceName("a.b".into())]
        );
        assert_eq!(
            validate_name("1auth"),
            vec![NameError::ServiceName("1auth".into())]
        );
        assert_eq!(
            validate_name("auth-"),
            vec![NameError::ServiceName("auth-".into())]
        );
        let long = "a".repeat(64);
        assert_eq!(
            validate_name(&long),
            vec![NameError::TooLong {
                name: long.clone(),
                len: 64
            }]
        );
        let huge = "a".repeat(240);
        let errs = validate_name(&huge);
        assert!(!errs.contains(&NameError::Derived {
            derived: format!("{huge}-signing-keys"),
            len: 253
        }));
        assert!(errs.contains(&NameError::Derived {
            derived: format!("{huge}-verifier-config"),
            len: 256
        }));
        assert!(
            NameError::ServiceName("a.b".into())
                .to_string()
                .contains("DNS-1035 label")
        );
    }
}

#[cfg(test)]
mod production_tests {
    use super::*;
    use crate::fixtures::spec;

    #[test]
    fn production_settings_are_checked_naming_the_field() {
        assert_eq!(
            validate(&spec(serde_json::json!({
                "mintPort": 3201, "autoscaling": {"minReplicas": 2, "maxReplicas": 6},
                "disruptionBudget": {"minAvailable": 1},
                "topologySpreadConstraints": []
            }))),
            vec![]
        );
        let errs = validate(&spec(serde_json::json!({"port": 3200, "mintPort": 3200})));
        assert_eq!(errs, vec![SpecError::MintPortIsPort(3200)]);
        assert!(
            errs[0]
                .to_string()
                .starts_with("mintPort (3200) must differ from port")
        );
        let errs = validate(&spec(serde_json::json!({"mintPort": 70000})));
        assert_eq!(errs, vec![SpecError::MintPort(70000)]);
        let errs = validate(&spec(serde_json::json!({
            "autoscaling": {"minReplicas": 5, "maxReplicas": 3, "targetCPUUtilizationPercentage": 0}
        })));
        assert_eq!(
            errs,
            vec![
                SpecError::AutoscalingRange { min: 5, max: 3 },
                SpecError::AutoscalingTarget(0)
            ]
        );
        assert!(errs[0].to_string().contains("autoscaling.minReplicas (5)"));
        // A CPU target needs a CPU request: the defaults have one, a given
        // `resources` must too (or a CPU limit, which the API server copies).
        let autoscaled = |resources: serde_json::Value| {
            validate(&spec(serde_json::json!({
                "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
                "resources": resources
            })))
        };
        let errs = autoscaled(serde_json::json!({"requests": {"memory": "64Mi"}}));
        assert_eq!(errs, vec![SpecError::AutoscalingWithoutCpuRequest]);
        let message = errs[0].to_string();
        assert!(
            message.contains("autoscaling.targetCPUUtilizationPercentage")
                && message.contains("resources.requests.cpu"),
            "{message}"
        );
        assert_eq!(
            autoscaled(serde_json::json!({"requests": {"cpu": "50m"}})),
            vec![]
        );
        assert_eq!(
            autoscaled(serde_json::json!({"limits": {"cpu": "1"}})),
            vec![]
        );
        assert_eq!(
            validate(&spec(
                serde_json::json!({"resources": {"requests": {"memory": "64Mi"}}})
            )),
            vec![]
        );
        let errs = validate(&spec(serde_json::json!({
            "disruptionBudget": {"maxUnavailable": 1, "minAvailable": "50%"}
        })));
        assert_eq!(errs, vec![SpecError::BudgetBoth]);
        let errs = validate(&spec(serde_json::json!({
            "disruptionBudget": {"maxUnavailable": "half"}
        })));
        assert!(
            matches!(
                &errs[..],
                [SpecError::BudgetValue {
                    field: "maxUnavailable",
                    ..
                }]
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn a_budget_that_blocks_every_drain_is_refused() {
        // replicas defaults to 2: minAvailable 2 leaves nothing to evict.
        let errs = validate(&spec(
            serde_json::json!({"disruptionBudget": {"minAvailable": 2}}),
        ));
        assert!(
            matches!(
                &errs[..],
                [SpecError::BudgetBlocksDrains {
                    field: "minAvailable",
                    replicas: 2,
                    ..
                }]
            ),
            "{errs:?}"
        );
        assert!(
            errs[0]
                .to_string()
                .contains("disruptionBudget.minAvailable 2")
        );
        // With autoscaling the floor is minReplicas.
        let errs = validate(&spec(serde_json::json!({
            "autoscaling": {"minReplicas": 3, "maxReplicas": 5},
            "disruptionBudget": {"minAvailable": 2}
        })));
        assert_eq!(errs, vec![]);
        let errs = validate(&spec(
            serde_json::json!({"disruptionBudget": {"maxUnavailable": 0}}),
        ));
        assert!(
            matches!(
                &errs[..],
                [SpecError::BudgetBlocksDrains {
                    field: "maxUnavailable",
                    ..
                }]
            ),
            "{errs:?}"
        );
        // A disabled budget is not checked.
        let errs = validate(&spec(serde_json::json!({
            "disruptionBudget": {"enabled": false, "maxUnavailable": 0}
        })));
        assert_eq!(errs, vec![]);
    }

    #[test]
    fn duplicate_spread_constraints_are_refused() {
        let c = serde_json::json!({"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"});
        let errs = validate(&spec(
            serde_json::json!({"topologySpreadConstraints": [c, c]}),
        ));
        assert!(
            matches!(&errs[..], [SpecError::DuplicateSpread { .. }]),
            "{errs:?}"
        );
    }
}
