//! Wiring: one `kube::runtime::Controller` per watched scope, and the
//! `/healthz`, `/readyz`, `/metrics` endpoints.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Settings;
use crate::crd::MacpAuth;
use crate::metrics::Metrics;
use crate::probe::PodProber;
use crate::reconcile::{self, Context};
use crate::resources::{APP_NAME, INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGER, NAME_LABEL};

/// Health of the running operator, shared with the HTTP endpoints.
#[derive(Clone, Default)]
pub struct State {
    ready: Arc<AtomicBool>,
    pub metrics: Metrics,
}

impl State {
    /// Whether every controller's MacpAuth cache has synced.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// The `/healthz`, `/readyz` and `/metrics` router.
pub fn router(state: State) -> Router {
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok") }))
        .route(
            "/readyz",
            get(|AxumState(s): AxumState<State>| async move {
                if s.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                }
            }),
        )
        .route(
            "/metrics",
            get(|AxumState(s): AxumState<State>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    s.metrics.render(),
                )
                    .into_response()
            }),
        )
        .with_state(state)
}

/// Serves [`router`] on `addr` until `shutdown` resolves.
pub async fn serve_http(
    addr: SocketAddr,
    state: State,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(%addr, "serving /healthz, /readyz, /metrics");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
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
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(Context::new(
        client.clone(),
        settings.clone(),
        prober,
        recorder,
        state.metrics.clone(),
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let scopes: Vec<Option<String>> = match settings.namespaces() {
        None => vec![None],
        Some(list) => list.into_iter().map(Some).collect(),
    };
    info!(namespaces = ?scopes, image = %settings.service_image, "starting controllers");

    let mut stores = Vec::new();
    let mut runs = Vec::new();
    for ns in scopes {
        let controller = controller_for(&client, ns.as_deref());
        stores.push(controller.store());
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

fn controller_for(client: &Client, ns: Option<&str>) -> Controller<MacpAuth> {
    // Only our own objects are watched: a cluster's Secrets and Pods are not cached.
    let ours = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    let our_pods = watcher::Config::default().labels(&format!(
        "{MANAGED_BY_LABEL}={MANAGER},{NAME_LABEL}={APP_NAME}"
    ));
    Controller::new(api::<MacpAuth>(client, ns), watcher::Config::default())
        .owns(api::<Secret>(client, ns), ours.clone())
        .owns(api::<Deployment>(client, ns), ours.clone())
        .owns(api::<Service>(client, ns), ours.clone())
        .owns(api::<ConfigMap>(client, ns), ours)
        // Pods are owned by ReplicaSets, not by us: map them back by label so
        // readiness changes trigger a reconcile.
        .watches(api::<Pod>(client, ns), our_pods, |pod: Pod| {
            let name = pod.labels().get(INSTANCE_LABEL)?.clone();
            let ns = pod.namespace()?;
            Some(ObjectRef::<MacpAuth>::new(&name).within(&ns))
        })
}
