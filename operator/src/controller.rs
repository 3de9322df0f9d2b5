//! Wiring: one `kube::runtime::Controller` per watched scope, and the
//! `/healthz`, `/readyz`, `/metrics` endpoints.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{
    Controller, Predicate, PredicateConfig, WatchStreamExt, predicates, reflector, watcher,
};
use kube::{Api, Client, Resource, ResourceExt};
use macp_auth_service::exposition;
use macp_auth_service::listener::{self, Limits};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Settings;
use crate::crd::MacpAuth;
use crate::events::EventRecorders;
use crate::metrics::Metrics;
use crate::probe::PodProber;
use crate::reconcile::{self, Context};
use crate::resources::{APP_NAME, INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGER, NAME_LABEL};
use crate::watch_caches::WatchCaches;

/// Health of the running operator, shared with the HTTP endpoints.
#[derive(Clone, Default)]
pub struct State {
    ready: Arc<AtomicBool>,
    standby: Arc<AtomicBool>,
    /// Every metric of the process: `/metrics` renders them.
    pub metrics: Metrics,
}

/// Where this process stands, as `/readyz` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadyState {
    /// Every controller's MacpAuth cache has synced.
    Synced,
    /// A standby waiting for the leader-election lease.
    Standby,
    /// Neither: the caches have not synced (yet, or any more).
    NotSynced,
}

impl ReadyState {
    /// Whether it counts as ready. A standby must, or a rolling update
    /// (`maxUnavailable: 0`) would wait forever for a new pod that waits for
    /// the old pod's lease.
    pub(crate) fn is_ready(self) -> bool {
        match self {
            ReadyState::Synced | ReadyState::Standby => true,
            ReadyState::NotSynced => false,
        }
    }

    /// The `/readyz` answer.
    fn answer(self) -> (StatusCode, &'static str) {
        let status = if self.is_ready() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let body = match self {
            ReadyState::Synced => "ready",
            ReadyState::Standby => "standby: waiting for the leader-election lease",
            ReadyState::NotSynced => "caches not synced",
        };
        (status, body)
    }
}

impl State {
    /// Where this process stands: see [`ReadyState`].
    fn ready_state(&self) -> ReadyState {
        if self.ready.load(Ordering::SeqCst) {
            ReadyState::Synced
        } else if self.standby.load(Ordering::SeqCst) {
            ReadyState::Standby
        } else {
            ReadyState::NotSynced
        }
    }

    /// Whether this process can do its job (what `/readyz` answers 200 to).
    pub fn is_ready(&self) -> bool {
        self.ready_state().is_ready()
    }

    /// Marks this process as a standby candidate (or no longer one).
    pub(crate) fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::SeqCst);
    }

    /// Marks the controllers as stopped, e.g. after they were dropped on a lost lease.
    pub(crate) fn set_not_ready(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }

    /// OpenMetrics text of the operator's metrics (see [`Metrics`]).
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}

/// Connections the endpoint serves at once: probes and a scraper need a
/// handful, and the operator's own API-server connections share its
/// descriptors.
const HTTP_MAX_CONNECTIONS: usize = 256;

/// The service's listener limits for the endpoint: its default timeouts and
/// a cap of [`HTTP_MAX_CONNECTIONS`] (less under a tiny descriptor limit).
fn http_limits(nofile: u64) -> Limits {
    let mut limits = Limits::defaults(nofile);
    limits.max_connections = limits.max_connections.min(HTTP_MAX_CONNECTIONS);
    limits
}

/// The `/healthz`, `/readyz` and `/metrics` router.
fn router(state: State) -> Router {
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok") }))
        .route(
            "/readyz",
            get(|AxumState(s): AxumState<State>| async move { s.ready_state().answer() }),
        )
        .route(
            "/metrics",
            get(
                |AxumState(s): AxumState<State>, headers: HeaderMap| async move {
                    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                    let (content_type, body) = exposition::negotiate(accept, s.render_metrics());
                    ([(header::CONTENT_TYPE, content_type)], body).into_response()
                },
            ),
        )
        .with_state(state)
}

/// Serves [`router`] on `addr` until `shutdown` resolves, with the token
/// service's protections against slow and abusive clients (header and request
/// timeouts, a connection cap; see [`listener`]).
pub async fn serve_http(
    addr: SocketAddr,
    state: State,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let nofile = match listener::raise_nofile_limit() {
        Ok(limit) => limit.soft,
        Err(e) => {
            warn!(error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)");
            listener::current_nofile_limit()
        }
    };
    let limits = http_limits(nofile);
    info!(
        %addr,
        max_connections = limits.max_connections,
        open_file_limit = nofile,
        "serving /healthz, /readyz, /metrics"
    );
    let metrics = state.metrics.http.clone();
    listener::serve(listener, router(state), limits, metrics, shutdown).await
}

/// Runs the controllers until `shutdown` resolves (then finishes in-flight
/// reconciles). Abort the task instead to simulate a crash.
pub async fn run(
    client: Client,
    settings: Settings,
    prober: Arc<dyn PodProber>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    run_with_state(client, settings, prober, State::default(), shutdown).await
}

