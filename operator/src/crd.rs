//! The `MacpAuth` custom resource (`macp.io/v1alpha1`): spec, status and the
//! annotations that request rotations (docs/architecture.md, The MacpAuth resource).
//!
//! Defaults, enums and minimums live in the generated OpenAPI schema (through
//! serde defaults and schemars attributes) so that the API server refuses a bad
//! resource at `kubectl apply` time instead of the operator discovering it later.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
// The schema's ceilings are the token service's: a value it would refuse at
// startup is refused at `kubectl apply` instead.
use macp_auth_service::config::{
    MAX_CONNECTIONS_CEILING, RATE_LIMIT_CEILING, TIMEOUT_CEILING_SECONDS,
};
use macp_auth_service::keys::Alg;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
/// In scope for `RotationPhase::VARIANTS` in other crates.
pub use strum::VariantArray;

/// CEL rule on the root of the CRD schema: the name must be a DNS-1035 label
/// (at most 63 characters), what the owned Service and labels need.
const NAME_RULE: &str =
    "size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";
/// The message of [`NAME_RULE`].
const NAME_RULE_MESSAGE: &str = "metadata.name must be a DNS-1035 label (at most 63 lower-case letters, digits and '-', starting with a letter and ending with a letter or digit): the Service and the app.kubernetes.io/instance label carry it";

/// CEL rule on the spec: the mint port is a second listener, not the first one again.
const MINT_PORT_RULE: &str = "!has(self.mintPort) || self.mintPort != self.port";
/// The message of [`MINT_PORT_RULE`].
const MINT_PORT_RULE_MESSAGE: &str = "mintPort must differ from port";

/// How long past `exp` the MACP runtime's verifier (`macp-auth`, through
/// `jsonwebtoken`'s default validation) still accepts a token (its clock-skew
/// leeway): a key must stay published that much longer than the last token
/// it signed lives.
pub const VERIFIER_LEEWAY_SECONDS: i64 = 60;

/// CEL rules on the spec that repeat checks of `validate` the schema can
/// express, so that `kubectl apply` refuses such a spec instead of the
/// operator reporting it `Degraded` after it was stored. Each guards with
/// `has()`: the API server applies the schema's defaults first, but an
/// object stored before a default existed may lack the field. Rule, message.
/// Built when the schema is, so the drain rule's leeway is
/// [`VERIFIER_LEEWAY_SECONDS`] itself.
fn spec_rules() -> [(String, String); 3] {
    let leeway = VERIFIER_LEEWAY_SECONDS;
    [
        (
            format!(
                "!has(self.rotation) || !has(self.rotation.drainSeconds) || !has(self.maxTtlSeconds) || self.rotation.drainSeconds >= self.maxTtlSeconds + {leeway}"
            ),
            format!(
                "rotation.drainSeconds must be at least maxTtlSeconds + {leeway} (the verifiers' clock leeway), or unset"
            ),
        ),
        (
            "!has(self.defaultTtlSeconds) || !has(self.maxTtlSeconds) || self.defaultTtlSeconds <= self.maxTtlSeconds".into(),
            "defaultTtlSeconds must not exceed maxTtlSeconds".into(),
        ),
        (
            "!has(self.emergency) || !has(self.maxTtlSeconds) || self.emergency.maxTtlSeconds <= self.maxTtlSeconds".into(),
            "emergency.maxTtlSeconds must not exceed maxTtlSeconds".into(),
        ),
    ]
}

/// The spec's `x-kubernetes-validations`: [`MINT_PORT_RULE`], then [`spec_rules`].
fn spec_validations() -> Vec<serde_json::Value> {
    let mint_port = (
        MINT_PORT_RULE.to_string(),
        MINT_PORT_RULE_MESSAGE.to_string(),
    );
    std::iter::once(mint_port)
        .chain(spec_rules())
        .map(|(rule, message)| serde_json::json!({"rule": rule, "message": message}))
        .collect()
}

/// The schema's description of `rotation.drainSeconds`, with the leeway of its default.
fn drain_seconds_description() -> String {
    format!(
        "How long the old key stays published after it stops signing; maxTtlSeconds + {VERIFIER_LEEWAY_SECONDS} when unset."
    )
}

