//! Service configuration from environment variables (docs/architecture.md, The
//! token service; every variable: README, Configuration).
//!
//! Pure: [`Config::from_vars`] takes the variables as an iterator and
//! [`Config::load_keys`] takes the file reader as a closure, so every fatal case
//! is unit-tested without touching the process environment or the disk.
//! Every error names the variable it is about.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::callers::CallerSet;
use crate::keys::{self, Alg, KeyError, SigningKey};
use crate::listener;

pub const PORT: &str = "PORT";
pub const BIND: &str = "MACP_AUTH_BIND";
pub const ISSUER: &str = "MACP_AUTH_ISSUER";
pub const AUDIENCE: &str = "MACP_AUTH_AUDIENCE";
pub const MAX_TTL: &str = "MACP_AUTH_MAX_TTL_SECONDS";
pub const DEFAULT_TTL: &str = "MACP_AUTH_DEFAULT_TTL_SECONDS";
pub const SIGNING_ALG: &str = "MACP_AUTH_SIGNING_ALG";
pub const SIGNING_KEY_JSON: &str = "MACP_AUTH_SIGNING_KEY_JSON";
pub const SIGNING_KEY_FILE: &str = "MACP_AUTH_SIGNING_KEY_FILE";
pub const VERIFICATION_KEYS_JSON: &str = "MACP_AUTH_VERIFICATION_KEYS_JSON";
pub const VERIFICATION_KEYS_FILE: &str = "MACP_AUTH_VERIFICATION_KEYS_FILE";
pub const MINT_TOKENS_FILE: &str = "MACP_AUTH_MINT_TOKENS_FILE";
pub const RATE_LIMIT_PER_SECOND: &str = "MACP_AUTH_RATE_LIMIT_PER_SECOND";
pub const RATE_LIMIT_BURST: &str = "MACP_AUTH_RATE_LIMIT_BURST";
pub const AUDIT_LOG: &str = "MACP_AUTH_AUDIT_LOG";
pub const HEADER_TIMEOUT: &str = "MACP_AUTH_HEADER_TIMEOUT_SECONDS";
pub const REQUEST_TIMEOUT: &str = "MACP_AUTH_REQUEST_TIMEOUT_SECONDS";
pub const MAX_CONNECTIONS: &str = "MACP_AUTH_MAX_CONNECTIONS";
pub const SHUTDOWN_DELAY: &str = "MACP_AUTH_SHUTDOWN_DELAY_SECONDS";
pub const MINT_PORT: &str = "MACP_AUTH_MINT_PORT";
pub const MINT_BIND: &str = "MACP_AUTH_MINT_BIND";
pub const JWKS_MAX_AGE: &str = "MACP_AUTH_JWKS_MAX_AGE_SECONDS";
pub const VERIFIER_RECORDS: &str = "MACP_AUTH_VERIFIER_RECORDS";

/// Every variable the service reads, for `main` to collect from the environment.
pub const VARIABLES: [&str; 23] = [
    PORT,
    BIND,
    ISSUER,
    AUDIENCE,
    MAX_TTL,
    DEFAULT_TTL,
    SIGNING_ALG,
    SIGNING_KEY_JSON,
    SIGNING_KEY_FILE,
    VERIFICATION_KEYS_JSON,
    VERIFICATION_KEYS_FILE,
    MINT_TOKENS_FILE,
    RATE_LIMIT_PER_SECOND,
    RATE_LIMIT_BURST,
    AUDIT_LOG,
    HEADER_TIMEOUT,
    REQUEST_TIMEOUT,
    MAX_CONNECTIONS,
    SHUTDOWN_DELAY,
    MINT_PORT,
    MINT_BIND,
    JWKS_MAX_AGE,
    VERIFIER_RECORDS,
];

