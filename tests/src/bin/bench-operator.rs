//! `bench-operator`: the real operator binary, as a process, against the
//! in-process API server, with N MacpAuths in several namespaces. Deployments
//! are rolled out and marked ready by the harness's stand-in (in-process token
//! services per pod, see `macp_auth_e2e::standin`), so the figures are the
//! operator's, not a simulated kubelet's.
//!
//! Prints one line per N (`scripts/bench-operator` wraps it):
//! `bench-operator n=<N> ready_s=<x> requests_per_object=<x> steady_writes_per_min=<x> ...`
//! docs/performance.md records the figures. With `--check` the run also
//! exits 1 when a figure misses its target (docs/performance.md), a storm
//! rotation ends other than `Succeeded`, or an operator round fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use clap::Parser;
use macp_auth_e2e::apiserver::{FakeApiServer, RecordedRequest};
use macp_auth_e2e::cluster::{Cluster, ClusterConfig, rollout};
use macp_auth_e2e::standin::StandIn;
use macp_auth_operator::crd::MacpAuthSpec;
use macp_auth_operator::crd::{MacpAuth, RotationTrigger};
use macp_auth_operator::rotation::{
    PROPAGATION_SLACK_SECONDS, activation_lead, early_start, min_interval, schedule_base,
};
use macp_auth_operator::spread;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

// Built without transparent huge pages (the `no_thp` feature): mimalloc
// advises huge pages for its memory and gives freed pages back within a
// second, so the harness kept faulting in fresh huge pages, and zeroing them
// was a large share of its CPU in a storm profile, CPU taken from the operator
// on the same two cores (docs/performance.md, "What the figures asked for, and what changed").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Measures the operator's cost from 10 to 1000 MacpAuths")]
struct Args {
    /// Numbers of MacpAuths, one run each.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    sizes: Vec<usize>,
    /// Namespaces the MacpAuths are spread over.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Seconds of steady state in which requests and writes are counted.
    #[arg(long, default_value_t = 30)]
    steady_seconds: u64,
    /// The operator binary (a release build for figures worth keeping).
    #[arg(long, default_value = "target/release/macp-auth-operator")]
    operator_bin: PathBuf,
    /// Skip the rotation storm (it lasts the drain, over a minute).
    #[arg(long)]
    no_storm: bool,
    /// Extra arguments for `macp-auth-operator run`, for trials of its
    /// flags (e.g. `--operator-arg=--max-concurrent-reconciles=64`).
    #[arg(long = "operator-arg", allow_hyphen_values = true)]
    operator_args: Vec<String>,
    /// Seconds to wait for any one step before giving up.
    #[arg(long, default_value_t = 600)]
    timeout_seconds: u64,
    /// Exit 1 after the run if any target is missed, any storm rotation's
    /// outcome is not `Succeeded`, or any operator round failed.
    #[arg(long)]
    check: bool,
}

/// The targets of docs/performance.md that `--check` holds the figures to.
/// The Ready bound is n=1000's; smaller N are held to it as well, since
/// they have less to do.
const TARGET_READY_S: f64 = 60.0;
const TARGET_STEADY_WRITES_PER_MIN: f64 = 0.0;
const TARGET_PEAK_RSS_MIB: f64 = 150.0;

/// What `--check` judges of one N.
#[derive(Clone, Debug, Default)]
struct Figures {
    n: usize,
    ready_s: f64,
    steady_writes_per_min: f64,
    peak_rss_mib: f64,
    /// `None` when the storm was skipped.
    storm: Option<StormFigures>,
}

#[derive(Clone, Debug, Default)]
struct StormFigures {
    max_delay_s: f64,
    /// Rotations per outcome (`Succeeded`, `RolledBack`, ...).
    outcomes: BTreeMap<String, usize>,
    /// Storm rotations that never finished.
    unfinished: usize,
    /// Failed operator rounds during the storm.
    round_errors: f64,
}

