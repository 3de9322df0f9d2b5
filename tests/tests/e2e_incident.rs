//! Layer 4 (docs/architecture.md, Test layers), the incident path: the real
//! operator (its controller, kube client and HTTP prober, in-process) drives
//! the simulated cluster of `macp_auth_e2e::cluster`, whose pods are real
//! token-service processes on 127.0.0.x, as `e2e_rotation.rs` does.
//!
//! A spec made invalid by an edit must not block an emergency rotation: the
//! suspect key leaves every pod within the bound of an ordinary emergency
//! (`e2e_3` in `e2e_rotation.rs`), with `Degraded`/`InvalidSpec` still set.

use std::collections::BTreeSet;
use std::ops::ControlFlow::{Break, Continue};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use macp_auth_e2e::apiserver::FakeApiServer;
use macp_auth_e2e::binary::service_binary_async;
use macp_auth_e2e::cluster::{Cluster, ClusterConfig};
use macp_auth_e2e::endpoints::ApiEndpoints;
use macp_auth_e2e::wait::wait_until;
use macp_auth_operator::crd::{
    EMERGENCY_ROTATE_ANNOTATION, MacpAuth, MacpAuthStatus, RotationOutcome, RotationPhase,
    RotationTrigger,
};
use macp_auth_operator::{HttpProber, Settings, fixtures, rbac};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const NS: &str = "e2e";
/// The scaled figures of `e2e_rotation.rs`: cache TTL, longest token, three pods.
const CACHE_TTL: i64 = 20;
const MAX_TTL: i64 = 6;
/// Pinned: the drain the longest token needs, and not a second more.
const DRAIN: i64 = MAX_TTL + 60;
const REPLICAS: i32 = 3;
const PATIENCE: Duration = Duration::from_secs(300);
/// The bound of an ordinary emergency (`e2e_rotation.rs`, `WITHDRAW_BOUND`):
/// from the annotation until no pod, terminating ones included, serves the
/// suspect key, one rollout of the three pods with room for a loaded machine.
const WITHDRAW_BOUND: Duration = Duration::from_secs(45);

/// The simulated cluster, the API server enforcing the operator's RBAC, and
/// the operator running in-process.
struct Sim {
    server: FakeApiServer,
    cluster: Cluster,
    operator: JoinHandle<()>,
}

impl Sim {
    async fn start() -> Self {
        let bin = service_binary_async().await.expect("service binary");
        let server = FakeApiServer::start().await.expect("API server");
        server.enforce_operator_rbac(&rbac::Mode::Namespaced(vec![NS.to_string()]), None);
        let cluster = Cluster::start(server.handle(), ClusterConfig::new(bin));
        let settings = Settings {
            service_image: "registry.test/macp-auth-service:e2e".into(),
            probe_timeout: Duration::from_secs(1),
            watch_namespaces: vec![NS.to_string()],
            ..Settings::default()
        };
        let prober = Arc::new(HttpProber::new(settings.probe_timeout).expect("prober"));
        let operator = tokio::spawn(macp_auth_operator::run(
            server.operator_client().expect("operator client"),
            settings,
            prober,
            std::future::pending(),
        ));
        Self {
            server,
            cluster,
            operator,
        }
    }

    fn api(&self) -> Api<MacpAuth> {
        Api::namespaced(self.server.client(), NS)
    }

    async fn status(&self, name: &str) -> MacpAuthStatus {
        self.api()
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|m| m.status)
            .unwrap_or_default()
    }

    async fn patch(&self, name: &str, patch: Value) {
        self.api()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch MacpAuth");
    }

    async fn wait_for(
        &self,
        name: &str,
        what: &str,
        mut done: impl FnMut(&MacpAuthStatus) -> bool,
    ) -> MacpAuthStatus {
        wait_until(what, PATIENCE, Duration::from_millis(50), async || {
            let s = self.status(name).await;
            if done(&s) { Break(s) } else { Continue(s) }
        })
        .await
    }

    async fn event_notes(&self, name: &str, reason: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.server.client(), NS);
        events
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.note)
            .collect()
    }

    /// The token service's max TTL rendered into the Deployment.
    async fn rendered_max_ttl(&self, name: &str) -> Option<String> {
        let deployments: Api<Deployment> = Api::namespaced(self.server.client(), NS);
        let d = deployments.get(name).await.ok()?;
        d.spec?.template.spec?.containers[0]
            .env
            .clone()?
            .into_iter()
            .find(|e| e.name == "MACP_AUTH_MAX_TTL_SECONDS")?
            .value
    }

    /// Stops the operator and the cluster; the operator's RBAC refused nothing.
    async fn shutdown(self) {
        self.operator.abort();
        let _ = self.operator.await;
        self.cluster.shutdown().await;
        assert_eq!(
            self.server.forbidden(),
            vec![],
            "requests refused by the operator's RBAC"
        );
    }
}

