//! Layer 3 (docs/architecture.md, Test layers): the real reconciler, through the real kube
//! client, against the in-process API server. Pods and Deployment status are
//! set by hand in the store; a fake prober answers for the pods.
//!
//! The operator's client authenticates as its service account and the server
//! enforces the operator's RBAC (`rbac::grants`), namespace-scoped unless a
//! test says cluster-wide: a request the chart does not grant fails with 403.
//! The test's own writes (creating MacpAuths, playing other field managers)
//! go through an admin client or the store.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Secret, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use macp_auth_e2e::apiserver::{FakeApiServer, RecordedRequest};
use macp_auth_e2e::ready_pods;
use macp_auth_e2e::wait::wait_until;
use macp_auth_operator::crd::{
    EMERGENCY_ROTATE_ANNOTATION, MacpAuth, MacpAuthStatus, ROTATE_ANNOTATION, RotationOutcome,
    RotationPhase, RotationTrigger, SigningAlg, TtlClampStatus,
};
use macp_auth_operator::events::EventRecorders;
use macp_auth_operator::fixtures::{self, FakeProber};
use macp_auth_operator::keyset::{self, Keyset, PrivateKey};
use macp_auth_operator::metrics::{Metrics, ObjectLabels};
use macp_auth_operator::reconcile::{CONFLICT_REQUEUE, Context, reconcile};
use macp_auth_operator::resources::{self, KEYSET_HASH_ANNOTATION};
use macp_auth_operator::{Settings, State, rbac};
use serde_json::json;

const NS: &str = "auth";
const IMAGE: &str = "registry.test/macp-auth-service:test";

struct Harness {
    server: FakeApiServer,
    prober: Arc<FakeProber>,
    ctx: Arc<Context>,
}

fn settings() -> Settings {
    Settings {
        service_image: IMAGE.to_string(),
        ..Settings::default()
    }
}

/// How the operator's RBAC is bound on the test server.
#[derive(Clone, Copy, Debug)]
enum Mode {
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

fn settings_for(mode: Mode) -> Settings {
    Settings {
        watch_namespaces: match mode {
            Mode::ClusterWide => Vec::new(),
            Mode::Namespaced => vec![NS.to_string()],
        },
        ..settings()
    }
}

impl Harness {
    async fn new() -> Self {
        Self::with_mode(Mode::Namespaced).await
    }

    async fn with_mode(mode: Mode) -> Self {
        Self::with_settings(mode, settings_for(mode)).await
    }

