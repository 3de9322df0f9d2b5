//! Property tests: a small simulated world driven by random event sequences,
//! with the six rotation invariants checked after every step (their names and
//! meaning: docs/architecture.md, "Rotation invariants"; every failure message
//! starts with the name of the invariant it checks).
//!
//! The world has a Secret (kids by slot), a Deployment template that the glue
//! sets from the Secret after each write, pods that a kubelet replaces one at a
//! time (surge one, `maxUnavailable: 0`), keys whose pods never become ready,
//! pods that serve a wrong JWKS, and failing probes. The operator is the pure
//! machine plus the glue contract of the module docs; "killing" it drops a
//! round at one of three points (before its write, after the Secret write,
//! before the status write), and because the glue keeps nothing in memory,
//! a restart is simply the next round reading the persisted status and Secret.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration as Secs, Utc};
use proptest::prelude::*;

use super::*;
use crate::crd::{
    EMERGENCY_ROTATE_ANNOTATION, EMERGENCY_SCOPE_ANNOTATION, EMERGENCY_SCOPE_SECRET,
    ROTATE_ANNOTATION, RotationPhase, RotationTrigger,
};
use crate::rotation::{Action, Decision, PROPAGATION_SLACK_SECONDS, probe_plan};

const REPLICAS: usize = 2;

// The rotation invariants, by the names of docs/architecture.md and of the
// `# Invariants` section of the rotation module. Every check below fails with
// one of them, so a failure says which invariant broke.
/// With prepublish, a routine key signs only after every pod served it for TTL + slack.
const I1: &str = "I1 publish-before-sign";
/// A routine key that signed leaves the JWKS only `drainSeconds` after its last signature.
const I2: &str = "I2 drain-before-unpublish";
/// A key is in the Secret before anything names it; the active key is only ever replaced.
const I3: &str = "I3 keys-durable";
/// A restart at any point completes the rotation: no step skipped, no effect repeated.
const I4: &str = "I4 restart-safe";
/// A suspect key, once withdrawn, is never published or served again.
const I5: &str = "I5 suspect-never-returns";
/// At most one rotation in flight; a rotation ends only through history.
const I6: &str = "I6 one-rotation-at-a-time";
/// No key leaves the JWKS while a token it could have signed is alive: its
/// drain covers the highest max TTL any pod signed with it under, whatever
/// the spec says now (the drain ledger, part of I2).
const I2_LEDGER: &str = "I2 drain-before-unpublish (ledger)";
/// The standby key signs only once a rotation activated it: while it is the
/// standby, no pod holds its private half.
const I7: &str = "I7 standby-never-signs";
/// At most one standby: the Secret's `next` key, the only key published
/// without ever having signed.
const I8: &str = "I8 one-standby";

type RotationId = (Option<DateTime<Utc>>, Option<String>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Secret {
    active: String,
    published: Vec<String>,
    next: Option<String>,
    previous: Option<String>,
}

impl Secret {
    fn config(&self) -> Config {
        Config {
            active: self.active.clone(),
            published: self.published.clone(),
        }
    }

    fn kids(&self) -> BTreeSet<String> {
        let mut kids: BTreeSet<String> = self.published.iter().cloned().collect();
        kids.insert(self.active.clone());
        kids.extend(self.next.clone());
        kids.extend(self.previous.clone());
        kids
    }

    fn jwks(&self) -> BTreeSet<String> {
        self.config().served()
    }

    fn view(&self, kinds: &BTreeMap<String, SigningAlg>) -> KeysetView {
        let k = |kid: &str| KeyView {
            alg: kinds.get(kid).copied().unwrap_or(SigningAlg::ES256),
            ..key(kid)
        };
        KeysetView {
            active: k(&self.active),
            published: self.published.clone(),
            next: self.next.as_deref().map(k),
            previous: self.previous.as_deref().map(k),
        }
    }
}

/// What a pod was started with: the keyset hash inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Config {
    active: String,
    published: Vec<String>,
}

impl Config {
    fn served(&self) -> BTreeSet<String> {
        let mut kids: BTreeSet<String> = self.published.iter().cloned().collect();
        kids.insert(self.active.clone());
        kids
    }
}

#[derive(Clone, Debug)]
struct Pod {
    id: u32,
    config: Config,
    ready: bool,
    faulty: bool,
    /// The max token TTL it was started with (the spec's then).
    max_ttl: i64,
}

