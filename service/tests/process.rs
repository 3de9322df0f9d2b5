//! The compiled binary as a process: fingerprint lines, fatal configuration,
//! signals and the helper subcommands.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{ec_jwk, rsa_jwk};
use macp_auth_service::keys::{Alg, SigningKey};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_macp-auth-service");

fn command(vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PORT", "0")
        .env("MACP_AUTH_BIND", "127.0.0.1")
        .env("RUST_LOG", "info");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

struct Service {
    child: Child,
    lines: Vec<String>,
    addr: SocketAddr,
    _stdout: BufReader<ChildStdout>,
}

impl Service {
    fn start(vars: &[(&str, &str)]) -> Service {
        let mut child = command(vars)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        for _ in 0..5 {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "stdout closed early"
            );
            lines.push(line.trim_end_matches('\n').to_string());
        }
        let port: u16 = lines[0]
            .strip_prefix("[auth-service] listening on port ")
            .unwrap()
            .parse()
            .unwrap();
        Service {
            child,
            lines,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _stdout: stdout,
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    fn wait(mut self, limit: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut stderr = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                return (status, stderr);
            }
            assert!(
                Instant::now() < deadline,
                "service did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One blocking HTTP/1.1 request; returns status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_response(&mut stream)
}

/// Reads one response (head, then a content-length body) without waiting for
/// the connection to close, so keep-alive connections can carry more.
fn read_response(stream: &mut TcpStream) -> (u16, Value) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed inside the head");
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw).unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap();
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

#[test]
fn five_startup_lines_env_key() {
    let jwk = ec_jwk("fingerprint-1").to_string();
    let verification = json!([ec_jwk("published-2"), ec_jwk("published-3")]).to_string();
    let service = Service::start(&[
        ("MACP_AUTH_SIGNING_ALG", "ES256"),
        ("MACP_AUTH_SIGNING_KEY_JSON", &jwk),
        ("MACP_AUTH_VERIFICATION_KEYS_JSON", &verification),
    ]);
    let port = service.addr.port();
    assert_eq!(
        service.lines,
        [
            format!("[auth-service] listening on port {port}"),
            "[auth-service] issuer=macp-auth-service audience=macp-runtime".to_string(),
            "[auth-service] key source: env kid=fingerprint-1 alg=ES256 published=3".to_string(),
            format!("[auth-service] JWKS: http://localhost:{port}/.well-known/jwks.json"),
            format!("[auth-service] Mint: POST http://localhost:{port}/tokens"),
        ]
    );
    let (status, body) = http(service.addr, "GET", "/healthz", None);
    assert_eq!((status, body), (200, json!({"ok": true})));
    let (status, jwks) = http(service.addr, "GET", "/.well-known/jwks.json", None);
    assert_eq!(status, 200);
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, ["fingerprint-1", "published-2", "published-3"]);

    service.signal(libc::SIGTERM);
    let (status, _) = service.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}

/// `MACP_AUTH_MINT_PORT`: minting moves to its own listener; the main port
/// keeps the JWKS and answers `POST /tokens` with a 404 naming the mint port;
/// still five startup lines, the fifth naming the mint port.
#[test]
fn a_mint_port_moves_post_tokens_to_its_own_listener() {
    let service = Service::start(&[
        ("MACP_AUTH_MINT_PORT", "0"),
        ("MACP_AUTH_HEADER_TIMEOUT_SECONDS", "1"),
    ]);
    let port = service.addr.port();
    let mint_port: u16 = service.lines[4]
        .strip_prefix("[auth-service] Mint: POST http://localhost:")
        .and_then(|rest| rest.strip_suffix("/tokens"))
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(mint_port, port);
    assert_eq!(
        service.lines[3],
        format!("[auth-service] JWKS: http://localhost:{port}/.well-known/jwks.json")
    );
    let mint = SocketAddr::from(([127, 0, 0, 1], mint_port));
    let body = Some(r#"{"sender":"agent://a"}"#);
    let (status, answer) = http(service.addr, "POST", "/tokens", body);
    assert_eq!(status, 404);
    assert_eq!(
        answer["error"],
        format!("POST /tokens is served on the mint port {mint_port}, not on this port")
    );
    let (status, answer) = http(mint, "POST", "/tokens", body);
    assert_eq!(status, 200, "{answer}");
    assert!(answer["token"].is_string());
    assert_eq!(
        http(service.addr, "GET", "/.well-known/jwks.json", None).0,
        200
    );
    // The mint port serves minting and health only: verifiers and scrapers
    // are admitted to the main port.
    assert_eq!(http(mint, "GET", "/.well-known/jwks.json", None).0, 404);
    assert_eq!(http(mint, "GET", "/metrics", None).0, 404);
    assert_eq!(http(mint, "GET", "/healthz", None).0, 200);
    assert_eq!(http(mint, "GET", "/tokens", None).0, 405);
    // The mint listener is the shared listener with its header timeout: a
    // connection that sends nothing is closed after about a second.
    let mut idle = TcpStream::connect(mint).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    // Read to EOF (or a reset); a timeout of the read itself takes 5 s.
    while let Ok(n) = idle.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "idle mint connection not closed by the header timeout"
    );

    service.signal(libc::SIGTERM);
    let (status, _) = service.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "both listeners drain and exit");
}