/// Annotation whose new value requests a routine rotation.
pub const ROTATE_ANNOTATION: &str = "macp.io/rotate";
/// Annotation whose new value requests an emergency rotation.
pub const EMERGENCY_ROTATE_ANNOTATION: &str = "macp.io/emergency-rotate";
/// Annotation read with an emergency request: what may have leaked.
/// None or [`EMERGENCY_SCOPE_POD`]: a pod, process or environment leaked, and
/// a propagated standby replaces the suspect keys. [`EMERGENCY_SCOPE_SECRET`],
/// and any value not understood, discards the standby key with the rest
/// ([`emergency_scope_spares_standby`]).
pub const EMERGENCY_SCOPE_ANNOTATION: &str = "macp.io/emergency-scope";
/// The Secret itself (an etcd backup, an RBAC grant) may have leaked: the
/// standby's private half was in it, so it is suspect too.
pub const EMERGENCY_SCOPE_SECRET: &str = "secret";
/// A pod, process or environment leaked: the standby never reached one.
pub const EMERGENCY_SCOPE_POD: &str = "pod";

/// Whether an emergency whose [`EMERGENCY_SCOPE_ANNOTATION`] is `scope` may
/// activate the propagated standby: only with no scope or
/// [`EMERGENCY_SCOPE_POD`]. A value not understood is read as the Secret,
/// the safe side.
pub fn emergency_scope_spares_standby(scope: Option<&str>) -> bool {
    scope.is_none_or(|s| s == EMERGENCY_SCOPE_POD)
}

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "macp.io",
    version = "v1alpha1",
    kind = "MacpAuth",
    plural = "macpauths",
    singular = "macpauth",
    shortname = "macpauth",
    shortname = "macp",
    category = "macp",
    namespaced,
    status = "MacpAuthStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.rotation.phase"}"#,
    printcolumn = r#"{"name":"Active Kid","type":"string","jsonPath":".status.activeKid"}"#,
    printcolumn = r#"{"name":"Standby","type":"string","priority":1,"jsonPath":".status.standby.kid"}"#,
    printcolumn = r#"{"name":"Standby Propagated","type":"boolean","priority":1,"jsonPath":".status.standby.propagated"}"#,
    printcolumn = r#"{"name":"Last Rotation","type":"date","jsonPath":".status.lastRotationTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // The Service is named after the MacpAuth (a DNS-1035 label) and the name is
    // the app.kubernetes.io/instance label value: refused at `kubectl apply` time
    // rather than by a 422 on the Service (validate::validate_name checks it too).
    validation = kube::core::Rule::new(NAME_RULE).message(NAME_RULE_MESSAGE)
)]
/// The token service a MacpAuth runs: its issuer and audience, token
/// lifetimes, signing key and its rotation, and how its pods are scheduled.
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = spec_validations()))]
pub struct MacpAuthSpec {
    /// Token service image; the operator's configured default when unset.
    /// A tag (`repo:tag`) or, to pin the exact build, a digest
    /// (`repo@sha256:<64 hex digits>`, optionally after a tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Number of token-service pods; ignored (left to the autoscaler) when
    /// `autoscaling` is set.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1))]
    pub replicas: i32,
    /// Container and Service port of the JWKS, health and metrics endpoints,
    /// and of `POST /tokens` unless `mintPort` moves it.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// A second port that alone serves `POST /tokens` (the service's
    /// `MACP_AUTH_MINT_PORT`), so network policy can admit minters there and
    /// verifiers to the JWKS on `port`. Unset: both on `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub mint_port: Option<i32>,
    /// The `iss` claim of every token the service mints; verifiers must expect the same value.
    #[serde(default = "default_issuer")]
    #[schemars(length(min = 1))]
    pub issuer: String,
    /// The `aud` claim of every token the service mints; verifiers must expect the same value.
    #[serde(default = "default_audience")]
    #[schemars(length(min = 1))]
    pub audience: String,
    /// The longest lifetime, in seconds, of a token the service mints; a
    /// longer request is capped. Also sets how long a retired key stays
    /// published (see `rotation.drainSeconds`).
    #[serde(default = "default_max_ttl")]
    #[schemars(range(min = 1))]
    pub max_ttl_seconds: i64,
    /// Lifetime, in seconds, of a token whose request names none; at most `maxTtlSeconds`.
    #[serde(default = "default_default_ttl")]
    #[schemars(range(min = 1))]
    pub default_ttl_seconds: i64,
    /// Algorithm of the keys the operator generates; a change takes effect
    /// at the next rotation.
    #[serde(default)]
    pub signing_alg: SigningAlg,
    /// Modulus size of generated RS256 keys; ignored for ES256.
    #[serde(default = "default_rsa_key_bits")]
    #[schemars(extend("enum" = [2048, 3072, 4096]))]
    pub rsa_key_bits: u32,
    /// The verifiers' JWKS cache TTL; also written to the verifier ConfigMap.
    #[serde(default = "default_jwks_cache_ttl")]
    #[schemars(range(min = 1))]
    pub jwks_cache_ttl_seconds: i64,
    /// Key rotation: its schedule and the waits and timeouts of each phase.
    #[serde(default)]
    pub rotation: RotationSpec,
    /// The token-service container's compute resources. Unset: the
    /// operator's defaults (requests of CPU and memory and a memory limit,
    /// docs/objects.md); when set it replaces them whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the pods must be scheduled on, as in a pod spec.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// The pods' tolerations, as in a pod spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Extra labels on the pods; they never replace the operator's selector labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Extra annotations on the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// The pods' affinity (node, pod affinity and anti-affinity), as in a pod spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// The pods' topology spread constraints. Unset: with more than one
    /// replica (or autoscaling), a best-effort spread over nodes and zones;
    /// `[]` turns that default off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// The pods' PriorityClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Secrets in the MacpAuth's namespace to pull the image with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// The pods' service account (the namespace's `default` when unset). Its
    /// token is still not mounted: the service never calls the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub service_account_name: Option<String>,
    /// A HorizontalPodAutoscaler for the token service; `replicas` is then
    /// left to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// The PodDisruptionBudget rendered when `replicas > 1` or autoscaling is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_budget: Option<DisruptionBudgetSpec>,
    /// Caller authentication for `POST /tokens`; unset leaves minting open (the reference behaviour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_auth: Option<CallerAuthSpec>,
    /// Per-caller rate limit on `POST /tokens`; unset means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// The service's mint audit log; unset or `enabled: false` keeps it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSpec>,
    /// Settings that apply only around an emergency rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emergency: Option<EmergencySpec>,
    /// The service's defences against slow and abusive clients; each unset
    /// field keeps the service's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limits: Option<ConnectionLimitsSpec>,
}

