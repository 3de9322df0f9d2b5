//! A local address for every Service: a [`ServiceProxy`] on 127.0.0.1 that
//! forwards each connection to one of the Service's ready pods, as kube-proxy
//! would for a ClusterIP. It tries the Service's own port first (so the
//! sample's token service is `http://127.0.0.1:3200`), else any free port.
//! Forwarders come and go with their Services.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::apiserver::ApiHandle;
use crate::endpoints::StoreEndpoints;
use crate::proxy::ServiceProxy;

/// A Service's local address, as announced when it appears or goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAddr {
    pub namespace: String,
    pub name: String,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// False when the Service was deleted and its forwarder stopped.
    pub live: bool,
}

struct Forward {
    uid: String,
    proxy: ServiceProxy,
}

type Table = Arc<Mutex<BTreeMap<(String, String), Forward>>>;

/// The running forwarders; all stop on drop.
pub struct Forwards {
    table: Table,
    stop: watch::Sender<bool>,
}

impl Forwards {
    /// Follows the Services of `api`'s store; every change is sent to `announce`.
    pub fn start(api: ApiHandle, announce: Option<mpsc::UnboundedSender<ServiceAddr>>) -> Self {
        let table: Table = Arc::default();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(follow(api, table.clone(), announce, stopped));
        Self { table, stop }
    }

    /// The local URL of Service `namespace/name`, once its forwarder runs.
    pub fn url(&self, namespace: &str, name: &str) -> Option<String> {
        self.table
            .lock()
            .get(&(namespace.to_string(), name.to_string()))
            .map(|f| f.proxy.url())
    }

    /// The forwarder of Service `namespace/name` (the load generator mints through it).
    pub fn proxy(&self, namespace: &str, name: &str) -> Option<ServiceProxy> {
        self.table
            .lock()
            .get(&(namespace.to_string(), name.to_string()))
            .map(|f| f.proxy.clone())
    }

    /// Every forwarded Service, in (namespace, name) order.
    pub fn all(&self) -> Vec<ServiceAddr> {
        self.table
            .lock()
            .iter()
            .map(|((ns, name), f)| ServiceAddr {
                namespace: ns.clone(),
                name: name.clone(),
                url: f.proxy.url(),
                live: true,
            })
            .collect()
    }
}

impl Drop for Forwards {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        self.table.lock().clear();
    }
}

async fn follow(
    api: ApiHandle,
    table: Table,
    announce: Option<mpsc::UnboundedSender<ServiceAddr>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut changes = api.changes();
    loop {
        sync(&api, &table, announce.as_ref()).await;
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

fn meta(v: &Value, f: &str) -> String {
    v.pointer(&format!("/metadata/{f}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

async fn sync(
    api: &ApiHandle,
    table: &Table,
    announce: Option<&mpsc::UnboundedSender<ServiceAddr>>,
) {
    let services = api.list("", "services", None);
    let wanted: BTreeMap<(String, String), (String, Option<u16>)> = services
        .iter()
        // A Service without a selector has no endpoints the sandbox could know.
        .filter(|s| s.pointer("/spec/selector").is_some())
        .map(|s| {
            let port = s
                .pointer("/spec/ports/0/port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok());
            (
                (meta(s, "namespace"), meta(s, "name")),
                (meta(s, "uid"), port),
            )
        })
        .collect();
    let send = |ns: &str, name: &str, url: String, live: bool| {
        if let Some(tx) = announce {
            let _ = tx.send(ServiceAddr {
                namespace: ns.to_string(),
                name: name.to_string(),
                url,
                live,
            });
        }
    };
    let gone: Vec<(String, String)> = table
        .lock()
        .iter()
        .filter(|(k, f)| wanted.get(*k).is_none_or(|(uid, _)| *uid != f.uid))
        .map(|(k, _)| k.clone())
        .collect();
    for key in gone {
        if let Some(f) = table.lock().remove(&key) {
            send(&key.0, &key.1, f.proxy.url(), false);
        }
    }
    for ((ns, name), (uid, port)) in wanted {
        if table.lock().contains_key(&(ns.clone(), name.clone())) {
            continue;
        }
        let source = Arc::new(StoreEndpoints::new(api.clone(), &ns, &name));
        let proxy = match start_proxy(port, source).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(namespace = %ns, service = %name, error = %e, "no local address for a Service");
                continue;
            }
        };
        send(&ns, &name, proxy.url(), true);
        table.lock().insert((ns, name), Forward { uid, proxy });
    }
}

/// On 127.0.0.1:`port` when it is free, else on any free port.
async fn start_proxy(
    port: Option<u16>,
    source: Arc<StoreEndpoints>,
) -> std::io::Result<ServiceProxy> {
    if let Some(p) = port.filter(|p| *p >= 1024)
        && let Ok(proxy) =
            ServiceProxy::start_on(SocketAddr::from(([127, 0, 0, 1], p)), source.clone()).await
    {
        return Ok(proxy);
    }
    ServiceProxy::start_with(source).await
}
