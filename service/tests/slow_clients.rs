//! Slow and abusive clients against the compiled binary, black-box, and the
//! shutdown delay with its `/readyz`: the service as a
//! process with a given descriptor limit, attacked over loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{RawResponse, ec_jwk, raw_request, read_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const BIN: &str = env!("CARGO_BIN_EXE_macp-auth-service");
const MINT_BODY: &str = r#"{"sender":"agent://legit","ttl_seconds":60}"#;

struct Proc {
    child: Child,
    addr: SocketAddr,
    stderr: tempfile::NamedTempFile,
    _stdout: BufReader<ChildStdout>,
}

fn command(
    vars: &[(&str, &str)],
    nofile: Option<(u64, u64)>,
) -> (Command, tempfile::NamedTempFile) {
    let jwk = ec_jwk("slow-clients").to_string();
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PORT", "0")
        .env("MACP_AUTH_BIND", "127.0.0.1")
        .env("RUST_LOG", "info")
        .env("MACP_AUTH_SIGNING_ALG", "ES256")
        .env("MACP_AUTH_SIGNING_KEY_JSON", jwk)
        .stderr(Stdio::from(stderr.reopen().unwrap()));
    for (k, v) in vars {
        cmd.env(k, v);
    }
    if let Some((soft, hard)) = nofile {
        // SAFETY: setrlimit(2) is async-signal-safe and touches no memory
        // shared with the parent.
        unsafe {
            cmd.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard));
        }
    }
    (cmd, stderr)
}

impl Proc {
    fn start(vars: &[(&str, &str)], nofile: Option<(u64, u64)>) -> Proc {
        let (mut cmd, stderr) = command(vars, nofile);
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        assert!(
            stdout.read_line(&mut first).unwrap() > 0,
            "stdout closed early"
        );
        let port: u16 = first
            .trim_end()
            .strip_prefix("[auth-service] listening on port ")
            .unwrap()
            .parse()
            .unwrap();
        for _ in 0..4 {
            stdout.read_line(&mut String::new()).unwrap();
        }
        Proc {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stderr,
            _stdout: stdout,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap()
    }

    /// Stderr once it holds the limits line (logged just after the stdout
    /// fingerprint, so possibly not yet there when [`Proc::start`] returns).
    fn stderr_with_limits(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stderr = self.stderr();
            if stderr.contains("RLIMIT_NOFILE") || Instant::now() > deadline {
                return stderr;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sigterm(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    async fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "service did not exit in {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    raw_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close"),
        b"",
    )
    .await
}

async fn mint(addr: SocketAddr) -> RawResponse {
    raw_request(
        addr,
        &format!(
            "POST /tokens HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}",
            MINT_BODY.len()
        ),
        MINT_BODY.as_bytes(),
    )
    .await
}

/// One GET on an open keep-alive connection.
async fn get_on(stream: &mut TcpStream, path: &str) -> RawResponse {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_response(stream).await
}

/// The value of one sample line of `/metrics`.
async fn metric(addr: SocketAddr, series: &str) -> u64 {
    let text = String::from_utf8(get(addr, "/metrics").await.body).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} missing in {text}"))
        .parse()
        .unwrap()
}

/// Waits until the peer closes `stream` (EOF or reset), discarding what it
/// sends; a connection still open after `within` fails the test, since every
/// close these tests expect is a bound the service promises.
async fn until_closed(stream: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 512];
    let closed = async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    assert!(
        tokio::time::timeout(within, closed).await.is_ok(),
        "the service left the connection open for {within:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_half_sent_headers_under_a_descriptor_limit_of_1024() {
    const ATTACKERS: usize = 3000;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(4);
    let svc = Proc::start(
        &[("MACP_AUTH_HEADER_TIMEOUT_SECONDS", "4")],
        Some((1024, 1024)),
    );
    let addr = svc.addr;

    // A well-behaved keep-alive client, connected before the attack.
    let mut keep = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get_on(&mut keep, "/healthz").await.status, 200);

