//! An in-process Kubernetes API server for tests: a real HTTP/1.1 server on
//! `127.0.0.1:<random port>` that kube's `Client`, `Api<K>`, `watcher` and
//! `Controller` talk to exactly as they would to a cluster, and that the real
//! `kubectl` (v1.35) and `helm` (v4) binaries drive unmodified
//! (`tests/tests/kubectl.rs`).
//!
//! # What it implements
//! - `/api/v1/...` and `/apis/{group}/{version}/...`, namespaced and cluster-wide
//!   (all-namespaces list/watch), for the types in [`Registry`] (add more with
//!   [`ApiHandle::register`] / [`ApiHandle::register_crd`], or by storing
//!   a CustomResourceDefinition object); unknown types are 404.
//! - get, list (label selectors with `=,==,!=,in,notin,exists,!exists`; field
//!   selectors `path=value`/`!=` on any dotted JSON path), watch (replay from a
//!   `resourceVersion`, or the current state as ADDED events when absent/`0`,
//!   `timeoutSeconds`, periodic BOOKMARKs when `allowWatchBookmarks=true`,
//!   `sendInitialEvents` with the `k8s.io/initial-events-end` bookmark, 410 Gone for
//!   compacted history, selector transitions as ADDED/DELETED), create (409
//!   `AlreadyExists`, `generateName`), update (409 `Conflict` on a stale
//!   `resourceVersion`), patch (apply, merge, strategic, JSON patch), delete
//!   (finalizers, `propagationPolicy`, preconditions, owner-reference GC);
//!   `dryRun=All` on every write (run on a copy of the store).
//! - `/status` subresources, uid, creationTimestamp, a global resourceVersion,
//!   `generation` (bumped on changes outside metadata and status), Secret
//!   `stringData`, and no-op writes that keep the resourceVersion and emit no event.
//! - Failures as `Status` JSON, so kube returns `kube::Error::Api` with the code.
//! - Server-side apply with field ownership per manager and `managedFields`
//!   ([`fields`]), conflicts unless forced; canonical Quantities, the defaults
//!   of the operator's built-in types, and name/label validation with 422
//!   ([`admission`]); RBAC from rule lists with 403 Forbidden ([`rbac`],
//!   [`ApiHandle::enforce_rbac`], [`FakeApiServer::operator_client`]); a
//!   configurable watch delay ([`ApiHandle::set_watch_delay`]).
//!
//! What kubectl and helm need:
//! - `/healthz`, `/readyz`, `/livez` (always `ok`).
//! - Discovery (`discovery.rs`): `/version`, legacy `/api`, `/apis`, `/api/v1`,
//!   `/apis/{g}/{v}`, and aggregated `apidiscovery.k8s.io/v2` lists on `/api`
//!   and `/apis` when the client accepts them; short names, categories
//!   (`kubectl get all`), singular names, the `status` and `pods/log` subresources.
//! - OpenAPI v3 ([`openapi`]): the `/openapi/v3` index (with content hashes) and
//!   one document per group-version with the operations (`x-kubernetes-group-version-kind`,
//!   PATCH media types, the `fieldValidation` parameter) and schemas: the built-in
//!   types' from k8s-openapi with the strategic-merge keys of [`openapi::PATCH_META`],
//!   a CRD's own `openAPIV3Schema` (`kubectl explain`).
//! - `fieldValidation=Strict|Warn` (`validation.rs`): unknown field names are the
//!   real `strict decoding error` (400) or `Warning` headers.
//! - Tables (`table.rs`) for `Accept: application/json;as=Table;...` on get, list
//!   and watch: the columns of the built-in printers (Deployments, ReplicaSets,
//!   Pods, Services, Secrets, ConfigMaps, Namespaces, Events, ...) with `-o wide`
//!   priority columns, a CRD's `additionalPrinterColumns` (JSONPath evaluated,
//!   dates as ages), NAME/AGE otherwise; `includeObject=None|Metadata|Object`.
//! - Strategic merge patch (`strategic.rs`) for the built-in types: keyed lists
//!   merged by their merge keys, `$patch`, `$retainKeys`, `$setElementOrder`,
//!   `$deleteFromPrimitiveList`; 415 for custom resources, as on a real server.
//! - CustomResourceDefinitions as objects (`crds.rs`): storing one serves its
//!   kind and marks it `NamesAccepted`/`Established`; deleting it stops serving
//!   the kind and deletes its objects.
//! - events.k8s.io/v1 Events (kube's `Recorder`) also listed, read and watched
//!   as core/v1 Events (`events.rs`), as they share storage on a real server.
//! - Pod logs (`logs.rs`): `pods/{name}/log` from a [`PodLogs`] source
//!   ([`ApiHandle::set_pod_logs`]) with `tailLines`, `limitBytes`, `follow`.
//! - Namespaces that must exist ([`ApiHandle::set_strict_namespaces`]): 404
//!   `namespaces "x" not found` on create; `default`, `kube-system`,
//!   `kube-public` exist; a Namespace is `Active`.
//! - The `scale` subresource of Deployments and ReplicaSets (`scale.rs`,
//!   `kubectl scale`); `SelfSubjectAccessReview` from the caller's RBAC
//!   grants (`review.rs`, `kubectl auth can-i`; kubectl sends no credentials
//!   to a plain-HTTP server, so it is always the admin).
//! - Protobuf request bodies (`protobuf.rs`) for the kinds kubectl's and helm's
//!   typed clients send that way: Namespace, Secret (helm's releases),
//!   ConfigMap, DeleteOptions.
//!
//! # Simplifications vs a real API server (documented in tests/README.md too)
//! - Server-side apply knows keyed lists by field name, not from the OpenAPI
//!   schema; CRD list markers are not read; direct store writes belong to no
//!   manager; `managedFields` sent by clients are ignored (so kubectl's
//!   client-side to server-side apply migration does not move ownership).
//! - Strategic merge patch metadata is a table of the served types' keyed
//!   lists (k8s-openapi has no Go struct tags), not every type's.
//! - Validation of names, labels and annotation keys, and of field names under
//!   `fieldValidation`: no value/type validation, immutability, CEL or webhooks;
//!   defaults only for the fields listed in [`admission`]; namespaces need not
//!   exist unless [`ApiHandle::set_strict_namespaces`] (default off: the
//!   existing tests write into namespaces they never create).
//! - No `/openapi/v2` (kubectl falls back to its compiled-in types); responses
//!   are always JSON (protobuf and CBOR are not offered); protobuf bodies of
//!   other kinds are a 415 (so kubectl's typed generators — `create
//!   deployment`, `run`, `expose` — fail; `apply`/`create -f` send JSON);
//!   no `deletecollection`; no `exec`, `attach`,
//!   `portforward` or `proxy` subresources, no `SubjectAccessReview` for other
//!   users (`kubectl auth can-i --as`: no impersonation), no metrics API (`kubectl top`); pod logs ignore
//!   `sinceSeconds`/`sinceTime`.
//! - Tables for the listed built-in types only (others NAME/AGE); watch Tables
//!   carry column definitions in their first event only.
//! - RBAC without `resourceNames`, aggregation or impersonation; discovery and
//!   OpenAPI are open; the unauthenticated client is an admin.
//! - List ignores `limit`/`continue` (always one complete page); the watch
//!   delay is one delay for all watches, lists are never stale.
//! - Garbage collection is synchronous; foreground deletion behaves like
//!   background; deleting a namespace or CRD deletes its objects at once.
//! - core/v1 Events are not shown as events.k8s.io ones (only the other way).
//! - Pods, Namespaces, Deployments, ReplicaSets, CRDs, PodDisruptionBudgets and
//!   MacpAuths have a status subresource; only Deployments, ReplicaSets, CRDs and
//!   custom resources keep `generation`.

