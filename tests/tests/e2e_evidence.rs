//! Layer 4 (docs/architecture.md, Test layers): rotations whose waits must
//! come from what is out there, not from the spec as it is now
//! (docs/operations.md, "The drain ledger" and "Verifier evidence").
//!
//! - `ttl_lowered`: tokens minted under a 60 s max TTL, then the max TTL
//!   lowered to 5 s in the same apply as the rotation request: the old key
//!   drains for its 60 s tokens, re-verified until their last second.
//! - `slow_verifier`: one verifier caches the JWKS for ten times
//!   `jwksCacheTtlSeconds`; the rotation waits for its fetch (the status
//!   names it meanwhile) and no token fails.
//! - `slow_verifier_evidence_off`: the control, with `verifierEvidence: false`:
//!   the new key signs before that verifier has it, and its tokens fail.
//! - `verifier_gone`: that verifier stops (deleted) right before the
//!   rotation: it holds the rotation only until
//!   `propagationTimeoutSeconds`, and the Warning names it.
//!
//! Simulated cluster only: the verifiers are told apart by the address their
//! node's kube-proxy connects from (each verifier's Service proxy has its
//! own, `tests/src/proxy.rs`), which a run against a real cluster through a
//! kubeconfig cannot arrange. Each prints the usual
//! `e2e <scenario>: minted=.. verify_failures=.. late_verify_failures=.. mint_errors=..` line.

mod e2e;

use std::ops::ControlFlow::{Break, Continue};
use std::time::{Duration, Instant};

use e2e::{Env, PATIENCE, PhaseLog, REPLICAS, RbacMode, assert_clean_run, ready};
use kube::api::{Api, Patch, PatchParams};
use macp_auth_e2e::load::{LoadConfig, LoadGenerator, LoadReport};
use macp_auth_e2e::proxy::ServiceProxy;
use macp_auth_e2e::wait::wait_until;
use macp_auth_operator::crd::{MacpAuth, MacpAuthStatus, RotationOutcome, RotationPhase};
use serde_json::{Value, json};

/// `jwksCacheTtlSeconds` of these scenarios.
const TTL: u64 = 4;
/// The slow verifier's cache: ten times the configured TTL.
const SLOW_TTL: u64 = 10 * TTL;
/// The tokens' lifetime, short so that the drain (it + 60 s) stays short.
const MAX_TTL: u64 = 2;

fn spec(evidence: bool, ceiling: i64) -> Value {
    json!({
        "replicas": REPLICAS,
        "signingAlg": "ES256",
        "jwksCacheTtlSeconds": TTL,
        "maxTtlSeconds": MAX_TTL,
        "defaultTtlSeconds": MAX_TTL,
        "rotation": {
            "rolloutTimeoutSeconds": 120,
            "verifierEvidence": evidence,
            "propagationTimeoutSeconds": ceiling,
            "standby": false
        }
    })
}

fn load_config(cache_ttl: u64, ttls: Vec<u64>) -> LoadConfig {
    let mut config = LoadConfig::new(cache_ttl);
    config.algorithms = vec![jsonwebtoken::Algorithm::ES256];
    config.max_duration = PATIENCE * 2;
    config.ttls = ttls;
    config
}

/// A second runtime whose verifier caches the JWKS for [`SLOW_TTL`]: its own
/// minting loop, its own verifier, through its own node's kube-proxy.
async fn slow_verifier(env: &Env, name: &str) -> LoadGenerator {
    let mut config = load_config(SLOW_TTL, vec![MAX_TTL]);
    config.verifiers = 1;
    config.workers = 1;
    config.pause = Duration::from_millis(50);
    let (_, lagged) = env.endpoints(name).await;
    let proxy = ServiceProxy::start_with(lagged)
        .await
        .expect("service proxy");
    LoadGenerator::start(proxy, config)
        .await
        .expect("slow verifier's load")
}

