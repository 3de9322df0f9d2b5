//! What a MacpAuth's first rounds write and how a spec change renders: the
//! key first, then the objects that refer to it; an existing Secret adopted;
//! spec fields rendered into the Deployment and ConfigMap without a rotation.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use macp_auth_e2e::reconcile_harness::{
    Harness, IMAGE, NS, condition, container, container_env, es256, pod_spec, secret_with,
    template_hash,
};
use macp_auth_operator::crd::{MacpAuth, RotationPhase, SigningAlg};
use macp_auth_operator::keyset::{self, Keyset, PrivateKey};
use macp_auth_operator::resources;
use serde_json::json;

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