/// The HorizontalPodAutoscaler (autoscaling/v2) the operator owns when set.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.minReplicas <= self.maxReplicas",
    "message": "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"
}]))]
pub struct AutoscalingSpec {
    /// The fewest pods the autoscaler keeps.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// The most pods the autoscaler starts.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Average CPU use, in percent of the pods' CPU request, the autoscaler
    /// aims at. The pods need a CPU request (the default resources have one):
    /// a HorizontalPodAutoscaler does not scale pods without.
    #[serde(
        default = "default_cpu_target",
        rename = "targetCPUUtilizationPercentage"
    )]
    #[schemars(range(min = 1, max = 1000))]
    pub target_cpu_utilization_percentage: i32,
}

/// The PodDisruptionBudget's limit: at most one of the two; `maxUnavailable: 1`
/// when neither is set.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.maxUnavailable) && has(self.minAvailable))",
    "message": "disruptionBudget: set maxUnavailable or minAvailable, not both"
}]))]
pub struct DisruptionBudgetSpec {
    /// `false` renders no PodDisruptionBudget at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pods (a number or a percentage) that may be evicted at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Pods (a number or a percentage) that must stay available through evictions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
}

impl Default for DisruptionBudgetSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            max_unavailable: None,
            min_available: None,
        }
    }
}