    async fn with_settings(mode: Mode, settings: Settings) -> Self {
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

    async fn create(&self, name: &str, spec: serde_json::Value) -> MacpAuth {
        let m = fixtures::macpauth(name).spec(spec).build();
        let api: Api<MacpAuth> = Api::namespaced(self.server.client(), NS);
        api.create(&PostParams::default(), &m).await.unwrap()
    }

    fn mauth(&self, name: &str) -> MacpAuth {
        self.server
            .get_as::<MacpAuth>(Some(NS), name)
            .unwrap()
            .unwrap()
    }

    fn status(&self, name: &str) -> MacpAuthStatus {
        self.mauth(name).status.unwrap_or_default()
    }

    /// One reconciliation of the stored resource, as the controller would run it.
    async fn reconcile(&self, name: &str) {
        reconcile(Arc::new(self.mauth(name)), self.ctx.clone())
            .await
            .unwrap();
    }

    fn secret(&self, name: &str) -> Option<Secret> {
        self.server
            .get_as::<Secret>(Some(NS), &resources::secret_name(name))
            .unwrap()
    }

    fn deployment(&self, name: &str) -> Option<Deployment> {
        self.server.get_as::<Deployment>(Some(NS), name).unwrap()
    }

    fn config_map(&self, name: &str) -> Option<ConfigMap> {
        self.server
            .get_as::<ConfigMap>(Some(NS), &resources::config_map_name(name))
            .unwrap()
    }

    fn keyset(&self, name: &str) -> Keyset {
        Keyset::from_secret_data(&self.secret(name).unwrap().data.unwrap()).unwrap()
    }

    /// Plays the Deployment controller and kubelet: every replica of the
    /// current template is up, ready, and serves `kids`.
    fn roll_out(&self, name: &str, kids: &[&str]) {
        ready_pods::roll_out(&self.server, NS, name, |ip| self.prober.serve(ip, kids))
            .expect("roll out");
    }

    /// An ES256 MacpAuth created, its pods rolled out serving its first key,
    /// and reconciled to Ready; its active kid.
    async fn create_ready(&self, name: &str) -> String {
        self.create(name, es256()).await;
        self.reconcile(name).await;
        let kid = self.keyset(name).active.kid;
        self.roll_out(name, &[&kid]);
        self.reconcile(name).await;
        kid
    }

    fn event_reasons(&self) -> Vec<String> {
        self.server
            .list("events.k8s.io", "events", Some(NS))
            .into_iter()
            .filter_map(|e| e["reason"].as_str().map(str::to_string))
            .collect()
    }

    fn writes(&self) -> Vec<RecordedRequest> {
        self.server
            .requests()
            .into_iter()
            .filter(RecordedRequest::is_write)
            .collect()
    }

    /// RBAC was enforced all along and refused nothing the operator sent.
    fn assert_rbac_covers_requests(&self) {
        assert_eq!(
            self.server.forbidden(),
            vec![],
            "requests refused by the operator's RBAC"
        );
    }
}

fn condition(s: &MacpAuthStatus, type_: &str) -> (String, String, String) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {s:?}"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

/// The token service container of a Deployment.
fn container(d: &Deployment) -> &Container {
    &d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

fn container_env(d: &Deployment) -> BTreeMap<String, String> {
    container(d)
        .env
        .clone()
        .unwrap()
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

fn template_hash(d: &Deployment) -> String {
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

fn secret_with(entries: &[(&str, &str)], name: &str) -> Secret {
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

const ES256: &str = r#"{"signingAlg": "ES256", "issuer": "iss-1", "audience": "aud-1"}"#;

fn es256() -> serde_json::Value {
    serde_json::from_str(ES256).unwrap()
}

/// MacpAuths on the same schedule start their rotations at their own places
/// in the window before it falls due, never after. The due moment comes from
/// the test's own clock: one interval after the first key was made, which
/// happened between the create and the end of the first reconcile. The
/// window before it is the documented early start (a tenth of the interval)
/// plus the time the next key needs to sign on every pod, at most the
/// spec's cache TTL and a minute of slack for propagation, and three rollout
/// timeouts (publish, activate, and the one that activated the current key).
#[tokio::test]
async fn the_same_interval_schedules_each_macpauth_at_its_own_place_before_the_due_moment() {
    let h = Harness::new().await;
    let interval = chrono::Duration::hours(1);
    let (cache_ttl, rollout_timeout) = (60, 60);
    let mut spec = es256();
    spec["jwksCacheTtlSeconds"] = json!(cache_ttl);
    // A drain (the longest token plus the verifier's leeway) that fits the hour.
    spec["maxTtlSeconds"] = json!(300);
    spec["defaultTtlSeconds"] = json!(300);
    // Propagation waits at most the cache TTL and a minute, verifier evidence included.
    spec["rotation"] = json!({
        "interval": "1h",
        "prepublish": true,
        "rolloutTimeoutSeconds": rollout_timeout,
        "propagationTimeoutSeconds": cache_ttl + 60
    });
    let window = interval / 10 + chrono::Duration::seconds(cache_ttl + 60 + 3 * rollout_timeout);
    let mut scheduled = Vec::new();
    for name in ["auth-a", "auth-b", "auth-c"] {
        let before = chrono::Utc::now();
        h.create(name, spec.clone()).await;
        h.reconcile(name).await;
        let after = chrono::Utc::now();
        let status = h.status(name);
        let next = status
            .next_rotation_time
            .unwrap_or_else(|| panic!("{name}: no nextRotationTime: {status:#?}"));
        // The due moment lies in [before + interval, after + interval].
        assert!(
            next < before + interval,
            "{name}: {next} is not before the due moment (from {})",
            before + interval
        );
        assert!(
            next >= before + interval - window,
            "{name}: {next} is more than {window} before the due moment (from {})",
            before + interval
        );
        assert!(
            after - before < chrono::Duration::seconds(5),
            "{name}: slow reconcile"
        );
        scheduled.push(next);
    }
    // Each at its own place: further apart than the clock's uncertainty.
    scheduled.sort();
    for pair in scheduled.windows(2) {
        assert!(
            pair[1] - pair[0] > chrono::Duration::seconds(5),
            "two MacpAuths share a start: {scheduled:?}"
        );
    }
}

#[tokio::test]
async fn create_writes_the_key_first_then_the_objects_then_becomes_ready() {
    let h = Harness::new().await;
    h.create("a", es256()).await;
    h.server.reset_log();
    h.reconcile("a").await;

    // The Secret is written and read back before anything that refers to it.
    let log = h.server.requests();
    let first_secret_write = log
        .iter()
        .position(|r| r.resource == "secrets" && r.is_write())
        .expect("secret written");
    let confirm = log
        .iter()
        .skip(first_secret_write + 1)
        .position(|r| r.resource == "secrets" && r.verb == "get")
        .expect("secret read back")
        + first_secret_write
        + 1;
    let first_deploy_write = log
        .iter()
        .position(|r| r.resource == "deployments" && r.is_write())
        .expect("deployment written");
    assert!(
        first_secret_write < confirm && confirm < first_deploy_write,
        "{log:#?}"
    );

    let ks = h.keyset("a");
    let kid = ks.active.kid.clone();
    assert!(kid.starts_with("a-"), "{kid}");
    assert_eq!(ks.active.alg, SigningAlg::ES256);
    assert!(ks.published.is_empty());

    let d = h.deployment("a").unwrap();
    assert_eq!(template_hash(&d), keyset::keyset_hash(&kid, &[]));
    let env = container_env(&d);
    assert_eq!(env["MACP_AUTH_ISSUER"], "iss-1");
    assert_eq!(env["MACP_AUTH_SIGNING_ALG"], "ES256");
    assert_eq!(container(&d).image.as_deref(), Some(IMAGE));
    let svc = h.server.get_as::<Service>(Some(NS), "a").unwrap().unwrap();
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 3200);
    let cm = h.config_map("a").unwrap().data.unwrap();
    assert_eq!(
        cm["MACP_AUTH_JWKS_URL"],
        "http://a.auth.svc:3200/.well-known/jwks.json"
    );
    assert_eq!(cm["MACP_AUTH_ISSUER"], "iss-1");
    let uid = h.mauth("a").metadata.uid.unwrap();
    for meta in [
        h.secret("a").unwrap().metadata,
        d.metadata.clone(),
        svc.metadata,
        h.config_map("a").unwrap().metadata,
    ] {
        let owners = meta.owner_references.unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].uid.as_str(), owners[0].controller),
            (uid.as_str(), Some(true))
        );
    }

    let s = h.status("a");
    assert_eq!(s.active_kid.as_deref(), Some(kid.as_str()));
    assert_eq!(s.observed_generation, Some(1));
    assert_eq!(condition(&s, "Ready").0, "False");
    assert_eq!(condition(&s, "Degraded").0, "False");
    assert!(h.event_reasons().contains(&"KeyCreated".to_string()));
    assert_eq!(s.history.len(), 1);

    // Rollout completes, every pod serves the active kid: Ready.
    h.roll_out("a", &[&kid]);
    h.reconcile("a").await;
    let s = h.status("a");
    let (ready, reason, message) = condition(&s, "Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("True", "Verified"),
        "{message}"
    );
    assert_eq!(condition(&s, "Progressing").1, "RolloutComplete");

    // A pod that does not serve the active kid is not Ready.
    h.prober.serve("10.0.0.2", &["someone-else"]);
    h.reconcile("a").await;
    let (ready, reason, message) = condition(&h.status("a"), "Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "ActiveKeyNotServed")
    );
    assert!(message.contains("a-1"), "{message}");
    h.prober.serve("10.0.0.2", &[&kid]);
    h.reconcile("a").await;
    assert_eq!(condition(&h.status("a"), "Ready").0, "True");

    // An unchanged resource reconciles with zero writes.
    h.server.reset_log();
    h.reconcile("a").await;
    h.reconcile("a").await;
    assert_eq!(h.writes(), vec![], "an unchanged MacpAuth must not write");
    assert_eq!(h.keyset("a").active.kid, kid);
    h.assert_rbac_covers_requests();
}

#[tokio::test]
async fn rsa_first_key_uses_the_requested_size() {
    let h = Harness::new().await;
    h.create("r", json!({"rsaKeyBits": 3072})).await;
    h.reconcile("r").await;
    let ks = h.keyset("r");
    assert_eq!(ks.active.alg, SigningAlg::RS256);
    assert_eq!(ks.active.rsa_bits, Some(3072));
    assert_eq!(
        container_env(&h.deployment("r").unwrap())["MACP_AUTH_SIGNING_ALG"],
        "RS256"
    );
}

/// RSA key generation runs off the async workers. The test's runtime has a
/// single worker thread, which also serves the API server: a key generated
/// on it would freeze every other task (other MacpAuths' rounds, the
/// watches) for as long as the key takes. A ticker on the same thread
/// measures the longest stall while four RSA-4096 first keys are made one
/// after the other.
///
/// The bound comes from the same run: each key takes hundreds of ms to
/// seconds, so a stall of a whole key is at least a quarter of the window,
/// while a free worker stalls for a round's synchronous parts only.
#[tokio::test(flavor = "current_thread")]
async fn key_generation_leaves_the_async_worker_free() {
    let h = Harness::new().await;
    let names = ["k1", "k2", "k3", "k4"];
    for name in names {
        h.create(name, json!({"rsaKeyBits": 4096})).await;
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let ticker = async {
        let mut longest = Duration::ZERO;
        let mut last = std::time::Instant::now();
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            longest = longest.max(last.elapsed());
            last = std::time::Instant::now();
        }
        longest
    };
    let work = async {
        let started = std::time::Instant::now();
        for name in names {
            h.reconcile(name).await;
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        started.elapsed()
    };
    let (longest_stall, window) = tokio::join!(ticker, work);
    for name in names {
        assert_eq!(h.keyset(name).active.rsa_bits, Some(4096));
    }
    assert!(
        longest_stall * 8 < window,
        "the async worker stalled for {longest_stall:?} while four keys took {window:?}"
    );
}

#[tokio::test]
async fn an_existing_secret_is_adopted_not_regenerated() {
    let h = Harness::new().await;
    let key = PrivateKey::generate(SigningAlg::ES256, "pinned-1", 2048).unwrap();
    let text = serde_json::to_string_pretty(key.public_jwk()).unwrap();
    // The private text as a human pasted it (pretty-printed).
    let private = serde_json::to_string_pretty(
        &serde_json::from_slice::<serde_json::Value>(
            &Keyset::initial(key.clone()).to_secret_data()[keyset::ACTIVE].0,
        )
        .unwrap(),
    )
    .unwrap();
    assert_ne!(private, text);
    h.server
        .create_as(&secret_with(&[(keyset::ACTIVE, &private)], "b"))
        .unwrap();
    h.create("b", es256()).await;
    h.server.reset_log();
    h.reconcile("b").await;

    let secret = h.secret("b").unwrap();
    let data = secret.data.clone().unwrap();
    assert_eq!(
        data[keyset::ACTIVE].0,
        private.as_bytes(),
        "active key bytes untouched"
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&data[keyset::PUBLISHED].0).unwrap(),
        json!({"keys": []})
    );
    assert_eq!(secret.metadata.owner_references.unwrap().len(), 1);
    assert_eq!(h.status("b").active_kid.as_deref(), Some("pinned-1"));
    assert_eq!(
        template_hash(&h.deployment("b").unwrap()),
        keyset::keyset_hash("pinned-1", &[])
    );
    assert!(h.event_reasons().contains(&"KeyAdopted".to_string()));
    assert!(!h.event_reasons().contains(&"KeyCreated".to_string()));

    // Deleting the Deployment: recreated with the same key.
    h.server.delete_as::<Deployment>(Some(NS), "b").unwrap();
    h.reconcile("b").await;
    assert_eq!(
        template_hash(&h.deployment("b").unwrap()),
        keyset::keyset_hash("pinned-1", &[])
    );
    assert_eq!(h.keyset("b").active.kid, "pinned-1");
    let adopted = h
        .event_reasons()
        .iter()
        .filter(|r| *r == "KeyAdopted")
        .count();
    assert_eq!(adopted, 1, "adoption is announced once");
    h.assert_rbac_covers_requests();
}

#[tokio::test]
async fn spec_changes_roll_the_deployment_and_update_the_config_map() {
    let h = Harness::new().await;
    let kid = h.create_ready("c").await;
    assert_eq!(condition(&h.status("c"), "Ready").0, "True");
    let before = h.deployment("c").unwrap();

    h.server
        .modify_as::<MacpAuth>(Some(NS), "c", |m| {
            m.spec.issuer = "iss-2".into();
            m.spec.audience = "aud-2".into();
            m.spec.max_ttl_seconds = 900;
            m.spec.default_ttl_seconds = 60;
            m.spec.replicas = 3;
            m.spec.image = Some("registry.test/other:2".into());
            m.spec.jwks_cache_ttl_seconds = 30;
        })
        .unwrap();
    h.server.reset_log();
    h.reconcile("c").await;

    let d = h.deployment("c").unwrap();
    assert!(d.metadata.generation > before.metadata.generation);
    let env = container_env(&d);
    assert_eq!(env["MACP_AUTH_ISSUER"], "iss-2");
    assert_eq!(env["MACP_AUTH_AUDIENCE"], "aud-2");
    assert_eq!(env["MACP_AUTH_MAX_TTL_SECONDS"], "900");
    assert_eq!(env["MACP_AUTH_DEFAULT_TTL_SECONDS"], "60");
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(
        container(&d).image.as_deref(),
        Some("registry.test/other:2")
    );
    let cm = h.config_map("c").unwrap().data.unwrap();
    assert_eq!(cm["MACP_AUTH_ISSUER"], "iss-2");
    assert_eq!(cm["MACP_AUTH_AUDIENCE"], "aud-2");
    assert_eq!(cm["MACP_AUTH_JWKS_TTL_SECS"], "30");
    // Same key, no Secret write; the pods roll while the old ones keep serving.
    assert_eq!(h.keyset("c").active.kid, kid);
    assert!(
        h.writes().iter().all(|w| w.resource != "secrets"),
        "{:?}",
        h.writes()
    );
    let s = h.status("c");
    assert_eq!(s.observed_generation, Some(2));
    assert_eq!(condition(&s, "Ready").0, "True");
    assert_eq!(condition(&s, "Progressing").0, "True");
    h.roll_out("c", &[&kid]);
    h.reconcile("c").await;
    assert_eq!(condition(&h.status("c"), "Ready").0, "True");
    h.assert_rbac_covers_requests();
}

#[tokio::test]
async fn a_corrupted_secret_is_reported_and_never_overwritten() {
    let h = Harness::new().await;
    let original = secret_with(
        &[(keyset::ACTIVE, "{\"kty\": \"RSA\", \"n\": \"trunc")],
        "d",
    );
    h.server.create_as(&original).unwrap();
    h.create("d", es256()).await;
    h.server.reset_log();
    h.reconcile("d").await;

    let s = h.status("d");
    let (degraded, reason, message) = condition(&s, "Degraded");
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "InvalidSigningKey")
    );
    assert!(message.contains("active.jwk.json"), "{message}");
    assert_eq!(condition(&s, "Ready").0, "False");
    assert_eq!(
        h.secret("d").unwrap().data,
        original.data,
        "Secret untouched"
    );
    assert!(
        h.deployment("d").is_none(),
        "no Deployment for an unusable key"
    );
    let writes = h.writes();
    assert!(
        writes
            .iter()
            .all(|w| w.resource == "macpauths/status" || w.resource == "events"),
        "{writes:?}"
    );
    assert_eq!(h.event_reasons(), vec!["InvalidSigningKey"]);