/// The slow verifier as the pods see it: its node's address.
fn slow_id(slow: &LoadGenerator) -> String {
    slow.verifier_proxy(0).source_addr().to_string()
}

/// Waits until the slow verifier has fetched the JWKS `n` times, and returns
/// the moment of the last of them: the pods then know its interval.
async fn fetches(slow: &LoadGenerator, n: usize) -> Instant {
    wait_until(
        "the slow verifier's JWKS fetches",
        PATIENCE,
        Duration::from_millis(20),
        async || {
            let served = slow.verifier_proxy(0).jwks_served();
            match served.get(n - 1) {
                Some(s) => Break(s.at),
                None => Continue(served.len()),
            }
        },
    )
    .await
}

/// Asks for a rotation; returns the history length before it.
async fn rotate(env: &Env, name: &str, request: &str) -> usize {
    let before = env.status(name).await.history.len();
    env.annotate(name, "macp.io/rotate", request).await;
    before
}

/// What the scenario saw of the rotation while following it.
#[derive(Default)]
struct Followed {
    /// When each phase was first seen.
    phases: PhaseLog,
    /// Whether `status.verifiers.waitingFor` named the verifier watched.
    named_while_waiting: bool,
    /// The longest Draining wait seen (`waitUntil - phaseSince`).
    drain: Option<chrono::Duration>,
}

impl Followed {
    fn entered(&self, phase: RotationPhase) -> Option<Instant> {
        self.phases
            .0
            .iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, t)| *t)
    }

    fn timings(&self) -> String {
        self.phases.timings()
    }
}

/// Follows the rotation until the history grows past `history_before`,
/// noting the phases, whether `watched` is waited for by name, and the drain.
async fn follow(
    env: &Env,
    name: &str,
    history_before: usize,
    watched: &str,
) -> (Followed, MacpAuthStatus) {
    let mut seen = Followed::default();
    let status = wait_until(
        "the rotation to finish",
        PATIENCE,
        Duration::from_millis(25),
        async || {
            let s = env.status(name).await;
            let rot = s.rotation.clone().unwrap_or_default();
            seen.phases.note(rot.phase);
            if s.verifiers
                .as_ref()
                .is_some_and(|v| v.waiting_for.iter().any(|w| w == watched))
            {
                seen.named_while_waiting = true;
            }
            if rot.phase == RotationPhase::Draining
                && let (Some(from), Some(to)) = (rot.phase_since, rot.wait_until)
            {
                seen.drain = Some(seen.drain.map_or(to - from, |d| d.max(to - from)));
            }
            if s.history.len() > history_before && rot.phase == RotationPhase::Idle {
                Break(s)
            } else {
                Continue(s.history.len())
            }
        },
    )
    .await;
    (seen, status)
}

/// Warning events about `name` with `reason`, their messages.
async fn warnings(env: &Env, name: &str, reason: &str) -> Vec<String> {
    env.events_about(name)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}

fn condition<'a>(
    s: &'a MacpAuthStatus,
    type_: &str,
) -> Option<&'a macp_auth_operator::crd::Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

/// Both loads' counts as one run's.
fn combined(mut a: LoadReport, b: &LoadReport) -> LoadReport {
    a.minted += b.minted;
    a.mint_errors += b.mint_errors;
    a.verified += b.verified;
    a.verify_failures += b.verify_failures;
    a.unknown_kid_at_verify += b.unknown_kid_at_verify;
    a.late_checks += b.late_checks;
    a.late_verify_failures += b.late_verify_failures;
    a.late_checks_missed += b.late_checks_missed;
    a.leeway_checks += b.leeway_checks;
    a.leeway_verify_failures += b.leeway_verify_failures;
    for (reason, n) in &b.failure_reasons {
        *a.failure_reasons.entry(reason.clone()).or_default() += n;
    }
    for (reason, n) in &b.mint_error_reasons {
        *a.mint_error_reasons.entry(reason.clone()).or_default() += n;
    }
    for (kid, c) in &b.per_kid {
        let e = a.per_kid.entry(kid.clone()).or_default();
        e.minted += c.minted;
        e.verify_failures += c.verify_failures;
        e.unknown_at_verify += c.unknown_at_verify;
    }
    a.records.extend(b.records.iter().cloned());
    a.late.extend(b.late.iter().cloned());
    a
}

