//! The ConfigMap `<name>-verifier-config` that tells verifiers where the JWKS is.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::Owner;
use crate::crd::MacpAuthSpec;

/// The in-cluster JWKS URL verifiers fetch.
fn jwks_url(owner: &Owner, spec: &MacpAuthSpec) -> String {
    format!(
        "http://{}.{}.svc:{}/.well-known/jwks.json",
        owner.name, owner.namespace, spec.port
    )
}

/// `<name>-verifier-config`, for the MACP runtime to `envFrom`.
///
/// It carries the verifiers' JWKS cache TTL, not token lifetimes, so the
/// emergency TTL clamp (which changes only the minting side) does not touch it.
pub(crate) fn verifier_config_map(owner: &Owner, spec: &MacpAuthSpec) -> ConfigMap {
    ConfigMap {
        metadata: owner.meta(owner.config_map_name()),
        data: Some(BTreeMap::from([
            ("MACP_AUTH_ISSUER".to_string(), spec.issuer.clone()),
            ("MACP_AUTH_AUDIENCE".to_string(), spec.audience.clone()),
            ("MACP_AUTH_JWKS_URL".to_string(), jwks_url(owner, spec)),
            (
                "MACP_AUTH_JWKS_TTL_SECS".to_string(),
                spec.jwks_cache_ttl_seconds.to_string(),
            ),
        ])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{mauth, owner};
    use super::*;

    #[test]
    fn verifier_config_names_the_issuer_audience_jwks_and_its_ttl() {
        let spec = mauth(serde_json::json!({"port": 4000, "issuer": "i", "audience": "a", "jwksCacheTtlSeconds": 30})).spec;
        let cm = verifier_config_map(&owner(), &spec).data.unwrap();
        assert_eq!(cm["MACP_AUTH_ISSUER"], "i");
        assert_eq!(cm["MACP_AUTH_AUDIENCE"], "a");
        assert_eq!(
            cm["MACP_AUTH_JWKS_URL"],
            "http://prod.auth.svc:4000/.well-known/jwks.json"
        );
        assert_eq!(cm["MACP_AUTH_JWKS_TTL_SECS"], "30");
        assert_eq!(cm.len(), 4);
    }
}
