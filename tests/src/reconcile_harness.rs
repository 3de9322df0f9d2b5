//! The real reconciler, through the real kube client, against the in-process
//! API server, for the reconciler-level tests (`tests/tests/reconcile/`). Pods
//! and Deployment status are set by hand in the store ([`crate::ready_pods`]);
//! a fake prober answers for the pods.
//!
//! The operator's client authenticates as its service account and the server
//! enforces the operator's RBAC (`rbac::grants`), namespace-scoped unless a
//! test asks for [`Mode::ClusterWide`]: a request the chart does not grant
//! fails with 403. The test's own writes (creating MacpAuths, playing other
//! field managers) go through an admin client or the store.
//!
//! Compiled with the `reconcile-harness` feature, which the crate's tests turn
//! on: it needs the operator's test fixtures, which a build of the sandbox or
//! the benchmark must not link.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use macp_auth_operator::crd::{MacpAuth, MacpAuthStatus, ROTATE_ANNOTATION, RotationPhase};
use macp_auth_operator::events::EventRecorders;
use macp_auth_operator::fixtures::{self, FakeProber};
use macp_auth_operator::keyset::Keyset;
use macp_auth_operator::metrics::Metrics;
use macp_auth_operator::reconcile::{Context, reconcile};
use macp_auth_operator::resources::{self, KEYSET_HASH_ANNOTATION};
use macp_auth_operator::{Settings, State, rbac};
use serde_json::{Value, json};

use crate::apiserver::{FakeApiServer, RecordedRequest};
use crate::ready_pods;
use crate::wait::wait_until;

/// The namespace every test object lives in.
pub const NS: &str = "auth";
/// The token service image the operator is told to run.
pub const IMAGE: &str = "registry.test/macp-auth-service:test";

/// A ceiling for the operator running on its own to get somewhere (it takes
/// well under a second), and how often the store is looked at meanwhile.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
pub const SETTLE_POLL: Duration = Duration::from_millis(50);

/// How the operator's RBAC is bound on the test server.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    ClusterWide,
    Namespaced,
}

impl Mode {
    fn rbac(self) -> rbac::Mode {
        match self {
            Mode::ClusterWide => rbac::Mode::ClusterWide,
            Mode::Namespaced => rbac::Mode::Namespaced(vec![NS.to_string()]),
        }
    }
}

/// The operator's settings for the tests: the test image, defaults elsewhere.
pub fn settings() -> Settings {
    Settings {
        service_image: IMAGE.to_string(),
        ..Settings::default()
    }
}

/// [`settings`], watching the namespaces `mode` grants.
pub fn settings_for(mode: Mode) -> Settings {
    Settings {
        watch_namespaces: match mode {
            Mode::ClusterWide => Vec::new(),
            Mode::Namespaced => vec![NS.to_string()],
        },
        ..settings()
    }
}

/// An API server enforcing the operator's RBAC, a fake prober for the pods,
/// and the reconciler's context on the operator's client.
pub struct Harness {
    pub server: FakeApiServer,
    pub prober: Arc<FakeProber>,
    pub ctx: Arc<Context>,
}

impl Harness {
    /// Namespace-scoped RBAC.
    pub async fn new() -> Self {
        Self::with_mode(Mode::Namespaced).await
    }

    pub async fn with_mode(mode: Mode) -> Self {
        Self::with_settings(mode, settings_for(mode)).await
    }

    pub async fn with_settings(mode: Mode, settings: Settings) -> Self {
        let server = FakeApiServer::start().await.unwrap();
        server.enforce_operator_rbac(&mode.rbac(), None);
        let prober = Arc::new(FakeProber::default());
        let client = server.operator_client().unwrap();
        let recorder = EventRecorders::new(
            &client,
            &Reporter {
                controller: "macp-auth-operator".into(),
                instance: None,
            },
        );
        let ctx = Arc::new(Context::new(
            client,
            settings,
            prober.clone(),
            recorder,
            Metrics::default(),
        ));
        Self {
            server,
            prober,
            ctx,
        }
    }

    /// The MacpAuths of the test namespace, through the admin client.
    pub fn api(&self) -> Api<MacpAuth> {
        Api::namespaced(self.server.client(), NS)
    }

    /// Creates MacpAuth `name` with `spec` (JSON form, CRD defaults
    /// elsewhere, except the standby: off unless `spec` sets
    /// `rotation.standby`, since these tests count the reconciler's own
    /// writes and rollouts, and a standby's preparation adds some).
    pub async fn create(&self, name: &str, spec: Value) -> MacpAuth {
        let m = fixtures::macpauth(name)
            .rotation(json!({"standby": false}))
            .spec(spec)
            .build();
        self.api().create(&PostParams::default(), &m).await.unwrap()
    }