/// A verifier caching ten times longer than configured, with or without the
/// evidence: (the run's combined report, the slow verifier's own, what was
/// followed, the final status, the moment of its first fetch after the request).
async fn slow_verifier_rotation(
    scenario: &str,
    evidence: bool,
) -> (
    LoadReport,
    LoadReport,
    Followed,
    MacpAuthStatus,
    Instant,
    Env,
) {
    let mut env = Env::start(RbacMode::ClusterWide).await;
    let name = env
        .create(scenario.replace('_', "-").as_str(), spec(evidence, 600))
        .await;
    env.wait_ready(&name).await;
    let (_proxy, load) = env.load_with(&name, load_config(TTL, vec![MAX_TTL])).await;
    let slow = slow_verifier(&env, &name).await;
    let id = slow_id(&slow);
    // Its second fetch: the pods know its interval. Right after it, its
    // cache holds only the old key for the next SLOW_TTL seconds, longer
    // than the rollout and the configured wait together.
    let second = fetches(&slow, 2).await;
    let history_before = rotate(&env, &name, scenario).await;
    let requested = Instant::now();
    eprintln!(
        "{scenario}: rotation requested {:.1}s after the slow verifier's second fetch",
        (requested - second).as_secs_f64()
    );
    let (followed, status) = follow(&env, &name, history_before, &id).await;
    let third = slow
        .verifier_proxy(0)
        .jwks_served()
        .get(2)
        .map(|s| s.at)
        .unwrap_or(requested);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let slow_report = slow.stop().await;
    let main_report = load.stop().await;
    let all = combined(main_report, &slow_report);
    (all, slow_report, followed, status, third, env)
}

