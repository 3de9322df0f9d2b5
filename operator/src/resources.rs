//! Builders for the objects a `MacpAuth` owns (docs/architecture.md, Owned
//! objects; docs/objects.md). Pure: they take the resource and return the
//! desired object, nothing more.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, EnvVar, HTTPGetAction, KeyToPath,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    Secret, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{CallerAuthSpec, MacpAuth, MacpAuthSpec, SigningAlg};
use crate::keyset::{self, Keyset};
use crate::ttl_clamp::TtlLimits;
use macp_auth_service::config as service_env;

pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const APP_NAME: &str = "macp-auth-service";
pub const MANAGER: &str = "macp-auth-operator";
/// Pod-template annotation whose change rolls the pods onto a new keyset.
pub const KEYSET_HASH_ANNOTATION: &str = "macp.io/keyset-hash";
pub const CONTAINER_NAME: &str = "auth-service";
/// UID/GID of the `nonroot` user of distroless images (and of our Dockerfile).
pub const RUN_AS_USER: i64 = 65532;
/// Volume holding the caller tokens from `spec.callerAuth`.
pub const CALLER_TOKENS_VOLUME: &str = "caller-tokens";
/// Where that volume is mounted (a directory of its own, read-only).
pub const CALLER_TOKENS_DIR: &str = "/etc/macp-auth/callers";
/// File name of the tokens inside [`CALLER_TOKENS_DIR`], whatever the Secret's key is called.
pub const CALLER_TOKENS_FILE: &str = "tokens";
/// Name of the main container and Service port (JWKS, health, metrics; and
/// minting unless `spec.mintPort` moves it).
pub const HTTP_PORT_NAME: &str = "http";
/// Name of the container and Service port that alone serves `POST /tokens`
/// when `spec.mintPort` is set.
pub const MINT_PORT_NAME: &str = "mint";
/// Topology keys of the default spread: first nodes, then zones.
pub const HOSTNAME_TOPOLOGY_KEY: &str = "kubernetes.io/hostname";
pub const ZONE_TOPOLOGY_KEY: &str = "topology.kubernetes.io/zone";
/// The disruption budget's limit when the spec sets none.
pub const DEFAULT_MAX_UNAVAILABLE: i32 = 1;
/// Mode of the tokens file: owner and group read only (0440); the group is
/// the pod's `fsGroup`, so the non-root service can read it and nobody else.
pub const CALLER_TOKENS_MODE: i32 = 0o440;
/// Volume holding the active private key and the published keys, from the
/// `<name>-signing-keys` Secret.
pub const SIGNING_KEYS_VOLUME: &str = "signing-keys";
/// Where that volume is mounted (read-only).
pub const SIGNING_KEYS_DIR: &str = "/etc/macp-auth/keys";
/// Mode of the key files: owner read only. The owner is root; the kubelet
/// adds group read for the pod's `fsGroup` (the service's group), so the
/// effective mode is 0440 root:65532 and no other user reads the key.
pub const SIGNING_KEYS_MODE: i32 = 0o400;

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
pub struct Owner {
    pub name: String,
    pub namespace: String,
    pub owner_ref: OwnerReference,
}

impl Owner {
    pub fn of(mauth: &MacpAuth) -> Result<Self, BuildError> {
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
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_string(), APP_NAME.to_string()),
        (INSTANCE_LABEL.to_string(), name.to_string()),
    ])
}

/// Label selector string for the pods of a `MacpAuth`.
pub fn pod_selector(name: &str) -> String {
    format!("{NAME_LABEL}={APP_NAME},{INSTANCE_LABEL}={name}")
}

pub fn secret(owner: &Owner, keys: &Keyset) -> Secret {
    Secret {
        metadata: owner.meta(owner.secret_name()),
        type_: Some("Opaque".into()),
        data: Some(keys.to_secret_data()),
        ..Secret::default()
    }
}

/// The Secret to write so that `live` becomes `desired` exactly: `desired`'s
/// data (no other key survives) and type, our labels and owner reference
/// added to what is there, `live`'s resourceVersion kept as the precondition
/// of the replace. `None` when `live` already is that.
pub fn exact_secret(live: &Secret, desired: &Secret) -> Option<Secret> {
    let mut next = live.clone();
    next.data.clone_from(&desired.data);
    next.string_data = None;
    if next.type_.is_none() {
        next.type_.clone_from(&desired.type_);
    }
    let labels = next.metadata.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in desired.metadata.labels.iter().flatten() {
        labels.insert(k.clone(), v.clone());
    }
    let owners = next.metadata.owner_references.get_or_insert_with(Vec::new);
    for o in desired.metadata.owner_references.iter().flatten() {
        if !owners.iter().any(|x| x.uid == o.uid) {
            owners.push(o.clone());
        }
    }
    // Echoing the ownership back would only repeat it; the server keeps its own.
    next.metadata.managed_fields = None;
    let mut unchanged = live.clone();
    unchanged.metadata.managed_fields = None;
    (next != unchanged).then_some(next)
}

