//! Builders for the objects a `MacpAuth` owns (docs/architecture.md, Owned
//! objects; docs/objects.md), one module per kind. Pure: they take the
//! resource and return the desired object, nothing more. This module holds
//! what every kind shares: the labels, the names and the owner reference.

mod config_map;
mod container_env;
mod deployment;
mod hpa;
mod pdb;
mod secret;
mod service;
mod volumes;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::MacpAuth;

pub use deployment::CONTAINER_NAME;
pub use volumes::SIGNING_KEYS_VOLUME;

pub(crate) use config_map::verifier_config_map;
pub(crate) use deployment::deployment;
pub(crate) use hpa::horizontal_pod_autoscaler;
pub(crate) use pdb::pod_disruption_budget;
pub(crate) use secret::secret;
pub(crate) use service::service;

pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const APP_NAME: &str = "macp-auth-service";
pub const MANAGER: &str = "macp-auth-operator";
/// Pod-template annotation whose change rolls the pods onto a new keyset.
pub const KEYSET_HASH_ANNOTATION: &str = "macp.io/keyset-hash";
/// Name of the main container and Service port (JWKS, health, metrics; and
/// minting unless `spec.mintPort` moves it).
pub const HTTP_PORT_NAME: &str = "http";
/// Name of the container and Service port that alone serves `POST /tokens`
/// when `spec.mintPort` is set.
pub const MINT_PORT_NAME: &str = "mint";

/// Why the objects of a resource cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("MacpAuth has no namespace")]
    NoNamespace,
    #[error("MacpAuth has no uid yet (not read from the API server)")]
    NoUid,
}

/// Identity of the owning `MacpAuth`: names and the owner reference every object carries.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Owner {
    pub name: String,
    pub namespace: String,
    pub owner_ref: OwnerReference,
}

impl Owner {
    pub(crate) fn of(mauth: &MacpAuth) -> Result<Self, BuildError> {
        let namespace = mauth.namespace().ok_or(BuildError::NoNamespace)?;
        let owner_ref = mauth.controller_owner_ref(&()).ok_or(BuildError::NoUid)?;
        Ok(Self {
            name: mauth.name_any(),
            namespace,
            owner_ref,
        })
    }

    pub fn secret_name(&self) -> String {
        secret_name(&self.name)
    }

    pub fn config_map_name(&self) -> String {
        config_map_name(&self.name)
    }

    fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(common_labels(&self.name)),
            owner_references: Some(vec![self.owner_ref.clone()]),
            ..ObjectMeta::default()
        }
    }
}

pub fn secret_name(name: &str) -> String {
    format!("{name}-signing-keys")
}

pub fn config_map_name(name: &str) -> String {
    format!("{name}-verifier-config")
}

/// Labels on every owned object and on the pods.
pub fn common_labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert(MANAGED_BY_LABEL.into(), MANAGER.into());
    labels
}

/// The Deployment's (immutable) pod selector and the Service's selector.
fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_string(), APP_NAME.to_string()),
        (INSTANCE_LABEL.to_string(), name.to_string()),
    ])
}

/// Label selector string for the pods of a `MacpAuth`.
pub fn pod_selector(name: &str) -> String {
    format!("{NAME_LABEL}={APP_NAME},{INSTANCE_LABEL}={name}")
}

/// What the builders' tests share: a `MacpAuth` of a given spec and the
/// parts of its Deployment they look at.
#[cfg(test)]
mod testing {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{EnvVar, PodSpec};

    use super::{Owner, deployment};
    use crate::crd::{MacpAuth, MacpAuthSpec};
    use crate::fixtures;
    use crate::ttl_clamp::TtlLimits;

    pub(super) fn mauth(spec: serde_json::Value) -> MacpAuth {
        fixtures::macpauth("prod")
            .namespace("auth")
            .uid("uid-1")
            .spec(spec)
            .build()
    }

    pub(super) fn owner() -> Owner {
        Owner::of(&mauth(serde_json::json!({}))).unwrap()
    }

    pub(super) fn plain(spec: &MacpAuthSpec) -> TtlLimits {
        crate::ttl_clamp::limits(spec, None)
    }

    /// `spec`'s Deployment with the spec's own alg and TTLs.
    pub(super) fn spec_deployment(spec: &MacpAuthSpec) -> Deployment {
        deployment(&owner(), spec, "img", "h", spec.signing_alg, plain(spec))
    }

    pub(super) fn pod_spec(d: &Deployment) -> PodSpec {
        d.spec.clone().unwrap().template.spec.unwrap()
    }

