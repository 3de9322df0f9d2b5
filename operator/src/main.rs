//! `macp-auth-operator`: `crd` prints the CRD, `run` (the default) runs the controllers.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use kube::CustomResourceExt;
use macp_auth_operator::cli::{Cli, Command};
use macp_auth_operator::controller::{self, State};
use macp_auth_operator::crd::MacpAuth;
use macp_auth_operator::{HttpProber, Settings, leader, telemetry};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One line on stderr, causes included (`{:#}`), exit 1: the same contract as
    // the token service's fatal startup errors.
    match dispatch().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("macp-auth-operator: fatal: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch() -> anyhow::Result<()> {
    match Cli::parse().into_command() {
        Command::Crd => {
            let yaml = serde_yaml::to_string(&MacpAuth::crd()).context("serialising the CRD")?;
            print!("{yaml}");
            Ok(())
        }
        Command::Run(settings) => run(settings).await,
    }
}

/// The host name, for a leader-election identity outside a pod.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default()
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    // Refuse unusable settings before touching the cluster.
    let election = settings
        .leader_election(&hostname())
        .context("invalid leader-election settings")?;
    telemetry::init(settings.log_format);
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster config or kubeconfig)")?;
    let prober =
        Arc::new(HttpProber::new(settings.probe_timeout).context("building the pod prober")?);
    let state = State::default();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let http = tokio::spawn(controller::serve_http(
        settings.listen_address,
        state.clone(),
        wait(stop_rx.clone()),
    ));
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received");
        let _ = stop_tx.send(true);
    });
    match election {
        None => {
            // The only reconciler is the leader: alerts on "no leader" and
            // "several leaders" then read the same gauge in both modes.
            state.metrics.leader.set(1);
            controller::run_with_state(client, settings, prober, state, wait(stop_rx)).await
        }
        Some(cfg) => {
            // Losing the lease ends the process with an error: the kubelet restarts
            // it as a fresh candidate, the standard and safest recovery.
            leader::run(client, settings, prober, state, cfg, wait(stop_rx))
                .await
                .context("leader election")?
        }
    }
    http.await
        .context("HTTP server task")?
        .context("serving /healthz, /readyz, /metrics")?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
