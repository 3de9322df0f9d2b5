//! Rounds that start from what another writer has since changed: a stale
//! status write conflicts, a Secret written between passes is not
//! overwritten, and stale snapshots of every phase repeat nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use macp_auth_e2e::reconcile_harness::{Harness, NS, condition, es256, settings};
use macp_auth_operator::crd::{MacpAuth, RotationPhase};
use macp_auth_operator::reconcile::{CONFLICT_REQUEUE, reconcile};
use macp_auth_operator::resources;
use serde_json::json;

/// The status write is conditional on the resourceVersion
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
    h.prober.on_next_probe(Box::new(move || {
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

/// A pass that goes on in the same turn starts from the Secret the
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
        h.round_with_waits_over("cw").await;
    }
    let active = h.keyset("cw").active.kid;
    h.request_rotation("cw", "r1");
    // The first pass probes the pods after it read the Secret and before it
    // reserves the key: the other writer comes in between.
    let server = h.server.handle();
    let secret_name = resources::secret_name("cw");
    h.prober.on_next_probe(Box::new(move || {
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

    assert_eq!(h.phase("cw"), RotationPhase::Publishing);
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

/// An informer cache may be one or two writes behind. A
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
        h.round_with_waits_over("st").await;
    }
    let first_kid = h.keyset("st").active.kid;
    let history_before = h.status("st").history;
    h.request_rotation("st", "r1");

    let mut snapshots: Vec<MacpAuth> = vec![h.mauth("st")];
    let mut phases = vec![];
    let mut kids = std::collections::BTreeSet::from([first_kid.clone()]);
    for _ in 0..20 {
        h.round_with_waits_over("st").await;
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
        let p = h.phase("st");
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
