//! Key rotation as a pure, crash-safe state machine (docs/architecture.md, Key rotation).
//!
//! [`decide`] maps what is persisted (the `MacpAuth` spec, status and
//! annotations) and what the reconciler observed this round (the Secret's
//! keyset, the Deployment rollout, the pods' JWKS) to the next status and at
//! most one [`Action`]. It performs no I/O, reads no clock and draws no
//! randomness: the reconciler passes `now` and a fresh kid, generates key
//! material itself and writes everything.
//!
//! # Invariants
//!
//! Every history of decisions keeps these eight, with operator restarts at any
//! point. The names are shared with docs/architecture.md ("Rotation
//! invariants") and with the property test `tests/sim.rs`, whose failures
//! start with the name of the invariant they broke.
//!
//! - `I1 publish-before-sign`: with `prepublish`, a routine key signs only after every pod served it for the cache TTL + slack.
//! - `I2 drain-before-unpublish`: a routine key that signed leaves the JWKS only `drainSeconds` after its last signature, and never while a token it could have signed under any max TTL in effect is alive ([`ledger`]).
//! - `I3 keys-durable`: a key is in the Secret, read back, before anything names it; the active key is only ever replaced.
//! - `I4 restart-safe`: a restart at any point completes the rotation, with no step skipped and no effect repeated.
//! - `I5 suspect-never-returns`: after an emergency request, a withdrawn suspect key is never published again.
//! - `I6 one-rotation-at-a-time`: at most one rotation is in flight; it ends only through a history entry.
//! - `I7 standby-never-signs`: the standby key signs only once a rotation activated it; no pod holds its private half before.
//! - `I8 one-standby`: at most one standby, the Secret's `next` key.
//!
//! # Driving it from the reconciler
//!
//! 1. Call [`probe_plan`] with the persisted status to learn which pod probes
//!    this round needs (JWKS fetches during rollout phases, a probe mint on
//!    each pod while a key is being activated).
//! 2. Build [`Observed`]: the Secret's keyset (`None` when the Secret does not
//!    exist yet), the rollout as `keyset_rollout::RolloutState::for_rotation`
//!    judges it (the one definition of a complete rollout), and one
//!    [`PodView`] per ready pod of that template.
//! 3. Call [`decide`] with a fresh kid the reconciler proposes in case a key
//!    must be generated (it is used only when the machine reserves one).
//! 4. Execute [`Decision::actions`] in order, then write
//!    [`Decision::status`], then emit [`Decision::events`], then requeue after
//!    [`Decision::requeue_after`]. If an action fails, do not write the status:
//!    the next round sees the same status and redoes the step.
//!
//! That order is the crash-safety contract. A decision writes at most one
//! thing to the Secret and a status that describes the state *after* that
//! write, so a crash between the two leaves a status one step behind the
//! Secret; the machine recognises a keyset that already matches the step it
//! was about to take and adopts it instead of repeating it.
//!
//! # Keys are generated in two rounds
//!
//! `I3 keys-durable` says a key is durably in the Secret before anything refers to
//! it. Starting a rotation therefore only *reserves* a kid
//! (`status.rotation.pendingKid`, a name and nothing else) and writes no key.
//! The next round asks for [`Action::GenerateNextKey`] with that kid, which
//! the reconciler writes to `next.jwk.json`. The round after, seeing the
//! reserved kid in the Secret, names it in `newKid` and moves on. A crash
//! after the key was written and before the status was can therefore never
//! produce a second key: the reserved kid identifies the orphan exactly, even
//! for an emergency rotation, which must never adopt a key it did not ask for
//! (a pending routine key may have leaked with the active one).
//!
//! # Phases
//!
//! Each phase has one desired keyset ([`KeysetPlan`]); entering a phase
//! applies it, and the rollout phases wait until every pod serves exactly it.
//!
//! | phase | active | published | next | previous | leaves when |
//! |---|---|---|---|---|---|
//! | KeyGenerated | K | - | K' | - | K' is in the Secret |
//! | Publishing | K | K' | K' | - | rollout done, every pod serves {K, K'} |
//! | Propagating | K | K' | K' | - | the cache TTL in effect + [`PROPAGATION_SLACK_SECONDS`] after that, and every recent verifier fetched K' ([`evidence`]), or the ceiling |
//! | Activating | K' | K | - | K | rollout done, every pod serves {K', K} and mints with K' |
//! | Draining | K' | K | - | K | K's [`ledger`] + 60 s (at least `drainSeconds`) after that |
//! | Retiring | K' | - | - | K | rollout done, every pod serves {K'} only; then `previous` is deleted |
//!
//! `prepublish: false` goes from KeyGenerated straight to Activating.
//! Waits are timestamps (`status.rotation.waitUntil`): the end of a
//! Propagating or Draining wait, or the deadline of a rollout phase
//! (`rolloutTimeoutSeconds` after it began), so a restarted operator resumes
//! exactly.
//!
//! # Failure and rollback
//!
//! A rollout phase fails when its deadline passes before the rollout is
//! complete and verified, or at once when a pod of the new template serves a
//! JWKS different from the plan or mints with another kid. Probe errors and an
//! empty pod list are inconclusive and retried until the deadline. A failure
//! sets `Degraded`, emits a Warning event and rolls back:
//!
//! - Publishing: back to {active K}; K' is discarded (it never signed).
//! - Activating: back to {active K, published K', previous K'}; K' may have
//!   signed on the pods that did come up, so it drains and is retired like an
//!   old key.
//! - Retiring: back to the Draining keyset, then Retiring is retried after a
//!   backoff (the new key is already the signing key, so nothing is undone).
//!
//! The outcome is `RolledBack` for the first two. A rollback whose own rollout
//! stalls stays Degraded and retries with backoff; it never rolls back further.
//! The previously active key K stays in the Secret (active or `previous`)
//! throughout a routine rotation.
//!
//! # Emergency
//!
//! A new `macp.io/emergency-rotate` value preempts anything in flight (which
//! is recorded in history as `Superseded`). Every kid in the Secret at that
//! moment, including a pending or published K', is added to
//! `status.suspectKids`. A fresh kid is reserved and generated as above, then
//! one Secret write makes it the active key with nothing published, next or
//! previous. The emergency completes when every pod serves only the fresh key
//! and mints with it; until then a stalled rollout keeps `Degraded` set and is
//! retried with backoff, never rolled back to a suspect key. No plan ever
//! names a suspect kid as active or published again.
//!
//! ## What happens to the suspect key material
//!
//! It is kept nowhere: the write that installs the fresh active key drops the
//! suspect private keys from every slot of the Secret. A suspect key has no
//! remaining use: it must not sign, must not be published and must not be
//! rolled back to, and every copy left behind is one more place it can leak
//! from. Forensics needs the kid (in every token header, recorded in
//! `suspectKids` and history), not the key: a token forged with the leaked key
//! verifies exactly like a genuine one, so keeping even the public key would
//! not tell them apart. This is the one write that removes the active key, and
//! it installs its replacement in the same write, so the Secret never lacks a
//! signing key.
//!
//! # The standby key
//!
//! With `spec.rotation.standby` (the default), an Idle MacpAuth with no
//! standby prepares one: a "rotation" with trigger `standby` that reserves,
//! generates, publishes and propagates a key exactly as KeyGenerated,
//! Publishing and Propagating do, and then parks (back to Idle with
//! `status.standby`, no history entry, `Rotating` false). The standby sits in
//! `next.jwk.json` and in the JWKS; its private half reaches no pod. A
//! routine trigger, or an emergency whose `macp.io/emergency-scope` is not
//! `secret`, reserves it as the new key (`fromStandby`), and the next round
//! activates it without publishing. A routine trigger during the preparation
//! takes the preparation over. A Secret-scope (or unknown-scope) emergency
//! makes the standby a suspect like every other key. A standby that no longer
//! fits (the Secret changed, the spec asks for another kind) is discarded.
//!
//! # Triggers
//!
//! In priority order: a new `macp.io/emergency-rotate` value (always, even when
//! paused); then, when Idle and not paused, a new `macp.io/rotate` value
//! (trigger `manual`, each value acts once and is recorded in
//! `handledRotateRequest`), a spec whose `signingAlg`/`rsaKeyBits` differ from
//! the active key (trigger `manual`, request id `spec:<kind>`), and the
//! schedule (`spec.rotation.interval`, trigger `scheduled`, due at
//! `nextRotationTime`). After a routine rotation rolled back, the automatic
//! triggers (schedule, kind change) wait [`RETRY_AFTER_ROLLBACK`] so a broken
//! cluster is not rotated in a loop; a new `macp.io/rotate` value acts at once.
//! A routine request arriving during a rotation, or while paused, is reported
//! once with an event and acted on afterwards.
//!
//! # Conditions
//!
//! `Rotating` is maintained entirely here. `Degraded` is set by rotation
//! failures with the reasons in [`DEGRADED_REASONS`] and cleared by a
//! successful rotation; a `Degraded` condition with any other reason belongs
//! to the reconciler and is left alone.