fn condition(s: &MacpAuthStatus, type_: &str) -> Option<(String, String, String)> {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn degraded_by_invalid_spec(s: &MacpAuthStatus) -> bool {
    condition(s, "Degraded")
        .is_some_and(|(status, reason, _)| status == "True" && reason == "InvalidSpec")
}

/// When each sample was taken, and the union of kids the pods served.
type JwksSamples = Vec<(Instant, BTreeSet<String>)>;

/// Polls the JWKS of every pod of the Service, terminating and unready ones
/// included, recording the union of kids served at each sample.
struct JwksWatch {
    samples: Arc<Mutex<JwksSamples>>,
    task: JoinHandle<()>,
}

impl JwksWatch {
    const PERIOD: Duration = Duration::from_millis(100);

    fn start(pods: Arc<ApiEndpoints>) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let out = samples.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_millis(500))
                .build()
                .unwrap_or_default();
            loop {
                let mut kids = BTreeSet::new();
                for ep in pods.all_pods() {
                    let url = format!("http://{ep}/.well-known/jwks.json");
                    if let Ok(resp) = http.get(&url).send().await
                        && let Ok(v) = resp.json::<Value>().await
                    {
                        for k in v["keys"].as_array().into_iter().flatten() {
                            if let Some(kid) = k["kid"].as_str() {
                                kids.insert(kid.to_string());
                            }
                        }
                    }
                }
                out.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), kids));
                tokio::time::sleep(Self::PERIOD).await;
            }
        });
        Self { samples, task }
    }

    /// The samples so far.
    fn samples(&self) -> JwksSamples {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn stop(self) -> JwksSamples {
        self.task.abort();
        let _ = self.task.await;
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The sandbox's incident: `maxTtlSeconds` raised with `drainSeconds` pinned
/// (a spec the operator refuses; this API server, like one without the CRD's
/// CEL rules, stores it), then an emergency annotation. The suspect key
/// leaves every pod within [`WITHDRAW_BOUND`], rendered from the last valid
/// spec, while `Degraded`/`InvalidSpec` stays set.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_emergency_past_an_invalid_spec_withdraws_the_suspect_key_within_the_usual_bound() {
    let sim = Sim::start().await;
    let name = "incident";
    let spec = json!({
        "replicas": REPLICAS,
        "signingAlg": "ES256",
        "jwksCacheTtlSeconds": CACHE_TTL,
        "maxTtlSeconds": MAX_TTL,
        "defaultTtlSeconds": MAX_TTL,
        "rotation": {"prepublish": true, "drainSeconds": DRAIN, "rolloutTimeoutSeconds": 120}
    });
    let m = fixtures::macpauth(name).spec(spec).build();
    sim.api()
        .create(&PostParams::default(), &m)
        .await
        .expect("create MacpAuth");
    let before = sim
        .wait_for(name, "Ready", |s| {
            condition(s, "Ready").is_some_and(|(status, _, _)| status == "True")
                && s.rotation
                    .as_ref()
                    .is_none_or(|r| r.phase == RotationPhase::Idle)
        })
        .await;
    let suspect = before.active_kid.clone().expect("active kid");

    // The edit that makes the spec invalid.
    sim.patch(name, json!({"spec": {"maxTtlSeconds": 600}}))
        .await;
    let invalid = sim
        .wait_for(name, "Degraded InvalidSpec", degraded_by_invalid_spec)
        .await;
    assert!(
        condition(&invalid, "Degraded").is_some_and(|(_, _, m)| m.contains("drainSeconds")),
        "{invalid:#?}"
    );

    let pods = Arc::new(
        ApiEndpoints::start_on(
            sim.server.client(),
            NS,
            name,
            None,
            Duration::from_millis(100),
        )
        .await,
    );
    let watch = JwksWatch::start(pods);
    // The suspect key is served before the annotation.
    wait_until(
        "a JWKS sample",
        PATIENCE,
        JwksWatch::PERIOD,
        async || match watch.samples().last() {
            Some((_, kids)) if kids.contains(&suspect) => Break(()),
            _ => Continue(()),
        },
    )
    .await;

    let incident = format!("INC-{}", chrono::Utc::now().timestamp());
    let t0 = Instant::now();
    sim.patch(
        name,
        json!({"metadata": {"annotations": {EMERGENCY_ROTATE_ANNOTATION: incident}}}),
    )
    .await;
    let history = before.history.len();
    let after = sim
        .wait_for(name, "the emergency rotation to finish", |s| {
            s.history.len() > history
                && s.history
                    .last()
                    .is_some_and(|r| r.request_id.as_deref() == Some(incident.as_str()))
        })
        .await;
    let emergency_s = t0.elapsed().as_secs_f64();
    // Keep sampling until a few periods after no pod served the suspect.
    wait_until(
        "no pod to serve the suspect key",
        PATIENCE,
        JwksWatch::PERIOD,
        async || {
            let samples = watch.samples();
            let recent: Vec<_> = samples.iter().rev().take(5).collect();
            if recent.len() == 5
                && recent
                    .iter()
                    .all(|(_, kids)| !kids.is_empty() && !kids.contains(&suspect))
            {
                Break(())
            } else {
                Continue(())
            }
        },
    )
    .await;
    let served = watch.stop().await;
    let ttl = sim.rendered_max_ttl(name).await;
    let reasons_notes = sim.event_notes(name, "EmergencyWithLastValidSpec").await;
    let annotation = sim
        .api()
        .get(name)
        .await
        .expect("get MacpAuth")
        .metadata
        .annotations
        .and_then(|a| a.get(EMERGENCY_ROTATE_ANNOTATION).cloned());
    let end = sim.status(name).await;
    sim.shutdown().await;

    let rec = after.history.last().expect("history entry");
    assert_eq!(rec.trigger, RotationTrigger::Emergency, "{rec:?}");
    assert_eq!(rec.outcome, RotationOutcome::Succeeded, "{rec:?}");
    assert!(after.suspect_kids.contains(&suspect));
    assert_ne!(after.active_kid.as_deref(), Some(suspect.as_str()));
    assert!(!after.published_kids.contains(&suspect));
    let last_served = served
        .iter()
        .filter(|(at, kids)| *at >= t0 && kids.contains(&suspect))
        .map(|(at, _)| at.saturating_duration_since(t0))
        .max()
        .expect("the suspect key was served after the annotation");
    assert!(
        last_served <= WITHDRAW_BOUND,
        "a pod still served the suspect key {last_served:?} after the annotation (bound {WITHDRAW_BOUND:?})"
    );
    // Degraded stays: the spec is still invalid.
    assert!(degraded_by_invalid_spec(&end), "{end:#?}");
    assert!(degraded_by_invalid_spec(&after), "{after:#?}");
    assert_eq!(
        reasons_notes.len(),
        1,
        "one Warning says the emergency used the last valid spec: {reasons_notes:?}"
    );
    assert!(reasons_notes[0].contains(&incident), "{reasons_notes:?}");
    // The pods run the last valid spec, not the invalid one.
    assert_eq!(ttl.as_deref(), Some(MAX_TTL.to_string().as_str()));
    // The handled request is recorded and its annotation removed.
    assert_eq!(
        end.handled_emergency_request.as_deref(),
        Some(incident.as_str())
    );
    assert_eq!(annotation, None);
    println!(
        "e2e incident_invalid_spec: last_served_s={:.1} withdraw_bound_s={:.0} emergency_rotation_s={emergency_s:.1}",
        last_served.as_secs_f64(),
        WITHDRAW_BOUND.as_secs_f64()
    );
}
