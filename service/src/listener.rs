//! The hardened HTTP/1.1 listener: serves an axum `Router` so that slow or
//! abusive clients cannot take the process down. The token service and the
//! operator's `/healthz`-`/readyz`-`/metrics` endpoint both serve through it.
//!
//! * Request headers must be complete within [`Limits::header_timeout`]; the
//!   same timer runs while a keep-alive connection waits for its next request,
//!   so it is also the idle keep-alive timeout.
//! * A request must be answered within [`Limits::request_timeout`] from its
//!   headers: a handler still waiting for the body then gives way to a JSON
//!   408, after which the connection is closed (its body was not read).
//! * At most [`Limits::max_connections`] connections are open. At the cap, the
//!   oldest connection with no request in flight (half-sent headers, or idle
//!   keep-alive) is closed to make room; when every connection has a request
//!   in flight, the new one gets a 503 and is closed. The cap stays below the
//!   descriptor limit, so `accept` never runs into EMFILE because of clients.
//! * If `accept` fails anyway, the loop backs off (10 ms doubling to 1 s) and
//!   logs once per [`ACCEPT_ERROR_LOG_INTERVAL`] instead of spinning.
//!
//! Shutdown: stop accepting, close connections with no request in flight, let
//! in-flight requests finish (their connections close after the answer), and
//! return once every connection is gone.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

/// `MACP_AUTH_HEADER_TIMEOUT_SECONDS` default: a client on a bad mobile link
/// sends a few hundred bytes of headers in well under a second; ten leaves
/// room for retransmits and still frees a slot ten times faster than the
/// reference's 60 s.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// `MACP_AUTH_REQUEST_TIMEOUT_SECONDS` default: the largest mint body is
/// 100 KiB, which even a 64 kbit/s link delivers in about 13 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Descriptors kept for everything but client connections: stdio, the
/// listener, the runtime's epoll and eventfds, the key and caller-token files
/// being re-read, the audit writer. An idle service holds 10 (measured).
pub const RESERVED_DESCRIPTORS: u64 = 64;
/// Upper bound of the default connection cap. At what an open connection
/// costs in memory (docs/performance.md, "Memory per open connection"), a
/// full default cap stays near 64 MiB however high the descriptor limit is.
pub const DEFAULT_MAX_CONNECTIONS_CEILING: usize = 4096;
/// How long the accept loop waits for an evicted connection to give back its
/// slot before it sheds the new one instead: normally microseconds, generous
/// for a CPU-starved process. The loop itself waits (rather than a task per
/// new connection) so that no other new connection can take the freed slot.
const EVICTION_WAIT: Duration = Duration::from_millis(250);
/// Handlers that watch [`RequestDeadline`] answer on their own at the
/// deadline; the listener's own 408 comes this much later, as a backstop.
const BACKSTOP_GRACE: Duration = Duration::from_millis(250);
/// At most one log line per this interval while `accept` keeps failing.
pub const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

const TIMEOUT_BODY: &[u8] = br#"{"error":"request timeout"}"#;
const SHED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 30\r\n\r\n{\"error\":\"too many connections\"}";

/// The limits one listener enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// The default timeouts and a cap sized from the soft descriptor limit.
    pub fn defaults(nofile: u64) -> Self {
        Limits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_connections: default_max_connections(nofile),
        }
    }
}

/// The default connection cap for a soft descriptor limit of `nofile`:
/// [`max_connections_allowed`], at most [`DEFAULT_MAX_CONNECTIONS_CEILING`].
pub fn default_max_connections(nofile: u64) -> usize {
    max_connections_allowed(nofile).min(DEFAULT_MAX_CONNECTIONS_CEILING)
}

/// The most connections a soft descriptor limit of `nofile` allows without
/// risking EMFILE: everything but [`RESERVED_DESCRIPTORS`] (half of a tiny
/// limit), at least one. An explicit cap above it is a configuration error.
pub fn max_connections_allowed(nofile: u64) -> usize {
    let usable = if nofile > 2 * RESERVED_DESCRIPTORS {
        nofile - RESERVED_DESCRIPTORS
    } else {
        nofile / 2
    };
    usize::try_from(usable).unwrap_or(usize::MAX).max(1)
}

