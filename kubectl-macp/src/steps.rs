//! The steps of a rotation and when each ends, worked out from the spec and
//! the status alone (docs/architecture.md, Key rotation).
//!
//! Timed waits are exact: the operator records their end in
//! `status.rotation.waitUntil`, and a step still to come lasts what the
//! operator's own rules say (the cache TTL in effect plus the slack, the
//! drain from the retiring key's ledger). A rollout step lasts as long as the
//! pods take to roll, which nothing predicts: it is counted as instant for
//! the earliest end and as its whole `rolloutTimeoutSeconds` for the latest
//! one. Propagating with verifier evidence likewise ends between the cache
//! wait and `propagationTimeoutSeconds`. So every step has a window
//! `[earliest, latest]`.

use chrono::{DateTime, Duration, Utc};
use macp_auth_operator::crd::{
    MacpAuthSpec, MacpAuthStatus, RotationOutcome, RotationPhase, RotationStatus, RotationTrigger,
    emergency_scope_spares_standby,
};
use macp_auth_operator::rotation::PROPAGATION_SLACK_SECONDS;
use macp_auth_operator::rotation::evidence::cache_ttl_in_effect;
use macp_auth_operator::rotation::ledger::drain_seconds;
use macp_auth_operator::rotation::phase::{self, Wait as PhaseWait};
use serde::Serialize;

/// How long a step waits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Wait {
    /// Done within a reconcile round or two (the key is written and read back).
    Instant,
    /// Until every pod runs the new keyset, at most the rollout timeout.
    Rollout { timeout_seconds: i64 },
    /// A fixed wait of `seconds`.
    Fixed { seconds: i64 },
    /// At least `seconds`, then until every verifier seen fetching has the
    /// new key, at most `timeout_seconds` from the phase's start.
    Evidence { seconds: i64, timeout_seconds: i64 },
}

impl Wait {
    fn min_secs(&self) -> i64 {
        match self {
            Wait::Instant | Wait::Rollout { .. } => 0,
            Wait::Fixed { seconds } | Wait::Evidence { seconds, .. } => *seconds,
        }
    }

    fn max_secs(&self) -> i64 {
        match self {
            Wait::Instant => 0,
            Wait::Rollout { timeout_seconds } => *timeout_seconds,
            Wait::Fixed { seconds } => *seconds,
            Wait::Evidence {
                seconds,
                timeout_seconds,
            } => (*seconds).max(*timeout_seconds),
        }
    }

    /// `-`, `≤10m` or `1m5s`.
    pub fn short(&self) -> String {
        match self {
            Wait::Instant => "-".to_string(),
            Wait::Rollout { timeout_seconds } => {
                format!("≤{}", crate::fmt::short(*timeout_seconds))
            }
            Wait::Fixed { seconds } => crate::fmt::short(*seconds),
            Wait::Evidence {
                seconds,
                timeout_seconds,
            } => format!(
                "{}..{}",
                crate::fmt::short(*seconds),
                crate::fmt::short((*seconds).max(*timeout_seconds))
            ),
        }
    }
}

/// One step of a rotation: its phase, what it waits for and where that wait comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub phase: RotationPhase,
    pub wait: Wait,
    /// The spec fields and constants the wait is made of.
    pub source: String,
}

/// A step placed in time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timed {
    #[serde(flatten)]
    pub step: Step,
    /// Whether this is the phase the rotation is in now.
    pub current: bool,
    /// The step's end if every rollout finished at once.
    pub earliest_end: DateTime<Utc>,
    /// The step's end if every rollout took its whole timeout.
    pub latest_end: DateTime<Utc>,
}

fn rollout(spec: &MacpAuthSpec, phase: RotationPhase, what: &str) -> Step {
    let t = spec.rotation.rollout_timeout_seconds;
    Step {
        phase,
        wait: Wait::Rollout { timeout_seconds: t },
        source: format!("rollout: {what} (at most rolloutTimeoutSeconds {t})"),
    }
}