pub const DEFAULT_PORT: u16 = 3200;
pub const DEFAULT_ISSUER: &str = "macp-auth-service";
pub const DEFAULT_AUDIENCE: &str = "macp-runtime";
pub const DEFAULT_MAX_TTL_SECONDS: u64 = 3600;
pub const DEFAULT_DEFAULT_TTL_SECONDS: u64 = 300;
/// `Cache-Control: max-age` of the JWKS when the service runs alone: the
/// MacpAuth's default `jwksCacheTtlSeconds`, which the operator sets instead.
pub const DEFAULT_JWKS_MAX_AGE_SECONDS: u64 = 300;
/// JWKS clients remembered at once (`GET /verifiers`); the least recent is
/// dropped for a new one. A record is about 200 bytes.
pub const DEFAULT_VERIFIER_RECORDS: usize = 1024;
/// Upper bound on `MACP_AUTH_VERIFIER_RECORDS`: 64k records are about 13 MiB.
pub const VERIFIER_RECORDS_CEILING: usize = 65_536;
/// Kid of the key generated when no key is configured.
pub const EPHEMERAL_KID: &str = "dev-key-1";
/// RSA size of the ephemeral key.
pub const EPHEMERAL_RSA_BITS: u32 = 2048;
/// Upper bound on TTL settings: ten years. Keeps `iat + ttl` far from overflow
/// and catches unit mix-ups (milliseconds pasted as seconds).
pub const TTL_CEILING_SECONDS: u64 = 10 * 365 * 24 * 3600;
/// Upper bound on `MACP_AUTH_RATE_LIMIT_PER_SECOND` and `_BURST`: far above
/// what one replica can sign, so larger values are typos.
pub const RATE_LIMIT_CEILING: u32 = 1_000_000;
/// Upper bound on the timeout and delay settings: an hour. Longer values
/// defeat their purpose and are usually milliseconds pasted as seconds.
pub const TIMEOUT_CEILING_SECONDS: u64 = 3600;
/// Upper bound on `MACP_AUTH_MAX_CONNECTIONS` before the descriptor limit is
/// known (`main` then checks it against the limit).
pub const MAX_CONNECTIONS_CEILING: usize = 1_000_000;

/// `MACP_AUTH_RATE_LIMIT_*`: a token bucket per caller.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// A fatal configuration problem: the variable and what is wrong with it.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    pub variable: String,
    pub message: String,
}

impl ConfigError {
    fn new(variable: &str, message: impl Into<String>) -> Self {
        ConfigError {
            variable: variable.to_string(),
            message: message.into(),
        }
    }

    fn key(variable: &str, err: &KeyError) -> Self {
        Self::new(variable, err.to_string())
    }
}

/// Where the active signing key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySpec {
    /// `MACP_AUTH_SIGNING_KEY_JSON`: the private JWK text.
    Env(String),
    /// `MACP_AUTH_SIGNING_KEY_FILE`: a path to the private JWK.
    File(PathBuf),
    /// Neither set: generate a throwaway key at startup.
    Ephemeral,
}

/// The key source as printed in the startup fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File,
    Ephemeral,
}