    // Reported once: the next round writes nothing.
    h.server.reset_log();
    h.reconcile("d").await;
    assert_eq!(h.writes(), vec![]);

    // A human repairs the Secret: the key is adopted and Degraded clears.
    let key = PrivateKey::generate(SigningAlg::ES256, "fixed-1", 2048).unwrap();
    let data = Keyset::initial(key).to_secret_data();
    h.server
        .modify_as::<Secret>(Some(NS), &resources::secret_name("d"), |s| {
            s.data = Some(data)
        })
        .unwrap();
    h.reconcile("d").await;
    let s = h.status("d");
    assert_eq!(condition(&s, "Degraded").0, "False");
    assert_eq!(s.active_kid.as_deref(), Some("fixed-1"));
    assert!(h.deployment("d").is_some());
    h.assert_rbac_covers_requests();
}

#[tokio::test]
async fn a_secret_without_its_active_key_is_degraded_not_regenerated() {
    let h = Harness::new().await;
    h.create("e", es256()).await;
    h.reconcile("e").await;
    let kid = h.keyset("e").active.kid;
    let hash_before = template_hash(&h.deployment("e").unwrap());
    // Someone removes active.jwk.json.
    h.server
        .modify_as::<Secret>(Some(NS), &resources::secret_name("e"), |s| {
            s.data.as_mut().unwrap().remove(keyset::ACTIVE);
        })
        .unwrap();
    let secret_before = h.secret("e").unwrap();
    h.server.reset_log();
    h.reconcile("e").await;
    let (degraded, reason, message) = condition(&h.status("e"), "Degraded");
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "MissingSigningKey")
    );
    assert!(message.contains("never regenerates"), "{message}");
    assert_eq!(h.secret("e").unwrap().data, secret_before.data);
    assert_eq!(template_hash(&h.deployment("e").unwrap()), hash_before);
    assert!(
        h.writes()
            .iter()
            .all(|w| !matches!(w.resource.as_str(), "secrets" | "deployments")),
        "{:?}",
        h.writes()
    );
    assert_eq!(h.status("e").active_kid.as_deref(), Some(kid.as_str()));
    h.assert_rbac_covers_requests();
}

#[tokio::test]
async fn an_invalid_spec_is_degraded_and_changes_nothing() {
    let h = Harness::new().await;
    h.create(
        "f",
        json!({"signingAlg": "ES256", "maxTtlSeconds": 60, "defaultTtlSeconds": 120}),
    )
    .await;
    h.reconcile("f").await;
    let (degraded, reason, message) = condition(&h.status("f"), "Degraded");
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(message.contains("defaultTtlSeconds (120)"), "{message}");
    assert!(h.secret("f").is_none() && h.deployment("f").is_none());

    h.server
        .modify_as::<MacpAuth>(Some(NS), "f", |m| m.spec.default_ttl_seconds = 30)
        .unwrap();
    h.reconcile("f").await;
    assert_eq!(condition(&h.status("f"), "Degraded").0, "False");
    assert!(h.secret("f").is_some() && h.deployment("f").is_some());
}

#[tokio::test]
async fn a_stalled_rollout_is_degraded() {
    let h = Harness::new().await;
    h.create("g", es256()).await;
    h.reconcile("g").await;
    h.server
        .modify_as::<Deployment>(Some(NS), "g", |d| {
            d.status = Some(
                serde_json::from_value(json!({
                    "observedGeneration": d.metadata.generation, "replicas": 2, "updatedReplicas": 1,
                    "conditions": [{"type": "Progressing", "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": "ReplicaSet \"g-1\" has timed out progressing."}]
                }))
                .unwrap(),
            );
        })
        .unwrap();
    h.reconcile("g").await;
    let (degraded, reason, message) = condition(&h.status("g"), "Degraded");
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "ProgressDeadlineExceeded")
    );
    assert!(message.contains("timed out"), "{message}");
    assert!(
        h.event_reasons()
            .contains(&"ProgressDeadlineExceeded".to_string())
    );
    let (progressing, reason, _) = condition(&h.status("g"), "Progressing");
    assert_eq!(
        (progressing.as_str(), reason.as_str()),
        ("False", "ProgressDeadlineExceeded")
    );
}

/// A ceiling for the operator running on its own to get somewhere (it takes
/// well under a second), and how often the store is looked at meanwhile.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
const SETTLE_POLL: Duration = Duration::from_millis(50);

#[tokio::test]
async fn the_controller_survives_a_restart_with_the_same_key_and_no_writes() {
    controller_restart(Mode::Namespaced).await;
}

#[tokio::test]
async fn the_controller_survives_a_restart_with_cluster_wide_rbac() {
    controller_restart(Mode::ClusterWide).await;
}

async fn controller_restart(mode: Mode) {
    let h = Harness::with_mode(mode).await;
    if let Mode::ClusterWide = mode {
        // A lagging informer cache: every watch event arrives 300 ms late, so
        // rounds start from MacpAuths a write or two old.
        h.server.set_watch_delay(Duration::from_millis(300));
    }
    let first = State::default();
    let task = spawn_operator(&h, mode, first.clone());
    let kid = create_and_roll_out(&h, "h").await;
    assert!(first.is_ready());

    // Crash: abort the task mid-flight, then start a fresh operator.
    task.abort();
    let _ = task.await;
    h.server.reset_log();
    let second = State::default();
    let task = spawn_operator(&h, mode, second.clone());
    wait_until(
        "the new operator's first reconcile",
        SETTLE_TIMEOUT,
        SETTLE_POLL,
        async || second.is_ready() && second.metrics.reconciles.get() >= 1,
    )
    .await;
    // Let it settle through any watch-triggered rounds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.writes(), vec![], "a restarted operator must not write");
    assert_eq!(h.keyset("h").active.kid, kid);
    assert_eq!(condition(&h.status("h"), "Ready").0, "True");
    h.assert_rbac_covers_requests();
    task.abort();
}

/// The operator's controllers against the harness's API server.
fn spawn_operator(h: &Harness, mode: Mode, state: State) -> tokio::task::JoinHandle<()> {
    spawn_operator_with(h, settings_for(mode), state)
}

/// [`spawn_operator`] with `settings` of the test's own.
fn spawn_operator_with(
    h: &Harness,
    settings: Settings,
    state: State,
) -> tokio::task::JoinHandle<()> {
    let client = h.server.operator_client().unwrap();
    tokio::spawn(macp_auth_operator::run_with_state(
        client,
        settings,
        h.prober.clone(),
        state,
        std::future::pending(),
    ))
}

/// Creates `name` for a running operator, rolls its pods out and waits for
/// `Ready`; the active kid.
async fn create_and_roll_out(h: &Harness, name: &str) -> String {
    h.create(name, es256()).await;
    wait_until("the Deployment", SETTLE_TIMEOUT, SETTLE_POLL, async || {
        h.deployment(name).is_some()
    })
    .await;
    let kid = h.keyset(name).active.kid;
    // The pods come up: the controller sees the Deployment and Pod changes by itself.
    h.roll_out(name, &[&kid]);
    wait_until("Ready", SETTLE_TIMEOUT, SETTLE_POLL, async || {
        let conditions = h.status(name).conditions;
        if conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
        {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(conditions)
        }
    })
    .await;
    kid
}

/// kube's scheduler adds the reconcile debounce to every request, timers
/// included. The operator asks for its timers that much earlier, so a round
/// requeued for 5 s (not Ready: the pods never come) runs 5 s after the
/// last, not 5 s plus the debounce (3 s here: 8 s).
#[tokio::test]
async fn timer_rounds_run_when_asked_not_a_debounce_later() {
    let h = Harness::new().await;
    let settings = Settings {
        reconcile_debounce: Duration::from_secs(3),
        ..settings_for(Mode::Namespaced)
    };
    let state = State::default();
    let task = spawn_operator_with(&h, settings, state.clone());
    h.create("t", es256()).await;
    // The creation rounds (the create, then the echoes of the operator's own
    // writes) come first; then only the not-Ready timer brings rounds.
    let mut rounds_at = Vec::new();
    let mut seen = 0;
    while rounds_at.len() < 4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let count = state.metrics.reconciles.get();
        if count > seen {
            seen = count;
            rounds_at.push(std::time::Instant::now());
        }
        assert!(
            rounds_at
                .first()
                .is_none_or(|t| t.elapsed() < Duration::from_secs(60)),
            "too few rounds: {rounds_at:?}"
        );
    }
    let last_gap = rounds_at[3] - rounds_at[2];
    assert!(
        last_gap >= Duration::from_millis(4_900) && last_gap < Duration::from_millis(6_500),
        "a 5 s timer with a 3 s debounce came after {last_gap:?} (8 s: the debounce was paid)"
    );
    task.abort();
}