/// The cache wait counts the TTL in effect (a lowered `jwksCacheTtlSeconds`
/// counts at its old value until verifiers show the new one); with verifier
/// evidence the phase may last up to `propagationTimeoutSeconds`.
fn propagating(spec: &MacpAuthSpec, status: &MacpAuthStatus, phase: RotationPhase) -> Step {
    let configured = spec.jwks_cache_ttl_seconds;
    // Asking the pods nothing (no reports), the TTL in effect stays what the
    // status holds, and the clock is not read.
    let ttl = cache_ttl_in_effect(
        status.jwks_cache_ttl_in_effect_seconds,
        configured,
        None,
        DateTime::<Utc>::MIN_UTC,
    );
    let ttl_source = if ttl > configured {
        format!(
            "cache TTL in effect {ttl} (jwksCacheTtlSeconds {configured} not yet shown by the verifiers)"
        )
    } else {
        format!("jwksCacheTtlSeconds {ttl}")
    };
    let seconds = ttl + PROPAGATION_SLACK_SECONDS;
    if spec.rotation.verifier_evidence {
        let timeout_seconds = spec.rotation.propagation_timeout_seconds;
        Step {
            phase,
            wait: Wait::Evidence {
                seconds,
                timeout_seconds,
            },
            source: format!(
                "verifier cache: {ttl_source} + slack {PROPAGATION_SLACK_SECONDS}, then every verifier seen fetching has the new key (at most propagationTimeoutSeconds {timeout_seconds})"
            ),
        }
    } else {
        Step {
            phase,
            wait: Wait::Fixed { seconds },
            source: format!("verifier cache: {ttl_source} + slack {PROPAGATION_SLACK_SECONDS}"),
        }
    }
}

/// The drain of the key that stops signing, from its ledger (the operator's rule).
fn draining(
    spec: &MacpAuthSpec,
    status: &MacpAuthStatus,
    phase: RotationPhase,
    retiring: &str,
) -> Step {
    let (seconds, why) = drain_seconds(spec, &status.keys, retiring);
    Step {
        phase,
        wait: Wait::Fixed {
            seconds: seconds.max(0),
        },
        source: format!("drain: {why}"),
    }
}

fn key_generated(phase: RotationPhase) -> Step {
    Step {
        phase,
        wait: Wait::Instant,
        source: "the new key is written to the Secret and read back".to_string(),
    }
}

/// What a rollout step waits for, in a user's words.
fn rollout_goal(phase: RotationPhase, emergency: bool) -> &'static str {
    use RotationPhase::*;
    match phase {
        Publishing => "every pod serves the new key next to the old one",
        Activating if emergency => "every pod serves and signs with the fresh key only",
        Activating => "every pod signs with the new key",
        Retiring => "no pod serves the old key",
        RollingBack => "every pod is back on the old key",
        Idle | KeyGenerated | Propagating | Draining => "the rollout completes",
    }
}

/// The step `phase` is, its wait being the operator's (`rotation::phase::wait`).
fn step(
    spec: &MacpAuthSpec,
    status: &MacpAuthStatus,
    phase: RotationPhase,
    emergency: bool,
    retiring: &str,
) -> Step {
    match phase::wait(phase) {
        PhaseWait::Nothing => key_generated(phase),
        PhaseWait::RolloutDeadline => rollout(spec, phase, rollout_goal(phase, emergency)),
        PhaseWait::VerifierCaches => propagating(spec, status, phase),
        PhaseWait::Drain => draining(spec, status, phase, retiring),
    }
}

/// What decides a rotation's route besides the spec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kind {
    pub emergency: bool,
    /// Its new key is the propagated standby: no publishing, no cache wait.
    pub from_standby: bool,
}

impl Kind {
    /// The rotation in flight in `rot`.
    pub fn of(rot: &RotationStatus) -> Self {
        Self {
            emergency: rot.trigger == Some(RotationTrigger::Emergency),
            from_standby: rot.from_standby,
        }
    }

    /// A rotation requested now, `scope` being the MacpAuth's
    /// `macp.io/emergency-scope`: it takes the standby if one is propagated,
    /// unless an emergency's scope rules it out.
    pub fn requested(status: &MacpAuthStatus, emergency: bool, scope: Option<&str>) -> Self {
        Self {
            emergency,
            from_standby: standby_taken(status, emergency, scope).is_some(),
        }
    }
}

/// The kid of the propagated standby, if there is one.
pub fn propagated_standby(status: &MacpAuthStatus) -> Option<&str> {
    status
        .standby
        .as_ref()
        .filter(|s| s.propagated)
        .map(|s| s.kid.as_str())
}

/// The standby a rotation requested now would activate: the propagated one,
/// unless it is an emergency whose `scope` says the Secret may have leaked.
pub fn standby_taken<'a>(
    status: &'a MacpAuthStatus,
    emergency: bool,
    scope: Option<&str>,
) -> Option<&'a str> {
    propagated_standby(status).filter(|_| !emergency || emergency_scope_spares_standby(scope))
}

