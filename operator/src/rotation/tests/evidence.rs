//! Whole rotations driven through [`decide`] with the drain ledger and the
//! verifier evidence: each waits from what was in effect and what the
//! verifiers did, not from the spec as it is now.

use std::net::IpAddr;

use chrono::{DateTime, Duration as Secs, Utc};
use macp_auth_service::verifiers::{ClientRecord, VerifiersReport};

use crate::conditions::{self, VERIFIERS_PROPAGATED};
use crate::crd::{KeyRole, ROTATE_ANNOTATION, RotationPhase};
use crate::rotation::evidence::PodReport;

use super::{Fixture, at, keyset, phase, step, until_phase};

/// A verifier at 127.1.0.`n`: last fetch `ago` s before the round, and with
/// an `interval`, two more fetches that far apart before it.
fn client(n: u8, ago: f64, interval: Option<f64>) -> ClientRecord {
    ClientRecord {
        address: IpAddr::from([127, 1, 0, n]),
        user_agent: None,
        fetches: if interval.is_some() { 3 } else { 1 },
        first_fetch_seconds_ago: ago + 2.0 * interval.unwrap_or(0.0),
        last_fetch_seconds_ago: ago,
        shortest_interval_seconds: interval,
        longest_interval_seconds: interval,
    }
}

/// Every pod answers `GET /verifiers`, serving what it serves; the first pod
/// saw `clients` (each verifier's connection stays on one pod), the others none.
fn report_all(f: &mut Fixture, clients: &[ClientRecord]) {
    let reports: Vec<PodReport> = f
        .observed
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(VerifiersReport {
                kids: p.served_kids.clone().unwrap_or_default(),
                clients: if i == 0 { clients.to_vec() } else { Vec::new() },
                ..VerifiersReport::default()
            })
        })
        .collect();
    f.observed.verifiers = reports;
}

fn wait_until(f: &Fixture) -> DateTime<Utc> {
    f.status
        .rotation
        .as_ref()
        .and_then(|r| r.wait_until)
        .expect("a wait")
}

#[test]
fn lowering_max_ttl_with_the_rotation_request_never_shortens_the_old_keys_drain() {
    let mut f = Fixture::idle(keyset("k0", &[], None, None));
    f.spec.max_ttl_seconds = 600;
    f.spec.rotation.drain_seconds = None;
    f.now = at(0);
    step(&mut f);
    let k0 = &f.status.keys[0];
    assert_eq!((k0.kid.as_str(), k0.role), ("k0", KeyRole::Active));
    assert_eq!(k0.max_token_ttl_seconds, Some(600));

    // The same apply lowers the max TTL and asks for a rotation; an operator
    // restart in between changes nothing (the status is all it keeps).
    f.spec.max_ttl_seconds = 5;
    f.annotate(ROTATE_ANNOTATION, "now");
    f.now = at(10);
    until_phase(&mut f, RotationPhase::Propagating);
    f.now = wait_until(&f) + Secs::seconds(1);
    until_phase(&mut f, RotationPhase::Draining);
    let drain = wait_until(&f) - f.now;
    assert_eq!(
        drain,
        Secs::seconds(660),
        "600 s tokens + 60 s leeway, not the spec's 5 + 60"
    );
    let old = f.status.keys.iter().find(|k| k.kid == "k0").unwrap();
    assert_eq!(old.role, KeyRole::Previous);
    assert_eq!(old.stopped_signing_at, Some(f.now));
    assert_eq!(old.retire_after, Some(f.now + Secs::seconds(660)));
    assert!(
        old.retire_reason
            .as_deref()
            .unwrap_or_default()
            .contains("600s"),
        "{old:?}"
    );
    // The new key signed only under 5 s.
    let new = f
        .status
        .keys
        .iter()
        .find(|k| k.role == KeyRole::Active)
        .unwrap()
        .clone();
    assert_eq!(new.max_token_ttl_seconds, Some(5));
    // Nothing retires it before then.
    f.now += Secs::seconds(659);
    step(&mut f);
    assert_eq!(phase(&f), RotationPhase::Draining);
    f.now += Secs::seconds(1);
    step(&mut f);
    assert_eq!(phase(&f), RotationPhase::Retiring);
    // The round that retires it writes the final keyset, and its status
    // already lists only what that write leaves.
    until_phase(&mut f, RotationPhase::Idle);
    let kids: Vec<(&str, KeyRole)> = f
        .status
        .keys
        .iter()
        .map(|k| (k.kid.as_str(), k.role))
        .collect();
    assert_eq!(kids, vec![(new.kid.as_str(), KeyRole::Active)]);
}