/// The running operator compares the Service and ConfigMap with its watch
/// caches: a round costs no read of them while they match, and a drift made
/// by someone else, seen late through a lagging watch, is still repaired.
#[tokio::test]
async fn unchanged_services_and_config_maps_cost_no_reads_and_drift_is_repaired() {
    let h = Harness::new().await;
    h.server.set_watch_delay(Duration::from_millis(300));
    let state = State::default();
    let task = spawn_operator(&h, Mode::Namespaced, state.clone());
    create_and_roll_out(&h, "c").await;
    let cm_name = resources::config_map_name("c");
    // Rounds run on annotation changes; the caches may lag the operator's
    // own writes at first, so a few rounds may still read. One that does not
    // shows the cache in use (without it every round reads both).
    let mut reads = Vec::new();
    for attempt in 0..20 {
        let rounds = state.metrics.reconciles.get();
        h.server.reset_log();
        h.server
            .modify("macp.io", "macpauths", Some(NS), "c", |m| {
                m["metadata"]["annotations"]["example.com/touched"] = json!(attempt.to_string());
            })
            .unwrap();
        wait_until("a round", SETTLE_TIMEOUT, SETTLE_POLL, async || {
            state.metrics.reconciles.get() > rounds
        })
        .await;
        reads = h
            .server
            .requests()
            .iter()
            .filter(|r| r.verb == "get")
            .map(|r| r.resource.clone())
            .collect();
        assert!(
            reads.iter().any(|r| r == "secrets"),
            "a round ran: {reads:?}"
        );
        if !reads.iter().any(|r| r == "services" || r == "configmaps") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !reads.iter().any(|r| r == "services" || r == "configmaps"),
        "an unchanged Service or ConfigMap is read from the cache: {reads:?}"
    );

    // Someone else edits both (server-side apply then adds back what the
    // operator owns; what the other writer added stays theirs).
    let ports = |h: &Harness| -> Vec<i32> {
        let service = h.server.get_as::<Service>(Some(NS), "c").unwrap().unwrap();
        service
            .spec
            .unwrap()
            .ports
            .unwrap()
            .iter()
            .map(|p| p.port)
            .collect()
    };
    let port = ports(&h)[0];
    let data = h.config_map("c").unwrap().data.unwrap();
    h.server
        .modify("", "services", Some(NS), "c", |s| {
            s["spec"]["ports"][0]["port"] = json!(port + 1);
        })
        .unwrap();
    h.server
        .modify("", "configmaps", Some(NS), &cm_name, |c| {
            c["data"] = json!({"edited": "by hand"});
        })
        .unwrap();
    wait_until(
        "the drift repaired",
        SETTLE_TIMEOUT,
        SETTLE_POLL,
        async || {
            let live_ports = ports(&h);
            let live_data = h.config_map("c").unwrap().data.unwrap_or_default();
            let restored = data.iter().all(|(k, v)| live_data.get(k) == Some(v));
            if live_ports.contains(&port) && restored {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue((live_ports, live_data))
            }
        },
    )
    .await;
    task.abort();
}

fn pod_spec(d: &Deployment) -> k8s_openapi::api::core::v1::PodSpec {
    d.spec.clone().unwrap().template.spec.unwrap()
}

#[tokio::test]
async fn caller_auth_rate_limit_and_audit_are_rendered_and_are_not_a_rotation() {
    let h = Harness::new().await;
    let mut spec = es256();
    spec["callerAuth"] = json!({"secretName": "minters"});
    spec["rateLimit"] = json!({"perSecond": 25, "burst": 50});
    spec["audit"] = json!({"enabled": true});
    h.create("ca", spec).await;
    h.reconcile("ca").await;
    let kid = h.keyset("ca").active.kid;

    let d = h.deployment("ca").unwrap();
    let env = container_env(&d);
    assert_eq!(
        env["MACP_AUTH_MINT_TOKENS_FILE"],
        "/etc/macp-auth/callers/tokens"
    );
    assert_eq!(env["MACP_AUTH_RATE_LIMIT_PER_SECOND"], "25");
    assert_eq!(env["MACP_AUTH_RATE_LIMIT_BURST"], "50");
    assert_eq!(env["MACP_AUTH_AUDIT_LOG"], "stdout");
    let ps = pod_spec(&d);
    // After the signing keys' volume.
    let volume = &ps.volumes.as_ref().unwrap()[1];
    let source = volume.secret.as_ref().unwrap();
    assert_eq!(source.secret_name.as_deref(), Some("minters"));
    let items = source.items.as_ref().unwrap();
    assert_eq!(
        (items.len(), items[0].key.as_str(), items[0].mode),
        (1, "tokens", Some(0o440))
    );
    let mount = &ps.containers[0].volume_mounts.as_ref().unwrap()[1];
    assert_eq!(
        (
            mount.name.as_str(),
            mount.mount_path.as_str(),
            mount.read_only
        ),
        (volume.name.as_str(), "/etc/macp-auth/callers", Some(true))
    );
    // The kubelet mounts the callers Secret: the operator never asks for it.
    assert!(
        h.server
            .requests()
            .iter()
            .all(|r| !(r.resource == "secrets" && r.name.as_deref() == Some("minters"))),
        "the operator touched the callers Secret"
    );
    h.roll_out("ca", &[&kid]);
    h.reconcile("ca").await;
    assert_eq!(condition(&h.status("ca"), "Ready").0, "True");
    let history = h.status("ca").history.len();

    // Turning them off rolls the pods but is no key rotation.
    h.server
        .modify_as::<MacpAuth>(Some(NS), "ca", |m| {
            m.spec.caller_auth = None;
            m.spec.rate_limit = None;
            m.spec.audit = None;
        })
        .unwrap();
    h.server.reset_log();
    h.reconcile("ca").await;
    let d = h.deployment("ca").unwrap();
    let env = container_env(&d);
    for var in [
        "MACP_AUTH_MINT_TOKENS_FILE",
        "MACP_AUTH_RATE_LIMIT_PER_SECOND",
        "MACP_AUTH_RATE_LIMIT_BURST",
        "MACP_AUTH_AUDIT_LOG",
    ] {
        assert!(!env.contains_key(var), "{var} still rendered");
    }
    let ps = pod_spec(&d);
    // Only the signing keys' volume is left.
    let names = |v: Vec<String>| v;
    assert_eq!(
        names(
            ps.volumes
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.name)
                .collect()
        ),
        [resources::SIGNING_KEYS_VOLUME]
    );
    assert_eq!(
        names(
            ps.containers[0]
                .volume_mounts
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|m| m.name)
                .collect()
        ),
        [resources::SIGNING_KEYS_VOLUME]
    );
    assert_eq!(h.keyset("ca").active.kid, kid);
    assert_eq!(template_hash(&d), keyset::keyset_hash(&kid, &[]));
    assert!(
        h.writes().iter().all(|w| w.resource != "secrets"),
        "{:?}",
        h.writes()
    );
    let s = h.status("ca");
    assert_eq!(s.history.len(), history);
    assert!(s.rotation.is_none_or(|r| r.phase == RotationPhase::Idle));
    h.assert_rbac_covers_requests();
}