    // The attack: connections whose request headers never finish, opened in
    // batches of 500 so that the test measures the service, not the
    // kernel's handshake retries when its accept queue overflows.
    let sent = Arc::new(AtomicUsize::new(0));
    let mut attackers = JoinSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..ATTACKERS {
        let counter = sent.clone();
        attackers.spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let partial = format!("GET /healthz HTTP/1.1\r\nHost: attacker-{i}\r\n");
            let wrote = stream.write_all(partial.as_bytes()).await;
            let at = Instant::now();
            counter.fetch_add(1, Ordering::SeqCst);
            if wrote.is_ok() {
                until_closed(&mut stream, Duration::from_secs(15)).await;
            }
            at.elapsed()
        });
        if (i + 1) % 500 == 0 {
            while sent.load(Ordering::SeqCst) <= i {
                assert!(Instant::now() < deadline, "attack connections not all sent");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    // While the cap is full of half-sent headers, real clients get through:
    // a new connection's /healthz and mint, and the keep-alive client.
    let open = metric(addr, "macp_auth_connections_open").await;
    assert!(
        open >= 900,
        "the attack should fill the cap of 960, {open} open"
    );
    for _ in 0..3 {
        assert_eq!(get(addr, "/healthz").await.status, 200);
        let minted = mint(addr).await;
        assert_eq!(minted.status, 200, "{:?}", minted.json());
        assert_eq!(minted.json()["sender"], "agent://legit");
        assert_eq!(get_on(&mut keep, "/healthz").await.status, 200);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Every attack connection is closed within the header timeout plus one
    // second of sending its partial headers (evicted or shed ones sooner).
    let mut slowest = Duration::ZERO;
    while let Some(closed_after) = attackers.join_next().await {
        slowest = slowest.max(closed_after.unwrap());
    }
    assert!(
        slowest <= HEADER_TIMEOUT + Duration::from_secs(1),
        "an attack connection stayed open {slowest:?}"
    );

    // Each attack connection was shed, evicted or timed out, and accept never failed.
    let shed = metric(addr, "macp_auth_connections_shed_total").await;
    let evicted = metric(addr, "macp_auth_connections_evicted_total").await;
    let timed_out = metric(
        addr,
        r#"macp_auth_connections_timed_out_total{stage="headers"}"#,
    )
    .await;
    assert!(
        shed + evicted + timed_out >= ATTACKERS as u64,
        "shed {shed} + evicted {evicted} + timed out {timed_out} < {ATTACKERS}"
    );
    assert!(evicted > 0 && timed_out > 0, "{evicted} {timed_out}");
    assert_eq!(metric(addr, "macp_auth_accept_errors_total").await, 0);
    let stderr = svc.stderr();
    assert!(
        stderr.contains("soft_before=1024 soft=1024 hard=1024 max_connections=960"),
        "{stderr}"
    );
    assert!(!stderr.contains("accept failed"), "{stderr}");
}

#[tokio::test]
async fn the_soft_descriptor_limit_is_raised_to_the_hard_one_and_logged_once() {
    let svc = Proc::start(&[], Some((512, 4096)));
    assert_eq!(get(svc.addr, "/healthz").await.status, 200);
    let stderr = svc.stderr_with_limits();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("RLIMIT_NOFILE"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("soft_before=512 soft=4096 hard=4096 max_connections=4032"),
        "{stderr}"
    );
}

#[test]
fn a_connection_cap_the_descriptor_limit_cannot_hold_is_fatal() {
    for (value, nofile) in [("961", 1024), ("0", 4096)] {
        let (mut cmd, stderr) = command(
            &[("MACP_AUTH_MAX_CONNECTIONS", value)],
            Some((nofile, nofile)),
        );
        let output = cmd.output().unwrap();
        let stderr = std::fs::read_to_string(stderr.path()).unwrap();
        assert_eq!(output.status.code(), Some(1), "{value}: {stderr}");
        assert!(output.stdout.is_empty());
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("MACP_AUTH_MAX_CONNECTIONS"),
            "{value}: {stderr}"
        );
    }
    // 960 is exactly what a limit of 1024 leaves.
    let svc = Proc::start(&[("MACP_AUTH_MAX_CONNECTIONS", "960")], Some((1024, 1024)));
    let stderr = svc.stderr_with_limits();
    assert!(stderr.contains("max_connections=960"), "{stderr}");
}

#[tokio::test]
async fn a_body_dribbled_one_byte_a_second_is_cut_off_at_the_request_timeout() {
    let svc = Proc::start(&[("MACP_AUTH_REQUEST_TIMEOUT_SECONDS", "3")], None);
    let mut stream = TcpStream::connect(svc.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /tokens HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                MINT_BODY.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let dribble = tokio::spawn(async move {
        for byte in MINT_BODY.bytes() {
            if writer.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let closed_after = started.elapsed();
    dribble.abort();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.ends_with(r#"{"error":"request timeout"}"#), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/json")
    );
    assert!(
        closed_after >= Duration::from_secs(3) && closed_after < Duration::from_secs(4),
        "answered and closed after {closed_after:?}, not at the 3 s timeout"
    );
    assert_eq!(
        metric(
            svc.addr,
            r#"macp_auth_mints_total{outcome="request_timeout",alg="ES256"}"#
        )
        .await,
        1
    );
    assert_eq!(
        metric(
            svc.addr,
            r#"macp_auth_connections_timed_out_total{stage="request"}"#
        )
        .await,
        1
    );
}

#[tokio::test]
async fn keep_alive_clients_that_behave_are_unaffected_and_idle_ones_are_closed() {
    let svc = Proc::start(&[("MACP_AUTH_HEADER_TIMEOUT_SECONDS", "2")], None);
    let mut stream = TcpStream::connect(svc.addr).await.unwrap();
    // Five requests a second apart on one connection outlast the 2 s timeout
    // together, but each wait is shorter than it.
    for _ in 0..5 {
        let response = get_on(&mut stream, "/healthz").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("connection"), None, "keep-alive stays on");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(get_on(&mut stream, "/readyz").await.status, 200);
    // Then the client idles: the connection is closed after the timeout.
    let idle_since = Instant::now();
    until_closed(&mut stream, Duration::from_secs(15)).await;
    let idle = idle_since.elapsed();
    assert!(
        idle >= Duration::from_secs(2) && idle <= Duration::from_secs(3),
        "idle keep-alive connection closed after {idle:?}"
    );
    assert_eq!(
        metric(
            svc.addr,
            r#"macp_auth_connections_timed_out_total{stage="headers"}"#
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delay_keeps_serving_with_readyz_at_503_then_drains_and_exits_0() {
    const DELAY: Duration = Duration::from_secs(3);
    let mut svc = Proc::start(&[("MACP_AUTH_SHUTDOWN_DELAY_SECONDS", "3")], None);
    let addr = svc.addr;
    let ready = get(addr, "/readyz").await;
    assert_eq!(
        (ready.status, ready.json()["ready"].as_bool()),
        (200, Some(true))
    );
    let mut keep = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get_on(&mut keep, "/healthz").await.status, 200);

    svc.sigterm();
    let signalled = Instant::now();
    // Readiness fails at once; liveness, minting on new connections and the
    // open keep-alive connection carry on for the whole delay.
    let deadline = signalled + Duration::from_secs(1);
    loop {
        let ready = get(addr, "/readyz").await;
        if ready.status == 503 {
            assert_eq!(ready.json()["error"], "shutting down");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still {}", ready.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while signalled.elapsed() < DELAY - Duration::from_millis(700) {
        assert_eq!(get(addr, "/healthz").await.status, 200);
        assert_eq!(get(addr, "/readyz").await.status, 503);
        let minted = mint(addr).await;
        assert_eq!(minted.status, 200, "{:?}", minted.json());
        assert_eq!(get_on(&mut keep, "/healthz").await.status, 200);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A mint that starts inside the delay and ends after it is drained.
    let mut late = TcpStream::connect(addr).await.unwrap();
    let (first, rest) = MINT_BODY.split_at(10);
    late.write_all(
        format!(
            "POST /tokens HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
            MINT_BODY.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(DELAY + Duration::from_millis(500) - signalled.elapsed()).await;
    // Past the delay: no new connections...
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after the delay"
    );
    // ...the idle keep-alive connection is closed within a second of the
    // drain's start (the end of the delay), the in-flight one finishes.
    until_closed(&mut keep, Duration::from_secs(15)).await;
    let closed_after_drain = signalled.elapsed().saturating_sub(DELAY);
    assert!(
        closed_after_drain <= Duration::from_secs(1),
        "the idle keep-alive connection closed {closed_after_drain:?} after the drain began"
    );
    late.write_all(rest.as_bytes()).await.unwrap();
    let response = read_response(&mut late).await;
    assert_eq!(response.status, 200, "{:?}", response.json());
    let status = svc.wait(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", svc.stderr());
    assert!(signalled.elapsed() >= DELAY);
    let stderr = svc.stderr();
    assert!(
        stderr.contains("serving on for the shutdown delay"),
        "{stderr}"
    );
    assert!(stderr.contains("draining in-flight requests"), "{stderr}");
}
