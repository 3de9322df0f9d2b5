//! One reconciliation of a `MacpAuth`: observe, decide, write, report.
//!
//! A round is a pipeline, one module per step (`reconcile_one` strings them
//! together in this order). Each write is skipped when the live object
//! already matches, so an unchanged resource costs reads only.
//!
//! 0. read the `MacpAuth` itself: the controller's copy comes from a watch
//!    cache that may be a write or two behind, and a decision taken from a
//!    stale status would repeat an action already done;
//! 1. `check`: validate the name and the spec; an invalid one is reported and
//!    nothing is touched (no key is generated for a name the objects cannot
//!    carry);
//! 2. `load`: read the signing-keys Secret: create the first key when it is
//!    absent (written, then read back and confirmed before anything refers to
//!    it), adopt a valid one, refuse (Degraded) an unusable one without
//!    writing it;
//! 3. `apply`: write the Secret's metadata, and apply the Deployment for the
//!    keyset in the Secret, the Service, the verifier ConfigMap, the
//!    autoscaler and the disruption budget;
//! 4. `observe`: observe the rollout and probe the ready pods of the current
//!    template;
//! 5. `decide`: run the rotation state machine ([`crate::rotation::decide`], pure);
//! 6. `execute`: execute its action (a Secret write, confirmed by reading it
//!    back), then apply the Deployment for the new keyset or TTL clamp;
//! 7. `assess`: the status from the decision, and `Ready` from the rollout
//!    and the probes ([`crate::readiness`], pure);
//! 8. `report`: patch the status if it changed, conditional on the
//!    resourceVersion read in step 0 (a 409 means someone wrote meanwhile:
//!    the round's status and events are dropped and the round runs again),
//!    then emit events.
//!
//! A step that fails fails the round, which then writes no status: the next
//! round sees the same status and redoes the step. A round that asks to go
//! on at once is followed, in the same turn, by a pass that starts from the
//! objects this one ended with instead of reading them again (`Carried`). A
//! round that stops early because something is Degraded (steps 1 and 2)
//! reports it.
//!
//! How the Secret is written (never applied) is in `secret`; the emergency TTL
//! clamp ([`crate::ttl_clamp`]) is rendered from the persisted status in step 3
//! and again in step 6 when the decision moves it.

mod applied_generations;
mod apply;
mod assess;
mod check;
mod decide;
mod error;
mod execute;
mod incident;
mod keygen;
mod load;
mod matched_versions;
mod observe;
mod parsed_keysets;
mod report;
mod round;
mod secret;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use parking_lot::{Mutex, MutexGuard};
use tracing::{debug, warn};

use crate::config::Settings;
use crate::crd::MacpAuth;
use crate::events::EventRecorders;
use crate::metrics::Metrics;
use crate::probe::PodProber;
use crate::resources;
use crate::validate;
use crate::watch_caches::WatchCaches;

pub use crate::keyset::{REASON_INVALID_SIGNING_KEY, REASON_MISSING_SIGNING_KEY};
pub use crate::readiness::REASON_PROGRESS_DEADLINE;
pub(crate) use error::Error;

use error::KubeContext;
use round::Round;

/// `Degraded` reasons the reconciler owns (rotation owns [`crate::rotation::DEGRADED_REASONS`]).
const OWN_DEGRADED_REASONS: &[&str] = &[
    validate::REASON_INVALID_SPEC,
    validate::REASON_INVALID_NAME,
    REASON_INVALID_SIGNING_KEY,
    REASON_MISSING_SIGNING_KEY,
    REASON_PROGRESS_DEADLINE,
];

/// How soon to look again while the service is not yet Ready (watches also trigger).
const NOT_READY_REQUEUE: Duration = Duration::from_secs(5);
/// How soon to look again at a Secret a human must fix (it may not be watched: no labels yet).
const BROKEN_SECRET_REQUEUE: Duration = Duration::from_secs(30);
/// How soon to run a round again whose status write lost a race.
pub const CONFLICT_REQUEUE: Duration = Duration::from_secs(1);