#[test]
fn ephemeral_key_warns_and_file_key_is_read() {
    let service = Service::start(&[("PORT", "0")]);
    assert_eq!(
        service.lines[2],
        "[auth-service] key source: ephemeral kid=dev-key-1 alg=RS256 published=1"
    );
    let (status, body) = http(service.addr, "POST", "/tokens", Some(r#"{"sender":"dev"}"#));
    assert_eq!(status, 200, "{body}");
    service.signal(libc::SIGINT);
    let (status, stderr) = service.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "SIGINT stops cleanly too");
    assert!(stderr.contains("ephemeral"), "{stderr}");
    assert!(stderr.contains("production"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("active.jwk.json");
    std::fs::write(&path, rsa_jwk().to_string()).unwrap();
    let service = Service::start(&[("MACP_AUTH_SIGNING_KEY_FILE", path.to_str().unwrap())]);
    assert_eq!(
        service.lines[2],
        "[auth-service] key source: file kid=rsa-test-1 alg=RS256 published=1"
    );
}

/// Runs the binary with a bad configuration; see [`Refused::check`].
fn assert_fatal(vars: &[(&str, &str)], variable: &str) {
    Refused {
        name: &format!("{vars:?}"),
        vars,
        variable,
    }
    .check();
}

/// A configuration the service refuses at startup, named for the failure message.
struct Refused<'a> {
    name: &'a str,
    vars: &'a [(&'a str, &'a str)],
    /// The variable the one stderr line names.
    variable: &'a str,
}

impl Refused<'_> {
    /// Runs the binary with the configuration: it must exit 1 before printing
    /// anything on stdout, with exactly one stderr line naming the variable.
    fn check(&self) {
        let Refused {
            name,
            vars,
            variable,
        } = self;
        let output = command(vars).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert!(output.stdout.is_empty(), "{name}");
        assert_eq!(stderr.lines().count(), 1, "{name}: one line: {stderr}");
        assert!(
            stderr.contains(variable),
            "{name}: {stderr} lacks {variable}"
        );
    }
}

#[test]
fn every_bad_configuration_class_exits_1_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let empty_tokens = dir.path().join("callers");
    std::fs::write(&empty_tokens, "# no tokens yet\n").unwrap();
    let empty_tokens = empty_tokens.to_str().unwrap().to_string();
    let rsa = rsa_jwk().to_string();
    let ec = ec_jwk("ec-x").to_string();
    let public = macp_auth_service::keys::public_jwk(rsa_jwk())
        .unwrap()
        .to_string();
    let weak = include_str!("fixtures/rsa-1024.jwk.json");
    let mut p384 = ec_jwk("p384");
    p384["crv"] = json!("P-384");
    let p384 = p384.to_string();
    let mut no_kid = rsa_jwk().clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    let no_kid = no_kid.to_string();
    let dup = json!([ec_jwk("rsa-test-1")]).to_string();

    for case in [
        Refused {
            name: "a max TTL that is no number",
            vars: &[("MACP_AUTH_MAX_TTL_SECONDS", "abc")],
            variable: "MACP_AUTH_MAX_TTL_SECONDS",
        },
        Refused {
            name: "a default TTL of zero",
            vars: &[("MACP_AUTH_DEFAULT_TTL_SECONDS", "0")],
            variable: "MACP_AUTH_DEFAULT_TTL_SECONDS",
        },
        Refused {
            name: "a negative default TTL",
            vars: &[("MACP_AUTH_DEFAULT_TTL_SECONDS", "-3")],
            variable: "MACP_AUTH_DEFAULT_TTL_SECONDS",
        },
        Refused {
            name: "a default TTL above the max",
            vars: &[
                ("MACP_AUTH_MAX_TTL_SECONDS", "60"),
                ("MACP_AUTH_DEFAULT_TTL_SECONDS", "300"),
            ],
            variable: "MACP_AUTH_DEFAULT_TTL_SECONDS",
        },
        Refused {
            name: "an unsupported signing algorithm",
            vars: &[("MACP_AUTH_SIGNING_ALG", "HS256")],
            variable: "MACP_AUTH_SIGNING_ALG",
        },
        Refused {
            name: "the mint port on the main port",
            vars: &[("PORT", "3200"), ("MACP_AUTH_MINT_PORT", "3200")],
            variable: "MACP_AUTH_MINT_PORT",
        },
        Refused {
            name: "a mint bind without a mint port",
            vars: &[("MACP_AUTH_MINT_BIND", "127.0.0.1")],
            variable: "MACP_AUTH_MINT_BIND",
        },
        Refused {
            name: "a signing key that is no JSON",
            vars: &[("MACP_AUTH_SIGNING_KEY_JSON", "{nope")],
            variable: "MACP_AUTH_SIGNING_KEY_JSON",
        },
        Refused {
            name: "a public key as the signing key",
            vars: &[("MACP_AUTH_SIGNING_KEY_JSON", &public)],
            variable: "MACP_AUTH_SIGNING_KEY_JSON",
        },
        Refused {
            name: "an EC key for RS256",
            vars: &[("MACP_AUTH_SIGNING_KEY_JSON", &ec)],
            variable: "MACP_AUTH_SIGNING_KEY_JSON",
        },
        Refused {
            name: "a P-384 key for ES256",
            vars: &[
                ("MACP_AUTH_SIGNING_ALG", "ES256"),
                ("MACP_AUTH_SIGNING_KEY_JSON", &p384),
            ],
            variable: "MACP_AUTH_SIGNING_KEY_JSON",
        },
        Refused {
            name: "a 1024-bit RSA key",
            vars: &[("MACP_AUTH_SIGNING_KEY_JSON", weak)],
            variable: "MACP_AUTH_SIGNING_KEY_JSON",
        },
        Refused {
            name: "a signing key without a kid",
            vars: &[("MACP_AUTH_SIGNING_KEY_JSON", &no_kid)],
            variable: "MACP_AUTH_SIGNING_KEY_JSON",
        },
        Refused {
            name: "a verification key with the signing key's kid",
            vars: &[
                ("MACP_AUTH_SIGNING_KEY_JSON", &rsa),
                ("MACP_AUTH_VERIFICATION_KEYS_JSON", &dup),
            ],
            variable: "MACP_AUTH_VERIFICATION_KEYS_JSON",
        },
        Refused {
            name: "a signing key both inline and from a file",
            vars: &[
                ("MACP_AUTH_SIGNING_KEY_JSON", &rsa),
                ("MACP_AUTH_SIGNING_KEY_FILE", "/x"),
            ],
            variable: "MACP_AUTH_SIGNING_KEY_FILE",
        },
        Refused {
            name: "a signing key file that is missing",
            vars: &[("MACP_AUTH_SIGNING_KEY_FILE", "/definitely/missing.json")],
            variable: "MACP_AUTH_SIGNING_KEY_FILE",
        },
        Refused {
            name: "verification keys that are no JSON",
            vars: &[("MACP_AUTH_VERIFICATION_KEYS_JSON", "{\"keys\":")],
            variable: "MACP_AUTH_VERIFICATION_KEYS_JSON",
        },
        Refused {
            name: "a port out of range",
            vars: &[("PORT", "99999")],
            variable: "PORT",
        },
        Refused {
            name: "a port that is no number",
            vars: &[("PORT", "abc")],
            variable: "PORT",
        },
        Refused {
            name: "a bind address that is no IP",
            vars: &[("MACP_AUTH_BIND", "not-an-ip")],
            variable: "MACP_AUTH_BIND",
        },
        Refused {
            name: "a tokens file that is missing",
            vars: &[("MACP_AUTH_MINT_TOKENS_FILE", "/definitely/missing")],
            variable: "MACP_AUTH_MINT_TOKENS_FILE",
        },
        Refused {
            name: "a tokens file without tokens",
            vars: &[("MACP_AUTH_MINT_TOKENS_FILE", &empty_tokens)],
            variable: "MACP_AUTH_MINT_TOKENS_FILE",
        },
        Refused {
            name: "an empty tokens file path",
            vars: &[("MACP_AUTH_MINT_TOKENS_FILE", "")],
            variable: "MACP_AUTH_MINT_TOKENS_FILE",
        },
        Refused {
            name: "a rate of zero",
            vars: &[("MACP_AUTH_RATE_LIMIT_PER_SECOND", "0")],
            variable: "MACP_AUTH_RATE_LIMIT_PER_SECOND",
        },
        Refused {
            name: "a burst that is no number",
            vars: &[
                ("MACP_AUTH_RATE_LIMIT_PER_SECOND", "5"),
                ("MACP_AUTH_RATE_LIMIT_BURST", "x"),
            ],
            variable: "MACP_AUTH_RATE_LIMIT_BURST",
        },
        Refused {
            name: "an unknown audit sink",
            vars: &[("MACP_AUTH_AUDIT_LOG", "syslog")],
            variable: "MACP_AUTH_AUDIT_LOG",
        },
        Refused {
            name: "a header timeout of zero",
            vars: &[("MACP_AUTH_HEADER_TIMEOUT_SECONDS", "0")],
            variable: "MACP_AUTH_HEADER_TIMEOUT_SECONDS",
        },
        Refused {
            name: "a request timeout with a unit",
            vars: &[("MACP_AUTH_REQUEST_TIMEOUT_SECONDS", "30s")],
            variable: "MACP_AUTH_REQUEST_TIMEOUT_SECONDS",
        },
        Refused {
            name: "a negative connection cap",
            vars: &[("MACP_AUTH_MAX_CONNECTIONS", "-1")],
            variable: "MACP_AUTH_MAX_CONNECTIONS",
        },
        Refused {
            name: "a fractional shutdown delay",
            vars: &[("MACP_AUTH_SHUTDOWN_DELAY_SECONDS", "1.5")],
            variable: "MACP_AUTH_SHUTDOWN_DELAY_SECONDS",
        },
    ] {
        case.check();
    }
}

