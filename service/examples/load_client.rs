//! Sustained minting for `scripts/load-fault-test`: `--concurrency` workers
//! POST /tokens with a bearer token for `--seconds`, then one JSON line with
//! every answer classified and the latency percentiles of all requests
//! (answered or failed). Connection errors are expected while the service
//! is killed; any 5xx or non-JSON answer is a failure.
//!
//! `load_client --url http://127.0.0.1:3299 --token-file F --seconds 20 --concurrency 8`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    client_4xx: AtomicU64,
    server_5xx: AtomicU64,
    non_json: AtomicU64,
    conn_refused: AtomicU64,
    conn_reset: AtomicU64,
    timeout: AtomicU64,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The `q` quantile (0..=1) of sorted `values`, in milliseconds.
fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    (sorted[index].as_secs_f64() * 10_000.0).round() / 10.0
}

async fn one(client: &reqwest::Client, url: &str, token: &str, counts: &Counts, i: u64) {
    let body = format!(r#"{{"sender":"agent://load-{i}","scopes":{{"n":{i}}},"ttl_seconds":60}}"#);
    let result = client
        .post(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(body)
        .send()
        .await;
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            let counter = if e.is_timeout() {
                &counts.timeout
            } else if e.is_connect() {
                &counts.conn_refused
            } else {
                &counts.conn_reset
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let status = response.status();
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(_) => {
            // Headers arrived, the body did not: the connection died mid-answer.
            counts.conn_reset.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if serde_json::from_slice::<serde_json::Value>(&bytes).is_err() {
        counts.non_json.fetch_add(1, Ordering::Relaxed);
    } else if status.is_server_error() {
        counts.server_5xx.fetch_add(1, Ordering::Relaxed);
    } else if status.is_client_error() {
        counts.client_4xx.fetch_add(1, Ordering::Relaxed);
    } else {
        counts.ok.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let base = arg(&args, "--url").ok_or("--url required")?;
    let token_file = arg(&args, "--token-file").ok_or("--token-file required")?;
    let token = std::fs::read_to_string(token_file)?.trim().to_string();
    let seconds: u64 = arg(&args, "--seconds").map_or(Ok(20), |s| s.parse())?;
    let concurrency: u64 = arg(&args, "--concurrency").map_or(Ok(8), |s| s.parse())?;
    let url = Arc::new(format!("{base}/tokens"));
    let token = Arc::new(token);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (client, url, token, counts) =
            (client.clone(), url.clone(), token.clone(), counts.clone());
        workers.push(tokio::spawn(async move {
            let mut i = w;
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let before = counts.conn_refused.load(Ordering::Relaxed);
                let sent = Instant::now();
                one(&client, &url, &token, &counts, i).await;
                if counts.conn_refused.load(Ordering::Relaxed) != before {
                    // Nothing listening: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                } else {
                    latencies.push(sent.elapsed());
                }
                i += concurrency;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await?);
    }
    latencies.sort_unstable();
    let elapsed = started.elapsed().as_secs_f64();
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "seconds": (elapsed * 10.0).round() / 10.0,
            "ok": c(&counts.ok),
            "ok_per_second": (c(&counts.ok) as f64 / elapsed).round(),
            "4xx": c(&counts.client_4xx),
            "5xx": c(&counts.server_5xx),
            "non_json": c(&counts.non_json),
            "conn_refused": c(&counts.conn_refused),
            "conn_reset": c(&counts.conn_reset),
            "timeout": c(&counts.timeout),
            "errors": c(&counts.client_4xx) + c(&counts.server_5xx) + c(&counts.non_json)
                + c(&counts.conn_refused) + c(&counts.conn_reset) + c(&counts.timeout),
            "p50_ms": quantile_ms(&latencies, 0.50),
            "p99_ms": quantile_ms(&latencies, 0.99),
            "max_ms": quantile_ms(&latencies, 1.0),
        })
    );
    Ok(())
}