#[tokio::test]
async fn an_emergency_rotation_clamps_the_max_ttl_then_restores_it() {
    let h = Harness::new().await;
    let mut spec = es256();
    spec["maxTtlSeconds"] = json!(3600);
    spec["defaultTtlSeconds"] = json!(900);
    spec["rotation"] = json!({"drainSeconds": 3660});
    spec["emergency"] = json!({"maxTtlSeconds": 300});
    h.create("em", spec).await;
    h.reconcile("em").await;
    let old = h.keyset("em").active.kid;
    h.roll_out("em", &[&old]);
    h.reconcile("em").await;
    assert_eq!(condition(&h.status("em"), "Ready").0, "True");
    let ttls = |h: &Harness| {
        let env = container_env(&h.deployment("em").unwrap());
        (
            env["MACP_AUTH_MAX_TTL_SECONDS"].clone(),
            env["MACP_AUTH_DEFAULT_TTL_SECONDS"].clone(),
        )
    };
    assert_eq!(ttls(&h), ("3600".into(), "900".into()));

    // The incident: an emergency rotation is requested.
    h.server
        .modify_as::<MacpAuth>(Some(NS), "em", |m| {
            m.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(EMERGENCY_ROTATE_ANNOTATION.into(), "INC-7".into());
        })
        .unwrap();
    h.reconcile("em").await;
    let s = h.status("em");
    let rot = s.rotation.clone().unwrap();
    assert_eq!(rot.trigger, Some(RotationTrigger::Emergency));
    assert_ne!(rot.phase, RotationPhase::Idle);
    // Clamped from the round the emergency starts in.
    assert_eq!(ttls(&h), ("300".into(), "300".into()));
    assert_eq!(
        s.emergency_ttl_clamp,
        Some(TtlClampStatus {
            max_ttl_seconds: 300,
            until: None
        })
    );
    assert!(h.event_reasons().contains(&"EmergencyTtlClamp".to_string()));

    let verify_failures = |h: &Harness| {
        h.ctx
            .metrics
            .rotation_verify_failures
            .get_or_create(&ObjectLabels {
                namespace: NS.into(),
                name: "em".into(),
            })
            .get()
    };
    // Drive the emergency to its end: the fresh key signs, the suspect one is gone.
    let mut rounds = 0;
    while h
        .status("em")
        .rotation
        .is_some_and(|r| r.phase != RotationPhase::Idle)
    {
        rounds += 1;
        assert!(
            rounds < 10,
            "emergency did not finish: {:?}",
            h.status("em")
        );
        let ks = h.keyset("em");
        let phase = h.status("em").rotation.map(|r| r.phase);
        if phase == Some(RotationPhase::Activating) && verify_failures(&h) == 0 {
            // Both pods come up still serving the suspect key: a failed
            // verification each, counted, and the emergency keeps trying.
            h.roll_out("em", &[&old]);
            h.reconcile("em").await;
            assert_eq!(verify_failures(&h), 2);
            assert_eq!(ttls(&h), ("300".into(), "300".into()));
            continue;
        }
        h.roll_out("em", &[&ks.active.kid]);
        h.reconcile("em").await;
        // Clamped through every phase.
        assert_eq!(ttls(&h), ("300".into(), "300".into()));
    }
    assert_eq!(
        verify_failures(&h),
        2,
        "no failure after the pods are right"
    );
    let s = h.status("em");
    let new = h.keyset("em").active.kid;
    assert_ne!(new, old);
    let record = s.history.last().unwrap();
    assert_eq!(
        (record.trigger, record.request_id.as_deref()),
        (RotationTrigger::Emergency, Some("INC-7"))
    );
    // Still clamped for drainSeconds after it finished.
    let until = record.finished_at + chrono::Duration::seconds(3660);
    assert_eq!(
        s.emergency_ttl_clamp,
        Some(TtlClampStatus {
            max_ttl_seconds: 300,
            until: Some(until)
        })
    );
    h.roll_out("em", &[&new]);
    h.reconcile("em").await;
    assert_eq!(ttls(&h), ("300".into(), "300".into()));
    assert_eq!(condition(&h.status("em"), "Ready").0, "True");

    // drainSeconds pass (moved into the past instead of waiting): the operator
    // restores the normal TTLs by itself, with no key change.
    h.server
        .modify_as::<MacpAuth>(Some(NS), "em", |m| {
            let s = m.status.as_mut().unwrap();
            for r in s.history.iter_mut() {
                r.started_at -= chrono::Duration::seconds(3661);
                r.finished_at -= chrono::Duration::seconds(3661);
            }
            if let Some(t) = s.last_rotation_time.as_mut() {
                *t -= chrono::Duration::seconds(3661);
            }
        })
        .unwrap();
    h.server.reset_log();
    h.reconcile("em").await;
    assert_eq!(ttls(&h), ("3600".into(), "900".into()));
    let s = h.status("em");
    assert_eq!(s.emergency_ttl_clamp, None);
    assert_eq!(s.active_kid.as_deref(), Some(new.as_str()));
    assert!(
        h.event_reasons()
            .contains(&"EmergencyTtlRestored".to_string())
    );
    assert!(
        h.writes().iter().all(|w| w.resource != "secrets"),
        "restoring the TTLs is no key change: {:?}",
        h.writes()
    );
    // The pods roll onto the restored TTLs while the clamped ones keep serving.
    assert_eq!(condition(&s, "Ready").0, "True");
    assert_eq!(condition(&s, "Progressing").0, "True");
    h.roll_out("em", &[&new]);
    h.reconcile("em").await;
    assert_eq!(condition(&h.status("em"), "Ready").0, "True");

    // Restored and settled: zero writes.
    h.server.reset_log();
    h.reconcile("em").await;
    h.reconcile("em").await;
    assert_eq!(h.writes(), vec![], "a restored MacpAuth must not write");
    h.assert_rbac_covers_requests();

    // The rotation metrics saw it.
    let text = h.ctx.metrics.render();
    assert!(
        text.contains(
            "macp_operator_rotation_phase{namespace=\"auth\",name=\"em\",phase=\"Idle\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("macp_operator_seconds_since_last_rotation{namespace=\"auth\",name=\"em\"}"),
        "{text}"
    );
}

// ---------------------------------------------------------------- issue 11

/// The kids the pods of `name` serve: the active key and the published ones.
fn served_kids(h: &Harness, name: &str) -> Vec<String> {
    let ks = h.keyset(name);
    let mut kids = vec![ks.active.kid.clone()];
    kids.extend(ks.published_kids());
    kids
}

/// One round with every wait of the rotation already over and the pods of the
/// current template serving the Secret's keys.
async fn round_with_waits_over(h: &Harness, name: &str) {
    let kids = served_kids(h, name);
    let refs: Vec<&str> = kids.iter().map(String::as_str).collect();
    h.roll_out(name, &refs);
    h.server
        .modify_as::<MacpAuth>(Some(NS), name, |m| {
            if let Some(r) = m.status.as_mut().and_then(|s| s.rotation.as_mut())
                && r.wait_until.is_some()
            {
                r.wait_until = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
            }
        })
        .unwrap();
    h.reconcile(name).await;
}

fn phase(h: &Harness, name: &str) -> RotationPhase {
    h.status(name)
        .rotation
        .map(|r| r.phase)
        .unwrap_or(RotationPhase::Idle)
}

fn request_rotation(h: &Harness, name: &str, id: &str) {
    h.server
        .modify_as::<MacpAuth>(Some(NS), name, |m| {
            m.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(ROTATE_ANNOTATION.into(), id.into());
        })
        .unwrap();
}

fn secret_keys(h: &Harness, name: &str) -> Vec<String> {
    h.secret(name).unwrap().data.unwrap().into_keys().collect()
}

fn jwk_text(key: &PrivateKey) -> String {
    String::from_utf8(
        Keyset::initial(key.clone()).to_secret_data()[keyset::ACTIVE]
            .0
            .clone(),
    )
    .unwrap()
}

/// Issue 11, point 1: on a real API server an apply removes a Secret key that
/// the operator stops setting only when no other field manager owns it. A
/// Secret made with `kubectl create secret --from-file` (manager
/// `kubectl-create`) keeps `previous.jwk.json` after retirement if the keyset
/// is applied; the operator writes it with an exact, resourceVersion-checked
/// update instead, so after a full rotation it holds exactly the plan's keys.
#[tokio::test]
async fn a_secret_adopted_from_another_manager_holds_exactly_the_plans_keys_after_a_rotation() {
    let h = Harness::new().await;
    let active = PrivateKey::generate(SigningAlg::ES256, "adopted-1", 2048).unwrap();
    let previous = PrivateKey::generate(SigningAlg::ES256, "adopted-0", 2048).unwrap();
    let published = json!({"keys": [previous.public_jwk()]}).to_string();
    let secret = secret_with(
        &[
            (keyset::ACTIVE, &jwk_text(&active)),
            (keyset::PREVIOUS, &jwk_text(&previous)),
            (keyset::PUBLISHED, &published),
        ],
        "ad",
    );
    let admin: Api<Secret> = Api::namespaced(h.server.client(), NS);
    let pp = PostParams {
        field_manager: Some("kubectl-create".into()),
        ..PostParams::default()
    };
    admin.create(&pp, &secret).await.unwrap();
    let mut spec = es256();
    spec["maxTtlSeconds"] = json!(600);
    spec["defaultTtlSeconds"] = json!(60);
    spec["rotation"] = json!({"drainSeconds": 660});
    h.create("ad", spec).await;

    h.reconcile("ad").await;
    assert_eq!(h.keyset("ad").active.kid, "adopted-1");
    for _ in 0..4 {
        round_with_waits_over(&h, "ad").await;
    }
    request_rotation(&h, "ad", "r1");
    let mut phases = vec![];
    for _ in 0..20 {
        round_with_waits_over(&h, "ad").await;
        let p = phase(&h, "ad");
        phases.push(p);
        if p == RotationPhase::Idle {
            break;
        }
    }
    assert_eq!(phases.last(), Some(&RotationPhase::Idle), "{phases:?}");
    let s = h.status("ad");
    let last = s.history.last().unwrap();
    assert_eq!(last.trigger, RotationTrigger::Manual, "{:?}", s.history);
    let ks = h.keyset("ad");
    assert_ne!(ks.active.kid, "adopted-1");
    // Exactly the keys of the plan: what the operator would render for this keyset.
    let mut want: Vec<String> = ks.to_secret_data().into_keys().collect();
    want.sort();
    assert_eq!(secret_keys(&h, "ad"), want);
    assert!(!ks.published_kids().contains(&"adopted-0".to_string()));
    h.assert_rbac_covers_requests();
}

/// Issue 11, points 1 and 3: other managers add to keyed lists (an env var, a
/// sidecar from a webhook) and the API server normalises Quantities and fills
/// defaults. None of that is drift: an unchanged resource still costs zero
/// writes, and an apply after a spec change keeps what the others own.
#[tokio::test]
async fn fields_of_other_managers_and_normalised_values_cost_no_writes() {
    let h = Harness::new().await;
    let mut spec = es256();
    spec["resources"] = json!({"requests": {"cpu": "0.5", "memory": "2048Mi"},
                               "limits": {"cpu": "1000m", "memory": "2Gi"}});
    h.create("x", spec).await;
    h.reconcile("x").await;
    let kid = h.keyset("x").active.kid;
    h.roll_out("x", &[&kid]);
    h.reconcile("x").await;
    assert_eq!(condition(&h.status("x"), "Ready").0, "True");
    // The server stored the canonical forms.
    let res = container(&h.deployment("x").unwrap())
        .resources
        .clone()
        .unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "500m");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "2Gi");
    assert_eq!(res.limits.as_ref().unwrap()["cpu"].0, "1");
    h.server.reset_log();
    h.reconcile("x").await;
    assert_eq!(h.writes(), vec![], "normalised Quantities are no drift");

    // A webhook injects an env var and a sidecar, with its own field manager.
    let injected = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"template": {"spec": {"containers": [
            {"name": resources::CONTAINER_NAME, "env": [{"name": "INJECTED", "value": "1"}]},
            {"name": "sidecar", "image": "registry.test/sidecar:1"}
        ]}}}
    });
    let admin: Api<Deployment> = Api::namespaced(h.server.client(), NS);
    admin
        .patch(
            "x",
            &PatchParams::apply("injector"),
            &Patch::Apply(&injected),
        )
        .await
        .unwrap();
    let d = h.deployment("x").unwrap();
    let ps = pod_spec(&d);
    assert_eq!(ps.containers.len(), 2);
    assert!(container_env(&d).contains_key("INJECTED"));
    h.roll_out("x", &[&kid]);
    h.reconcile("x").await;
    h.server.reset_log();
    h.reconcile("x").await;
    h.reconcile("x").await;
    assert_eq!(
        h.writes(),
        vec![],
        "fields other managers own must not make the drift check write"
    );

    // A spec change is applied; the injector's env var and sidecar stay.
    h.server
        .modify_as::<MacpAuth>(Some(NS), "x", |m| m.spec.issuer = "iss-2".into())
        .unwrap();
    h.reconcile("x").await;
    let d = h.deployment("x").unwrap();
    let env = container_env(&d);
    assert_eq!(env["MACP_AUTH_ISSUER"], "iss-2");
    assert_eq!(env["INJECTED"], "1");
    assert_eq!(pod_spec(&d).containers.len(), 2);
    h.roll_out("x", &[&kid]);
    h.reconcile("x").await;
    h.server.reset_log();
    h.reconcile("x").await;
    assert_eq!(h.writes(), vec![]);
    h.assert_rbac_covers_requests();
}

