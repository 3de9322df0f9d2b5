//! Every phase crossed with every stimulus, then the finer points one by one.

use std::time::Duration;

use super::*;
use crate::crd::{
    EMERGENCY_ROTATE_ANNOTATION, ROTATE_ANNOTATION, RotationOutcome, RotationPhase, RotationRecord,
    RotationStatus, RotationTrigger,
};
use crate::rotation::plan::desired;
use crate::rotation::{Action, POLL, PROPAGATION_SLACK_SECONDS, ProbePlan, probe_plan};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    KeyGenerated,
    Publishing,
    Propagating,
    Activating,
    Draining,
    Retiring,
    RollingBackFromPublishing,
    RollingBackFromActivating,
    EmergencyActivating,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stimulus {
    Waiting,
    Complete,
    Timeout,
    VerifyFail,
    Emergency,
    Request,
    Paused,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    None,
    Generate,
    Apply,
}

fn rotation(setup: Setup) -> RotationStatus {
    use RotationPhase as P;
    let (phase, wait) = match setup {
        Setup::KeyGenerated => (P::KeyGenerated, None),
        Setup::Publishing => (P::Publishing, Some(TIMEOUT)),
        Setup::Propagating => (P::Propagating, Some(TTL)),
        Setup::Activating | Setup::EmergencyActivating => (P::Activating, Some(TIMEOUT)),
        Setup::Draining => (P::Draining, Some(DRAIN)),
        Setup::Retiring => (P::Retiring, Some(TIMEOUT)),
        Setup::RollingBackFromPublishing | Setup::RollingBackFromActivating => {
            (P::RollingBack, Some(TIMEOUT))
        }
    };
    let emergency = setup == Setup::EmergencyActivating;
    let mut rot = RotationStatus {
        phase,
        trigger: Some(if emergency {
            RotationTrigger::Emergency
        } else {
            RotationTrigger::Manual
        }),
        request_id: Some(if emergency { "inc-1" } else { "r1" }.to_string()),
        started_at: Some(at(0)),
        phase_since: Some(at(10)),
        wait_until: wait.map(|w| at(10 + w)),
        old_kid: Some("k0".into()),
        new_kid: Some("k1".into()),
        ..RotationStatus::default()
    };
    match setup {
        Setup::KeyGenerated => {
            rot.new_kid = None;
            rot.pending_kid = Some("k1".into());
        }
        Setup::RollingBackFromPublishing => {
            rot.rollback_from = Some(P::Publishing);
            rot.outcome = Some(RotationOutcome::RolledBack);
        }
        Setup::RollingBackFromActivating => {
            rot.rollback_from = Some(P::Activating);
            rot.outcome = Some(RotationOutcome::RolledBack);
        }
        _ => {}
    }
    rot
}

fn fixture(setup: Setup, stimulus: Stimulus) -> Fixture {
    let rot = rotation(setup);
    let ks = desired(&rot).map_or_else(|| keyset("k0", &[], None, None), |p| view_of(&p));
    let mut f = Fixture::idle(ks);
    f.status.handled_rotate_request = Some("r1".into());
    if setup == Setup::EmergencyActivating {
        f.status.handled_emergency_request = Some("inc-1".into());
        f.status.suspect_kids = vec!["k0".into()];
    }
    f.annotate(ROTATE_ANNOTATION, "r1");
    f.now = at(11);
    let end = rot.wait_until.unwrap_or(at(10)) + Secs::seconds(1);
    let rollout_phase = matches!(
        rot.phase,
        RotationPhase::Publishing
            | RotationPhase::Activating
            | RotationPhase::Retiring
            | RotationPhase::RollingBack
    );
    f.status.rotation = Some(rot);
    match stimulus {
        Stimulus::Waiting | Stimulus::Request => {
            if rollout_phase {
                f.observed.rollout = Rollout::InProgress;
            }
            if stimulus == Stimulus::Request {
                f.annotate(ROTATE_ANNOTATION, "r2");
            }
        }
        Stimulus::Complete | Stimulus::Paused => {
            if setup == Setup::KeyGenerated {
                f.settle_on(keyset("k0", &[], Some("k1"), None));
            } else if !rollout_phase {
                f.now = end;
            }
            f.spec.rotation.paused = stimulus == Stimulus::Paused;
        }
        Stimulus::Timeout => {
            if rollout_phase {
                f.observed.rollout = Rollout::InProgress;
            }
            f.now = end.max(at(1000));
        }
        Stimulus::VerifyFail => {
            f.observed.pods[0].served_kids = Ok(vec!["bogus".into()]);
            f.observed.pods[0].signing_kid = Some(Ok("bogus".into()));
        }
        Stimulus::Emergency => f.annotate(EMERGENCY_ROTATE_ANNOTATION, "inc-2"),
    }
    f
}