pub mod evidence;
pub mod ledger;
mod machine;
pub mod phase;
mod plan;
mod reasons;
mod schedule;
mod verify;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::crd::{MacpAuthSpec, MacpAuthStatus, SigningAlg};

pub(crate) use machine::{decide, probe_plan};
pub use phase::keyset as desired_plan;
pub use plan::KeysetPlan;
pub use reasons::{DEGRADED_REASONS, REASON_PROPAGATION_TIMEOUT, degraded_by_rotation};
pub(crate) use schedule::propagation_wait;
pub use schedule::{
    IntervalError, activation_lead, early_start, min_interval, parse_interval, schedule_base,
};
pub(crate) use verify::{Verdict, verify};

/// How often a rollout phase re-checks pods while it waits (the controller
/// also reconciles on every owned Deployment change).
pub const POLL: Duration = Duration::from_secs(2);
/// Added to `jwksCacheTtlSeconds` in `Propagating`: a verifier whose cache
/// expires at the very end of the wait still has to fetch the new JWKS (fetch
/// latency), and its first refresh may fail, e.g. on a pod that was just
/// killed; `macp-auth` then keeps its stale keys and retries on the next
/// verification, with a 5 s fetch timeout. Ten seconds cover one failed
/// refresh that times out plus the one after it. Not a spec field: it models
/// the verifier, not the cluster.
pub const PROPAGATION_SLACK_SECONDS: i64 = 10;
/// Upper bound of the retry backoff of a stalled emergency, rollback or retirement.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How long the schedule and a signing-kind change wait after a rolled-back rotation.
pub(crate) const RETRY_AFTER_ROLLBACK: Duration = Duration::from_secs(3600);
/// History entries kept in status.
pub(crate) const HISTORY_LIMIT: usize = 10;