impl Pod {
    fn served(&self) -> Vec<String> {
        if self.faulty {
            vec![self.config.active.clone(), "bogus".to_string()]
        } else {
            let mut kids = vec![self.config.active.clone()];
            kids.extend(self.config.published.iter().cloned());
            kids
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Crash {
    BeforeWrite,
    AfterSecret,
    BeforeStatus,
}

#[derive(Clone, Debug)]
enum Ev {
    Reconcile,
    Kill(Crash),
    Kubelet,
    Advance(i64),
    Rotate,
    /// An emergency for a leaked pod: a propagated standby replaces the suspects.
    Emergency,
    /// An emergency for a leaked Secret: the standby is suspect too.
    EmergencySecret,
    ToggleStandby,
    TogglePrepublish,
    TogglePaused,
    ToggleAlg,
    ToggleInterval,
    BreakNextKey,
    FaultyNextPod,
    ProbeErrors(bool),
    /// `spec.maxTtlSeconds` changes; the operator renders it into the
    /// template at its next round, and only pods started after that mint
    /// with it (pods already running keep theirs).
    SetMaxTtl(i64),
}

fn event() -> impl Strategy<Value = Ev> {
    prop_oneof![
        8 => Just(Ev::Reconcile),
        2 => prop_oneof![
            Just(Crash::BeforeWrite),
            Just(Crash::AfterSecret),
            Just(Crash::BeforeStatus)
        ]
        .prop_map(Ev::Kill),
        6 => Just(Ev::Kubelet),
        5 => (1i64..=150).prop_map(Ev::Advance),
        2 => Just(Ev::Rotate),
        1 => Just(Ev::Emergency),
        1 => Just(Ev::EmergencySecret),
        1 => Just(Ev::ToggleStandby),
        1 => Just(Ev::TogglePrepublish),
        1 => Just(Ev::TogglePaused),
        1 => Just(Ev::ToggleAlg),
        1 => Just(Ev::ToggleInterval),
        1 => Just(Ev::BreakNextKey),
        1 => Just(Ev::FaultyNextPod),
        1 => any::<bool>().prop_map(Ev::ProbeErrors),
        2 => (1i64..=300).prop_map(Ev::SetMaxTtl),
    ]
}

/// What the checks remember about the past.
#[derive(Default, Debug)]
struct Tracker {
    /// Kid -> since when every ready pod serves it (reset when one does not).
    all_serve_since: BTreeMap<String, DateTime<Utc>>,
    /// Kids some ready pod signs with right now.
    signing: BTreeSet<String>,
    first_signed: BTreeMap<String, DateTime<Utc>>,
    stopped_signing: BTreeMap<String, DateTime<Utc>>,
    /// Kid -> when the longest-lived token it may have signed expires.
    token_expiry: BTreeMap<String, DateTime<Utc>>,
    /// Kids that were published before they ever were the active key.
    prepublished: BTreeSet<String>,
    /// Kids generated by a routine rotation (any trigger but an emergency).
    routine_keys: BTreeSet<String>,
    /// Generated kids for which `spec.rotation.prepublish` was off at some
    /// moment before they first signed: I1 does not bind them.
    prepublish_off: BTreeSet<String>,
    ever_active: BTreeSet<String>,
    /// Suspects from the world's point of view: every kid in the Secret when an emergency was requested.
    suspects: BTreeSet<String>,
    /// Suspects already gone from the Secret's JWKS / from every pod's JWKS.
    withdrawn: BTreeSet<String>,
    gone_from_pods: BTreeSet<String>,
    ever_served: BTreeSet<String>,
    generated: BTreeSet<String>,
    /// Persisted phases, each with its rotation's identity (start, request id) and trigger.
    phases: Vec<(RotationId, RotationPhase, Option<RotationTrigger>)>,
    named: BTreeSet<String>,
    /// Suspects named only by the emergency request the operator has not
    /// taken yet: a newer request that replaces it before the operator read
    /// it retracts them (the operator acts on the annotations it sees).
    unseen_suspects: BTreeSet<String>,
}

struct World {
    now: DateTime<Utc>,
    spec: MacpAuthSpec,
    annotations: BTreeMap<String, String>,
    status: MacpAuthStatus,
    secret: Secret,
    template: Config,
    /// The max TTL the operator last rendered into the template (its step 3,
    /// before any crash point of a round): what new pods mint with.
    rendered_max_ttl: i64,
    pods: Vec<Pod>,
    broken: BTreeSet<String>,
    break_next_key: bool,
    faulty_next_pod: bool,
    probe_errors: bool,
    counter: u32,
    requests: u32,
    /// Algorithm of every generated key (the first key is ES256).
    kinds: BTreeMap<String, SigningAlg>,
    t: Tracker,
    log: Vec<String>,
}

impl World {
    fn new() -> Self {
        let secret = Secret {
            active: "k0".into(),
            published: vec![],
            next: None,
            previous: None,
        };
        let template = secret.config();
        let pods = (0..REPLICAS as u32)
            .map(|id| Pod {
                id,
                config: template.clone(),
                ready: true,
                faulty: false,
                max_ttl: 60,
            })
            .collect();
        let mut w = World {
            now: t0(),
            spec: spec(),
            annotations: BTreeMap::new(),
            status: MacpAuthStatus::default(),
            secret,
            template,
            rendered_max_ttl: 60,
            pods,
            broken: BTreeSet::new(),
            break_next_key: false,
            faulty_next_pod: false,
            probe_errors: false,
            counter: 10,
            requests: 0,
            kinds: BTreeMap::new(),
            t: Tracker::default(),
            log: Vec::new(),
        };
        w.t.ever_active.insert("k0".into());
        w.observe_pods();
        w
    }

    /// A world whose MacpAuth already has a propagated standby `ks` (every
    /// pod has served it for longer than the cache wait), so that histories
    /// act on it from their first event.
    fn with_standby() -> Self {
        let mut w = World::new();
        let ks = "ks".to_string();
        w.spec.rotation.standby = true;
        w.secret.published = vec![ks.clone()];
        w.secret.next = Some(ks.clone());
        w.kinds.insert(ks.clone(), SigningAlg::ES256);
        w.template = w.secret.config();
        for p in &mut w.pods {
            p.config = w.template.clone();
        }
        w.status.standby = Some(crate::crd::StandbyStatus {
            kid: ks.clone(),
            propagated: true,
            propagated_at: Some(w.now),
        });
        w.t.generated.insert(ks.clone());
        w.t.prepublished.insert(ks.clone());
        w.t.all_serve_since
            .insert(ks, w.now - Secs::seconds(TTL + PROPAGATION_SLACK_SECONDS));
        w.observe_pods();
        w
    }

    /// Fails the test naming the invariant (one of `I1` to `I6`) and what broke it.
    fn fail(&self, invariant: &str, what: &str) -> ! {
        panic!(
            "invariant violated: {invariant}: {what}\nsecret={:?}\npods={:?}\nstatus={:#?}\nlog:\n{}",
            self.secret,
            self.pods,
            self.status.rotation,
            self.log.join("\n")
        );
    }

    // ----- the cluster -----

    fn rollout_complete(&self) -> bool {
        self.template == self.secret.config()
            && self.pods.len() == REPLICAS
            && self
                .pods
                .iter()
                .all(|p| p.ready && p.config == self.template)
    }

    fn kubelet(&mut self) {
        // Every pod about to go signed until now.
        self.mint();
        let tpl = self.template.clone();
        let broken = tpl.served().iter().any(|k| self.broken.contains(k));
        // Unready pods of an older template are deleted when the template moves on.
        self.pods.retain(|p| p.ready || p.config == tpl);
        if !broken {
            // A pod stuck on a key that is no longer broken recovers (its restart succeeds).
            for p in self.pods.iter_mut().filter(|p| p.config == tpl) {
                p.ready = true;
            }
        }
        let current = self.pods.iter().filter(|p| p.config == tpl).count();
        let old = self.pods.iter().position(|p| p.config != tpl);
        if broken {
            if current == 0 {
                self.counter += 1;
                self.pods.push(Pod {
                    id: self.counter,
                    config: tpl,
                    ready: false,
                    faulty: false,
                    max_ttl: self.rendered_max_ttl,
                });
            }
            return;
        }
        if current < REPLICAS {
            self.counter += 1;
            let faulty = std::mem::take(&mut self.faulty_next_pod);
            self.pods.push(Pod {
                id: self.counter,
                config: tpl.clone(),
                ready: true,
                faulty,
                max_ttl: self.rendered_max_ttl,
            });
        }
        if let Some(i) = old {
            self.pods.remove(i);
        } else if current > REPLICAS
            && let Some(i) = self.pods.iter().position(|p| p.config == tpl)
        {
            self.pods.remove(i);
        }
        self.observe_pods();
    }

    // ----- the operator: glue around the pure machine -----

    fn reconcile(&mut self, crash: Option<Crash>) -> Decision {
        // Step 3 applies the Deployment with the spec's max TTL before the
        // round decides anything, so before any of its crash points.
        self.rendered_max_ttl = self.spec.max_ttl_seconds;
        let probes = probe_plan(&self.status);
        let current = self.secret.config();
        let pods = self
            .pods
            .iter()
            .filter(|p| p.ready && p.config == current)
            .map(|p| PodView {
                name: format!("pod-{}", p.id),
                served_kids: if self.probe_errors {
                    Err("probe timed out".into())
                } else {
                    Ok(p.served())
                },
                signing_kid: probes.signing.then(|| Ok(p.config.active.clone())),
            })
            .collect();
        let observed = Observed {
            keyset: Some(self.secret.view(&self.kinds)),
            rollout: if self.rollout_complete() {
                Rollout::Complete
            } else {
                Rollout::InProgress
            },
            pods,
            verifiers: Vec::new(),
        };
        self.counter += 1;
        let new_kid = format!("k{}", self.counter);
        let d = decide(&Inputs {
            spec: &self.spec,
            status: &self.status,
            annotations: &self.annotations,
            generation: Some(1),
            observed: &observed,
            now: self.now,
            new_kid: &new_kid,
            // Scheduled rotations start early here, as most do in a cluster.
            schedule_place: 0.75,
            // What the reconciler reads: the rendered TTL, or a running pod's higher one.
            max_ttl_in_effect: self
                .pods
                .iter()
                .map(|p| p.max_ttl)
                .fold(self.rendered_max_ttl, i64::max),
        });
        if matches!(crash, Some(Crash::BeforeWrite)) {
            return d;
        }
        let emergency =
            d.status.rotation.as_ref().and_then(|r| r.trigger) == Some(RotationTrigger::Emergency);
        for action in &d.actions {
            self.execute(action, emergency);
        }
        if matches!(crash, Some(Crash::AfterSecret)) {
            return d;
        }
        self.template = self.secret.config();
        if matches!(crash, Some(Crash::BeforeStatus)) {
            return d;
        }
        self.persist(d.status.clone());
        d
    }

    /// Executes one action of a round; `emergency`: the round's rotation is an emergency.
    fn execute(&mut self, action: &Action, emergency: bool) {
        let before = self.secret.clone();
        match action {
            Action::GenerateNextKey { kid, alg, .. } => {
                self.kinds.insert(kid.clone(), *alg);
                // I4 restart-safe: no effect is repeated, so no key is generated twice.
                if !self.t.generated.insert(kid.clone()) {
                    self.fail(I4, &format!("key {kid} generated twice"));
                }
                // I3 keys-durable: generating a key never overwrites one in use.
                if self.secret.active == *kid || self.secret.previous.as_ref() == Some(kid) {
                    self.fail(I3, "key generation overwrote the active or previous key");
                }
                if !emergency {
                    self.t.routine_keys.insert(kid.clone());
                }
                if !self.spec.rotation.prepublish {
                    self.t.prepublish_off.insert(kid.clone());
                }
                if std::mem::take(&mut self.break_next_key) {
                    self.broken.insert(kid.clone());
                }
                self.secret.next = Some(kid.clone());
            }
            Action::ApplyKeyset(plan) => {
                // I3 keys-durable: a plan refers only to keys the Secret already holds.
                if let Err(e) = plan.check(&self.secret.view(&self.kinds)) {
                    self.fail(
                        I3,
                        &format!("plan not laid out from existing material: {e}"),
                    );
                }
                self.secret = Secret {
                    active: plan.active.clone(),
                    published: plan.published.clone(),
                    next: plan.next.clone(),
                    previous: plan.previous.clone(),
                };
            }
        }
        self.log.push(format!("  write {:?}", self.secret));
        self.check_secret_write(&before);
    }

    fn persist(&mut self, status: MacpAuthStatus) {
        let before = self.status.rotation.clone().unwrap_or_default();
        let after = status.rotation.clone().unwrap_or_default();
        // I3 keys-durable: status names a key only once it is in the Secret.
        if let Some(kid) = &after.new_kid
            && self.t.named.insert(kid.clone())
            && !self.secret.view(&self.kinds).holds_private(kid)
        {
            self.fail(
                I3,
                &format!("status names {kid} before the Secret holds it"),
            );
        }
        // I6 one-rotation-at-a-time: a rotation leaves only through history
        // (finished or superseded).
        // A standby's preparation is no rotation: it parks without one.
        if before.phase != RotationPhase::Idle
            && before.started_at != after.started_at
            && before.trigger != Some(RotationTrigger::Standby)
        {
            let recorded = status
                .history
                .iter()
                .any(|r| Some(r.started_at) == before.started_at);
            if !recorded {
                self.fail(I6, "a rotation ended without a history entry");
            }
        }
        let entry = (
            (after.started_at, after.request_id.clone()),
            after.phase,
            after.trigger,
        );
        if self.t.phases.last() != Some(&entry) {
            self.t.phases.push(entry);
        }
        self.check_phase_path();
        // I8 one-standby: the standby is the Secret's next key.
        if let Some(standby) = &status.standby
            && self.secret.next.as_ref() != Some(&standby.kid)
        {
            self.fail(
                I8,
                &format!("standby {} is not the Secret's next key", standby.kid),
            );
        }
        self.status = status;
    }

    // ----- invariants -----

    /// Updates the serving/signing facts after pods changed, checking I1 and I5.
    /// Every ready pod has been minting, up to now, tokens as long as its max TTL.
    fn mint(&mut self) {
        for p in self.pods.iter().filter(|p| p.ready) {
            let expiry = self.now + Secs::seconds(p.max_ttl);
            let e = self
                .t
                .token_expiry
                .entry(p.config.active.clone())
                .or_insert(expiry);
            *e = (*e).max(expiry);
        }
    }

    fn observe_pods(&mut self) {
        self.mint();
        let ready: Vec<&Pod> = self.pods.iter().filter(|p| p.ready).collect();
        let mut served_by_all: Option<BTreeSet<String>> = None;
        for p in &ready {
            let s: BTreeSet<String> = p.served().into_iter().collect();
            served_by_all = Some(match served_by_all {
                None => s,
                Some(acc) => acc.intersection(&s).cloned().collect(),
            });
        }
        let served_by_all = served_by_all.unwrap_or_default();
        self.t
            .all_serve_since
            .retain(|k, _| served_by_all.contains(k));
        for k in &served_by_all {
            self.t.all_serve_since.entry(k.clone()).or_insert(self.now);
        }
        let signing: BTreeSet<String> = ready.iter().map(|p| p.config.active.clone()).collect();
        for kid in signing.difference(&self.t.signing.clone()) {
            if !self.t.first_signed.contains_key(kid) {
                self.t.first_signed.insert(kid.clone(), self.now);
                // I1 publish-before-sign: a prepublished key, and any key of a routine
                // rotation while `prepublish` stayed on (the machine must not skip
                // publishing it), signs only after every pod served it for the cache
                // TTL plus the propagation slack.
                let routine_with_prepublish =
                    self.t.routine_keys.contains(kid) && !self.t.prepublish_off.contains(kid);
                if self.t.prepublished.contains(kid) || routine_with_prepublish {
                    let since = self.t.all_serve_since.get(kid).copied();
                    let wait = TTL + PROPAGATION_SLACK_SECONDS;
                    if since.is_none_or(|s| s > self.now - Secs::seconds(wait)) {
                        self.fail(
                            I1,
                            &format!(
                                "{kid} signs at {} but every pod served it only since {since:?}",
                                self.now
                            ),
                        );
                    }
                }
            }
        }
        // I7 standby-never-signs: no ready pod holds the standby's private half.
        if let Some(standby) = &self.status.standby
            && signing.contains(&standby.kid)
        {
            self.fail(I7, &format!("standby {} signs on a pod", standby.kid));
        }
        for kid in self.t.signing.difference(&signing) {
            self.t.stopped_signing.insert(kid.clone(), self.now);
        }
        self.t.signing = signing;
        // I5 suspect-never-returns: a suspect, once withdrawn (out of the pod template and
        // no ready pod configured to serve it), never comes back. Judged on
        // configuration, not on what pods answer: a faulty pod that drops a
        // key for a while is a pod fault; and a template written before the
        // emergency request that still rolls out is not a new publication.
        let configured: BTreeSet<String> = ready.iter().flat_map(|p| p.config.served()).collect();
        self.t.ever_served.extend(configured.iter().cloned());
        for kid in self.t.suspects.clone() {
            if !self.t.ever_served.contains(&kid) {
                continue;
            }
            if !configured.contains(&kid) && !self.template.served().contains(&kid) {
                self.t.gone_from_pods.insert(kid);
            } else if self.t.gone_from_pods.contains(&kid) {
                self.fail(I5, &format!("suspect {kid} is served by a pod again"));
            }
        }
    }

    fn check_secret_write(&mut self, before: &Secret) {
        let after = self.secret.clone();
        for kid in after.published.iter() {
            if !self.t.ever_active.contains(kid) && after.active != *kid {
                self.t.prepublished.insert(kid.clone());
            }
        }
        self.t.ever_active.insert(after.active.clone());
        // I3 keys-durable: the active key is never deleted (except a suspect
        // replaced by an emergency).
        let old = &before.active;
        if !after.view(&self.kinds).holds_private(old) && !self.suspect_now(old) {
            self.fail(I3, &format!("active key {old} deleted"));
        }
        // I2 drain-before-unpublish: a key that signed leaves the JWKS only after draining.
        for kid in before.jwks().difference(&after.jwks()) {
            if self.suspect_now(kid) || !self.t.first_signed.contains_key(kid) {
                continue;
            }
            if self.t.signing.contains(kid) {
                self.fail(
                    I2,
                    &format!("{kid} withdrawn while a pod still signs with it"),
                );
            }
            // The ledger: the verifier accepts a token 60 s past `exp`.
            if let Some(expiry) = self.t.token_expiry.get(kid).copied()
                && self.now < expiry + Secs::seconds(crate::crd::VERIFIER_LEEWAY_SECONDS)
            {
                self.fail(
                    I2_LEDGER,
                    &format!(
                        "{kid} withdrawn at {} while a token it signed is accepted until {}",
                        self.now,
                        expiry + Secs::seconds(crate::crd::VERIFIER_LEEWAY_SECONDS)
                    ),
                );
            }
            let stopped = self.t.stopped_signing.get(kid).copied();
            if stopped.is_none_or(|s| self.now - s < Secs::seconds(DRAIN)) {
                self.fail(
                    I2,
                    &format!(
                        "{kid} withdrawn at {} though it stopped signing at {stopped:?}",
                        self.now
                    ),
                );
            }
        }
        // I5 suspect-never-returns: a withdrawn suspect never returns to the Secret's JWKS.
        for kid in self.t.suspects.clone() {
            if !after.jwks().contains(&kid) {
                self.t.withdrawn.insert(kid);
            } else if self.t.withdrawn.contains(&kid) {
                self.fail(I5, &format!("suspect {kid} published again"));
            }
        }
        // I8 one-standby: one key at most is published without ever having signed.
        let unsigned = after
            .published
            .iter()
            .filter(|k| !self.t.ever_active.contains(*k) && !self.suspect_now(k))
            .count();
        if unsigned > 1 {
            self.fail(I8, "two keys published that never signed: two standbys");
        }
        // I6 one-rotation-at-a-time: one rotation in flight, so at most two keys
        // that are not suspect.
        // A discarded standby (published only, its private half replaced,
        // never signed) is on its way out, not a rotation.
        let view = after.view(&self.kinds);
        let live = after
            .kids()
            .into_iter()
            .filter(|k| !self.suspect_now(k))
            .filter(|k| view.holds_private(k) || self.t.first_signed.contains_key(k))
            .count();
        if live > 2 {
            self.fail(I6, "more than two live keys: two rotations in flight");
        }
    }

    fn suspect_now(&self, kid: &str) -> bool {
        self.t.suspects.contains(kid)
    }

    /// I4 restart-safe (no skipped step): persisted phases of each rotation follow the graph.
    fn check_phase_path(&self) {
        use RotationPhase::*;
        let n = self.t.phases.len();
        if n < 2 {
            return;
        }
        let (s0, from, trig) = &self.t.phases[n - 2];
        let (s1, to, trig1) = &self.t.phases[n - 1];
        let (from, to) = (*from, *to);
        let standby = *trig == Some(RotationTrigger::Standby);
        // A routine request takes a standby's preparation over: the same
        // rotation (same start) with a request id. An emergency is a new one.
        let adopted = standby && s0.0 == s1.0 && *trig1 != Some(RotationTrigger::Emergency);
        if s0 != s1 && !adopted && to != Idle {
            // A new rotation always starts by reserving a key.
            if to != KeyGenerated {
                self.fail(I4, &format!("rotation started in {to:?}"));
            }
            return;
        }
        if from == to {
            return;
        }
        let emergency = *trig == Some(RotationTrigger::Emergency);
        let ok = match (from, to) {
            (KeyGenerated, Activating) => true,
            (KeyGenerated, Publishing) => !emergency,
            (Activating, Idle) => emergency,
            // A standby parks once propagated.
            (Propagating, Idle) => standby,
            (_, _) if emergency => false,
            (Publishing, Propagating | RollingBack) => true,
            (Propagating, Activating | Publishing) => true,
            (Activating, Draining | RollingBack) => true,
            (Draining, Retiring | Activating | RollingBack) => true,
            (Retiring, Idle | RollingBack) => true,
            (RollingBack, Idle | Draining) => true,
            (Idle, KeyGenerated) => true,
            _ => false,
        };
        if !ok {
            self.fail(I4, &format!("skipped step: {from:?} -> {to:?}"));
        }
    }

    // ----- driving -----

    fn step(&mut self, ev: &Ev) {
        self.log
            .push(format!("t+{} {ev:?}", (self.now - t0()).num_seconds()));
        match ev {
            Ev::Reconcile => {
                self.reconcile(None);
            }
            Ev::Kill(point) => {
                self.reconcile(Some(*point));
            }
            Ev::Kubelet => self.kubelet(),
            Ev::Advance(s) => {
                self.now += Secs::seconds(*s);
                self.observe_pods();
            }
            Ev::Rotate => {
                self.requests += 1;
                self.annotations
                    .insert(ROTATE_ANNOTATION.into(), format!("r{}", self.requests));
            }
            Ev::Emergency | Ev::EmergencySecret => {
                self.requests += 1;
                // A propagated standby never reached a pod: a leaked pod
                // does not make it suspect; a leaked Secret does.
                let standby = self
                    .status
                    .standby
                    .as_ref()
                    .filter(|s| s.propagated && self.secret.next.as_ref() == Some(&s.kid))
                    .map(|s| s.kid.clone());
                let replaced_unseen = self
                    .annotations
                    .get(EMERGENCY_ROTATE_ANNOTATION)
                    .is_some_and(|v| Some(v) != self.status.handled_emergency_request.as_ref());
                // The operator took the previous request: its suspects stand.
                let unseen = std::mem::take(&mut self.t.unseen_suspects);
                if replaced_unseen {
                    for kid in unseen {
                        self.t.suspects.remove(&kid);
                        self.t.withdrawn.remove(&kid);
                        self.t.gone_from_pods.remove(&kid);
                    }
                }
                let suspects: Vec<String> = if matches!(ev, Ev::EmergencySecret) {
                    self.annotations.insert(
                        EMERGENCY_SCOPE_ANNOTATION.into(),
                        EMERGENCY_SCOPE_SECRET.into(),
                    );
                    self.secret.kids().into_iter().collect()
                } else {
                    self.annotations.remove(EMERGENCY_SCOPE_ANNOTATION);
                    let kids = self.secret.kids();
                    kids.into_iter()
                        .filter(|k| Some(k) != standby.as_ref())
                        .collect()
                };
                for kid in suspects {
                    if self.t.suspects.insert(kid.clone()) {
                        self.t.unseen_suspects.insert(kid);
                    }
                }
                self.annotations.insert(
                    EMERGENCY_ROTATE_ANNOTATION.into(),
                    format!("inc{}", self.requests),
                );
            }
            Ev::TogglePrepublish => {
                self.spec.rotation.prepublish ^= true;
                if !self.spec.rotation.prepublish {
                    // Keys that have not signed yet may now legitimately skip publishing.
                    let unsigned: Vec<String> = self
                        .t
                        .generated
                        .iter()
                        .filter(|k| !self.t.first_signed.contains_key(*k))
                        .cloned()
                        .collect();
                    self.t.prepublish_off.extend(unsigned);
                }
            }
            Ev::TogglePaused => self.spec.rotation.paused ^= true,
            Ev::ToggleStandby => self.spec.rotation.standby ^= true,
            Ev::ToggleAlg => {
                self.spec.signing_alg = match self.spec.signing_alg {
                    SigningAlg::ES256 => SigningAlg::RS256,
                    SigningAlg::RS256 => SigningAlg::ES256,
                };
            }
            Ev::ToggleInterval => {
                self.spec.rotation.interval = match self.spec.rotation.interval {
                    Some(_) => None,
                    None => Some("10m".into()),
                };
            }
            Ev::BreakNextKey => self.break_next_key = true,
            Ev::FaultyNextPod => self.faulty_next_pod = true,
            Ev::ProbeErrors(on) => self.probe_errors = *on,
            Ev::SetMaxTtl(ttl) => self.spec.max_ttl_seconds = *ttl,
        }
    }

    /// Heals the cluster and lets the operator finish; every request must end up
    /// handled (I4 restart-safe: the rotation completes, each request acts once).
    fn settle(&mut self) {
        self.log.push("settle".into());
        self.broken.clear();
        self.break_next_key = false;
        self.faulty_next_pod = false;
        self.probe_errors = false;
        self.spec.rotation.paused = false;
        self.spec.rotation.interval = None;
        for p in &mut self.pods {
            p.faulty = false;
        }
        for _ in 0..400 {
            let d = self.reconcile(None);
            for _ in 0..REPLICAS * 2 + 1 {
                self.kubelet();
            }
            if self.finished() {
                break;
            }
            let wait = d
                .requeue_after
                .map_or(1, |r| r.as_secs().max(1) as i64)
                .min(600);
            self.now += Secs::seconds(wait);
            self.observe_pods();
        }
        if !self.finished() {
            self.fail(
                I4,
                "the rotation did not complete once the cluster was healthy",
            );
        }
        // The end state: one key (and the standby), no leftovers, every pod
        // serving exactly them, not a suspect.
        let s = &self.secret;
        let standby = self.status.standby.as_ref().map(|s| s.kid.clone());
        if s.published != Vec::from_iter(standby.clone())
            || s.next != standby
            || s.previous.is_some()
        {
            self.fail(I4, "leftover keys after the rotation completed");
        }
        if self.suspect_now(&s.active) {
            self.fail(I5, "a suspect key is active after the emergency completed");
        }
        let served: BTreeSet<String> = std::iter::once(s.active.clone()).chain(standby).collect();
        for p in &self.pods {
            if p.config.served() != served {
                self.fail(I4, "a pod serves other keys after completion");
            }
        }
        // Each request id produced at most one history entry.
        let mut seen = BTreeSet::new();
        for r in &self.status.history {
            if let Some(id) = &r.request_id
                && !id.starts_with("spec:")
                && !seen.insert(id.clone())
            {
                self.fail(I4, &format!("request {id} acted on twice"));
            }
        }
    }

    /// No standby and none wanted, or the standby propagated and laid out.
    fn standby_settled(&self) -> bool {
        match &self.status.standby {
            None => {
                !self.spec.rotation.standby
                    && self.secret.next.is_none()
                    && self.secret.published.is_empty()
            }
            Some(s) => {
                s.propagated
                    && self.secret.next.as_ref() == Some(&s.kid)
                    && self.secret.published == [s.kid.clone()]
            }
        }
    }

    fn finished(&self) -> bool {
        let rot = self.status.rotation.clone().unwrap_or_default();
        let handled = |name: &str, done: &Option<String>| {
            self.annotations
                .get(name)
                .is_none_or(|v| Some(v) == done.as_ref())
        };
        rot.phase == RotationPhase::Idle
            && handled(ROTATE_ANNOTATION, &self.status.handled_rotate_request)
            && handled(
                EMERGENCY_ROTATE_ANNOTATION,
                &self.status.handled_emergency_request,
            )
            && self.standby_settled()
            && self.rollout_complete()
            && self.secret.view(&self.kinds).active.alg == self.spec.signing_alg
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn invariants_hold_on_random_histories(
        standby in any::<bool>(),
        events in proptest::collection::vec(event(), 1..120),
    ) {
        let mut w = if standby { World::with_standby() } else { World::new() };
        for ev in &events {
            w.step(ev);
        }
        w.settle();
    }
}

/// What happens between the operator's rounds in the key-age property: a
/// round (after which time moves on to its requeue, at most a minute, and
/// the kubelet replaces a pod), a restart at one of the three crash points,
/// each routine and emergency trigger, and a few seconds of latency.
#[derive(Clone, Debug)]
enum AgeEv {
    Tick,
    Kill(Crash),
    Rotate,
    Emergency,
    ToggleAlg,
    Latency(i64),
}

fn age_event() -> impl Strategy<Value = AgeEv> {
    prop_oneof![
        12 => Just(AgeEv::Tick),
        2 => prop_oneof![
            Just(Crash::BeforeWrite),
            Just(Crash::AfterSecret),
            Just(Crash::BeforeStatus)
        ]
        .prop_map(AgeEv::Kill),
        1 => Just(AgeEv::Rotate),
        1 => Just(AgeEv::Emergency),
        1 => Just(AgeEv::ToggleAlg),
        2 => (1i64..=5).prop_map(AgeEv::Latency),
    ]
}

impl World {
    /// One round, then time moves on to its requeue (a pod change would
    /// wake the operator sooner: at most a minute), then one kubelet step.
    fn tick(&mut self) {
        let d = self.reconcile(None);
        let wait = d
            .requeue_after
            .map_or(2, |r| r.as_secs().max(1) as i64)
            .min(60);
        self.now += Secs::seconds(wait);
        self.observe_pods();
        self.kubelet();
    }

    /// The age of every key that signs now, measured from its first
    /// signature on any pod, is at most `interval`.
    fn check_signing_age(&self, interval: i64) {
        for kid in &self.t.signing {
            let first = self.t.first_signed.get(kid).copied().unwrap_or(self.now);
            let age = (self.now - first).num_seconds();
            if age > interval {
                self.fail(
                    "key age",
                    &format!(
                        "{kid} still signs {age}s after its first signature, interval {interval}s"
                    ),
                );
            }
        }
    }

    fn age_step(&mut self, ev: &AgeEv, interval: i64) {
        self.log
            .push(format!("t+{} {ev:?}", (self.now - t0()).num_seconds()));
        match ev {
            AgeEv::Tick => self.tick(),
            AgeEv::Kill(point) => {
                self.reconcile(Some(*point));
            }
            AgeEv::Rotate => self.step(&Ev::Rotate),
            AgeEv::Emergency => self.step(&Ev::Emergency),
            AgeEv::ToggleAlg => self.step(&Ev::ToggleAlg),
            AgeEv::Latency(s) => self.step(&Ev::Advance(*s)),
        }
        self.check_signing_age(interval);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    /// A key never signs longer than `rotation.interval`, whatever triggers
    /// rotations (the schedule, `macp.io/rotate`, a signing-kind change, an
    /// emergency) and wherever the operator restarts, for any interval the
    /// spec check accepts (from its minimum up), as long as every rollout
    /// completes within its timeout.
    #[test]
    fn a_key_never_signs_longer_than_the_interval(
        extra in 0i64..1200,
        events in proptest::collection::vec(age_event(), 1..200),
    ) {
        let mut w = World::new();
        let min = crate::rotation::min_interval(&w.spec).as_secs() as i64;
        let interval = min + extra;
        w.spec.rotation.interval = Some(format!("{interval}s"));
        // The first key's creation, as the reconciler records it.
        w.status.history.push(crate::crd::RotationRecord {
            trigger: RotationTrigger::Initial,
            request_id: None,
            old_kid: None,
            new_kid: Some("k0".into()),
            started_at: w.now,
            finished_at: w.now,
            outcome: crate::crd::RotationOutcome::Succeeded,
            message: None,
        });
        for ev in &events {
            w.age_step(ev, interval);
        }
        // Then several intervals of scheduled rotations alone.
        let until = w.now + Secs::seconds(4 * interval);
        let mut rounds = 0;
        while w.now < until && rounds < 20_000 {
            w.age_step(&AgeEv::Tick, interval);
            rounds += 1;
        }
        let scheduled = w
            .status
            .history
            .iter()
            .filter(|r| r.trigger == RotationTrigger::Scheduled)
            .count();
        prop_assert!(scheduled >= 2, "only {scheduled} scheduled rotations in four intervals");
    }
}
