//! The running operator (its controllers, watches and queue) against the API
//! server: restarts, timers, watch caches, and the order rounds take turns in.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use macp_auth_e2e::reconcile_harness::{
    Harness, Mode, NS, SETTLE_POLL, SETTLE_TIMEOUT, condition, es256, settings_for,
};
use macp_auth_e2e::wait::wait_until;
use macp_auth_operator::reconcile::reconcile;
use macp_auth_operator::resources;
use macp_auth_operator::{Settings, State};
use serde_json::json;

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
    let task = h.spawn_operator(mode, first.clone());
    let kid = h.create_and_roll_out("h").await;
    assert!(first.is_ready());

    // Crash: abort the task mid-flight, then start a fresh operator.
    task.abort();
    let _ = task.await;
    h.server.reset_log();
    let second = State::default();
    let task = h.spawn_operator(mode, second.clone());
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
    let task = h.spawn_operator_with(settings, state.clone());
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
    let task = h.spawn_operator(Mode::Namespaced, state.clone());
    h.create_and_roll_out("c").await;
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

/// Rounds wait for a turn in the order they fell due, and no more
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
