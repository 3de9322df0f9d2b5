//! `sandbox`: a local Kubernetes cluster in one process, for `kubectl` and
//! `helm` (see `macp_auth_e2e::sandbox`). `scripts/sandbox` wraps it.
//!
//! By default it runs the operator and applies `config/samples/minimal.yaml`,
//! then shows a status line until Ctrl-C, which stops every process it
//! started and removes its temporary directory.

use std::io::{IsTerminal as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use macp_auth_e2e::binary;
use macp_auth_e2e::helm::repo_root;
use macp_auth_e2e::sandbox::forward::ServiceAddr;
use macp_auth_e2e::sandbox::load::SandboxLoad;
use macp_auth_e2e::sandbox::{Sandbox, SandboxConfig, objects, status};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(
    about = "A local Kubernetes sandbox: API server, simulated kubelet and the MACP auth operator"
)]
struct Args {
    /// Local port of the Kubernetes API server (0: any free port).
    #[arg(long, default_value_t = 6443)]
    port: u16,
    /// Leave the operator out (and the sample with it), so that `helm install` puts it in.
    #[arg(long)]
    no_operator: bool,
    /// Do not apply the sample MacpAuth.
    #[arg(long)]
    no_sample: bool,
    /// The MacpAuth applied at start.
    #[arg(long, default_value = "config/samples/minimal.yaml")]
    sample: PathBuf,
    /// Mint and verify continuously through a MacpAuth's Service
    /// (`namespace/name`; default the sample's `macp/auth`), every token
    /// verified with the macp-auth resolver; rates on the status line.
    #[arg(long, num_args = 0..=1, default_missing_value = "macp/auth", value_name = "NAMESPACE/NAME")]
    load: Option<String>,
}

const SAMPLE_READY_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let load_target = match &args.load {
        Some(t) => Some(
            t.split_once('/')
                .map(|(ns, n)| (ns.to_string(), n.to_string()))
                .context("--load takes NAMESPACE/NAME")?,
        ),
        None => None,
    };

    println!(
        "sandbox: a local Kubernetes API server and simulated cluster in this process.\n\
         sandbox: its state lives in memory only: stopping it (Ctrl-C) loses every object."
    );
    println!("sandbox: finding the token service and operator binaries (cargo build when stale)");
    let service_bin = binary::service_binary_async()
        .await
        .context("the token service binary")?;
    let operator_bin = binary::operator_binary_async()
        .await
        .context("the operator binary")?;
    let (tx, mut announced) = mpsc::unbounded_channel();
    let config = SandboxConfig {
        api_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)),
        run_operator: !args.no_operator,
        service_bin,
        operator_bin,
    };
    let sandbox = Sandbox::start(config, Some(tx)).await?;
    let plugins = match binary::kubectl_macp_binary_async().await {
        Ok(bin) => link_plugin(sandbox.dir(), &bin)
            .map_err(|e| tracing::warn!(error = %e, "kubectl-macp not linked"))
            .ok(),
        Err(e) => {
            tracing::warn!(error = %e, "no kubectl-macp plugin");
            None
        }
    };
    print_intro(&sandbox, &args, plugins.as_deref());

    let mut sample_wait = None;
    if !args.no_operator && !args.no_sample {
        let path = repo_root().join(&args.sample);
        let created = objects::apply_macpauths(&sandbox.api(), &path)?;
        println!(
            "sandbox: applied {} ({})",
            args.sample.display(),
            created.join(", ")
        );
        if let Some((ns, name)) = created.first().and_then(|c| c.split_once('/')) {
            sample_wait = Some((ns.to_string(), name.to_string()));
        }
    }
    let load = load_target.map(|(ns, name)| {
        println!("sandbox: load on {ns}/{name} (every token verified with the macp-auth resolver)");
        SandboxLoad::start(sandbox.api(), sandbox.forwards(), &ns, &name)
    });

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut line = StatusLine::new();
    {
        let ready = async {
            if let Some((ns, name)) = &sample_wait {
                Some((
                    ns,
                    name,
                    sandbox.wait_ready(ns, name, SAMPLE_READY_TIMEOUT).await,
                ))
            } else {
                std::future::pending().await
            }
        };
        tokio::pin!(ready);
        let mut ready_done = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = sigterm.recv() => break,
                Some(a) = announced.recv() => line.print_above(&service_line(&a)),
                Some((ns, name, url)) = &mut ready, if !ready_done => {
                ready_done = true;
                    line.print_above(&match url {
                        Some(url) => ready_text(ns, name, &url),
                        None => format!("sandbox: {ns}/{name} is not Ready after {SAMPLE_READY_TIMEOUT:?}; see kubectl describe macpauth -n {ns} {name}"),
                    });
                }
                _ = tick.tick() => {
                    let api = sandbox.api();
                    let text = status::line(
                        &api.list("macp.io", "macpauths", None),
                        &api.list("apps", "deployments", None),
                        load.as_ref().and_then(SandboxLoad::rates).as_ref(),
                    );
                    line.show(&text);
                }
            }
        }
    }

    line.print_above("sandbox: stopping every pod process...");
    let started = Instant::now();
    if let Some(l) = load
        && let Some(r) = l.stop().await
    {
        println!(
            "sandbox: load minted {} tokens, verified {}, {} failed verifications, {} failed mints",
            r.minted, r.verified, r.verify_failures, r.mint_errors
        );
    }
    let dir = sandbox.dir().to_path_buf();
    sandbox.shutdown().await;
    println!(
        "sandbox: stopped in {:.1} s; removed {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(())
}