/// `RLIMIT_NOFILE` before and after [`raise_nofile_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (what Node does at
/// start): container runtimes hand out a soft limit of 1024 and a far higher
/// hard one.
pub fn raise_nofile_limit() -> std::io::Result<DescriptorLimit> {
    let (soft_before, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let soft = rlimit::increase_nofile_limit(hard)?;
    Ok(DescriptorLimit {
        soft_before,
        soft,
        hard,
    })
}

/// The soft `RLIMIT_NOFILE` now (1024, the usual default, if unreadable).
pub fn current_nofile_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

/// When a request must be answered by. The listener puts it in every
/// request's extensions; handlers that read a body stop at it.
#[derive(Clone, Copy, Debug)]
pub struct RequestDeadline(pub Instant);

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum Stage {
    headers,
    request,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: Stage,
}

/// The listener's counters; [`ConnectionMetrics::register`] adds them to a
/// registry as `<prefix>_connections_*` and `<prefix>_accept_errors_total`.
#[derive(Clone, Debug)]
pub struct ConnectionMetrics {
    open: Gauge,
    shed: Counter,
    evicted: Counter,
    timed_out: Family<StageLabel, Counter>,
    /// The `timed_out` series, resolved once (both exist from the start).
    header_timeouts: Counter,
    request_timeouts: Counter,
    accept_errors: Counter,
}

impl Default for ConnectionMetrics {
    fn default() -> Self {
        let timed_out = Family::<StageLabel, Counter>::default();
        let series = |stage| timed_out.get_or_create(&StageLabel { stage }).clone();
        let header_timeouts = series(Stage::headers);
        let request_timeouts = series(Stage::request);
        ConnectionMetrics {
            open: Gauge::default(),
            shed: Counter::default(),
            evicted: Counter::default(),
            timed_out,
            header_timeouts,
            request_timeouts,
            accept_errors: Counter::default(),
        }
    }
}

impl ConnectionMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_open",
            "Client connections open now",
            self.open.clone(),
        );
        registry.register(
            "connections_shed",
            "New connections refused with 503 at the connection cap (every open connection had a request in flight)",
            self.shed.clone(),
        );
        registry.register(
            "connections_evicted",
            "Connections without a request in flight closed at the connection cap to make room for a new one",
            self.evicted.clone(),
        );
        registry.register(
            "connections_timed_out",
            "Connections closed for a timeout: headers (incomplete, or idle keep-alive, past the header timeout) or request (not complete within the request timeout, answered 408)",
            self.timed_out.clone(),
        );
        registry.register(
            "accept_errors",
            "accept() failures (each one followed by a backoff)",
            self.accept_errors.clone(),
        );
    }
}

/// Exponential backoff after failed `accept`s, and when to log about them.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u32,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// Records a failure at `now`: the pause before the next `accept`, and
    /// `Some(failures not logged since the last line)` when this one is logged.
    pub fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        let delay = Self::FIRST
            .saturating_mul(1u32 << self.failures.min(10))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        let due = self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_ERROR_LOG_INTERVAL);
        if due {
            self.last_log = Some(now);
            let suppressed = std::mem::take(&mut self.suppressed);
            (delay, Some(suppressed))
        } else {
            self.suppressed += 1;
            (delay, None)
        }
    }

    /// An `accept` succeeded: the next failure starts from the first step.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// One open connection as the cap sees it.
#[derive(Debug, Default)]
struct Slot {
    /// Requests whose headers arrived and whose answer is not complete.
    in_flight: AtomicUsize,
    /// Whether a request's headers ever arrived on this connection.
    served: AtomicBool,
    /// Asks the connection to close (at the cap, or at shutdown).
    close: Notify,
}

/// Open connections in accept order, for choosing whom to evict.
#[derive(Debug, Default)]
struct Tracker {
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Slot>>>,
}

impl Tracker {
    fn add(&self) -> (u64, Arc<Slot>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        self.open.lock().insert(id, slot.clone());
        (id, slot)
    }

    fn remove(&self, id: u64) {
        self.open.lock().remove(&id);
    }