/// Every way `f` misses: a target (the storm's bound is `rollout_s`, one
/// rollout observed in the same run), a rotation not `Succeeded`, a round error.
fn misses(f: &Figures, rollout_s: Option<f64>) -> Vec<String> {
    let n = f.n;
    let mut out = Vec::new();
    if f.ready_s > TARGET_READY_S {
        out.push(format!(
            "n={n}: ready_s={:.1} > {TARGET_READY_S}",
            f.ready_s
        ));
    }
    if f.steady_writes_per_min > TARGET_STEADY_WRITES_PER_MIN {
        out.push(format!(
            "n={n}: steady_writes_per_min={:.1} > {TARGET_STEADY_WRITES_PER_MIN}",
            f.steady_writes_per_min
        ));
    }
    if f.peak_rss_mib > TARGET_PEAK_RSS_MIB {
        out.push(format!(
            "n={n}: peak_rss_mib={:.1} > {TARGET_PEAK_RSS_MIB}",
            f.peak_rss_mib
        ));
    }
    if let Some(storm) = &f.storm {
        match rollout_s {
            Some(bound) if storm.max_delay_s <= bound => {}
            Some(bound) => out.push(format!(
                "n={n}: storm_max_delay_s={:.1} > rollout_s={bound:.1}",
                storm.max_delay_s
            )),
            None => out.push(format!("n={n}: no rollout_s to bound the storm by")),
        }
        for (outcome, count) in &storm.outcomes {
            if outcome != "Succeeded" {
                out.push(format!("n={n}: {count} storm rotation(s) {outcome}"));
            }
        }
        if storm.unfinished > 0 {
            out.push(format!(
                "n={n}: {} storm rotation(s) never finished",
                storm.unfinished
            ));
        }
        if storm.round_errors > 0.0 {
            out.push(format!("n={n}: storm_round_errors={}", storm.round_errors));
        }
    }
    out
}

/// Scaled-down but valid rotation settings: the storm's waits are the cache
/// TTL plus slack, then the drain (which must cover maxTtl plus the verifier
/// leeway).
const JWKS_CACHE_TTL_SECONDS: i64 = 2;
const MAX_TTL_SECONDS: i64 = 1;
const DRAIN_SECONDS: i64 = 61;

const READY_POLL: Duration = Duration::from_millis(200);
/// Rollouts timed for the storm target's bound.
const ROLLOUT_SAMPLES: usize = 4;
/// How often the storm's progress is polled. Its figures come from the
/// rotations' own timestamps, so the poll only says when to stop; each poll
/// decodes every MacpAuth (at 1 s, a twelfth of the harness's CPU in the
/// storm, taken from the operator on the same cores).
const STORM_POLL: Duration = Duration::from_secs(5);
/// How far ahead the storm's due moment is set, per MacpAuth (at least
/// [`STORM_MIN_LEAD`]): room for the rounds of the interval edits.
const STORM_LEAD_PER_OBJECT: Duration = Duration::from_millis(15);
const STORM_MIN_LEAD: Duration = Duration::from_secs(5);
/// The rollout timeout of the bench's MacpAuths: it bounds nothing here (the
/// stand-in rolls at once) but counts in the schedule's lead and in the
/// shortest interval the operator accepts (`rotation::min_interval`).
const ROLLOUT_TIMEOUT_SECONDS: i64 = 30;
/// Margin over the shortest interval the operator accepts, so an early
/// finisher's next rotation is not due before the last one finishes.
const STORM_INTERVAL_MARGIN: chrono::Duration = chrono::Duration::seconds(60);
/// How long the API server must see no request before steady state begins.
const SETTLE_QUIET: Duration = Duration::from_secs(2);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_fd_limit();
    if !args.operator_bin.is_file() {
        bail!(
            "operator binary {} not found: cargo build --release -p macp-auth-operator",
            args.operator_bin.display()
        );
    }
    println!(
        "bench-operator: Deployments are rolled out and marked ready by the harness stand-in \
         (pods are in-process token services, no kubelet); keys ES256; {} namespaces",
        args.namespaces
    );
    let mut rollout_s = None;
    if !args.no_storm {
        let took = one_rollout(&args)
            .await
            .context("one rollout on the simulated kubelet")?;
        let secs: Vec<f64> = took.iter().map(Duration::as_secs_f64).collect();
        let mean = secs.iter().sum::<f64>() / secs.len().max(1) as f64;
        let min = secs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = secs.iter().copied().fold(0.0, f64::max);
        println!(
            "bench-operator rollout_s={mean:.1} rollout_min_s={min:.1} rollout_max_s={max:.1} \
             (rollouts of one MacpAuth's Deployment on the simulated kubelet: real service processes, \
             the pod spec's probes unscaled; the mean is the storm target's bound)"
        );
        rollout_s = Some(mean);
    }
    let mut missed = Vec::new();
    for &n in &args.sizes {
        let (line, figures) = run_one(&args, n).await.with_context(|| format!("n={n}"))?;
        println!("{line}");
        missed.extend(misses(&figures, rollout_s));
    }
    if args.check {
        if !missed.is_empty() {
            for m in &missed {
                println!("bench-operator check: MISSED {m}");
            }
            std::process::exit(1);
        }
        println!(
            "bench-operator check: every target met, every storm rotation Succeeded, no round error"
        );
    }
    Ok(())
}

