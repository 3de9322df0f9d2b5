//! `--load`: the load generator of the end-to-end scenarios run against one
//! MacpAuth's Service for as long as the sandbox runs, every token verified
//! with the MACP runtime's own verifier (`macp-auth`'s `JwtBearerResolver`)
//! with the MacpAuth's JWKS cache TTL, so that a rotation under load shows
//! its failed verifications (none, when it works) on the status line.
//!
//! The generator keeps a record per token, so it runs in rounds of
//! `ROUND` whose totals are added up; a round starts only when the Service
//! has ready endpoints.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::forward::Forwards;
use super::status::LoadRates;
use crate::apiserver::ApiHandle;
use crate::load::{LoadConfig, LoadGenerator, LoadReport};

/// How long one generator runs before its counts are folded into the totals.
const ROUND: Duration = Duration::from_secs(300);

/// The running load; [`stop`](Self::stop) ends it.
pub struct SandboxLoad {
    rates: Arc<Mutex<Option<LoadRates>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The generator's settings for MacpAuth `m`: its issuer, audience, cache TTL
/// and lifetimes it grants (defaults as the CRD's).
pub fn config_for(m: Option<&Value>) -> LoadConfig {
    let spec = m.and_then(|m| m.get("spec"));
    let s = |f: &str, d: &str| {
        spec.and_then(|s| s.get(f))
            .and_then(Value::as_str)
            .unwrap_or(d)
            .to_string()
    };
    let n = |f: &str, d: u64| {
        spec.and_then(|s| s.get(f))
            .and_then(Value::as_u64)
            .unwrap_or(d)
    };
    let mut c = LoadConfig::new(n("jwksCacheTtlSeconds", 300));
    c.issuer = s("issuer", "macp-auth-service");
    c.audience = s("audience", "macp-runtime");
    let max_ttl = n("maxTtlSeconds", 3600).max(1);
    c.ttls = vec![max_ttl.min(30), max_ttl.min(120)];
    c.pause = Duration::from_millis(50);
    c.verifiers = 2;
    c.max_duration = ROUND;
    c.max_tokens = usize::MAX;
    c
}

impl SandboxLoad {
    /// Loads Service `namespace/name` (the MacpAuth of the same name).
    pub fn start(api: ApiHandle, forwards: Arc<Forwards>, namespace: &str, name: &str) -> Self {
        let rates = Arc::new(Mutex::new(None));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            api,
            forwards,
            (namespace.to_string(), name.to_string()),
            rates.clone(),
            stopped,
        ));
        Self { rates, stop, task }
    }

    /// Rates over the last second and totals so far; None until the first round starts.
    pub fn rates(&self) -> Option<LoadRates> {
        self.rates.lock().clone()
    }

    /// Stops the load and returns its final rates and totals.
    pub async fn stop(self) -> Option<LoadRates> {
        self.stop.send_replace(true);
        let _ = self.task.await;
        self.rates.lock().clone()
    }
}

#[derive(Default, Clone, Copy)]
struct Totals {
    minted: u64,
    verified: u64,
    checks: u64,
    verify_failures: u64,
    mint_errors: u64,
}

impl Totals {
    fn of(r: &LoadReport) -> Self {
        Self {
            minted: r.minted,
            verified: r.verified,
            checks: r.verified + r.verify_failures + r.late_checks,
            verify_failures: r.verify_failures + r.late_verify_failures,
            mint_errors: r.mint_errors,
        }
    }

    fn plus(self, o: Self) -> Self {
        Self {
            minted: self.minted + o.minted,
            verified: self.verified + o.verified,
            checks: self.checks + o.checks,
            verify_failures: self.verify_failures + o.verify_failures,
            mint_errors: self.mint_errors + o.mint_errors,
        }
    }
}

async fn run(
    api: ApiHandle,
    forwards: Arc<Forwards>,
    (ns, name): (String, String),
    rates: Arc<Mutex<Option<LoadRates>>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut done = Totals::default();
    loop {
        // Wait for the Service's forwarder and a ready endpoint.
        let proxy = loop {
            if *stopped.borrow() {
                return;
            }
            if let Some(p) = forwards.proxy(&ns, &name)
                && !p.endpoints().is_empty()
            {
                break p;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
        };
        let m = api.get("macp.io", "macpauths", Some(&ns), &name);
        let generator = match LoadGenerator::start(proxy, config_for(m.as_ref())).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "sandbox load not started");
                return;
            }
        };
        let started = Instant::now();
        let (mut last, mut last_at) = (Totals::default(), Instant::now());
        loop {
            let stop = tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
                _ = stopped.wait_for(|s| *s) => true,
            };
            let now = Totals::of(&generator.snapshot());
            let dt = last_at.elapsed().as_secs_f64().max(0.001);
            let total = done.plus(now);
            *rates.lock() = Some(LoadRates {
                mints_per_sec: (now.minted - last.minted.min(now.minted)) as f64 / dt,
                verifications_per_sec: (now.checks - last.checks.min(now.checks)) as f64 / dt,
                minted: total.minted,
                verified: total.verified,
                verify_failures: total.verify_failures,
                mint_errors: total.mint_errors,
            });
            (last, last_at) = (now, Instant::now());
            if stop || started.elapsed() >= ROUND {
                break;
            }
        }
        let report = generator.stop().await;
        done = done.plus(Totals::of(&report));
        if let Some(r) = rates.lock().as_mut() {
            // The round's last counts, which the last tick may have missed.
            r.minted = done.minted;
            r.verified = done.verified;
            r.verify_failures = done.verify_failures;
            r.mint_errors = done.mint_errors;
        }
        if *stopped.borrow() {
            return;
        }
    }
}