impl KeySource {
    pub fn as_str(&self) -> &'static str {
        match self {
            KeySource::Env => "env",
            KeySource::File => "file",
            KeySource::Ephemeral => "ephemeral",
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The validated configuration (keys not loaded yet; see [`Config::load_keys`]).
#[derive(Clone, Debug)]
pub struct Config {
    /// 0 means "any free port" (handy for tests); the bound port is printed.
    pub port: u16,
    pub bind: IpAddr,
    pub issuer: String,
    pub audience: String,
    pub max_ttl_seconds: u64,
    pub default_ttl_seconds: u64,
    pub alg: Alg,
    pub signing_key: KeySpec,
    /// Public JWKs to publish but not sign with, already stripped and
    /// validated (`MACP_AUTH_VERIFICATION_KEYS_JSON`).
    pub verification_keys: Vec<Value>,
    /// `MACP_AUTH_VERIFICATION_KEYS_FILE`: the same, in a file (a mounted
    /// secret), read by [`Config::load_keys`]; not with the variable above.
    pub verification_keys_file: Option<PathBuf>,
    /// `MACP_AUTH_MINT_TOKENS_FILE`: caller authentication for `POST /tokens`.
    pub mint_tokens_file: Option<PathBuf>,
    pub rate_limit: Option<RateLimit>,
    /// `MACP_AUTH_AUDIT_LOG=stdout`.
    pub audit_log: bool,
    /// `MACP_AUTH_HEADER_TIMEOUT_SECONDS`: request headers (and the wait for
    /// the next request on a keep-alive connection) must arrive within it.
    pub header_timeout: Duration,
    /// `MACP_AUTH_REQUEST_TIMEOUT_SECONDS`: a request must be complete within it.
    pub request_timeout: Duration,
    /// `MACP_AUTH_MAX_CONNECTIONS`; unset: sized from the descriptor limit.
    pub max_connections: Option<usize>,
    /// `MACP_AUTH_SHUTDOWN_DELAY_SECONDS`: how long to keep serving, with
    /// `/readyz` at 503, between SIGTERM and the drain.
    pub shutdown_delay: Duration,
    /// `MACP_AUTH_MINT_PORT`: when set, `POST /tokens` is served only on this
    /// second listener (0: any free port), so that network policy can admit
    /// minters there and verifiers to the JWKS on `port`.
    pub mint_port: Option<u16>,
    /// `MACP_AUTH_MINT_BIND`: the mint listener's address; `bind` when unset.
    pub mint_bind: IpAddr,
    /// `MACP_AUTH_JWKS_MAX_AGE_SECONDS`: the JWKS's `Cache-Control: max-age`.
    pub jwks_max_age: Duration,
    /// `MACP_AUTH_VERIFIER_RECORDS`: JWKS clients remembered; 0 remembers none.
    pub verifier_records: usize,
}

/// The keys the service runs with.
#[derive(Debug)]
pub struct LoadedKeys {
    pub active: SigningKey,
    pub source: KeySource,
    /// Verification-only public JWKs, in configured order.
    pub verification: Vec<Value>,
}

impl LoadedKeys {
    /// The published keys: the active key first, then the verification keys.
    pub fn published(&self) -> Vec<Value> {
        let mut all = Vec::with_capacity(1 + self.verification.len());
        all.push(self.active.public_jwk().clone());
        all.extend(self.verification.iter().cloned());
        all
    }
}

/// The verification keys in `text` (from `variable`), stripped of private
/// members and checked: every key valid and with a kid of its own.
fn parse_verification(text: &str, variable: &str) -> Result<Vec<Value>, ConfigError> {
    let keys = keys::parse_verification_keys(text).map_err(|e| ConfigError::key(variable, &e))?;
    let mut seen = HashSet::new();
    for key in &keys {
        let kid = key["kid"].as_str().unwrap_or_default();
        if !seen.insert(kid) {
            return Err(ConfigError::new(
                variable,
                format!("duplicate kid {kid:?}; every published key needs its own kid"),
            ));
        }
    }
    Ok(keys)
}

/// Empty values count as unset (a common result of `FOO=` in env files),
/// except for the signing-key variables, see [`Config::from_vars`].
fn non_empty<'a>(vars: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    vars.get(name)
        .map(String::as_str)
        .filter(|v| !v.trim().is_empty())
}

fn parse_ttl(vars: &HashMap<String, String>, name: &str, default: u64) -> Result<u64, ConfigError> {
    let Some(raw) = non_empty(vars, name) else {
        return Ok(default);
    };
    let value: u64 = raw.trim().parse().map_err(|_| {
        ConfigError::new(
            name,
            format!("must be a positive whole number of seconds, got {raw:?}"),
        )
    })?;
    if value == 0 {
        return Err(ConfigError::new(name, "must be positive, got 0"));
    }
    if value > TTL_CEILING_SECONDS {
        return Err(ConfigError::new(
            name,
            format!("{value} seconds is above the ceiling of {TTL_CEILING_SECONDS} (ten years)"),
        ));
    }
    Ok(value)
}

/// Whole seconds from `min` to [`TIMEOUT_CEILING_SECONDS`]; `default` when unset.
fn parse_seconds(
    vars: &HashMap<String, String>,
    name: &str,
    min: u64,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(raw) = non_empty(vars, name) else {
        return Ok(default);
    };
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|s| (min..=TIMEOUT_CEILING_SECONDS).contains(s))
        .map(Duration::from_secs)
        .ok_or_else(|| {
            ConfigError::new(
                name,
                format!(
                    "must be a whole number of seconds from {min} to {TIMEOUT_CEILING_SECONDS}, got {raw:?}"
                ),
            )
        })
}

