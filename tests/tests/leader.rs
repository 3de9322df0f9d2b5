//! Leader election: two operator instances against the in-process API
//! server, each with its own `State` (so its own reconcile counter and
//! `macp_operator_leader` gauge). Exactly one reconciles; a crashed leader is
//! replaced within the lease duration; a gracefully stopped one hands over at once;
//! a leader that cannot renew, or whose lease is taken, stops and says so.
//!
//! Every instance authenticates as the operator's service account against an
//! API server that enforces the operator's RBAC (`rbac::grants`), in the
//! namespace-scoped or the cluster-wide mode, so a request the chart does not
//! grant fails with 403 here as on a cluster.
//!
//! Handover times are printed (`cargo test --test leader -- --nocapture`); the
//! asserted bounds are loose on purpose, for a loaded two-core machine.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use macp_auth_e2e::apiserver::FakeApiServer;
use macp_auth_e2e::wait::wait_until;
use macp_auth_operator::config::LeaderElection;
use macp_auth_operator::crd::MacpAuth;
use macp_auth_operator::fixtures::{self, FakeProber};
use macp_auth_operator::leader::{self, Clock, ElectionError, LostReason, SystemClock};
use macp_auth_operator::{Settings, State, rbac};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const NS: &str = "auth";
const LEASE_NS: &str = "ops";
const LEASE: &str = "macp-auth-operator";
const IMAGE: &str = "registry.test/macp-auth-service:test";

struct Instance {
    name: &'static str,
    state: State,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ElectionError>>,
}

/// A wall clock running `ahead` of the real one (the monotonic clock is the real one).
struct Ahead(Duration);

impl Clock for Ahead {
    fn wall(&self) -> Timestamp {
        let ahead = SignedDuration::try_from(self.0).unwrap();
        Timestamp::now().checked_add(ahead).unwrap()
    }

    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

/// How the operator's RBAC is bound on the test server.
#[derive(Clone, Copy, Debug)]
enum Mode {
    ClusterWide,
    Namespaced,
}

impl Mode {
    fn rbac(self) -> rbac::Mode {
        match self {
            Mode::ClusterWide => rbac::Mode::ClusterWide,
            Mode::Namespaced => rbac::Mode::Namespaced(vec![NS.to_string()]),
        }
    }
}

/// Enforces the operator's RBAC in `mode`, leases in the lease namespace.
fn enforce(server: &FakeApiServer, mode: Mode) {
    server.enforce_operator_rbac(&mode.rbac(), Some(LEASE_NS));
}

impl Instance {
    fn start(server: &FakeApiServer, name: &'static str, lease: Duration, renew: Duration) -> Self {
        Self::start_with(
            server,
            name,
            lease,
            renew,
            Mode::Namespaced,
            Arc::new(SystemClock),
        )
    }

    fn start_with(
        server: &FakeApiServer,
        name: &'static str,
        lease: Duration,
        renew: Duration,
        mode: Mode,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let settings = Settings {
            service_image: IMAGE.to_string(),
            pod_name: Some(name.to_string()),
            watch_namespaces: match mode {
                Mode::ClusterWide => Vec::new(),
                Mode::Namespaced => vec![NS.to_string()],
            },
            ..Settings::default()
        };
        let cfg = LeaderElection {
            namespace: LEASE_NS.into(),
            lease_name: LEASE.into(),
            identity: name.into(),
            lease_duration: lease,
            renew_interval: renew,
        };
        let state = State::default();
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(leader::run_with_clock(
            server.operator_client().unwrap(),
            settings,
            // No pod ever answers: these tests count reconciles, not rotations.
            Arc::new(FakeProber::default()),
            state.clone(),
            cfg,
            clock,
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ));
        Self {
            name,
            state,
            stop,
            task,
        }
    }

    fn leading(&self) -> bool {
        self.state.metrics.leader.get() == 1
    }