/// Shared state of the reconcilers.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub prober: Arc<dyn PodProber>,
    pub recorder: EventRecorders,
    pub metrics: Metrics,
    /// The watch caches of the owned Services and ConfigMaps (the
    /// controllers' own; empty, every read goes to the API server).
    pub watch_caches: WatchCaches,
    /// Consecutive failures per object, for the retry backoff.
    failures: Mutex<HashMap<ObjectRef<MacpAuth>, u32>>,
    /// The keyset last parsed from each Secret ([`parsed_keysets`]).
    keysets: parsed_keysets::ParsedKeysets,
    /// The versions of the applied objects found to match ([`matched_versions`]).
    matched_versions: matched_versions::MatchedVersions,
    /// The generations whose autoscaler and budget were applied ([`applied_generations`]).
    scaling_applied: applied_generations::AppliedGenerations,
    /// Key generations allowed at once (`--max-concurrent-keygens`): they
    /// run on blocking threads, and a storm of RSA-4096 keys must neither
    /// take every core nor hold the async workers other objects need.
    keygens: tokio::sync::Semaphore,
    /// Rounds allowed at once (`--max-concurrent-reconciles`). kube's runner
    /// is left unbounded and the bound is kept here, because a saturated
    /// runner picks its next object at random among all that are due (a
    /// hash set), so in a storm a rotation that fell due first could wait
    /// behind the follow-up rounds of others for a minute. This semaphore is
    /// fair: rounds run in the order they fell due.
    rounds: tokio::sync::Semaphore,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        prober: Arc<dyn PodProber>,
        recorder: EventRecorders,
        metrics: Metrics,
    ) -> Self {
        Self {
            client,
            keygens: tokio::sync::Semaphore::new(usize::from(
                settings.max_concurrent_keygens.max(1),
            )),
            rounds: tokio::sync::Semaphore::new(usize::from(
                settings.max_concurrent_reconciles.max(1),
            )),
            settings,
            prober,
            recorder,
            metrics,
            watch_caches: WatchCaches::default(),
            failures: Mutex::default(),
            keysets: parsed_keysets::ParsedKeysets::default(),
            matched_versions: matched_versions::MatchedVersions::default(),
            scaling_applied: applied_generations::AppliedGenerations::default(),
        }
    }

    /// The context reading the Services and ConfigMaps from `watch_caches`.
    pub(crate) fn with_watch_caches(self, watch_caches: WatchCaches) -> Self {
        Self {
            watch_caches,
            ..self
        }
    }

    /// Lets the rounds still queued for a turn end at once (on shutdown), so
    /// that stopping does not wait for a storm's backlog to run.
    pub(crate) fn stop_rounds(&self) {
        self.rounds.close();
    }

    fn failures(&self) -> MutexGuard<'_, HashMap<ObjectRef<MacpAuth>, u32>> {
        self.failures.lock()
    }
}

/// Entry point for the controller.
pub async fn reconcile(mauth: Arc<MacpAuth>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let Ok(_turn) = ctx.rounds.acquire().await else {
        // Shutting down: the next leader or start picks this object up.
        return Ok(Requeue::requeue(CONFLICT_REQUEUE));
    };
    let mut passes = 1;
    let mut carried = None;
    loop {
        // Inside kube's span, which names why the round runs (the watch event
        // or requeue that triggered it): `RUST_LOG=macp_auth_operator::rounds=debug`.
        debug!(target: "macp_auth_operator::rounds", pass = passes, carried = carried.is_some(), "round");
        // Timed from the turn: the metric is the round's own cost, not its wait.
        let started = Instant::now();
        // Boxed so that a round waiting for its turn holds a few bytes, not the
        // whole round's state (tens of KiB each, a storm queues a thousand).
        let result = Box::pin(reconcile_one(&mauth, &ctx, carried.take())).await;
        ctx.metrics.reconciled(started.elapsed());
        match result {
            // A step that asks to go on at once (a rotation started, its key
            // written, a rotation finished) goes on in this turn: sent to the
            // back of the queue instead, a rotation in a storm would wait for
            // a thousand rounds at each such step. The next pass starts from
            // what this one left ([`Carried`]).
            Ok(pass)
                if pass.requeue.is_some_and(|after| after.is_zero())
                    && passes < MAX_PASSES_PER_TURN =>
            {
                carried = pass.carried;
                passes += 1;
            }
            Ok(pass) => {
                ctx.failures().remove(&ObjectRef::from_obj(mauth.as_ref()));
                let debounce = ctx.settings.reconcile_debounce;
                return Ok(pass.requeue.map_or_else(Requeue::await_change, |after| {
                    Requeue::requeue(timer_request(after, debounce))
                }));
            }
            Err(e) => {
                ctx.metrics.failed(e.metric_reason());
                return Err(e);
            }
        }
    }
}