/// `MACP_AUTH_HEADER_TIMEOUT_SECONDS`, `MACP_AUTH_REQUEST_TIMEOUT_SECONDS` and
/// `MACP_AUTH_MAX_CONNECTIONS`; the operator sets only the ones given here.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionLimitsSpec {
    /// Request headers, and the next request on an idle keep-alive
    /// connection, must arrive within this; the service's default is 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = TIMEOUT_CEILING_SECONDS))]
    pub header_timeout_seconds: Option<u32>,
    /// A request's body must have arrived within this (else 408); the service's default is 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = TIMEOUT_CEILING_SECONDS))]
    pub request_timeout_seconds: Option<u32>,
    /// Open connections per pod; the service sizes it from its open-file limit when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_CONNECTIONS_CEILING))]
    pub max_connections: Option<u32>,
}

/// A user-created Secret whose `key` holds the accepted caller bearer tokens,
/// one per line. The kubelet mounts it into the pods; the operator never reads it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallerAuthSpec {
    /// Name of the Secret, in the MacpAuth's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: String,
    /// Key of the Secret holding the tokens.
    #[serde(default = "default_caller_tokens_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// Token bucket per caller (the caller token's identity when `callerAuth` is
/// set, else the client address: the service decides, there is no key setting).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Sustained mint requests per second and caller.
    #[schemars(range(min = 1, max = RATE_LIMIT_CEILING))]
    pub per_second: u32,
    /// Bucket size: requests a caller may send at once; one second's worth when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = RATE_LIMIT_CEILING))]
    pub burst: Option<u32>,
}

/// The service's mint audit log (`MACP_AUTH_AUDIT_LOG`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditSpec {
    /// One JSON line per mint attempt on the pods' stdout (never the token itself).
    #[serde(default)]
    pub enabled: bool,
}

/// Settings of emergency rotations (`macp.io/emergency-rotate`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmergencySpec {
    /// Max token lifetime while an emergency rotation runs and for
    /// `rotation.drainSeconds` after it; at most `maxTtlSeconds`.
    #[schemars(range(min = MIN_EMERGENCY_MAX_TTL_SECONDS))]
    pub max_ttl_seconds: i64,
}

/// Shortest emergency max TTL: below a minute, clock skew between minter and
/// verifiers rejects tokens that are still meant to be valid.
pub(crate) const MIN_EMERGENCY_MAX_TTL_SECONDS: i64 = 60;

/// A JWS signing algorithm: RS256 (RSA PKCS#1 v1.5 with SHA-256) or ES256 (ECDSA P-256 with SHA-256).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum SigningAlg {
    #[default]
    RS256,
    ES256,
}

impl SigningAlg {
    /// The JOSE `alg` name (`MACP_AUTH_SIGNING_ALG`, a JWK's `alg`), as the
    /// token service spells it.
    pub(crate) fn name(self) -> &'static str {
        Alg::from(self).as_str()
    }

    /// A kind of signing key as events, history and request ids name it:
    /// `RS256/2048` (with the modulus size, when known) or `ES256`.
    pub(crate) fn kind_label(self, rsa_bits: Option<u32>) -> String {
        match (self, rsa_bits) {
            (SigningAlg::RS256, Some(bits)) => format!("{}/{bits}", self.name()),
            _ => self.name().to_string(),
        }
    }
}

impl From<SigningAlg> for Alg {
    fn from(alg: SigningAlg) -> Self {
        match alg {
            SigningAlg::RS256 => Alg::RS256,
            SigningAlg::ES256 => Alg::ES256,
        }
    }
}

impl From<Alg> for SigningAlg {
    fn from(alg: Alg) -> Self {
        match alg {
            Alg::RS256 => SigningAlg::RS256,
            Alg::ES256 => SigningAlg::ES256,
        }
    }
}