/// The bound of the storm target, observed rather than assumed: how long one
/// rollout of the token service's Deployment takes where pods are real
/// processes that must pass the operator's own readiness probe (unscaled
/// periods) and old pods keep the shutdown delay. One MacpAuth with the
/// operator running; the rollout is started the way `kubectl rollout restart`
/// starts one, and lasts until only new pods are left, none terminating (what
/// the operator's rollout check waits for).
async fn one_rollout(args: &Args) -> anyhow::Result<Vec<Duration>> {
    let server = FakeApiServer::start()
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let service_bin = macp_auth_e2e::binary::service_binary_async().await?;
    let mut config = ClusterConfig::new(service_bin);
    config.probe_scale = 1.0;
    let cluster = Cluster::start(server.handle(), config);
    let operator = Operator::start(&args.operator_bin, &server.url(), &args.operator_args).await?;
    let result = async {
        let (ns, name) = ("rollout", "auth-rollout");
        server
            .create("macp.io", "macpauths", macpauth(name, ns))
            .map_err(|e| anyhow::anyhow!("create: {e:?}"))?;
        let timeout = Duration::from_secs(args.timeout_seconds);
        wait_for("Ready (rollout baseline)", timeout, READY_POLL, || {
            Ok((usize::from(all(&server)?.iter().any(is_ready)), 1))
        })
        .await?;
        // The kubelet probes every 5 s, so one rollout lands anywhere in a
        // 5 s window: several rollouts, and the mean is the bound.
        let mut took = Vec::with_capacity(ROLLOUT_SAMPLES);
        for sample in 0..ROLLOUT_SAMPLES {
            let start = Instant::now();
            server
                .modify("apps", "deployments", Some(ns), name, |d| {
                    d["spec"]["template"]["metadata"]["annotations"]
                        ["kubectl.kubernetes.io/restartedAt"] = json!(format!("{}-{sample}", Utc::now().to_rfc3339()));
                })
                .map_err(|e| anyhow::anyhow!("restart: {e:?}"))?;
            let hash = |d: &Value| rollout::template_hash(&d["spec"]["template"]);
            let d = server
                .get("apps", "deployments", Some(ns), name)
                .context("the Deployment is gone")?;
            let want = hash(&d);
            wait_for("rollout", timeout, Duration::from_millis(50), || {
                let pods = cluster.pods();
                let ours: Vec<_> = pods.iter().filter(|p| p.deployment == name).collect();
                let done = !ours.is_empty()
                    && ours
                        .iter()
                        .all(|p| p.template_hash == want && p.ready && !p.terminating);
                Ok((usize::from(done), 1))
            })
            .await?;
            took.push(start.elapsed());
            eprintln!(
                "bench-operator:   rollout {}/{ROLLOUT_SAMPLES}: {:.1}s",
                sample + 1,
                start.elapsed().as_secs_f64()
            );
        }
        Ok(took)
    }
    .await;
    operator.stop().await;
    cluster.shutdown().await;
    result
}

fn raise_fd_limit() {
    // Each pod stand-in holds a listener; a thousand of them need more than
    // the usual soft limit of 1024 descriptors.
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

struct Operator {
    child: Child,
    pid: u32,
    dir: PathBuf,
    port: u16,
}

/// Totals from the operator's own /metrics: how many rounds ran, how long
/// they took, and how many failed.
#[derive(Clone, Copy, Default)]
struct Rounds {
    count: f64,
    seconds: f64,
    errors: f64,
}

impl Rounds {
    fn parse(text: &str) -> Self {
        let mut r = Rounds::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            let base = name.split('{').next().unwrap_or(name);
            match base {
                "macp_operator_reconciles_total" => r.count += v,
                "macp_operator_reconcile_duration_seconds_sum" => r.seconds += v,
                "macp_operator_reconcile_errors_total" => r.errors += v,
                _ => {}
            }
        }
        r
    }

    fn since(self, before: Rounds) -> Rounds {
        Rounds {
            count: self.count - before.count,
            seconds: self.seconds - before.seconds,
            errors: self.errors - before.errors,
        }
    }
}

impl Operator {
    async fn start(bin: &Path, api_url: &str, extra: &[String]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("bench-operator-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: {api_url}\nusers:\n- name: bench\n  user: {{}}\ncontexts:\n- name: bench\n  context:\n    cluster: bench\n    user: bench\ncurrent-context: bench\n"
            ),
        )?;
        let log = std::fs::File::create(dir.join("operator.log"))?;
        let port = free_port()?;
        let child = Command::new(bin)
            .args([
                "run",
                "--listen-address",
                &format!("127.0.0.1:{port}"),
                "--service-image",
                "bench/macp-auth-service:0",
            ])
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            // BENCH_OPERATOR_LOG: the operator's log filter, e.g.
            // `warn,macp_auth_operator::reconcile=debug` to see why each round ran.
            .env(
                "RUST_LOG",
                std::env::var("BENCH_OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let pid = child.id().context("operator pid")?;
        let ready = format!("http://127.0.0.1:{port}/readyz");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("operator not ready; log in {}", dir.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            child,
            pid,
            dir,
            port,
        })
    }