/// What a round makes of a setup: the phase it ends in, the action it asks
/// for, and an event it must emit ("" when none is required).
type Want = (RotationPhase, Act, &'static str);

/// One setup under every stimulus: a field per stimulus, so the compiler
/// refuses a row that leaves one out.
struct Row {
    setup: Setup,
    waiting: Want,
    complete: Want,
    timeout: Want,
    verify_fail: Want,
    emergency: Want,
    request: Want,
    paused: Want,
}

impl Row {
    /// The row's cases, each named by its setup and stimulus.
    fn cases(&self) -> [(Setup, Stimulus, Want); 7] {
        [
            (self.setup, Stimulus::Waiting, self.waiting),
            (self.setup, Stimulus::Complete, self.complete),
            (self.setup, Stimulus::Timeout, self.timeout),
            (self.setup, Stimulus::VerifyFail, self.verify_fail),
            (self.setup, Stimulus::Emergency, self.emergency),
            (self.setup, Stimulus::Request, self.request),
            (self.setup, Stimulus::Paused, self.paused),
        ]
    }
}

#[test]
fn every_phase_under_every_stimulus() {
    use RotationPhase as P;
    use Setup as S;
    let em = (P::KeyGenerated, Act::None, "EmergencyRotation");
    // Where verification-only keys are published, the emergency withdraws them at once.
    let em_withdraw = (P::KeyGenerated, Act::Apply, "EmergencyRotation");
    let rows = [
        Row {
            setup: S::KeyGenerated,
            waiting: (P::KeyGenerated, Act::Generate, ""),
            complete: (P::Publishing, Act::Apply, "KeyGenerated"),
            timeout: (P::KeyGenerated, Act::Generate, ""),
            verify_fail: (P::KeyGenerated, Act::Generate, ""),
            emergency: em,
            request: (P::KeyGenerated, Act::Generate, "RotationDeferred"),
            paused: (P::Publishing, Act::Apply, "Publishing"),
        },
        Row {
            setup: S::Publishing,
            waiting: (P::Publishing, Act::None, ""),
            complete: (P::Propagating, Act::None, "Propagating"),
            timeout: (P::RollingBack, Act::Apply, "RolloutTimeout"),
            verify_fail: (P::RollingBack, Act::Apply, "VerificationFailed"),
            emergency: em_withdraw,
            request: (P::Publishing, Act::None, "RotationDeferred"),
            paused: (P::Propagating, Act::None, "Propagating"),
        },
        Row {
            setup: S::Propagating,
            waiting: (P::Propagating, Act::None, ""),
            complete: (P::Activating, Act::Apply, "Activating"),
            timeout: (P::Activating, Act::Apply, "Activating"),
            verify_fail: (P::Propagating, Act::None, ""),
            emergency: em_withdraw,
            request: (P::Propagating, Act::None, "RotationDeferred"),
            paused: (P::Activating, Act::Apply, "Activating"),
        },
        Row {
            setup: S::Activating,
            waiting: (P::Activating, Act::None, ""),
            complete: (P::Draining, Act::None, "Draining"),
            timeout: (P::RollingBack, Act::Apply, "RolloutTimeout"),
            verify_fail: (P::RollingBack, Act::Apply, "VerificationFailed"),
            emergency: em_withdraw,
            request: (P::Activating, Act::None, "RotationDeferred"),
            paused: (P::Draining, Act::None, "Draining"),
        },
        Row {
            setup: S::Draining,
            waiting: (P::Draining, Act::None, ""),
            complete: (P::Retiring, Act::Apply, "Retiring"),
            timeout: (P::Retiring, Act::Apply, "Retiring"),
            verify_fail: (P::Draining, Act::None, ""),
            emergency: em_withdraw,
            request: (P::Draining, Act::None, "RotationDeferred"),
            paused: (P::Retiring, Act::Apply, "Retiring"),
        },
        Row {
            setup: S::Retiring,
            waiting: (P::Retiring, Act::None, ""),
            complete: (P::Idle, Act::Apply, "RotationSucceeded"),
            timeout: (P::RollingBack, Act::Apply, "RetirementStalled"),
            verify_fail: (P::RollingBack, Act::Apply, "RetirementStalled"),
            emergency: em,
            request: (P::Retiring, Act::None, "RotationDeferred"),
            paused: (P::Idle, Act::Apply, "RotationSucceeded"),
        },
        Row {
            setup: S::RollingBackFromPublishing,
            waiting: (P::RollingBack, Act::None, ""),
            complete: (P::Idle, Act::None, "RotationRolledBack"),
            timeout: (P::RollingBack, Act::None, "RollbackStalled"),
            verify_fail: (P::RollingBack, Act::None, "RollbackStalled"),
            emergency: em,
            request: (P::RollingBack, Act::None, "RotationDeferred"),
            paused: (P::Idle, Act::None, "RotationRolledBack"),
        },
        Row {
            setup: S::RollingBackFromActivating,
            waiting: (P::RollingBack, Act::None, ""),
            complete: (P::Draining, Act::None, "Draining"),
            timeout: (P::RollingBack, Act::None, "RollbackStalled"),
            verify_fail: (P::RollingBack, Act::None, "RollbackStalled"),
            emergency: em_withdraw,
            request: (P::RollingBack, Act::None, "RotationDeferred"),
            paused: (P::Draining, Act::None, "Draining"),
        },
        Row {
            setup: S::EmergencyActivating,
            waiting: (P::Activating, Act::None, ""),
            complete: (P::Idle, Act::None, "RotationSucceeded"),
            timeout: (P::Activating, Act::None, "EmergencyRotationStalled"),
            verify_fail: (P::Activating, Act::None, "EmergencyRotationStalled"),
            emergency: em,
            request: (P::Activating, Act::None, "RotationDeferred"),
            paused: (P::Idle, Act::None, "RotationSucceeded"),
        },
    ];
    assert_eq!(rows.len(), 9, "one row per setup");
    for (i, row) in rows.iter().enumerate() {
        let twice = rows[..i].iter().any(|r| r.setup == row.setup);
        assert!(!twice, "{:?} has two rows", row.setup);
    }
    for (setup, stimulus, (phase, act, event)) in rows.iter().flat_map(Row::cases) {
        let f = fixture(setup, stimulus);
        let d = f.decide();
        let ctx = format!("{setup:?} x {stimulus:?}: {d:#?}");
        let rot = d.status.rotation.as_ref().unwrap();
        assert_eq!(rot.phase, phase, "{ctx}");
        assert!(d.actions.len() <= 1, "{ctx}");
        let got = match d.actions.first() {
            None => Act::None,
            Some(Action::GenerateNextKey { .. }) => Act::Generate,
            Some(Action::ApplyKeyset(_)) => Act::Apply,
        };
        assert_eq!(got, act, "{ctx}");
        if !event.is_empty() {
            assert!(d.events.iter().any(|e| e.reason == event), "{ctx}");
        }
        // Every written keyset is laid out from material the Secret holds and never publishes a suspect.
        if let Some(Action::ApplyKeyset(plan)) = d.actions.first() {
            let keyset = f.observed.keyset.as_ref().unwrap();
            plan.check(keyset).unwrap();
            for kid in &plan.published {
                assert!(!d.status.suspect_kids.contains(kid), "{ctx}");
            }
            // A suspect stays active only where it already was (until the fresh key replaces it).
            assert!(
                !d.status.suspect_kids.contains(&plan.active) || plan.active == keyset.active.kid,
                "{ctx}"
            );
        }
        // The previously active key stays in the Secret through every routine step.
        if let Some(Action::ApplyKeyset(plan)) = d.actions.first()
            && rot.trigger != Some(RotationTrigger::Emergency)
        {
            let old_active = &f.observed.keyset.as_ref().unwrap().active.kid;
            assert!(
                plan.active == *old_active || plan.previous.as_ref() == Some(old_active),
                "{ctx}"
            );
        }
        let rotating = d
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Rotating")
            .unwrap();
        assert_eq!(
            rotating.status == "True",
            phase != RotationPhase::Idle,
            "{ctx}"
        );
        if event.ends_with("Stalled") || event == "RolloutTimeout" || event == "VerificationFailed"
        {
            let degraded = d
                .status
                .conditions
                .iter()
                .find(|c| c.type_ == "Degraded")
                .unwrap();
            assert_eq!(degraded.status, "True", "{ctx}");
        }
        if event == "EmergencyRotation" {
            let record = d.status.history.last().unwrap();
            let rolled_back = matches!(
                setup,
                Setup::RollingBackFromPublishing | Setup::RollingBackFromActivating
            );
            let expected = if rolled_back {
                RotationOutcome::RolledBack
            } else {
                RotationOutcome::Superseded
            };
            assert_eq!(record.outcome, expected, "{ctx}");
            assert_eq!(rot.request_id.as_deref(), Some("inc-2"), "{ctx}");
            assert_eq!(rot.pending_kid.as_deref(), Some("k-new"), "{ctx}");
            assert!(d.status.suspect_kids.contains(&"k0".to_string()), "{ctx}");
            // k1 is suspect wherever the Secret still holds it.
            if !matches!(
                setup,
                Setup::KeyGenerated | Setup::RollingBackFromPublishing
            ) {
                assert!(d.status.suspect_kids.contains(&"k1".to_string()), "{ctx}");
            }
        }
    }
}

#[test]
fn idle_without_triggers_does_nothing() {
    let f = Fixture::idle(keyset("k0", &[], None, None));
    let d = f.decide();
    assert!(d.actions.is_empty() && d.events.is_empty());
    assert_eq!(d.requeue_after, None);
    assert_eq!(d.status.rotation.unwrap().phase, RotationPhase::Idle);
    assert_eq!(d.status.active_kid.as_deref(), Some("k0"));
    // A second round on its own output changes nothing (zero writes when unchanged).
    let mut again = f.clone();
    again.status = f.decide().status;
    assert_eq!(again.decide().status, again.status);
}

#[test]
fn no_secret_means_nothing_to_rotate() {
    let mut f = Fixture::idle(keyset("k0", &[], None, None));
    f.observed.keyset = None;
    f.annotate(EMERGENCY_ROTATE_ANNOTATION, "inc");
    let d = f.decide();
    assert!(d.actions.is_empty());
    assert_eq!(
        d.status.handled_emergency_request, None,
        "kept pending until a key exists"
    );
}

#[test]
fn a_request_reserves_a_kid_then_generates_then_publishes() {
    let mut f = Fixture::idle(keyset("k0", &[], None, None));
    f.annotate(ROTATE_ANNOTATION, "r1");
    let d = f.decide();
    assert!(d.actions.is_empty(), "starting writes no key");
    let rot = d.status.rotation.clone().unwrap();
    assert_eq!(rot.phase, RotationPhase::KeyGenerated);
    assert_eq!(rot.pending_kid.as_deref(), Some("k-new"));
    assert_eq!(
        rot.new_kid, None,
        "status names no key that is not in the Secret"
    );
    assert_eq!(rot.trigger, Some(RotationTrigger::Manual));
    assert_eq!(rot.request_id.as_deref(), Some("r1"));
    assert_eq!(d.status.handled_rotate_request.as_deref(), Some("r1"));
    assert_eq!(d.requeue_after, Some(Duration::ZERO));

    f.status = d.status;
    f.new_kid = "other".into();
    let d = f.decide();
    assert_eq!(
        d.actions,
        vec![Action::GenerateNextKey {
            kid: "k-new".into(),
            alg: SigningAlg::ES256,
            rsa_bits: None
        }]
    );
    assert_eq!(d.status.rotation.as_ref().unwrap().new_kid, None);

    // Crash after the key was written and before the status was: the same status
    // meets the orphan key, which is adopted, not generated again.
    f.settle_on(keyset("k0", &[], Some("k-new"), None));
    let d = f.decide();
    assert_eq!(
        d.actions,
        vec![Action::ApplyKeyset(KeysetPlan {
            active: "k0".into(),
            published: vec!["k-new".into()],
            next: Some("k-new".into()),
            previous: None,
        })]
    );
    let rot = d.status.rotation.unwrap();
    assert_eq!(rot.phase, RotationPhase::Publishing);
    assert_eq!(rot.new_kid.as_deref(), Some("k-new"));
    assert_eq!(rot.pending_kid, None);
    assert_eq!(rot.wait_until, Some(f.now + Secs::seconds(TIMEOUT)));
}

#[test]
fn a_foreign_next_key_is_replaced_not_adopted() {
    let mut f = fixture(Setup::KeyGenerated, Stimulus::Waiting);
    f.settle_on(keyset("k0", &[], Some("stale"), None));
    let d = f.decide();
    assert!(matches!(&d.actions[..], [Action::GenerateNextKey { kid, .. }] if kid == "k1"));
}

#[test]
fn without_prepublish_the_new_key_activates_directly() {
    let mut f = fixture(Setup::KeyGenerated, Stimulus::Complete);
    f.spec.rotation.prepublish = false;
    let d = f.decide();
    let rot = d.status.rotation.unwrap();
    assert_eq!(rot.phase, RotationPhase::Activating);
    assert_eq!(
        d.actions,
        vec![Action::ApplyKeyset(KeysetPlan {
            active: "k1".into(),
            published: vec!["k0".into()],
            next: None,
            previous: Some("k0".into()),
        })]
    );
}

#[test]
fn waits_are_timestamps_and_requeues_match_them() {
    let f = fixture(Setup::Publishing, Stimulus::Complete);
    let d = f.decide();
    let rot = d.status.rotation.unwrap();
    // The cache TTL plus the slack a real verifier needs.
    let wait = TTL + PROPAGATION_SLACK_SECONDS;
    assert_eq!(rot.wait_until, Some(f.now + Secs::seconds(wait)));
    assert_eq!(d.requeue_after, Some(Duration::from_secs(wait as u64)));

    let mut f = fixture(Setup::Propagating, Stimulus::Waiting);
    f.now = at(30);
    let d = f.decide();
    assert_eq!(d.requeue_after, Some(Duration::from_secs(40)));

    let f = fixture(Setup::Publishing, Stimulus::Waiting);
    assert_eq!(f.decide().requeue_after, Some(POLL));

    let f = fixture(Setup::Activating, Stimulus::Complete);
    let d = f.decide();
    assert_eq!(d.status.last_rotation_time, Some(f.now));
    assert_eq!(
        d.status.rotation.unwrap().wait_until,
        Some(f.now + Secs::seconds(DRAIN))
    );
}

#[test]
fn rollback_keysets_never_lose_the_old_key() {
    let d = fixture(Setup::Publishing, Stimulus::Timeout).decide();
    assert_eq!(
        d.actions,
        vec![Action::ApplyKeyset(KeysetPlan {
            active: "k0".into(),
            published: vec![],
            next: None,
            previous: None,
        })]
    );
    let d = fixture(Setup::Activating, Stimulus::VerifyFail).decide();
    assert_eq!(
        d.actions,
        vec![Action::ApplyKeyset(KeysetPlan {
            active: "k0".into(),
            published: vec!["k1".into()],
            next: None,
            previous: Some("k1".into()),
        })],
        "the new key may have signed: it stays published while it drains"
    );
    let rot = d.status.rotation.unwrap();
    assert_eq!(rot.outcome, Some(RotationOutcome::RolledBack));
    assert_eq!(rot.rollback_from, Some(RotationPhase::Activating));
    let d = fixture(Setup::Retiring, Stimulus::Timeout).decide();
    assert_eq!(
        d.actions,
        vec![Action::ApplyKeyset(KeysetPlan {
            active: "k1".into(),
            published: vec!["k0".into()],
            next: None,
            previous: Some("k0".into()),
        })]
    );
    assert_eq!(
        d.status.rotation.unwrap().outcome,
        None,
        "the switch itself succeeded"
    );
}

#[test]
fn a_rolled_back_activation_drains_and_retires_the_new_key() {
    let mut f = fixture(Setup::RollingBackFromActivating, Stimulus::Complete);
    let d = f.decide();
    let rot = d.status.rotation.clone().unwrap();
    assert_eq!(rot.phase, RotationPhase::Draining);
    assert!(d.actions.is_empty());
    f.status = d.status;
    f.now = rot.wait_until.unwrap();
    let d = f.decide();
    assert_eq!(
        d.actions,
        vec![Action::ApplyKeyset(KeysetPlan {
            active: "k0".into(),
            published: vec![],
            next: None,
            previous: Some("k1".into()),
        })]
    );
    f.status = d.status;
    f.settle_on(keyset("k0", &[], None, Some("k1")));
    let d = f.decide();
    assert_eq!(
        d.actions,
        vec![Action::ApplyKeyset(KeysetPlan {
            active: "k0".into(),
            published: vec![],
            next: None,
            previous: None,
        })],
        "the retired key's private half is deleted once no pod serves it"
    );
    assert_eq!(d.status.rotation.unwrap().phase, RotationPhase::Idle);
    let record = d.status.history.last().unwrap();
    assert_eq!(record.outcome, RotationOutcome::RolledBack);
    let degraded = d
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "RotationRolledBack")
    );
}

