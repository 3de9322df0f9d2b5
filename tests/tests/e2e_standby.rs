//! The standby key end to end (docs/architecture.md, The standby key): the
//! same harness, backends and load as `e2e_rotation.rs`, with
//! `spec.rotation.standby` on.
//!
//! - `emergency_standby`: an emergency with a propagated standby activates it;
//!   no token of the new key fails, at mint time or later, no mint fails, and
//!   the stolen tokens are still cut off within the test's own bound.
//! - `emergency_secret_scope`: the control, `macp.io/emergency-scope: secret`:
//!   the standby is discarded as a suspect, a fresh key is generated, and its
//!   first tokens fail at verifiers whose caches lack it (asserted > 0).
//! - `routine_standby_vs_none`: two MacpAuths in one run, one with a propagated
//!   standby and one without; the time from `macp.io/rotate` to the load
//!   generator's first token signed by the new key, side by side.
//! - `standby_restarts`: the operator killed in each step of the standby's
//!   preparation and of the routine rotation that activates it.
//!
//! Each prints its `e2e <scenario>: ...` line ([`LoadReport::summary_line`]).

mod e2e;

use std::collections::BTreeSet;
use std::ops::ControlFlow::{Break, Continue};
use std::time::{Duration, Instant};

use macp_auth_e2e::load::LoadReport;
use macp_auth_e2e::wait::wait_until;
use macp_auth_operator::crd::{MacpAuthStatus, RotationOutcome, RotationPhase, RotationTrigger};
use serde_json::{Value, json};

use e2e::*;

/// The annotations a user sets, as docs/operations.md spells them.
const ROTATE: &str = "macp.io/rotate";
const EMERGENCY_ROTATE: &str = "macp.io/emergency-rotate";
const EMERGENCY_SCOPE: &str = "macp.io/emergency-scope";

/// [`spec`] with the standby on or off.
fn standby_spec(alg: &str, standby: bool) -> Value {
    let mut s = spec(alg, true);
    s["rotation"]["standby"] = json!(standby);
    s
}

/// One observed state of the MacpAuth's rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    phase: RotationPhase,
    trigger: Option<RotationTrigger>,
    from_standby: bool,
}

impl Step {
    fn of(s: &MacpAuthStatus) -> Self {
        match &s.rotation {
            Some(r) if r.phase != RotationPhase::Idle => Self {
                phase: r.phase,
                trigger: r.trigger,
                from_standby: r.from_standby,
            },
            _ => Self {
                phase: RotationPhase::Idle,
                trigger: None,
                from_standby: false,
            },
        }
    }

    fn preparing_standby(&self) -> bool {
        self.trigger == Some(RotationTrigger::Standby)
    }
}

/// Every step seen, when, and where the operator was killed: (the step that
/// was observed, the phase the status showed once the operator was down).
#[derive(Default)]
struct Steps {
    seen: Vec<(Step, Instant)>,
    killed: Vec<(Step, RotationPhase)>,
}

impl Steps {
    fn note(&mut self, step: Step) -> bool {
        if self.seen.last().map(|(s, _)| *s) != Some(step) {
            self.seen.push((step, Instant::now()));
            true
        } else {
            false
        }
    }

    fn phases(&self, which: impl Fn(&Step) -> bool) -> Vec<RotationPhase> {
        self.seen
            .iter()
            .filter(|(s, _)| which(s))
            .map(|(s, _)| s.phase)
            .collect()
    }