/// Issue 11, point 2: names that are valid MacpAuth names but cannot name the
/// owned objects (a Service name is a DNS-1035 label; a label value has at
/// most 63 characters). A real server answers 422 to every round, after a key
/// was generated; the operator reports Degraded naming the rule, generates
/// no key and writes nothing but its status.
#[tokio::test]
async fn names_the_owned_objects_cannot_carry_are_degraded_before_any_key() {
    let h = Harness::new().await;
    let long = "a".repeat(64);
    for name in ["a.b", "1auth", long.as_str()] {
        h.create(name, es256()).await;
        h.server.reset_log();
        h.reconcile(name).await;
        let (degraded, reason, message) = condition(&h.status(name), "Degraded");
        assert_eq!(
            (degraded.as_str(), reason.as_str()),
            ("True", "InvalidName"),
            "{name}: {message}"
        );
        let rule = if name == long {
            "no more than 63 characters"
        } else {
            "DNS-1035 label"
        };
        assert!(message.contains(rule), "{name}: {message}");
        assert!(h.secret(name).is_none(), "{name}: a key was generated");
        assert!(
            h.writes()
                .iter()
                .all(|w| w.resource == "macpauths/status" || w.resource == "events"),
            "{name}: {:?}",
            h.writes()
        );
        // Reported once.
        h.server.reset_log();
        h.reconcile(name).await;
        assert_eq!(h.writes(), vec![], "{name}");
    }
    // The server itself refuses them as a real one would.
    let svc: Api<Service> = Api::namespaced(h.server.client(), NS);
    let bad: Service = serde_json::from_value(json!({"metadata": {"name": "a.b"}})).unwrap();
    match svc.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (422, "Invalid")),
        other => panic!("{other:?}"),
    }
    h.assert_rbac_covers_requests();
}

/// Issue 11, point 4: the status write is conditional on the resourceVersion
/// the round read. A write to the MacpAuth during the round (here, while the
/// pods are probed) makes it 409; the round writes no status and emits no
/// event, and asks to be run again soon.
#[tokio::test]
async fn a_status_write_from_a_stale_read_conflicts_and_requeues() {
    let h = Harness::new().await;
    h.create("c4", es256()).await;
    h.reconcile("c4").await;
    let kid = h.keyset("c4").active.kid;
    h.roll_out("c4", &[&kid]);
    let before = h.status("c4");
    let events_before = h.event_reasons().len();
    let server = h.server.handle();
    *h.prober.on_probe.lock().unwrap() = Some(Box::new(move || {
        server
            .modify_as::<MacpAuth>(Some(NS), "c4", |m| {
                m.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert("touched".into(), "yes".into());
            })
            .unwrap();
    }));
    let action = reconcile(Arc::new(h.mauth("c4")), h.ctx.clone())
        .await
        .unwrap();
    // Asked for a debounce early: kube's scheduler adds the debounce, so
    // the round runs CONFLICT_REQUEUE (1 s) after this one.
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(
            CONFLICT_REQUEUE - settings().reconcile_debounce
        )
    );
    assert_eq!(
        h.status("c4"),
        before,
        "the stale status write went through"
    );
    assert_eq!(h.event_reasons().len(), events_before);
    // The next round, from a fresh read, does it.
    h.reconcile("c4").await;
    assert_eq!(condition(&h.status("c4"), "Ready").0, "True");
    h.assert_rbac_covers_requests();
}