/// Key rotation: its schedule and the waits and timeouts of each phase.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationSpec {
    /// How often to rotate, as a duration such as `720h`; unset rotates only on request. Each rotation starts early by a fixed share, per MacpAuth, of a tenth of the interval (at most an hour), so that MacpAuths on the same schedule do not rotate together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ns|us|ms|s|m|h|d))+$"))]
    pub interval: Option<String>,
    /// Publish the new key and wait out the verifiers' cache TTL before it signs.
    #[serde(default = "default_true")]
    pub prepublish: bool,
    /// How long the old key stays published after it stops signing;
    /// maxTtlSeconds + [`VERIFIER_LEEWAY_SECONDS`] when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0), description = drain_seconds_description())]
    pub drain_seconds: Option<i64>,
    /// How long each rollout of the token service may take (the
    /// Deployment's progressDeadlineSeconds); past it the rotation is
    /// Degraded and rolls back, while the old pods keep serving.
    #[serde(default = "default_rollout_timeout")]
    #[schemars(range(min = 1))]
    pub rollout_timeout_seconds: i64,
    /// Stops new routine rotations (never an emergency one).
    #[serde(default)]
    pub paused: bool,
    /// Before the new key signs, also wait until every verifier seen fetching the JWKS (by the token-service pods, recently) has fetched one holding the new key. Off: wait jwksCacheTtlSeconds + 10 s only, trusting that no verifier caches longer.
    #[serde(default = "default_true")]
    pub verifier_evidence: bool,
    /// The longest the Propagating phase waits for verifier evidence, counted from its start; then the rotation goes on with a Warning naming the verifiers that never fetched the new key.
    #[serde(default = "default_propagation_timeout")]
    #[schemars(range(min = 1))]
    pub propagation_timeout_seconds: i64,
    /// Keep one standby key published at all times: generated after each rotation, published in the JWKS only (its private half stays in the Secret and reaches no pod) and propagated like a new key. A routine rotation then activates it at once, and an emergency rotation replaces a leaked pod's keys with it with no failed verification.
    #[serde(default = "default_true")]
    pub standby: bool,
}

impl Default for RotationSpec {
    fn default() -> Self {
        Self {
            interval: None,
            prepublish: true,
            drain_seconds: None,
            rollout_timeout_seconds: default_rollout_timeout(),
            paused: false,
            verifier_evidence: true,
            propagation_timeout_seconds: default_propagation_timeout(),
            standby: true,
        }
    }
}

impl MacpAuthSpec {
    /// Whether the pods may number more than one: fixed replicas above one, or
    /// autoscaling allowed to go there. Decides the default spread and the
    /// disruption budget.
    pub(crate) fn may_run_several(&self) -> bool {
        match &self.autoscaling {
            Some(a) => a.max_replicas > 1,
            None => self.replicas > 1,
        }
    }

    /// The kind of key the spec asks for: its algorithm, and for RS256 the
    /// modulus size (see [`SigningAlg::kind_label`]).
    pub(crate) fn key_kind(&self) -> (SigningAlg, Option<u32>) {
        match self.signing_alg {
            SigningAlg::RS256 => (SigningAlg::RS256, Some(self.rsa_key_bits)),
            SigningAlg::ES256 => (SigningAlg::ES256, None),
        }
    }

    /// The port `POST /tokens` is served on.
    pub(crate) fn effective_mint_port(&self) -> i32 {
        self.mint_port.unwrap_or(self.port)
    }

    /// The drain wait in effect: the explicit value, or every token's lifetime plus a minute.
    pub(crate) fn effective_drain_seconds(&self) -> i64 {
        self.rotation
            .drain_seconds
            .unwrap_or(self.max_ttl_seconds + VERIFIER_LEEWAY_SECONDS)
    }
}

fn default_replicas() -> i32 {
    2
}
fn default_min_replicas() -> i32 {
    2
}
fn default_cpu_target() -> i32 {
    80
}
fn default_port() -> i32 {
    3200
}
fn default_issuer() -> String {
    "macp-auth-service".to_string()
}
fn default_audience() -> String {
    "macp-runtime".to_string()
}
fn default_max_ttl() -> i64 {
    3600
}
fn default_default_ttl() -> i64 {
    300
}
fn default_rsa_key_bits() -> u32 {
    2048
}
fn default_jwks_cache_ttl() -> i64 {
    300
}
fn default_rollout_timeout() -> i64 {
    600
}
fn default_propagation_timeout() -> i64 {
    1800
}
fn default_true() -> bool {
    true
}
fn default_caller_tokens_key() -> String {
    "tokens".to_string()
}