#[test]
fn a_failed_retirement_is_retried_after_a_backoff() {
    let mut f = fixture(Setup::Retiring, Stimulus::Timeout);
    let d = f.decide();
    f.status = d.status;
    let rot = f.status.rotation.clone().unwrap();
    f.settle_on(view_of(&desired(&rot).unwrap()));
    let d = f.decide();
    let rot = d.status.rotation.clone().unwrap();
    assert_eq!(rot.phase, RotationPhase::Draining);
    assert_eq!(rot.wait_until, Some(f.now + Secs::seconds(TIMEOUT)));
    f.status = d.status;
    f.now = rot.wait_until.unwrap();
    let d = f.decide();
    assert_eq!(d.status.rotation.unwrap().phase, RotationPhase::Retiring);
}

#[test]
fn a_successful_rotation_records_history_and_clears_degraded() {
    let mut f = fixture(Setup::Retiring, Stimulus::Complete);
    crate::conditions::set(
        &mut f.status.conditions,
        "Degraded",
        true,
        "RotationRolledBack",
        "earlier",
        at(0),
        None,
    );
    let d = f.decide();
    let record = d.status.history.last().unwrap();
    assert_eq!(record.outcome, RotationOutcome::Succeeded);
    assert_eq!(record.old_kid.as_deref(), Some("k0"));
    assert_eq!(record.new_kid.as_deref(), Some("k1"));
    assert_eq!(record.request_id.as_deref(), Some("r1"));
    assert_eq!(record.started_at, at(0));
    assert_eq!(record.finished_at, f.now);
    let degraded = d
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.status, "False");
}