    pub fn mauth(&self, name: &str) -> MacpAuth {
        self.server
            .get_as::<MacpAuth>(Some(NS), name)
            .unwrap()
            .unwrap()
    }

    pub fn status(&self, name: &str) -> MacpAuthStatus {
        self.mauth(name).status.unwrap_or_default()
    }

    /// The phase of the rotation in flight, `Idle` without one.
    pub fn phase(&self, name: &str) -> RotationPhase {
        self.status(name)
            .rotation
            .map(|r| r.phase)
            .unwrap_or(RotationPhase::Idle)
    }

    /// One reconciliation of the stored resource, as the controller would run it.
    pub async fn reconcile(&self, name: &str) {
        reconcile(Arc::new(self.mauth(name)), self.ctx.clone())
            .await
            .unwrap();
    }

    pub fn secret(&self, name: &str) -> Option<Secret> {
        self.server
            .get_as::<Secret>(Some(NS), &resources::secret_name(name))
            .unwrap()
    }

    /// The entry names of the Secret of `name`.
    pub fn secret_keys(&self, name: &str) -> Vec<String> {
        self.secret(name)
            .unwrap()
            .data
            .unwrap()
            .into_keys()
            .collect()
    }

    pub fn deployment(&self, name: &str) -> Option<Deployment> {
        self.server.get_as::<Deployment>(Some(NS), name).unwrap()
    }

    pub fn config_map(&self, name: &str) -> Option<ConfigMap> {
        self.server
            .get_as::<ConfigMap>(Some(NS), &resources::config_map_name(name))
            .unwrap()
    }

    pub fn keyset(&self, name: &str) -> Keyset {
        Keyset::from_secret_data(&self.secret(name).unwrap().data.unwrap()).unwrap()
    }

    /// The kids the pods of `name` serve: the active key and the published ones.
    pub fn served_kids(&self, name: &str) -> Vec<String> {
        let ks = self.keyset(name);
        let mut kids = vec![ks.active.kid.clone()];
        kids.extend(ks.published_kids());
        kids
    }

    /// Plays the Deployment controller and kubelet: every replica of the
    /// current template is up, ready, and serves `kids` (signing with the first).
    pub fn roll_out(&self, name: &str, kids: &[&str]) {
        ready_pods::roll_out(&self.server, NS, name, |ip| self.prober.serve(ip, kids))
            .expect("roll out");
    }

    /// An ES256 MacpAuth created, its pods rolled out serving its first key,
    /// and reconciled to Ready; its active kid.
    pub async fn create_ready(&self, name: &str) -> String {
        self.create_ready_with(name, es256()).await
    }

    /// [`Harness::create_ready`] with `spec`.
    pub async fn create_ready_with(&self, name: &str, spec: Value) -> String {
        self.create(name, spec).await;
        self.reconcile(name).await;
        let kid = self.keyset(name).active.kid;
        self.roll_out(name, &[&kid]);
        self.reconcile(name).await;
        assert_eq!(condition(&self.status(name), "Ready").0, "True");
        kid
    }

    /// One round with every wait of the rotation already over and the pods of
    /// the current template serving the Secret's keys.
    pub async fn round_with_waits_over(&self, name: &str) {
        let kids = self.served_kids(name);
        let refs: Vec<&str> = kids.iter().map(String::as_str).collect();
        self.roll_out(name, &refs);
        self.server
            .modify_as::<MacpAuth>(Some(NS), name, |m| {
                if let Some(r) = m.status.as_mut().and_then(|s| s.rotation.as_mut())
                    && r.wait_until.is_some()
                {
                    r.wait_until = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
                }
            })
            .unwrap();
        self.reconcile(name).await;
    }

    /// Rounds, rolling out whatever the Secret holds, until no rotation is in flight.
    pub async fn drive_to_idle(&self, name: &str) {
        for _ in 0..12 {
            if self.phase(name) == RotationPhase::Idle {
                return;
            }
            let kids = self.served_kids(name);
            let kids: Vec<&str> = kids.iter().map(String::as_str).collect();
            self.roll_out(name, &kids);
            self.reconcile(name).await;
        }
        panic!("the rotation did not finish: {:#?}", self.status(name));
    }

    /// Asks for a routine rotation, as `kubectl annotate` would, through the store.
    pub fn request_rotation(&self, name: &str, id: &str) {
        self.server
            .modify_as::<MacpAuth>(Some(NS), name, |m| {
                m.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(ROTATE_ANNOTATION.into(), id.into());
            })
            .unwrap();
    }

