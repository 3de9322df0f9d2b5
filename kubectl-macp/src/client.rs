//! The Kubernetes side: the client from kubeconfig and context, MacpAuths,
//! their pods and pod logs, and the annotation patch.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DynamicObject, ListParams, LogParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::ApiResource;
use kube::{Client, Config, Resource as _};
use macp_auth_operator::crd::MacpAuth;
use macp_auth_operator::resources::{KEYSET_HASH_ANNOTATION, pod_selector};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::status::PodInfo;

/// A connected client and the namespace commands default to.
pub struct Kube {
    client: Client,
    pub default_namespace: String,
}

/// A MacpAuth as its typed form and its raw status (fields the types lack).
pub struct Fetched {
    pub macpauth: MacpAuth,
    pub raw_status: Value,
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Kube {
    /// `--kubeconfig` (else `KUBECONFIG` or `~/.kube/config`, else in-cluster)
    /// with `--context` (else the current context), as kubectl does.
    pub async fn connect(kubeconfig: Option<PathBuf>, context: Option<String>) -> Result<Self> {
        let options = KubeConfigOptions {
            context,
            ..KubeConfigOptions::default()
        };
        let config = match kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(&path)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| Error::Config(e.to_string()))?
            }
            None if options.context.is_some() => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| Error::Config(e.to_string()))?,
            None => Config::infer()
                .await
                .map_err(|e| Error::Config(e.to_string()))?,
        };
        let default_namespace = config.default_namespace.clone();
        let client = Client::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Self {
            client,
            default_namespace,
        })
    }

    fn macpauths(&self, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = ApiResource::erase::<MacpAuth>(&());
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    fn parse(namespace: &str, name: &str, obj: DynamicObject) -> Result<Fetched> {
        let mut value = serde_json::to_value(&obj).map_err(|e| Error::Invalid {
            namespace: namespace.into(),
            name: name.into(),
            message: e.to_string(),
        })?;
        if value.get("apiVersion").is_none() {
            value["apiVersion"] = json!(MacpAuth::api_version(&()));
            value["kind"] = json!(MacpAuth::kind(&()));
        }
        let raw_status = value.get("status").cloned().unwrap_or(Value::Null);
        let macpauth = serde_json::from_value(value).map_err(|e| Error::Invalid {
            namespace: namespace.into(),
            name: name.into(),
            message: format!("not a MacpAuth this plugin understands: {e}"),
        })?;
        Ok(Fetched {
            macpauth,
            raw_status,
        })
    }

    pub async fn get(&self, namespace: &str, name: &str) -> Result<Fetched> {
        match self.macpauths(Some(namespace)).get(name).await {
            Ok(obj) => Self::parse(namespace, name, obj),
            Err(e) if is_not_found(&e) => Err(Error::NotFound {
                namespace: namespace.into(),
                name: name.into(),
            }),
            Err(e) => Err(api_error(format!("getting MacpAuth {namespace}/{name}"))(e)),
        }
    }

    /// Every MacpAuth in `namespace` (all namespaces: `None`), sorted by namespace and name.
    pub async fn list(&self, namespace: Option<&str>) -> Result<Vec<Fetched>> {
        let where_ = namespace.map_or("all namespaces".to_string(), |n| format!("namespace {n}"));
        let list = self
            .macpauths(namespace)
            .list(&ListParams::default())
            .await
            .map_err(api_error(format!("listing MacpAuths in {where_}")))?;
        let mut out = Vec::new();
        for obj in list.items {
            let ns = obj.metadata.namespace.clone().unwrap_or_default();
            let name = obj.metadata.name.clone().unwrap_or_default();
            out.push(Self::parse(&ns, &name, obj)?);
        }
        out.sort_by(|a, b| {
            (&a.macpauth.metadata.namespace, &a.macpauth.metadata.name)
                .cmp(&(&b.macpauth.metadata.namespace, &b.macpauth.metadata.name))
        });
        Ok(out)
    }

    /// Sets `annotations` (key, value) by one merge patch, so the operator
    /// never sees some of them without the others.
    pub async fn annotate(
        &self,
        namespace: &str,
        name: &str,
        annotations: &[(&str, &str)],
    ) -> Result<()> {
        let map: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let patch = json!({"metadata": {"annotations": map}});
        match self
            .macpauths(Some(namespace))
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(Error::NotFound {
                namespace: namespace.into(),
                name: name.into(),
            }),
            Err(e) => Err(api_error(format!(
                "annotating MacpAuth {namespace}/{name} with {}",
                annotations
                    .iter()
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))(e)),
        }
    }

    /// The MacpAuth's pods, by the labels the operator puts on them, oldest first.
    pub async fn pods(&self, namespace: &str, name: &str) -> Result<Vec<PodInfo>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let list = api
            .list(&ListParams::default().labels(&pod_selector(name)))
            .await
            .map_err(api_error(format!(
                "listing the pods of MacpAuth {namespace}/{name}"
            )))?;
        let mut pods: Vec<PodInfo> = list.items.iter().map(pod_info).collect();
        pods.sort_by(|a, b| a.started.cmp(&b.started).then_with(|| a.name.cmp(&b.name)));
        Ok(pods)
    }

    /// A pod's whole log, or why it cannot be read.
    pub async fn pod_log(&self, namespace: &str, pod: &str) -> Result<String, String> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        api.logs(pod, &LogParams::default())
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 404 => "gone or never started (404)".to_string(),
                other => other.to_string(),
            })
    }

    /// Pods of the MacpAuth that Events mention but that no longer exist
    /// (Events outlive pods, for an hour by default).
    pub async fn gone_pods(&self, namespace: &str, name: &str, current: &[String]) -> Vec<String> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let Ok(events) = api.list(&ListParams::default()).await else {
            tracing::debug!("events not readable; gone pods are judged by time alone");
            return Vec::new();
        };
        let prefix = format!("{name}-");
        let mut gone: Vec<String> = events
            .items
            .iter()
            .filter(|e| e.involved_object.kind.as_deref() == Some("Pod"))
            .filter_map(|e| e.involved_object.name.clone())
            .filter(|n| n.starts_with(&prefix) && !current.contains(n))
            // Another MacpAuth whose name extends this one (`auth` and `auth-es256`).
            .filter(|n| n[prefix.len()..].matches('-').count() <= 1)
            .collect();
        gone.sort();
        gone.dedup();
        gone
    }
}

fn pod_info(p: &Pod) -> PodInfo {
    let status = p.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let phase = if p.metadata.deletion_timestamp.is_some() {
        "Terminating".to_string()
    } else {
        status
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Unknown".into())
    };
    let started: Option<DateTime<Utc>> = status
        .and_then(|s| s.start_time.as_ref())
        .or(p.metadata.creation_timestamp.as_ref())
        .and_then(|t| {
            DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        });
    PodInfo {
        name: p.metadata.name.clone().unwrap_or_default(),
        ready,
        phase,
        keyset_hash: p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(KEYSET_HASH_ANNOTATION))
            .cloned(),
        started,
        ip: status.and_then(|s| s.pod_ip.clone()),
    }
}