#[test]
fn a_foreign_degraded_reason_is_left_alone() {
    let mut f = fixture(Setup::Retiring, Stimulus::Complete);
    crate::conditions::set(
        &mut f.status.conditions,
        "Degraded",
        true,
        "InvalidSpec",
        "theirs",
        at(0),
        None,
    );
    let d = f.decide();
    let degraded = d
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidSpec")
    );
}

#[test]
fn history_keeps_the_last_ten() {
    let mut f = fixture(Setup::Retiring, Stimulus::Complete);
    f.status.history = (0..10)
        .map(|i| RotationRecord {
            trigger: RotationTrigger::Scheduled,
            request_id: Some(format!("old-{i}")),
            old_kid: None,
            new_kid: None,
            started_at: at(-1000),
            finished_at: at(-900),
            outcome: RotationOutcome::Succeeded,
            message: None,
        })
        .collect();
    let d = f.decide();
    assert_eq!(d.status.history.len(), 10);
    assert_eq!(d.status.history[0].request_id.as_deref(), Some("old-1"));
    assert_eq!(d.status.history[9].request_id.as_deref(), Some("r1"));
}

#[test]
fn emergency_generates_fresh_and_withdraws_everything() {
    // Mid-Publishing: the pending key k1 is suspect too and is never adopted.
    let f = fixture(Setup::Publishing, Stimulus::Emergency);
    let d = f.decide();
    assert_eq!(
        d.status.suspect_kids,
        vec!["k0".to_string(), "k1".to_string()]
    );
    assert_eq!(d.status.handled_emergency_request.as_deref(), Some("inc-2"));
    let mut f2 = f.clone();
    f2.status = d.status;
    let d = f2.decide();
    assert!(matches!(&d.actions[..], [Action::GenerateNextKey { kid, .. }] if kid == "k-new"));
    // The fresh key lands in next (replacing k1); then one write makes it the only key.
    f2.status = d.status;
    f2.settle_on(keyset("k0", &["k1"], Some("k-new"), None));
    let d = f2.decide();
    assert_eq!(
        d.actions,
        vec![Action::ApplyKeyset(KeysetPlan {
            active: "k-new".into(),
            published: vec![],
            next: None,
            previous: None,
        })]
    );
    let rot = d.status.rotation.clone().unwrap();
    assert_eq!(rot.phase, RotationPhase::Activating);
    assert_eq!(rot.trigger, Some(RotationTrigger::Emergency));
    // Crash before that status was written: the fresh active key is recognised, not regenerated.
    f2.settle_on(keyset("k-new", &[], None, None));
    let d2 = f2.decide();
    assert!(d2.actions.is_empty());
    assert_eq!(d2.status.rotation.unwrap().phase, RotationPhase::Activating);
    // Verified: history carries the request id.
    f2.status = d.status;
    let d = f2.decide();
    let record = d.status.history.last().unwrap();
    assert_eq!(record.trigger, RotationTrigger::Emergency);
    assert_eq!(record.request_id.as_deref(), Some("inc-2"));
    assert_eq!(record.outcome, RotationOutcome::Succeeded);
    assert_eq!(d.status.last_rotation_time, Some(f2.now));
}