#[test]
fn port_in_use_is_fatal() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let jwk = ec_jwk("k").to_string();
    assert_fatal(
        &[
            ("PORT", &port),
            ("MACP_AUTH_SIGNING_ALG", "ES256"),
            ("MACP_AUTH_SIGNING_KEY_JSON", &jwk),
        ],
        "PORT",
    );
}

/// Opens a keep-alive connection, completes one mint on it (so the server has
/// certainly accepted and is serving the connection), then starts a second
/// mint and sends only half of its body.
fn half_sent_request(addr: SocketAddr) -> (TcpStream, &'static [u8]) {
    const BODY: &[u8] = br#"{"sender":"in-flight","ttl_seconds":30}"#;
    let head = format!(
        "POST /tokens HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        BODY.len()
    );
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(BODY).unwrap();
    let (status, _) = read_response(&mut stream);
    assert_eq!(status, 200);

    stream.write_all(head.as_bytes()).unwrap();
    let (first, rest) = BODY.split_at(BODY.len() / 2);
    stream.write_all(first).unwrap();
    stream.flush().unwrap();
    // Give the server time to read the head: from then on the request is in flight.
    std::thread::sleep(Duration::from_millis(300));
    (stream, rest)
}

#[test]
fn sigterm_drains_the_in_flight_request_and_exits_0() {
    let jwk = ec_jwk("drain").to_string();
    let service = Service::start(&[
        ("MACP_AUTH_SIGNING_ALG", "ES256"),
        ("MACP_AUTH_SIGNING_KEY_JSON", &jwk),
    ]);
    let (mut stream, rest) = half_sent_request(service.addr);
    service.signal(libc::SIGTERM);

    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(service.addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }

    stream.write_all(rest).unwrap();
    let (status, body) = read_response(&mut stream);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sender"], "in-flight");
    assert_eq!(body["expires_in_seconds"], 30);
    let (status, stderr) = service.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn drain_longer_than_10_seconds_exits_1() {
    let jwk = ec_jwk("stuck").to_string();
    let service = Service::start(&[
        ("MACP_AUTH_SIGNING_ALG", "ES256"),
        ("MACP_AUTH_SIGNING_KEY_JSON", &jwk),
    ]);
    let (_stream, _rest) = half_sent_request(service.addr);
    let signalled = Instant::now();
    service.signal(libc::SIGTERM);
    let (status, stderr) = service.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(signalled.elapsed() >= Duration::from_secs(10));
    assert!(stderr.contains("did not finish"), "{stderr}");
}

#[test]
fn generate_key_prints_a_usable_private_jwk() {
    /// `generate-key` with `args` prints a private JWK of type `kty` for `alg`.
    struct Generated {
        args: &'static [&'static str],
        alg: Alg,
        kty: &'static str,
    }
    for Generated { args, alg, kty } in [
        Generated {
            args: &["--alg", "ES256", "--kid", "prod-ec-1"],
            alg: Alg::ES256,
            kty: "EC",
        },
        Generated {
            args: &["--alg", "RS256", "--kid", "prod-rsa-1", "--bits", "3072"],
            alg: Alg::RS256,
            kty: "RSA",
        },
        Generated {
            args: &["--kid", "default-alg"],
            alg: Alg::RS256,
            kty: "RSA",
        },
    ] {
        let output = Command::new(BIN)
            .arg("generate-key")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        assert_eq!(text.lines().count(), 1);
        let jwk: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(jwk["kty"], kty, "{args:?}");
        assert!(jwk.get("d").is_some());
        let key = SigningKey::from_jwk(&jwk, alg).unwrap();
        assert_eq!(
            key.kid(),
            args[args.iter().position(|a| *a == "--kid").unwrap() + 1]
        );
    }
    let output = Command::new(BIN)
        .args(["generate-key", "--kid", "big", "--bits", "3072"])
        .output()
        .unwrap();
    let jwk: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        jwk["n"].as_str().unwrap().len(),
        512,
        "3072-bit modulus in base64url"
    );
}