fn parse_ip(vars: &HashMap<String, String>, name: &str) -> Result<Option<IpAddr>, ConfigError> {
    non_empty(vars, name)
        .map(|raw| {
            raw.trim().parse::<IpAddr>().map_err(|_| {
                ConfigError::new(
                    name,
                    format!(
                        "must be an IPv4 or IPv6 address such as 0.0.0.0 or 127.0.0.1, got {raw:?}"
                    ),
                )
            })
        })
        .transpose()
}

/// `MACP_AUTH_MINT_PORT` and `MACP_AUTH_MINT_BIND`. The mint port must differ
/// from `PORT` (one socket cannot be two listeners; 0 on both is allowed, each
/// gets its own free port), and a mint address without a mint port is refused
/// rather than ignored: whoever set it expects minting to move.
fn parse_mint_listener(
    vars: &HashMap<String, String>,
    port: u16,
    bind: IpAddr,
) -> Result<(Option<u16>, IpAddr), ConfigError> {
    let mint_bind = parse_ip(vars, MINT_BIND)?;
    let Some(raw) = non_empty(vars, MINT_PORT) else {
        if mint_bind.is_some() {
            return Err(ConfigError::new(
                MINT_BIND,
                format!("is set but {MINT_PORT} is not; set both or neither"),
            ));
        }
        return Ok((None, bind));
    };
    let mint_port = raw.trim().parse::<u16>().map_err(|_| {
        ConfigError::new(
            MINT_PORT,
            format!("must be a port number 0-65535, got {raw:?}"),
        )
    })?;
    if mint_port != 0 && mint_port == port {
        return Err(ConfigError::new(
            MINT_PORT,
            format!("must differ from {PORT} ({port}): POST /tokens moves to its own listener"),
        ));
    }
    Ok((Some(mint_port), mint_bind.unwrap_or(bind)))
}

/// Whole seconds from 0 to [`TTL_CEILING_SECONDS`]: the MacpAuth's
/// `jwksCacheTtlSeconds`, which has no smaller ceiling.
fn parse_jwks_max_age(vars: &HashMap<String, String>) -> Result<Duration, ConfigError> {
    let Some(raw) = non_empty(vars, JWKS_MAX_AGE) else {
        return Ok(Duration::from_secs(DEFAULT_JWKS_MAX_AGE_SECONDS));
    };
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|s| *s <= TTL_CEILING_SECONDS)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            ConfigError::new(
                JWKS_MAX_AGE,
                format!(
                    "must be a whole number of seconds from 0 to {TTL_CEILING_SECONDS}, got {raw:?}"
                ),
            )
        })
}

fn parse_verifier_records(vars: &HashMap<String, String>) -> Result<usize, ConfigError> {
    let Some(raw) = non_empty(vars, VERIFIER_RECORDS) else {
        return Ok(DEFAULT_VERIFIER_RECORDS);
    };
    raw.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n <= VERIFIER_RECORDS_CEILING)
        .ok_or_else(|| {
            ConfigError::new(
                VERIFIER_RECORDS,
                format!(
                    "must be a whole number from 0 (remember no JWKS client) to {VERIFIER_RECORDS_CEILING}, got {raw:?}"
                ),
            )
        })
}