#[test]
fn emergency_ignores_pause_and_acts_once() {
    let mut f = Fixture::idle(keyset("k0", &[], None, None));
    f.spec.rotation.paused = true;
    f.annotate(EMERGENCY_ROTATE_ANNOTATION, "inc-9");
    let d = f.decide();
    assert_eq!(
        d.status.rotation.as_ref().unwrap().trigger,
        Some(RotationTrigger::Emergency)
    );
    f.status = d.status;
    f.status.rotation = None;
    let d = f.decide();
    assert!(
        d.events.iter().all(|e| e.reason != "EmergencyRotation"),
        "acts once per value"
    );
}

#[test]
fn a_stalled_emergency_backs_off_and_never_rolls_back() {
    let mut f = fixture(Setup::EmergencyActivating, Stimulus::Timeout);
    let d = f.decide();
    let rot = d.status.rotation.clone().unwrap();
    assert!(d.actions.is_empty());
    assert_eq!(rot.attempt, Some(1));
    assert_eq!(rot.wait_until, Some(f.now + Secs::seconds(TIMEOUT)));
    f.status = d.status;
    f.now = rot.wait_until.unwrap();
    let d = f.decide();
    let rot = d.status.rotation.unwrap();
    assert_eq!(rot.attempt, Some(2));
    assert_eq!(rot.wait_until, Some(f.now + Secs::seconds(2 * TIMEOUT)));
    assert_eq!(rot.phase, RotationPhase::Activating);
}

