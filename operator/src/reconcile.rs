//! One reconciliation of a `MacpAuth`: observe, decide, write, report.
//!
//! Order of one round (each write is skipped when the live object already
//! matches, so an unchanged resource costs reads only):
//! 0. read the `MacpAuth` itself: the controller's copy comes from a watch
//!    cache that may be a write or two behind, and a decision taken from a
//!    stale status would repeat an action already done;
//! 1. validate the name and the spec; an invalid one is reported and nothing
//!    is touched (no key is generated for a name the objects cannot carry);
//! 2. read the signing-keys Secret: create the first key when it is absent
//!    (written, then read back and confirmed before anything refers to it),
//!    adopt a valid one, refuse (Degraded) an unusable one without writing it;
//! 3. write the Secret's metadata, and apply the Deployment for the keyset in
//!    the Secret, the Service and the verifier ConfigMap;
//! 4. observe the rollout and probe the ready pods of the current template;
//! 5. run the rotation state machine and execute its action (a Secret write,
//!    confirmed by reading it back, then the Deployment for the new keyset);
//! 6. patch the status if it changed, conditional on the resourceVersion read
//!    in step 0 (a 409 means someone wrote meanwhile: the round's status and
//!    events are dropped and the round runs again), then emit events.
//!
//! The Secret is never applied: server-side apply leaves keys that another
//! field manager owns (a Secret made with `kubectl create secret`), so a key
//! the plan drops could survive. It is created, then replaced whole with the
//! resourceVersion it was read at: what it holds is exactly what was decided.
//! The other objects are applied; keys, list items and defaults that others
//! own or the server adds are no drift ([`diff::matches_live`]).
//!
//! The emergency TTL clamp ([`ttl_clamp`]) is decided from the status: the
//! objects of step 3 use the persisted one, and when the rotation machine's
//! new status moves the clamp (an emergency starts), the Deployment is applied
//! again in step 5. Either way it is a pod-template change, never a keyset one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::conditions::{self, DEGRADED, READY};
use crate::config::Settings;
use crate::crd::{
    MacpAuth, MacpAuthSpec, MacpAuthStatus, RotationOutcome, RotationRecord, RotationTrigger,
};
use crate::diff;
use crate::keyset::{self, Keyset, KeysetError, LayoutError, PrivateKey};
use crate::metrics::{self, Metrics};
use crate::observe::{self, PodTarget, RolloutState};
use crate::probe::PodProber;
use crate::resources::{self, BuildError, MANAGER, Owner};
use crate::rotation::{self, Action, Event, Observed, PodView, Rollout};
use crate::spread::spread;
use crate::status;
use crate::ttl_clamp::{self, Clamp, TtlLimits};
use crate::validate;
use macp_auth_service::keys::KeyError;

pub use crate::keyset::{REASON_INVALID_SIGNING_KEY, REASON_MISSING_SIGNING_KEY};
pub const REASON_PROGRESS_DEADLINE: &str = "ProgressDeadlineExceeded";
/// `Degraded` reasons the reconciler owns (rotation owns [`rotation::DEGRADED_REASONS`]).
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

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed: `operation` (get, apply, ...) on the object `kind`/`name`.
    #[error("{operation} {kind} {name}: {source}")]
    Kube {
        operation: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("generating key {kid}: {source}")]
    KeyGeneration {
        kid: String,
        #[source]
        source: KeyError,
    },
    #[error("generating key {kid}: no key generation slot: {source}")]
    KeygenSlot {
        kid: String,
        #[source]
        source: tokio::sync::AcquireError,
    },
    #[error("generating key {kid}: the generating task did not finish: {source}")]
    KeygenTask {
        kid: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("the Secret read back after the write does not hold what was written: {0}")]
    NotConfirmed(String),
    #[error("laying out the keyset: {0}")]
    Layout(#[from] LayoutError),
    #[error("serialising: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Label for the errors metric.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "Kube",
            Error::Build(_) => "Build",
            Error::KeyGeneration { .. } | Error::KeygenSlot { .. } | Error::KeygenTask { .. } => {
                "KeyGeneration"
            }
            Error::NotConfirmed(_) => "NotConfirmed",
            Error::Layout(_) => "Layout",
            Error::Json(_) => "Json",
        }
    }

    /// [`Error::Kube`] for a failed `operation` on `kind` `name`.
    fn kube(operation: &'static str, kind: &'static str, name: &str, source: kube::Error) -> Self {
        Error::Kube {
            operation,
            kind,
            name: name.to_string(),
            source,
        }
    }
}