    async fn rounds(&self) -> anyhow::Result<Rounds> {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Rounds::parse(&text))
    }

    /// Peak resident set (MiB) and CPU seconds so far, from /proc.
    fn usage(&self) -> anyhow::Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let hwm_kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("VmHWM")?;
        Ok((hwm_kib / 1024.0, cpu_seconds(&self.pid.to_string())?))
    }

    async fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        if std::env::var_os("BENCH_OPERATOR_LOG").is_some() {
            eprintln!(
                "bench-operator: operator log kept in {}",
                self.dir.join("operator.log").display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// User plus system CPU seconds of a process (`self` for this one), from /proc.
fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .zip(fields.get(12))
        .and_then(|(u, s)| Some(u.parse::<f64>().ok()? + s.parse::<f64>().ok()?))
        .context("utime/stime")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn namespace_of(i: usize, namespaces: usize) -> String {
    format!("bench-{}", i % namespaces.max(1))
}

/// The bench's MacpAuth spec. The verifier-evidence ceiling is the cache
/// TTL plus the slack: the stand-in's pods record no verifier, and a longer
/// ceiling would only lengthen the schedule's lead.
fn spec_json() -> Value {
    json!({
        "signingAlg": "ES256",
        "replicas": 1,
        "maxTtlSeconds": MAX_TTL_SECONDS,
        "defaultTtlSeconds": MAX_TTL_SECONDS,
        "jwksCacheTtlSeconds": JWKS_CACHE_TTL_SECONDS,
        "rotation": {
            "drainSeconds": DRAIN_SECONDS,
            "prepublish": true,
            "rolloutTimeoutSeconds": ROLLOUT_TIMEOUT_SECONDS,
            "propagationTimeoutSeconds": JWKS_CACHE_TTL_SECONDS + PROPAGATION_SLACK_SECONDS,
            // The storm's figures in docs/performance.md are rotations
            // without a standby; with one, each MacpAuth also prepares it.
            "standby": false
        },
    })
}

/// [`spec_json`] as the operator reads it, for its schedule's figures.
fn spec() -> anyhow::Result<MacpAuthSpec> {
    serde_json::from_value(spec_json()).map_err(|e| anyhow::anyhow!("bench spec: {e}"))
}

fn macpauth(name: &str, ns: &str) -> Value {
    json!({
        "apiVersion": "macp.io/v1alpha1",
        "kind": "MacpAuth",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec_json()
    })
}

fn all(server: &FakeApiServer) -> anyhow::Result<Vec<MacpAuth>> {
    server
        .list_as::<MacpAuth>(None)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

fn is_ready(m: &MacpAuth) -> bool {
    m.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut done: impl FnMut() -> anyhow::Result<(usize, usize)>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let (ok, total) = done()?;
        if ok == total {
            return Ok(start.elapsed());
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "bench-operator:   {what}: {ok}/{total} after {:.0?}",
                start.elapsed()
            );
            last_report = Instant::now();
        }
        if start.elapsed() > timeout {
            bail!("{what}: only {ok}/{total} after {timeout:?}");
        }
        tokio::time::sleep(poll).await;
    }
}

/// Waits until the API server has seen no request for [`SETTLE_QUIET`]; how
/// long that took (the quiet itself not counted) and the requests meanwhile.
async fn settle(server: &FakeApiServer, timeout: Duration) -> (Duration, usize) {
    let start = Instant::now();
    let mut requests = 0usize;
    loop {
        server.reset_log();
        tokio::time::sleep(SETTLE_QUIET).await;
        let tail = server.requests().len();
        if tail == 0 || start.elapsed() > timeout {
            break;
        }
        requests += tail;
    }
    (start.elapsed().saturating_sub(SETTLE_QUIET), requests)
}

fn by_verb(requests: &[RecordedRequest], n: usize) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in requests {
        *counts.entry(r.verb.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(verb, c)| format!("{verb}={:.2}", *c as f64 / n as f64))
        .collect::<Vec<_>>()
        .join(",")
}

/// `verb:resource=count` of a request log, for what steady state still asks.
fn by_resource(requests: &[RecordedRequest]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in requests {
        *counts
            .entry(format!("{}:{}", r.verb, r.resource))
            .or_default() += 1;
    }
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(k, c)| format!("{k}={c}"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn run_one(args: &Args, n: usize) -> anyhow::Result<(String, Figures)> {
    let timeout = Duration::from_secs(args.timeout_seconds);
    let harness_cpu_before = cpu_seconds("self")?;
    let server = FakeApiServer::start()
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let standin = StandIn::start(server.handle());
    let operator = Operator::start(&args.operator_bin, &server.url(), &args.operator_args).await?;
    eprintln!("bench-operator: n={n}: creating");
    server.reset_log();

    let created = Utc::now();
    for i in 0..n {
        let ns = namespace_of(i, args.namespaces);
        server
            .create(
                "macp.io",
                "macpauths",
                macpauth(&format!("auth-{i:04}"), &ns),
            )
            .map_err(|e| anyhow::anyhow!("create: {e:?}"))?;
    }
    // ready_s is the poll's own clock, so it polls often; the storm's figures
    // come from the rotations' timestamps, so its polls (each decodes every
    // MacpAuth: CPU the operator would otherwise have) are sparse.
    let ready = wait_for("Ready", timeout, READY_POLL, || {
        let list = all(&server)?;
        Ok((list.iter().filter(|m| is_ready(m)).count(), n))
    })
    .await?;
    let to_ready = server.requests();

    // The last rounds of the creation burst (the echoes of the operator's own
    // status writes, debounced and queued behind the others) still run after
    // the last object turns Ready: wait until the API server has been quiet
    // for SETTLE_QUIET, so that the steady window counts steady state only.
    let (settle, settle_requests) = settle(&server, timeout).await;

    // Steady state: nothing changes, so the operator should write nothing.
    server.reset_log();
    tokio::time::sleep(Duration::from_secs(args.steady_seconds)).await;
    let steady = server.requests();
    let per_min = 60.0 / args.steady_seconds as f64;
    let steady_writes = steady.iter().filter(|r| r.is_write()).count() as f64 * per_min;
    let steady_requests = steady.len() as f64 * per_min;

    let (storm, storm_figures) = if args.no_storm {
        (
            String::from("storm_s=skipped storm_max_delay_s=skipped"),
            None,
        )
    } else {
        let (line, figures) = storm(&server, &operator, n, created, timeout).await?;
        (line, Some(figures))
    };
    let (rss, cpu) = operator.usage()?;
    // The API server and the pod stand-ins share this process: their CPU
    // next to the operator's shows which side a slow figure comes from.
    let harness_cpu = cpu_seconds("self")? - harness_cpu_before;
    operator.stop().await;
    standin.shutdown().await;
    let figures = Figures {
        n,
        ready_s: ready.as_secs_f64(),
        steady_writes_per_min: steady_writes,
        peak_rss_mib: rss,
        storm: storm_figures,
    };
    let line = format!(
        "bench-operator n={n} ready_s={:.1} requests_per_object={:.2} steady_writes_per_min={steady_writes:.1} \
         peak_rss_mib={rss:.1} cpu_s={cpu:.1} {storm} steady_requests_per_min={steady_requests:.1} \
         requests_by_verb_per_object={} steady_requests={} harness_cpu_s={harness_cpu:.1} \
         settle_s={:.1} settle_requests_per_object={:.2}",
        ready.as_secs_f64(),
        to_ready.len() as f64 / n as f64,
        by_verb(&to_ready, n),
        by_resource(&steady),
        settle.as_secs_f64(),
        settle_requests as f64 / n as f64,
    );
    Ok((line, figures))
}

/// Every MacpAuth's `rotation.interval` made due at the same moment, the way
/// a real storm comes: each interval is set so that one interval after that
/// object's last rotation is the common due moment, a little ahead; the
/// rounds those edits trigger (nothing is due yet) run and settle first, and
/// then every rotation starts from the operator's own timers, with no edit in
/// the measurement. The operator starts each scheduled rotation early by the
/// object's place in a tenth of its interval (`rotation::early_start`), so
/// the storm begins that window before the due moment, and the edits must
/// settle before the window opens. The operator makes a rotation due one
/// interval after the key's activation less the lead its successor needs to
/// sign (`rotation::activation_lead`), so each interval is set to the time to
/// the due moment plus that lead. The intervals are at least the shortest
/// the operator accepts plus [`STORM_INTERVAL_MARGIN`], so no rotation comes
/// due a second time before the last of the storm finishes.
async fn storm(
    server: &FakeApiServer,
    operator: &Operator,
    n: usize,
    created: DateTime<Utc>,
    timeout: Duration,
) -> anyhow::Result<(String, StormFigures)> {
    let list = all(server)?;
    let bases: Vec<(String, String, DateTime<Utc>)> = list
        .iter()
        .map(|m| {
            // Where the operator counts the interval from.
            let base = m.status.as_ref().and_then(schedule_base).unwrap_or(created);
            let (ns, name) = key_of(m);
            (ns, name, base)
        })
        .collect();
    let youngest = bases.iter().map(|(_, _, b)| *b).max().unwrap_or(created);
    let lead = STORM_LEAD_PER_OBJECT
        .saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
        .max(STORM_MIN_LEAD);
    let spec = spec()?;
    let schedule = Schedule {
        lead: chrono::Duration::from_std(activation_lead(&spec))?,
        min: chrono::Duration::from_std(min_interval(&spec))? + STORM_INTERVAL_MARGIN,
    };
    let due = storm_due(&bases, youngest, lead, &schedule);
    let window = earliest_start(&bases, due, &schedule);
    eprintln!(
        "bench-operator: n={n}: rotation storm: every interval set to fall due in {:.0}s \
         (intervals of at least {:.0}s, so none comes due twice); \
         the operator starts them over the {:.1}s before",
        secs(due - Utc::now()),
        secs(schedule.min),
        secs(due - window),
    );
    for (ns, name, base) in &bases {
        let interval_ms = schedule.interval(*base, due).num_milliseconds();
        server
            .modify("macp.io", "macpauths", Some(ns), name, |obj| {
                obj["spec"]["rotation"]["interval"] = json!(format!("{interval_ms}ms"));
            })
            .map_err(|e| anyhow::anyhow!("set interval: {e:?}"))?;
    }
    // The rounds of the edits must be over before the storm: their cost is
    // the bench's, not the storm's.
    let (settled, _) = settle(server, timeout).await;
    // Each rotation's own start, as the operator scheduled it.
    let mut scheduled: BTreeMap<(String, String), DateTime<Utc>> = BTreeMap::new();
    for m in all(server)? {
        let (ns, name) = key_of(&m);
        let Some(at) = m.status.as_ref().and_then(|s| s.next_rotation_time) else {
            bail!("{ns}/{name} has no nextRotationTime after its interval was set");
        };
        scheduled.insert((ns, name), at);
    }
    // The intervals were written in whole milliseconds.
    let slack = chrono::Duration::milliseconds(10);
    if let Some(((ns, name), at)) = scheduled
        .iter()
        .find(|(_, at)| **at > due + slack || **at < window - slack)
    {
        bail!(
            "{ns}/{name} is scheduled at {at}, outside the window {window} to {due} \
             the bench computed from rotation::early_start"
        );
    }
    let window = scheduled.values().copied().min().unwrap_or(window);
    let early = (window - Utc::now()).to_std().unwrap_or_default();
    if early.is_zero() {
        bail!(
            "the rounds of the interval edits took {settled:.1?}, past the storm's first \
             start: raise STORM_LEAD_PER_OBJECT"
        );
    }
    tokio::time::sleep(early).await;
    let rounds_before = operator.rounds().await?;
    server.reset_log();
    let scheduled_since = |m: &MacpAuth| {
        m.status.as_ref().is_some_and(|s| {
            s.rotation
                .as_ref()
                .is_some_and(|r| r.started_at.is_some_and(|t| t >= youngest))
                || s.history
                    .iter()
                    .any(|r| r.trigger == RotationTrigger::Scheduled && r.started_at >= youngest)
        })
    };
    wait_for("rotations started", timeout, STORM_POLL, || {
        Ok((
            all(server)?.iter().filter(|m| scheduled_since(m)).count(),
            n,
        ))
    })
    .await?;
    let finished = |m: &MacpAuth| {
        m.status.as_ref().and_then(|s| {
            s.history
                .iter()
                .find(|r| r.trigger == RotationTrigger::Scheduled && r.started_at >= youngest)
                .map(|r| (r.started_at, r.finished_at, format!("{:?}", r.outcome)))
        })
    };
    wait_for("rotations finished", timeout, STORM_POLL, || {
        Ok((
            all(server)?
                .iter()
                .filter(|m| finished(m).is_some())
                .count(),
            n,
        ))
    })
    .await?;
    // What one rotation costs the API server, next to what creation cost.
    let storm_requests = server.requests();
    let rounds = operator.rounds().await?.since(rounds_before);
    let waits = (JWKS_CACHE_TTL_SECONDS + PROPAGATION_SLACK_SECONDS + DRAIN_SECONDS) as f64;
    let mut storm_s: f64 = 0.0;
    let mut max_delay = f64::NEG_INFINITY;
    let mut max_past_due = f64::NEG_INFINITY;
    let mut max_start = f64::NEG_INFINITY;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut starts: Vec<f64> = Vec::with_capacity(n);
    let mut unfinished = 0;
    for m in all(server)? {
        let Some((started, done, outcome)) = finished(&m) else {
            unfinished += 1;
            continue;
        };
        let own = scheduled.get(&key_of(&m)).copied().unwrap_or(due);
        storm_s = storm_s.max(secs(done - window));
        // Late against its own start, which the operator chose early: the
        // storm's cost to this rotation.
        max_delay = max_delay.max(secs(done - own) - waits);
        // Late against the interval itself: the contract.
        max_past_due = max_past_due.max(secs(done - due) - waits);
        let start = secs(started - own);
        max_start = max_start.max(start);
        starts.push(start);
        *outcomes.entry(outcome).or_default() += 1;
    }
    let steps = storm_steps(server, window, &scheduled);
    let figures = StormFigures {
        max_delay_s: max_delay,
        outcomes: outcomes.clone(),
        unfinished,
        round_errors: rounds.errors,
    };
    let outcomes = outcomes
        .iter()
        .map(|(o, c)| format!("{o}:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let line = format!(
        "storm_s={storm_s:.1} storm_max_delay_s={max_delay:.1} storm_max_start_s={max_start:.1} \
         storm_start_p50_s={:.1} storm_start_p90_s={:.1} storm_waits_s={waits:.0} \
         storm_window_s={:.1} storm_max_past_due_s={max_past_due:.1} storm_outcomes={outcomes} \
         storm_requests_per_object={:.2} storm_requests_by_verb_per_object={} \
         storm_rounds_per_object={:.2} storm_round_mean_ms={:.0} storm_round_errors={} \
         storm_steps={steps}",
        percentile(&mut starts, 0.5),
        percentile(&mut starts, 0.9),
        secs(due - window),
        storm_requests.len() as f64 / n as f64,
        by_verb(&storm_requests, n),
        rounds.count / n as f64,
        if rounds.count > 0.0 {
            rounds.seconds / rounds.count * 1000.0
        } else {
            0.0
        },
        rounds.errors,
    );
    Ok((line, figures))
}

/// The operator's schedule for the bench's spec.
struct Schedule {
    /// `rotation::activation_lead`: how long before one interval after the
    /// key's activation a rotation falls due.
    lead: chrono::Duration,
    /// The shortest interval the bench sets.
    min: chrono::Duration,
}

impl Schedule {
    /// The interval that makes a rotation of a key activated at `base` fall due at `due`.
    fn interval(&self, base: DateTime<Utc>, due: DateTime<Utc>) -> chrono::Duration {
        due - base + self.lead
    }
}

/// The storm's due moment: at an interval of at least `schedule.min` from
/// the youngest schedule base, and far enough ahead that the earliest early
/// start ([`earliest_start`]) is still `lead` away. The window grows with
/// the intervals, a tenth as fast as the due moment moves, so a few steps
/// settle it.
fn storm_due(
    bases: &[(String, String, DateTime<Utc>)],
    youngest: DateTime<Utc>,
    lead: Duration,
    schedule: &Schedule,
) -> DateTime<Utc> {
    let lead = chrono::Duration::from_std(lead).unwrap_or(chrono::Duration::MAX);
    let now = Utc::now();
    let mut due = (now + lead).max(youngest + schedule.min - schedule.lead);
    for _ in 0..32 {
        let ahead = earliest_start(bases, due, schedule) - now;
        if ahead >= lead {
            break;
        }
        due += lead - ahead + chrono::Duration::milliseconds(1);
    }
    due
}

/// The earliest moment the operator starts one of the rotations that fall
/// due at `due`: each starts early by its place in its interval's window.
fn earliest_start(
    bases: &[(String, String, DateTime<Utc>)],
    due: DateTime<Utc>,
    schedule: &Schedule,
) -> DateTime<Utc> {
    bases
        .iter()
        .map(|(ns, name, base)| {
            let interval = schedule.interval(*base, due).to_std().unwrap_or_default();
            let early = early_start(interval, spread::place(&spread::key(ns, name)));
            due - chrono::Duration::from_std(early).unwrap_or_default()
        })
        .min()
        .unwrap_or(due)
}

/// Where a storm's time goes, from the operator's own events (one per
/// phase entered, with its time): for each step from one reason to the next
/// (`due` is the rotation's own scheduled start, `scheduled`), the median and
/// worst seconds it took over all rotations, waits included
/// (`Propagating>Activating` holds the cache TTL and slack,
/// `Draining>Retiring` the drain). Events before the storm's `window` opened
/// belong to creation.
fn storm_steps(
    server: &FakeApiServer,
    window: DateTime<Utc>,
    scheduled: &BTreeMap<(String, String), DateTime<Utc>>,
) -> String {
    // (namespace, name) -> the events of its storm rotation: (time, reason).
    type Timeline = Vec<(DateTime<Utc>, String)>;
    let mut timelines: BTreeMap<(String, String), Timeline> = scheduled
        .keys()
        .map(|key| (key.clone(), Timeline::new()))
        .collect();
    let namespaces: std::collections::BTreeSet<String> =
        timelines.keys().map(|(ns, _)| ns.clone()).collect();
    for ns in namespaces {
        for e in server.list("events.k8s.io", "events", Some(&ns)) {
            let (Some(name), Some(reason), Some(time)) = (
                e["regarding"]["name"].as_str(),
                e["reason"].as_str(),
                e["eventTime"].as_str(),
            ) else {
                continue;
            };
            let Ok(time) = DateTime::parse_from_rfc3339(time) else {
                continue;
            };
            let time = time.with_timezone(&Utc);
            if time < window {
                continue;
            }
            if let Some(t) = timelines.get_mut(&(ns.clone(), name.to_string())) {
                t.push((time, reason.to_string()));
            }
        }
    }
    // Per step: how long it took, and when it ended (to print steps in order).
    let mut gaps: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for (key, timeline) in timelines.iter_mut() {
        timeline.sort();
        let Some(&due) = scheduled.get(key) else {
            continue;
        };
        let mut previous = (due, String::from("due"));
        for (time, reason) in timeline.iter() {
            let gap = secs(*time - previous.0);
            let step = gaps.entry(format!("{}>{reason}", previous.1)).or_default();
            step.0.push(gap);
            step.1.push(secs(*time - window));
            previous = (*time, reason.clone());
        }
    }
    let mut steps: Vec<(f64, String)> = gaps
        .into_iter()
        .map(|(step, (mut took, mut ended))| {
            let median = percentile(&mut took, 0.5);
            let worst = percentile(&mut took, 1.0);
            (
                percentile(&mut ended, 0.5),
                format!("{step}:{median:.1}/{worst:.1}"),
            )
        })
        .collect();
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));
    steps
        .into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join(",")
}

/// A MacpAuth's namespace and name.
fn key_of(m: &MacpAuth) -> (String, String) {
    (
        m.metadata.namespace.clone().unwrap_or_default(),
        m.metadata.name.clone().unwrap_or_default(),
    )
}

/// Seconds, to the millisecond.
fn secs(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// The `q` quantile (0..=1) of `values`, nearest rank; 0 when empty.
fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Figures {
        Figures {
            n: 1000,
            ready_s: 3.7,
            steady_writes_per_min: 0.0,
            peak_rss_mib: 127.0,
            storm: Some(StormFigures {
                max_delay_s: 1.8,
                outcomes: BTreeMap::from([("Succeeded".to_string(), 1000)]),
                unfinished: 0,
                round_errors: 0.0,
            }),
        }
    }

    /// Makes one figure of a good run miss.
    type Spoil = fn(&mut Figures);

    #[test]
    fn check_passes_only_a_run_that_meets_every_target() {
        assert_eq!(misses(&good(), Some(8.8)), Vec::<String>::new());
        let cases: [(&str, Spoil); 7] = [
            ("ready_s", |f| f.ready_s = 60.1),
            ("steady_writes", |f| f.steady_writes_per_min = 2.0),
            ("peak_rss", |f| f.peak_rss_mib = 150.5),
            ("storm_max_delay", |f| {
                if let Some(s) = f.storm.as_mut() {
                    s.max_delay_s = 9.0;
                }
            }),
            ("RolledBack", |f| {
                if let Some(s) = f.storm.as_mut() {
                    s.outcomes.insert("RolledBack".into(), 1);
                }
            }),
            ("never finished", |f| {
                if let Some(s) = f.storm.as_mut() {
                    s.unfinished = 1;
                }
            }),
            ("round_errors", |f| {
                if let Some(s) = f.storm.as_mut() {
                    s.round_errors = 1.0;
                }
            }),
        ];
        for (what, spoil) in cases {
            let mut f = good();
            spoil(&mut f);
            let m = misses(&f, Some(8.8));
            assert_eq!(m.len(), 1, "{what}: {m:?}");
            assert!(m[0].contains(what), "{what}: {m:?}");
        }
        // A storm with no observed rollout has no bound: a miss, not a pass.
        assert_eq!(misses(&good(), None).len(), 1);
        // A skipped storm is judged on the other targets only.
        let mut f = good();
        f.storm = None;
        assert!(misses(&f, None).is_empty());
    }
}