#[test]
fn paused_requests_wait_and_are_reported_once() {
    let mut f = Fixture::idle(keyset("k0", &[], None, None));
    f.spec.rotation.paused = true;
    f.annotate(ROTATE_ANNOTATION, "r5");
    let d = f.decide();
    assert_eq!(
        d.status.rotation.as_ref().unwrap().phase,
        RotationPhase::Idle
    );
    assert!(d.events.iter().any(|e| e.reason == "RotationPaused"));
    assert_eq!(d.status.handled_rotate_request, None);
    f.status = d.status;
    assert!(f.decide().events.is_empty(), "reported once");
    f.spec.rotation.paused = false;
    let d = f.decide();
    assert_eq!(
        d.status.rotation.unwrap().phase,
        RotationPhase::KeyGenerated
    );
    assert_eq!(d.status.handled_rotate_request.as_deref(), Some("r5"));
}

#[test]
fn a_deferred_request_is_reported_once_and_runs_after() {
    let mut f = fixture(Setup::Retiring, Stimulus::Request);
    let d = f.decide();
    assert!(d.events.iter().any(|e| e.reason == "RotationDeferred"));
    f.status = d.status;
    assert!(f.decide().events.is_empty(), "reported once");
    f.observed.rollout = Rollout::Complete;
    let d = f.decide();
    assert_eq!(
        d.status.rotation.as_ref().unwrap().phase,
        RotationPhase::Idle
    );
    f.status = d.status;
    f.settle_on(keyset("k1", &[], None, None));
    f.new_kid = "k2".into();
    let d = f.decide();
    let rot = d.status.rotation.unwrap();
    assert_eq!(rot.phase, RotationPhase::KeyGenerated);
    assert_eq!(rot.request_id.as_deref(), Some("r2"));
}