#[test]
fn generate_key_bad_flags_exit_1() {
    for args in [
        vec!["generate-key", "--alg", "HS256", "--kid", "k"],
        vec![
            "generate-key",
            "--alg",
            "RS256",
            "--kid",
            "k",
            "--bits",
            "1024",
        ],
        vec!["generate-key", "--alg", "RS256"],
        vec!["generate-key", "--kid", ""],
        vec!["generate-key", "--kid", "k", "--bits", "many"],
        vec!["no-such-command"],
    ] {
        let output = Command::new(BIN).args(&args).output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        assert!(!output.stderr.is_empty(), "{args:?}");
    }
}

#[test]
fn healthcheck_subcommand() {
    let jwk = ec_jwk("hc").to_string();
    let service = Service::start(&[
        ("MACP_AUTH_SIGNING_ALG", "ES256"),
        ("MACP_AUTH_SIGNING_KEY_JSON", &jwk),
    ]);
    let port = service.addr.port().to_string();
    let ok = Command::new(BIN)
        .arg("healthcheck")
        .env_clear()
        .env("PORT", &port)
        .env("MACP_AUTH_BIND", "127.0.0.1")
        .status()
        .unwrap();
    assert!(ok.success());
    let url = format!("http://127.0.0.1:{port}/healthz");
    assert!(
        Command::new(BIN)
            .args(["healthcheck", "--url", &url])
            .status()
            .unwrap()
            .success()
    );
    let missing = format!("http://127.0.0.1:{port}/nope");
    let not_ok = Command::new(BIN)
        .args(["healthcheck", "--url", &missing])
        .output()
        .unwrap();
    assert_eq!(not_ok.status.code(), Some(1));
    drop(service);
    let closed = Command::new(BIN)
        .arg("healthcheck")
        .env_clear()
        .env("PORT", &port)
        .env("MACP_AUTH_BIND", "127.0.0.1")
        .output()
        .unwrap();
    assert_eq!(closed.status.code(), Some(1));
}
