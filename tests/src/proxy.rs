//! A tiny stand-in for a ClusterIP Service and kube-proxy: an HTTP listener on
//! 127.0.0.1 that forwards each request to a random ready endpoint of a Service
//! (its `spec.selector` over the stored Pods, its first port's `targetPort`), read
//! from the store at every request, the way kube-proxy follows EndpointSlices.
//!
//! It also records every JWKS it serves, so a test can tell which keys a verifier
//! fetching through it knew at any moment (see [`crate::load`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::apiserver::ApiHandle;
use crate::endpoints::{EndpointSource, StoreEndpoints};

/// One JWKS response served through the proxy.
#[derive(Clone, Debug)]
pub struct JwksServed {
    pub at: Instant,
    /// The pod that answered (`ip:port`).
    pub endpoint: SocketAddr,
    pub kids: Vec<String>,
}

struct ProxyState {
    endpoints: Arc<dyn EndpointSource>,
    http: reqwest::Client,
    jwks: Mutex<Vec<JwksServed>>,
}

struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// A running Service proxy; stops when the last clone is dropped.
#[derive(Clone)]
pub struct ServiceProxy {
    state: Arc<ProxyState>,
    addr: SocketAddr,
    _stop: Arc<StopOnDrop>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ServiceProxy {
    /// Listens on `127.0.0.1:<random>` for Service `namespace/service` of the simulated cluster.
    pub async fn start(api: ApiHandle, namespace: &str, service: &str) -> std::io::Result<Self> {
        Self::start_with(Arc::new(StoreEndpoints::new(api, namespace, service))).await
    }

    /// Listens on `127.0.0.1:<random>` and forwards to `endpoints` (e.g. the
    /// ready pods of a real cluster, read through its API).
    pub async fn start_with(endpoints: Arc<dyn EndpointSource>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(std::io::Error::other)?;
        let state = Arc::new(ProxyState {
            endpoints,
            http,
            jwks: Mutex::new(Vec::new()),
        });
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        tokio::spawn(async move {
            let stop = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::warn!(error = %e, "service proxy stopped");
            }
        });
        Ok(Self {
            state,
            addr,
            _stop: Arc::new(StopOnDrop(stop_tx)),
        })
    }

    /// `http://127.0.0.1:<port>`: the Service's address for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The JWKS URL a verifier in the cluster would use.
    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.url())
    }

    /// The current ready endpoints.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.state.endpoints.endpoints()
    }

    /// Where the proxy forwards to.
    pub fn endpoint_source(&self) -> Arc<dyn EndpointSource> {
        self.state.endpoints.clone()
    }

    /// Every JWKS served so far, oldest first.
    pub fn jwks_served(&self) -> Vec<JwksServed> {
        lock(&self.state.jwks).clone()
    }

    /// The kids of the latest JWKS served, if any was.
    pub fn last_jwks_kids(&self) -> Option<Vec<String>> {
        lock(&self.state.jwks).last().map(|j| j.kids.clone())
    }
}

fn error(code: StatusCode, message: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": message}).to_string(),
    )
        .into_response()
}

async fn forward(
    State(state): State<Arc<ProxyState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let eps = state.endpoints.endpoints();
    if eps.is_empty() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no ready endpoints");
    }
    let ep = eps[rand::random_range(0..eps.len())];
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = state
        .http
        .request(method, format!("http://{ep}{path}"))
        .body(body);
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_GATEWAY, &format!("endpoint {ep}: {e}")),
    };
    let status = resp.status();
    let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_GATEWAY, &format!("endpoint {ep}: {e}")),
    };
    if uri.path() == "/.well-known/jwks.json" && status.is_success() {
        let kids = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("keys").and_then(Value::as_array).cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|k| k.get("kid").and_then(Value::as_str).map(str::to_string))
            .collect();
        lock(&state.jwks).push(JwksServed {
            at: Instant::now(),
            endpoint: ep,
            kids,
        });
    }
    let mut out = (status, bytes).into_response();
    if let Some(ct) = ct {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    out
}
