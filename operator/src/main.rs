//! `macp-auth-operator`: `crd` prints the CRD, `run` (the default) runs the controllers.

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use macp_auth_operator::controller::{self, State};
use macp_auth_operator::crd::MacpAuth;
use macp_auth_operator::{HttpProber, Settings, telemetry};

#[derive(Parser)]
#[command(
    version,
    about = "Kubernetes operator for the MACP auth-service and its signing keys"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Print the MacpAuth CustomResourceDefinition as YAML.
    Crd,
    /// Run the controllers (the default).
    Run,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Crd => {
            let yaml = serde_yaml::to_string(&MacpAuth::crd()).context("serialising the CRD")?;
            print!("{yaml}");
            Ok(())
        }
        Command::Run => run(cli.settings).await,
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
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
    controller::run_with_state(client, settings, prober, state, wait(stop_rx)).await;
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