/// One private key in the Secret, as far as rotation cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyView {
    pub kid: String,
    pub alg: SigningAlg,
    /// Modulus size of an RSA key; `None` for EC keys.
    pub rsa_bits: Option<u32>,
}

/// The kids in the signing-keys Secret, slot by slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeysetView {
    /// `active.jwk.json`.
    pub active: KeyView,
    /// Kids of `published.jwks.json` (verification-only, public keys), in order.
    pub published: Vec<String>,
    /// `next.jwk.json`.
    pub next: Option<KeyView>,
    /// `previous.jwk.json`.
    pub previous: Option<KeyView>,
}

impl KeysetView {
    /// Every kid in any slot, active first.
    pub fn kids(&self) -> Vec<String> {
        let mut kids = vec![self.active.kid.clone()];
        let more = self
            .published
            .iter()
            .cloned()
            .chain(self.next.iter().map(|k| k.kid.clone()))
            .chain(self.previous.iter().map(|k| k.kid.clone()));
        for kid in more {
            if !kids.contains(&kid) {
                kids.push(kid);
            }
        }
        kids
    }

    /// Whether the private key `kid` is in the Secret (active, next or previous).
    pub fn holds_private(&self, kid: &str) -> bool {
        self.active.kid == kid
            || self.next.as_ref().is_some_and(|k| k.kid == kid)
            || self.previous.as_ref().is_some_and(|k| k.kid == kid)
    }

