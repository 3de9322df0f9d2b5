//! Leader election on a `coordination.k8s.io/v1` Lease, so several operator
//! replicas can run with exactly one of them reconciling.
//!
//! Why not a crate: kube-lease-manager 0.13 (the one targeting kube 5) takes a free
//! lease with a server-side apply patch and relies on SSA field-ownership conflicts
//! for mutual exclusion, renews with unconditional strategic-merge patches, and
//! pulls a second `rand` major. This module uses client-go's scheme instead:
//! optimistic concurrency on `resourceVersion` (read, then create, or replace with
//! the version read; a 409 means someone else wrote first and nobody wins twice).
//! That is exclusive on any API server, including the in-process test server,
//! which does not model SSA conflicts, and it needs only `get`, `create` and
//! `update` on leases (exactly `rbac::required_rules(true)`).
//!
//! The next step (given the lease, my identity and the time: create, acquire,
//! renew or wait) is the pure [`next_step`]; the I/O is in [`Elector`] and [`run`].
//!
//! Expiry is judged as client-go does, on this instance's own monotonic clock:
//! a lease is expired when this instance has seen it unchanged for
//! `leaseDurationSeconds`, counted from when it last saw it change (a renewal
//! changes `renewTime`). The holder's `renewTime` is never compared with the
//! local wall clock, so clock skew between nodes cannot make a live lease look
//! expired (or an expired one live); the cost is that a fresh standby waits a
//! full lease duration before taking over an abandoned lease. The leader
//! itself times its deadline on the monotonic clock from the start of its last
//! successful renewal and gives up one renew interval before the lease could
//! expire, leaving that margin to stop its controllers. [`Clock`] is injected
//! so tests can run instances whose wall clocks disagree.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};
use tracing::{debug, error, info, warn};

use crate::config::{LeaderElection, Settings};
use crate::controller::{self, State};
use crate::probe::PodProber;
use crate::resources::MANAGER;

/// What [`next_step`] reads from a Lease's spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LeaseRecord {
    /// `None` when blank: a released lease.
    pub holder: Option<String>,
    /// `renewTime`, else `acquireTime`: when the holder last claimed it.
    pub renewed: Option<Timestamp>,
    pub duration_seconds: Option<i32>,
    pub transitions: i32,
}

impl LeaseRecord {
    fn from_spec(spec: Option<&LeaseSpec>) -> Self {
        let Some(spec) = spec else {
            return Self::default();
        };
        Self {
            holder: spec
                .holder_identity
                .as_deref()
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_string),
            renewed: spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0),
            duration_seconds: spec.lease_duration_seconds,
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }

    /// How long the holder's claim lasts after this instance saw it change. A
    /// missing or non-positive duration falls back to ours: waiting is the safe side.
    pub(crate) fn duration(&self, default_duration: Duration) -> Duration {
        match self.duration_seconds {
            Some(s) if s > 0 => Duration::from_secs(u64::from(s.unsigned_abs())),
            _ => default_duration,
        }
    }
}

/// What to do with the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LeaseStep {
    /// No Lease object exists: create it, held by me.
    Create,
    /// Free, released or expired: take it over.
    Acquire,
    /// Mine and (still) valid in my eyes: renew it.
    Renew,
    /// Someone else holds a live lease: it expires in `expires_in` unless it changes.
    Wait {
        holder: String,
        expires_in: Duration,
    },
}