pub mod admission;
mod crds;
mod discovery;
mod error;
mod events;
pub mod fields;
mod instrument;
mod jsonpath;
mod logs;
mod metadata;
pub mod openapi;
mod owners;
pub mod patch;
mod path;
mod protobuf;
pub mod rbac;
mod resources;
mod review;
mod scale;
mod selector;
mod server;
mod store;
mod strategic;
mod table;
mod validation;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;

pub use error::ApiError;
pub use instrument::RecordedRequest;
pub use logs::{LogOptions, PodLogs};
pub use rbac::{OPERATOR_USER, PolicyRule, RbacScope};
pub use resources::{Registry, ResourceType};
pub use selector::{FieldSelector, LabelSelector};
pub use store::Propagation;

use instrument::Fault;
use server::Shared;
use store::{DeleteOpts, EventType, Store};

/// Failures starting the server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding 127.0.0.1:0: {0}")]
    Bind(#[from] std::io::Error),
    #[error("building the kube client for {url}: {source}")]
    Client {
        url: String,
        #[source]
        source: kube::Error,
    },
    #[error("invalid server URL {0}")]
    Url(String),
}

/// A running fake API server. Dropping it stops the server and ends every watch.
///
/// It dereferences to [`ApiHandle`], which carries the instrumentation, fault
/// injection and direct store access; clone the handle (via
/// [`handle`](Self::handle)) to give background tasks store access.
pub struct FakeApiServer {
    handle: ApiHandle,
    addr: SocketAddr,
    client: kube::Client,
}

