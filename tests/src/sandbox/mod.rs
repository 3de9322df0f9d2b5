//! The sandbox: the in-process API server and the simulated cluster made into
//! one local cluster that the real `kubectl` and `helm` drive.
//!
//! [`Sandbox::start`] brings up, in this process:
//! - the API server ([`crate::apiserver`]) with namespaces that must exist
//!   (strict mode), the system namespaces and the MacpAuth CRD, reachable on a
//!   fixed local address through a TCP relay ([`relay`]);
//! - a kubeconfig for it in a temporary directory ([`kubeconfig`], [`tempdir`]);
//! - the deployment controller and kubelet ([`crate::cluster`]), whose pods run
//!   the token service's and the operator's images as processes of the
//!   binaries built from this repository, reach the API server through that
//!   kubeconfig, and serve `kubectl logs`;
//! - a local address per Service forwarding to its ready pods ([`forward`]);
//! - unless told otherwise, the operator as a Deployment in `macp-system`
//!   ([`objects::operator_deployment`]).
//!
//! Everything lives in memory; the only files are in the temporary directory
//! (kubeconfig, Secret volumes of the pods), removed when the sandbox is
//! dropped. The `sandbox` binary adds the sample, the status line and `--load`.

pub mod forward;
pub mod kubeconfig;
pub mod load;
pub mod objects;
pub mod relay;
pub mod status;
pub mod tempdir;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::apiserver::{ApiError, ApiHandle, FakeApiServer, StartError};
use crate::cluster::images::{OPERATOR_IMAGE, SERVICE_IMAGE};
use crate::cluster::{Cluster, ClusterConfig, ImageMap};
use crate::wait::{OnChange, try_wait_until};
use forward::{Forwards, ServiceAddr};
use relay::Relay;
use tempdir::TempDir;

/// The API server's default local address.
pub const DEFAULT_API_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    6443,
));

/// How to start a sandbox.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Where the API server listens (port 0: any free port).
    pub api_addr: SocketAddr,
    /// Runs the operator as a Deployment; false leaves it to `helm install`.
    pub run_operator: bool,
    /// The executables the `macp-auth-service` and `macp-auth-operator` images run.
    pub service_bin: PathBuf,
    pub operator_bin: PathBuf,
}

/// Why the sandbox did not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("creating the sandbox directory: {0}")]
    Dir(#[source] std::io::Error),
    #[error("starting the API server: {0}")]
    Api(#[from] StartError),
    #[error("listening on {addr} for the API server: {source} (choose another with --port)")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the kubeconfig: {0}")]
    Kubeconfig(#[source] std::io::Error),
    #[error("setting up the cluster: {0}")]
    Setup(#[from] ApiError),
}

/// A running sandbox. Fields drop in order: pods, forwarders, API, directory.
pub struct Sandbox {
    cluster: Option<Cluster>,
    forwards: Arc<Forwards>,
    relay: Relay,
    server: FakeApiServer,
    kubeconfig: PathBuf,
    dir: TempDir,
}

impl Sandbox {
    /// Starts everything; `announce` receives every Service's local address
    /// as it appears and goes.
    pub async fn start(
        config: SandboxConfig,
        announce: Option<mpsc::UnboundedSender<ServiceAddr>>,
    ) -> Result<Self, SandboxError> {
        let dir = TempDir::new("macp-sandbox").map_err(SandboxError::Dir)?;
        let server = FakeApiServer::start().await?;
        let api = server.handle();
        api.set_strict_namespaces(true);
        for ns in objects::SYSTEM_NAMESPACES {
            objects::ensure_namespace(&api, ns)?;
        }
        objects::install_crd(&api);
        let relay = Relay::start(config.api_addr, server.addr())
            .await
            .map_err(|source| SandboxError::Listen {
                addr: config.api_addr,
                source,
            })?;
        let kubeconfig = dir.path().join("kubeconfig");
        kubeconfig::write(&kubeconfig, &format!("http://{}", relay.addr()), "default")
            .map_err(SandboxError::Kubeconfig)?;

        let mut cluster_config = ClusterConfig::new(config.service_bin.clone());
        cluster_config.images = ImageMap::new()
            .with(SERVICE_IMAGE, config.service_bin)
            .with(OPERATOR_IMAGE, config.operator_bin);
        cluster_config.kubeconfig = Some(kubeconfig.clone());
        cluster_config.state_dir = Some(dir.path().to_path_buf());
        let cluster = Cluster::start(api.clone(), cluster_config);
        cluster.serve_logs();
        let forwards = Arc::new(Forwards::start(api.clone(), announce));

        if config.run_operator {
            objects::ensure_namespace(&api, objects::OPERATOR_NAMESPACE)?;
            api.create("apps", "deployments", objects::operator_deployment())?;
        }
        Ok(Self {
            cluster: Some(cluster),
            forwards,
            relay,
            server,
            kubeconfig,
            dir,
        })
    }

    /// `http://127.0.0.1:<port>`: the API server as clients reach it.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.relay.addr())
    }

    /// The kubeconfig to export as `KUBECONFIG`.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The temporary directory removed on exit.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Direct store access (the sandbox's own setup and its status line).
    pub fn api(&self) -> ApiHandle {
        self.server.handle()
    }

    /// The Services' local addresses.
    pub fn forwards(&self) -> Arc<Forwards> {
        self.forwards.clone()
    }

    /// The local URL of Service `namespace/name`, once it exists.
    pub fn service_url(&self, namespace: &str, name: &str) -> Option<String> {
        self.forwards.url(namespace, name)
    }

    /// Waits until MacpAuth `namespace/name` is Ready and its Service has a
    /// local address with a ready endpoint; returns that address.
    pub async fn wait_ready(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Option<String> {
        let api = self.api();
        let every = OnChange {
            changes: api.changes(),
            at_most: Duration::from_millis(200),
        };
        try_wait_until(
            format!("MacpAuth {namespace}/{name} Ready and served"),
            timeout,
            every,
            async || {
                let m = api.get("macp.io", "macpauths", Some(namespace), name)?;
                let p = self
                    .forwards
                    .proxy(namespace, name)
                    .filter(|_| is_ready(&m))?;
                (!p.endpoints().is_empty()).then(|| p.url())
            },
        )
        .await
        .ok()
    }

    /// Stops every pod process (SIGTERM, then SIGKILL after its grace period),
    /// then the forwarders and the API server, and removes the directory.
    pub async fn shutdown(mut self) {
        if let Some(c) = self.cluster.take() {
            c.shutdown().await;
        }
    }
}

/// Whether a MacpAuth's `Ready` condition is `True`.
pub fn is_ready(m: &Value) -> bool {
    m.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}