#[test]
fn interval_schedules_rotations() {
    let mut f = Fixture::idle(keyset("k0", &[], None, None));
    f.spec.rotation.interval = Some("10m".into());
    // Propagation (60 + 10) and three rollouts of 100 s: the next key signs
    // on every pod before this one is 10 minutes old.
    let lead = crate::rotation::activation_lead(&f.spec).as_secs() as i64;
    assert_eq!(lead, 370);
    let d = f.decide();
    assert_eq!(
        d.status.next_rotation_time,
        Some(f.now + Secs::seconds(600 - lead))
    );
    assert_eq!(d.requeue_after, Some(Duration::from_secs(600 - 370)));
    f.status = d.status;
    f.now += Secs::seconds(600 - lead);
    let d = f.decide();
    let rot = d.status.rotation.unwrap();
    assert_eq!(rot.trigger, Some(RotationTrigger::Scheduled));
    // After success the schedule restarts from the new key's activation, not
    // from the end of the rotation a drain later.
    let mut g = fixture(Setup::Retiring, Stimulus::Complete);
    g.spec.rotation.interval = Some("10m".into());
    g.status.next_rotation_time = Some(at(-5));
    g.status.last_rotation_time = Some(g.now - Secs::seconds(200));
    let d = g.decide();
    assert_eq!(
        d.status.next_rotation_time,
        Some(g.now - Secs::seconds(200) + Secs::seconds(600 - lead))
    );
}

#[test]
fn a_scheduled_rotation_starts_early_by_its_place_in_a_tenth_of_the_interval() {
    let mut f = Fixture::idle(keyset("k0", &[], None, None));
    f.spec.rotation.interval = Some("10m".into());
    f.schedule_place = 0.5;
    let lead = crate::rotation::activation_lead(&f.spec).as_secs() as i64;
    let d = f.decide();
    // Half of a 60 s window: 30 s before the lead, never after.
    assert_eq!(
        d.status.next_rotation_time,
        Some(f.now + Secs::seconds(570 - lead))
    );
    assert_eq!(
        d.requeue_after,
        Some(Duration::from_secs((570 - lead) as u64))
    );
    f.status = d.status;
    f.now += Secs::seconds(569 - lead);
    let before = f.decide().status.rotation;
    assert!(
        before
            .as_ref()
            .is_none_or(|r| r.phase == RotationPhase::Idle),
        "not before its place: {before:?}"
    );
    f.now += Secs::seconds(1);
    let rot = f.decide().status.rotation.unwrap();
    assert_eq!(rot.trigger, Some(RotationTrigger::Scheduled));

    // A long interval's window is an hour at most.
    let mut g = Fixture::idle(keyset("k0", &[], None, None));
    g.spec.rotation.interval = Some("30d".into());
    g.schedule_place = 0.5;
    assert_eq!(
        g.decide().status.next_rotation_time,
        Some(g.now + Secs::days(30) - Secs::minutes(30) - Secs::seconds(lead))
    );
}

#[test]
fn an_invalid_interval_degrades_once() {
    let mut f = Fixture::idle(keyset("k0", &[], None, None));
    f.spec.rotation.interval = Some("soon".into());
    let d = f.decide();
    assert!(
        d.events
            .iter()
            .any(|e| e.reason == "InvalidRotationInterval")
    );
    f.status = d.status;
    let d = f.decide();
    assert!(d.events.is_empty());
    f.spec.rotation.interval = Some("1h".into());
    f.status = d.status;
    let d = f.decide();
    let degraded = d
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.status, "False");
}

#[test]
fn a_new_signing_kind_is_a_routine_rotation() {
    let mut f = Fixture::idle(keyset("k0", &[], None, None));
    f.spec.signing_alg = SigningAlg::RS256;
    f.spec.rsa_key_bits = 3072;
    let d = f.decide();
    let rot = d.status.rotation.clone().unwrap();
    assert_eq!(rot.request_id.as_deref(), Some("spec:RS256/3072"));
    f.status = d.status;
    let d = f.decide();
    assert_eq!(
        d.actions,
        vec![Action::GenerateNextKey {
            kid: "k-new".into(),
            alg: SigningAlg::RS256,
            rsa_bits: Some(3072)
        }]
    );
    // Paused holds it like any routine rotation.
    let mut p = Fixture::idle(keyset("k0", &[], None, None));
    p.spec.signing_alg = SigningAlg::RS256;
    p.spec.rotation.paused = true;
    assert_eq!(
        p.decide().status.rotation.unwrap().phase,
        RotationPhase::Idle
    );
}

#[test]
fn automatic_triggers_back_off_after_a_rollback() {
    let mut f = fixture(Setup::RollingBackFromPublishing, Stimulus::Complete);
    f.spec.signing_alg = SigningAlg::RS256;
    let d = f.decide();
    f.status = d.status;
    let d = f.decide();
    assert_eq!(
        d.status.rotation.as_ref().unwrap().phase,
        RotationPhase::Idle,
        "no loop"
    );
    assert!(d.requeue_after.is_some());
    f.now += Secs::seconds(3600);
    let d = f.decide();
    assert_eq!(
        d.status.rotation.unwrap().phase,
        RotationPhase::KeyGenerated
    );
}