/// Cloneable access to a running server's store, request log and faults. It does not
/// keep the server running: that is the [`FakeApiServer`]'s job.
#[derive(Clone)]
pub struct ApiHandle {
    shared: Arc<Shared>,
}

impl std::ops::Deref for FakeApiServer {
    type Target = ApiHandle;

    fn deref(&self) -> &ApiHandle {
        &self.handle
    }
}

impl FakeApiServer {
    /// Starts a server with the default [`Registry`].
    pub async fn start() -> Result<Self, StartError> {
        Self::start_with(Registry::default()).await
    }

    /// Starts a server serving exactly the types of `registry`.
    pub async fn start_with(registry: Registry) -> Result<Self, StartError> {
        let shared = Arc::new(Shared::new(Store::new(registry)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let uri: http::Uri = url.parse().map_err(|_| StartError::Url(url.clone()))?;
        let client = kube::Client::try_from(kube::Config::new(uri)).map_err(|source| {
            StartError::Client {
                url: url.clone(),
                source,
            }
        })?;
        let app = axum::Router::new()
            .fallback(server::handle)
            .with_state(shared.clone());
        let mut stop = shared.shutdown.subscribe();
        tokio::spawn(async move {
            let shutdown = async move { server::until(&mut stop, true).await };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %e, "fake API server stopped");
            }
        });
        tracing::debug!(%addr, "fake API server listening");
        Ok(Self {
            handle: ApiHandle { shared },
            addr,
            client,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kube client for this server (default namespace `default`, no auth):
    /// a cluster admin, never checked by RBAC.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A kube client that authenticates as `user` (a bearer token): every request
    /// it sends is checked against the grants of `user` ([`ApiHandle::grant`]);
    /// with none, everything is forbidden.
    pub fn client_as(&self, user: &str) -> Result<kube::Client, StartError> {
        let url = self.url();
        let uri: http::Uri = url.parse().map_err(|_| StartError::Url(url.clone()))?;
        let mut config = kube::Config::new(uri);
        config.auth_info = serde_json::from_value(serde_json::json!({
            "token": format!("{}{user}", rbac::TOKEN_PREFIX)
        }))
        .map_err(|_| StartError::Url(url.clone()))?;
        kube::Client::try_from(config).map_err(|source| StartError::Client { url, source })
    }

    /// [`client_as`](Self::client_as) [`OPERATOR_USER`]: the client to give the
    /// operator under [`enforce_rbac`](ApiHandle::enforce_rbac).
    pub fn operator_client(&self) -> Result<kube::Client, StartError> {
        self.client_as(OPERATOR_USER)
    }

    /// A cloneable handle on the store, log and faults.
    pub fn handle(&self) -> ApiHandle {
        self.handle.clone()
    }
}

impl ApiHandle {
    /// Serves another resource type (or replaces one with the same group/version/resource).
    pub fn register(&self, rt: ResourceType) {
        self.shared.write(|s| s.registry.register(rt));
    }

    /// Serves every served version of a CRD, with its status subresource if
    /// declared, and stores the CRD object (printer columns, OpenAPI schema)
    /// unless one of that name exists.
    pub fn register_crd(&self, crd: &CustomResourceDefinition) {
        self.shared.write(|s| s.registry.register_crd(crd));
        if let Ok(obj) = serde_json::to_value(crd) {
            match self.create(crds::GROUP, crds::RESOURCE, obj) {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => tracing::warn!(error = %e, "storing the CRD object"),
            }
        }
    }

    /// Serves `GET .../pods/{name}/log` from `source` (replacing any earlier
    /// one). Without a source every log request is a 404 Status.
    pub fn set_pod_logs(&self, source: Arc<dyn PodLogs>) {
        *self.shared.pod_logs.lock() = Some(source);
    }

    /// With `true`, creating a namespaced object (create, or a server-side
    /// apply that creates) in a namespace that does not exist is a 404
    /// `namespaces "x" not found`, as on a real server. Default `false`: the
    /// existing tests write into namespaces they never create.
    /// Strict mode also creates the namespaces every cluster has (`default`,
    /// `kube-system`, `kube-public`) when missing.
    pub fn set_strict_namespaces(&self, strict: bool) {
        self.shared
            .strict_namespaces
            .store(strict, std::sync::atomic::Ordering::Relaxed);
        if strict {
            for ns in ["default", "kube-system", "kube-public"] {
                let obj = serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": ns}});
                match self.create("", "namespaces", obj) {
                    Ok(_) => {}
                    Err(e) if e.code == 409 => {}
                    Err(e) => tracing::warn!(error = %e, ns, "creating a standard namespace"),
                }
            }
        }
    }

    // ---- instrumentation -------------------------------------------------

    /// Every request since start or the last [`reset_log`](Self::reset_log), in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.log.lock().clone()
    }

    /// Number of logged create/update/patch/delete requests (including no-op ones and
    /// ones that failed).
    pub fn write_count(&self) -> usize {
        self.shared
            .log
            .lock()
            .iter()
            .filter(|r| r.is_write())
            .count()
    }

    /// Number of logged requests with this verb on this resource (`"macpauths/status"`).
    pub fn count(&self, verb: &str, resource: &str) -> usize {
        self.shared
            .log
            .lock()
            .iter()
            .filter(|r| r.verb == verb && r.resource == resource)
            .count()
    }

    pub fn reset_log(&self) {
        self.shared.log.lock().clear();
    }

    /// The latest resource version: it moves only when something actually changed.
    pub fn resource_version(&self) -> u64 {
        self.shared.read(Store::current_rv)
    }

    /// A receiver that changes whenever the store changes (value: latest resource version).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    // ---- fault injection -------------------------------------------------

    /// The next `count` writes (create/update/patch/delete) to `resource` (as logged,
    /// e.g. `deployments` or `macpauths/status`) fail with HTTP `code` (500 →
    /// InternalError, 409 → Conflict, ...). Note kube's client retries 429/503/504 itself.
    pub fn fail_next_writes(&self, resource: &str, count: usize, code: u16) {
        self.shared.faults.lock().push(Fault {
            resource: resource.to_string(),
            code,
            remaining: count,
        });
    }

    pub fn clear_faults(&self) {
        self.shared.faults.lock().clear();
    }

    /// Simulates an unreachable API server: new requests hang until [`resume`](Self::resume)
    /// and open watch streams end (clients reconnect into the hang).
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Drops the event history: watches resuming from an older resource version get
    /// 410 Gone and must relist (exercises kube-runtime's recovery).
    pub fn compact_history(&self) {
        self.shared.write(Store::compact);
    }

    /// Interval of BOOKMARK events on idle watches that asked for them (default 5 s);
    /// applies to watches started afterwards.
    pub fn set_bookmark_interval(&self, every: Duration) {
        *self.shared.bookmark_interval.lock() = every;
    }

    /// Delays every watch event by `delay` after the change it reports, like an
    /// informer cache that lags: a controller then reconciles from objects one or
    /// more writes old. Applies to watches started afterwards.
    pub fn set_watch_delay(&self, delay: Duration) {
        *self.shared.watch_delay.lock() = delay;
    }

    // ---- RBAC ----------------------------------------------------------------

    /// Grants `rules` to [`OPERATOR_USER`] cluster-wide or in one namespace. The
    /// client of [`FakeApiServer::operator_client`] may then do exactly what its
    /// grants allow; every other request gets 403 Forbidden with the real Status.
    /// Call once per binding (e.g. the rules in each watched namespace, and the
    /// lease rules in the operator's namespace).
    pub fn enforce_rbac(&self, rules: impl IntoIterator<Item = PolicyRule>, scope: RbacScope) {
        self.grant(OPERATOR_USER, rules, scope);
    }

    /// Holds the operator's client to exactly what the chart binds in `mode`
    /// (`operator/src/rbac.rs`), with the lease rules in `lease_namespace`.
    pub fn enforce_operator_rbac(
        &self,
        mode: &macp_auth_operator::rbac::Mode,
        lease_namespace: Option<&str>,
    ) {
        for g in macp_auth_operator::rbac::grants(mode, lease_namespace) {
            let rules = g
                .rules
                .iter()
                .map(|r| PolicyRule::new(r.group, r.resource, r.verbs));
            let scope = match g.namespace {
                None => RbacScope::Cluster,
                Some(ns) => RbacScope::Namespace(ns),
            };
            self.enforce_rbac(rules, scope);
        }
    }

    /// Grants `rules` to `user` (see [`FakeApiServer::client_as`]).
    pub fn grant(&self, user: &str, rules: impl IntoIterator<Item = PolicyRule>, scope: RbacScope) {
        self.shared.grants.lock().push(rbac::Grant {
            user: user.to_string(),
            scope,
            rules: rules.into_iter().collect(),
        });
    }

    /// Removes every grant (authenticated clients may then do nothing).
    pub fn clear_grants(&self) {
        self.shared.grants.lock().clear();
    }

    /// Requests RBAC refused (403), in arrival order; not cleared by `reset_log`.
    pub fn forbidden(&self) -> Vec<RecordedRequest> {
        self.shared.forbidden.lock().clone()
    }

    // ---- direct store access (no HTTP, not logged) ------------------------

    fn resource_type(&self, group: &str, resource: &str) -> Result<ResourceType, ApiError> {
        self.shared
            .read(|s| s.registry.find_any_version(group, resource).cloned())
            .ok_or_else(|| ApiError::unknown_path(&format!("{group}/{resource}")))
    }

    /// The stored object, if any. `ns` is ignored for cluster-scoped types.
    pub fn get(&self, group: &str, resource: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        let rt = self.resource_type(group, resource).ok()?;
        self.shared
            .read(|s| s.get(&rt, ns.unwrap_or_default(), name))
            .map(|v| (*v).clone())
    }

    /// Objects of a type in one namespace, or in all with `None`.
    pub fn list(&self, group: &str, resource: &str, ns: Option<&str>) -> Vec<Value> {
        self.list_shared(group, resource, ns)
            .into_iter()
            .map(|v| (*v).clone())
            .collect()
    }

    /// [`list`](Self::list) without copying the objects: for harness loops
    /// that look at every object often and change few (the pod stand-in scans
    /// every Deployment after each change).
    pub fn list_shared(&self, group: &str, resource: &str, ns: Option<&str>) -> Vec<Arc<Value>> {
        let Ok(rt) = self.resource_type(group, resource) else {
            return Vec::new();
        };
        self.shared.read(|s| s.list(&rt, ns))
    }

    /// The objects of a type added or modified after resource version `rv`
    /// (each at its latest version), and the store's resource version they
    /// are current to; `None` when the history no longer reaches back to
    /// `rv` (compacted), so the caller lists instead. For harness loops that
    /// follow changes without a watch: the pod stand-in looked at every
    /// Deployment after each change, a share of the harness's CPU in a storm
    /// (docs/performance.md, "What the figures asked for, and what changed").
    pub fn changed_since(
        &self,
        group: &str,
        resource: &str,
        rv: u64,
    ) -> Option<(Vec<Arc<Value>>, u64)> {
        let rt = self.resource_type(group, resource).ok()?;
        self.shared.read(|s| {
            let events = s.events_after(rv).ok()?;
            let mut latest: std::collections::BTreeMap<(&str, &str), Arc<Value>> =
                std::collections::BTreeMap::new();
            for e in events.filter(|e| e.group == rt.group && e.resource == rt.resource) {
                let name = e
                    .object
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if e.kind == EventType::Deleted {
                    latest.remove(&(e.namespace.as_str(), name));
                } else {
                    latest.insert((e.namespace.as_str(), name), e.object.clone());
                }
            }
            Some((latest.into_values().collect(), s.current_rv()))
        })
    }

    /// Creates an object (namespace from its metadata, else `default`); keeps `.status`.
    pub fn create(&self, group: &str, resource: &str, obj: Value) -> Result<Value, ApiError> {
        let rt = self.resource_type(group, resource)?;
        let ns = Store::object_namespace(&rt, &obj);
        let created = self
            .shared
            .write(|s| s.create(&rt, &ns, obj, false))
            .map(|v| (*v).clone())?;
        crds::after_write(&self.shared, &rt, &created);
        Ok(created)
    }

    /// Creates or replaces an object whole (status included), no resourceVersion check.
    pub fn put(&self, group: &str, resource: &str, obj: Value) -> Result<Value, ApiError> {
        let rt = self.resource_type(group, resource)?;
        let stored = self
            .shared
            .write(|s| s.put(&rt, obj))
            .map(|v| (*v).clone())?;
        crds::after_write(&self.shared, &rt, &stored);
        Ok(stored)
    }

    /// Atomic read-modify-write; a change that leaves the object equal is a no-op.
    pub fn modify(
        &self,
        group: &str,
        resource: &str,
        ns: Option<&str>,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        let rt = self.resource_type(group, resource)?;
        self.shared
            .write(|s| s.modify(&rt, ns.unwrap_or_default(), name, f))
            .map(|v| (*v).clone())
    }

    /// Deletes like `DELETE` with background propagation (finalizers and GC apply).
    pub fn delete(
        &self,
        group: &str,
        resource: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(), ApiError> {
        let rt = self.resource_type(group, resource)?;
        self.shared
            .write(|s| s.delete(&rt, ns.unwrap_or_default(), name, &DeleteOpts::default()))
            .map(|_| ())
    }

    // ---- typed helpers ----------------------------------------------------

    /// Typed [`get`](Self::get).
    pub fn get_as<K>(&self, ns: Option<&str>, name: &str) -> Result<Option<K>, ApiError>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        self.get(&K::group(&()), &K::plural(&()), ns, name)
            .map(from_value)
            .transpose()
    }

    /// Typed [`list`](Self::list).
    pub fn list_as<K>(&self, ns: Option<&str>) -> Result<Vec<K>, ApiError>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        self.list(&K::group(&()), &K::plural(&()), ns)
            .into_iter()
            .map(from_value)
            .collect()
    }

    /// Typed [`create`](Self::create).
    pub fn create_as<K>(&self, obj: &K) -> Result<K, ApiError>
    where
        K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        from_value(self.create(&K::group(&()), &K::plural(&()), to_value(obj)?)?)
    }