    /// Asks the oldest connection without a request in flight to close,
    /// preferring one that never completed a request's headers (a client that
    /// already made requests and now idles on keep-alive is likelier to be
    /// real); false when every connection has a request in flight.
    fn evict_oldest_idle(&self) -> bool {
        let mut open = self.open.lock();
        let idle = |slot: &Arc<Slot>| slot.in_flight.load(Ordering::SeqCst) == 0;
        let victim = open
            .iter()
            .find(|(_, slot)| idle(slot) && !slot.served.load(Ordering::SeqCst))
            .or_else(|| open.iter().find(|(_, slot)| idle(slot)))
            .map(|(id, _)| *id);
        match victim.and_then(|id| open.remove(&id)) {
            Some(slot) => {
                slot.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Decrements a slot's in-flight count when a request's answer is done.
struct InFlight(Arc<Slot>);

impl InFlight {
    fn begin(slot: &Arc<Slot>) -> Self {
        slot.in_flight.fetch_add(1, Ordering::SeqCst);
        slot.served.store(true, Ordering::SeqCst);
        InFlight(slot.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Everything a connection task shares with the accept loop.
#[derive(Clone)]
struct Shared {
    router: Router,
    limits: Limits,
    metrics: ConnectionMetrics,
    tracker: Arc<Tracker>,
}

/// Serves `router` on `listener` under `limits` until `shutdown` resolves,
/// then drains (see the module docs) and returns.
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: ConnectionMetrics,
    shutdown: F,
) -> std::io::Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let max = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max));
    let shared = Shared {
        router,
        limits,
        metrics,
        tracker: Arc::new(Tracker::default()),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut backoff = AcceptBackoff::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(e) => {
                shared.metrics.accept_errors.inc();
                let (delay, log) = backoff.failed(Instant::now());
                if let Some(suppressed) = log {
                    tracing::warn!(
                        error = %e,
                        suppressed,
                        backoff_ms = delay.as_millis() as u64,
                        "accept failed; backing off"
                    );
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        let Some(permit) = admit(&permits, &shared.tracker).await else {
            shared.metrics.shed.inc();
            // Best effort: a client that already sent its request may see a
            // reset instead, which is still a quick refusal.
            let _ = stream.try_write(SHED_RESPONSE);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            shared.clone(),
            permit,
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection task holds a permit until its socket is closed.
    let _ = permits
        .acquire_many(u32::try_from(max).unwrap_or(u32::MAX))
        .await;
    Ok(())
}

/// A slot for a new connection: free, or freed by closing the oldest
/// connection without a request in flight.
async fn admit(permits: &Arc<Semaphore>, tracker: &Tracker) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = permits.clone().try_acquire_owned() {
        return Some(permit);
    }
    if !tracker.evict_oldest_idle() {
        return None;
    }
    tokio::time::timeout(EVICTION_WAIT, permits.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Shared,
    permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let metrics = shared.metrics.clone();
    metrics.open.inc();
    let (id, slot) = shared.tracker.add();
    let service_slot = slot.clone();
    let service_shared = shared.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        handle(
            request,
            peer,
            InFlight::begin(&service_slot),
            service_shared.clone(),
        )
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);

    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = slot.close.notified() => {
            if slot.in_flight.load(Ordering::SeqCst) == 0 {
                metrics.evicted.inc();
                Ok(())
            } else {
                // A request began since it was chosen: finish it, then close.
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
            }
        }
        () = stopped(&mut stop) => {
            if slot.in_flight.load(Ordering::SeqCst) == 0 {
                // Nothing in flight (possibly half-sent headers): close now
                // rather than hold the drain up until the header timeout.
                Ok(())
            } else {
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
            }
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics.header_timeouts.inc();
        } else {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    }
    shared.tracker.remove(id);
    metrics.open.dec();
    drop(permit);
}

/// Resolves once the accept loop has stopped (or is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here.
    let _ = stop.wait_for(|stopping| *stopping).await.is_ok();
}

async fn handle(
    mut request: Request<Incoming>,
    peer: SocketAddr,
    in_flight: InFlight,
    shared: Shared,
) -> Result<Response<Body>, Infallible> {
    let deadline = Instant::now() + shared.limits.request_timeout;
    request.extensions_mut().insert(ConnectInfo(peer));
    request.extensions_mut().insert(RequestDeadline(deadline));
    let answer = shared.router.oneshot(request.map(Body::new));
    let response = match tokio::time::timeout_at(deadline + BACKSTOP_GRACE, answer).await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_elapsed) => timeout_response(),
    };
    if response.status() == StatusCode::REQUEST_TIMEOUT {
        shared.metrics.request_timeouts.inc();
    }
    drop(in_flight);
    Ok(response)
}

/// The JSON 408 for a request not complete in time. The connection closes
/// after it: the rest of the body was never read.
pub fn timeout_response() -> Response<Body> {
    let mut response = Response::new(Body::from(TIMEOUT_BODY));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cap_leaves_the_reserve_and_stops_at_the_ceiling() {
        assert_eq!(default_max_connections(1024), 960);
        assert_eq!(default_max_connections(512), 448);
        assert_eq!(default_max_connections(100), 50);
        assert_eq!(default_max_connections(1), 1);
        assert_eq!(default_max_connections(0), 1);
        assert_eq!(
            default_max_connections(1_048_576),
            DEFAULT_MAX_CONNECTIONS_CEILING
        );
        assert_eq!(
            default_max_connections(u64::MAX),
            DEFAULT_MAX_CONNECTIONS_CEILING
        );
        for nofile in [1, 50, 128, 129, 1024, 4160, 5000, 1 << 20] {
            assert!(default_max_connections(nofile) <= max_connections_allowed(nofile));
        }
    }

    #[test]
    fn allowed_cap_is_the_limit_minus_the_reserve() {
        assert_eq!(max_connections_allowed(1024), 960);
        assert_eq!(max_connections_allowed(100), 50);
        assert_eq!(max_connections_allowed(1), 1);
        assert_eq!(max_connections_allowed(1 << 20), (1 << 20) - 64);
    }

    #[test]
    fn accept_backoff_doubles_to_a_second_and_logs_once_per_interval() {
        let mut backoff = AcceptBackoff::default();
        let t0 = Instant::now();
        let ms = |d: Duration| d.as_millis();
        let (d, log) = backoff.failed(t0);
        assert_eq!((ms(d), log), (10, Some(0)));
        let (d, log) = backoff.failed(t0 + Duration::from_millis(10));
        assert_eq!((ms(d), log), (20, None));
        let delays: Vec<u128> = (0..10)
            .map(|i| ms(backoff.failed(t0 + Duration::from_millis(20 + i)).0))
            .collect();
        assert_eq!(
            delays,
            [40, 80, 160, 320, 640, 1000, 1000, 1000, 1000, 1000]
        );
        // Eleven failures went unlogged; the next due line says so.
        let (_, log) = backoff.failed(t0 + ACCEPT_ERROR_LOG_INTERVAL);
        assert_eq!(log, Some(11));
        backoff.succeeded();
        let (d, log) = backoff.failed(t0 + ACCEPT_ERROR_LOG_INTERVAL + Duration::from_secs(1));
        assert_eq!((ms(d), log), (10, None));
    }

    #[test]
    fn eviction_picks_the_oldest_connection_without_a_request_in_flight() {
        let tracker = Tracker::default();
        let (a, slot_a) = tracker.add();
        let (k, slot_k) = tracker.add();
        let (b, slot_b) = tracker.add();
        let (_c, slot_c) = tracker.add();
        let _busy = InFlight::begin(&slot_a);
        // k made a request and now idles on keep-alive.
        drop(InFlight::begin(&slot_k));
        assert!(tracker.evict_oldest_idle());
        assert!(
            !tracker.open.lock().contains_key(&b),
            "b was the oldest that never sent a request"
        );
        assert!(tracker.open.lock().contains_key(&a));
        assert!(tracker.open.lock().contains_key(&k));
        // b was notified (a stored permit), the others were not.
        let notified = |slot: &Arc<Slot>| ready_at_once(slot.close.notified());
        assert!(notified(&slot_b));
        assert!(!notified(&slot_a));
        assert!(!notified(&slot_k));
        assert!(!notified(&slot_c));
        assert!(tracker.evict_oldest_idle(), "c never sent a request");
        assert!(notified(&slot_c));
        assert!(tracker.evict_oldest_idle(), "then the idle keep-alive k");
        assert!(notified(&slot_k));
        assert!(
            !tracker.evict_oldest_idle(),
            "only a is left, and it is busy"
        );
        tracker.remove(a);
        assert!(tracker.open.lock().is_empty());
    }

    /// Whether a `Notified` future is ready on its first poll.
    fn ready_at_once(notified: tokio::sync::futures::Notified<'_>) -> bool {
        let mut notified = std::pin::pin!(notified);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        notified.as_mut().poll(&mut cx).is_ready()
    }
}