#[test]
fn a_lost_status_write_is_adopted_not_repeated() {
    // Propagating -> Activating was written to the Secret, the status was lost.
    let mut f = fixture(Setup::Propagating, Stimulus::Complete);
    let activating = view_of(&desired(&rotation(Setup::Activating)).unwrap());
    f.settle_on(activating.clone());
    f.observed.rollout = Rollout::InProgress;
    let d = f.decide();
    assert!(d.actions.is_empty());
    assert_eq!(d.status.rotation.unwrap().phase, RotationPhase::Activating);
    // Draining -> Retiring.
    let mut f = fixture(Setup::Draining, Stimulus::Complete);
    f.settle_on(keyset("k1", &[], None, Some("k0")));
    let d = f.decide();
    assert!(d.actions.is_empty());
    assert_eq!(d.status.rotation.unwrap().phase, RotationPhase::Retiring);
    // Retiring verified and deleted the previous key.
    let mut f = fixture(Setup::Retiring, Stimulus::Waiting);
    f.settle_on(keyset("k1", &[], None, None));
    let d = f.decide();
    assert!(d.actions.is_empty());
    assert_eq!(d.status.rotation.unwrap().phase, RotationPhase::Idle);
    assert_eq!(
        d.status.history.last().unwrap().outcome,
        RotationOutcome::Succeeded
    );
    // Publishing failed and rolled back.
    let mut f = fixture(Setup::Publishing, Stimulus::Timeout);
    f.settle_on(keyset("k0", &[], None, None));
    let d = f.decide();
    assert!(d.actions.is_empty());
    let rot = d.status.rotation.unwrap();
    assert_eq!(rot.phase, RotationPhase::RollingBack);
    assert_eq!(rot.rollback_from, Some(RotationPhase::Publishing));
    // KeyGenerated -> Activating without prepublish.
    let mut f = fixture(Setup::KeyGenerated, Stimulus::Waiting);
    f.settle_on(keyset("k1", &["k0"], None, Some("k0")));
    let d = f.decide();
    assert!(d.actions.is_empty());
    assert_eq!(d.status.rotation.unwrap().phase, RotationPhase::Activating);
}

#[test]
fn drift_in_a_wait_restarts_from_a_verified_rollout() {
    let mut f = fixture(Setup::Propagating, Stimulus::Waiting);
    f.settle_on(keyset("k0", &[], Some("k1"), None));
    let d = f.decide();
    assert!(d.events.iter().any(|e| e.reason == "KeysetDrift"));
    assert_eq!(d.status.rotation.unwrap().phase, RotationPhase::Publishing);
    assert!(
        matches!(&d.actions[..], [Action::ApplyKeyset(p)] if p.published == vec!["k1".to_string()])
    );
}

#[test]
fn missing_key_material_abandons_the_rotation() {
    let mut f = fixture(Setup::Propagating, Stimulus::Complete);
    // The old key vanished from the Secret: Activating cannot keep it as previous.
    f.settle_on(keyset("k9", &["k1"], Some("k1"), None));
    let d = f.decide();
    assert!(
        d.actions
            .iter()
            .all(|a| !matches!(a, Action::GenerateNextKey { .. }))
    );
    let rot = d.status.rotation.unwrap();
    // Either a drift rewrite is refused (k0 missing) and the rotation ends Failed.
    assert_eq!(rot.phase, RotationPhase::Idle);
    assert_eq!(
        d.status.history.last().unwrap().outcome,
        RotationOutcome::Failed
    );
    let degraded = d
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.reason, "RotationKeyMissing");
}

#[test]
fn a_used_kid_is_never_reserved() {
    let mut f = Fixture::idle(keyset("k0", &[], None, None));
    f.annotate(ROTATE_ANNOTATION, "r1");
    f.new_kid = "k0".into();
    let d = f.decide();
    assert_eq!(d.status.rotation.unwrap().phase, RotationPhase::Idle);
    assert!(d.events.iter().any(|e| e.reason == "KidCollision"));
    assert_eq!(d.status.handled_rotate_request, None);
}

#[test]
fn probes_follow_the_phase() {
    let mut status = MacpAuthStatus::default();
    assert_eq!(probe_plan(&status), ProbePlan::default());
    for (phase, jwks, signing, verifiers) in [
        (RotationPhase::Idle, false, false, false),
        (RotationPhase::KeyGenerated, false, false, true),
        (RotationPhase::Publishing, true, false, false),
        (RotationPhase::Propagating, false, false, true),
        (RotationPhase::Activating, true, true, false),
        (RotationPhase::Draining, false, false, false),
        (RotationPhase::Retiring, true, false, false),
        (RotationPhase::RollingBack, true, true, false),
    ] {
        status.rotation = Some(RotationStatus {
            phase,
            ..RotationStatus::default()
        });
        assert_eq!(
            probe_plan(&status),
            ProbePlan {
                jwks,
                signing,
                verifiers
            },
            "{phase:?}"
        );
    }
}

#[test]
fn probe_errors_are_retried_until_the_deadline() {
    let mut f = fixture(Setup::Publishing, Stimulus::Complete);
    f.observed.pods[1].served_kids = Err("connection refused".into());
    let d = f.decide();
    assert_eq!(
        d.status.rotation.as_ref().unwrap().phase,
        RotationPhase::Publishing
    );
    assert_eq!(d.requeue_after, Some(POLL));
    f.now = at(10 + TIMEOUT);
    let d = f.decide();
    assert_eq!(d.status.rotation.unwrap().phase, RotationPhase::RollingBack);
    assert!(d.events.iter().any(|e| e.reason == "VerificationFailed"));
}
