//! Test fixtures: one way to build a `MacpAuth` (or its spec) and a prober
//! that answers for pods without a network. Compiled for the operator's unit
//! tests, and for other crates' tests with the `fixtures` feature.
//!
//! Specs are written in their JSON (camelCase) form, as a user writes them,
//! so a test says only what it sets and everything else takes the CRD's
//! defaults; a spec a test gets wrong panics naming it.

use std::collections::BTreeMap;

use async_trait::async_trait;
use macp_auth_service::verifiers::VerifiersReport;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use crate::crd::{MacpAuth, MacpAuthSpec};
use crate::probe::{PodProber, ProbeError};

/// A test hook, compiled only with the `fixtures` feature (never in the
/// operator's release binary): on a MacpAuth with this annotation, the
/// rotation's Draining wait ends at once, so the old key is retired right
/// after Activating while its tokens are still within the verifier's leeway.
/// The e2e scenario `early_retire_control` uses it to show that the load
/// generator's late checks catch a drain that is too short.
pub const RETIRE_EARLY_ANNOTATION: &str = "test.macp.io/retire-old-key-at-activation";

/// A `MacpAuth` named `name`, with the CRD's default spec, no namespace and no uid.
pub fn macpauth(name: &str) -> MacpAuthBuilder {
    MacpAuthBuilder {
        name: name.to_string(),
        namespace: None,
        uid: None,
        spec: Map::new(),
    }
}

/// A spec with `fields` (JSON form) set and the CRD's defaults elsewhere.
pub fn spec(fields: Value) -> MacpAuthSpec {
    macpauth("fixture").spec(fields).build_spec()
}

/// Builds a `MacpAuth`; see [`macpauth`].
#[derive(Clone, Debug)]
pub struct MacpAuthBuilder {
    name: String,
    namespace: Option<String>,
    uid: Option<String>,
    spec: Map<String, Value>,
}

impl MacpAuthBuilder {
    /// Sets spec `fields` (JSON form). Objects merge member by member, so
    /// `{"rotation": {"paused": true}}` keeps the other rotation fields set so
    /// far; anything else replaces.
    pub fn spec(mut self, fields: Value) -> Self {
        let Value::Object(fields) = fields else {
            panic!("a MacpAuth spec is a JSON object, not {fields}");
        };
        merge(&mut self.spec, fields);
        self
    }

    /// ES256 keys: generated in a millisecond where RSA takes up to a second.
    pub fn es256(self) -> Self {
        self.spec(json!({"signingAlg": "ES256"}))
    }

    /// Sets `spec.rotation` fields (JSON form).
    pub fn rotation(self, fields: Value) -> Self {
        self.spec(json!({ "rotation": fields }))
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_string());
        self
    }

    /// A uid, as the API server assigns on create (owner references need one).
    pub fn uid(mut self, uid: &str) -> Self {
        self.uid = Some(uid.to_string());
        self
    }

    pub fn build_spec(&self) -> MacpAuthSpec {
        let fields = Value::Object(self.spec.clone());
        serde_json::from_value(fields.clone())
            .unwrap_or_else(|e| panic!("fixture spec {fields} does not deserialise: {e}"))
    }

    pub fn build(&self) -> MacpAuth {
        let mut m = MacpAuth::new(&self.name, self.build_spec());
        m.metadata.namespace = self.namespace.clone();
        m.metadata.uid = self.uid.clone();
        m
    }
}

fn merge(into: &mut Map<String, Value>, fields: Map<String, Value>) {
    for (key, value) in fields {
        match (into.get_mut(&key), value) {
            (Some(Value::Object(old)), Value::Object(new)) => merge(old, new),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Runs at a probe: something happening while a round probes.
pub type Hook = Box<dyn FnMut() + Send>;

/// Answers for pods by IP: which kids each serves (its JWKS) and signs with
/// (the first it serves). A pod it has not been told about refuses the
/// connection, so `FakeProber::default()` is a cluster whose pods never answer.
#[derive(Default)]
pub struct FakeProber {
    served: Mutex<BTreeMap<String, Vec<String>>>,
    /// Runs once at the next probe.
    on_probe: Mutex<Option<Hook>>,
    /// The ports the signing probes minted on, in order.
    mint_ports: Mutex<Vec<u16>>,
    /// What each pod answers to `GET /verifiers`; a pod not listed has no such endpoint.
    reports: Mutex<BTreeMap<String, VerifiersReport>>,
}

impl FakeProber {
    /// The pod at `ip` serves `kids` from now on.
    pub fn serve(&self, ip: &str, kids: &[&str]) {
        self.served
            .lock()
            .insert(ip.to_string(), kids.iter().map(|k| k.to_string()).collect());
    }

    /// The pod at `ip` answers `GET /verifiers` with `report` from now on
    /// (its `kids` are replaced by what the pod serves when asked).
    pub fn report_verifiers(&self, ip: &str, report: VerifiersReport) {
        self.reports.lock().insert(ip.to_string(), report);
    }

    /// Runs `hook` once, at the next probe.
    pub fn on_next_probe(&self, hook: Hook) {
        *self.on_probe.lock() = Some(hook);
    }

    /// The ports the signing probes minted on so far, in order.
    pub fn mint_ports(&self) -> Vec<u16> {
        self.mint_ports.lock().clone()
    }
}

#[async_trait]
impl PodProber for FakeProber {
    async fn served_kids(&self, ip: &str, _port: u16) -> Result<Vec<String>, ProbeError> {
        let hook = self.on_probe.lock().take();
        if let Some(mut hook) = hook {
            hook();
        }
        self.served
            .lock()
            .get(ip)
            .cloned()
            .ok_or_else(|| ProbeError::Request {
                url: ip.to_string(),
                message: "connection refused".into(),
            })
    }

    async fn verifiers(&self, ip: &str, _port: u16) -> Result<VerifiersReport, ProbeError> {
        let kids = self.served.lock().get(ip).cloned();
        let report = self.reports.lock().get(ip).cloned();
        match (kids, report) {
            (Some(kids), Some(report)) => Ok(VerifiersReport { kids, ..report }),
            (Some(_), None) => Err(ProbeError::Status {
                url: ip.to_string(),
                status: 404,
            }),
            (None, _) => Err(ProbeError::Request {
                url: ip.to_string(),
                message: "connection refused".into(),
            }),
        }
    }

    async fn signing_kid(&self, ip: &str, port: u16, mint_port: u16) -> Result<String, ProbeError> {
        self.mint_ports.lock().push(mint_port);
        let kids = self.served_kids(ip, port).await?;
        kids.first().cloned().ok_or_else(|| ProbeError::Body {
            url: ip.to_string(),
            message: "empty JWKS".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_merges_spec_fields_over_the_crd_defaults() {
        let m = macpauth("prod")
            .namespace("auth")
            .uid("uid-1")
            .es256()
            .rotation(json!({"drainSeconds": 600}))
            .rotation(json!({"paused": true}))
            .build();
        assert_eq!(m.metadata.name.as_deref(), Some("prod"));
        assert_eq!(m.metadata.namespace.as_deref(), Some("auth"));
        assert_eq!(m.metadata.uid.as_deref(), Some("uid-1"));
        assert_eq!(m.spec.signing_alg, crate::crd::SigningAlg::ES256);
        assert_eq!(m.spec.rotation.drain_seconds, Some(600));
        assert!(m.spec.rotation.paused);
        assert_eq!(m.spec.port, spec(json!({})).port);
    }
}