/// What the operator last observed and did: conditions, keys, the rotation
/// under way and the rotations before it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MacpAuthStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Degraded, Rotating, Progressing and the other conditions (docs/operations.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Kid of the key that signs new tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_kid: Option<String>,
    /// Kids the JWKS publishes, the active key's first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published_kids: Vec<String>,
    /// The rotation under way, or its last phase (`Idle`) when none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationStatus>,
    /// When the last rotation finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<DateTime<Utc>>,
    /// When the next scheduled rotation starts; unset without `rotation.interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<DateTime<Utc>>,
    /// The last [`crate::rotation::HISTORY_LIMIT`] rotations, newest last:
    /// the incident record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(description = history_description())]
    pub history: Vec<RotationRecord>,
    /// The last `macp.io/rotate` value acted on (each value acts once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_rotate_request: Option<String>,
    /// The last `macp.io/emergency-rotate` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_emergency_request: Option<String>,
    /// When `handledEmergencyRequest` was acted on (the operator then removes the annotation, so that setting the same value again is seen and answered with a Warning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_emergency_request_time: Option<DateTime<Utc>>,
    /// The last spec that passed the operator's checks, as applied: an emergency rotation requested while the spec is invalid runs with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_valid_spec: Option<LastValidSpec>,
    /// Kids withdrawn by an emergency rotation: never published again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suspect_kids: Vec<String>,
    /// Present while the Deployment runs with the emergency max TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emergency_ttl_clamp: Option<TtlClampStatus>,
    /// Every key in the Secret: its role, the longest token lifetime any pod could mint with while it signed, and the earliest time it may leave the JWKS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyStatus>,
    /// The JWKS cache TTL the Propagating wait counts: jwksCacheTtlSeconds, or a higher value it had before, until verifier evidence shows every verifier caching for the lower one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_cache_ttl_in_effect_seconds: Option<i64>,
    /// The verifiers seen fetching the JWKS from the token-service pods, during the last rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifiers: Option<VerifiersStatus>,
    /// The standby key, once every pod serves it and the verifier caches hold it (`rotation.standby`); a routine or pod-scope emergency rotation activates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<StandbyStatus>,
}

/// The standby key: published, propagated, never signing.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StandbyStatus {
    /// Its kid (`next.jwk.json`, published in the JWKS).
    pub kid: String,
    /// Whether every pod served it and the verifier caches were waited out.
    pub propagated: bool,
    /// When it was propagated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagated_at: Option<DateTime<Utc>>,
}

/// The schema's description of `status.history`, with the number kept.
fn history_description() -> String {
    let kept = crate::rotation::HISTORY_LIMIT;
    format!("The last {kept} rotations, newest last: the incident record.")
}

impl MacpAuthStatus {
    /// Appends a finished rotation to `history`, dropping the oldest entries
    /// beyond [`crate::rotation::HISTORY_LIMIT`].
    pub(crate) fn push_history(&mut self, record: RotationRecord) {
        self.history.push(record);
        let excess = self
            .history
            .len()
            .saturating_sub(crate::rotation::HISTORY_LIMIT);
        self.history.drain(..excess);
    }
}

/// A key's role in the Secret.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum KeyRole {
    /// Signs (`active.jwk.json`).
    Active,
    /// Generated for the rotation in flight; published before it signs (`next.jwk.json`).
    Next,
    /// Signed before the active key; published while its tokens expire (`previous.jwk.json`).
    Previous,
    /// Published only: no private key in the Secret.
    Published,
}

/// One key in the Secret and its drain ledger.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    /// The key's id, as in the JWKS and the tokens' header.
    pub kid: String,
    /// What the key does now.
    pub role: KeyRole,
    /// The longest token lifetime any pod could mint with while this key was active: every maxTtlSeconds in effect (lowering the spec never lowers it), pods of older templates included. Unset for a key that never signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_ttl_seconds: Option<i64>,
    /// When the last pod that could sign with it stopped (terminating pods included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_signing_at: Option<DateTime<Utc>>,
    /// The earliest time it may leave the JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_after: Option<DateTime<Utc>>,
    /// Why not sooner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_reason: Option<String>,
}

/// JWKS clients seen by the token-service pods (`GET /verifiers` on each pod).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifiersStatus {
    /// When the pods were last asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<DateTime<Utc>>,
    /// Verifiers seen fetching recently (each within three of its own fetch intervals, or of the cache TTL).
    pub observed: u32,
    /// Of those, how many last fetched a JWKS holding the new key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holding_new_kid: Option<u32>,
    /// The longest cache time observed: a verifier's shortest interval between two fetches, over those with at least three.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longest_interval_seconds: Option<i64>,
    /// Recent verifiers whose last fetch lacked the new key, while Propagating waits for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
    /// Every verifier remembered, most recent first (at most 100), so that a restart or a pod roll loses none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known: Vec<KnownVerifier>,
}

