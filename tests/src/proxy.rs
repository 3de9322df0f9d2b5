//! A stand-in for a ClusterIP Service and kube-proxy: a listener on 127.0.0.1
//! that picks a random endpoint of the Service **per connection**, as kube-proxy
//! does, and keeps every request of that connection on that pod. A keep-alive
//! client (the MACP runtime's JWKS fetcher is one) therefore sticks to one pod
//! until the connection closes: when the pod's process closes it (shutdown,
//! exit), the client's connection is closed too, and its next request opens a
//! new connection to whatever the endpoint list holds then, a list that may lag
//! the cluster (see [`crate::endpoints::LaggedEndpoints`]). A connection to an
//! endpoint that refuses it is reset, as a DNAT to a dead pod would be.
//!
//! It records every JWKS it serves, so a test can tell which keys a verifier
//! fetching through it knew at any moment (see [`crate::load`]), and every
//! response carries the answering pod in [`ENDPOINT_HEADER`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::apiserver::ApiHandle;
use crate::endpoints::{EndpointSource, StoreEndpoints};

/// Response header naming the pod (`ip:port`) that answered.
pub const ENDPOINT_HEADER: &str = "x-e2e-endpoint";

/// One JWKS response served through the proxy.
#[derive(Clone, Debug)]
pub struct JwksServed {
    pub at: Instant,
    /// The pod that answered (`ip:port`).
    pub endpoint: SocketAddr,
    pub kids: Vec<String>,
}

/// A connection the proxy reset instead of forwarding.
#[derive(Clone, Debug)]
pub struct Reset {
    pub at: Instant,
    /// The endpoint it was meant for, when one was picked.
    pub endpoint: Option<SocketAddr>,
    pub why: String,
}

struct ProxyState {
    endpoints: Arc<dyn EndpointSource>,
    jwks: Mutex<Vec<JwksServed>>,
    resets: Mutex<Vec<Reset>>,
    /// Connections to reset on purpose before any other is forwarded.
    reset_next: AtomicUsize,
    /// The address its connections to a pod come from: this proxy's node.
    source: Ipv4Addr,
}

/// Node addresses, 127.1.0.1 onwards (pods are 127.0.0.x). kube-proxy keeps
/// the client's address on a ClusterIP connection, so a pod tells its clients
/// apart by address; each proxy (each verifier's node) gets its own, and the
/// token service's `GET /verifiers` sees one client per verifier, as in a
/// cluster.
fn next_source() -> Ipv4Addr {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % (250 * 250);
    Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250) as u8 + 1)
}

/// Connects to `ep` from `source` when both are loopback (the simulated
/// cluster); from wherever the system chooses otherwise (a real cluster's pods).
async fn connect_from(source: Ipv4Addr, ep: SocketAddr) -> std::io::Result<TcpStream> {
    match ep.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((source, 0)))?;
            socket.connect(ep).await
        }
        _ => TcpStream::connect(ep).await,
    }
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

impl ServiceProxy {
    /// Listens on `127.0.0.1:<random>` for Service `namespace/service` of the simulated cluster.
    pub async fn start(api: ApiHandle, namespace: &str, service: &str) -> std::io::Result<Self> {
        Self::start_with(Arc::new(StoreEndpoints::new(api, namespace, service))).await
    }

