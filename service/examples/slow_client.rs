//! The slow-client attack for `scripts/load-fault-test`: `--connections`
//! tasks each open a connection, send request headers that never finish, and
//! reconnect as soon as the server closes it, for `--seconds`. Prints one JSON
//! line: connections opened, closed by the server, connect errors, and the
//! most held open at once.
//!
//! `slow_client --addr 127.0.0.1:3299 --connections 3000 --seconds 12`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Default)]
struct Counts {
    opened: AtomicU64,
    closed_by_server: AtomicU64,
    connect_errors: AtomicU64,
    open: AtomicU64,
    max_open: AtomicU64,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Holds one half-sent request until the server closes it or time is up.
async fn hold(addr: SocketAddr, id: u64, deadline: tokio::time::Instant, counts: &Counts) {
    let connected = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await;
    let Ok(Ok(mut stream)) = connected else {
        counts.connect_errors.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
        return;
    };
    counts.opened.fetch_add(1, Ordering::Relaxed);
    let open = counts.open.fetch_add(1, Ordering::Relaxed) + 1;
    counts.max_open.fetch_max(open, Ordering::Relaxed);
    let partial = format!("POST /tokens HTTP/1.1\r\nHost: slow-{id}\r\nX-Padding: ");
    let closed = async {
        if stream.write_all(partial.as_bytes()).await.is_err() {
            return;
        }
        let mut buf = [0u8; 256];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    if tokio::time::timeout_at(deadline, closed).await.is_ok() {
        counts.closed_by_server.fetch_add(1, Ordering::Relaxed);
    }
    counts.open.fetch_sub(1, Ordering::Relaxed);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = arg(&args, "--addr").ok_or("--addr required")?.parse()?;
    let connections: u64 = arg(&args, "--connections").map_or(Ok(3000), |s| s.parse())?;
    let seconds: u64 = arg(&args, "--seconds").map_or(Ok(10), |s| s.parse())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for id in 0..connections {
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < deadline {
                hold(addr, id, deadline, &counts).await;
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "connections": connections,
            "opened": c(&counts.opened),
            "closed_by_server": c(&counts.closed_by_server),
            "connect_errors": c(&counts.connect_errors),
            "max_open": c(&counts.max_open),
        })
    );
    Ok(())
}