fn alg_name(alg: SigningAlg) -> &'static str {
    match alg {
        SigningAlg::RS256 => "RS256",
        SigningAlg::ES256 => "ES256",
    }
}

fn env(name: &str, value: impl ToString) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.to_string()),
        value_from: None,
    }
}

/// The token service's CPU request when `spec.resources` is unset. One core
/// signs about 1,100 RS256 (2048-bit) tokens a second (2,196/s on two cores,
/// docs/performance.md), so a tenth of a core covers a steady 100 mints/s,
/// 1,000 ES256 mints/s or thousands of JWKS fetches, and gives an
/// autoscaler's CPU target something to measure against. No CPU limit:
/// throttling would show up as mint latency, and the request already
/// reserves the share the scheduler counts.
pub const DEFAULT_CPU_REQUEST: &str = "100m";
/// Memory request: the service's peak RSS under load is 6.5 MiB
/// (`scripts/bench-service`, 16 connections); 32 MiB leaves room for a
/// full verifier record table and thousands of open connections.
pub const DEFAULT_MEMORY_REQUEST: &str = "32Mi";
/// Memory limit: about 20 times the measured peak, so only a leak reaches
/// it, while a leaking pod is killed before it starves its node.
pub const DEFAULT_MEMORY_LIMIT: &str = "128Mi";

