//! Where a Service's traffic goes: the ready endpoints of a Service, computed
//! the way kube-proxy follows EndpointSlices (the Service's selector over the
//! Pods, its first port's `targetPort`), from either the simulated cluster's
//! store or a real cluster's API. The proxy and the load generator take any
//! [`EndpointSource`], so the end-to-end scenarios run unchanged on both.
//!
//! On a real cluster kube-proxy learns that a pod became ready, or started
//! terminating, some time after it happened (EndpointSlice controller, API
//! watch, iptables sync): [`LaggedEndpoints`] replays any source that late,
//! [`DEFAULT_ENDPOINT_LAG`] by default.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::apiserver::ApiHandle;
use crate::cluster::podspec::is_ready_endpoint;

/// The current ready endpoints of one Service.
pub trait EndpointSource: Send + Sync + 'static {
    fn endpoints(&self) -> Vec<SocketAddr>;
}

/// How late the simulated kube-proxy follows the endpoints by default.
pub const DEFAULT_ENDPOINT_LAG: Duration = Duration::from_secs(1);

/// The ready endpoints of `service` (a Service object) among `pods`.
pub fn ready_endpoints(service: &Value, pods: &[Value]) -> Vec<SocketAddr> {
    service_endpoints(service, pods, None, true)
}

/// [`ready_endpoints`] for the Service port named `port_name` (a Service
/// with several ports, such as the token service's `http` and `mint`).
pub fn ready_endpoints_on(service: &Value, pods: &[Value], port_name: &str) -> Vec<SocketAddr> {
    service_endpoints(service, pods, Some(port_name), true)
}

/// Every pod of `service` that has an IP, ready or not, terminating or not:
/// whatever can still answer a connection.
pub fn all_endpoints(service: &Value, pods: &[Value]) -> Vec<SocketAddr> {
    service_endpoints(service, pods, None, false)
}

/// `port_name`: the Service port of that name, else the first one.
fn service_endpoints(
    service: &Value,
    pods: &[Value],
    port_name: Option<&str>,
    ready_only: bool,
) -> Vec<SocketAddr> {
    let Some(selector) = service.pointer("/spec/selector").and_then(Value::as_object) else {
        return Vec::new();
    };
    let port = match port_name {
        None => service.pointer("/spec/ports/0"),
        Some(name) => service
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .and_then(|ports| {
                ports
                    .iter()
                    .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
            }),
    };
    if port_name.is_some() && port.is_none() {
        return Vec::new();
    }
    let target = port.and_then(|p| p.get("targetPort"));
    let service_port = port.and_then(|p| p.get("port")).and_then(Value::as_u64);
    let mut eps: Vec<SocketAddr> = pods
        .iter()
        .filter(|p| {
            let labels = p.pointer("/metadata/labels");
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .filter(|p| !ready_only || is_ready_endpoint(p))
        .filter_map(|p| {
            let ip = p.pointer("/status/podIP")?.as_str()?.parse().ok()?;
            let port = match target {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(name)) => named_port(p, name),
                _ => service_port,
            }?;
            Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
        })
        .collect();
    eps.sort();
    eps
}

fn named_port(pod: &Value, name: &str) -> Option<u64> {
    pod.pointer("/spec/containers")?
        .as_array()?
        .iter()
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
        .get("containerPort")?
        .as_u64()
}

/// Endpoints read from the simulated cluster's store at every call.
pub struct StoreEndpoints {
    api: ApiHandle,
    namespace: String,
    service: String,
}

impl StoreEndpoints {
    pub fn new(api: ApiHandle, namespace: &str, service: &str) -> Self {
        Self {
            api,
            namespace: namespace.to_string(),
            service: service.to_string(),
        }
    }
}

impl EndpointSource for StoreEndpoints {
    fn endpoints(&self) -> Vec<SocketAddr> {
        let Some(svc) = self
            .api
            .get("", "services", Some(&self.namespace), &self.service)
        else {
            return Vec::new();
        };
        ready_endpoints(&svc, &self.api.list("", "pods", Some(&self.namespace)))
    }
}

/// Endpoints read through a Kubernetes API (a real cluster), refreshed in the
/// background every `period`; the last good answer stays while a refresh fails.
pub struct ApiEndpoints {
    current: Arc<Mutex<(Vec<SocketAddr>, Vec<SocketAddr>)>>,
    task: JoinHandle<()>,
}

impl ApiEndpoints {
    /// Starts following Service `namespace/service`; the first list is done
    /// before this returns, so the source is usable at once.
    pub async fn start(
        client: kube::Client,
        namespace: &str,
        service: &str,
        period: Duration,
    ) -> Self {
        Self::start_on(client, namespace, service, None, period).await
    }

    /// [`ApiEndpoints::start`] for the Service port named `port_name` (the
    /// first port when `None`).
    pub async fn start_on(
        client: kube::Client,
        namespace: &str,
        service: &str,
        port_name: Option<&str>,
        period: Duration,
    ) -> Self {
        let port_name = port_name.map(str::to_string);
        let current = Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let services: Api<Service> = Api::namespaced(client.clone(), namespace);
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        let service = service.to_string();
        let refresh = {
            let current = current.clone();
            move || {
                let services = services.clone();
                let pods = pods.clone();
                let service = service.clone();
                let current = current.clone();
                let port_name = port_name.clone();
                async move {
                    let Ok(svc) = services.get(&service).await else {
                        return;
                    };
                    let Ok(list) = pods.list(&ListParams::default()).await else {
                        return;
                    };
                    let (Ok(svc), Ok(pods)) = (
                        serde_json::to_value(&svc),
                        list.items
                            .iter()
                            .map(serde_json::to_value)
                            .collect::<Result<Vec<_>, _>>(),
                    ) else {
                        return;
                    };
                    let name = port_name.as_deref();
                    *current.lock() = (
                        service_endpoints(&svc, &pods, name, true),
                        service_endpoints(&svc, &pods, name, false),
                    );
                }
            }
        };
        refresh().await;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                refresh().await;
            }
        });
        Self { current, task }
    }
}