    fn reconciles(&self) -> u64 {
        self.state.metrics.reconciles.get()
    }
}

fn holder(server: &FakeApiServer) -> Option<String> {
    server
        .get_as::<Lease>(Some(LEASE_NS), LEASE)
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

fn transitions(server: &FakeApiServer) -> i32 {
    server
        .get_as::<Lease>(Some(LEASE_NS), LEASE)
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0)
}

async fn create_macpauth(server: &FakeApiServer) {
    let spec = serde_json::json!({"signingAlg": "ES256", "issuer": "iss", "audience": "aud"});
    let m = fixtures::macpauth("a").spec(spec).build();
    let api: Api<MacpAuth> = Api::namespaced(server.client(), NS);
    api.create(&PostParams::default(), &m).await.unwrap();
    // Only the operators' requests are checked against their RBAC.
    server.reset_log();
}

/// A ceiling for an instance to get somewhere (a lease duration or two; the
/// handover times asserted are measured separately), and how often to look.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

/// Starts two instances and returns (leader, standby) once one leads and has reconciled.
async fn two_instances(
    server: &FakeApiServer,
    lease: Duration,
    mode: Mode,
) -> (Instance, Instance) {
    let renew = Duration::from_millis(500);
    let clock = || -> Arc<dyn Clock> { Arc::new(SystemClock) };
    let a = Instance::start_with(server, "operator-a", lease, renew, mode, clock());
    let b = Instance::start_with(server, "operator-b", lease, renew, mode, clock());
    wait_until("a leader", SETTLE_TIMEOUT, POLL, async || {
        a.leading() || b.leading()
    })
    .await;
    let (leader, standby) = if a.leading() { (a, b) } else { (b, a) };
    wait_until(
        "the leader's first reconcile",
        SETTLE_TIMEOUT,
        POLL,
        async || leader.reconciles() >= 1,
    )
    .await;
    (leader, standby)
}

/// RBAC was enforced all along: nothing the instances sent was refused.
fn assert_nothing_forbidden(server: &FakeApiServer) {
    assert_eq!(
        server.forbidden(),
        vec![],
        "requests refused by the operator's RBAC"
    );
    assert!(!server.requests().is_empty());
}

#[tokio::test]
async fn exactly_one_instance_reconciles_and_a_crashed_leader_is_replaced_within_the_lease() {
    crash_handover(Mode::Namespaced).await;
}

#[tokio::test]
async fn crash_handover_with_cluster_wide_rbac() {
    crash_handover(Mode::ClusterWide).await;
}

async fn crash_handover(mode: Mode) {
    let server = FakeApiServer::start().await.unwrap();
    enforce(&server, mode);
    create_macpauth(&server).await;
    let lease = Duration::from_secs(2);
    let (leader, standby) = two_instances(&server, lease, mode).await;
    wait_until(
        "the Secret and Deployment",
        SETTLE_TIMEOUT,
        POLL,
        async || {
            server
                .get("", "secrets", Some(NS), "a-signing-keys")
                .is_some()
                && server.get("apps", "deployments", Some(NS), "a").is_some()
        },
    )
    .await;
    assert_eq!(holder(&server).as_deref(), Some(leader.name));

    // Several lease durations: the leader renews, the standby stays out.
    tokio::time::sleep(lease * 2).await;
    assert!(leader.leading() && !standby.leading());
    assert_eq!(holder(&server).as_deref(), Some(leader.name));
    assert!(leader.reconciles() >= 1);
    assert_eq!(standby.reconciles(), 0, "the standby reconciled");
    assert!(
        standby.state.is_ready(),
        "a standby must be ready for rollouts"
    );
    assert!(
        standby
            .state
            .render_metrics()
            .contains("\nmacp_operator_leader 0\n")
    );
    assert!(
        leader
            .state
            .render_metrics()
            .contains("\nmacp_operator_leader 1\n")
    );
    let before = transitions(&server);

    // Crash: no release, the controllers die with the task.
    leader.task.abort();
    let _ = leader.task.await;
    let crashed = Instant::now();
    let handover = wait_until("the standby to lead", SETTLE_TIMEOUT, POLL, async || {
        standby.leading().then(|| crashed.elapsed())
    })
    .await;
    let reconciling = wait_until(
        "the new leader's reconcile",
        SETTLE_TIMEOUT,
        POLL,
        async || (standby.reconciles() >= 1).then(|| crashed.elapsed()),
    )
    .await;
    eprintln!(
        "crash handover: lease {lease:?}, renew 500ms: standby leading after {handover:?}, \
         reconciling after {reconciling:?}"
    );
    // Expiry is measured from the last renewal, at most one renew interval before
    // the crash; the standby notices within one more renew interval.
    assert!(
        handover < lease + Duration::from_secs(5),
        "handover took {handover:?}"
    );
    assert_eq!(holder(&server).as_deref(), Some(standby.name));
    assert_eq!(transitions(&server), before + 1);
    assert_nothing_forbidden(&server);
    standby.task.abort();
}

#[tokio::test]
async fn a_graceful_shutdown_releases_the_lease_for_an_immediate_handover() {
    let server = FakeApiServer::start().await.unwrap();
    enforce(&server, Mode::Namespaced);
    create_macpauth(&server).await;
    // A long lease: a handover well under it can only come from the release.
    let lease = Duration::from_secs(15);
    let (leader, standby) = two_instances(&server, lease, Mode::Namespaced).await;

    let start = Instant::now();
    leader.stop.send(true).unwrap();
    let result = leader.task.await.unwrap();
    let stopped = start.elapsed();
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(leader.state.metrics.leader.get(), 0);
    let released = Instant::now();
    let handover = wait_until("the standby to lead", SETTLE_TIMEOUT, POLL, async || {
        standby.leading().then(|| released.elapsed())
    })
    .await
        + stopped;
    wait_until(
        "the new leader's reconcile",
        SETTLE_TIMEOUT,
        POLL,
        async || standby.reconciles() >= 1,
    )
    .await;
    eprintln!(
        "graceful handover: lease {lease:?}, renew 500ms: leader stopped in {stopped:?}, \
         standby leading after {handover:?}"
    );
    assert!(
        handover < lease / 2,
        "handover took {handover:?}: the lease was not released"
    );
    assert_eq!(holder(&server).as_deref(), Some(standby.name));
    assert_nothing_forbidden(&server);

    // The new leader stops gracefully too and leaves the lease free.
    standby.stop.send(true).unwrap();
    assert!(standby.task.await.unwrap().is_ok());
    assert_eq!(holder(&server), None);
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_with_an_error() {
    let server = FakeApiServer::start().await.unwrap();
    enforce(&server, Mode::Namespaced);
    let lease = Duration::from_secs(2);
    let one = Instance::start(&server, "operator-a", lease, Duration::from_millis(500));
    wait_until("leading", SETTLE_TIMEOUT, POLL, async || one.leading()).await;

    server.fail_next_writes("leases", 1000, 500);
    let start = Instant::now();
    let result = one.task.await.unwrap();
    let took = start.elapsed();
    server.clear_faults();
    eprintln!("renewals failing: the leader gave up after {took:?} (lease {lease:?})");
    match result {
        Err(ElectionError::Lost {
            reason: LostReason::RenewalFailed { .. },
            ..
        }) => {}
        other => panic!("expected a lost lease, got {other:?}"),
    }
    // It must stop before anyone else may take the lease.
    assert!(took < lease + Duration::from_secs(5), "{took:?}");
    assert_eq!(one.state.metrics.leader.get(), 0);
    assert!(!one.state.is_ready());
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_stops_with_an_error() {
    let server = FakeApiServer::start().await.unwrap();
    enforce(&server, Mode::Namespaced);
    let one = Instance::start(
        &server,
        "operator-a",
        Duration::from_secs(2),
        Duration::from_millis(500),
    );
    wait_until("leading", SETTLE_TIMEOUT, POLL, async || one.leading()).await;

    // Someone else (say, an operator with the lease name misconfigured the same)
    // writes itself in as holder.
    server
        .modify_as::<Lease>(Some(LEASE_NS), LEASE, |l| {
            let spec = l.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some("intruder".into());
            spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        })
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), one.task)
        .await
        .expect("the leader noticed")
        .unwrap();
    match result {
        Err(ElectionError::Lost {
            reason: LostReason::TakenBy(holder),
            ..
        }) => assert_eq!(holder, "intruder"),
        other => panic!("expected a lost lease, got {other:?}"),
    }
    assert_eq!(one.state.metrics.leader.get(), 0);
    // It did not take the lease back on its way out.
    assert_eq!(holder(&server).as_deref(), Some("intruder"));
}

/// Lease expiry is judged on the standby's own monotonic clock, from when it
/// last saw the lease change, as client-go does: a standby whose wall clock is
/// 12 s ahead must not read a live 15 s lease as expired. (Comparing the
/// holder's `renewTime` with its own wall clock, it would see every renewal
/// expire 3 s after it was written.)
#[tokio::test]
async fn a_standby_12s_ahead_never_makes_a_second_leader_of_a_15s_lease() {
    let server = FakeApiServer::start().await.unwrap();
    enforce(&server, Mode::Namespaced);
    create_macpauth(&server).await;
    let lease = Duration::from_secs(15);
    let on_time = Instance::start_with(
        &server,
        "operator-a",
        lease,
        Duration::from_secs(5),
        Mode::Namespaced,
        Arc::new(SystemClock),
    );
    wait_until("a leader", SETTLE_TIMEOUT, POLL, async || on_time.leading()).await;
    // The standby looks every second, so it sees every age of the lease.
    let ahead = Instance::start_with(
        &server,
        "operator-b",
        lease,
        Duration::from_secs(1),
        Mode::Namespaced,
        Arc::new(Ahead(Duration::from_secs(12))),
    );
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        assert!(
            !(on_time.leading() && ahead.leading()),
            "two leaders after {:?}",
            start.elapsed()
        );
        assert!(
            !ahead.leading(),
            "the standby took a live lease after {:?}",
            start.elapsed()
        );
        assert_eq!(holder(&server).as_deref(), Some("operator-a"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(on_time.leading());
    assert_eq!(ahead.reconciles(), 0);

    // And it still takes over a crashed leader within the lease (plus a renew
    // interval of the old leader and one poll), skewed clock or not.
    on_time.task.abort();
    let _ = on_time.task.await;
    let crashed = Instant::now();
    let handover = wait_until(
        "the standby to lead",
        Duration::from_secs(30),
        POLL,
        async || ahead.leading().then(|| crashed.elapsed()),
    )
    .await;
    eprintln!("skewed standby: took over {handover:?} after the crash (lease {lease:?})");
    assert!(handover < lease + Duration::from_secs(7), "{handover:?}");
    assert_nothing_forbidden(&server);
    ahead.task.abort();
}

/// The control for namespace scope: the operator watching every namespace
/// with only namespaced Roles is refused (a cluster-wide list needs a
/// ClusterRole), and says so with the API server's Forbidden.
#[tokio::test]
async fn a_cluster_wide_operator_under_namespaced_roles_is_forbidden() {
    let server = FakeApiServer::start().await.unwrap();
    enforce(&server, Mode::Namespaced);
    create_macpauth(&server).await;
    let one = Instance::start_with(
        &server,
        "operator-a",
        Duration::from_secs(2),
        Duration::from_millis(500),
        Mode::ClusterWide,
        Arc::new(SystemClock),
    );
    wait_until("a refused request", SETTLE_TIMEOUT, POLL, async || {
        !server.forbidden().is_empty()
    })
    .await;
    let refused = server.forbidden();
    assert!(
        refused
            .iter()
            .all(|r| r.namespace.is_none() && matches!(r.verb.as_str(), "list" | "watch")),
        "{refused:?}"
    );
    assert_eq!(one.reconciles(), 0);
    // The message a user would see.
    let client = server.operator_client().unwrap();
    let all: Api<MacpAuth> = Api::all(client);
    match all.list(&Default::default()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
            assert_eq!(
                s.message,
                "macpauths.macp.io is forbidden: User \"system:serviceaccount:macp-system:macp-auth-operator\" \
                 cannot list resource \"macpauths\" in API group \"macp.io\" at the cluster scope"
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }
    one.task.abort();
}
