//! The token service container's environment.

use k8s_openapi::api::core::v1::EnvVar;

use super::deployment::SHUTDOWN_DELAY_SECONDS;
use super::volumes::{caller_tokens_path, signing_keys_path};
use crate::crd::{MacpAuthSpec, SigningAlg};
use crate::keyset;
use crate::ttl_clamp::TtlLimits;
use macp_auth_service::config as service_env;

fn env(name: &str, value: impl ToString) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.to_string()),
        value_from: None,
    }
}

/// The container's environment: the spec's settings with `ttl` (possibly the
/// emergency clamp) for the TTLs, the paths of the key files, and the
/// optional controls only when they are set, so a resource without them
/// renders the reference service's configuration unchanged.
pub(super) fn service_env(
    spec: &MacpAuthSpec,
    signing_alg: SigningAlg,
    ttl: TtlLimits,
) -> Vec<EnvVar> {
    let mut vars = vec![
        env(service_env::PORT, spec.port),
        env(service_env::ISSUER, &spec.issuer),
        env(service_env::AUDIENCE, &spec.audience),
        env(service_env::MAX_TTL, ttl.max_ttl_seconds),
        env(service_env::DEFAULT_TTL, ttl.default_ttl_seconds),
        env(service_env::SIGNING_ALG, signing_alg.name()),
        env(
            service_env::SIGNING_KEY_FILE,
            signing_keys_path(keyset::ACTIVE),
        ),
        env(
            service_env::VERIFICATION_KEYS_FILE,
            signing_keys_path(keyset::PUBLISHED),
        ),
        env(service_env::SHUTDOWN_DELAY, SHUTDOWN_DELAY_SECONDS),
        // HTTP-aware verifiers then cache for exactly what the rotation waits out.
        env(service_env::JWKS_MAX_AGE, spec.jwks_cache_ttl_seconds),
    ];
    if spec.caller_auth.is_some() {
        vars.push(env(service_env::MINT_TOKENS_FILE, caller_tokens_path()));
    }
    if let Some(rl) = &spec.rate_limit {
        vars.push(env(service_env::RATE_LIMIT_PER_SECOND, rl.per_second));
        if let Some(burst) = rl.burst {
            vars.push(env(service_env::RATE_LIMIT_BURST, burst));
        }
    }
    if spec.audit.as_ref().is_some_and(|a| a.enabled) {
        vars.push(env(service_env::AUDIT_LOG, "stdout"));
    }
    if let Some(mint_port) = spec.mint_port {
        vars.push(env(service_env::MINT_PORT, mint_port));
    }
    if let Some(limits) = &spec.connection_limits {
        for (name, value) in [
            (service_env::HEADER_TIMEOUT, limits.header_timeout_seconds),
            (service_env::REQUEST_TIMEOUT, limits.request_timeout_seconds),
            (service_env::MAX_CONNECTIONS, limits.max_connections),
        ] {
            if let Some(value) = value {
                vars.push(env(name, value));
            }
        }
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::super::testing::{env_of, mauth, owner, plain, spec_env};
    use super::super::{KEYSET_HASH_ANNOTATION, deployment};
    use super::*;

    #[test]
    fn the_env_carries_the_spec_and_points_at_the_key_files() {
        let spec = mauth(serde_json::json!({
            "issuer": "iss", "audience": "aud", "maxTtlSeconds": 600,
            "defaultTtlSeconds": 60, "signingAlg": "ES256", "port": 8080, "replicas": 3
        }))
        .spec;
        let env = spec_env(&spec);
        let plain = |k: &str| env[k].value.clone().unwrap();
        assert_eq!(plain("PORT"), "8080");
        assert_eq!(plain("MACP_AUTH_ISSUER"), "iss");
        assert_eq!(plain("MACP_AUTH_AUDIENCE"), "aud");
        assert_eq!(plain("MACP_AUTH_MAX_TTL_SECONDS"), "600");
        assert_eq!(plain("MACP_AUTH_DEFAULT_TTL_SECONDS"), "60");
        assert_eq!(plain("MACP_AUTH_SIGNING_ALG"), "ES256");
        // The keys are files of the signing-keys volume, never env values.
        assert_eq!(
            plain("MACP_AUTH_SIGNING_KEY_FILE"),
            "/etc/macp-auth/keys/active.jwk.json"
        );
        assert_eq!(
            plain("MACP_AUTH_VERIFICATION_KEYS_FILE"),
            "/etc/macp-auth/keys/published.jwks.json"
        );
        assert!(env.values().all(|e| e.value_from.is_none()));
        assert!(!env.contains_key("MACP_AUTH_SIGNING_KEY_JSON"));
        assert_eq!(plain("MACP_AUTH_SHUTDOWN_DELAY_SECONDS"), "5");
    }

    #[test]
    fn mint_controls_render_nothing_when_unset() {
        let spec = mauth(serde_json::json!({"audit": {"enabled": false}})).spec;
        let env = spec_env(&spec);
        for var in [
            service_env::MINT_TOKENS_FILE,
            service_env::RATE_LIMIT_PER_SECOND,
            service_env::RATE_LIMIT_BURST,
            service_env::AUDIT_LOG,
        ] {
            assert!(!env.contains_key(var), "{var} rendered");
        }
        assert_eq!(env.len(), 10);
        // The JWKS's max-age is the cache TTL the rotation waits out.
        assert_eq!(
            env[service_env::JWKS_MAX_AGE].value,
            Some(spec.jwks_cache_ttl_seconds.to_string())
        );
    }

    #[test]
    fn signing_alg_follows_the_active_key_not_the_spec() {
        // The spec asks for ES256 while the active key is still RSA: the pods
        // must keep RS256 until the rotation activates the EC key.
        let spec = mauth(serde_json::json!({"signingAlg": "ES256"})).spec;
        let env = env_of(&deployment(
            &owner(),
            &spec,
            "img",
            "h",
            SigningAlg::RS256,
            plain(&spec),
        ));
        assert_eq!(env["MACP_AUTH_SIGNING_ALG"].value.as_deref(), Some("RS256"));
    }

    #[test]
    fn rate_limit_and_audit_map_to_the_service_variables() {
        let spec = mauth(serde_json::json!({
            "rateLimit": {"perSecond": 20}, "audit": {"enabled": true}
        }))
        .spec;
        let env = spec_env(&spec);
        let plain_env = |k: &str| env[k].value.clone().unwrap();
        assert_eq!(plain_env("MACP_AUTH_RATE_LIMIT_PER_SECOND"), "20");
        assert!(!env.contains_key("MACP_AUTH_RATE_LIMIT_BURST"));
        assert_eq!(plain_env("MACP_AUTH_AUDIT_LOG"), "stdout");
        let spec = mauth(serde_json::json!({"rateLimit": {"perSecond": 20, "burst": 40}})).spec;
        let env = spec_env(&spec);
        assert_eq!(
            env["MACP_AUTH_RATE_LIMIT_BURST"].value.as_deref(),
            Some("40")
        );
    }

    #[test]
    fn connection_limits_map_to_the_service_variables_only_when_set() {
        const LIMIT_VARS: [&str; 3] = [
            "MACP_AUTH_HEADER_TIMEOUT_SECONDS",
            "MACP_AUTH_REQUEST_TIMEOUT_SECONDS",
            "MACP_AUTH_MAX_CONNECTIONS",
        ];
        for json in [
            serde_json::json!({}),
            serde_json::json!({"connectionLimits": {}}),
        ] {
            let env = spec_env(&mauth(json).spec);
            for name in LIMIT_VARS {
                assert!(!env.contains_key(name), "{name} set without a spec field");
            }
        }
        let spec = mauth(serde_json::json!({
            "connectionLimits": {"headerTimeoutSeconds": 5, "maxConnections": 2000}
        }))
        .spec;
        let env = spec_env(&spec);
        let value = |k: &str| env[k].value.clone().unwrap();
        assert_eq!(value("MACP_AUTH_HEADER_TIMEOUT_SECONDS"), "5");
        assert_eq!(value("MACP_AUTH_MAX_CONNECTIONS"), "2000");
        assert!(!env.contains_key("MACP_AUTH_REQUEST_TIMEOUT_SECONDS"));
        let spec = mauth(serde_json::json!({
            "connectionLimits": {"requestTimeoutSeconds": 45}
        }))
        .spec;
        assert_eq!(
            spec_env(&spec)["MACP_AUTH_REQUEST_TIMEOUT_SECONDS"]
                .value
                .as_deref(),
            Some("45")
        );
    }

    #[test]
    fn ttl_limits_are_rendered_as_given() {
        let spec = mauth(serde_json::json!({"emergency": {"maxTtlSeconds": 120}})).spec;
        let ttl = TtlLimits {
            max_ttl_seconds: 120,
            default_ttl_seconds: 120,
        };
        let d = deployment(&owner(), &spec, "img", "h", spec.signing_alg, ttl);
        let env = env_of(&d);
        assert_eq!(
            env["MACP_AUTH_MAX_TTL_SECONDS"].value.as_deref(),
            Some("120")
        );
        assert_eq!(
            env["MACP_AUTH_DEFAULT_TTL_SECONDS"].value.as_deref(),
            Some("120")
        );
        // Same keyset hash: a clamp is a rolling restart, never a key change.
        let meta = d.spec.unwrap().template.metadata.unwrap();
        assert_eq!(meta.annotations.unwrap()[KEYSET_HASH_ANNOTATION], "h");
    }
}