/// Issue 14: the steps of a rotation that need no wait (start, generate and
/// store the next key, publish it) run in the one turn that started it, each
/// persisted as before; sent to the back of the queue instead, every such
/// step of a storm's rotation waited for a thousand other rounds. The passes
/// after the first start from what the previous one read and wrote: the
/// MacpAuth, the Secret, the Deployment and the pods are read once per turn
/// (and the Secret read back after each write), the pods probed once.
#[tokio::test]
async fn a_started_rotation_reaches_its_first_rollout_in_the_same_turn() {
    let h = Harness::new().await;
    h.create("ch", es256()).await;
    h.reconcile("ch").await;
    for _ in 0..2 {
        round_with_waits_over(&h, "ch").await;
    }
    assert_eq!(condition(&h.status("ch"), "Ready").0, "True");
    let rounds_before = h.ctx.metrics.render();
    request_rotation(&h, "ch", "r1");
    h.server.reset_log();

    h.reconcile("ch").await;

    let reads = |verb: &str, resource: &str| h.server.count(verb, resource);
    assert_eq!(reads("get", "macpauths"), 1, "{:#?}", h.server.requests());
    assert_eq!(reads("get", "deployments"), 1, "{:#?}", h.server.requests());
    assert_eq!(
        reads("get", "secrets"),
        1 + reads("update", "secrets"),
        "one read, then one read-back per write: {:#?}",
        h.server.requests()
    );
    assert_eq!(
        reads("update", "secrets"),
        2,
        "the next key, then its publication"
    );
    assert_eq!(reads("list", "pods"), 1, "{:#?}", h.server.requests());

    assert_eq!(phase(&h, "ch"), RotationPhase::Publishing);
    let ks = h.keyset("ch");
    let new_kid = h
        .status("ch")
        .rotation
        .and_then(|r| r.new_kid)
        .expect("the rotation names its new key");
    assert_eq!(ks.published_kids(), vec![new_kid.clone()], "{ks:?}");
    assert_eq!(ks.next.map(|k| k.kid), Some(new_kid));
    let reasons = h.event_reasons();
    for reason in ["RotationStarted", "KeyGenerated", "Publishing"] {
        assert_eq!(
            reasons.iter().filter(|r| *r == reason).count(),
            1,
            "{reason}: {reasons:?}"
        );
    }
    // Three passes of one turn, each counted as a round.
    let count = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("macp_operator_reconciles_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(count(&h.ctx.metrics.render()) - count(&rounds_before), 3);
    h.assert_rbac_covers_requests();
}

/// Issue 14: a pass that goes on in the same turn starts from the Secret the
/// previous pass read. Someone else writing the Secret between the two must
/// not be overwritten from that copy: the key's write is refused (409, the
/// replace carries the resourceVersion it was read at), the turn fails, and
/// the next round reads the Secret fresh, keeps the other writer's label and
/// goes on with the same reserved key.
#[tokio::test]
async fn a_secret_written_by_someone_else_between_passes_is_not_overwritten() {
    let h = Harness::new().await;
    h.create("cw", es256()).await;
    h.reconcile("cw").await;
    for _ in 0..2 {
        round_with_waits_over(&h, "cw").await;
    }
    let active = h.keyset("cw").active.kid;
    request_rotation(&h, "cw", "r1");
    // The first pass probes the pods after it read the Secret and before it
    // reserves the key: the other writer comes in between.
    let server = h.server.handle();
    let secret_name = resources::secret_name("cw");
    *h.prober.on_probe.lock().unwrap() = Some(Box::new(move || {
        server
            .modify_as::<Secret>(Some(NS), &secret_name, |s| {
                s.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert("backup.example.com/include".into(), "true".into());
            })
            .unwrap();
    }));

    let turn = reconcile(Arc::new(h.mauth("cw")), h.ctx.clone()).await;

    let err = turn.expect_err("the key's write from the carried Secret must conflict");
    assert!(err.to_string().contains("409"), "{err}");
    let status = h.status("cw");
    let rotation = status.rotation.expect("the rotation started");
    assert_eq!(rotation.phase, RotationPhase::KeyGenerated);
    let reserved = rotation.pending_kid.expect("a reserved kid");
    let ks = h.keyset("cw");
    assert_eq!(ks.active.kid, active, "the active key is untouched");
    assert!(ks.next.is_none(), "nothing was written from the stale copy");
    let label = |h: &Harness| {
        h.secret("cw")
            .and_then(|s| s.metadata.labels)
            .and_then(|l| l.get("backup.example.com/include").cloned())
    };
    assert_eq!(label(&h).as_deref(), Some("true"));

    h.reconcile("cw").await;

    assert_eq!(phase(&h, "cw"), RotationPhase::Publishing);
    let ks = h.keyset("cw");
    assert_eq!(ks.active.kid, active);
    assert_eq!(
        ks.next.as_ref().map(|k| k.kid.clone()),
        Some(reserved.clone())
    );
    assert_eq!(ks.published_kids(), vec![reserved]);
    assert_eq!(
        label(&h).as_deref(),
        Some("true"),
        "the other writer's label was lost"
    );
    h.assert_rbac_covers_requests();
}

/// Issue 14: a Deployment version found to match is not compared again in
/// the next round (the comparison was 14% of the operator's CPU in a storm),
/// but any write by anyone is a new version: an edit of a field the operator
/// owns is seen and repaired in the next round.
#[tokio::test]
async fn a_deployment_edited_after_it_was_verified_is_compared_again_and_repaired() {
    let h = Harness::new().await;
    h.create_ready("dv").await;
    let image = container(&h.deployment("dv").unwrap()).image.clone();
    h.server.reset_log();
    h.reconcile("dv").await;
    assert_eq!(h.writes(), vec![], "an unchanged round writes nothing");

    h.server
        .modify_as::<Deployment>(Some(NS), "dv", |d| {
            let pod = d.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
            pod.containers[0].image = Some("example.com/not-ours:1".into());
        })
        .unwrap();
    h.reconcile("dv").await;

    assert_eq!(container(&h.deployment("dv").unwrap()).image, image);
    assert_eq!(
        h.server.count("patch", "deployments"),
        1,
        "{:#?}",
        h.writes()
    );
}

/// Issue 14: an autoscaler and a disruption budget the spec does not ask for
/// are looked for once per generation, not in every round while the service
/// is not Ready: a rotation's rollouts make it not Ready, and those reads were
/// a fifth of a storm's requests. A new generation looks again.
#[tokio::test]
async fn absent_scaling_objects_are_looked_for_once_per_generation() {
    let h = Harness::new().await;
    h.create("sg", json!({"signingAlg": "ES256", "replicas": 1}))
        .await;
    h.reconcile("sg").await;
    let looked = |h: &Harness| {
        (
            h.server.count("get", "horizontalpodautoscalers"),
            h.server.count("get", "poddisruptionbudgets"),
        )
    };
    assert_eq!(
        condition(&h.status("sg"), "Ready").0,
        "False",
        "no pods yet"
    );
    h.server.reset_log();
    h.reconcile("sg").await;
    assert_eq!(condition(&h.status("sg"), "Ready").0, "False");
    assert_eq!(looked(&h), (0, 0), "{:#?}", h.server.requests());

    h.server
        .modify_as::<MacpAuth>(Some(NS), "sg", |m| m.spec.replicas = 2)
        .unwrap();
    h.server.reset_log();
    h.reconcile("sg").await;
    assert_eq!(looked(&h).0, 1, "a new generation looks again");
    h.assert_rbac_covers_requests();
}

/// Issue 14: rounds wait for a turn in the order they fell due, and no more
/// than `--max-concurrent-reconciles` run at once. kube's own runner, when
/// saturated, picks the next object at random, so in a storm a rotation that
/// fell due first waited behind the follow-ups of others for a minute.
#[tokio::test]
async fn rounds_take_turns_in_the_order_they_fell_due() {
    let settings = Settings {
        max_concurrent_reconciles: 1,
        ..settings_for(Mode::Namespaced)
    };
    let h = Harness::with_settings(Mode::Namespaced, settings).await;
    let names = ["qa", "qb", "qc"];
    for name in names {
        h.create(name, es256()).await;
    }
    h.server.reset_log();
    // Polled in this order, so they ask for a turn in this order; each
    // round's API calls then yield, and without turns they would interleave.
    let rounds = names.map(|name| reconcile(Arc::new(h.mauth(name)), h.ctx.clone()));
    let [a, b, c] = rounds;
    let (a, b, c) = futures::join!(a, b, c);
    for result in [a, b, c] {
        result.unwrap();
    }
    let owners: Vec<&str> = h
        .server
        .requests()
        .iter()
        .filter_map(|r| {
            let name = r.name.as_deref()?;
            names.iter().copied().find(|n| name.starts_with(n))
        })
        .collect();
    let mut runs = owners.clone();
    runs.dedup();
    assert_eq!(
        runs, names,
        "rounds overlapped or ran out of order: {owners:?}"
    );
    for name in names {
        let s = h.status(name);
        assert_eq!(condition(&s, "Progressing").1, "RollingOut");
        assert_eq!(condition(&s, "Ready").1, "NoAvailablePods");
    }
}

/// Issue 11, point 4: an informer cache may be one or two writes behind. A
/// round started from a stale snapshot of every rotation phase repeats no
/// action (no third key, no second generation of the next key), duplicates no
/// event and loses no history.
#[tokio::test]
async fn rounds_from_stale_snapshots_of_every_phase_repeat_nothing() {
    let h = Harness::new().await;
    let mut spec = es256();
    spec["maxTtlSeconds"] = json!(600);
    spec["defaultTtlSeconds"] = json!(60);
    spec["rotation"] = json!({"drainSeconds": 660});
    h.create("st", spec).await;
    h.reconcile("st").await;
    for _ in 0..2 {
        round_with_waits_over(&h, "st").await;
    }
    let first_kid = h.keyset("st").active.kid;
    let history_before = h.status("st").history;
    request_rotation(&h, "st", "r1");

    let mut snapshots: Vec<MacpAuth> = vec![h.mauth("st")];
    let mut phases = vec![];
    let mut kids = std::collections::BTreeSet::from([first_kid.clone()]);
    for _ in 0..20 {
        round_with_waits_over(&h, "st").await;
        snapshots.push(h.mauth("st"));
        // Replay the snapshots one and two writes behind.
        for back in [2usize, 3] {
            if let Some(stale) = snapshots
                .len()
                .checked_sub(back)
                .map(|i| snapshots[i].clone())
            {
                reconcile(Arc::new(stale), h.ctx.clone()).await.unwrap();
            }
        }
        let ks = h.keyset("st");
        kids.insert(ks.active.kid.clone());
        kids.extend(ks.published_kids());
        if let Some(next) = &ks.next {
            kids.insert(next.kid.clone());
        }
        let p = phase(&h, "st");
        phases.push(p);
        if p == RotationPhase::Idle {
            break;
        }
    }
    assert_eq!(phases.last(), Some(&RotationPhase::Idle), "{phases:?}");
    assert_eq!(
        kids.len(),
        2,
        "a stale round generated another key: {kids:?}"
    );
    let s = h.status("st");
    assert_eq!(s.history.len(), history_before.len() + 1, "{:?}", s.history);
    assert_eq!(s.history[..history_before.len()], history_before[..]);
    let reasons = h.event_reasons();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &reasons {
        *counts.entry(r.as_str()).or_default() += 1;
    }
    for (reason, n) in &counts {
        if !matches!(*reason, "Recovered") {
            assert_eq!(*n, 1, "event {reason} emitted {n} times: {reasons:?}");
        }
    }
    h.assert_rbac_covers_requests();
}

// ------------------------------------------------------------ issue 13

/// The managers whose Apply or Update entry owns `spec.replicas` of the Deployment.
fn replicas_owners(d: &Deployment) -> Vec<String> {
    d.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| {
            e.fields_v1
                .as_ref()
                .and_then(|f| f.0.pointer("/f:spec/f:replicas"))
                .is_some()
        })
        .filter_map(|e| e.manager.clone())
        .collect()
}