    fn timings(&self) -> String {
        self.seen
            .windows(2)
            .map(|w| {
                let tag = if w[0].0.preparing_standby() {
                    "standby:"
                } else if w[0].0.from_standby {
                    "fromStandby:"
                } else {
                    ""
                };
                format!(
                    "{tag}{:?}={:.1}s",
                    w[0].0.phase,
                    (w[1].1 - w[0].1).as_secs_f64()
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Polls the status until `done`, noting every step; the operator is killed
/// as soon as a new step that `kill_in` selects is observed.
async fn follow(
    env: &mut Env,
    name: &str,
    what: &str,
    steps: &mut Steps,
    kill_in: impl Fn(&Step) -> bool,
    done: impl Fn(&MacpAuthStatus) -> bool,
) -> MacpAuthStatus {
    wait_until(what, PATIENCE, Duration::from_millis(10), async || {
        let s = env.status(name).await;
        let step = Step::of(&s);
        if steps.note(step) && kill_in(&step) {
            env.kill_operator().await;
            let down = Step::of(&env.status(name).await).phase;
            steps.killed.push((step, down));
        }
        if done(&s) { Break(s) } else { Continue(s) }
    })
    .await
}

fn standby_propagated(s: &MacpAuthStatus) -> bool {
    Step::of(s).phase == RotationPhase::Idle && s.standby.as_ref().is_some_and(|sb| sb.propagated)
}

/// Waits until the MacpAuth is Ready with a propagated standby; (its active
/// kid, the standby's kid, the status).
async fn wait_standby(env: &Env, name: &str) -> (String, String, MacpAuthStatus) {
    let s = env
        .wait_for(name, "Ready with a propagated standby", |s| {
            ready(s) && standby_propagated(s)
        })
        .await;
    let active = s.active_kid.clone().expect("active kid");
    let standby = s
        .standby
        .as_ref()
        .map(|sb| sb.kid.clone())
        .expect("standby");
    assert_ne!(active, standby);
    (active, standby, s)
}

/// The new key's own figures: (verify failures at mint time, unknown kid at
/// mint time, failed re-verifications, re-verifications).
fn key_figures(report: &LoadReport, kid: &str) -> (u64, u64, usize, usize) {
    let counts = report.per_kid.get(kid).cloned().unwrap_or_default();
    let late: Vec<_> = report.late.iter().filter(|c| c.kid == kid).collect();
    (
        counts.verify_failures,
        counts.unknown_at_verify,
        late.iter().filter(|c| !c.ok).count(),
        late.len(),
    )
}

/// Seconds from `requested` (the load generator's clock) to its first token
/// signed by `kid`.
fn first_token_after(report: &LoadReport, kid: &str, requested: Duration) -> Option<f64> {
    report
        .records
        .iter()
        .filter(|r| r.kid == kid)
        .map(|r| r.at)
        .min()
        .map(|at| at.saturating_sub(requested).as_secs_f64())
}

/// Scenarios 1 and 2: an emergency rotation of a MacpAuth whose standby is
/// propagated, with `scope` as `macp.io/emergency-scope` (none: a pod,
/// process or environment leaked). The stolen-token cutoff is asserted as in
/// the emergency scenario of `e2e_rotation.rs`: against the last moment any
/// pod served the suspect key (polled directly) plus one cache TTL plus
/// [`CUTOFF_SLACK`]. Returns (report, standby kid, status after).
async fn emergency(
    scenario: &str,
    scope: Option<&str>,
) -> (LoadReport, String, String, MacpAuthStatus) {
    let mut env = Env::start(RbacMode::Namespaced).await;
    let name = env
        .create("standby-emergency", standby_spec("ES256", true))
        .await;
    env.wait_for(&name, "Ready", |s| ready(s) && s.active_kid.is_some())
        .await;
    let mut config = load_config();
    config.algorithms = vec![jsonwebtoken::Algorithm::ES256];
    let (proxy, load) = env.load_with(&name, config).await;
    // The load runs while the standby propagates: its verifiers' caches pick
    // the standby up as real runtimes' would.
    let (suspect, standby, before) = wait_standby(&env, &name).await;

    let stolen = steal_tokens(scenario, &proxy.url(), &load, &suspect).await;

    let (all_pods, _) = env.endpoints(&name).await;
    let seen = JwksWatch::start(all_pods);
    let mut annotations = json!({EMERGENCY_ROTATE: "INC-S"});
    if let Some(scope) = scope {
        annotations[EMERGENCY_SCOPE] = json!(scope);
    }
    let t0 = Instant::now();
    // One write: the operator never sees the request without its scope.
    env.patch(&name, json!({"metadata": {"annotations": annotations}}))
        .await;
    let mut steps = Steps::default();
    let history_before = before.history.len();
    let follow = follow(
        &mut env,
        &name,
        "the emergency rotation to finish",
        &mut steps,
        |_| false,
        |s| s.history.len() > history_before,
    );
    let watch = watch_stolen_cutoff(&load, &stolen, t0);
    let (after, cut) = tokio::join!(follow, watch);
    let emergency_s = t0.elapsed().as_secs_f64();
    settle().await;
    // The next standby's preparation starts once the emergency is over.
    let next = env
        .wait_for(&name, "the next standby's preparation", |s| {
            Step::of(s).preparing_standby() || s.standby.is_some()
        })
        .await;
    let next_standby = next
        .rotation
        .as_ref()
        .and_then(|r| r.new_kid.clone().or_else(|| r.pending_kid.clone()))
        .or_else(|| next.standby.as_ref().map(|sb| sb.kid.clone()));
    let report = load.stop().await;
    let served = seen.stop().await;
    env.shutdown().await;

    let rec = after.history.last().expect("history entry");
    assert_eq!(rec.trigger, RotationTrigger::Emergency);
    assert_eq!(rec.request_id.as_deref(), Some("INC-S"));
    assert_eq!(rec.outcome, RotationOutcome::Succeeded, "{rec:?}");
    assert!(after.suspect_kids.contains(&suspect));
    assert!(!after.published_kids.contains(&suspect));
    let new_kid = after.active_kid.clone().expect("active kid");
    assert_ne!(new_kid, suspect);
    assert_eq!(rec.new_kid.as_deref(), Some(new_kid.as_str()));
    let next_standby = next_standby.expect("the next standby's kid");
    assert!(
        next_standby != new_kid && !after.suspect_kids.contains(&next_standby),
        "{scenario}: next standby {next_standby} (active {new_kid}, suspects {:?})",
        after.suspect_kids
    );
    let (cutoffs, bound, last_served) =
        assert_suspect_cut_off(scenario, &suspect, &served, t0, cut);
    assert_eq!(
        report.mint_errors, 0,
        "{scenario}: mints failed: {:?}",
        report.mint_error_reasons
    );
    assert_late_checks_made(scenario, &report);

    let (fresh_failures, fresh_unknown, fresh_late_failures, fresh_late) =
        key_figures(&report, &new_kid);
    let cutoff_s = cutoffs
        .iter()
        .map(Duration::as_secs_f64)
        .fold(0.0, f64::max);
    let extra = format!(
        "new_key_verify_failures={fresh_failures} new_key_late_verify_failures={fresh_late_failures} new_key_unknown_kid={fresh_unknown} new_key_late_checks={fresh_late} new_key_is_standby={} cutoff_s={cutoff_s:.1}",
        new_kid == standby
    );
    println!(
        "{} bound_s={:.1} last_served_s={:.1} emergency_rotation_s={emergency_s:.1} ttl_s={CACHE_TTL} phases={}",
        report.summary_line_with(scenario, &extra),
        bound.as_secs_f64(),
        last_served.as_secs_f64(),
        steps.timings()
    );
    (report, new_kid, standby, after)
}

/// Scenario 1: a leaked pod, process or environment (no scope). The standby
/// every verifier already holds becomes the active key: no token of the new
/// key fails at mint time or later, no mint fails, and the standby is no
/// suspect. The suspect-key tokens the load holds are cut off with the
/// stolen ones: that is the emergency, not a failure of legitimate tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_standby_1_emergency_with_a_propagated_standby_fails_nothing() {
    let scenario = "emergency_standby";
    let (report, new_kid, standby, after) = emergency(scenario, None).await;
    let (failures, unknown, late_failures, late) = key_figures(&report, &new_kid);
    let line = report.summary_line(scenario);
    assert!(
        report.per_kid.get(&new_kid).is_some_and(|c| c.minted > 200) && late > 100,
        "{scenario}: too few tokens of the new key to judge: {line}"
    );
    assert_eq!(failures, 0, "{scenario}: {:?}", report.failure_reasons);
    assert_eq!(unknown, 0, "{scenario}: {line}");
    assert_eq!(
        late_failures, 0,
        "{scenario}: {:?}",
        report.late_failure_reasons
    );
    assert_eq!(
        new_kid, standby,
        "{scenario}: the emergency did not activate the standby"
    );
    assert!(
        !after.suspect_kids.contains(&standby),
        "{scenario}: the standby is a suspect: {:?}",
        after.suspect_kids
    );
}

/// Scenario 2, the control: the Secret may have leaked, so the standby is a
/// suspect too and a fresh key replaces both, as without a standby: its first
/// tokens reach verifiers whose caches lack it (asserted > 0). This is what
/// scenario 1's zero would look like if the standby were not used.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_standby_2_secret_scope_emergency_discards_the_standby() {
    let scenario = "emergency_secret_scope";
    let (report, new_kid, standby, after) = emergency(scenario, Some("secret")).await;
    let (failures, unknown, _, _) = key_figures(&report, &new_kid);
    assert!(
        failures > 0 && unknown > 0,
        "{scenario}: the control saw no failure of the fresh key: the harness cannot see what the standby prevents: {}",
        report.summary_line(scenario)
    );
    assert_ne!(
        new_kid, standby,
        "{scenario}: the standby was activated although the Secret may have leaked"
    );
    assert!(
        after.suspect_kids.contains(&standby),
        "{scenario}: the standby is not a suspect: {:?}",
        after.suspect_kids
    );
    assert!(
        !after.published_kids.contains(&standby),
        "{scenario}: the discarded standby is still published"
    );
}

/// Scenario 3: a routine rotation with a propagated standby against one
/// without, in one run (two MacpAuths, each with its own load). The figure is
/// the time from `macp.io/rotate` to the first token its load generator got
/// signed by the new key: the load's own clock, not the operator's status.
/// No timed assertion; both rotations complete with the routine assertions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_standby_3_routine_rotation_with_and_without_a_standby() {
    let scenario = "routine_standby_vs_none";
    let mut env = Env::start(RbacMode::ClusterWide).await;
    let none = env
        .create("routine-none", standby_spec("ES256", false))
        .await;
    let with = env
        .create("routine-standby", standby_spec("ES256", true))
        .await;
    let none_before = env.wait_ready(&none).await;
    env.wait_for(&with, "Ready", |s| ready(s) && s.active_kid.is_some())
        .await;
    let none_old = none_before.active_kid.clone().expect("active kid");
    let (_p1, none_load) = env.load(&none, jsonwebtoken::Algorithm::ES256).await;
    let (_p2, with_load) = env.load(&with, jsonwebtoken::Algorithm::ES256).await;
    // Every verifier caches the keyset before the requests.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let none_requested = none_load.snapshot().elapsed;
    env.annotate(&none, ROTATE, "without-standby").await;
    // Meanwhile the other one's standby propagates.
    let (with_old, standby, with_before) = wait_standby(&env, &with).await;
    let with_requested = with_load.snapshot().elapsed;
    env.annotate(&with, ROTATE, "with-standby").await;
    let mut steps = Steps::default();
    let with_history = with_before.history.len();
    let with_after = follow(
        &mut env,
        &with,
        "the rotation from the standby to finish",
        &mut steps,
        |_| false,
        |s| s.history.len() > with_history,
    )
    .await;
    let none_history = none_before.history.len();
    let none_after = env
        .wait_for(&none, "the rotation without a standby to finish", |s| {
            s.history.len() > none_history
        })
        .await;
    settle().await;
    hold_past_the_leeway(&none_load, &none_old).await;
    hold_past_the_leeway(&with_load, &with_old).await;
    let none_report = none_load.stop().await;
    let with_report = with_load.stop().await;
    env.shutdown().await;

    let with_new = with_after.active_kid.clone().expect("active kid");
    let none_new = none_after.active_kid.clone().expect("active kid");
    let with_s = first_token_after(&with_report, &with_new, with_requested)
        .expect("a token of the standby key");
    let none_s =
        first_token_after(&none_report, &none_new, none_requested).expect("a token of the new key");
    println!("{}", with_report.summary_line("routine_with_standby"));
    println!("{}", none_report.summary_line("routine_without_standby"));
    println!(
        "e2e {scenario}: request_to_new_key_signing_s with_standby={with_s:.1} without_standby={none_s:.1} ratio={:.1} ttl_s={CACHE_TTL} with_standby_phases={}",
        none_s / with_s.max(0.001),
        steps.timings()
    );
    for (after, old, label) in [
        (&none_after, &none_old, "without"),
        (&with_after, &with_old, "with"),
    ] {
        let rec = after.history.last().expect("history entry");
        assert_eq!(rec.outcome, RotationOutcome::Succeeded, "{label}: {rec:?}");
        assert_eq!(rec.trigger, RotationTrigger::Manual, "{label}: {rec:?}");
        assert_ne!(after.active_kid.as_ref(), Some(old), "{label}");
    }
    assert_eq!(
        with_new, standby,
        "{scenario}: the rotation did not activate the standby"
    );
    let from_standby = steps.phases(|s| !s.preparing_standby() && s.phase != RotationPhase::Idle);
    for p in [RotationPhase::Publishing, RotationPhase::Propagating] {
        assert!(
            !from_standby.contains(&p),
            "{scenario}: the rotation from the standby went through {p:?} again: {from_standby:?}"
        );
    }
    assert_clean_run("routine_with_standby", &with_report);
    assert_clean_run("routine_without_standby", &none_report);
}

/// Scenario 4: an existing MacpAuth gains its standby (the spec switched
/// on), the operator killed as soon as each step of the preparation is
/// observed (KeyGenerated, Publishing, Propagating with trigger `standby`):
/// the preparation parks with its one key, no history entry, the active key
/// unchanged. Then a routine rotation from that standby, the operator killed
/// in each of its phases (KeyGenerated and Activating with `fromStandby`,
/// the drain, the retirement): it completes with the standby as the active
/// key, exactly the old and the standby key signed, the active key never
/// missing from the Secret, and the routine assertions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_standby_4_operator_killed_in_every_standby_step() {
    let scenario = "standby_restarts";
    let mut env = Env::start(RbacMode::ClusterWide).await;
    // RS256: the standby's key generation takes long enough to be observed.
    let name = env
        .create("standby-restarts", standby_spec("RS256", false))
        .await;
    let before = env.wait_ready(&name).await;
    let old_kid = before.active_kid.clone().expect("active kid");
    let (_proxy, load) = env.load(&name, jsonwebtoken::Algorithm::RS256).await;
    let (missing, watcher) = watch_active_key(&env, &name);
    settle().await;

    env.patch(&name, json!({"spec": {"rotation": {"standby": true}}}))
        .await;
    let mut prep = Steps::default();
    let parked = follow(
        &mut env,
        &name,
        "the standby's preparation to park",
        &mut prep,
        Step::preparing_standby,
        standby_propagated,
    )
    .await;
    let standby = parked
        .standby
        .as_ref()
        .map(|s| s.kid.clone())
        .expect("standby");
    assert_eq!(
        parked.history.len(),
        before.history.len(),
        "{scenario}: the preparation left a history entry"
    );
    assert_eq!(parked.active_kid.as_deref(), Some(old_kid.as_str()));

    env.annotate(&name, ROTATE, "standby-crash").await;
    let mut rot = Steps::default();
    let history_before = parked.history.len();
    let after = follow(
        &mut env,
        &name,
        "the rotation from the standby to finish",
        &mut rot,
        |s| s.phase != RotationPhase::Idle && !s.preparing_standby(),
        |s| s.history.len() > history_before,
    )
    .await;
    settle().await;
    hold_past_the_leeway(&load, &old_kid).await;
    let report = load.stop().await;
    watcher.abort();
    let active_in_secret = env.active_private_kid(&name).await;
    let restarts = match &env.backend {
        Backend::Simulated(sim) => sim.operator.starts - 1,
        Backend::Real { .. } => 0,
    };
    env.shutdown().await;

    use RotationPhase::*;
    let prep_phases = prep.phases(Step::preparing_standby);
    let mut it = prep_phases.iter();
    for p in [Publishing, Propagating] {
        assert!(
            it.any(|s| *s == p),
            "{scenario}: preparation phase {p:?} skipped: saw {prep_phases:?}"
        );
    }
    let rec = after.history.last().expect("history entry");
    assert_eq!(rec.outcome, RotationOutcome::Succeeded, "{rec:?}");
    assert_eq!(rec.request_id.as_deref(), Some("standby-crash"));
    assert_eq!(after.history.len(), history_before + 1, "one rotation");
    let new_kid = after.active_kid.clone().expect("active kid");
    assert_eq!(
        new_kid, standby,
        "{scenario}: the rotation did not activate the standby"
    );
    assert_eq!(rec.new_kid.as_deref(), Some(new_kid.as_str()));
    assert_eq!(active_in_secret.as_deref(), Some(new_kid.as_str()));
    let rot_phases = rot.phases(|s| !s.preparing_standby() && s.phase != Idle);
    let mut it = rot_phases.iter();
    for p in [Activating, Draining, Retiring] {
        assert!(
            it.any(|s| *s == p),
            "{scenario}: phase {p:?} skipped: saw {rot_phases:?}"
        );
    }
    for p in [Publishing, Propagating] {
        assert!(
            !rot_phases.contains(&p),
            "{scenario}: the rotation from the standby went through {p:?} again: {rot_phases:?}"
        );
    }
    let kids: BTreeSet<&str> = report.per_kid.keys().map(String::as_str).collect();
    assert_eq!(
        kids,
        BTreeSet::from([old_kid.as_str(), new_kid.as_str()]),
        "{scenario}: kids that signed the load's tokens"
    );
    assert_eq!(
        *missing.lock().unwrap_or_else(|e| e.into_inner()),
        0,
        "{scenario}: active key missing"
    );
    // The long steps are certainly observed, and the operator was down in
    // them; the KeyGenerated steps last a round or two and are killed when seen.
    for (preparing, phase) in [(true, Publishing), (true, Propagating), (false, Activating)] {
        assert!(
            prep.killed
                .iter()
                .chain(&rot.killed)
                .any(|(s, down)| s.preparing_standby() == preparing
                    && s.phase == phase
                    && *down == phase),
            "{scenario}: the operator was not killed in {phase:?} (preparing the standby: {preparing})"
        );
    }
    assert_clean_run(scenario, &report);
    assert_old_key_held_to_the_end(scenario, &report, &old_kid);
    let killed: Vec<String> = prep
        .killed
        .iter()
        .chain(&rot.killed)
        .map(|(step, down)| {
            let tag = if step.preparing_standby() {
                "standby:"
            } else if step.from_standby {
                "fromStandby:"
            } else {
                ""
            };
            format!("{tag}{:?}->{down:?}", step.phase)
        })
        .collect();
    println!(
        "{} restarts={restarts} killed_in(observed->status_when_down)={killed:?} preparation={} rotation={}",
        report.summary_line(scenario),
        prep.timings(),
        rot.timings()
    );
}

// ------------------------------------------------------------------ helpers