    /// The pod spec of `spec`'s Deployment, with the spec's own alg and TTLs.
    pub(super) fn spec_pod(spec: &MacpAuthSpec) -> PodSpec {
        pod_spec(&spec_deployment(spec))
    }

    /// The container env of `spec`'s Deployment, with the spec's own alg and TTLs.
    pub(super) fn spec_env(spec: &MacpAuthSpec) -> BTreeMap<String, EnvVar> {
        env_of(&spec_deployment(spec))
    }

    pub(super) fn env_of(d: &Deployment) -> BTreeMap<String, EnvVar> {
        pod_spec(d).containers[0]
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::testing::{env_of, mauth, owner, plain, pod_spec, spec_env};
    use super::*;
    use crate::crd::SigningAlg;
    use crate::keyset::{Keyset, PrivateKey};

    #[test]
    fn owner_needs_namespace_and_uid() {
        let mut m = mauth(serde_json::json!({}));
        m.metadata.uid = None;
        assert!(matches!(Owner::of(&m), Err(BuildError::NoUid)));
        m.metadata.namespace = None;
        assert!(matches!(Owner::of(&m), Err(BuildError::NoNamespace)));
        let o = owner();
        assert_eq!(o.owner_ref.controller, Some(true));
        assert_eq!(o.owner_ref.kind, "MacpAuth");
        assert_eq!(o.owner_ref.api_version, "macp.io/v1alpha1");
        assert_eq!(o.owner_ref.uid, "uid-1");
    }

    #[test]
    fn every_object_is_owned_and_labelled() {
        let o = owner();
        let spec = mauth(serde_json::json!({})).spec;
        let ks = Keyset::initial(PrivateKey::generate(SigningAlg::ES256, "k1", 2048).unwrap());
        let metas = [
            secret(&o, &ks).metadata,
            deployment(
                &o,
                &spec,
                "img:1",
                &ks.hash(),
                spec.signing_alg,
                plain(&spec),
            )
            .metadata,
            service(&o, &spec).metadata,
            verifier_config_map(&o, &spec).metadata,
        ];
        let names: Vec<_> = metas.iter().map(|m| m.name.clone().unwrap()).collect();
        assert_eq!(
            names,
            ["prod-signing-keys", "prod", "prod", "prod-verifier-config"]
        );
        for m in metas {
            assert_eq!(m.namespace.as_deref(), Some("auth"));
            assert_eq!(
                m.owner_references.as_ref().unwrap(),
                &vec![o.owner_ref.clone()]
            );
            let l = m.labels.unwrap();
            assert_eq!(l[NAME_LABEL], APP_NAME);
            assert_eq!(l[INSTANCE_LABEL], "prod");
            assert_eq!(l[MANAGED_BY_LABEL], MANAGER);
        }
    }

    #[test]
    fn pod_selector_matches_selector_labels() {
        assert_eq!(
            pod_selector("prod"),
            "app.kubernetes.io/name=macp-auth-service,app.kubernetes.io/instance=prod"
        );
    }

    #[test]
    fn a_mint_port_is_a_second_named_port_and_variable() {
        let spec = mauth(serde_json::json!({"port": 3200, "mintPort": 3201})).spec;
        let d = deployment(&owner(), &spec, "img", "h", spec.signing_alg, plain(&spec));
        assert_eq!(
            env_of(&d)["MACP_AUTH_MINT_PORT"].value.as_deref(),
            Some("3201")
        );
        let ports: Vec<_> = pod_spec(&d).containers[0]
            .ports
            .clone()
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [("http".to_string(), 3200), ("mint".to_string(), 3201)]
        );
        let sp: Vec<_> = service(&owner(), &spec)
            .spec
            .unwrap()
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port, p.target_port.unwrap()))
            .collect();
        assert_eq!(
            sp,
            [
                ("http".to_string(), 3200, IntOrString::String("http".into())),
                ("mint".to_string(), 3201, IntOrString::String("mint".into()))
            ]
        );
        // Verifiers keep fetching the JWKS from the main port.
        assert_eq!(
            verifier_config_map(&owner(), &spec).data.unwrap()["MACP_AUTH_JWKS_URL"],
            "http://prod.auth.svc:3200/.well-known/jwks.json"
        );
        // Without it: one port, no variable.
        let spec = mauth(serde_json::json!({})).spec;
        assert!(!spec_env(&spec).contains_key("MACP_AUTH_MINT_PORT"));
        assert_eq!(
            service(&owner(), &spec).spec.unwrap().ports.unwrap().len(),
            1
        );
    }
}