/// Plays the HorizontalPodAutoscaler: it sets `spec.replicas` (through the
/// scale subresource on a real server, an Update under its own manager).
async fn autoscaler_scales(h: &Harness, name: &str, replicas: i32) {
    let admin: Api<Deployment> = Api::namespaced(h.server.client(), NS);
    admin
        .patch(
            name,
            &PatchParams {
                field_manager: Some("kube-controller-manager".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn with_autoscaling_the_hpa_owns_replicas_and_rotation_verifies_every_pod() {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let h = Harness::new().await;
    let mut spec = es256();
    spec["autoscaling"] =
        json!({"minReplicas": 2, "maxReplicas": 6, "targetCPUUtilizationPercentage": 60});
    h.create("x", spec).await;
    h.reconcile("x").await;
    let hpa = h
        .server
        .get_as::<HorizontalPodAutoscaler>(Some(NS), "x")
        .unwrap()
        .expect("HPA created");
    let hs = hpa.spec.unwrap();
    assert_eq!((hs.min_replicas, hs.max_replicas), (Some(2), 6));
    assert_eq!(hs.scale_target_ref.name, "x");
    assert!(
        h.server
            .get_as::<PodDisruptionBudget>(Some(NS), "x")
            .unwrap()
            .is_some(),
        "autoscaling may run several pods: a disruption budget"
    );
    let d = h.deployment("x").unwrap();
    assert_eq!(
        replicas_owners(&d),
        Vec::<String>::new(),
        "nobody set replicas yet"
    );

    // The autoscaler scales to 4; the operator must neither fight it nor stop
    // counting: its rollout check and probes cover all 4 pods.
    autoscaler_scales(&h, "x", 4).await;
    let kid = h.keyset("x").active.kid;
    h.roll_out("x", &[&kid]);
    h.reconcile("x").await;
    let (ready, _, message) = condition(&h.status("x"), "Ready");
    assert_eq!(ready, "True");
    assert!(message.starts_with("4 available pod(s)"), "{message}");
    h.server.reset_log();
    for _ in 0..3 {
        h.reconcile("x").await;
    }
    assert_eq!(
        h.writes(),
        vec![],
        "an autoscaled replica count is no drift"
    );

    // A whole routine rotation at 4 replicas, with the autoscaler scaling to
    // 5 halfway: every phase's rollout check waits for all of them.
    request_rotation(&h, "x", "r-1");
    h.reconcile("x").await;
    let mut scaled = false;
    for _ in 0..12 {
        if phase(&h, "x") == RotationPhase::Idle && h.status("x").history.len() > 1 {
            break;
        }
        if !scaled && phase(&h, "x") == RotationPhase::Activating {
            autoscaler_scales(&h, "x", 5).await;
            scaled = true;
            // Four of the five pods rolled: not complete, whatever the
            // MacpAuth's own `replicas` (2) says.
            let kids = served_kids(&h, "x");
            h.roll_out("x", &kids.iter().map(String::as_str).collect::<Vec<_>>());
            h.server
                .modify_as::<Deployment>(Some(NS), "x", |d| {
                    if let Some(st) = d.status.as_mut() {
                        // The fifth pod is not even created yet.
                        st.replicas = Some(4);
                        st.updated_replicas = Some(4);
                        st.ready_replicas = Some(4);
                        st.available_replicas = Some(4);
                    }
                })
                .unwrap();
            h.reconcile("x").await;
            assert_eq!(
                phase(&h, "x"),
                RotationPhase::Activating,
                "4 of 5 pods is no complete rollout"
            );
        }
        round_with_waits_over(&h, "x").await;
    }
    let status = h.status("x");
    assert_eq!(
        status.history.last().unwrap().outcome,
        RotationOutcome::Succeeded
    );
    assert!(scaled, "the rotation went through Activating");
    let d = h.deployment("x").unwrap();
    assert_eq!(
        d.spec.as_ref().unwrap().replicas,
        Some(5),
        "the autoscaler's value stands"
    );
    assert_eq!(replicas_owners(&d), ["kube-controller-manager"]);
    // The rollout check counted every pod the autoscaler asked for.
    h.roll_out(
        "x",
        &served_kids(&h, "x")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    h.reconcile("x").await;
    let message = condition(&h.status("x"), "Ready").2;
    assert!(message.starts_with("5 available pod(s)"), "{message}");
    h.assert_rbac_covers_requests();
}

#[tokio::test]
async fn turning_autoscaling_on_hands_replicas_over_and_off_takes_them_back() {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    let h = Harness::new().await;
    let mut spec = es256();
    spec["replicas"] = json!(3);
    h.create("x", spec).await;
    h.reconcile("x").await;
    assert_eq!(
        replicas_owners(&h.deployment("x").unwrap()),
        [resources::MANAGER]
    );
    assert!(
        h.server
            .get_as::<HorizontalPodAutoscaler>(Some(NS), "x")
            .unwrap()
            .is_none()
    );

    // On: the operator stops applying replicas without the Deployment falling
    // back to 1 (terminating signers) before the autoscaler acts.
    h.server
        .modify_as::<MacpAuth>(Some(NS), "x", |m| {
            m.spec.autoscaling = serde_json::from_value(json!({"maxReplicas": 5})).unwrap();
        })
        .unwrap();
    h.reconcile("x").await;
    let d = h.deployment("x").unwrap();
    assert_eq!(
        d.spec.as_ref().unwrap().replicas,
        Some(3),
        "kept across the handover"
    );
    let owners = replicas_owners(&d);
    assert!(
        !owners.contains(&resources::MANAGER.to_string()),
        "{owners:?}"
    );
    assert!(
        h.server
            .get_as::<HorizontalPodAutoscaler>(Some(NS), "x")
            .unwrap()
            .is_some()
    );
    autoscaler_scales(&h, "x", 4).await;
    h.reconcile("x").await;
    assert_eq!(h.deployment("x").unwrap().spec.unwrap().replicas, Some(4));

    // Off: the spec's replicas again, and the autoscaler is deleted.
    h.server
        .modify_as::<MacpAuth>(Some(NS), "x", |m| m.spec.autoscaling = None)
        .unwrap();
    h.reconcile("x").await;
    assert_eq!(h.deployment("x").unwrap().spec.unwrap().replicas, Some(3));
    assert!(
        h.server
            .get_as::<HorizontalPodAutoscaler>(Some(NS), "x")
            .unwrap()
            .is_none(),
        "the HPA the spec no longer asks for is deleted"
    );
    h.assert_rbac_covers_requests();
}

#[tokio::test]
async fn the_disruption_budget_follows_the_replica_count_and_spares_a_users_own() {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let h = Harness::new().await;
    let mut spec = es256();
    spec["replicas"] = json!(2);
    h.create("x", spec).await;
    h.reconcile("x").await;
    let pdb = h
        .server
        .get_as::<PodDisruptionBudget>(Some(NS), "x")
        .unwrap()
        .expect("budget for two replicas");
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    // One replica: a budget would block every drain, so it goes.
    h.server
        .modify_as::<MacpAuth>(Some(NS), "x", |m| m.spec.replicas = 1)
        .unwrap();
    h.reconcile("x").await;
    assert!(
        h.server
            .get_as::<PodDisruptionBudget>(Some(NS), "x")
            .unwrap()
            .is_none()
    );
    // A budget of the same name the operator did not make is never deleted.
    let theirs: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "x", "namespace": NS},
        "spec": {"minAvailable": 1}
    }))
    .unwrap();
    h.server.create_as(&theirs).unwrap();
    h.reconcile("x").await;
    assert!(
        h.server
            .get_as::<PodDisruptionBudget>(Some(NS), "x")
            .unwrap()
            .is_some()
    );
    h.assert_rbac_covers_requests();
}

/// A mesh's sidecar injector, as a mutating webhook would, writes the
/// Deployment under its own field manager: a container, a volume, an env
/// var and a pod annotation. With every issue-13 pod setting on, the
/// operator must then reconcile with zero writes, round after round.
#[tokio::test]
async fn an_injected_sidecar_costs_zero_writes_per_unchanged_reconcile() {
    let h = Harness::new().await;
    let mut spec = es256();
    spec["replicas"] = json!(3);
    spec["mintPort"] = json!(3201);
    spec["podLabels"] = json!({"sidecar.istio.io/inject": "true", "team": "identity"});
    spec["podAnnotations"] = json!({"proxy.istio.io/config": "{}"});
    spec["affinity"] = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
         "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "x"}}}}]}});
    spec["priorityClassName"] = json!("platform-critical");
    spec["imagePullSecrets"] = json!([{"name": "regcred"}]);
    spec["serviceAccountName"] = json!("macp-auth");
    h.create("x", spec).await;
    h.reconcile("x").await;
    let kid = h.keyset("x").active.kid;
    h.roll_out("x", &[&kid]);
    h.reconcile("x").await;
    assert_eq!(condition(&h.status("x"), "Ready").0, "True");
    let ps = pod_spec(&h.deployment("x").unwrap());
    assert_eq!(
        ps.topology_spread_constraints.as_ref().map(Vec::len),
        Some(2)
    );
    assert_eq!(ps.service_account_name.as_deref(), Some("macp-auth"));

    let injected = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"template": {
            "metadata": {"annotations": {"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"}},
            "spec": {
                "containers": [
                    {"name": resources::CONTAINER_NAME,
                     "env": [{"name": "ISTIO_META_APP", "value": "macp"}],
                     "volumeMounts": [{"name": "istio-envoy", "mountPath": "/etc/istio/proxy"}]},
                    {"name": "istio-proxy", "image": "registry.test/proxyv2:1.24",
                     "ports": [{"containerPort": 15090, "name": "http-envoy-prom"}]}
                ],
                "volumes": [{"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}],
                "imagePullSecrets": [{"name": "istio-pull"}]
            }
        }}
    });
    let admin: Api<Deployment> = Api::namespaced(h.server.client(), NS);
    admin
        .patch(
            "x",
            &PatchParams::apply("istio-sidecar-injector"),
            &Patch::Apply(&injected),
        )
        .await
        .unwrap();
    let d = h.deployment("x").unwrap();
    let ps = pod_spec(&d);
    assert_eq!(ps.containers.len(), 2);
    // The signing keys' and the injector's.
    assert_eq!(ps.volumes.as_ref().map(Vec::len), Some(2));
    assert_eq!(ps.image_pull_secrets.as_ref().map(Vec::len), Some(2));
    h.roll_out("x", &[&kid]);
    h.reconcile("x").await;
    h.server.reset_log();
    for _ in 0..5 {
        h.reconcile("x").await;
    }
    assert_eq!(
        h.writes(),
        vec![],
        "the injector's container, volume, env, pull secret and annotation are no drift"
    );
    // No autoscaling asked for and none removed this generation: not even a read of one.
    let hpa_requests: Vec<_> = h
        .server
        .requests()
        .into_iter()
        .filter(|r| r.resource == "horizontalpodautoscalers")
        .collect();
    assert_eq!(hpa_requests, vec![], "steady state reads no autoscaler");
    // And a rotation still works with the sidecar in the pods.
    request_rotation(&h, "x", "r-1");
    for _ in 0..12 {
        round_with_waits_over(&h, "x").await;
        if phase(&h, "x") == RotationPhase::Idle && h.status("x").history.len() > 1 {
            break;
        }
    }
    let status = h.status("x");
    assert_eq!(
        status.history.last().unwrap().outcome,
        RotationOutcome::Succeeded
    );
    let d = h.deployment("x").unwrap();
    assert_eq!(
        pod_spec(&d).containers.len(),
        2,
        "the sidecar survived every apply"
    );
    // The activation's signing probes minted on the mint port, nowhere else.
    let ports = h.prober.mint_ports.lock().unwrap().clone();
    assert!(
        !ports.is_empty() && ports.iter().all(|p| *p == 3201),
        "{ports:?}"
    );
    assert!(container_env(&d).contains_key("ISTIO_META_APP"));
    h.assert_rbac_covers_requests();
}

/// Combinations the schema cannot refuse (or a server without CEL let
/// through) are `Degraded` naming the field, and nothing is created.
#[tokio::test]
async fn invalid_production_settings_are_degraded_naming_the_field() {
    let h = Harness::new().await;
    let mut spec = es256();
    spec["autoscaling"] = json!({"minReplicas": 4, "maxReplicas": 2});
    spec["disruptionBudget"] = json!({"maxUnavailable": 0});
    spec["mintPort"] = json!(3200);
    h.create("g", spec).await;
    h.reconcile("g").await;
    let (degraded, reason, message) = condition(&h.status("g"), "Degraded");
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "InvalidSpec")
    );
    for field in [
        "mintPort (3200)",
        "autoscaling.minReplicas (4)",
        "disruptionBudget.maxUnavailable 0",
    ] {
        assert!(message.contains(field), "{field} not named in {message}");
    }
    assert!(h.secret("g").is_none() && h.deployment("g").is_none());
    h.assert_rbac_covers_requests();
}
