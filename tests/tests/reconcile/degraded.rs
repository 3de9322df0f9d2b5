//! What the operator refuses: a corrupted or incomplete Secret, an invalid
//! spec, names the owned objects cannot carry, a stalled rollout. Each is
//! `Degraded` naming what is wrong, and nothing is overwritten or created.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, PostParams};
use macp_auth_e2e::reconcile_harness::{Harness, NS, condition, es256, secret_with, template_hash};
use macp_auth_operator::crd::{MacpAuth, SigningAlg};
use macp_auth_operator::keyset::{self, Keyset, PrivateKey};
use macp_auth_operator::resources;
use serde_json::json;

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

/// Names that are valid MacpAuth names but cannot name the
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
