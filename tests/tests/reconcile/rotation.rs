//! Rotations at the reconciler level: when they are scheduled, the steps that
//! need no wait run in one turn, and an emergency's TTL clamp.

use macp_auth_e2e::reconcile_harness::{Harness, NS, condition, container_env, es256};
use macp_auth_operator::crd::{
    EMERGENCY_ROTATE_ANNOTATION, MacpAuth, RotationPhase, RotationTrigger, TtlClampStatus,
};
use macp_auth_operator::metrics::ObjectLabels;
use serde_json::json;

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

/// The steps of a rotation that need no wait (start, generate and
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
        h.round_with_waits_over("ch").await;
    }
    assert_eq!(condition(&h.status("ch"), "Ready").0, "True");
    let rounds_before = h.ctx.metrics.render();
    h.request_rotation("ch", "r1");
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

    assert_eq!(h.phase("ch"), RotationPhase::Publishing);
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
