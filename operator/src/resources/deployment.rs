//! The token service Deployment `<name>`: its rollout strategy, pod template,
//! container, probes, security and scheduling.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, HTTPGetAction, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
    TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::container_env::service_env;
use super::volumes::{
    caller_tokens_mount, caller_tokens_volume, signing_keys_mount, signing_keys_volume,
};
use super::{
    HTTP_PORT_NAME, KEYSET_HASH_ANNOTATION, MINT_PORT_NAME, Owner, common_labels, selector_labels,
};
use crate::crd::{MacpAuthSpec, SigningAlg};
use crate::ttl_clamp::TtlLimits;

pub const CONTAINER_NAME: &str = "auth-service";
/// UID/GID of the `nonroot` user of distroless images (and of our Dockerfile).
pub(crate) const RUN_AS_USER: i64 = 65532;
/// Topology keys of the default spread: first nodes, then zones.
const HOSTNAME_TOPOLOGY_KEY: &str = "kubernetes.io/hostname";
const ZONE_TOPOLOGY_KEY: &str = "topology.kubernetes.io/zone";

/// The token service's CPU request when `spec.resources` is unset. One core
/// signs about 1,100 RS256 (2048-bit) tokens a second (2,196/s on two cores,
/// docs/performance.md), so a tenth of a core covers a steady 100 mints/s,
/// 1,000 ES256 mints/s or thousands of JWKS fetches, and gives an
/// autoscaler's CPU target something to measure against. No CPU limit:
/// throttling would show up as mint latency, and the request already
/// reserves the share the scheduler counts.
const DEFAULT_CPU_REQUEST: &str = "100m";
/// Memory request: several times the service's peak RSS under load
/// (docs/performance.md, "The token service"), room for a full verifier
/// record table and thousands of open connections ("Memory per open
/// connection").
const DEFAULT_MEMORY_REQUEST: &str = "32Mi";
/// Memory limit: far above the measured peak, so only a leak reaches it, while a leaking pod is killed before it starves its node.
const DEFAULT_MEMORY_LIMIT: &str = "128Mi";

/// The container's resources when `spec.resources` is unset (a given
/// `spec.resources` replaces them whole).
fn default_resources() -> ResourceRequirements {
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
pub(crate) const SHUTDOWN_DELAY_SECONDS: i64 = 5;

/// The service's own bound on finishing in-flight requests after the delay.
const SERVICE_DRAIN_SECONDS: i64 = 10;

/// `terminationGracePeriodSeconds`: the shutdown delay, the drain and a
/// margin for the process to exit before the kubelet's SIGKILL.
const TERMINATION_GRACE_SECONDS: i64 = SHUTDOWN_DELAY_SECONDS + SERVICE_DRAIN_SECONDS + 5;

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

/// The token service Deployment. `image` is the resolved image (spec or
/// operator default); `signing_alg` the active key's algorithm, which is not
/// `spec.signingAlg` while a rotation to a key of another kind is under way
/// (the service refuses to start when they disagree); `ttl` the TTLs to run
/// with (see [`crate::ttl_clamp`]).
pub(crate) fn deployment(
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
    let container = container(spec, image, signing_alg, ttl);

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
                spec: Some(pod_spec(owner, spec, container)),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The token service container: its ports, environment, mounts, probes,
/// resources and a locked-down security context.
fn container(
    spec: &MacpAuthSpec,
    image: &str,
    signing_alg: SigningAlg,
    ttl: TtlLimits,
) -> Container {
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
    Container {
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
    }
}

/// The pod around `container`: its volumes, identity and scheduling.
fn pod_spec(owner: &Owner, spec: &MacpAuthSpec, container: Container) -> PodSpec {
    PodSpec {
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Toleration;

    use super::super::INSTANCE_LABEL;
    use super::super::testing::{mauth, owner, plain, spec_deployment, spec_pod};
    use super::*;

    /// Three ES256 replicas on port 8080, rendered with the keyset hash "abc".
    fn three_replicas() -> Deployment {
        let spec = mauth(serde_json::json!({
            "issuer": "iss", "audience": "aud", "maxTtlSeconds": 600,
            "defaultTtlSeconds": 60, "signingAlg": "ES256", "port": 8080, "replicas": 3
        }))
        .spec;
        deployment(
            &owner(),
            &spec,
            "img:1",
            "abc",
            spec.signing_alg,
            plain(&spec),
        )
    }

    #[test]
    fn deployment_rolls_one_extra_pod_at_a_time_onto_the_keyset_hash() {
        let ds = three_replicas().spec.unwrap();
        assert_eq!(ds.replicas, Some(3));
        let ru = ds.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(ru.max_surge, Some(IntOrString::Int(1)));
        assert_eq!(ds.progress_deadline_seconds, Some(600));
        assert_eq!(ds.selector.match_labels.unwrap(), selector_labels("prod"));
        let tmpl = ds.template;
        let tmeta = tmpl.metadata.unwrap();
        assert_eq!(tmeta.annotations.unwrap()[KEYSET_HASH_ANNOTATION], "abc");
        let c = &tmpl.spec.unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("img:1"));
        assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 8080);
    }

    #[test]
    fn probes_and_grace_period_cover_the_shutdown_delay_and_drain() {
        let ps = three_replicas().spec.unwrap().template.spec.unwrap();
        let c = &ps.containers[0];
        // Readiness turns 503 at SIGTERM while liveness stays up through the
        // shutdown delay; the grace period covers the delay and the drain.
        let path = |p: &Option<Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone();
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
        assert_eq!(ps.termination_grace_period_seconds, Some(20));
        assert!(
            ps.termination_grace_period_seconds.unwrap()
                > SHUTDOWN_DELAY_SECONDS + SERVICE_DRAIN_SECONDS
        );
        assert!(
            c.lifecycle.is_none(),
            "no preStop hook: distroless has no shell"
        );
    }

    #[test]
    fn pod_and_container_are_locked_down() {
        let ps = three_replicas().spec.unwrap().template.spec.unwrap();
        let psc = ps.security_context.clone().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let sc = ps.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
            &vec!["ALL".to_string()]
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert!(ps.node_selector.is_none() && ps.tolerations.is_none());
    }

    #[test]
    fn unset_resources_get_requests_and_a_memory_limit() {
        let ps = three_replicas().spec.unwrap().template.spec.unwrap();
        let r = ps.containers[0].resources.as_ref().unwrap();
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
        let d = spec_deployment(&spec);
        let meta = d.spec.clone().unwrap().template.metadata.unwrap();
        assert_eq!(meta.labels.unwrap()["sidecar.istio.io/inject"], "true");
        assert_eq!(meta.annotations.unwrap()["linkerd.io/inject"], "enabled");
        let ps = spec_pod(&spec);
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
}