/// What to ask kube's scheduler for so that a round asked for `after` from
/// now runs then: the scheduler adds its debounce to every request, timers
/// included, which made each wait of a rotation (its due moment, the end of
/// propagation, the end of the drain) half a second late by default. Asked
/// for `after - debounce`, the round runs at `after` (or after the debounce,
/// if that is longer), never before the wait it was asked for ends.
fn timer_request(after: Duration, debounce: Duration) -> Duration {
    after.saturating_sub(debounce)
}

/// Rounds one turn may run back to back while each asks to go on at once.
/// A rotation needs at most three (start, write the key, publish it); the
/// bound keeps one object that always asks again (a kid collision) from
/// holding a turn.
const MAX_PASSES_PER_TURN: u32 = 4;

/// Retry with exponential backoff per object: 1 s, 2 s, 4 s ... at most 5 minutes.
pub(crate) fn error_policy(mauth: Arc<MacpAuth>, error: &Error, ctx: Arc<Context>) -> Requeue {
    let key = ObjectRef::from_obj(mauth.as_ref());
    let attempt = {
        let mut failures = ctx.failures();
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay =
        Duration::from_secs(1u64 << attempt.min(9).saturating_sub(1)).min(Duration::from_secs(300));
    warn!(name = %mauth.name_any(), namespace = ?mauth.namespace(), %error, attempt, ?delay, "reconcile failed");
    Requeue::requeue(delay)
}

/// What one round ends with: when to run again, and what the next pass of
/// the same turn may start from.
struct Pass {
    requeue: Option<Duration>,
    carried: Option<Carried>,
}

impl Pass {
    /// A round that stopped before its last step: the next pass, if any,
    /// reads everything.
    fn stopped(requeue: Option<Duration>) -> Self {
        Self {
            requeue,
            carried: None,
        }
    }
}

/// The objects a round ended with, each as the API server answered this
/// round's own last read or write of it: the `MacpAuth` (after the status
/// patch), the Secret (as read back) and the Deployment (as applied). A pass
/// that goes on in the same turn, milliseconds later, starts from these
/// instead of reading them again, which in a rotation's start turn (three
/// passes) saved two reads of each. Nothing stale enters a decision this way
/// that a fresh read could have caught: every write taken from the MacpAuth
/// and the Secret is conditional on their resourceVersion (the status patch
/// and the Secret's replace get a 409 if anyone wrote since, and the round
/// runs again from fresh reads), and the Deployment is written by
/// server-side apply, which sets the operator's own fields whatever the
/// version. The pods and their probes are carried only into a pass
/// whose decision reads no pod (they then only feed `Ready`); a rollout
/// phase's verification always lists and probes them. The passes that go on
/// in a turn are the Idle and KeyGenerated ones, whose decisions read no
/// rollout.
struct Carried {
    mauth: MacpAuth,
    secret: Secret,
    deployment: Deployment,
    /// The pods and their probes, only for a pass whose decision reads no
    /// pod ([`observe::SeenPods::carry`]).
    pods: Option<observe::SeenPods>,
}

/// One round, step by step as the module documentation lists them. The
/// requeue is `None` to wait for a change.
async fn reconcile_one(
    cached: &MacpAuth,
    ctx: &Context,
    carried: Option<Carried>,
) -> Result<Pass, Error> {
    // 0. Read the MacpAuth itself (unless the previous pass left it).
    let (mauth, secret, deployment, pods) = match carried {
        Some(c) => (c.mauth, Some(c.secret), Some(c.deployment), c.pods),
        None => match read_current(cached, ctx).await? {
            Some(mauth) => (mauth, None, None, None),
            None => return Ok(Pass::stopped(None)),
        },
    };
    let mut round = Round::new(&mauth, ctx)?;
    // 1. Validate the name and the spec.
    if let ControlFlow::Break(requeue) = round.validate() {
        return Ok(Pass::stopped(round.report(requeue).await?));
    }
    // 2. Load the keyset.
    let mut keys = match round.load_keyset(secret).await? {
        ControlFlow::Continue(keys) => keys,
        ControlFlow::Break(requeue) => return Ok(Pass::stopped(round.report(requeue).await?)),
    };
    // 3. Apply the owned objects.
    let applied = round.apply_owned(&mut keys, deployment).await?;
    // 4. Observe.
    let seen = round
        .observe(&keys.keyset, &applied.deployment, pods)
        .await?;
    // 5. Decide.
    let decision = round.decide(&seen, applied.ttl.max_ttl_seconds);
    // 6. Execute.
    let executed = round.execute(&decision, keys, applied).await?;
    // 7. Assess.
    let requeue = round.assess(decision, &executed, &seen);
    // 8. Report, then remove an emergency annotation the status now records.
    let requeue = round.report(requeue).await?;
    round.remove_handled_emergency_request().await?;
    let pods = observe::SeenPods::carry(seen, &round.status);
    let written = round.written.take();
    drop(round);
    Ok(Pass {
        requeue,
        carried: Some(Carried {
            mauth: written.unwrap_or(mauth),
            secret: executed.secret,
            deployment: executed.deployment,
            pods,
        }),
    })
}

/// Step 0: the `MacpAuth` as the API server has it now; `None` when it is
/// gone or being deleted.
async fn read_current(cached: &MacpAuth, ctx: &Context) -> Result<Option<MacpAuth>, Error> {
    // The cached copy may be behind the API server: decide from the current one.
    let mauths: Api<MacpAuth> =
        Api::namespaced(ctx.client.clone(), &cached.namespace().unwrap_or_default());
    let name = cached.name_any();
    let namespace = cached.namespace().unwrap_or_default();
    let Some(mauth) = mauths.get_opt(&name).await.ctx("get", "MacpAuth", &name)? else {
        ctx.keysets
            .forget(&namespace, &resources::secret_name(&name));
        if let Some(uid) = cached.uid() {
            ctx.matched_versions.forget_owner(&uid);
            ctx.scaling_applied.forget_owner(&uid);
        }
        return Ok(None);
    };
    if mauth.resource_version() != cached.resource_version() {
        debug!(name = %mauth.name_any(), cached = ?cached.resource_version(),
               current = ?mauth.resource_version(), "the cache is behind; using the current object");
    }
    if mauth.meta().deletion_timestamp.is_some() {
        ctx.metrics.forget(&namespace, &name);
        ctx.keysets
            .forget(&namespace, &resources::secret_name(&name));
        if let Some(uid) = mauth.uid() {
            ctx.matched_versions.forget_owner(&uid);
            ctx.scaling_applied.forget_owner(&uid);
        }
        // Owner references let the garbage collector remove what we created.
        return Ok(None);
    }
    Ok(Some(mauth))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_is_asked_for_a_debounce_early_and_never_runs_before_its_time() {
        let debounce = Duration::from_millis(500);
        for (after, asked) in [(5_000, 4_500), (500, 0), (200, 0), (0, 0)] {
            let asked_for = timer_request(Duration::from_millis(after), debounce);
            assert_eq!(asked_for, Duration::from_millis(asked), "after {after} ms");
            // The scheduler runs it at `asked_for + debounce`: not before `after`.
            assert!(asked_for + debounce >= Duration::from_millis(after));
        }
    }
}