/// [`run`] reporting readiness and metrics into `state`.
pub async fn run_with_state(
    client: Client,
    settings: Settings,
    prober: Arc<dyn PodProber>,
    state: State,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let reporter = Reporter {
        controller: MANAGER.to_string(),
        instance: settings.pod_name.clone(),
    };
    let recorder = EventRecorders::new(&client, &reporter);
    let scopes: Vec<Option<String>> = match settings.namespaces() {
        None => vec![None],
        Some(list) => list.into_iter().map(Some).collect(),
    };
    info!(namespaces = ?scopes, image = %settings.service_image, "starting controllers");
    let mut stores = Vec::new();
    let mut caches = WatchCaches::default();
    let mut controllers = Vec::new();
    for ns in scopes {
        let controller = controller_for(&client, ns.as_deref(), &mut caches);
        stores.push(controller.store());
        controllers.push(controller);
    }
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            settings.clone(),
            prober,
            recorder,
            state.metrics.clone(),
        )
        .with_watch_caches(caches),
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopping = ctx.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.stop_rounds();
        let _ = stop_tx.send(true);
    });

    let mut runs = Vec::new();
    for controller in controllers {
        let controller = controller.with_config(
            // Unbounded here (0): the bound is the fair queue in
            // `reconcile::Context`, which keeps due order where kube's
            // saturated runner would not.
            ControllerConfig::default()
                .concurrency(0)
                .debounce(settings.reconcile_debounce),
        );
        let mut rx = stop_rx.clone();
        let ctx = ctx.clone();
        let stop = async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        runs.push(
            controller
                .graceful_shutdown_on(stop)
                .run(reconcile::reconcile, reconcile::error_policy, ctx)
                .for_each(|result| async move {
                    match result {
                        Ok((obj, _)) => tracing::trace!(name = %obj.name, "reconciled"),
                        Err(e) => warn!(error = %e, "controller"),
                    }
                }),
        );
    }

    let ready = state.ready.clone();
    let readiness = async move {
        for store in stores {
            if store.wait_until_ready().await.is_err() {
                return;
            }
        }
        info!("caches synced");
        ready.store(true, Ordering::SeqCst);
    };
    tokio::join!(readiness, futures::future::join_all(runs));
    state.ready.store(false, Ordering::SeqCst);
    info!("controllers stopped");
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The controller of one scope; its Service and ConfigMap caches go to `caches`.
fn controller_for(
    client: &Client,
    ns: Option<&str>,
    caches: &mut WatchCaches,
) -> Controller<MacpAuth> {
    // Only our own objects are watched: a cluster's Secrets and Pods are not cached.
    let ours = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    let our_pods = watcher::Config::default().labels(&format!(
        "{MANAGED_BY_LABEL}={MANAGER},{NAME_LABEL}={APP_NAME}"
    ));
    // The MacpAuth watch triggers a round only when what a round acts on
    // changed: the spec (generation), the annotations (rotation requests) or
    // the deletion mark. A status write is the operator's own echo: each round
    // writes one and requeues itself for what follows, so rounds triggered by
    // the echoes decided nothing and, in a storm of a thousand rotations,
    // doubled every burst of rounds. Status edited by someone else is seen by
    // the next requeue or resync (every round reads the MacpAuth fresh).
    let (reader, writer) = reflector::store();
    let mauths = watcher(api::<MacpAuth>(client, ns), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(round_inputs(), PredicateConfig::default());
    // The Service and ConfigMap watches, which trigger rounds on any change
    // as `owns` does, also keep the caches the rounds read them from.
    let (services, services_writer) = reflector::store();
    let (config_maps, config_maps_writer) = reflector::store();
    let service_events = watcher(api::<Service>(client, ns), ours.clone())
        .default_backoff()
        .reflect(services_writer)
        .touched_objects();
    let config_map_events = watcher(api::<ConfigMap>(client, ns), ours.clone())
        .default_backoff()
        .reflect(config_maps_writer)
        .touched_objects();
    caches.add_scope(services, config_maps);
    // The Secrets, Deployments and Pods only trigger rounds (which read them
    // fresh), so they are watched as metadata: the watch decodes no key
    // material and no pod spec, which in a storm of rotations was most of
    // what the operator spent outside its rounds.
    let secret_events = watcher(api::<PartialObjectMeta<Secret>>(client, ns), ours.clone())
        .default_backoff()
        .touched_objects();
    let deployment_events = watcher(api::<PartialObjectMeta<Deployment>>(client, ns), ours)
        .default_backoff()
        .touched_objects();
    let pod_events = watcher(api::<PartialObjectMeta<Pod>>(client, ns), our_pods)
        .default_backoff()
        .touched_objects();
    Controller::for_stream(mauths, reader)
        .owns_stream(secret_events)
        .owns_stream(deployment_events)
        .owns_stream(service_events)
        .owns_stream(config_map_events)
        // Pods are owned by ReplicaSets, not by us: map them back by label so
        // readiness changes trigger a reconcile.
        .watches_stream(pod_events, |pod: PartialObjectMeta<Pod>| {
            let name = pod.labels().get(INSTANCE_LABEL)?.clone();
            let ns = pod.namespace()?;
            Some(ObjectRef::<MacpAuth>::new(&name).within(&ns))
        })
}

/// What a round acts on: a change of anything else (the status, the managed
/// fields, the resourceVersion alone) triggers no round.
fn round_inputs() -> impl Predicate<MacpAuth> {
    predicates::generation
        .combine(predicates::annotations)
        .combine(|m: &MacpAuth| Some(u64::from(m.meta().deletion_timestamp.is_some())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_carry_the_leader_gauge_after_the_reconciler_metrics() {
        let state = State::default();
        state
            .metrics
            .reconciled(std::time::Duration::from_millis(1));
        state.metrics.leader.set(1);
        let text = state.render_metrics();
        assert!(text.contains("macp_operator_reconciles_total 1"), "{text}");
        assert!(text.contains("# TYPE macp_operator_leader gauge"), "{text}");
        assert!(text.contains("\nmacp_operator_leader 1\n"), "{text}");
        assert!(
            text.contains("\nmacp_operator_http_connections_shed_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains(r#"macp_operator_http_connections_timed_out_total{stage="headers"} 0"#),
            "{text}"
        );
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_endpoint_gets_the_service_timeouts_and_a_small_cap() {
        let limits = http_limits(1 << 20);
        assert_eq!(limits.header_timeout, listener::DEFAULT_HEADER_TIMEOUT);
        assert_eq!(limits.request_timeout, listener::DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(limits.max_connections, HTTP_MAX_CONNECTIONS);
        assert_eq!(http_limits(300).max_connections, 236);
    }

    /// A free local address for [`serve_http`].
    fn free_addr() -> std::net::SocketAddr {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap()
    }

    /// One `GET path` to the endpoint at `addr` (retried until it listens): the raw answer.
    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = loop {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => break stream,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    }

    #[tokio::test]
    async fn the_endpoint_is_served_by_the_hardened_listener() {
        let addr = free_addr();
        let state = State::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_http(addr, state.clone(), async move {
            let _ = stopped.await;
        }));
        let text = get(addr, "/metrics").await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        // The listener counts the very connection that asked.
        assert!(
            text.contains("\nmacp_operator_http_connections_open 1\n"),
            "{text}"
        );
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn only_what_a_round_acts_on_triggers_one() {
        let mut mauth: MacpAuth = MacpAuth::new(
            "auth",
            serde_json::from_value(serde_json::json!({})).unwrap(),
        );
        mauth.metadata.generation = Some(1);
        mauth.metadata.resource_version = Some("10".into());
        let inputs = round_inputs();
        let before = inputs.hash_property(&mauth);

        // The operator's own status write: a new resourceVersion, managed
        // fields and status, the same generation.
        let mut echo = mauth.clone();
        echo.metadata.resource_version = Some("11".into());
        echo.status = Some(crate::crd::MacpAuthStatus {
            active_kid: Some("k1".into()),
            ..Default::default()
        });
        echo.metadata.managed_fields = Some(vec![Default::default()]);
        assert_eq!(
            inputs.hash_property(&echo),
            before,
            "a status write is no trigger"
        );

        let mut spec = mauth.clone();
        spec.metadata.generation = Some(2);
        assert_ne!(inputs.hash_property(&spec), before, "a spec change is");

        let mut request = mauth.clone();
        request
            .annotations_mut()
            .insert(crate::crd::ROTATE_ANNOTATION.into(), "r1".into());
        assert_ne!(
            inputs.hash_property(&request),
            before,
            "a rotation request is"
        );

        let mut deleted = mauth.clone();
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_ne!(
            inputs.hash_property(&deleted),
            before,
            "the deletion mark is"
        );
    }

    #[test]
    fn a_standby_is_ready_and_so_is_a_synced_leader() {
        let state = State::default();
        assert!(!state.is_ready());
        state.set_standby(true);
        assert!(state.is_ready());
        state.set_standby(false);
        assert!(!state.is_ready());
        state.ready.store(true, Ordering::SeqCst);
        assert!(state.is_ready());
        state.set_not_ready();
        assert!(!state.is_ready());
    }

    /// `/readyz` answers 200 exactly when `is_ready` says so (the lease
    /// elector and the tests ask `is_ready`, the kubelet asks `/readyz`).
    #[tokio::test]
    async fn readyz_answers_what_is_ready_says() {
        let addr = free_addr();
        let state = State::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_http(addr, state.clone(), async move {
            let _ = stopped.await;
        }));
        for (synced, standby) in [(false, false), (false, true), (true, false), (true, true)] {
            state.ready.store(synced, Ordering::SeqCst);
            state.set_standby(standby);
            let text = get(addr, "/readyz").await;
            assert_eq!(
                text.starts_with("HTTP/1.1 200"),
                state.is_ready(),
                "synced {synced}, standby {standby}: {text}"
            );
        }
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