#[test]
fn a_pod_of_an_older_template_counts_in_the_ledger() {
    let mut f = Fixture::idle(keyset("k0", &[], None, None));
    f.spec.max_ttl_seconds = 5;
    f.spec.rotation.drain_seconds = None;
    // The template renders 5, but a pod still running says 900.
    f.max_ttl_in_effect = Some(900);
    f.now = at(0);
    step(&mut f);
    assert_eq!(f.status.keys[0].max_token_ttl_seconds, Some(900));
}

/// A MacpAuth mid-Propagating with verifier 1 (caching `interval` s) last
/// seen on the old pods, before the new key was published.
fn propagating_with_a_slow_verifier(interval: f64) -> Fixture {
    let mut f = Fixture::idle(keyset("k0", &[], None, None));
    f.spec.jwks_cache_ttl_seconds = 60;
    f.spec.rotation.propagation_timeout_seconds = 1800;
    f.now = at(0);
    step(&mut f);
    f.annotate(ROTATE_ANNOTATION, "now");
    f.now = at(100);
    step(&mut f); // KeyGenerated, the kid reserved
    step(&mut f); // the key generated
    assert_eq!(phase(&f), RotationPhase::KeyGenerated);
    report_all(
        &mut f,
        &[client(1, 30.0, Some(interval)), client(2, 5.0, Some(60.0))],
    );
    step(&mut f); // Publishing, with the old pods' snapshot
    assert_eq!(phase(&f), RotationPhase::Publishing);
    let known = &f.status.verifiers.as_ref().expect("the snapshot").known;
    assert_eq!(known.len(), 2);
    assert!(known.iter().all(|v| !v.holds_new_kid));
    f.observed.verifiers.clear();
    step(&mut f); // the rollout is verified: Propagating
    assert_eq!(phase(&f), RotationPhase::Propagating);
    f
}

#[test]
fn propagating_waits_for_every_verifier_seen_to_fetch_the_new_key() {
    let mut f = propagating_with_a_slow_verifier(600.0);
    // The wait (60 + 10 s) ends. The new pods saw only verifier 2, after the publication.
    f.now = wait_until(&f) + Secs::seconds(1);
    report_all(&mut f, &[client(2, 3.0, Some(60.0))]);
    let d = step(&mut f);
    assert_eq!(
        phase(&f),
        RotationPhase::Propagating,
        "{:?}",
        f.status.rotation
    );
    let v = f.status.verifiers.as_ref().unwrap();
    assert_eq!(v.waiting_for, vec!["127.1.0.1".to_string()]);
    assert_eq!(v.holding_new_kid, Some(1));
    assert_eq!(v.observed, 2);
    assert_eq!(v.longest_interval_seconds, Some(600));
    assert!(
        d.events
            .iter()
            .any(|e| e.reason == "WaitingForVerifiers" && e.message.contains("127.1.0.1"))
    );
    let message = f.status.rotation.as_ref().unwrap().message.clone().unwrap();
    assert!(message.contains("127.1.0.1"), "{message}");
    assert!(d.requeue_after.is_some_and(|r| r <= crate::rotation::POLL));

    // A restart later, verifier 1 fetches from a new pod: the key may sign.
    f.now += Secs::seconds(200);
    report_all(&mut f, &[client(1, 1.0, Some(600.0))]);
    step(&mut f);
    assert_eq!(phase(&f), RotationPhase::Activating);
    let c = conditions::get(&f.status.conditions, VERIFIERS_PROPAGATED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "AllVerifiersFetched")
    );
}