/// Every step of a rotation started from Idle, in order (the operator's
/// route, `rotation::phase::route`); `retiring` is the key that stops
/// signing (the active one).
pub fn sequence(
    spec: &MacpAuthSpec,
    status: &MacpAuthStatus,
    kind: Kind,
    retiring: &str,
) -> Vec<Step> {
    phase::route(kind.emergency, spec.rotation.prepublish, kind.from_standby)
        .into_iter()
        .map(|p| step(spec, status, p, kind.emergency, retiring))
        .collect()
}

/// The steps still ahead of a rotation in flight, the current one first.
/// Empty when Idle.
pub fn remaining_steps(
    spec: &MacpAuthSpec,
    status: &MacpAuthStatus,
    rot: &RotationStatus,
) -> Vec<Step> {
    use RotationPhase::*;
    let rolled_back = rot.outcome == Some(RotationOutcome::RolledBack);
    // A rollback retires the new key; otherwise the old one retires.
    let retiring = if rolled_back || rot.phase == RollingBack {
        rot.new_kid.as_deref()
    } else {
        rot.old_kid.as_deref()
    }
    .unwrap_or_default();
    match rot.phase {
        Idle => Vec::new(),
        RollingBack => {
            let mut steps = vec![step(spec, status, RollingBack, false, retiring)];
            // After a failed Publishing the new key never signed: nothing drains.
            if matches!(rot.rollback_from, Some(Activating) | Some(Retiring)) {
                steps.push(step(spec, status, Draining, false, retiring));
                steps.push(rollout(spec, Retiring, "no pod serves the retired key"));
            }
            steps
        }
        phase => {
            // A rolled-back rotation drains and retires its new key: the same
            // steps as a routine rotation from Draining on.
            let of = Kind::of(rot);
            let kind = Kind {
                emergency: of.emergency && !rolled_back,
                ..of
            };
            let all = sequence(spec, status, kind, retiring);
            match all.iter().position(|s| s.phase == phase) {
                Some(i) => all[i..].to_vec(),
                None => Vec::new(),
            }
        }
    }
}

/// Places `steps` in time, the first one being the current phase of `rot`
/// (entered at `rot.phaseSince`, its wait ending at `rot.waitUntil`).
pub fn timeline(steps: &[Step], rot: Option<&RotationStatus>, now: DateTime<Utc>) -> Vec<Timed> {
    let mut earliest = now;
    let mut latest = now;
    let mut out = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let in_flight = rot.filter(|r| i == 0 && r.phase == step.phase);
        let current = in_flight.is_some();
        if let Some(r) = in_flight {
            // The operator's own timestamp wins over the spec: it already
            // holds a backoff, or the spec may have changed since.
            let end = r
                .wait_until
                .or_else(|| {
                    r.phase_since
                        .map(|s| s + Duration::seconds(step.wait.max_secs()))
                })
                .unwrap_or(now + Duration::seconds(step.wait.max_secs()));
            // A deadline or a wait already past: the step ends when the next round sees it.
            let end = end.max(now);
            match step.wait {
                Wait::Fixed { .. } => {
                    earliest = end;
                    latest = end;
                }
                Wait::Rollout { .. } => latest = end,
                // The cache wait ends at waitUntil; the evidence may hold it
                // until the timeout, counted from the phase's start.
                Wait::Evidence {
                    timeout_seconds, ..
                } => {
                    earliest = end;
                    let ceiling = r.phase_since.unwrap_or(now) + Duration::seconds(timeout_seconds);
                    latest = end.max(ceiling).max(now);
                }
                Wait::Instant => {}
            }
        } else {
            earliest += Duration::seconds(step.wait.min_secs());
            latest += Duration::seconds(step.wait.max_secs());
        }
        out.push(Timed {
            step: step.clone(),
            current,
            earliest_end: earliest,
            latest_end: latest,
        });
    }
    out
}

/// The steps ahead of the rotation in `status` with their ends; empty when Idle.
pub fn eta(spec: &MacpAuthSpec, status: &MacpAuthStatus, now: DateTime<Utc>) -> Vec<Timed> {
    let rot = status.rotation.clone().unwrap_or_default();
    timeline(&remaining_steps(spec, status, &rot), Some(&rot), now)
}

/// A dry run of a rotation of `kind` requested at `start`.
pub fn plan(
    spec: &MacpAuthSpec,
    status: &MacpAuthStatus,
    kind: Kind,
    start: DateTime<Utc>,
) -> Vec<Timed> {
    let active = status.active_kid.as_deref().unwrap_or_default();
    timeline(&sequence(spec, status, kind, active), None, start)
}