/// `<dir>/bin/kubectl-macp` -> the plugin: a directory with the plugin
/// alone, for the PATH the sandbox prints (kubectl runs `kubectl-<name>`
/// executables it finds there as `kubectl <name>`).
fn link_plugin(dir: &std::path::Path, bin: &std::path::Path) -> std::io::Result<PathBuf> {
    let plugins = dir.join("bin");
    std::fs::create_dir_all(&plugins)?;
    std::os::unix::fs::symlink(bin, plugins.join("kubectl-macp"))?;
    Ok(plugins)
}

fn print_intro(sandbox: &Sandbox, args: &Args, plugins: Option<&std::path::Path>) {
    let tools = repo_root().join(".cache/tools/bin");
    let kubectl = tools.join("kubectl");
    let kubectl_line = if kubectl.is_file() {
        format!(
            "sandbox: kubectl and helm (installed by scripts/install-tools): {}",
            kubectl.display()
        )
    } else {
        "sandbox: no kubectl in .cache/tools/bin: run scripts/install-tools (scripts/sandbox does)"
            .to_string()
    };
    println!(
        "sandbox: Kubernetes API at {api}; files in {dir} (removed on exit)\n\
         {kubectl_line}\n\n\
         In another shell:\n\n  \
         export KUBECONFIG={kc}\n  \
         export PATH={plugins}{tools}:$PATH\n",
        api = sandbox.api_url(),
        dir = sandbox.dir().display(),
        kc = sandbox.kubeconfig().display(),
        plugins = plugins
            .map(|p| format!("{}:", p.display()))
            .unwrap_or_default(),
        tools = tools.display(),
    );
    if args.no_operator {
        println!(
            "  helm install macp-auth-operator charts/macp-auth-operator -n macp-system --create-namespace\n  \
             kubectl rollout status -n macp-system deploy/macp-auth-operator\n  \
             kubectl create namespace macp\n  \
             kubectl apply -f config/samples/minimal.yaml\n  \
             kubectl wait -n macp macpauth/auth --for=condition=Ready --timeout=2m\n  \
             kubectl get macpauths -A -w\n"
        );
    } else {
        println!(
            "  kubectl get macpauths -A -w\n  \
             kubectl get pods -A -o wide\n  \
             kubectl logs -n macp-system deploy/macp-auth-operator\n  \
             kubectl macp status -n macp auth\n  \
             kubectl macp plan -n macp auth\n  \
             kubectl macp rotate -n macp auth --wait\n  \
             kubectl macp history -n macp auth\n  \
             kubectl macp audit -n macp auth --kid <KID>\n"
        );
    }
}

fn ready_text(ns: &str, name: &str, url: &str) -> String {
    format!(
        "sandbox: {ns}/{name} is Ready; its token service (Service {ns}/{name}) answers on {url}:\n  \
         curl -s {url}/.well-known/jwks.json\n  \
         curl -s {url}/tokens -H 'content-type: application/json' -d '{{\"sender\":\"agent://alice\",\"ttl_seconds\":120}}'"
    )
}

fn service_line(a: &ServiceAddr) -> String {
    if a.live {
        format!("sandbox: Service {}/{} -> {}", a.namespace, a.name, a.url)
    } else {
        format!(
            "sandbox: Service {}/{} gone ({} closed)",
            a.namespace, a.name, a.url
        )
    }
}

/// One line redrawn in place on a terminal; elsewhere (a log file, CI) a new
/// line only when the text changes, or every 30 s while the load runs.
struct StatusLine {
    tty: bool,
    shown: bool,
    last: String,
    last_at: Instant,
}

impl StatusLine {
    fn new() -> Self {
        Self {
            tty: std::io::stdout().is_terminal(),
            shown: false,
            last: String::new(),
            last_at: Instant::now(),
        }
    }

    fn show(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r\x1b[2K{text}");
            self.shown = true;
        } else {
            // Rates change every second; the rest is what a log reader wants.
            let stable = text.split(" | load ").next().unwrap_or(text);
            let last_stable = self.last.split(" | load ").next().unwrap_or(&self.last);
            if stable == last_stable && self.last_at.elapsed() < Duration::from_secs(30) {
                return;
            }
            let _ = writeln!(out, "{text}");
            self.last_at = Instant::now();
        }
        self.last = text.to_string();
        let _ = out.flush();
    }

    /// Prints a message on lines of its own, the status line redrawn below it.
    fn print_above(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        if self.tty && self.shown {
            let _ = write!(out, "\r\x1b[2K");
        }
        let _ = writeln!(out, "{text}");
        if self.tty && self.shown {
            let _ = write!(out, "{}", self.last);
        }
        let _ = out.flush();
    }
}