/// Says what a failed API request was for, so the error names the object:
/// `api.get_opt(&name).await.ctx("get", "Secret", &name)?`. Status codes a
/// caller handles (404, 409) are matched on the `kube::Error` before this.
trait KubeContext<T> {
    fn ctx(self, operation: &'static str, kind: &'static str, name: &str) -> Result<T, Error>;
}

impl<T> KubeContext<T> for Result<T, kube::Error> {
    fn ctx(self, operation: &'static str, kind: &'static str, name: &str) -> Result<T, Error> {
        self.map_err(|source| Error::kube(operation, kind, name, source))
    }
}

/// Shared state of the reconcilers.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub prober: Arc<dyn PodProber>,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Consecutive failures per object, for the retry backoff.
    failures: Mutex<HashMap<ObjectRef<MacpAuth>, u32>>,
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
        recorder: Recorder,
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
            failures: Mutex::default(),
        }
    }

    /// Lets the rounds still queued for a turn end at once (on shutdown), so
    /// that stopping does not wait for a storm's backlog to run.
    pub fn stop_rounds(&self) {
        self.rounds.close();
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<MacpAuth>, u32>> {
        // A poisoned map only holds backoff counters: keep using it.
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Entry point for the controller.
pub async fn reconcile(mauth: Arc<MacpAuth>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let Ok(_turn) = ctx.rounds.acquire().await else {
        // Shutting down: the next leader or start picks this object up.
        return Ok(Requeue::requeue(CONFLICT_REQUEUE));
    };
    // Timed from the turn: the metric is the round's own cost, not its wait.
    let started = Instant::now();
    // Boxed so that a round waiting for its turn holds a few bytes, not the
    // whole round's state (tens of KiB each, a storm queues a thousand).
    let result = Box::pin(reconcile_one(&mauth, &ctx)).await;
    ctx.metrics.reconciled(started.elapsed());
    match &result {
        Ok(_) => {
            ctx.failures().remove(&ObjectRef::from_obj(mauth.as_ref()));
        }
        Err(e) => ctx.metrics.failed(e.metric_reason()),
    }
    result
}

/// Retry with exponential backoff per object: 1 s, 2 s, 4 s ... at most 5 minutes.
pub fn error_policy(mauth: Arc<MacpAuth>, error: &Error, ctx: Arc<Context>) -> Requeue {
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

/// The typed APIs of one namespace.
struct Apis {
    mauths: Api<MacpAuth>,
    secrets: Api<Secret>,
    deployments: Api<Deployment>,
    services: Api<Service>,
    config_maps: Api<ConfigMap>,
    pods: Api<Pod>,
    autoscalers: Api<HorizontalPodAutoscaler>,
    budgets: Api<PodDisruptionBudget>,
}

impl Apis {
    fn new(client: &Client, ns: &str) -> Self {
        Self {
            mauths: Api::namespaced(client.clone(), ns),
            secrets: Api::namespaced(client.clone(), ns),
            deployments: Api::namespaced(client.clone(), ns),
            services: Api::namespaced(client.clone(), ns),
            config_maps: Api::namespaced(client.clone(), ns),
            pods: Api::namespaced(client.clone(), ns),
            autoscalers: Api::namespaced(client.clone(), ns),
            budgets: Api::namespaced(client.clone(), ns),
        }
    }
}

/// Applies `desired` with server-side apply unless `live` already matches it.
async fn apply<K>(
    api: &Api<K>,
    live: Option<&K>,
    desired: &K,
    metrics: &Metrics,
) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + k8s_openapi::Resource + Clone + Serialize + DeserializeOwned,
    K: std::fmt::Debug,
{
    let desired = diff::with_applied_hash(serde_json::to_value(desired)?);
    if let Some(live) = live
        && diff::matches_live(&desired, &serde_json::to_value(live)?, MANAGER)
    {
        return Ok(live.clone());
    }
    let name = desired
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    debug!(kind = K::KIND, %name, "applying");
    metrics.wrote(&K::plural(&()));
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .ctx("apply", K::KIND, &name)
}

/// Makes `desired` the live object, or, when `desired` is `None`, deletes
/// the live one if this `MacpAuth` owns it (a user's object of the same name
/// is left alone). Each write only when something differs.
///
/// `spec_changed`: whether the spec may have changed since a round applied
/// the objects. When it did not and nothing is desired, that round already
/// removed the object, so not even a read is spent on it (most MacpAuths have
/// no autoscaler: this keeps their steady state at the reads it had).
async fn apply_or_remove<K>(
    api: &Api<K>,
    name: &str,
    desired: Option<&K>,
    owner_uid: &str,
    spec_changed: bool,
    metrics: &Metrics,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + k8s_openapi::Resource + Clone + Serialize + DeserializeOwned,
    K: std::fmt::Debug,
{
    if desired.is_none() && !spec_changed {
        return Ok(());
    }
    let live = api.get_opt(name).await.ctx("get", K::KIND, name)?;
    match (desired, live) {
        (Some(desired), live) => {
            apply(api, live.as_ref(), desired, metrics).await?;
        }
        (None, Some(live))
            if live
                .owner_references()
                .iter()
                .any(|o| o.uid == owner_uid && o.controller == Some(true)) =>
        {
            debug!(kind = K::KIND, %name, "deleting, no longer wanted by the spec");
            metrics.wrote(&K::plural(&()));
            // Only the object we looked at: a replacement made meanwhile stays.
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: live.uid(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::kube("delete", K::KIND, name, e)),
            }
        }
        (None, _) => {}
    }
    Ok(())
}

/// Hands `spec.replicas` of a live Deployment over before the first apply
/// that leaves it out (autoscaling was just turned on).
///
/// Server-side apply removes a field its only owner stops applying: the
/// Deployment would fall back to 1 replica, terminating signers until the
/// autoscaler scales up again. A second field manager first claims the
/// current value (the handover Kubernetes documents for autoscalers); the
/// autoscaler's own writes then take it over.
async fn hand_over_replicas(
    api: &Api<Deployment>,
    live: Option<&Deployment>,
    metrics: &Metrics,
) -> Result<bool, Error> {
    let Some(live) = live else { return Ok(false) };
    let value = serde_json::to_value(live)?;
    if !diff::applies_field(&value, MANAGER, &["spec", "replicas"]) {
        return Ok(false);
    }
    let Some(replicas) = live.spec.as_ref().and_then(|s| s.replicas) else {
        return Ok(false);
    };
    let name = live.name_any();
    let patch = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    info!(%name, replicas, "autoscaling on: handing spec.replicas over");
    metrics.wrote("deployments");
    api.patch(
        &name,
        &PatchParams::apply(REPLICAS_HANDOVER_MANAGER),
        &Patch::Apply(&patch),
    )
    .await
    .ctx("hand over spec.replicas of", "Deployment", &name)?;
    Ok(true)
}

/// The field manager that holds `spec.replicas` between the operator's last
/// write of it and the autoscaler's first (see [`hand_over_replicas`]).
pub const REPLICAS_HANDOVER_MANAGER: &str = "macp-auth-operator-replicas-handover";

/// The working state of one round.
struct Round<'a> {
    mauth: &'a MacpAuth,
    ctx: &'a Context,
    owner: Owner,
    apis: Apis,
    now: DateTime<Utc>,
    generation: Option<i64>,
    status: MacpAuthStatus,
    /// Events to emit after the status write.
    events: Vec<Event>,
}

async fn reconcile_one(cached: &MacpAuth, ctx: &Context) -> Result<Requeue, Error> {
    // The cached copy may be behind the API server: decide from the current one.
    let mauths: Api<MacpAuth> =
        Api::namespaced(ctx.client.clone(), &cached.namespace().unwrap_or_default());
    let name = cached.name_any();
    let Some(mauth) = mauths.get_opt(&name).await.ctx("get", "MacpAuth", &name)? else {
        return Ok(Requeue::await_change());
    };
    if mauth.resource_version() != cached.resource_version() {
        debug!(name = %mauth.name_any(), cached = ?cached.resource_version(),
               current = ?mauth.resource_version(), "the cache is behind; using the current object");
    }
    let mauth = &mauth;
    if mauth.meta().deletion_timestamp.is_some() {
        ctx.metrics
            .forget(&mauth.namespace().unwrap_or_default(), &mauth.name_any());
        // Owner references let the garbage collector remove what we created.
        return Ok(Requeue::await_change());
    }
    let owner = Owner::of(mauth)?;
    let apis = Apis::new(&ctx.client, &owner.namespace);
    let mut round = Round {
        mauth,
        ctx,
        owner,
        apis,
        now: Utc::now(),
        generation: mauth.meta().generation,
        status: mauth.status.clone().unwrap_or_default(),
        events: Vec::new(),
    };
    // A failed round writes no status (the next round redoes the step); one
    // that stopped early because something is Degraded does.
    let requeue = round.run().await?;
    if !round.finish().await? {
        return Ok(Requeue::requeue(CONFLICT_REQUEUE));
    }
    ctx.metrics.observe_rotation(
        &round.owner.namespace,
        &round.owner.name,
        &mauth.spec.rotation,
        &round.status,
        round.now,
    );
    Ok(requeue)
}

impl Round<'_> {
    fn spec(&self) -> &MacpAuthSpec {
        &self.mauth.spec
    }

    fn note(&mut self, warning: bool, reason: &str, message: String) {
        self.events.push(Event {
            warning,
            reason: reason.to_string(),
            message,
        });
    }

    fn set(&mut self, type_: &str, value: bool, reason: &str, message: &str) {
        conditions::set(
            &mut self.status.conditions,
            type_,
            value,
            reason,
            message,
            self.now,
            self.generation,
        );
    }

    /// Sets `Degraded` with one of our reasons; a Warning event only when it is news.
    fn degrade(&mut self, reason: &str, message: &str) {
        let same = conditions::get(&self.status.conditions, DEGRADED).is_some_and(|c| {
            c.status == conditions::TRUE && c.reason == reason && c.message == message
        });
        if !same {
            warn!(name = %self.owner.name, namespace = %self.owner.namespace, reason, message, "degraded");
            self.note(true, reason, message.to_string());
        }
        self.set(DEGRADED, true, reason, message);
    }

    /// Clears `Degraded` if we set it; rotation's reasons are rotation's to clear.
    fn undegrade(&mut self) {
        let held = conditions::is_true(&self.status.conditions, DEGRADED, None);
        let held_by_others =
            held && !conditions::degraded_by(&self.status.conditions, OWN_DEGRADED_REASONS);
        if !held_by_others {
            let was = held;
            self.set(DEGRADED, false, "AsExpected", "");
            if was {
                self.note(
                    false,
                    "Recovered",
                    "the problem reported as Degraded is resolved".into(),
                );
            }
        }
    }

    async fn run(&mut self) -> Result<Requeue, Error> {
        self.status.observed_generation = self.generation;

        let name_errors = validate::validate_name(&self.owner.name);
        if !name_errors.is_empty() {
            let message = name_errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            self.degrade(validate::REASON_INVALID_NAME, &message);
            self.set(
                READY,
                false,
                validate::REASON_INVALID_NAME,
                "the owned objects cannot be named after this MacpAuth; nothing was created",
            );
            return Ok(Requeue::await_change());
        }

        let errors = validate::validate(self.spec());
        if !errors.is_empty() {
            let message = validate::message(&errors);
            self.degrade(validate::REASON_INVALID_SPEC, &message);
            self.set(
                READY,
                false,
                validate::REASON_INVALID_SPEC,
                "the spec cannot be applied; nothing was changed",
            );
            return Ok(Requeue::await_change());
        }

        let secret_name = self.owner.secret_name();
        let live_secret =
            self.apis
                .secrets
                .get_opt(&secret_name)
                .await
                .ctx("get", "Secret", &secret_name)?;
        let (keyset, live_secret) = match live_secret {
            None => {
                let (ks, secret) = self.create_first_key().await?;
                (ks, Some(secret))
            }
            Some(secret) => {
                match Keyset::from_secret_data(&secret.data.clone().unwrap_or_default()) {
                    Ok(ks) => {
                        if self.status.active_kid.is_none() {
                            self.note(
                                false,
                                "KeyAdopted",
                                format!(
                                    "adopted existing signing key {} from Secret {}",
                                    ks.active.kid,
                                    self.owner.secret_name()
                                ),
                            );
                        }
                        (ks, Some(secret))
                    }
                    Err(e) => return Ok(self.refuse_keyset(&e)),
                }
            }
        };

        // Metadata (owner reference, labels) and a published.jwks.json for adopted Secrets.
        let mut live_secret = Some(self.write_secret(&keyset, live_secret.as_ref()).await?);
        let clamp_before = ttl_clamp::clamp_at(self.spec(), &self.status, self.now);
        let deployment = self
            .apply_children(&keyset, self.ttl(clamp_before.as_ref()))
            .await?;

        // Observe.
        let hash = keyset.hash();
        let selector = resources::pod_selector(&self.owner.name);
        let pods = self
            .apis
            .pods
            .list(&ListParams::default().labels(&selector))
            .await
            .ctx("list", "Pod", &selector)?
            .items;
        let rollout = observe::rollout_state(Some(&deployment), &pods, &hash);
        let targets = observe::current_pods(&pods, &hash);
        let plan = rotation::probe_plan(&self.status);
        let views = self.probe(&targets, plan.signing).await;

        // Decide.
        let observed = Observed {
            keyset: Some(keyset.view()),
            rollout: if rollout == RolloutState::Complete {
                Rollout::Complete
            } else {
                Rollout::InProgress
            },
            pods: views.clone(),
        };
        self.ctx.metrics.verify_failed(
            &self.owner.namespace,
            &self.owner.name,
            metrics::failed_verifications(&self.status, &observed),
        );
        let new_kid = keyset::new_kid(&self.owner.name, self.now, rand::random());
        let annotations = self.mauth.annotations().clone();
        let decision = rotation::decide(&rotation::Inputs {
            spec: self.spec(),
            status: &self.status,
            annotations: &annotations,
            generation: self.generation,
            observed: &observed,
            now: self.now,
            new_kid: &new_kid,
        });

        // Act: at most one Secret write, confirmed, then the Deployment follows.
        let mut current = keyset;
        for action in &decision.actions {
            let (next, secret) = self.execute(action, &current, live_secret.as_ref()).await?;
            live_secret = Some(secret);
            current = next;
        }
        let keyset_changed = current.hash() != hash;
        let clamp_after = ttl_clamp::clamp_at(self.spec(), &decision.status, self.now);
        let ttl_changed = self.ttl(clamp_after.as_ref()) != self.ttl(clamp_before.as_ref());
        if keyset_changed || ttl_changed {
            self.apply_children(&current, self.ttl(clamp_after.as_ref()))
                .await?;
        }

        self.status = decision.status;
        self.status.observed_generation = self.generation;
        self.status.active_kid = Some(current.active.kid.clone());
        self.status.published_kids = current.published_kids();
        self.events.extend(decision.events);
        self.record_clamp(clamp_after);

        let ready_requeue = if keyset_changed || ttl_changed {
            let what = if keyset_changed {
                "a new keyset"
            } else {
                "new token TTLs"
            };
            self.undegrade();
            self.set(
                READY,
                false,
                "RollingOut",
                &format!("rolling the pods onto {what}"),
            );
            Some(NOT_READY_REQUEUE)
        } else {
            self.assess_ready(&rollout, &current, &views)
        };

        // The clamp's end is a deadline nobody else watches: requeue for it.
        let requeue = [
            decision.requeue_after,
            ready_requeue,
            ttl_clamp::requeue_after(clamp_after.as_ref(), self.now),
            // Spread per object, so objects created together do not all
            // resync in the same second.
            Some(spread(
                self.ctx.settings.resync_interval,
                &format!("{}/{}", self.owner.namespace, self.owner.name),
            )),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.ctx.settings.resync_interval);
        Ok(Requeue::requeue(requeue))
    }

    /// The TTLs to render with `clamp`.
    fn ttl(&self, clamp: Option<&Clamp>) -> TtlLimits {
        ttl_clamp::limits(self.spec(), clamp)
    }

    /// Records the clamp in status and announces when it starts and when it is lifted.
    fn record_clamp(&mut self, clamp: Option<Clamp>) {
        let was = self
            .mauth
            .status
            .as_ref()
            .and_then(|s| s.emergency_ttl_clamp.clone());
        let normal = self.ttl(None);
        match (&was, clamp) {
            (None, Some(c)) => {
                let ttl = self.ttl(Some(&c));
                let request = self
                    .status
                    .rotation
                    .as_ref()
                    .and_then(|r| r.request_id.clone())
                    .unwrap_or_else(|| "?".into());
                info!(name = %self.owner.name, namespace = %self.owner.namespace, max_ttl = ttl.max_ttl_seconds, %request, "emergency TTL clamp on");
                self.note(
                    false,
                    "EmergencyTtlClamp",
                    format!(
                        "emergency rotation {request}: max token TTL lowered from {}s to {}s (default {}s) until drainSeconds after the rotation",
                        normal.max_ttl_seconds, ttl.max_ttl_seconds, ttl.default_ttl_seconds
                    ),
                );
            }
            (Some(_), None) => {
                info!(name = %self.owner.name, namespace = %self.owner.namespace, max_ttl = normal.max_ttl_seconds, "emergency TTL clamp lifted");
                self.note(
                    false,
                    "EmergencyTtlRestored",
                    format!(
                        "max token TTL restored to {}s (default {}s)",
                        normal.max_ttl_seconds, normal.default_ttl_seconds
                    ),
                );
            }
            _ => {}
        }
        self.status.emergency_ttl_clamp = clamp.map(Clamp::to_status);
    }

    /// The Secret exists but holds no usable active key: report it and touch nothing.
    fn refuse_keyset(&mut self, e: &KeysetError) -> Requeue {
        let message = format!(
            "Secret {}: {e}; the operator does not overwrite it",
            self.owner.secret_name()
        );
        self.degrade(e.reason(), &message);
        self.set(READY, false, e.reason(), "the signing keys are unusable");
        Requeue::requeue(BROKEN_SECRET_REQUEUE)
    }

    async fn generate(
        &self,
        alg: crate::crd::SigningAlg,
        kid: String,
        bits: u32,
    ) -> Result<PrivateKey, Error> {
        let k = kid.clone();
        // Never closed, so acquiring only waits for a free slot.
        let _slot = self
            .ctx
            .keygens
            .acquire()
            .await
            .map_err(|source| Error::KeygenSlot {
                kid: kid.clone(),
                source,
            })?;
        tokio::task::spawn_blocking(move || PrivateKey::generate(alg, &k, bits))
            .await
            .map_err(|source| Error::KeygenTask {
                kid: kid.clone(),
                source,
            })?
            .map_err(|source| Error::KeyGeneration { kid, source })
    }

    /// Makes the Secret hold exactly `keys`, with our labels and owner
    /// reference: created when absent, else replaced with the resourceVersion
    /// it was read at (409 if anyone wrote since), unless it already is so.
    async fn write_secret(&self, keys: &Keyset, live: Option<&Secret>) -> Result<Secret, Error> {
        let desired = resources::secret(&self.owner, keys);
        let pp = PostParams {
            field_manager: Some(MANAGER.to_string()),
            ..PostParams::default()
        };
        let Some(live) = live else {
            debug!(name = %self.owner.secret_name(), "creating the Secret");
            self.ctx.metrics.wrote("secrets");
            return self.apis.secrets.create(&pp, &desired).await.ctx(
                "create",
                "Secret",
                &self.owner.secret_name(),
            );
        };
        let Some(next) = resources::exact_secret(live, &desired) else {
            return Ok(live.clone());
        };
        debug!(name = %self.owner.secret_name(), rv = ?live.resource_version(), "replacing the Secret");
        self.ctx.metrics.wrote("secrets");
        let name = self.owner.secret_name();
        self.apis
            .secrets
            .replace(&name, &pp, &next)
            .await
            .ctx("replace", "Secret", &name)
    }

    /// Writes `keys` to the Secret and reads it back.
    async fn write_keyset(
        &self,
        keys: &Keyset,
        live: Option<&Secret>,
    ) -> Result<(Keyset, Secret), Error> {
        self.write_secret(keys, live).await?;
        let name = self.owner.secret_name();
        let back = self
            .apis
            .secrets
            .get(&name)
            .await
            .ctx("read back", "Secret", &name)?;
        let parsed = Keyset::from_secret_data(&back.data.clone().unwrap_or_default())
            .map_err(|e| Error::NotConfirmed(e.to_string()))?;
        Ok((parsed, back))
    }

    async fn create_first_key(&mut self) -> Result<(Keyset, Secret), Error> {
        let spec = self.spec().clone();
        let kid = keyset::new_kid(&self.owner.name, self.now, rand::random());
        let key = self
            .generate(spec.signing_alg, kid.clone(), spec.rsa_key_bits)
            .await?;
        let (back, secret) = self.write_keyset(&Keyset::initial(key), None).await?;
        if back.active.kid != kid {
            return Err(Error::NotConfirmed(format!(
                "expected active kid {kid}, found {}",
                back.active.kid
            )));
        }
        let kind = match spec.signing_alg {
            crate::crd::SigningAlg::RS256 => format!("RS256 ({} bits)", spec.rsa_key_bits),
            crate::crd::SigningAlg::ES256 => "ES256".to_string(),
        };
        info!(name = %self.owner.name, namespace = %self.owner.namespace, %kid, "created first signing key");
        self.note(
            false,
            "KeyCreated",
            format!("generated {kind} signing key {kid}"),
        );
        self.status.history.push(RotationRecord {
            trigger: RotationTrigger::Initial,
            request_id: None,
            old_kid: None,
            new_kid: Some(kid),
            started_at: self.now,
            finished_at: self.now,
            outcome: RotationOutcome::Succeeded,
            message: Some(format!("first {kind} key")),
        });
        let excess = self
            .status
            .history
            .len()
            .saturating_sub(rotation::HISTORY_LIMIT);
        self.status.history.drain(..excess);
        Ok((back, secret))
    }

    /// Executes one rotation action; returns the keyset now in the Secret.
    async fn execute(
        &mut self,
        action: &Action,
        current: &Keyset,
        live: Option<&Secret>,
    ) -> Result<(Keyset, Secret), Error> {
        match action {
            Action::GenerateNextKey { kid, alg, rsa_bits } => {
                let bits = rsa_bits.unwrap_or(self.spec().rsa_key_bits);
                let key = self.generate(*alg, kid.clone(), bits).await?;
                let (back, secret) = self.write_keyset(&current.with_next(key), live).await?;
                match &back.next {
                    Some(k) if k.kid == *kid => {}
                    other => {
                        return Err(Error::NotConfirmed(format!(
                            "expected next kid {kid}, found {:?}",
                            other.as_ref().map(|k| &k.kid)
                        )));
                    }
                }
                info!(name = %self.owner.name, %kid, "wrote next signing key");
                Ok((back, secret))
            }
            Action::ApplyKeyset(plan) => {
                let desired = current.apply_plan(plan)?;
                let (back, secret) = self.write_keyset(&desired, live).await?;
                if !plan.matches(&back.view()) {
                    return Err(Error::NotConfirmed(format!("expected keyset {plan:?}")));
                }
                info!(name = %self.owner.name, active = %plan.active, published = ?plan.published, "applied keyset");
                Ok((back, secret))
            }
        }
    }

    /// Applies the Deployment for `keys` and `ttl`, the Service and the ConfigMap; returns the live Deployment.
    async fn apply_children(&self, keys: &Keyset, ttl: TtlLimits) -> Result<Deployment, Error> {
        let spec = self.spec();
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.ctx.settings.service_image.clone());
        let m = &self.ctx.metrics;
        let name = &self.owner.name;
        let live = self
            .apis
            .deployments
            .get_opt(name)
            .await
            .ctx("get", "Deployment", name)?;
        let handed_over = spec.autoscaling.is_some()
            && hand_over_replicas(&self.apis.deployments, live.as_ref(), m).await?;
        let live = if handed_over {
            self.apis
                .deployments
                .get_opt(name)
                .await
                .ctx("get", "Deployment", name)?
        } else {
            live
        };
        let desired = resources::deployment(
            &self.owner,
            spec,
            &image,
            &keys.hash(),
            keys.active.alg,
            ttl,
        );
        let deployment = apply(&self.apis.deployments, live.as_ref(), &desired, m).await?;
        let live = self
            .apis
            .services
            .get_opt(name)
            .await
            .ctx("get", "Service", name)?;
        apply(
            &self.apis.services,
            live.as_ref(),
            &resources::service(&self.owner, spec),
            m,
        )
        .await?;
        let cm_name = self.owner.config_map_name();
        let live =
            self.apis
                .config_maps
                .get_opt(&cm_name)
                .await
                .ctx("get", "ConfigMap", &cm_name)?;
        let desired = resources::verifier_config_map(&self.owner, spec);
        apply(&self.apis.config_maps, live.as_ref(), &desired, m).await?;
        let uid = &self.owner.owner_ref.uid;
        // `Ready=True` of this generation is only set by a round that applied
        // these objects (a round that stopped early, on an invalid spec or an
        // unusable Secret, never sets it), so it proves a removal was done.
        let applied_this_generation = self
            .mauth
            .status
            .as_ref()
            .and_then(|s| conditions::get(&s.conditions, READY))
            .is_some_and(|c| {
                c.status == conditions::TRUE && c.observed_generation == self.generation
            });
        let spec_changed = !applied_this_generation;
        apply_or_remove(
            &self.apis.autoscalers,
            name,
            resources::horizontal_pod_autoscaler(&self.owner, spec).as_ref(),
            uid,
            spec_changed,
            m,
        )
        .await?;
        apply_or_remove(
            &self.apis.budgets,
            name,
            resources::pod_disruption_budget(&self.owner, spec).as_ref(),
            uid,
            spec_changed,
            m,
        )
        .await?;
        Ok(deployment)
    }

    async fn probe(&self, targets: &[PodTarget], signing: bool) -> Vec<PodView> {
        let port = u16::try_from(self.spec().port).unwrap_or_default();
        let mint_port = u16::try_from(self.spec().effective_mint_port()).unwrap_or_default();
        let prober = &self.ctx.prober;
        let probes = targets.iter().map(|t| async move {
            let served_kids = prober
                .served_kids(&t.ip, port)
                .await
                .map_err(|e| e.to_string());
            let signing_kid = if signing {
                Some(
                    prober
                        .signing_kid(&t.ip, port, mint_port)
                        .await
                        .map_err(|e| e.to_string()),
                )
            } else {
                None
            };
            PodView {
                name: t.name.clone(),
                served_kids,
                signing_kid,
            }
        });
        futures::future::join_all(probes).await
    }

    /// Sets `Ready` (and our rollout `Degraded`) from the observation; returns a requeue while not ready.
    fn assess_ready(
        &mut self,
        rollout: &RolloutState,
        keys: &Keyset,
        pods: &[PodView],
    ) -> Option<Duration> {
        let active = &keys.active.kid;
        let (ready, reason, message) = match rollout {
            RolloutState::DeadlineExceeded(msg) => {
                if !rotation::degraded_by_rotation(&self.status.conditions) {
                    self.degrade(REASON_PROGRESS_DEADLINE, msg);
                }
                (false, REASON_PROGRESS_DEADLINE.to_string(), msg.clone())
            }
            RolloutState::InProgress(msg) => (false, "RollingOut".into(), msg.clone()),
            RolloutState::Complete if pods.is_empty() => (
                false,
                "NoReadyPods".into(),
                "no ready pod of the current template to probe".into(),
            ),
            RolloutState::Complete => {
                let problems: Vec<String> = pods
                    .iter()
                    .filter_map(|p| match &p.served_kids {
                        Ok(kids) if kids.contains(active) => None,
                        Ok(kids) => Some(format!("pod {} serves [{}]", p.name, kids.join(", "))),
                        Err(e) => Some(format!("pod {}: {e}", p.name)),
                    })
                    .collect();
                if problems.is_empty() {
                    (
                        true,
                        "Verified".into(),
                        format!("{} pod(s) serve the active key {active}", pods.len()),
                    )
                } else {
                    (false, "ActiveKeyNotServed".into(), problems.join("; "))
                }
            }
        };
        if !matches!(rollout, RolloutState::DeadlineExceeded(_)) {
            self.undegrade();
        }
        self.set(READY, ready, &reason, &message);
        (!ready).then_some(NOT_READY_REQUEUE)
    }

    /// Patches the status when it changed, then emits the round's events.
    /// `Ok(false)`: the MacpAuth changed since this round read it (409), so
    /// neither the status nor the events are written; run the round again.
    async fn finish(&mut self) -> Result<bool, Error> {
        let old = self.mauth.status.clone().unwrap_or_default();
        let rv = self.mauth.resource_version();
        if let Some(patch) = status::status_patch(&old, &self.status, rv.as_deref())? {
            debug!(name = %self.owner.name, %patch, "patching status");
            self.ctx.metrics.wrote("macpauths/status");
            let pp = PatchParams {
                field_manager: Some(MANAGER.to_string()),
                ..PatchParams::default()
            };
            match self
                .apis
                .mauths
                .patch_status(&self.owner.name, &pp, &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    info!(name = %self.owner.name, namespace = %self.owner.namespace,
                          "the MacpAuth changed during the round; its status is decided again");
                    self.events.clear();
                    return Ok(false);
                }
                Err(e) => {
                    return Err(Error::kube(
                        "patch status of",
                        "MacpAuth",
                        &self.owner.name,
                        e,
                    ));
                }
            }
        }
        let reference = self.mauth.object_ref(&());
        for e in self.events.drain(..) {
            let event = KubeEvent {
                type_: if e.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                action: "Reconcile".into(),
                reason: e.reason,
                note: Some(truncate(&e.message, 1000)),
                secondary: None,
            };
            // An event that cannot be published is not a reason to redo the round.
            if let Err(e) = self.ctx.recorder.publish(&event, &reference).await {
                warn!(name = %self.owner.name, error = %e, reason = %event.reason, "publishing event failed");
            }
        }
        Ok(true)
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