/// When the new key starts signing (the end of Activating), if still ahead.
pub fn new_key_signs(steps: &[Timed]) -> Option<&Timed> {
    steps
        .iter()
        .find(|t| t.step.phase == RotationPhase::Activating)
}

/// When the old key leaves every pod: the end of the last step.
pub fn old_key_retires(steps: &[Timed]) -> Option<&Timed> {
    steps.last()
}

#[cfg(test)]
mod tests {
    use super::*;
    use RotationPhase::*;
    use macp_auth_operator::crd::RotationSpec;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn spec() -> MacpAuthSpec {
        let mut spec: MacpAuthSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        spec.max_ttl_seconds = 300;
        spec.jwks_cache_ttl_seconds = 50;
        spec.rotation = RotationSpec {
            rollout_timeout_seconds: 600,
            verifier_evidence: false,
            ..RotationSpec::default()
        };
        spec
    }

    fn st() -> MacpAuthStatus {
        MacpAuthStatus {
            active_kid: Some("k1".into()),
            ..MacpAuthStatus::default()
        }
    }

    fn rot(phase: RotationPhase, since: &str, wait_until: Option<&str>) -> RotationStatus {
        RotationStatus {
            phase,
            trigger: Some(RotationTrigger::Manual),
            phase_since: Some(t(since)),
            wait_until: wait_until.map(t),
            ..RotationStatus::default()
        }
    }

    fn in_flight(r: &RotationStatus) -> MacpAuthStatus {
        MacpAuthStatus {
            rotation: Some(r.clone()),
            ..st()
        }
    }

    fn phases(steps: &[Step]) -> Vec<RotationPhase> {
        steps.iter().map(|s| s.phase).collect()
    }

    #[test]
    fn waits_come_from_the_spec_and_the_operators_constants() {
        let steps = sequence(&spec(), &st(), Kind::default(), "k1");
        assert_eq!(
            phases(&steps),
            [
                KeyGenerated,
                Publishing,
                Propagating,
                Activating,
                Draining,
                Retiring
            ]
        );
        assert_eq!(
            steps[2].wait,
            Wait::Fixed {
                seconds: 50 + PROPAGATION_SLACK_SECONDS
            }
        );
        // drainSeconds unset: every token's lifetime plus the verifiers' minute.
        assert_eq!(steps[4].wait, Wait::Fixed { seconds: 360 });
        assert_eq!(
            steps[4].source,
            "drain: tokens it signed live up to 300s + 60s verifier leeway"
        );
        assert_eq!(
            steps[3].wait,
            Wait::Rollout {
                timeout_seconds: 600
            }
        );

        let mut s = spec();
        s.rotation.drain_seconds = Some(900);
        s.rotation.prepublish = false;
        let steps = sequence(&s, &st(), Kind::default(), "k1");
        assert_eq!(
            phases(&steps),
            [KeyGenerated, Activating, Draining, Retiring]
        );
        assert_eq!(steps[2].wait, Wait::Fixed { seconds: 900 });
        assert_eq!(steps[2].source, "drain: rotation.drainSeconds is 900s");
        assert_eq!(
            phases(&sequence(
                &s,
                &st(),
                Kind {
                    emergency: true,
                    from_standby: false
                },
                "k1"
            )),
            [KeyGenerated, Activating]
        );
    }

    #[test]
    fn a_plan_adds_fixed_waits_and_bounds_rollouts_by_their_timeout() {
        let start = t("2026-12-06T12:00:00Z");
        let p = plan(&spec(), &st(), Kind::default(), start);
        let ends: Vec<(i64, i64)> = p
            .iter()
            .map(|s| {
                (
                    (s.earliest_end - start).num_seconds(),
                    (s.latest_end - start).num_seconds(),
                )
            })
            .collect();
        // KeyGenerated, Publishing (≤600), Propagating (60), Activating (≤600), Draining (360), Retiring (≤600).
        assert_eq!(
            ends,
            [
                (0, 0),
                (0, 600),
                (60, 660),
                (60, 1260),
                (420, 1620),
                (420, 2220)
            ]
        );
        let signs = new_key_signs(&p).unwrap();
        assert_eq!((signs.earliest_end - start).num_seconds(), 60);
        assert_eq!(
            (old_key_retires(&p).unwrap().latest_end - start).num_seconds(),
            2220
        );
        assert!(p.iter().all(|s| !s.current));
    }