    /// Whether `kid` is anywhere in the Secret, private or public.
    pub fn contains(&self, kid: &str) -> bool {
        self.holds_private(kid) || self.published.iter().any(|k| k == kid)
    }
}

/// Rollout state of the Deployment relative to the observed keyset, as
/// `keyset_rollout::RolloutState::for_rotation` judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// Every pod runs the observed keyset's template (`keyset_rollout`).
    Complete,
    /// Anything else, including a template not yet updated to this keyset.
    InProgress,
}

/// One ready pod of the current template, as probed this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    /// Kids of the pod's `/.well-known/jwks.json`, in order, or why the fetch failed.
    pub served_kids: Result<Vec<String>, String>,
    /// Kid in the header of a probe token minted on the pod, when [`ProbePlan::signing`]
    /// asked for one: `None` if not probed, `Some(Err)` if the mint failed.
    pub signing_kid: Option<Result<String, String>>,
}

/// What the reconciler saw this round.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// `None` while the Secret does not exist (the reconciler creates the first key).
    pub keyset: Option<KeysetView>,
    pub rollout: Rollout,
    pub pods: Vec<PodView>,
    /// Each probed pod's `GET /verifiers`, when [`ProbePlan::verifiers`] asked for it.
    pub verifiers: Vec<evidence::PodReport>,
}

/// Everything [`decide`] reads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Inputs<'a> {
    pub spec: &'a MacpAuthSpec,
    /// The persisted status (default when the resource has none yet).
    pub status: &'a MacpAuthStatus,
    pub annotations: &'a BTreeMap<String, String>,
    /// `metadata.generation`, copied into conditions.
    pub generation: Option<i64>,
    pub observed: &'a Observed,
    pub now: DateTime<Utc>,
    /// A fresh, unused kid; reserved only when a rotation starts.
    pub new_kid: &'a str,
    /// The highest max token TTL any pod can mint with now: the one rendered
    /// into the template this round, or a higher one still in a running
    /// pod's environment (a pod of an older template). The drain ledger.
    pub max_ttl_in_effect: i64,
    /// This MacpAuth's fixed place in `[0, 1)` ([`crate::spread::place`]):
    /// its scheduled rotations start that share of their early-start window
    /// before they fall due ([`early_start`]).
    pub schedule_place: f64,
}

/// What the reconciler must do to the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Generate a key of this kind with this kid and write it as
    /// `next.jwk.json`, replacing whatever is there; change nothing else.
    GenerateNextKey {
        kid: String,
        alg: SigningAlg,
        rsa_bits: Option<u32>,
    },
    /// Rewrite the Secret's slots from key material it already holds, by kid
    /// (see [`KeysetPlan::check`]); then roll the Deployment to the new keyset hash.
    ApplyKeyset(KeysetPlan),
}

/// A Kubernetes Event to emit on the `MacpAuth`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// The outcome of one round.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Decision {
    pub status: MacpAuthStatus,
    /// At most one action.
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
    /// Reconcile again after this long (zero: as soon as possible); `None`: only on change.
    pub requeue_after: Option<Duration>,
}

/// Which pod probes the next round needs, decided from the persisted status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProbePlan {
    /// Fetch each ready pod's JWKS.
    pub jwks: bool,
    /// Mint a probe token on each ready pod and report its kid.
    pub signing: bool,
    /// Ask each ready pod which verifiers fetched its JWKS (`GET /verifiers`).
    pub verifiers: bool,
}