/// One verifier: a peer address and User-Agent, merged over every pod.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KnownVerifier {
    /// `address` or `address (user agent)`.
    pub id: String,
    /// When it last fetched the JWKS from any pod.
    pub last_fetch: DateTime<Utc>,
    /// Its mean interval between fetches over every pod, in whole seconds rounded up: how long it stays counted as present (three of these). Unset before its second fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<i64>,
    /// Its shortest interval between two fetches on one pod, rounded up: at least its cache time, so what shows a lowered cache TTL in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortest_interval_seconds: Option<i64>,
    /// Fetches seen (on the pod that saw the most).
    pub fetches: u64,
    /// Whether its last fetch got a JWKS holding the rotation's new key.
    #[serde(default)]
    pub holds_new_kid: bool,
}

/// A spec the operator accepted, kept in the status (not typed: an older
/// operator's spec must still read back after an upgrade).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastValidSpec {
    /// The generation of the MacpAuth that had this spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The spec, as `spec` read then.
    #[schemars(extend("type" = "object", "x-kubernetes-preserve-unknown-fields" = true))]
    pub spec: serde_json::Value,
}

/// The emergency TTL clamp as rendered into the Deployment.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TtlClampStatus {
    /// The max TTL the service runs with.
    pub max_ttl_seconds: i64,
    /// When the normal max TTL comes back; unset while the emergency rotation is still running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

/// A standard Kubernetes condition.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's name: Ready, Degraded, Rotating, Progressing, ...
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Why, in one CamelCase word.
    pub reason: String,
    /// Why, for a human.
    pub message: String,
    /// When the status last changed.
    pub last_transition_time: DateTime<Utc>,
    /// The `metadata.generation` the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A phase of the rotation (docs/architecture.md): Idle, then KeyGenerated,
/// Publishing, Propagating, Activating, Draining and Retiring, or RollingBack.
/// What each does is in `rotation::phase`; `RotationPhase::VARIANTS`
/// (`strum::VariantArray`) lists them all.
#[derive(
    Deserialize,
    Serialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    JsonSchema,
    strum::VariantArray,
)]
pub enum RotationPhase {
    #[default]
    Idle,
    KeyGenerated,
    Publishing,
    Propagating,
    Activating,
    Draining,
    Retiring,
    RollingBack,
}

/// What started a rotation: the first key, the schedule, `macp.io/rotate` or
/// `macp.io/emergency-rotate`; or `standby`, the preparation of the standby
/// key (it publishes and propagates a key and ends there: no key changes role).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RotationTrigger {
    Initial,
    Scheduled,
    Manual,
    Emergency,
    Standby,
}

/// The rotation under way.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationStatus {
    /// The phase the rotation is in; `Idle` between rotations.
    pub phase: RotationPhase,
    /// What started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<RotationTrigger>,
    /// The annotation value that requested it (manual and emergency rotations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the current phase started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<DateTime<Utc>>,
    /// The instant the current wait ends; every wait is a timestamp so a restart resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_until: Option<DateTime<Utc>>,
    /// Kid of the key the rotation brings in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_kid: Option<String>,
    /// Kid of the key it replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_kid: Option<String>,
    /// What the current phase is doing or waiting for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Kid reserved for the key being generated; `newKid` is set only once that key is in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_kid: Option<String>,
    /// While `RollingBack`: the phase that failed, which decides where the rollback continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_from: Option<RotationPhase>,
    /// Outcome decided before the rotation's cleanup finished (`RolledBack` while the new key drains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RotationOutcome>,
    /// Failed attempts of the current step, for the retry backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// A routine request already reported as deferred (during a rotation or while paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred_request: Option<String>,
    /// The new key is the propagated standby: it was published and waited
    /// out before this rotation began, so it activates without publishing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_standby: bool,
}

/// How a rotation ended.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RotationOutcome {
    Succeeded,
    RolledBack,
    Superseded,
    Failed,
}