fn parse_max_connections(vars: &HashMap<String, String>) -> Result<Option<usize>, ConfigError> {
    let Some(raw) = non_empty(vars, MAX_CONNECTIONS) else {
        return Ok(None);
    };
    raw.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_CONNECTIONS_CEILING).contains(n))
        .map(Some)
        .ok_or_else(|| {
            ConfigError::new(
                MAX_CONNECTIONS,
                format!("must be a whole number from 1 to {MAX_CONNECTIONS_CEILING}, got {raw:?}"),
            )
        })
}

impl Config {
    /// The connection cap for a soft descriptor limit of `nofile`: the
    /// configured one, which must leave the listener's reserve free, or the
    /// default sized from the limit.
    ///
    /// The cap applies to each listener: with a mint port there are two, so
    /// the descriptor budget is split between them (a flood on one port must
    /// not exhaust the descriptors the other one needs).
    pub fn max_connections_for(&self, nofile: u64) -> Result<usize, ConfigError> {
        let listeners = if self.mint_port.is_some() { 2 } else { 1 };
        let allowed = (listener::max_connections_allowed(nofile) / listeners).max(1);
        match self.max_connections {
            None => Ok(allowed.min(listener::DEFAULT_MAX_CONNECTIONS_CEILING)),
            Some(n) if n <= allowed => Ok(n),
            Some(n) => Err(ConfigError::new(
                MAX_CONNECTIONS,
                format!(
                    "{n} does not fit the open-file limit of {nofile}: at most {allowed} \
                     per listener ({} descriptors stay reserved{}); lower it or raise the limit",
                    listener::RESERVED_DESCRIPTORS,
                    if listeners == 2 {
                        ", the rest shared by the main and the mint listener"
                    } else {
                        ""
                    }
                ),
            )),
        }
    }

    /// The listener limits for a soft descriptor limit of `nofile`.
    pub fn listener_limits(&self, nofile: u64) -> Result<listener::Limits, ConfigError> {
        Ok(listener::Limits {
            header_timeout: self.header_timeout,
            request_timeout: self.request_timeout,
            max_connections: self.max_connections_for(nofile)?,
        })
    }
}

fn parse_rate_limit(vars: &HashMap<String, String>) -> Result<Option<RateLimit>, ConfigError> {
    let rate = non_empty(vars, RATE_LIMIT_PER_SECOND).map(str::trim);
    let burst = non_empty(vars, RATE_LIMIT_BURST).map(str::trim);
    let Some(raw) = rate else {
        if burst.is_some() {
            return Err(ConfigError::new(
                RATE_LIMIT_BURST,
                format!("needs {RATE_LIMIT_PER_SECOND} to be set as well"),
            ));
        }
        return Ok(None);
    };
    let per_second = raw
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0 && *r <= f64::from(RATE_LIMIT_CEILING))
        .ok_or_else(|| {
            ConfigError::new(
                RATE_LIMIT_PER_SECOND,
                format!(
                    "must be a positive number of requests per second up to {RATE_LIMIT_CEILING}, got {raw:?}"
                ),
            )
        })?;
    let burst = match burst {
        // Default: one second's worth, at least one request.
        None => per_second.ceil().max(1.0) as u32,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|b| (1..=RATE_LIMIT_CEILING).contains(b))
            .ok_or_else(|| {
                ConfigError::new(
                    RATE_LIMIT_BURST,
                    format!("must be a whole number from 1 to {RATE_LIMIT_CEILING}, got {raw:?}"),
                )
            })?,
    };
    Ok(Some(RateLimit { per_second, burst }))
}

impl Config {
    /// Builds the configuration from `(name, value)` pairs (the process
    /// environment in production). Unknown names are ignored.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();

        let port = match non_empty(&vars, PORT) {
            None => DEFAULT_PORT,
            Some(raw) => raw.trim().parse::<u16>().map_err(|_| {
                ConfigError::new(PORT, format!("must be a port number 0-65535, got {raw:?}"))
            })?,
        };
        let bind = parse_ip(&vars, BIND)?.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let issuer = non_empty(&vars, ISSUER)
            .unwrap_or(DEFAULT_ISSUER)
            .to_string();
        let audience = non_empty(&vars, AUDIENCE)
            .unwrap_or(DEFAULT_AUDIENCE)
            .to_string();