    /// Typed [`put`](Self::put).
    pub fn put_as<K>(&self, obj: &K) -> Result<K, ApiError>
    where
        K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        from_value(self.put(&K::group(&()), &K::plural(&()), to_value(obj)?)?)
    }

    /// Typed [`modify`](Self::modify).
    pub fn modify_as<K>(
        &self,
        ns: Option<&str>,
        name: &str,
        f: impl FnOnce(&mut K),
    ) -> Result<K, ApiError>
    where
        K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let mut err = None;
        let out =
            self.modify(
                &K::group(&()),
                &K::plural(&()),
                ns,
                name,
                |v| match serde_json::from_value::<K>(v.clone()) {
                    Ok(mut k) => {
                        f(&mut k);
                        match to_value(&k) {
                            Ok(nv) => *v = nv,
                            Err(e) => err = Some(e),
                        }
                    }
                    Err(e) => err = Some(ApiError::invalid(e.to_string())),
                },
            )?;
        match err {
            Some(e) => Err(e),
            None => from_value(out),
        }
    }

    /// Typed [`delete`](Self::delete).
    pub fn delete_as<K>(&self, ns: Option<&str>, name: &str) -> Result<(), ApiError>
    where
        K: kube::Resource<DynamicType = ()>,
    {
        self.delete(&K::group(&()), &K::plural(&()), ns, name)
    }
}

fn from_value<K: DeserializeOwned>(v: Value) -> Result<K, ApiError> {
    serde_json::from_value(v)
        .map_err(|e| ApiError::invalid(format!("stored object does not deserialize: {e}")))
}

fn to_value<K: Serialize>(k: &K) -> Result<Value, ApiError> {
    serde_json::to_value(k)
        .map_err(|e| ApiError::invalid(format!("object does not serialize: {e}")))
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.handle.shared.paused.send_replace(false);
        self.handle.shared.shutdown.send_replace(true);
    }
}