/// What to do next with the lease. `None` means no Lease object exists;
/// `unchanged_for` is how long, on this instance's monotonic clock, it has seen
/// the lease exactly as it is now.
fn next_step(
    lease: Option<&LeaseRecord>,
    me: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> LeaseStep {
    let Some(lease) = lease else {
        return LeaseStep::Create;
    };
    let duration = lease.duration(default_duration);
    match &lease.holder {
        Some(holder) if holder == me => LeaseStep::Renew,
        Some(holder) if unchanged_for < duration => LeaseStep::Wait {
            holder: holder.clone(),
            expires_in: duration - unchanged_for,
        },
        _ => LeaseStep::Acquire,
    }
}

/// The lease as this instance last saw it change, and when (monotonic).
#[derive(Clone, Debug)]
struct LastChange {
    record: LeaseRecord,
    at: Instant,
}

/// The lease spec to write for `step` (`None` for [`LeaseStep::Wait`]).
fn next_spec(
    step: &LeaseStep,
    current: &LeaseSpec,
    me: &str,
    now: Timestamp,
    duration: Duration,
) -> Option<LeaseSpec> {
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    match step {
        LeaseStep::Wait { .. } => None,
        LeaseStep::Renew => Some(LeaseSpec {
            holder_identity: Some(me.to_string()),
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(seconds),
            ..current.clone()
        }),
        LeaseStep::Create | LeaseStep::Acquire => Some(LeaseSpec {
            holder_identity: Some(me.to_string()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(seconds),
            lease_transitions: Some(match step {
                LeaseStep::Create => 0,
                _ => current.lease_transitions.unwrap_or(0).saturating_add(1),
            }),
            ..current.clone()
        }),
    }
}

/// The spec of a lease its holder gives up on shutdown: no holder, so a standby
/// takes it on its next try instead of waiting out the duration. The 1 s duration
/// covers candidates that only look at the time (client-go does the same).
fn released_spec(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        renew_time: Some(MicroTime(now)),
        lease_duration_seconds: Some(1),
        ..current.clone()
    }
}

/// How long the leader may go without a successful renewal before it stops: one
/// renew interval short of the lease duration, the margin to stop its controllers
/// before a standby may act.
fn renew_deadline(cfg: &LeaderElection) -> Duration {
    cfg.lease_duration.saturating_sub(cfg.renew_interval)
}

/// Delay before the next lease attempt: a renew interval normally, a quarter of
/// one after a failure so several retries fit before [`renew_deadline`].
fn next_delay(cfg: &LeaderElection, failed: bool) -> Duration {
    if failed {
        (cfg.renew_interval / 4).max(Duration::from_millis(50))
    } else {
        cfg.renew_interval
    }
}

/// A failed lease request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaseError {
    #[error("lease {lease}: {source}")]
    Kube {
        lease: String,
        #[source]
        source: kube::Error,
    },
    #[error("lease {0} was written by someone else at the same time")]
    Conflict(String),
    #[error("lease {lease}: no answer within {after:?}")]
    Timeout { lease: String, after: Duration },
}

/// Why a leader stopped leading.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LostReason {
    #[error("{0} holds it now")]
    TakenBy(String),
    #[error(
        "no successful renewal for {since:?} (deadline {deadline:?}); last error: {last_error}"
    )]
    RenewalFailed {
        since: Duration,
        deadline: Duration,
        last_error: String,
    },
}

/// How [`run`] ended badly. The process should exit: restarted, it is a candidate again.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("lost the leader-election lease {lease}: {reason}; controllers stopped")]
    Lost { lease: String, reason: LostReason },
    #[error("the controllers stopped by themselves while leading; lease {lease} released")]
    ControllersExited { lease: String },
}

/// The outcome of one lease attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// I hold the lease (acquired or renewed).
    Leading,
    /// Someone else holds a live lease.
    Standby { holder: String },
}

/// The clocks of one instance: the wall clock for the times it writes into
/// the lease, a monotonic one for measuring how long things took. Injected so
/// tests can run instances whose wall clocks disagree.
pub trait Clock: Send + Sync {
    fn wall(&self) -> Timestamp;
    fn monotonic(&self) -> Instant;
}

/// The process's own clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn wall(&self) -> Timestamp {
        Timestamp::now()
    }

    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

/// Reads and writes one Lease.
pub(crate) struct Elector {
    api: Api<Lease>,
    cfg: LeaderElection,
    clock: Arc<dyn Clock>,
    last_change: parking_lot::Mutex<Option<LastChange>>,
}