    /// Listens on `127.0.0.1:<random>` and forwards to `endpoints` (e.g. the
    /// ready pods of a real cluster, read through its API).
    pub async fn start_with(endpoints: Arc<dyn EndpointSource>) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), endpoints).await
    }

    /// Listens on `addr` (the sandbox gives each Service a local address of its
    /// own) and forwards to `endpoints`.
    pub async fn start_on(
        addr: SocketAddr,
        endpoints: Arc<dyn EndpointSource>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ProxyState {
            endpoints,
            jwks: Mutex::new(Vec::new()),
            resets: Mutex::new(Vec::new()),
            reset_next: AtomicUsize::new(0),
            source: next_source(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let accept_state = state.clone();
        tokio::spawn(async move {
            let stopped = stopped(stop_rx.clone());
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            tokio::spawn(connection(accept_state.clone(), stream, stop_rx.clone()));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "service proxy accept");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    },
                    _ = &mut stopped => return,
                }
            }
        });
        Ok(Self {
            state,
            addr,
            _stop: Arc::new(StopOnDrop(stop_tx)),
        })
    }

    /// The address this proxy's connections to pods come from.
    pub fn source_addr(&self) -> IpAddr {
        IpAddr::V4(self.state.source)
    }

    /// `http://127.0.0.1:<port>`: the Service's address for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The JWKS URL a verifier in the cluster would use.
    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.url())
    }

    /// The current endpoints, as this proxy sees them.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.state.endpoints.endpoints()
    }

    /// Where the proxy forwards to.
    pub fn endpoint_source(&self) -> Arc<dyn EndpointSource> {
        self.state.endpoints.clone()
    }

    /// Every JWKS served so far, oldest first.
    pub fn jwks_served(&self) -> Vec<JwksServed> {
        self.state.jwks.lock().clone()
    }

    /// The kids of the latest JWKS served, if any was.
    pub fn last_jwks_kids(&self) -> Option<Vec<String>> {
        self.state.jwks.lock().last().map(|j| j.kids.clone())
    }

    /// Resets the next `n` connections instead of forwarding them: what a
    /// client sees when kube-proxy still sends it to a pod that was just killed.
    pub fn reset_next_connections(&self, n: usize) {
        self.state.reset_next.fetch_add(n, Ordering::SeqCst);
    }

    /// Every connection reset so far (injected or refused by the endpoint).
    pub fn resets(&self) -> Vec<Reset> {
        self.state.resets.lock().clone()
    }
}

/// Resolves once the proxy is stopped.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn reset(state: &ProxyState, client: TcpStream, endpoint: Option<SocketAddr>, why: String) {
    tracing::debug!(?endpoint, %why, "service proxy resets a connection");
    // Linger 0: close with RST, as a connection to a dead pod ends. (The
    // deprecation is about blocking on drop, which a zero linger never does.)
    #[allow(deprecated)]
    let _ = client.set_linger(Some(Duration::ZERO));
    drop(client);
    state.resets.lock().push(Reset {
        at: Instant::now(),
        endpoint,
        why,
    });
}

/// One client connection, pinned to one endpoint for its whole life.
async fn connection(state: Arc<ProxyState>, client: TcpStream, stop: watch::Receiver<bool>) {
    let injected = state
        .reset_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if injected {
        return reset(&state, client, None, "injected".into());
    }
    let eps = state.endpoints.endpoints();
    if eps.is_empty() {
        return reset(&state, client, None, "no endpoints".into());
    }
    let ep = eps[rand::random_range(0..eps.len())];
    let backend = match connect_from(state.source, ep).await {
        Ok(b) => b,
        Err(e) => return reset(&state, client, Some(ep), format!("connect: {e}")),
    };
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    let Ok((sender, backend_conn)) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(backend)).await
    else {
        return reset(&state, client, Some(ep), "handshake".into());
    };
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let svc_state = state.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let sender = sender.clone();
        let state = svc_state.clone();
        async move { forward(&state, &sender, ep, req).await }
    });
    let server = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(client), svc);
    let stopped = stopped(stop);
    tokio::pin!(server);
    tokio::pin!(backend_conn);
    tokio::pin!(stopped);
    let mut backend_open = true;
    loop {
        tokio::select! {
            _ = &mut server => return,
            // The pod closed its side (shutdown, exit): close the client's too,
            // after the request in flight, as a TCP passthrough would.
            _ = &mut backend_conn, if backend_open => {
                backend_open = false;
                server.as_mut().graceful_shutdown();
            }
            _ = &mut stopped => return,
        }
    }
}

async fn forward(
    state: &ProxyState,
    sender: &tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    ep: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let jwks = parts.uri.path() == "/.well-known/jwks.json";
    let resp = {
        let mut sender = sender.lock().await;
        sender.ready().await?;
        sender
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await?
    };
    let (mut parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    if jwks && parts.status == StatusCode::OK {
        let kids = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("keys").and_then(Value::as_array).cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|k| k.get("kid").and_then(Value::as_str).map(str::to_string))
            .collect();
        state.jwks.lock().push(JwksServed {
            at: Instant::now(),
            endpoint: ep,
            kids,
        });
    }
    if let Ok(v) = HeaderValue::from_str(&ep.to_string()) {
        parts.headers.insert(ENDPOINT_HEADER, v);
    }
    Ok(Response::from_parts(parts, Full::new(bytes)))
}
