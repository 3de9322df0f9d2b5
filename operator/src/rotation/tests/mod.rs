//! Table tests of every transition and property tests of the rotation invariants
//! (docs/architecture.md, Rotation invariants).

mod evidence;
mod sim;
mod standby;
mod table;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration as Secs, TimeZone, Utc};

use crate::crd::{MacpAuthSpec, MacpAuthStatus, RotationPhase, SigningAlg};
use crate::fixtures;
use crate::rotation::Action;

use super::{
    Decision, Inputs, KeyView, KeysetPlan, KeysetView, Observed, PodView, Rollout, decide,
};

pub const TTL: i64 = 60;
pub const DRAIN: i64 = 120;
pub const TIMEOUT: i64 = 100;

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

pub fn at(secs: i64) -> DateTime<Utc> {
    t0() + Secs::seconds(secs)
}

pub fn spec() -> MacpAuthSpec {
    fixtures::macpauth("auth")
        .es256()
        .spec(serde_json::json!({"maxTtlSeconds": 60, "jwksCacheTtlSeconds": TTL}))
        .rotation(serde_json::json!({
            "drainSeconds": DRAIN,
            "rolloutTimeoutSeconds": TIMEOUT,
            // The evidence ceiling no longer than the cache TTL + slack: the
            // schedule's lead stays the TTL + slack and three rollouts.
            "propagationTimeoutSeconds": TTL,
            // The tables drive the rotation itself; the standby's tables and
            // properties switch it on.
            "standby": false
        }))
        .build_spec()
}

pub fn key(kid: &str) -> KeyView {
    KeyView {
        kid: kid.to_string(),
        alg: SigningAlg::ES256,
        rsa_bits: None,
    }
}

pub fn keyset(
    active: &str,
    published: &[&str],
    next: Option<&str>,
    previous: Option<&str>,
) -> KeysetView {
    KeysetView {
        active: key(active),
        published: published.iter().map(|k| k.to_string()).collect(),
        next: next.map(key),
        previous: previous.map(key),
    }
}

pub fn view_of(plan: &KeysetPlan) -> KeysetView {
    KeysetView {
        active: key(&plan.active),
        published: plan.published.clone(),
        next: plan.next.as_deref().map(key),
        previous: plan.previous.as_deref().map(key),
    }
}

/// Two healthy pods serving exactly `ks` and signing with its active key.
pub fn pods_serving(ks: &KeysetView) -> Vec<PodView> {
    let mut served = vec![ks.active.kid.clone()];
    served.extend(ks.published.iter().cloned());
    (0..2)
        .map(|i| PodView {
            name: format!("pod-{i}"),
            served_kids: Ok(served.clone()),
            signing_kid: Some(Ok(ks.active.kid.clone())),
        })
        .collect()
}

/// Everything one `decide` call reads, owned.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub spec: MacpAuthSpec,
    pub status: MacpAuthStatus,
    pub annotations: BTreeMap<String, String>,
    pub observed: Observed,
    pub now: DateTime<Utc>,
    pub new_kid: String,
    pub schedule_place: f64,
    /// The max TTL the pods can mint with; the spec's when `None`.
    pub max_ttl_in_effect: Option<i64>,
}

impl Fixture {
    pub fn idle(ks: KeysetView) -> Self {
        let pods = pods_serving(&ks);
        Self {
            spec: spec(),
            status: MacpAuthStatus::default(),
            annotations: BTreeMap::new(),
            observed: Observed {
                keyset: Some(ks),
                rollout: Rollout::Complete,
                pods,
                verifiers: Vec::new(),
            },
            now: t0(),
            new_kid: "k-new".to_string(),
            schedule_place: 0.0,
            max_ttl_in_effect: None,
        }
    }

    pub fn decide(&self) -> Decision {
        decide(&Inputs {
            spec: &self.spec,
            status: &self.status,
            annotations: &self.annotations,
            generation: Some(1),
            observed: &self.observed,
            now: self.now,
            new_kid: &self.new_kid,
            schedule_place: self.schedule_place,
            max_ttl_in_effect: self.max_ttl_in_effect.unwrap_or(self.spec.max_ttl_seconds),
        })
    }

    /// Sets the Secret to `ks` and the pods to a completed rollout of it.
    pub fn settle_on(&mut self, ks: KeysetView) {
        self.observed.pods = pods_serving(&ks);
        self.observed.keyset = Some(ks);
        self.observed.rollout = Rollout::Complete;
    }

    pub fn annotate(&mut self, name: &str, value: &str) {
        self.annotations.insert(name.to_string(), value.to_string());
    }
}

/// One round: decide, then carry out its action as the reconciler would
/// (the Secret written, the rollout completed at once) and persist the status.
pub fn step(f: &mut Fixture) -> Decision {
    let d = f.decide();
    match d.actions.first() {
        Some(Action::ApplyKeyset(plan)) => f.settle_on(view_of(plan)),
        Some(Action::GenerateNextKey { kid, alg, rsa_bits }) => {
            let mut ks = f.observed.keyset.clone().expect("a keyset");
            ks.next = Some(KeyView {
                kid: kid.clone(),
                alg: *alg,
                rsa_bits: *rsa_bits,
            });
            f.observed.keyset = Some(ks);
        }
        None => {}
    }
    f.status = d.status.clone();
    d
}

pub fn phase(f: &Fixture) -> RotationPhase {
    f.status
        .rotation
        .as_ref()
        .map_or(RotationPhase::Idle, |r| r.phase)
}

/// Rounds at `now` until the phase is `want` (at most 10).
pub fn until_phase(f: &mut Fixture, want: RotationPhase) {
    for _ in 0..10 {
        if phase(f) == want {
            return;
        }
        step(f);
    }
    panic!(
        "never reached {want:?}; at {:?}: {:?}",
        phase(f),
        f.status.rotation
    );
}