    #[test]
    fn a_wait_in_flight_ends_at_the_operators_timestamp() {
        let now = t("2026-12-06T12:00:30Z");
        // Draining entered at 12:00:00 with a wait to 12:06:00 (drain 360 s).
        let r = rot(
            Draining,
            "2026-12-06T12:00:00Z",
            Some("2026-12-06T12:06:00Z"),
        );
        let e = eta(&spec(), &in_flight(&r), now);
        assert_eq!(
            phases(&e.iter().map(|s| s.step.clone()).collect::<Vec<_>>()),
            [Draining, Retiring]
        );
        assert!(e[0].current);
        assert_eq!(e[0].earliest_end, t("2026-12-06T12:06:00Z"));
        assert_eq!(e[0].latest_end, t("2026-12-06T12:06:00Z"));
        assert_eq!(e[1].earliest_end, t("2026-12-06T12:06:00Z"));
        assert_eq!(e[1].latest_end, t("2026-12-06T12:16:00Z"));
        // A drain re-entered with a retry backoff (after a stalled
        // retirement) lasts what the operator wrote, not what the spec says.
        let r = rot(
            Draining,
            "2026-12-06T12:00:00Z",
            Some("2026-12-06T12:30:00Z"),
        );
        let e = eta(&spec(), &in_flight(&r), now);
        assert_eq!(e[0].earliest_end, t("2026-12-06T12:30:00Z"));
        assert_eq!(e[1].latest_end, t("2026-12-06T12:40:00Z"));
    }

    #[test]
    fn a_rollout_in_flight_may_end_now_or_at_its_deadline() {
        let now = t("2026-12-06T12:01:00Z");
        let r = rot(
            Publishing,
            "2026-12-06T12:00:00Z",
            Some("2026-12-06T12:10:00Z"),
        );
        let e = eta(&spec(), &in_flight(&r), now);
        assert_eq!(e.len(), 5);
        assert_eq!(
            (e[0].earliest_end, e[0].latest_end),
            (now, t("2026-12-06T12:10:00Z"))
        );
        // Propagating: 60 s after whichever end Publishing has.
        assert_eq!(e[1].earliest_end, t("2026-12-06T12:02:00Z"));
        assert_eq!(e[1].latest_end, t("2026-12-06T12:11:00Z"));
        // A deadline already past (a retry with backoff): not before now.
        let late = t("2026-12-06T12:20:00Z");
        let e = eta(&spec(), &in_flight(&r), late);
        assert_eq!((e[0].earliest_end, e[0].latest_end), (late, late));
    }

    #[test]
    fn without_a_wait_timestamp_the_phase_start_counts() {
        let now = t("2026-12-06T12:00:10Z");
        let r = rot(Propagating, "2026-12-06T12:00:00Z", None);
        let e = eta(&spec(), &in_flight(&r), now);
        assert_eq!(e[0].earliest_end, t("2026-12-06T12:01:00Z"));
    }

    #[test]
    fn rollbacks_and_emergencies_have_their_own_remaining_steps() {
        let mut r = rot(RollingBack, "2026-12-06T12:00:00Z", None);
        r.rollback_from = Some(Publishing);
        assert_eq!(phases(&remaining_steps(&spec(), &st(), &r)), [RollingBack]);
        r.rollback_from = Some(Activating);
        assert_eq!(
            phases(&remaining_steps(&spec(), &st(), &r)),
            [RollingBack, Draining, Retiring]
        );
        let mut e = rot(Activating, "2026-12-06T12:00:00Z", None);
        e.trigger = Some(RotationTrigger::Emergency);
        assert_eq!(phases(&remaining_steps(&spec(), &st(), &e)), [Activating]);
        // A rotation rolled back from Activating drains its new key like an old one.
        let mut d = rot(Draining, "2026-12-06T12:00:00Z", None);
        d.outcome = Some(RotationOutcome::RolledBack);
        assert_eq!(
            phases(&remaining_steps(&spec(), &st(), &d)),
            [Draining, Retiring]
        );
        assert!(remaining_steps(&spec(), &st(), &RotationStatus::default()).is_empty());
    }

