//! `macp-auth-service`: the token service, plus two helper subcommands.
//!
//! * no arguments: run the service, configured from the environment;
//! * `generate-key --alg RS256 --kid <kid> [--bits 2048]`: print a new private JWK;
//! * `healthcheck [--url <url>]`: GET `/healthz` of the local instance and exit
//!   0 on 200, 1 otherwise (for container `HEALTHCHECK`s in images without curl).
//!
//! This file owns every side effect: environment, key file, socket, signals,
//! stdout fingerprint and the exit code.

use std::io::{IsTerminal, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use macp_auth_service::app::{self, AppState};
use macp_auth_service::audit::AuditLog;
use macp_auth_service::config::{self, Config, ConfigError, KeySource};
use macp_auth_service::keys::{self, Alg};
use macp_auth_service::listener::{self, Limits};
use tracing_subscriber::EnvFilter;

/// How long in-flight requests may take to finish after SIGTERM/SIGINT.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    name = "macp-auth-service",
    version,
    about = "MACP auth-service: mints short-lived JWTs and publishes a multi-key JWKS.\n\
             Without a subcommand it runs the service, configured from MACP_AUTH_* environment variables."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a new private JWK (JSON, one line) on stdout, for a secret store.
    GenerateKey {
        /// Signing algorithm: RS256 or ES256.
        #[arg(long, default_value = "RS256")]
        alg: Alg,
        /// Key id, e.g. prod-key-2026-11-27 (verifiers select keys by kid).
        #[arg(long)]
        kid: String,
        /// RSA modulus size: 2048, 3072 or 4096 (ignored for ES256).
        #[arg(long, default_value_t = 2048)]
        bits: u32,
    },
    /// GET /healthz of the service on this host (PORT, MACP_AUTH_BIND); exit 0 on 200.
    Healthcheck {
        /// Full URL to check instead, e.g. http://127.0.0.1:3200/healthz.
        #[arg(long)]
        url: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; every other bad flag exits 1.
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        None => run_service(),
        Some(Command::GenerateKey { alg, kid, bits }) => generate_key(alg, &kid, bits),
        Some(Command::Healthcheck { url }) => match healthcheck(url.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("healthcheck failed: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn generate_key(alg: Alg, kid: &str, bits: u32) -> ExitCode {
    match keys::generate_private_jwk(alg, kid, bits) {
        Ok(jwk) => {
            println!("{jwk}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("generate-key: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fatal(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("[auth-service] fatal: {message}");
    ExitCode::FAILURE
}

/// Reads the service's variables from the process environment. A value that
/// is not UTF-8 is a configuration error naming the variable.
fn env_vars() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for name in config::VARIABLES {
        match std::env::var(name) {
            Ok(value) => vars.push((name.to_string(), value)),
            Err(std::env::VarError::NotPresent) => {}
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(ConfigError {
                    variable: name.to_string(),
                    message: "is not valid UTF-8".to_string(),
                });
            }
        }
    }
    Ok(vars)
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run_service() -> ExitCode {
    init_tracing();
    let config = match env_vars().and_then(Config::from_vars) {
        Ok(config) => config,
        Err(e) => return fatal(e),
    };
    let (limits, descriptors) = match listener_limits(&config) {
        Ok(limits) => limits,
        Err(e) => return fatal(e),
    };
    let callers = match config.load_callers(|path| std::fs::read_to_string(path)) {
        Ok(callers) => callers,
        Err(e) => return fatal(e),
    };
    let keys = match config.load_keys(|path| std::fs::read_to_string(path)) {
        Ok(keys) => keys,
        Err(e) => return fatal(e),
    };
    if keys.source == KeySource::Ephemeral {
        tracing::warn!(
            kid = keys.active.kid(),
            "no signing key configured: using an ephemeral key that dies with this process; \
             never run this in production (set MACP_AUTH_SIGNING_KEY_JSON or MACP_AUTH_SIGNING_KEY_FILE)"
        );
    }
    let mut state = AppState::new(&config, keys);
    if let (Some(set), Some(path)) = (callers, &config.mint_tokens_file) {
        tracing::info!(path = %path.display(), tokens = set.len(), "caller authentication on for POST /tokens");
        state = state.with_callers(set, path.clone(), app::CALLERS_POLL_INTERVAL);
    }
    if config.audit_log {
        match AuditLog::spawn(std::io::stdout()) {
            Ok(log) => state = state.with_audit(log),
            Err(e) => {
                return fatal(format_args!(
                    "{}: cannot start the audit writer: {e}",
                    config::AUDIT_LOG
                ));
            }
        }
    }
    if let Some(limit) = config.rate_limit {
        tracing::info!(
            per_second = limit.per_second,
            burst = limit.burst,
            "per-caller rate limit on for POST /tokens"
        );
    }
    let state = Arc::new(state);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fatal(format_args!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(serve(config, state, limits, descriptors))
}

/// The open-file limit as found and as raised (or why it was not raised).
type Descriptors = Result<listener::DescriptorLimit, (std::io::Error, u64)>;

/// Raises the soft open-file limit to the hard one and sizes the connection
/// cap from the result. Logs nothing: a fatal error must stay the only line.
fn listener_limits(config: &Config) -> Result<(Limits, Descriptors), ConfigError> {
    let descriptors =
        listener::raise_nofile_limit().map_err(|e| (e, listener::current_nofile_limit()));
    let soft = match &descriptors {
        Ok(limit) => limit.soft,
        Err((_, soft)) => *soft,
    };
    Ok((config.listener_limits(soft)?, descriptors))
}

/// One line with the open-file limit before and after raising it and the
/// limits the listener runs with.
fn log_limits(limits: &Limits, descriptors: &Descriptors) {
    let (max_connections, header_timeout_secs, request_timeout_secs) = (
        limits.max_connections,
        limits.header_timeout.as_secs(),
        limits.request_timeout.as_secs(),
    );
    match descriptors {
        Ok(limit) => tracing::info!(
            soft_before = limit.soft_before,
            soft = limit.soft,
            hard = limit.hard,
            max_connections,
            header_timeout_secs,
            request_timeout_secs,
            "open-file limit (RLIMIT_NOFILE) raised to the hard limit"
        ),
        // Not fatal: the cap is sized for the limit the process has.
        Err((error, soft)) => tracing::warn!(
            %error,
            soft,
            max_connections,
            header_timeout_secs,
            request_timeout_secs,
            "cannot raise the open-file limit (RLIMIT_NOFILE); keeping the soft limit"
        ),
    }
}

async fn serve(
    config: Config,
    state: Arc<AppState>,
    limits: Limits,
    descriptors: Descriptors,
) -> ExitCode {
    let addr = SocketAddr::new(config.bind, config.port);
    let listener = match bind(addr) {
        Ok(listener) => listener,
        Err(e) => {
            return fatal(format_args!(
                "{}/{}: cannot listen on {addr}: {e}",
                config::PORT,
                config::BIND
            ));
        }
    };
    let port = listener.local_addr().map_or(config.port, |a| a.port());
    let mint = match config.mint_port {
        None => None,
        Some(mint_port) => {
            let mint_addr = SocketAddr::new(config.mint_bind, mint_port);
            match bind(mint_addr) {
                Ok(mint) => Some(mint),
                Err(e) => {
                    return fatal(format_args!(
                        "{}/{}: cannot listen on {mint_addr}: {e}",
                        config::MINT_PORT,
                        config::MINT_BIND
                    ));
                }
            }
        }
    };
    let mint_port = mint
        .as_ref()
        .and_then(|m| m.local_addr().ok())
        .map_or(port, |a| a.port());

    // The operators' fingerprint: exactly these five lines on stdout.
    println!("[auth-service] listening on port {port}");
    println!(
        "[auth-service] issuer={} audience={}",
        state.issuer, state.audience
    );
    println!(
        "[auth-service] key source: {} kid={} alg={} published={}",
        state.key_source,
        state.key.kid(),
        state.key.alg(),
        state.published_kids.len()
    );
    println!("[auth-service] JWKS: http://localhost:{port}/.well-known/jwks.json");
    // With a mint listener the fifth line names its port: still five lines,
    // and the line an operator reads to find where to mint stays true.
    println!("[auth-service] Mint: POST http://localhost:{mint_port}/tokens");
    let _ = std::io::stdout().flush();
    tracing::info!(
        %addr,
        mint_port = mint.as_ref().map(|_| mint_port),
        kid = state.key.kid(),
        published = ?state.published_kids,
        "token service started"
    );
    log_limits(&limits, &descriptors);

    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let delay = config.shutdown_delay;
    let signalled = state.clone();
    let shutdown = async move {
        let name = wait_for_stop_signal().await;
        signalled.set_stopping();
        if !delay.is_zero() {
            // Load balancers and kube-proxy keep sending new connections for
            // a while after a pod starts terminating: serve them until they
            // have seen /readyz fail.
            tracing::info!(
                signal = name,
                delay_secs = delay.as_secs(),
                "stopping: /readyz answers 503; serving on for the shutdown delay"
            );
            tokio::time::sleep(delay).await;
        }
        tracing::info!(
            signal = name,
            "stopping: no new connections, draining in-flight requests"
        );
        let _ = stopping_tx.send(());
    };
    let server = async move {
        match mint {
            Some(mint) => app::serve_with_mint(listener, mint, state, limits, shutdown).await,
            None => app::serve(listener, state, limits, shutdown).await,
        }
    };
    let deadline = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        biased;
        result = server => match result {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => fatal(format_args!("server error: {e}")),
        },
        () = deadline => {
            tracing::error!(timeout_secs = DRAIN_TIMEOUT.as_secs(), "in-flight requests did not finish in time; exiting");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT with the signal's name.
/// Connections the kernel may queue before `accept`. std's 128 (tokio's
/// 1024) overflows under a connection flood: the kernel then drops handshakes
/// and clients retry after a second or more, even legitimate ones. The kernel
/// caps it at `net.core.somaxconn` (4096 by default since Linux 5.4).
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std's TcpListener::bind does: restart without waiting out TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn wait_for_stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM handler");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

/// Minimal HTTP/1.0 GET of `/healthz`; no client library needed for one request.
fn healthcheck(url: Option<&str>) -> anyhow::Result<()> {
    let (addr, path) = match url {
        Some(url) => parse_http_url(url)?,
        None => {
            let vars = env_vars().map_err(anyhow::Error::new)?;
            let config = Config::from_vars(vars).map_err(anyhow::Error::new)?;
            let ip = match config.bind {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            (SocketAddr::new(ip, config.port), "/healthz".to_string())
        }
    };
    let timeout = Duration::from_secs(3);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).context("read response")?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    let status = status_line.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        bail!("GET http://{addr}{path} answered {status:?}");
    }
    Ok(())
}

fn parse_http_url(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let authority = authority.replace("localhost", "127.0.0.1");
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("{authority:?} is not an ip:port address"))?;
    Ok((addr, path))
}