impl Elector {
    fn with_clock(client: Client, cfg: LeaderElection, clock: Arc<dyn Clock>) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            clock,
            last_change: parking_lot::Mutex::new(None),
        }
    }

    /// Records the lease as seen at `now` and returns how long it has been
    /// seen unchanged (zero when it just changed, or was never seen).
    fn unchanged_for(&self, record: Option<&LeaseRecord>, now: Instant) -> Duration {
        let mut last_change = self.last_change.lock();
        match (record, last_change.as_ref()) {
            (None, _) => {
                *last_change = None;
                Duration::ZERO
            }
            (Some(r), Some(o)) if o.record == *r => now.saturating_duration_since(o.at),
            (Some(r), _) => {
                *last_change = Some(LastChange {
                    record: r.clone(),
                    at: now,
                });
                Duration::ZERO
            }
        }
    }

    fn lease_ref(&self) -> String {
        format!("{}/{}", self.cfg.namespace, self.cfg.lease_name)
    }

    fn kube_error(&self, source: kube::Error) -> LeaseError {
        match &source {
            kube::Error::Api(s) if s.code == 409 => LeaseError::Conflict(self.lease_ref()),
            _ => LeaseError::Kube {
                lease: self.lease_ref(),
                source,
            },
        }
    }

    fn params() -> PostParams {
        PostParams {
            field_manager: Some(MANAGER.to_string()),
            ..PostParams::default()
        }
    }

    /// One round: read the lease, choose the next step, write it. A lost race is
    /// [`LeaseError::Conflict`]; the next round reads the winner.
    pub(crate) async fn attempt(&self) -> Result<Attempt, LeaseError> {
        let lease = self
            .api
            .get_opt(&self.cfg.lease_name)
            .await
            .map_err(|e| self.kube_error(e))?;
        let record = lease
            .as_ref()
            .map(|l| LeaseRecord::from_spec(l.spec.as_ref()));
        let unchanged_for = self.unchanged_for(record.as_ref(), self.clock.monotonic());
        let now = self.clock.wall();
        let me = &self.cfg.identity;
        let step = next_step(record.as_ref(), me, unchanged_for, self.cfg.lease_duration);
        let current = lease
            .as_ref()
            .and_then(|l| l.spec.clone())
            .unwrap_or_default();
        let Some(spec) = next_spec(&step, &current, me, now, self.cfg.lease_duration) else {
            return match step {
                LeaseStep::Wait { holder, .. } => Ok(Attempt::Standby { holder }),
                // next_spec returns None for Wait only.
                _ => Err(LeaseError::Conflict(self.lease_ref())),
            };
        };
        match lease {
            None => {
                let new = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.lease_name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api
                    .create(&Self::params(), &new)
                    .await
                    .map_err(|e| self.kube_error(e))?;
            }
            Some(mut lease) => {
                // The read resourceVersion stays in the metadata: the replace is
                // conditional on nobody having written since.
                lease.spec = Some(spec);
                self.api
                    .replace(&self.cfg.lease_name, &Self::params(), &lease)
                    .await
                    .map_err(|e| self.kube_error(e))?;
            }
        }
        if step == LeaseStep::Acquire || step == LeaseStep::Create {
            let previous = record.and_then(|r| r.holder);
            info!(lease = %self.lease_ref(), identity = %me, previous = ?previous, "acquired the leader-election lease");
        } else {
            debug!(lease = %self.lease_ref(), identity = %me, "renewed the leader-election lease");
        }
        Ok(Attempt::Leading)
    }

    /// Gives the lease up if I hold it; `Ok(false)` when someone else holds it.
    pub(crate) async fn release(&self) -> Result<bool, LeaseError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.cfg.lease_name)
            .await
            .map_err(|e| self.kube_error(e))?
        else {
            return Ok(false);
        };
        let record = LeaseRecord::from_spec(lease.spec.as_ref());
        if record.holder.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(false);
        }
        let current = lease.spec.take().unwrap_or_default();
        lease.spec = Some(released_spec(&current, self.clock.wall()));
        self.api
            .replace(&lease.name_any(), &Self::params(), &lease)
            .await
            .map_err(|e| self.kube_error(e))?;
        info!(lease = %self.lease_ref(), identity = %self.cfg.identity, "released the leader-election lease");
        Ok(true)
    }

    /// [`attempt`](Self::attempt) bounded by `limit`: a hung API server must not
    /// stall a leader past its deadline.
    async fn attempt_within(&self, limit: Duration) -> Result<Attempt, LeaseError> {
        match timeout(limit, self.attempt()).await {
            Ok(r) => r,
            Err(_) => Err(LeaseError::Timeout {
                lease: self.lease_ref(),
                after: limit,
            }),
        }
    }

    async fn release_within(&self, limit: Duration) {
        match timeout(limit, self.release()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "releasing the leader-election lease failed; standbys wait for it to expire")
            }
            Err(_) => {
                warn!(after = ?limit, "releasing the leader-election lease timed out; standbys wait for it to expire")
            }
        }
    }

    /// Renews until a renewal shows another holder or [`renew_deadline`] passes
    /// without a successful one. Never returns while leading.
    async fn keep(&self, mut last_renewal: Instant) -> LostReason {
        let deadline = renew_deadline(&self.cfg);
        let mut last_error: Option<String> = None;
        loop {
            sleep(next_delay(&self.cfg, last_error.is_some())).await;
            let started = self.clock.monotonic();
            let left = deadline.saturating_sub(started.duration_since(last_renewal));
            match self
                .attempt_within(left.max(Duration::from_millis(1)))
                .await
            {
                Ok(Attempt::Leading) => {
                    last_renewal = started;
                    last_error = None;
                }
                Ok(Attempt::Standby { holder }) => return LostReason::TakenBy(holder),
                Err(e) => {
                    warn!(error = %e, "renewing the leader-election lease failed");
                    last_error = Some(e.to_string());
                }
            }
            let since = self.clock.monotonic().duration_since(last_renewal);
            if since >= deadline {
                return LostReason::RenewalFailed {
                    since,
                    deadline,
                    last_error: last_error.unwrap_or_else(|| "none".to_string()),
                };
            }
        }
    }
}