    #[test]
    fn a_propagated_standby_takes_publishing_and_the_cache_wait_off_the_plan() {
        use macp_auth_operator::crd::StandbyStatus;
        let start = t("2026-12-06T12:00:00Z");
        let mut status = st();
        let standby = |propagated| StandbyStatus {
            kid: "ks".into(),
            propagated,
            propagated_at: None,
        };
        // Still being prepared: a request now generates a fresh key after all.
        status.standby = Some(standby(false));
        let routine = Kind::requested(&status, false, None);
        assert_eq!(
            phases(&sequence(&spec(), &status, routine, "k1")),
            [
                KeyGenerated,
                Publishing,
                Propagating,
                Activating,
                Draining,
                Retiring
            ]
        );
        status.standby = Some(standby(true));
        let routine = Kind::requested(&status, false, None);
        assert!(routine.from_standby);
        // An emergency takes it unless the scope says the Secret leaked;
        // a scope not understood is read as the Secret.
        assert_eq!(standby_taken(&status, true, None), Some("ks"));
        assert_eq!(standby_taken(&status, true, Some("pod")), Some("ks"));
        assert_eq!(standby_taken(&status, true, Some("secret")), None);
        assert_eq!(standby_taken(&status, true, Some("node")), None);
        // A routine rotation ignores the scope annotation.
        assert_eq!(standby_taken(&status, false, Some("secret")), Some("ks"));
        assert_eq!(
            phases(&sequence(&spec(), &status, routine, "k1")),
            [KeyGenerated, Activating, Draining, Retiring]
        );
        // The new key signs after one rollout: instant at the earliest.
        let p = plan(&spec(), &status, routine, start);
        assert_eq!(
            new_key_signs(&p).map(|a| a.earliest_end),
            Some(start),
            "{p:?}"
        );
        // The rotation in flight counts its steps on the same route.
        let mut r = rot(Activating, "2026-12-06T12:00:00Z", None);
        r.from_standby = true;
        assert_eq!(
            phases(&remaining_steps(&spec(), &status, &r)),
            [Activating, Draining, Retiring]
        );
        r.phase = KeyGenerated;
        assert_eq!(
            phases(&remaining_steps(&spec(), &status, &r)),
            [KeyGenerated, Activating, Draining, Retiring]
        );
    }

    #[test]
    fn the_drain_counts_the_retiring_keys_ledger_and_the_cache_wait_the_ttl_in_effect() {
        use macp_auth_operator::crd::{KeyRole, KeyStatus};
        // k1 signed while maxTtlSeconds was 900: its tokens outlive the spec's 300.
        let mut status = st();
        status.keys = vec![KeyStatus {
            kid: "k1".into(),
            role: KeyRole::Active,
            max_token_ttl_seconds: Some(900),
            stopped_signing_at: None,
            retire_after: None,
            retire_reason: None,
        }];
        // jwksCacheTtlSeconds was lowered from 120 to 50, not yet shown by the verifiers.
        status.jwks_cache_ttl_in_effect_seconds = Some(120);
        let steps = sequence(&spec(), &status, Kind::default(), "k1");
        assert_eq!(steps[4].wait, Wait::Fixed { seconds: 960 });
        assert!(
            steps[4].source.contains("live up to 900s"),
            "{}",
            steps[4].source
        );
        assert_eq!(steps[2].wait, Wait::Fixed { seconds: 130 });
        assert!(
            steps[2].source.contains("cache TTL in effect 120"),
            "{}",
            steps[2].source
        );
    }

    #[test]
    fn verifier_evidence_may_hold_propagating_until_its_timeout() {
        let mut s = spec();
        s.rotation.verifier_evidence = true;
        s.rotation.propagation_timeout_seconds = 3600;
        let start = t("2026-12-06T12:00:00Z");
        let p = plan(&s, &st(), Kind::default(), start);
        assert_eq!(
            p[2].step.wait,
            Wait::Evidence {
                seconds: 60,
                timeout_seconds: 3600
            }
        );
        assert_eq!(p[2].step.wait.short(), "60s..60m");
        // After Publishing (0..600 s): 60 s at the earliest, the whole hour at the latest.
        assert_eq!((p[2].earliest_end - start).num_seconds(), 60);
        assert_eq!((p[2].latest_end - start).num_seconds(), 600 + 3600);
        // In flight: the cache wait ends at waitUntil, the evidence an hour after the phase began.
        let mut r = rot(
            Propagating,
            "2026-12-06T12:00:00Z",
            Some("2026-12-06T12:01:00Z"),
        );
        r.trigger = Some(RotationTrigger::Manual);
        let e = eta(&s, &in_flight(&r), t("2026-12-06T12:00:30Z"));
        assert_eq!(e[0].earliest_end, t("2026-12-06T12:01:00Z"));
        assert_eq!(e[0].latest_end, t("2026-12-06T13:00:00Z"));
    }
}