        let max_ttl_seconds = parse_ttl(&vars, MAX_TTL, DEFAULT_MAX_TTL_SECONDS)?;
        let default_ttl_seconds = parse_ttl(&vars, DEFAULT_TTL, DEFAULT_DEFAULT_TTL_SECONDS)?;
        if default_ttl_seconds > max_ttl_seconds {
            return Err(ConfigError::new(
                DEFAULT_TTL,
                format!(
                    "{default_ttl_seconds} is above {MAX_TTL} ({max_ttl_seconds}); the default must not exceed the maximum"
                ),
            ));
        }

        let alg = match non_empty(&vars, SIGNING_ALG) {
            None => Alg::RS256,
            Some(raw) => raw
                .parse::<Alg>()
                .map_err(|e| ConfigError::key(SIGNING_ALG, &e))?,
        };

        // A set-but-empty key variable is an error rather than "unset": falling
        // back to an ephemeral key because a secret came out empty is exactly
        // the production incident the runbook warns about.
        let signing_key = match (vars.get(SIGNING_KEY_JSON), vars.get(SIGNING_KEY_FILE)) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    &format!("{SIGNING_KEY_JSON}/{SIGNING_KEY_FILE}"),
                    "both are set; set exactly one (or neither for an ephemeral development key)",
                ));
            }
            (Some(json), None) if json.trim().is_empty() => {
                return Err(ConfigError::new(
                    SIGNING_KEY_JSON,
                    "is set but empty (unset it for an ephemeral development key)",
                ));
            }
            (None, Some(path)) if path.trim().is_empty() => {
                return Err(ConfigError::new(SIGNING_KEY_FILE, "is set but empty"));
            }
            (Some(json), None) => KeySpec::Env(json.clone()),
            (None, Some(path)) => KeySpec::File(PathBuf::from(path)),
            (None, None) => KeySpec::Ephemeral,
        };

        let verification_keys_file = match (
            vars.get(VERIFICATION_KEYS_JSON),
            vars.get(VERIFICATION_KEYS_FILE),
        ) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    &format!("{VERIFICATION_KEYS_JSON}/{VERIFICATION_KEYS_FILE}"),
                    "both are set; set at most one",
                ));
            }
            // Like the signing key: an empty path from a broken manifest
            // must not silently publish fewer keys.
            (None, Some(path)) if path.trim().is_empty() => {
                return Err(ConfigError::new(VERIFICATION_KEYS_FILE, "is set but empty"));
            }
            (None, Some(path)) => Some(PathBuf::from(path)),
            _ => None,
        };
        let verification_keys = parse_verification(
            vars.get(VERIFICATION_KEYS_JSON).map_or("", String::as_str),
            VERIFICATION_KEYS_JSON,
        )?;

        // Like the key variables, set-but-empty is an error: an empty value
        // from a missing Secret key must not silently switch authentication off.
        let mint_tokens_file = match vars.get(MINT_TOKENS_FILE) {
            None => None,
            Some(path) if path.trim().is_empty() => {
                return Err(ConfigError::new(
                    MINT_TOKENS_FILE,
                    "is set but empty (unset it to leave POST /tokens unauthenticated)",
                ));
            }
            Some(path) => Some(PathBuf::from(path)),
        };
        let rate_limit = parse_rate_limit(&vars)?;
        let audit_log = match non_empty(&vars, AUDIT_LOG).map(str::trim) {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("off") => false,
            Some(v) if v.eq_ignore_ascii_case("stdout") => true,
            Some(v) => {
                return Err(ConfigError::new(
                    AUDIT_LOG,
                    format!("must be stdout or off, got {v:?}"),
                ));
            }
        };

        let header_timeout =
            parse_seconds(&vars, HEADER_TIMEOUT, 1, listener::DEFAULT_HEADER_TIMEOUT)?;
        let request_timeout =
            parse_seconds(&vars, REQUEST_TIMEOUT, 1, listener::DEFAULT_REQUEST_TIMEOUT)?;
        let max_connections = parse_max_connections(&vars)?;
        let shutdown_delay = parse_seconds(&vars, SHUTDOWN_DELAY, 0, Duration::ZERO)?;
        let (mint_port, mint_bind) = parse_mint_listener(&vars, port, bind)?;
        let jwks_max_age = parse_jwks_max_age(&vars)?;
        let verifier_records = parse_verifier_records(&vars)?;

        Ok(Config {
            port,
            bind,
            issuer,
            audience,
            max_ttl_seconds,
            default_ttl_seconds,
            alg,
            signing_key,
            verification_keys,
            verification_keys_file,
            mint_tokens_file,
            rate_limit,
            audit_log,
            header_timeout,
            request_timeout,
            max_connections,
            shutdown_delay,
            mint_port,
            mint_bind,
            jwks_max_age,
            verifier_records,
        })
    }

    /// Reads and parses `MACP_AUTH_MINT_TOKENS_FILE` through `read_file`
    /// (`None` when caller authentication is off).
    pub fn load_callers<F>(&self, read_file: F) -> Result<Option<CallerSet>, ConfigError>
    where
        F: FnOnce(&Path) -> io::Result<String>,
    {
        let Some(path) = &self.mint_tokens_file else {
            return Ok(None);
        };
        let text = read_file(path).map_err(|e| {
            ConfigError::new(
                MINT_TOKENS_FILE,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        CallerSet::parse(&text)
            .map(Some)
            .map_err(|e| ConfigError::new(MINT_TOKENS_FILE, format!("{}: {e}", path.display())))
    }

    /// Loads the active key (reading a key file through `read_file`, or
    /// generating an ephemeral key) and checks that no verification key shares
    /// its kid.
    pub fn load_keys<F>(&self, mut read_file: F) -> Result<LoadedKeys, ConfigError>
    where
        F: FnMut(&Path) -> io::Result<String>,
    {
        let (active, source, variable) = match &self.signing_key {
            KeySpec::Env(text) => (
                SigningKey::from_jwk_json(text, self.alg)
                    .map_err(|e| ConfigError::key(SIGNING_KEY_JSON, &e))?,
                KeySource::Env,
                SIGNING_KEY_JSON,
            ),
            KeySpec::File(path) => {
                let text = read_file(path).map_err(|e| {
                    ConfigError::new(
                        SIGNING_KEY_FILE,
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                (
                    SigningKey::from_jwk_json(&text, self.alg)
                        .map_err(|e| ConfigError::key(SIGNING_KEY_FILE, &e))?,
                    KeySource::File,
                    SIGNING_KEY_FILE,
                )
            }
            KeySpec::Ephemeral => {
                let (key, _private) =
                    SigningKey::generate(self.alg, EPHEMERAL_KID, EPHEMERAL_RSA_BITS)
                        .map_err(|e| ConfigError::key("ephemeral key", &e))?;
                (key, KeySource::Ephemeral, "ephemeral key")
            }
        };
        let (verification, verification_variable) = match &self.verification_keys_file {
            None => (self.verification_keys.clone(), VERIFICATION_KEYS_JSON),
            Some(path) => {
                let text = read_file(path).map_err(|e| {
                    ConfigError::new(
                        VERIFICATION_KEYS_FILE,
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                (
                    parse_verification(&text, VERIFICATION_KEYS_FILE)?,
                    VERIFICATION_KEYS_FILE,
                )
            }
        };
        if let Some(dup) = verification
            .iter()
            .find(|k| k["kid"].as_str() == Some(active.kid()))
        {
            return Err(ConfigError::new(
                verification_variable,
                format!(
                    "duplicate kid {:?}: it is also the kid of the active key ({variable})",
                    dup["kid"].as_str().unwrap_or_default()
                ),
            ));
        }
        Ok(LoadedKeys {
            active,
            source,
            verification,
        })
    }
}

#[cfg(test)]
mod tests;