fn assert_succeeded(scenario: &str, status: &MacpAuthStatus) {
    let last = status.history.last().expect("a history entry");
    assert_eq!(
        last.outcome,
        RotationOutcome::Succeeded,
        "{scenario}: {last:?}"
    );
    assert!(ready(status), "{scenario}: not Ready after the rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    e2e_real_cluster,
    ignore = "verifiers are told apart by their node's address, which only the simulation's Service proxies arrange"
)]
async fn e2e_slow_verifier_holds_propagating_until_it_fetched_the_new_key() {
    let scenario = "slow_verifier";
    let (all, slow, followed, status, third, env) = slow_verifier_rotation(scenario, true).await;
    let activating = followed
        .entered(RotationPhase::Activating)
        .expect("Activating seen");
    let propagating = followed
        .entered(RotationPhase::Propagating)
        .expect("Propagating seen");
    let held = activating.saturating_duration_since(propagating);
    println!(
        "{}",
        all.summary_line_with(
            scenario,
            &format!(
                "slow_verifier_failures={} propagating_s={:.1} activating_after_its_fetch_s={:.1} phases={}",
                slow.verify_failures + slow.late_verify_failures,
                held.as_secs_f64(),
                activating.saturating_duration_since(third).as_secs_f64(),
                followed.timings()
            )
        )
    );
    assert_succeeded(scenario, &status);
    assert!(
        followed.named_while_waiting,
        "{scenario}: status.verifiers.waitingFor never named the slow verifier; {:?}",
        status.verifiers
    );
    // Held past the configured wait (TTL + 10 s), until the slow verifier's fetch.
    assert!(
        held > Duration::from_secs(TTL + 10),
        "{scenario}: Propagating lasted {held:?}, no longer than the configured wait"
    );
    assert!(
        activating >= third,
        "{scenario}: the new key was activated before the slow verifier fetched it"
    );
    let c = condition(&status, "VerifiersPropagated").expect("VerifiersPropagated");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "AllVerifiersFetched"),
        "{c:?}"
    );
    assert!(
        slow.minted > 50 && slow.verified > 50,
        "{scenario}: the slow verifier checked too little: {slow:?}"
    );
    assert_clean_run(scenario, &all);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    e2e_real_cluster,
    ignore = "verifiers are told apart by their node's address, which only the simulation's Service proxies arrange"
)]
async fn e2e_slow_verifier_without_evidence_fails_its_tokens() {
    let scenario = "slow_verifier_evidence_off";
    let (all, slow, followed, status, _third, env) = slow_verifier_rotation(scenario, false).await;
    println!(
        "{}",
        all.summary_line_with(
            scenario,
            &format!(
                "slow_verifier_failures={} phases={}",
                slow.verify_failures + slow.late_verify_failures,
                followed.timings()
            )
        )
    );
    assert_succeeded(scenario, &status);
    // The control: without the evidence the new key signs while the slow
    // verifier's cache lacks it, and its fresh tokens fail there.
    assert!(
        slow.verify_failures > 0,
        "{scenario}: the control saw no failure; the scenario cannot tell the evidence from its absence: {}",
        slow.summary_line(scenario)
    );
    // Every one of them for a kid its cache did not hold (macp-auth reports
    // it as a bad signature: it tries the keys it has).
    assert_eq!(
        slow.unknown_kid_at_verify, slow.verify_failures,
        "{scenario}: failures for another reason than an unknown kid: {:?}",
        slow.failure_reasons
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    e2e_real_cluster,
    ignore = "verifiers are told apart by their node's address, which only the simulation's Service proxies arrange"
)]
async fn e2e_a_verifier_gone_holds_the_rotation_only_until_the_ceiling() {
    let scenario = "verifier_gone";
    let ceiling: i64 = 30;
    let mut env = Env::start(RbacMode::ClusterWide).await;
    let name = env.create("gone", spec(true, ceiling)).await;
    env.wait_ready(&name).await;
    let (_proxy, load) = env.load_with(&name, load_config(TTL, vec![MAX_TTL])).await;
    let slow = slow_verifier(&env, &name).await;
    let id = slow_id(&slow);
    fetches(&slow, 2).await;
    // Deleted: it never fetches again, but the pods saw it fetch every 40 s.
    let slow_report = slow.stop().await;
    let history_before = rotate(&env, &name, scenario).await;
    let (followed, status) = follow(&env, &name, history_before, &id).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.stop().await;
    let propagating = followed
        .entered(RotationPhase::Propagating)
        .expect("Propagating seen");
    let activating = followed
        .entered(RotationPhase::Activating)
        .expect("Activating seen");
    let held = activating.saturating_duration_since(propagating);
    println!(
        "{}",
        report.summary_line_with(
            scenario,
            &format!(
                "propagating_s={:.1} ceiling_s={ceiling} gone_verifier_minted={} phases={}",
                held.as_secs_f64(),
                slow_report.minted,
                followed.timings()
            )
        )
    );
    assert_succeeded(scenario, &status);
    assert!(
        followed.named_while_waiting,
        "{scenario}: the gone verifier was never waited for by name"
    );
    // Held to the ceiling, not to the end of the configured wait, and not
    // much past it (the operator polls every 2 s).
    let ceiling = Duration::from_secs(ceiling as u64);
    assert!(
        held + Duration::from_secs(1) >= ceiling && held <= ceiling + Duration::from_secs(15),
        "{scenario}: Propagating lasted {held:?} against a ceiling of {ceiling:?}"
    );
    let warnings = warnings(&env, &name, "PropagationTimeout").await;
    assert!(
        warnings.iter().any(|w| w.contains(&id)),
        "{scenario}: no PropagationTimeout Warning naming {id}: {warnings:?}"
    );
    let c = condition(&status, "VerifiersPropagated").expect("VerifiersPropagated");
    assert_eq!(c.status, "False", "{c:?}");
    assert!(c.message.contains(&id), "{c:?}");
    // The verifiers that remained lost nothing.
    assert_clean_run(scenario, &report);
    env.shutdown().await;
}