/// One finished rotation.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationRecord {
    /// What started it.
    pub trigger: RotationTrigger,
    /// The annotation value that requested it (manual and emergency rotations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Kid of the key it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_kid: Option<String>,
    /// Kid of the key it brought in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_kid: Option<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// How it ended.
    pub outcome: RotationOutcome,
    /// Why it ended so (for a rollback or failure, what failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod name_rule_tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_crd_refuses_names_the_owned_objects_cannot_carry() {
        let crd = serde_json::to_value(MacpAuth::crd()).unwrap();
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        assert_eq!(
            root["x-kubernetes-validations"],
            serde_json::json!([{"rule": NAME_RULE, "message": NAME_RULE_MESSAGE}])
        );
        // The same rule as the reconciler's check, which covers servers without CEL.
        assert!(NAME_RULE.contains("<= 63"));
        assert!(NAME_RULE.contains("^[a-z]([-a-z0-9]*[a-z0-9])?$"));
    }
}

#[cfg(test)]
mod spec_rule_tests {
    use super::*;
    use kube::CustomResourceExt;

    /// The CEL rules are on the spec, each the schema's form of a check
    /// `validate` makes (its message names the same fields).
    #[test]
    fn the_crd_refuses_what_the_spec_check_refuses_where_cel_can_say_it() {
        let crd = serde_json::to_value(MacpAuth::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let rules = spec["x-kubernetes-validations"].as_array().unwrap();
        for (rule, message) in spec_rules() {
            assert!(
                rules.contains(&serde_json::json!({"rule": rule, "message": message})),
                "{rule} missing in {rules:?}"
            );
        }
        // The last valid spec is kept whole, whatever fields it has.
        let status =
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"];
        let last = &status["properties"]["lastValidSpec"]["properties"]["spec"];
        assert_eq!(last["x-kubernetes-preserve-unknown-fields"], true);
    }
}

#[cfg(test)]
mod history_tests {
    use super::*;
    use crate::rotation::HISTORY_LIMIT;
    use chrono::TimeZone;

    fn record(n: usize) -> RotationRecord {
        let at = Utc.timestamp_opt(1_800_000_000 + n as i64, 0).unwrap();
        RotationRecord {
            trigger: RotationTrigger::Manual,
            request_id: Some(format!("r{n}")),
            old_kid: None,
            new_kid: None,
            started_at: at,
            finished_at: at,
            outcome: RotationOutcome::Succeeded,
            message: None,
        }
    }

    #[test]
    fn history_keeps_the_newest_entries_up_to_the_limit() {
        let mut status = MacpAuthStatus::default();
        for n in 0..HISTORY_LIMIT + 3 {
            status.push_history(record(n));
        }
        let ids: Vec<_> = status
            .history
            .iter()
            .filter_map(|r| r.request_id.clone())
            .collect();
        let newest: Vec<_> = (3..HISTORY_LIMIT + 3).map(|n| format!("r{n}")).collect();
        assert_eq!(ids, newest, "the oldest three dropped, newest last");
    }
}

#[cfg(test)]
mod key_kind_tests {
    use super::*;

    #[test]
    fn key_kinds_are_named_as_the_service_spells_the_algorithm() {
        for alg in [SigningAlg::RS256, SigningAlg::ES256] {
            let parsed: Alg = alg.name().parse().unwrap();
            assert_eq!(SigningAlg::from(parsed), alg);
            // The CRD's enum value is the same word.
            assert_eq!(serde_json::to_value(alg).unwrap(), alg.name());
        }
        // Request ids of signing-kind changes carry these (`spec:RS256/3072`).
        assert_eq!(SigningAlg::RS256.kind_label(Some(3072)), "RS256/3072");
        assert_eq!(SigningAlg::RS256.kind_label(None), "RS256");
        assert_eq!(SigningAlg::ES256.kind_label(None), "ES256");
    }

    #[test]
    fn the_spec_asks_for_a_modulus_size_only_for_rsa() {
        let mut spec = crate::fixtures::spec(serde_json::json!({"rsaKeyBits": 3072}));
        assert_eq!(spec.key_kind(), (SigningAlg::RS256, Some(3072)));
        spec.signing_alg = SigningAlg::ES256;
        assert_eq!(spec.key_kind(), (SigningAlg::ES256, None));
    }
}