    /// A merge patch through the API, as `kubectl annotate` / `kubectl edit` send.
    pub async fn patch(&self, name: &str, patch: Value) {
        self.api()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// Sets (`Some`) or removes (`None`) annotation `key` through the API.
    pub async fn annotate(&self, name: &str, key: &str, value: Option<&str>) {
        self.patch(name, json!({"metadata": {"annotations": {key: value}}}))
            .await;
    }

    pub fn annotation(&self, name: &str, key: &str) -> Option<String> {
        self.mauth(name)
            .metadata
            .annotations
            .and_then(|a| a.get(key).cloned())
    }

    /// The reasons of the events published, one per event object.
    pub fn event_reasons(&self) -> Vec<String> {
        self.server
            .list("events.k8s.io", "events", Some(NS))
            .into_iter()
            .filter_map(|e| e["reason"].as_str().map(str::to_string))
            .collect()
    }

    /// The notes of the events of `reason`.
    pub fn events(&self, reason: &str) -> Vec<String> {
        self.server
            .list("events.k8s.io", "events", Some(NS))
            .into_iter()
            .filter(|e| e["reason"] == reason)
            .filter_map(|e| e["note"].as_str().map(str::to_string))
            .collect()
    }

    /// How often an event of `reason` was published: repeats of one note
    /// are aggregated into a series (`series.count`).
    pub fn occurrences(&self, reason: &str) -> u64 {
        self.server
            .list("events.k8s.io", "events", Some(NS))
            .into_iter()
            .filter(|e| e["reason"] == reason)
            .map(|e| e["series"]["count"].as_u64().unwrap_or(1))
            .sum()
    }

    /// The writes recorded since the log was last reset.
    pub fn writes(&self) -> Vec<RecordedRequest> {
        self.server
            .requests()
            .into_iter()
            .filter(RecordedRequest::is_write)
            .collect()
    }

    /// RBAC was enforced all along and refused nothing the operator sent.
    pub fn assert_rbac_covers_requests(&self) {
        assert_eq!(
            self.server.forbidden(),
            vec![],
            "requests refused by the operator's RBAC"
        );
    }

    /// The operator's controllers against this API server, with the settings of `mode`.
    pub fn spawn_operator(&self, mode: Mode, state: State) -> tokio::task::JoinHandle<()> {
        self.spawn_operator_with(settings_for(mode), state)
    }

    /// [`Harness::spawn_operator`] with `settings` of the test's own.
    pub fn spawn_operator_with(
        &self,
        settings: Settings,
        state: State,
    ) -> tokio::task::JoinHandle<()> {
        let client = self.server.operator_client().unwrap();
        tokio::spawn(macp_auth_operator::run_with_state(
            client,
            settings,
            self.prober.clone(),
            state,
            std::future::pending(),
        ))
    }

    /// Creates `name` for a running operator, rolls its pods out and waits for
    /// `Ready`; the active kid.
    pub async fn create_and_roll_out(&self, name: &str) -> String {
        self.create(name, es256()).await;
        wait_until("the Deployment", SETTLE_TIMEOUT, SETTLE_POLL, async || {
            self.deployment(name).is_some()
        })
        .await;
        let kid = self.keyset(name).active.kid;
        // The pods come up: the controller sees the Deployment and Pod changes by itself.
        self.roll_out(name, &[&kid]);
        // Settled: Ready, and the rollout seen complete (`Progressing` False
        // comes in the same or a later round than Ready).
        wait_until("Ready", SETTLE_TIMEOUT, SETTLE_POLL, async || {
            let conditions = self.status(name).conditions;
            let is = |type_: &str, status: &str| {
                conditions
                    .iter()
                    .any(|c| c.type_ == type_ && c.status == status)
            };
            if is("Ready", "True") && is("Progressing", "False") {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(conditions)
            }
        })
        .await;
        kid
    }
}

/// Condition `type_` of `s` as (status, reason, message); panics without one.
pub fn condition(s: &MacpAuthStatus, type_: &str) -> (String, String, String) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {s:?}"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

/// The pod template's spec of a Deployment.
pub fn pod_spec(d: &Deployment) -> PodSpec {
    d.spec.clone().unwrap().template.spec.unwrap()
}

/// The token service container of a Deployment.
pub fn container(d: &Deployment) -> &Container {
    &d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

/// The token service container's env vars that have a value.
pub fn container_env(d: &Deployment) -> BTreeMap<String, String> {
    container(d)
        .env
        .clone()
        .unwrap()
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

/// The keyset hash the pod template carries.
pub fn template_hash(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()[KEYSET_HASH_ANNOTATION]
        .clone()
}

/// The Secret of MacpAuth `name` holding `entries` (name, text), as someone
/// other than the operator would make it.
pub fn secret_with(entries: &[(&str, &str)], name: &str) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(resources::secret_name(name)),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// An ES256 spec with an issuer and an audience (`iss-1`, `aud-1`).
pub fn es256() -> Value {
    json!({"signingAlg": "ES256", "issuer": "iss-1", "audience": "aud-1"})
}