/// The max TTL before the rotation, and after it.
const HIGH_TTL: u64 = 60;
const LOW_TTL: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    e2e_real_cluster,
    ignore = "verifiers are told apart by their node's address, which only the simulation's Service proxies arrange"
)]
async fn e2e_lowering_max_ttl_with_the_rotation_request_drains_for_the_old_tokens() {
    let scenario = "ttl_lowered";
    let mut env = Env::start(RbacMode::ClusterWide).await;
    let name = env
        .create(
            "lowered",
            json!({
                "replicas": REPLICAS,
                "signingAlg": "ES256",
                "jwksCacheTtlSeconds": TTL,
                "maxTtlSeconds": HIGH_TTL,
                "defaultTtlSeconds": LOW_TTL,
                "rotation": {"rolloutTimeoutSeconds": 120, "standby": false}
            }),
        )
        .await;
    let before = env.wait_ready(&name).await;
    let old_kid = before.active_kid.clone().expect("active kid");
    let mut config = load_config(TTL, vec![HIGH_TTL]);
    // Every token is held and re-verified until its last second; fewer of
    // them, so that the holders keep up.
    config.hold_fraction = 1.0;
    config.pause = Duration::from_millis(50);
    let (_proxy, load) = env.load_with(&name, config).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    // One apply: the max TTL lowered and a rotation requested.
    let history_before = before.history.len();
    let patch = json!({
        "metadata": {"annotations": {"macp.io/rotate": scenario}},
        "spec": {"maxTtlSeconds": LOW_TTL}
    });
    let api: Api<MacpAuth> = Api::namespaced(env.client.clone(), &env.ns);
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("lower the max TTL and request a rotation");
    let (followed, status) = follow(&env, &name, history_before, "").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.stop().await;
    let drain = followed.drain.expect("a Draining wait seen");
    // The old key's longest tokens, re-verified in their last second and in the
    // last second of the verifier's leeway after it.
    let last_second = |leeway: bool| {
        report
            .late
            .iter()
            .filter(|c| c.kid == old_kid && c.ttl == HIGH_TTL && c.ok)
            .filter(|c| match c.leeway_left {
                None => !leeway && c.remaining <= Duration::from_secs(1),
                Some(left) => leeway && left <= Duration::from_secs(1),
            })
            .count()
    };
    let (life, leeway) = (last_second(false), last_second(true));
    println!(
        "{}",
        report.summary_line_with(
            scenario,
            &format!(
                "drain_s={} old_longest_tokens_checked_in_last_second={life} in_last_leeway_second={leeway} phases={}",
                drain.num_seconds(),
                followed.timings()
            )
        )
    );
    assert_succeeded(scenario, &status);
    assert!(
        drain >= chrono::Duration::seconds(HIGH_TTL as i64 + 60),
        "{scenario}: the old key drained {drain}, less than its {HIGH_TTL} s tokens + 60 s"
    );
    let old = status.keys.iter().find(|k| k.kid == old_kid);
    assert!(
        old.is_none(),
        "{scenario}: the old key is still in the Secret: {old:?}"
    );
    assert!(
        life > 0,
        "{scenario}: no {HIGH_TTL} s token of {old_kid} re-verified in its last second"
    );
    assert!(
        leeway > 0,
        "{scenario}: no {HIGH_TTL} s token of {old_kid} re-verified in the last second of its leeway"
    );
    assert_clean_run(scenario, &report);
    env.shutdown().await;
}
