//! The hardened listener in-process, with routers built for the purpose: the
//! listener's own 408 for any handler, 503 at the cap when every connection
//! is busy, eviction of a connection without a request, and a drain that half-sent
//! headers do not hold up.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use common::{RawResponse, read_response};
use macp_auth_service::listener::{self, ConnectionMetrics, Limits};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

struct Listening {
    addr: SocketAddr,
    metrics: ConnectionMetrics,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(router: Router, limits: Limits) -> Listening {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let metrics = ConnectionMetrics::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(listener::serve(
        socket,
        router,
        limits,
        metrics.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    Listening {
        addr,
        metrics,
        stop,
        task,
    }
}

fn limits(request_timeout: Duration, max_connections: usize) -> Limits {
    Limits {
        header_timeout: Duration::from_secs(10),
        request_timeout,
        max_connections,
    }
}

fn metrics_text(metrics: &ConnectionMetrics) -> String {
    let mut registry = Registry::with_prefix("t");
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

async fn send(stream: &mut TcpStream, path: &str) -> RawResponse {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_response(stream).await
}

/// True when the peer has closed `stream` (EOF or reset) within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read).await.is_ok()
}

#[tokio::test]
async fn a_handler_that_overruns_the_request_timeout_gets_the_listeners_json_408() {
    let router = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        }),
    );
    let served = start(router, limits(Duration::from_secs(1), 16)).await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    let started = Instant::now();
    let response = send(&mut stream, "/slow").await;
    assert_eq!(response.status, 408);
    assert_eq!(response.json()["error"], "request timeout");
    assert_eq!(response.header("connection").as_deref(), Some("close"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(closed_within(&mut stream, Duration::from_secs(1)).await);
    let text = metrics_text(&served.metrics);
    assert!(
        text.contains(r#"t_connections_timed_out_total{stage="request"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn at_the_cap_with_every_connection_busy_a_new_one_gets_503_and_is_closed() {
    let release = Arc::new(Notify::new());
    let held = release.clone();
    let router = Router::new()
        .route(
            "/hold",
            get(move || {
                let held = held.clone();
                async move {
                    held.notified().await;
                    "done"
                }
            }),
        )
        .route("/ok", get(|| async { "ok" }));
    let served = start(router, limits(Duration::from_secs(30), 2)).await;
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(served.addr).await.unwrap();
        stream
            .write_all(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        busy.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut third = TcpStream::connect(served.addr).await.unwrap();
    let response = read_response(&mut third).await;
    assert_eq!(response.status, 503);
    assert_eq!(response.json()["error"], "too many connections");
    assert!(closed_within(&mut third, Duration::from_secs(1)).await);
    let text = metrics_text(&served.metrics);
    assert!(text.contains("t_connections_shed_total 1"), "{text}");
    assert!(text.contains("t_connections_evicted_total 0"), "{text}");

    // The busy requests were not cut: they finish once released.
    release.notify_waiters();
    for stream in &mut busy {
        assert_eq!(read_response(stream).await.status, 200);
    }
}

#[tokio::test]
async fn at_the_cap_the_oldest_connection_without_a_request_makes_room() {
    let router = Router::new().route("/ok", get(|| async { "ok" }));
    let served = start(router, limits(Duration::from_secs(30), 2)).await;
    // A keep-alive client that made a request, then one that never finishes
    // its headers: the second is evicted first, although it is younger.
    let mut keep = TcpStream::connect(served.addr).await.unwrap();
    assert_eq!(send(&mut keep, "/ok").await.status, 200);
    let mut half = TcpStream::connect(served.addr).await.unwrap();
    half.write_all(b"GET /ok HTTP/1.1\r\nHost: ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut fresh = TcpStream::connect(served.addr).await.unwrap();
    assert_eq!(send(&mut fresh, "/ok").await.status, 200);
    assert!(closed_within(&mut half, Duration::from_secs(1)).await);
    assert_eq!(send(&mut keep, "/ok").await.status, 200);
    let text = metrics_text(&served.metrics);
    assert!(text.contains("t_connections_evicted_total 1"), "{text}");
    assert!(text.contains("t_connections_shed_total 0"), "{text}");
    assert!(text.contains("t_connections_open 2"), "{text}");
}

#[tokio::test]
async fn shutdown_closes_half_sent_headers_at_once_and_finishes_requests_in_flight() {
    let router = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            "slow"
        }),
    );
    let served = start(router, limits(Duration::from_secs(30), 16)).await;
    let mut half = TcpStream::connect(served.addr).await.unwrap();
    half.write_all(b"GET /slow HTTP/1.1\r\nHost: ")
        .await
        .unwrap();
    let mut in_flight = TcpStream::connect(served.addr).await.unwrap();
    in_flight
        .write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let stopping = Instant::now();
    served.stop.send(()).unwrap();
    assert!(closed_within(&mut half, Duration::from_millis(300)).await);
    let response = read_response(&mut in_flight).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection").as_deref(), Some("close"));
    served.task.await.unwrap().unwrap();
    // Well under the 10 s header timeout that would otherwise hold it up.
    assert!(stopping.elapsed() < Duration::from_secs(2));
    assert!(TcpStream::connect(served.addr).await.is_err());
}