impl ApiEndpoints {
    /// Every pod of the Service with an IP, terminating ones included.
    pub fn all_pods(&self) -> Vec<SocketAddr> {
        self.current.lock().1.clone()
    }
}

impl EndpointSource for ApiEndpoints {
    fn endpoints(&self) -> Vec<SocketAddr> {
        self.current.lock().0.clone()
    }
}

/// Samples of a source's endpoints, oldest first.
type History = VecDeque<(Instant, Vec<SocketAddr>)>;

/// Another source's endpoints as they were `lag` ago, sampled every `period`:
/// what a kube-proxy that learns changes late routes to.
pub struct LaggedEndpoints {
    history: Arc<Mutex<History>>,
    lag: Duration,
    task: JoinHandle<()>,
}

impl LaggedEndpoints {
    /// Starts sampling `inner`; until `lag` has passed it answers with the first sample.
    pub fn start(inner: Arc<dyn EndpointSource>, lag: Duration, period: Duration) -> Self {
        let history = Arc::new(Mutex::new(VecDeque::from([(
            Instant::now(),
            inner.endpoints(),
        )])));
        let h = history.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let now = Instant::now();
                let eps = inner.endpoints();
                let mut h = h.lock();
                if h.back().is_none_or(|(_, last)| *last != eps) {
                    h.push_back((now, eps));
                }
                // Keep the newest sample older than the lag and everything after it.
                while h.len() > 1 && h[1].0 + lag <= now {
                    h.pop_front();
                }
            }
        });
        Self { history, lag, task }
    }
}

impl EndpointSource for LaggedEndpoints {
    fn endpoints(&self) -> Vec<SocketAddr> {
        let h = self.history.lock();
        let cutoff = Instant::now().checked_sub(self.lag);
        h.iter()
            .rev()
            .find(|(at, _)| cutoff.is_some_and(|c| *at <= c))
            .or(h.front())
            .map(|(_, eps)| eps.clone())
            .unwrap_or_default()
    }
}

impl Drop for LaggedEndpoints {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for ApiEndpoints {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, app: &str, ready: bool) -> Value {
        json!({
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 3200}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        })
    }

    #[test]
    fn selects_ready_pods_of_the_service_on_the_target_port() {
        let pods = [
            pod("a", "127.0.0.3", "auth", true),
            pod("b", "127.0.0.2", "auth", true),
            pod("c", "127.0.0.4", "auth", false),
            pod("d", "127.0.0.5", "other", true),
        ];
        let numeric = json!({"spec": {"selector": {"app": "auth"}, "ports": [{"port": 80, "targetPort": 3200}]}});
        assert_eq!(
            ready_endpoints(&numeric, &pods),
            vec![
                "127.0.0.2:3200".parse::<SocketAddr>().unwrap(),
                "127.0.0.3:3200".parse().unwrap()
            ]
        );
        let named = json!({"spec": {"selector": {"app": "auth"}, "ports": [{"port": 80, "targetPort": "http"}]}});
        assert_eq!(ready_endpoints(&named, &pods).len(), 2);
        let no_target = json!({"spec": {"selector": {"app": "auth"}, "ports": [{"port": 3300}]}});
        assert_eq!(ready_endpoints(&no_target, &pods)[0].port(), 3300);
        // A second, named port: its own target, not the first port's.
        let two = json!({"spec": {"selector": {"app": "auth"}, "ports": [
            {"name": "http", "port": 80, "targetPort": 3200},
            {"name": "mint", "port": 81, "targetPort": 3201}]}});
        assert_eq!(ready_endpoints_on(&two, &pods, "mint")[0].port(), 3201);
        assert_eq!(ready_endpoints_on(&two, &pods, "http")[0].port(), 3200);
        assert!(ready_endpoints_on(&two, &pods, "other").is_empty());
        assert!(ready_endpoints(&json!({"spec": {}}), &pods).is_empty());
        assert_eq!(
            all_endpoints(&numeric, &pods).len(),
            3,
            "the unready pod too"
        );
    }

    struct Fixed(Mutex<Vec<SocketAddr>>);
    impl EndpointSource for Fixed {
        fn endpoints(&self) -> Vec<SocketAddr> {
            self.0.lock().clone()
        }
    }

    #[tokio::test]
    async fn lagged_endpoints_follow_late() {
        let a: SocketAddr = "127.0.0.2:3200".parse().unwrap();
        let b: SocketAddr = "127.0.0.3:3200".parse().unwrap();
        let src = Arc::new(Fixed(Mutex::new(vec![a])));
        let lagged = LaggedEndpoints::start(
            src.clone(),
            Duration::from_millis(300),
            Duration::from_millis(10),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        *src.0.lock() = vec![b];
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(lagged.endpoints(), vec![a], "not learnt yet");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(lagged.endpoints(), vec![b]);
    }
}