/// Runs the controllers ([`controller::run_with_state`]) only while holding the
/// lease described by `cfg`.
///
/// Waits as a standby (ready, `macp_operator_leader` 0) until the lease is free or
/// expired, then leads until `shutdown` resolves or the lease is lost. On shutdown
/// it stops the controllers (finishing in-flight reconciles, still renewing), then
/// releases the lease and returns `Ok`. On loss it drops the controllers at once
/// (another leader may already be acting) and returns [`ElectionError::Lost`]: the
/// caller should exit, to come back as a fresh candidate.
pub async fn run(
    client: Client,
    settings: Settings,
    prober: Arc<dyn PodProber>,
    state: State,
    cfg: LeaderElection,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ElectionError> {
    run_with_clock(
        client,
        settings,
        prober,
        state,
        cfg,
        Arc::new(SystemClock),
        shutdown,
    )
    .await
}

/// [`run`] on the given clocks.
pub async fn run_with_clock(
    client: Client,
    settings: Settings,
    prober: Arc<dyn PodProber>,
    state: State,
    cfg: LeaderElection,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ElectionError> {
    let elector = Elector::with_clock(client.clone(), cfg, clock);
    let lease = elector.lease_ref();
    let mut shutdown = Box::pin(shutdown);
    info!(lease = %lease, identity = %elector.cfg.identity, duration = ?elector.cfg.lease_duration,
          renew = ?elector.cfg.renew_interval, "leader election: waiting for the lease");
    state.set_standby(true);
    let acquired_at = stand_by(&elector, &mut shutdown).await;
    state.set_standby(false);
    let Some(acquired_at) = acquired_at else {
        return Ok(());
    };

    state.metrics.leader.set(1);
    info!(lease = %lease, identity = %elector.cfg.identity, "leading: starting the controllers");
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let stop = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    let controllers = controller::run_with_state(client, settings, prober, state.clone(), stop);
    let end = lead(&elector, acquired_at, controllers, &stop_tx, &mut shutdown).await;
    state.metrics.leader.set(0);
    match end {
        Led::Lost(reason) => {
            state.set_not_ready();
            error!(lease = %lease, identity = %elector.cfg.identity, reason = %reason,
                   "lost the leader-election lease: controllers stopped");
            Err(ElectionError::Lost { lease, reason })
        }
        Led::Shutdown => {
            elector.release_within(elector.cfg.lease_duration).await;
            Ok(())
        }
        Led::ControllersExited => {
            elector.release_within(elector.cfg.lease_duration).await;
            Err(ElectionError::ControllersExited { lease })
        }
    }
}

/// Tries for the lease until it is mine (returning when the winning attempt
/// started) or `shutdown` resolves (`None`).
async fn stand_by<S>(elector: &Elector, shutdown: &mut S) -> Option<Instant>
where
    S: Future<Output = ()> + Unpin,
{
    let cfg = &elector.cfg;
    let mut seen_holder: Option<String> = None;
    loop {
        let started = elector.clock.monotonic();
        let attempt = tokio::select! {
            () = &mut *shutdown => {
                // An attempt cut short may have taken the lease: give it back if so.
                elector.release_within(cfg.lease_duration).await;
                return None;
            }
            r = elector.attempt_within(cfg.lease_duration) => r,
        };
        let failed = match attempt {
            Ok(Attempt::Leading) => return Some(started),
            Ok(Attempt::Standby { holder }) => {
                if seen_holder.as_ref() != Some(&holder) {
                    info!(lease = %elector.lease_ref(), holder = %holder, "standby: another operator leads");
                    seen_holder = Some(holder);
                }
                false
            }
            Err(e) => {
                // Races and API hiccups are routine for a standby; retry soon.
                debug!(error = %e, "standby: lease attempt failed");
                true
            }
        };
        tokio::select! {
            () = &mut *shutdown => return None,
            () = sleep(next_delay(cfg, failed)) => {}
        }
    }
}

/// How a term as leader ended.
enum Led {
    Lost(LostReason),
    Shutdown,
    ControllersExited,
}

/// Runs `controllers` while renewing the lease. Both are polled in this task, not
/// spawned: aborting the caller's task (a crash, in tests) must take the
/// controllers with it, as a dying process would. Returns with the controllers
/// dropped: at once when the lease is lost (another leader may already act),
/// after they finished their in-flight reconciles on shutdown.
async fn lead<S>(
    elector: &Elector,
    acquired_at: Instant,
    controllers: impl Future<Output = ()>,
    stop: &watch::Sender<bool>,
    shutdown: &mut S,
) -> Led
where
    S: Future<Output = ()> + Unpin,
{
    let mut controllers = std::pin::pin!(controllers);
    let mut keeper = std::pin::pin!(elector.keep(acquired_at));
    tokio::select! {
        reason = &mut keeper => Led::Lost(reason),
        () = &mut controllers => Led::ControllersExited,
        () = &mut *shutdown => {
            info!(lease = %elector.lease_ref(), "shutdown: stopping the controllers before releasing the lease");
            let _ = stop.send(true);
            // Keep renewing while in-flight reconciles finish: they still write.
            tokio::select! {
                reason = &mut keeper => Led::Lost(reason),
                () = &mut controllers => Led::Shutdown,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECS: Duration = Duration::from_secs(15);

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn held(holder: &str, renewed: i64, duration: i32) -> LeaseRecord {
        LeaseRecord {
            holder: Some(holder.into()),
            renewed: Some(at(renewed)),
            duration_seconds: Some(duration),
            transitions: 3,
        }
    }

    fn cfg(lease: u64, renew_ms: u64) -> LeaderElection {
        LeaderElection {
            namespace: "ns".into(),
            lease_name: "l".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(lease),
            renew_interval: Duration::from_millis(renew_ms),
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn no_lease_object_is_created() {
        assert_eq!(next_step(None, "me", secs(0), SECS), LeaseStep::Create);
    }

    #[test]
    fn my_lease_is_renewed_even_when_expired() {
        // Same identity means the same pod: its previous process is gone.
        assert_eq!(
            next_step(Some(&held("me", 0, 10)), "me", secs(5), SECS),
            LeaseStep::Renew
        );
        assert_eq!(
            next_step(Some(&held("me", 0, 10)), "me", secs(50), SECS),
            LeaseStep::Renew
        );
    }

    #[test]
    fn a_live_lease_of_another_is_respected_until_seen_unchanged_for_its_duration() {
        // renewTime plays no part: only how long this instance has seen it unchanged.
        let lease = held("other", -1_000_000, 10);
        assert_eq!(
            next_step(Some(&lease), "me", secs(9), SECS),
            LeaseStep::Wait {
                holder: "other".into(),
                expires_in: secs(1)
            }
        );
        assert_eq!(
            next_step(Some(&lease), "me", secs(10), SECS),
            LeaseStep::Acquire
        );
        assert_eq!(
            next_step(Some(&lease), "me", secs(99), SECS),
            LeaseStep::Acquire
        );
    }

    #[test]
    fn released_or_blank_leases_are_free() {
        let released = LeaseRecord::from_spec(Some(&released_spec(
            &LeaseSpec {
                holder_identity: Some("other".into()),
                lease_duration_seconds: Some(10),
                ..LeaseSpec::default()
            },
            at(0),
        )));
        assert_eq!(released.holder, None);
        assert_eq!(
            next_step(Some(&released), "me", secs(0), SECS),
            LeaseStep::Acquire
        );
        let blank = LeaseRecord::from_spec(Some(&LeaseSpec {
            holder_identity: Some("  ".into()),
            renew_time: Some(MicroTime(at(0))),
            ..LeaseSpec::default()
        }));
        assert_eq!(
            next_step(Some(&blank), "me", secs(0), SECS),
            LeaseStep::Acquire
        );
        let empty = LeaseRecord::from_spec(None);
        assert_eq!(
            next_step(Some(&empty), "me", secs(0), SECS),
            LeaseStep::Acquire
        );
    }

    #[test]
    fn a_missing_duration_falls_back_to_mine_and_an_untimed_holder_is_still_respected() {
        let mut lease = held("other", 0, 0);
        lease.duration_seconds = None;
        assert!(matches!(
            next_step(Some(&lease), "me", secs(14), SECS),
            LeaseStep::Wait { .. }
        ));
        assert_eq!(
            next_step(Some(&lease), "me", secs(15), SECS),
            LeaseStep::Acquire
        );
        // Expiry is measured from when it was seen, so a holder with no time
        // at all is respected for a duration like any other.
        let untimed = LeaseRecord {
            renewed: None,
            ..held("other", 0, 10)
        };
        assert!(matches!(
            next_step(Some(&untimed), "me", secs(0), SECS),
            LeaseStep::Wait { .. }
        ));
        assert_eq!(
            next_step(Some(&untimed), "me", secs(10), SECS),
            LeaseStep::Acquire
        );
    }

    #[test]
    fn written_specs() {
        let current = LeaseSpec {
            holder_identity: Some("other".into()),
            acquire_time: Some(MicroTime(at(-100))),
            renew_time: Some(MicroTime(at(-50))),
            lease_duration_seconds: Some(30),
            lease_transitions: Some(4),
            ..LeaseSpec::default()
        };
        let acquired = next_spec(&LeaseStep::Acquire, &current, "me", at(0), SECS).unwrap();
        assert_eq!(acquired.holder_identity.as_deref(), Some("me"));
        assert_eq!(acquired.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(acquired.renew_time, Some(MicroTime(at(0))));
        assert_eq!(acquired.lease_duration_seconds, Some(15));
        assert_eq!(acquired.lease_transitions, Some(5));

        let renewed = next_spec(&LeaseStep::Renew, &acquired, "me", at(5), SECS).unwrap();
        assert_eq!(
            renewed.acquire_time,
            Some(MicroTime(at(0))),
            "acquire time kept"
        );
        assert_eq!(renewed.renew_time, Some(MicroTime(at(5))));
        assert_eq!(
            renewed.lease_transitions,
            Some(5),
            "no transition on renewal"
        );

        let created =
            next_spec(&LeaseStep::Create, &LeaseSpec::default(), "me", at(0), SECS).unwrap();
        assert_eq!(created.lease_transitions, Some(0));
        let wait = LeaseStep::Wait {
            holder: "other".into(),
            expires_in: secs(1),
        };
        assert_eq!(next_spec(&wait, &current, "me", at(0), SECS), None);
    }

    #[test]
    fn the_leader_stops_a_renew_interval_before_expiry_and_retries_faster_after_failures() {
        let c = cfg(15, 5000);
        assert_eq!(renew_deadline(&c), Duration::from_secs(10));
        assert_eq!(next_delay(&c, false), Duration::from_secs(5));
        assert_eq!(next_delay(&c, true), Duration::from_millis(1250));
        let short = cfg(2, 100);
        assert_eq!(next_delay(&short, true), Duration::from_millis(50));
        // Three failed retries fit before the deadline with the defaults.
        assert!(next_delay(&c, true) * 3 < renew_deadline(&c) - c.renew_interval);
    }

    #[test]
    fn lost_reasons_read_well() {
        let r = LostReason::TakenBy("op-2".into());
        assert_eq!(r.to_string(), "op-2 holds it now");
        let e = ElectionError::Lost {
            lease: "ns/l".into(),
            reason: r,
        };
        assert!(e.to_string().contains("ns/l"), "{e}");
    }
}