/// The container's resources when `spec.resources` is unset (a given
/// `spec.resources` replaces them whole).
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(DEFAULT_CPU_REQUEST.into())),
            (
                "memory".to_string(),
                Quantity(DEFAULT_MEMORY_REQUEST.into()),
            ),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(DEFAULT_MEMORY_LIMIT.into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// How long a terminating pod keeps serving after SIGTERM, with `/readyz`
/// already 503: kube-proxy on every node learns about the termination a while
/// after it started and keeps sending new connections meanwhile. distroless
/// has no shell for a `preStop` sleep, so the service waits by itself.
pub const SHUTDOWN_DELAY_SECONDS: i64 = 5;

/// The service's own bound on finishing in-flight requests after the delay.
pub const SERVICE_DRAIN_SECONDS: i64 = 10;

/// `terminationGracePeriodSeconds`: the shutdown delay, the drain and a
/// margin for the process to exit before the kubelet's SIGKILL.
pub const TERMINATION_GRACE_SECONDS: i64 = SHUTDOWN_DELAY_SECONDS + SERVICE_DRAIN_SECONDS + 5;

/// Readiness turns 503 at once on SIGTERM; liveness stays 200 until exit.
const READINESS_PATH: &str = "/readyz";
const LIVENESS_PATH: &str = "/healthz";

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        success_threshold: Some(1),
        ..Probe::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

fn non_empty<K: Ord, V>(map: &BTreeMap<K, V>) -> Option<BTreeMap<K, V>>
where
    BTreeMap<K, V>: Clone,
{
    (!map.is_empty()).then(|| map.clone())
}

/// Path of the caller tokens file inside the pod.
pub fn caller_tokens_path() -> String {
    format!("{CALLER_TOKENS_DIR}/{CALLER_TOKENS_FILE}")
}

/// The Secret volume with only the tokens key of `auth`.
///
/// A volume rather than an env var on purpose: the kubelet refreshes a
/// mounted Secret in place when it changes (a symlink swap the service's
/// reload-by-path polling picks up), so adding or revoking a caller token
/// needs no restart. An env var, or a `subPath` mount, would freeze the value
/// at pod start. The operator itself never reads this Secret: the kubelet
/// mounts it, so the operator's RBAC needs nothing for it.
fn caller_tokens_volume(auth: &CallerAuthSpec) -> Volume {
    Volume {
        name: CALLER_TOKENS_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(auth.secret_name.clone()),
            items: Some(vec![KeyToPath {
                key: auth.key.clone(),
                path: CALLER_TOKENS_FILE.into(),
                mode: Some(CALLER_TOKENS_MODE),
            }]),
            default_mode: Some(CALLER_TOKENS_MODE),
            // Starting without the tokens would silently open minting to anyone.
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

/// The signing-keys Secret as files: only the active private key and the
/// published public keys (the Secret's next and previous private keys stay
/// out of the pod). Files rather than env variables: a variable is readable in
/// `/proc/<pid>/environ`, crash reports and debuggers; a file of mode 0400
/// (0440 for the service's group) on a read-only tmpfs is not. The service
/// reads them at start; a keyset change still rolls the pods (the keyset-hash
/// annotation), so a pod never mixes two keysets.
fn signing_keys_volume(owner: &Owner) -> Volume {
    let item = |key: &str| KeyToPath {
        key: key.into(),
        path: key.into(),
        mode: Some(SIGNING_KEYS_MODE),
    };
    Volume {
        name: SIGNING_KEYS_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(owner.secret_name()),
            items: Some(vec![item(keyset::ACTIVE), item(keyset::PUBLISHED)]),
            default_mode: Some(SIGNING_KEYS_MODE),
            // Without the key the pod must not start (no ephemeral fallback).
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

fn signing_keys_mount() -> VolumeMount {
    VolumeMount {
        name: SIGNING_KEYS_VOLUME.into(),
        mount_path: SIGNING_KEYS_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Path of a file of the signing-keys volume inside the pod.
pub fn signing_keys_path(key: &str) -> String {
    format!("{SIGNING_KEYS_DIR}/{key}")
}

fn caller_tokens_mount() -> VolumeMount {
    VolumeMount {
        name: CALLER_TOKENS_VOLUME.into(),
        mount_path: CALLER_TOKENS_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// The container's environment: the spec's settings with `ttl` (possibly the
/// emergency clamp) for the TTLs, the paths of the key files, and the
/// optional controls only when they are set, so a resource without them
/// renders the reference service's configuration unchanged.
fn service_env(spec: &MacpAuthSpec, signing_alg: SigningAlg, ttl: TtlLimits) -> Vec<EnvVar> {
    let mut vars = vec![
        env(service_env::PORT, spec.port),
        env(service_env::ISSUER, &spec.issuer),
        env(service_env::AUDIENCE, &spec.audience),
        env(service_env::MAX_TTL, ttl.max_ttl_seconds),
        env(service_env::DEFAULT_TTL, ttl.default_ttl_seconds),
        env(service_env::SIGNING_ALG, alg_name(signing_alg)),
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

/// The token service Deployment. `image` is the resolved image (spec or
/// operator default); `signing_alg` the active key's algorithm, which is not
/// `spec.signingAlg` while a rotation to a key of another kind is under way
/// (the service refuses to start when they disagree); `ttl` the TTLs to run
/// with (see [`crate::ttl_clamp`]).
pub fn deployment(
    owner: &Owner,
    spec: &MacpAuthSpec,
    image: &str,
    keyset_hash: &str,
    signing_alg: SigningAlg,
    ttl: TtlLimits,
) -> Deployment {
    // User pod labels first so they can never replace the selector labels.
    let mut pod_labels = spec.pod_labels.clone();
    pod_labels.extend(common_labels(&owner.name));
    let mut pod_annotations = spec.pod_annotations.clone();
    pod_annotations.insert(KEYSET_HASH_ANNOTATION.into(), keyset_hash.into());

    let mut ports = vec![ContainerPort {
        name: Some(HTTP_PORT_NAME.into()),
        container_port: spec.port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }];
    if let Some(mint_port) = spec.mint_port {
        ports.push(ContainerPort {
            name: Some(MINT_PORT_NAME.into()),
            container_port: mint_port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        });
    }
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        ports: Some(ports),
        env: Some(service_env(spec, signing_alg, ttl)),
        volume_mounts: Some(
            std::iter::once(signing_keys_mount())
                .chain(spec.caller_auth.as_ref().map(|_| caller_tokens_mount()))
                .collect(),
        ),
        readiness_probe: Some(http_probe(READINESS_PATH, 5, 3)),
        liveness_probe: Some(http_probe(LIVENESS_PATH, 10, 3)),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };

    Deployment {
        metadata: owner.meta(owner.name.clone()),
        spec: Some(DeploymentSpec {
            // With autoscaling the field is left out of the apply, so the
            // HorizontalPodAutoscaler (through the scale subresource) is its
            // only writer: setting it here would fight every scaling decision.
            replicas: spec.autoscaling.is_none().then_some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&owner.name)),
                match_expressions: None,
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            // The Deployment controller then reports ProgressDeadlineExceeded,
            // which the reconciler turns into Degraded.
            progress_deadline_seconds: Some(
                i32::try_from(spec.rotation.rollout_timeout_seconds).unwrap_or(i32::MAX),
            ),
            revision_history_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS_USER),
                        run_as_group: Some(RUN_AS_USER),
                        // Gives the key files (0400, made 0440) and the tokens file
                        // (0440) to the service's group: the kubelet writes them as
                        // root, and the service runs as 65532.
                        fs_group: Some(RUN_AS_USER),
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..PodSecurityContext::default()
                    }),
                    volumes: Some(
                        std::iter::once(signing_keys_volume(owner))
                            .chain(spec.caller_auth.as_ref().map(caller_tokens_volume))
                            .collect(),
                    ),
                    node_selector: non_empty(&spec.node_selector),
                    tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
                    affinity: spec.affinity.clone(),
                    topology_spread_constraints: topology_spread(&owner.name, spec),
                    priority_class_name: spec.priority_class_name.clone(),
                    image_pull_secrets: (!spec.image_pull_secrets.is_empty())
                        .then(|| spec.image_pull_secrets.clone()),
                    service_account_name: spec.service_account_name.clone(),
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The pods' topology spread: the spec's constraints when given (`[]`
/// included, which turns the default off); else, when there may be more than
/// one pod, one pod per node and per zone as far as the cluster allows.
/// `ScheduleAnyway`, because a single-node or single-zone cluster must still
/// run every replica: the spread is a preference, the disruption budget and
/// `maxUnavailable: 0` are what keep signers up.
fn topology_spread(name: &str, spec: &MacpAuthSpec) -> Option<Vec<TopologySpreadConstraint>> {
    if let Some(given) = &spec.topology_spread_constraints {
        return (!given.is_empty()).then(|| given.clone());
    }
    if !spec.may_run_several() {
        return None;
    }
    let spread = |key: &str| TopologySpreadConstraint {
        max_skew: 1,
        topology_key: key.into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector_labels(name)),
            match_expressions: None,
        }),
        ..TopologySpreadConstraint::default()
    };
    Some(vec![
        spread(HOSTNAME_TOPOLOGY_KEY),
        spread(ZONE_TOPOLOGY_KEY),
    ])
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

pub fn service(owner: &Owner, spec: &MacpAuthSpec) -> Service {
    let mut ports = vec![service_port(HTTP_PORT_NAME, spec.port)];
    if let Some(mint_port) = spec.mint_port {
        ports.push(service_port(MINT_PORT_NAME, mint_port));
    }
    Service {
        metadata: owner.meta(owner.name.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&owner.name)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The HorizontalPodAutoscaler `<name>` for `spec.autoscaling`, `None`
/// without it (the reconciler then deletes one it made before).
pub fn horizontal_pod_autoscaler(
    owner: &Owner,
    spec: &MacpAuthSpec,
) -> Option<HorizontalPodAutoscaler> {
    let a = spec.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: owner.meta(owner.name.clone()),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: owner.name.clone(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(a.target_cpu_utilization_percentage),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: None,
        }),
        status: None,
    })
}

/// The PodDisruptionBudget `<name>`: when more than one pod may run (and
/// `disruptionBudget.enabled` is not false), so that a node drain evicts one
/// signer at a time instead of all of them. `None` otherwise: a budget over a
/// single replica would block every drain.
pub fn pod_disruption_budget(owner: &Owner, spec: &MacpAuthSpec) -> Option<PodDisruptionBudget> {
    let budget = spec.disruption_budget.clone().unwrap_or_default();
    if !budget.enabled || !spec.may_run_several() {
        return None;
    }
    let max_unavailable = match (&budget.max_unavailable, &budget.min_available) {
        (None, None) => Some(IntOrString::Int(DEFAULT_MAX_UNAVAILABLE)),
        (max, _) => max.clone(),
    };
    Some(PodDisruptionBudget {
        metadata: owner.meta(owner.name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&owner.name)),
                match_expressions: None,
            }),
            max_unavailable,
            min_available: budget.min_available.clone(),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// The in-cluster JWKS URL verifiers fetch.
pub fn jwks_url(owner: &Owner, spec: &MacpAuthSpec) -> String {
    format!(
        "http://{}.{}.svc:{}/.well-known/jwks.json",
        owner.name, owner.namespace, spec.port
    )
}

/// `<name>-verifier-config`, for the MACP runtime to `envFrom`.
///
/// It carries the verifiers' JWKS cache TTL, not token lifetimes, so the
/// emergency TTL clamp (which changes only the minting side) does not touch it.
pub fn verifier_config_map(owner: &Owner, spec: &MacpAuthSpec) -> ConfigMap {
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
    use super::*;
    use crate::fixtures;
    use crate::keyset::PrivateKey;
    use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn mauth(spec: serde_json::Value) -> MacpAuth {
        fixtures::macpauth("prod")
            .namespace("auth")
            .uid("uid-1")
            .spec(spec)
            .build()
    }

    fn owner() -> Owner {
        Owner::of(&mauth(serde_json::json!({}))).unwrap()
    }

    fn plain(spec: &MacpAuthSpec) -> TtlLimits {
        crate::ttl_clamp::limits(spec, None)
    }

    fn pod_spec(d: &Deployment) -> PodSpec {
        d.spec.clone().unwrap().template.spec.unwrap()
    }

    /// The pod spec of `spec`'s Deployment, with the spec's own alg and TTLs.
    fn spec_pod(spec: &MacpAuthSpec) -> PodSpec {
        pod_spec(&deployment(
            &owner(),
            spec,
            "img",
            "h",
            spec.signing_alg,
            plain(spec),
        ))
    }

    /// The container env of `spec`'s Deployment, with the spec's own alg and TTLs.
    fn spec_env(spec: &MacpAuthSpec) -> BTreeMap<String, EnvVar> {
        env_of(&deployment(
            &owner(),
            spec,
            "img",
            "h",
            spec.signing_alg,
            plain(spec),
        ))
    }

    fn env_of(d: &Deployment) -> BTreeMap<String, EnvVar> {
        let c = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        c.env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

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
    fn secret_holds_the_keyset() {
        let ks = Keyset::initial(PrivateKey::generate(SigningAlg::ES256, "k1", 2048).unwrap());
        let s = secret(&owner(), &ks);
        let data = s.data.unwrap();
        assert!(data.contains_key(keyset::ACTIVE));
        assert!(data.contains_key(keyset::PUBLISHED));
        assert_eq!(Keyset::from_secret_data(&data).unwrap(), ks);
    }

    #[test]
    fn deployment_env_probes_strategy_and_security() {
        let spec = mauth(serde_json::json!({
            "issuer": "iss", "audience": "aud", "maxTtlSeconds": 600,
            "defaultTtlSeconds": 60, "signingAlg": "ES256", "port": 8080, "replicas": 3
        }))
        .spec;
        let d = deployment(
            &owner(),
            &spec,
            "img:1",
            "abc",
            spec.signing_alg,
            plain(&spec),
        );
        let env = env_of(&d);
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
        let ps = pod_spec(&d);
        let vols = ps.volumes.clone().unwrap();
        let sv = vols[0].secret.clone().unwrap();
        assert_eq!(sv.secret_name.as_deref(), Some("prod-signing-keys"));
        assert_eq!(sv.optional, Some(false));
        assert_eq!(sv.default_mode, Some(0o400));
        let items: Vec<(String, String, Option<i32>)> = sv
            .items
            .unwrap()
            .into_iter()
            .map(|i| (i.key, i.path, i.mode))
            .collect();
        // Only what the pod needs: not the next or previous private key.
        assert_eq!(
            items,
            [
                (keyset::ACTIVE.into(), keyset::ACTIVE.into(), Some(0o400)),
                (
                    keyset::PUBLISHED.into(),
                    keyset::PUBLISHED.into(),
                    Some(0o400)
                ),
            ]
        );
        let mounts = ps.containers[0].volume_mounts.clone().unwrap();
        assert_eq!(
            (
                mounts[0].name.as_str(),
                mounts[0].mount_path.as_str(),
                mounts[0].read_only
            ),
            (SIGNING_KEYS_VOLUME, "/etc/macp-auth/keys", Some(true))
        );
        // The kubelet writes the files as root: the service reads them through fsGroup.
        assert_eq!(
            ps.security_context.as_ref().unwrap().fs_group,
            Some(RUN_AS_USER)
        );
        let ds = d.spec.unwrap();
        assert_eq!(ds.replicas, Some(3));
        let ru = ds.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(ru.max_surge, Some(IntOrString::Int(1)));
        assert_eq!(ds.progress_deadline_seconds, Some(600));
        assert_eq!(ds.selector.match_labels.unwrap(), selector_labels("prod"));
        let tmpl = ds.template;
        let tmeta = tmpl.metadata.unwrap();
        assert_eq!(tmeta.annotations.unwrap()[KEYSET_HASH_ANNOTATION], "abc");
        let ps = tmpl.spec.unwrap();
        let psc = ps.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let c = &ps.containers[0];
        assert_eq!(c.image.as_deref(), Some("img:1"));
        assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 8080);
        // Readiness turns 503 at SIGTERM while liveness stays up through the
        // shutdown delay; the grace period covers the delay and the drain.
        let path = |p: &Option<Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone();
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
        assert_eq!(plain("MACP_AUTH_SHUTDOWN_DELAY_SECONDS"), "5");
        assert_eq!(ps.termination_grace_period_seconds, Some(20));
        assert!(
            ps.termination_grace_period_seconds.unwrap()
                > SHUTDOWN_DELAY_SECONDS + SERVICE_DRAIN_SECONDS
        );
        assert!(
            c.lifecycle.is_none(),
            "no preStop hook: distroless has no shell"
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
            &vec!["ALL".to_string()]
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert!(ps.node_selector.is_none() && ps.tolerations.is_none());
        // Unset resources get the defaults: CPU and memory requests, a memory limit.
        let r = c.resources.as_ref().unwrap();
        let requests = r.requests.as_ref().unwrap();
        assert_eq!(requests["cpu"], Quantity("100m".into()));
        assert_eq!(requests["memory"], Quantity("32Mi".into()));
        let limits = r.limits.as_ref().unwrap();
        assert_eq!(limits["memory"], Quantity("128Mi".into()));
        assert!(
            !limits.contains_key("cpu"),
            "no CPU limit: throttling is mint latency"
        );
    }

    #[test]
    fn hardening_settings_render_nothing_when_unset() {
        let spec = mauth(serde_json::json!({"audit": {"enabled": false}})).spec;
        let d = deployment(&owner(), &spec, "img", "h", spec.signing_alg, plain(&spec));
        let env = env_of(&d);
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
        let ps = pod_spec(&d);
        // Only the keys' volume.
        let vols = ps.volumes.unwrap();
        assert_eq!(vols.len(), 1);
        assert_eq!(vols[0].name, SIGNING_KEYS_VOLUME);
        assert_eq!(ps.containers[0].volume_mounts.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn caller_auth_mounts_only_the_tokens_key_read_only() {
        let spec = mauth(serde_json::json!({
            "callerAuth": {"secretName": "minters", "key": "callers.txt"}
        }))
        .spec;
        let d = deployment(&owner(), &spec, "img", "h", spec.signing_alg, plain(&spec));
        let env = env_of(&d);
        assert_eq!(
            env[service_env::MINT_TOKENS_FILE].value.as_deref(),
            Some("/etc/macp-auth/callers/tokens")
        );
        let ps = pod_spec(&d);
        let vols = ps.volumes.clone().unwrap();
        assert_eq!(vols.len(), 2, "the keys and the tokens");
        let vols = &vols[1..];
        let sv = vols[0].secret.clone().unwrap();
        assert_eq!(sv.secret_name.as_deref(), Some("minters"));
        assert_eq!(sv.optional, Some(false));
        let items = sv.items.unwrap();
        assert_eq!(items.len(), 1, "only the tokens key is projected");
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("callers.txt", "tokens")
        );
        // 0440 or tighter: no write bit, nothing for others.
        for mode in [items[0].mode.unwrap(), sv.default_mode.unwrap()] {
            assert_eq!(mode & !0o440, 0, "mode {mode:o}");
        }
        let mounts = ps.containers[0].volume_mounts.clone().unwrap();
        assert_eq!(mounts.len(), 2);
        let mounts = &mounts[1..];
        assert_eq!(mounts[0].name, vols[0].name);
        assert_eq!(mounts[0].mount_path, "/etc/macp-auth/callers");
        assert_eq!(mounts[0].read_only, Some(true));
        // No subPath: a subPath mount is never refreshed when the Secret changes.
        assert!(mounts[0].sub_path.is_none());
        assert_eq!(ps.security_context.unwrap().fs_group, Some(RUN_AS_USER));
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

    #[test]
    fn scheduling_and_pod_metadata_from_spec() {
        let mut spec = mauth(serde_json::json!({})).spec;
        spec.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("64Mi".into()),
            )])),
            ..ResourceRequirements::default()
        });
        spec.node_selector = BTreeMap::from([("pool".to_string(), "auth".to_string())]);
        spec.tolerations = vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Toleration::default()
        }];
        // A user label may not hijack the selector labels.
        spec.pod_labels = BTreeMap::from([
            ("team".to_string(), "id".to_string()),
            (INSTANCE_LABEL.to_string(), "evil".to_string()),
        ]);
        spec.pod_annotations = BTreeMap::from([
            ("prometheus.io/scrape".to_string(), "true".to_string()),
            (KEYSET_HASH_ANNOTATION.to_string(), "forged".to_string()),
        ]);
        let d = deployment(
            &owner(),
            &spec,
            "img",
            "real",
            spec.signing_alg,
            plain(&spec),
        );
        let t = d.spec.unwrap().template;
        let meta = t.metadata.unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["team"], "id");
        assert_eq!(labels[INSTANCE_LABEL], "prod");
        let ann = meta.annotations.unwrap();
        assert_eq!(ann["prometheus.io/scrape"], "true");
        assert_eq!(ann[KEYSET_HASH_ANNOTATION], "real");
        let ps = t.spec.unwrap();
        assert_eq!(ps.node_selector.unwrap()["pool"], "auth");
        assert_eq!(ps.tolerations.unwrap()[0].key.as_deref(), Some("dedicated"));
        assert_eq!(
            ps.containers[0]
                .resources
                .as_ref()
                .unwrap()
                .limits
                .as_ref()
                .unwrap()["memory"],
            Quantity("64Mi".into())
        );
        // The spec's resources replace the defaults whole: no request sneaks in.
        assert_eq!(ps.containers[0].resources.as_ref().unwrap().requests, None);
    }

    #[test]
    fn service_and_verifier_config() {
        let spec = mauth(serde_json::json!({"port": 4000, "issuer": "i", "audience": "a", "jwksCacheTtlSeconds": 30})).spec;
        let s = service(&owner(), &spec).spec.unwrap();
        assert_eq!(s.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(s.ports.as_ref().unwrap()[0].port, 4000);
        assert_eq!(s.selector.unwrap(), selector_labels("prod"));
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

    #[test]
    fn pod_selector_matches_selector_labels() {
        assert_eq!(
            pod_selector("prod"),
            "app.kubernetes.io/name=macp-auth-service,app.kubernetes.io/instance=prod"
        );
    }

    #[test]
    fn pod_settings_from_spec_reach_the_pod_template() {
        let spec = mauth(serde_json::json!({
            "podLabels": {"sidecar.istio.io/inject": "true"},
            "podAnnotations": {"linkerd.io/inject": "enabled"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "pool", "operator": "In", "values": ["auth"]}]}]}}},
            "priorityClassName": "platform-critical",
            "imagePullSecrets": [{"name": "regcred"}],
            "serviceAccountName": "macp-auth"
        }))
        .spec;
        let d = deployment(&owner(), &spec, "img", "h", spec.signing_alg, plain(&spec));
        let meta = d.spec.clone().unwrap().template.metadata.unwrap();
        assert_eq!(meta.labels.unwrap()["sidecar.istio.io/inject"], "true");
        assert_eq!(meta.annotations.unwrap()["linkerd.io/inject"], "enabled");
        let ps = pod_spec(&d);
        let terms = ps
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms[0].match_expressions.as_ref().unwrap()[0].key, "pool");
        assert_eq!(ps.priority_class_name.as_deref(), Some("platform-critical"));
        assert_eq!(ps.image_pull_secrets.unwrap()[0].name, "regcred");
        assert_eq!(ps.service_account_name.as_deref(), Some("macp-auth"));
        // A named service account changes nothing about its token: not mounted.
        assert_eq!(ps.automount_service_account_token, Some(false));
    }

    #[test]
    fn unset_pod_settings_render_nothing() {
        let spec = mauth(serde_json::json!({"replicas": 1})).spec;
        let ps = spec_pod(&spec);
        assert!(ps.affinity.is_none());
        assert!(
            ps.topology_spread_constraints.is_none(),
            "one replica: no spread"
        );
        assert!(ps.priority_class_name.is_none());
        assert!(ps.image_pull_secrets.is_none());
        assert!(ps.service_account_name.is_none());
        assert!(
            pod_disruption_budget(&owner(), &spec).is_none(),
            "one replica: no budget"
        );
        assert!(horizontal_pod_autoscaler(&owner(), &spec).is_none());
    }

    #[test]
    fn several_replicas_spread_over_nodes_and_zones_by_default() {
        let spec = mauth(serde_json::json!({"replicas": 3})).spec;
        let ps = spec_pod(&spec);
        let tsc = ps.topology_spread_constraints.unwrap();
        let keys: Vec<_> = tsc.iter().map(|c| c.topology_key.as_str()).collect();
        assert_eq!(keys, [HOSTNAME_TOPOLOGY_KEY, ZONE_TOPOLOGY_KEY]);
        for c in &tsc {
            assert_eq!(c.max_skew, 1);
            // A preference: a one-node cluster still runs every replica.
            assert_eq!(c.when_unsatisfiable, "ScheduleAnyway");
            assert_eq!(
                c.label_selector.clone().unwrap().match_labels.unwrap(),
                selector_labels("prod")
            );
        }
        // Given constraints replace the default; [] turns it off.
        let given = serde_json::json!([{"maxSkew": 2, "topologyKey": "rack",
                                        "whenUnsatisfiable": "DoNotSchedule"}]);
        let spec =
            mauth(serde_json::json!({"replicas": 3, "topologySpreadConstraints": given})).spec;
        let ps = spec_pod(&spec);
        let tsc = ps.topology_spread_constraints.unwrap();
        assert_eq!((tsc.len(), tsc[0].topology_key.as_str()), (1, "rack"));
        let spec = mauth(serde_json::json!({"replicas": 3, "topologySpreadConstraints": []})).spec;
        let ps = spec_pod(&spec);
        assert!(ps.topology_spread_constraints.is_none());
    }

    #[test]
    fn autoscaling_owns_replicas_through_an_hpa() {
        let spec = mauth(serde_json::json!({"replicas": 3,
            "autoscaling": {"minReplicas": 2, "maxReplicas": 10, "targetCPUUtilizationPercentage": 70}}))
        .spec;
        let d = deployment(&owner(), &spec, "img", "h", spec.signing_alg, plain(&spec));
        assert_eq!(
            d.spec.as_ref().unwrap().replicas,
            None,
            "replicas left to the HPA"
        );
        let json = serde_json::to_value(&d).unwrap();
        assert!(
            json["spec"].get("replicas").is_none(),
            "not even as null: {json}"
        );
        assert!(
            pod_spec(&d).topology_spread_constraints.is_some(),
            "may scale out: spread"
        );
        let hpa = horizontal_pod_autoscaler(&owner(), &spec).unwrap();
        assert_eq!(hpa.metadata.name.as_deref(), Some("prod"));
        assert_eq!(hpa.metadata.owner_references.unwrap()[0].uid, "uid-1");
        let hs = hpa.spec.unwrap();
        assert_eq!(
            (
                hs.scale_target_ref.kind.as_str(),
                hs.scale_target_ref.name.as_str()
            ),
            ("Deployment", "prod")
        );
        assert_eq!(hs.scale_target_ref.api_version.as_deref(), Some("apps/v1"));
        assert_eq!((hs.min_replicas, hs.max_replicas), (Some(2), 10));
        let m = &hs.metrics.unwrap()[0];
        assert_eq!(m.type_, "Resource");
        let r = m.resource.clone().unwrap();
        assert_eq!(r.name, "cpu");
        assert_eq!(r.target.type_, "Utilization");
        assert_eq!(r.target.average_utilization, Some(70));
        // Defaults: minReplicas 2, 80 %.
        let spec = mauth(serde_json::json!({"autoscaling": {"maxReplicas": 4}})).spec;
        let hs = horizontal_pod_autoscaler(&owner(), &spec)
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(hs.min_replicas, Some(2));
        assert_eq!(
            hs.metrics.unwrap()[0]
                .resource
                .clone()
                .unwrap()
                .target
                .average_utilization,
            Some(80)
        );
        // Without autoscaling the Deployment carries the spec's replicas.
        let spec = mauth(serde_json::json!({"replicas": 3})).spec;
        let d = deployment(&owner(), &spec, "img", "h", spec.signing_alg, plain(&spec));
        assert_eq!(d.spec.unwrap().replicas, Some(3));
    }

    #[test]
    fn a_disruption_budget_guards_several_replicas() {
        let spec = mauth(serde_json::json!({"replicas": 2})).spec;
        let pdb = pod_disruption_budget(&owner(), &spec).unwrap();
        assert_eq!(pdb.metadata.name.as_deref(), Some("prod"));
        let ps = pdb.spec.unwrap();
        assert_eq!(ps.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(ps.min_available, None);
        assert_eq!(
            ps.selector.unwrap().match_labels.unwrap(),
            selector_labels("prod")
        );
        // Autoscaling, even from a single replica, may run several.
        let spec = mauth(serde_json::json!({"replicas": 1,
            "autoscaling": {"minReplicas": 1, "maxReplicas": 3}}))
        .spec;
        assert!(pod_disruption_budget(&owner(), &spec).is_some());
        let spec = mauth(serde_json::json!({"disruptionBudget": {"minAvailable": "50%"}})).spec;
        let ps = pod_disruption_budget(&owner(), &spec)
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(ps.min_available, Some(IntOrString::String("50%".into())));
        assert_eq!(ps.max_unavailable, None, "one of the two only");
        let spec = mauth(serde_json::json!({"disruptionBudget": {"enabled": false}})).spec;
        assert!(pod_disruption_budget(&owner(), &spec).is_none());
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