#[test]
fn a_verifier_that_never_fetches_holds_propagating_only_until_the_ceiling() {
    // Caching 900 s, it counts as present for 2700 s: longer than the ceiling.
    let mut f = propagating_with_a_slow_verifier(900.0);
    let started = f.status.rotation.as_ref().unwrap().phase_since.unwrap();
    // Verifier 1 is gone; verifier 2 keeps fetching.
    let ceiling = started + Secs::seconds(1800);
    f.now = ceiling - Secs::seconds(1);
    report_all(&mut f, &[client(2, 1.0, Some(60.0))]);
    step(&mut f);
    assert_eq!(phase(&f), RotationPhase::Propagating);
    f.now = ceiling;
    let d = step(&mut f);
    assert_eq!(phase(&f), RotationPhase::Activating);
    let warning = d
        .events
        .iter()
        .find(|e| e.reason == "PropagationTimeout")
        .expect("a Warning at the ceiling");
    assert!(
        warning.warning && warning.message.contains("127.1.0.1"),
        "{warning:?}"
    );
    let c = conditions::get(&f.status.conditions, VERIFIERS_PROPAGATED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "PropagationTimeout")
    );
    assert!(c.message.contains("127.1.0.1"));
}

#[test]
fn without_evidence_propagating_ends_at_the_configured_wait() {
    let mut f = propagating_with_a_slow_verifier(600.0);
    f.spec.rotation.verifier_evidence = false;
    f.now = wait_until(&f) + Secs::seconds(1);
    report_all(&mut f, &[client(2, 3.0, Some(60.0))]);
    step(&mut f);
    assert_eq!(phase(&f), RotationPhase::Activating);
}

#[test]
fn pods_without_the_verifiers_endpoint_say_so_and_do_not_hold_the_rotation() {
    let mut f = propagating_with_a_slow_verifier(600.0);
    f.now = wait_until(&f) + Secs::seconds(1);
    f.observed.verifiers = f
        .observed
        .pods
        .iter()
        .map(|_| Err("http://p/verifiers answered HTTP 404".to_string()))
        .collect();
    let d = step(&mut f);
    assert_eq!(phase(&f), RotationPhase::Activating);
    assert!(
        d.events
            .iter()
            .any(|e| e.reason == "VerifierEvidenceUnavailable" && e.warning)
    );
}

#[test]
fn a_lowered_cache_ttl_is_waited_out_until_the_verifiers_show_the_shorter_one() {
    let mut f = Fixture::idle(keyset("k0", &[], None, None));
    f.spec.jwks_cache_ttl_seconds = 30;
    f.now = at(0);
    step(&mut f);
    assert_eq!(f.status.jwks_cache_ttl_in_effect_seconds, Some(30));
    // Lowered to 3 right before a rotation; a verifier still caches for 30 s.
    f.spec.jwks_cache_ttl_seconds = 3;
    f.annotate(ROTATE_ANNOTATION, "now");
    f.now = at(10);
    step(&mut f);
    step(&mut f);
    report_all(&mut f, &[client(1, 2.0, Some(30.0))]);
    step(&mut f); // Publishing
    f.observed.verifiers.clear();
    step(&mut f); // Propagating
    assert_eq!(phase(&f), RotationPhase::Propagating);
    assert_eq!(
        wait_until(&f) - f.now,
        Secs::seconds(40),
        "30 s + slack, not 3 s + slack"
    );
    assert_eq!(f.status.jwks_cache_ttl_in_effect_seconds, Some(30));
    // The verifier restarts with the new TTL and shows it: the next rotation waits 3 + 10.
    f.now = wait_until(&f);
    report_all(&mut f, &[client(1, 1.0, Some(3.0))]);
    step(&mut f);
    assert_eq!(f.status.jwks_cache_ttl_in_effect_seconds, Some(3));
}

#[test]
fn the_ledger_bounds_a_random_history_of_spec_changes() {
    // For every key that signed, the drain covers the highest max TTL it
    // signed under, whatever came after (property-style, deterministic).
    for seed in 0..40u64 {
        let mut f = Fixture::idle(keyset("k0", &[], None, None));
        f.spec.rotation.drain_seconds = None;
        f.now = at(0);
        let mut highest = 0;
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as i64
        };
        for _ in 0..5 {
            f.spec.max_ttl_seconds = 1 + next() % 900;
            highest = highest.max(f.spec.max_ttl_seconds);
            f.now += Secs::seconds(1);
            step(&mut f);
        }
        f.annotate(ROTATE_ANNOTATION, &format!("r{seed}"));
        until_phase(&mut f, RotationPhase::Propagating);
        f.now = wait_until(&f);
        until_phase(&mut f, RotationPhase::Draining);
        let drain = (wait_until(&f) - f.now).num_seconds();
        assert!(
            drain >= highest + 60,
            "seed {seed}: drain {drain} < {highest} + 60"
        );
    }
}
