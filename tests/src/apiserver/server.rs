//! The HTTP front: routing, verbs, request log, faults, pause, and watch streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::crds;
use super::discovery;
use super::error::ApiError;
use super::events;
use super::instrument::{Fault, RecordedRequest, take_fault};
use super::logs::{self, PodLogs};
use super::metadata;
use super::openapi;
use super::patch::PatchKind;
use super::path::{self, ResourcePath, Target};
use super::protobuf;
use super::rbac::{self, Grant};
use super::resources::ResourceType;
use super::review;
use super::scale;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{
    DeleteOpts, Deleted, EventType, Ownership, Propagation, Store, StoredEvent, Sub,
};
use super::strategic;
use super::table;
use super::validation;

/// State shared by the HTTP handlers and the test-facing handle.
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    /// Latest resource version; watches wake on change.
    pub changed: watch::Sender<u64>,
    pub log: Mutex<Vec<RecordedRequest>>,
    pub faults: Mutex<Vec<Fault>>,
    pub paused: watch::Sender<bool>,
    pub shutdown: watch::Sender<bool>,
    pub bookmark_interval: Mutex<Duration>,
    /// How long after a change watches deliver it (a lagging informer cache).
    pub watch_delay: Mutex<Duration>,
    /// RBAC grants, checked for requests that authenticate as a user.
    pub grants: Mutex<Vec<Grant>>,
    /// Requests RBAC refused.
    pub forbidden: Mutex<Vec<RecordedRequest>>,
    /// Where `pods/{name}/log` reads from (none: every log request is 404).
    pub pod_logs: Mutex<Option<Arc<dyn PodLogs>>>,
    /// Whether a namespaced object may only be created in an existing namespace.
    pub strict_namespaces: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(store: Store) -> Self {
        Self {
            store: Mutex::new(store),
            changed: watch::Sender::new(0),
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            paused: watch::Sender::new(false),
            shutdown: watch::Sender::new(false),
            bookmark_interval: Mutex::new(Duration::from_secs(5)),
            watch_delay: Mutex::new(Duration::ZERO),
            grants: Mutex::new(Vec::new()),
            forbidden: Mutex::new(Vec::new()),
            pod_logs: Mutex::new(None),
            strict_namespaces: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Runs `f` under the store lock and wakes watches if anything changed.
    pub fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let (out, rv) = {
            let mut store = self.store.lock();
            let out = f(&mut store);
            (out, store.current_rv())
        };
        self.changed.send_if_modified(|cur| {
            let changed = *cur != rv;
            *cur = rv;
            changed
        });
        out
    }

    pub fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.store.lock())
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn error_response(e: &ApiError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.to_status())
}

/// Resolves once the flag equals `value` (never if the sender is gone). The
/// borrow guard `wait_for` returns is not `Send`, so it is dropped in here.
pub(crate) async fn until(rx: &mut watch::Receiver<bool>, value: bool) {
    if rx.wait_for(|v| *v == value).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Waits while the server is paused; false when it shut down meanwhile.
async fn wait_unpaused(shared: &Shared) -> bool {
    let mut paused = shared.paused.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    tokio::select! {
        _ = until(&mut paused, false) => !*shared.shutdown.borrow(),
        _ = until(&mut shutdown, true) => false,
    }
}

pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !wait_unpaused(&shared).await {
        return error_response(&ApiError::unavailable("the API server is shutting down"));
    }
    if uri.path().starts_with("/openapi/") {
        return openapi_response(&shared, uri.path());
    }
    // Health endpoints (`kubectl get --raw /readyz`, tools that probe the
    // server before using it): always healthy while serving.
    if matches!(uri.path(), "/healthz" | "/readyz" | "/livez") {
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "ok").into_response();
    }
    let target = match path::parse(uri.path()) {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    let rp = match target {
        Target::Resource(rp) => rp,
        other => return discovery_response(&shared, &other, &headers),
    };
    match serve_resource(&shared, &method, &rp, &query, &headers, &body).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn verb_of(
    method: &Method,
    rp: &ResourcePath,
    query: &HashMap<String, String>,
) -> Result<&'static str, ApiError> {
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    Ok(match (method.as_str(), rp.name.is_some()) {
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        (m, _) => {
            return Err(ApiError::method_not_allowed(format!(
                "{m} is not supported on {}",
                rp.resource
            )));
        }
    })
}

async fn serve_resource(
    shared: &Arc<Shared>,
    method: &Method,
    rp: &ResourcePath,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let rt = shared
        .read(|s| {
            s.registry
                .find(&rp.group, &rp.version, &rp.resource)
                .cloned()
        })
        .ok_or_else(|| {
            ApiError::unknown_path(&format!("{}/{}/{}", rp.group, rp.version, rp.resource))
        })?;
    if rt.group == review::GROUP && rt.resource == review::RESOURCE {
        return access_review(shared, method, headers, body);
    }
    if rp.namespace.is_some() && !rt.namespaced {
        return Err(ApiError::unknown_path(&format!(
            "namespaced {}",
            rt.resource
        )));
    }
    let sub = match rp.subresource.as_deref() {
        None => Sub::Main,
        Some("status") if rt.has_status => Sub::Status,
        Some("log") if rt.group.is_empty() && rt.resource == "pods" && *method == Method::GET => {
            return pod_log(shared, rp, headers, query);
        }
        Some("scale") if scale::has_scale(&rt) => {
            return scale_subresource(shared, &rt, rp, method, query, headers, body);
        }
        Some(other) => {
            return Err(ApiError::unknown_path(&format!("{}/{other}", rt.resource)));
        }
    };
    let verb = verb_of(method, rp, query)?;
    let logged_resource = match sub {
        Sub::Main => rt.resource.clone(),
        Sub::Status => format!("{}/status", rt.resource),
    };
    let recorded = RecordedRequest {
        verb: verb.to_string(),
        group: rt.group.clone(),
        resource: logged_resource.clone(),
        namespace: rp.namespace.clone(),
        name: rp.name.clone(),
    };
    shared.log.lock().push(recorded.clone());
    if let Some(user) = rbac::user_of(headers) {
        authorize(
            shared,
            &user,
            &rt,
            rp,
            verb,
            headers,
            &logged_resource,
            recorded,
        )?;
    }
    let is_write = matches!(verb, "create" | "update" | "patch" | "delete");
    if is_write && let Some(code) = take_fault(&mut shared.faults.lock(), &logged_resource) {
        return Err(ApiError::injected(code));
    }
    let ns = rp.namespace.clone().unwrap_or_default();
    if rt.namespaced && ns.is_empty() && verb != "list" && verb != "watch" {
        return Err(ApiError::unknown_path(&format!(
            "{} without a namespace",
            rt.resource
        )));
    }
    let name = rp.name.clone().unwrap_or_default();
    if matches!(verb, "create" | "patch") {
        namespace_must_exist(shared, &rt, &ns, &name)?;
    }
    let validation =
        validation::Mode::from_query(query.get("fieldValidation").map(String::as_str))?;
    let mut warnings = Vec::new();
    if validation != validation::Mode::Ignore
        && matches!(verb, "create" | "update" | "patch")
        && let Some(obj) = body_for_validation(headers, body, verb)
        && let Some((root, defs)) = shared.read(|s| openapi::schema_for(s, &rt))
    {
        let unknown = validation::unknown_fields(&defs, &root, &obj);
        if !unknown.is_empty() {
            if validation == validation::Mode::Strict {
                return Err(validation::strict_error(&rt.kind, &rt.version, &unknown));
            }
            warnings.extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")));
        }
    }
    let dry = match query.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid dryRun value {other:?}: supported values: \"All\""
            )));
        }
    };
    let response = match verb {
        "get" => {
            let obj = shared
                .read(|s| get_viewed(s, &rt, &ns, &name))
                .ok_or_else(|| ApiError::not_found(&rt.group, &rt.resource, &name))?;
            match table_view(shared, &rt, headers, query) {
                Some((cols, include)) => {
                    let rv = obj
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let t = table::table(&cols, &[(*obj).clone()], include, &rv, true);
                    Ok(json_response(StatusCode::OK, &t))
                }
                None if metadata_view(headers) => {
                    Ok(json_response(StatusCode::OK, &metadata::partial(&obj)))
                }
                None => Ok(json_response(StatusCode::OK, &obj)),
            }
        }
        "list" => list(shared, &rt, rp.namespace.as_deref(), query, headers),
        "watch" => {
            let view = table_view(shared, &rt, headers, query).map(|(c, i)| (Arc::new(c), i));
            let metadata_only = metadata_view(headers);
            watch_response(shared, rt, rp.namespace.clone(), query, view, metadata_only)
        }
        "create" => {
            let obj = parse_body(headers, body)?;
            let manager = field_manager(query, headers);
            let created = dry_or_write(shared, dry, |s| {
                s.create_by(&rt, &ns, obj, true, Ownership::Update(manager))
            })?;
            if !dry {
                crds::after_write(shared, &rt, &created);
            }
            Ok(json_response(
                StatusCode::CREATED,
                &dry_view(shared, dry, &rt, &ns, &created),
            ))
        }
        "update" => {
            let obj = parse_body(headers, body)?;
            let manager = field_manager(query, headers);
            let updated = dry_or_write(shared, dry, |s| {
                s.update_by(&rt, &ns, &name, obj, sub, &manager)
            })?;
            if !dry {
                crds::after_write(shared, &rt, &updated);
            }
            Ok(json_response(
                StatusCode::OK,
                &dry_view(shared, dry, &rt, &ns, &updated),
            ))
        }
        "patch" => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchKind::from_content_type(ct)?;
            let patch = kind.parse_body(body)?;
            let given = query.get("fieldManager").cloned().unwrap_or_default();
            if kind == PatchKind::Apply && given.is_empty() {
                return Err(ApiError::bad_request(
                    "PATCH, application/apply-patch+yaml requires fieldManager to be set",
                ));
            }
            let manager = field_manager(query, headers);
            let force = query.get("force").is_some_and(|f| f == "true");
            let schema = match kind {
                PatchKind::Strategic => Some(
                    openapi::builtin_schema(&rt.group, &rt.kind)
                        .ok_or_else(|| ApiError::unsupported_media_type(ct))?,
                ),
                _ => None,
            };
            let (obj, created) = dry_or_write(shared, dry, |s| {
                match &schema {
                    // The store knows merge patches only: the strategic result is
                    // computed here under the same lock and stored as a whole-object
                    // JSON patch (same resourceVersion check, same field manager).
                    Some((root, defs)) => {
                        let old = s
                            .get(&rt, &ns, &name)
                            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.resource, &name))?;
                        let new = strategic::apply(strategic::Ctx::new(defs, root), &old, &patch)?;
                        let replace = json!([{"op": "replace", "path": "", "value": new}]);
                        s.patch_with(
                            &rt,
                            &ns,
                            &name,
                            PatchKind::Json,
                            &replace,
                            &manager,
                            force,
                            sub,
                        )
                    }
                    None => s.patch_with(&rt, &ns, &name, kind, &patch, &manager, force, sub),
                }
            })?;
            if !dry {
                crds::after_write(shared, &rt, &obj);
            }
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &dry_view(shared, dry, &rt, &ns, &obj)))
        }
        "delete" => {
            let opts = delete_opts(headers, body, query)?;
            match dry_or_write(shared, dry, |s| s.delete(&rt, &ns, &name, &opts))? {
                Deleted::Pending(obj) => Ok(json_response(StatusCode::OK, &obj)),
                Deleted::Gone(obj) => {
                    if !dry {
                        crds::after_delete(shared, &rt, &obj);
                    }
                    let uid = obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
                    let status = json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                        "details": {"name": name, "group": rt.group, "kind": rt.resource, "uid": uid},
                    });
                    Ok(json_response(StatusCode::OK, &status))
                }
            }
        }
        other => Err(ApiError::method_not_allowed(other.to_string())),
    };
    response.map(|mut r| {
        for w in warnings {
            if let Ok(v) = header::HeaderValue::from_str(&format!("299 - {w:?}")) {
                r.headers_mut().append(header::WARNING, v);
            }
        }
        r
    })
}

/// The object (or patch) whose field names `fieldValidation` checks: the
/// body of a create, update, apply, merge or strategic patch; a JSON patch
/// is a list of operations and is not checked.
fn body_for_validation(headers: &HeaderMap, body: &Bytes, verb: &str) -> Option<Value> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match verb {
        "patch" => {
            let kind = PatchKind::from_content_type(ct).ok()?;
            (kind != PatchKind::Json)
                .then(|| kind.parse_body(body).ok())
                .flatten()
        }
        _ => parse_body(headers, body).ok(),
    }
}

/// In strict mode a namespaced object can only be created in a namespace that
/// exists (a patch of an absent object may create it through apply).
fn namespace_must_exist(
    shared: &Shared,
    rt: &ResourceType,
    ns: &str,
    name: &str,
) -> Result<(), ApiError> {
    if !rt.namespaced
        || !shared
            .strict_namespaces
            .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Ok(());
    }
    let Some(ns_rt) = shared.read(|s| s.registry.find("", "v1", "namespaces").cloned()) else {
        return Ok(());
    };
    let (ns_exists, obj_exists) = shared.read(|s| {
        (
            s.get(&ns_rt, "", ns).is_some(),
            !name.is_empty() && s.get(rt, ns, name).is_some(),
        )
    });
    if ns_exists || obj_exists {
        return Ok(());
    }
    Err(ApiError::not_found("", "namespaces", ns))
}

/// `pods/{name}/log`: logged and authorized as `get` on `pods/log`; the pod
/// must exist (404 like a real server otherwise), then the hook answers.
fn pod_log(
    shared: &Arc<Shared>,
    rp: &ResourcePath,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let rt = shared
        .read(|s| s.registry.find("", "v1", "pods").cloned())
        .ok_or_else(|| ApiError::unknown_path("pods"))?;
    let ns = rp.namespace.clone().unwrap_or_default();
    let name = rp.name.clone().unwrap_or_default();
    let recorded = RecordedRequest {
        verb: "get".to_string(),
        group: String::new(),
        resource: "pods/log".to_string(),
        namespace: rp.namespace.clone(),
        name: rp.name.clone(),
    };
    shared.log.lock().push(recorded.clone());
    if let Some(user) = rbac::user_of(headers) {
        authorize(shared, &user, &rt, rp, "get", headers, "pods/log", recorded)?;
    }
    if shared.read(|s| s.get(&rt, &ns, &name)).is_none() {
        return Err(ApiError::not_found("", "pods", &name));
    }
    logs::serve(shared, &ns, &name, query)
}

/// `POST .../selfsubjectaccessreviews` (see [`review`]): answered from the
/// caller's grants, never stored or logged as a write.
fn access_review(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    if *method != Method::POST {
        return Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on selfsubjectaccessreviews"
        )));
    }
    let review = parse_body(headers, body)?;
    let user = rbac::user_of(headers);
    let grants = shared.grants.lock().clone();
    let answer = review::answer(&review, user.as_deref(), &grants);
    Ok(json_response(StatusCode::CREATED, &answer))
}

/// `deployments/{name}/scale` (see [`scale`]): logged and authorized as the
/// verb on `<resource>/scale`; a write becomes a merge patch of `spec.replicas`.
fn scale_subresource(
    shared: &Arc<Shared>,
    rt: &ResourceType,
    rp: &ResourcePath,
    method: &Method,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let verb = match method.as_str() {
        "GET" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        m => {
            return Err(ApiError::method_not_allowed(format!(
                "{m} is not supported on scale"
            )));
        }
    };
    let resource = format!("{}/scale", rt.resource);
    let recorded = RecordedRequest {
        verb: verb.to_string(),
        group: rt.group.clone(),
        resource: resource.clone(),
        namespace: rp.namespace.clone(),
        name: rp.name.clone(),
    };
    shared.log.lock().push(recorded.clone());
    if let Some(user) = rbac::user_of(headers) {
        authorize(shared, &user, rt, rp, verb, headers, &resource, recorded)?;
    }
    let ns = rp.namespace.clone().unwrap_or_default();
    let name = rp.name.clone().unwrap_or_default();
    let current = shared
        .read(|s| s.get(rt, &ns, &name))
        .ok_or_else(|| ApiError::not_found(&rt.group, &rt.resource, &name))?;
    if verb == "get" {
        return Ok(json_response(StatusCode::OK, &scale::view(&current)));
    }
    let kind = match verb {
        "patch" => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            Some(PatchKind::from_content_type(ct)?)
        }
        _ => None,
    };
    let parsed = match kind {
        Some(k) => k.parse_body(body)?,
        None => parse_json(body)?,
    };
    let replicas = scale::wanted_replicas(&current, kind, &parsed)?;
    let manager = field_manager(query, headers);
    let patch = json!({"spec": {"replicas": replicas}});
    let (updated, _) = shared.write(|s| {
        s.patch_with(
            rt,
            &ns,
            &name,
            PatchKind::Merge,
            &patch,
            &manager,
            true,
            Sub::Main,
        )
    })?;
    Ok(json_response(StatusCode::OK, &scale::view(&updated)))
}

/// The field manager of a write: `fieldManager`, else the User-Agent's product
/// (what the real server derives), else `unknown`.
fn field_manager(query: &HashMap<String, String>, headers: &HeaderMap) -> String {
    if let Some(m) = query.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.clone();
    }
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|p| !p.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

/// RBAC: refuses with 403 what `user`'s grants do not allow. A server-side
/// apply that would create the object needs `create` as well as `patch`.
#[allow(clippy::too_many_arguments)]
fn authorize(
    shared: &Shared,
    user: &str,
    rt: &ResourceType,
    rp: &ResourcePath,
    verb: &str,
    headers: &HeaderMap,
    resource: &str,
    recorded: RecordedRequest,
) -> Result<(), ApiError> {
    let ns = if rt.namespaced {
        rp.namespace.as_deref()
    } else {
        None
    };
    let grants = shared.grants.lock().clone();
    let check = |verb: &str| rbac::allowed(&grants, user, verb, &rt.group, resource, ns);
    let mut refused = (!check(verb)).then_some(verb);
    let is_apply = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/apply-patch"));
    if refused.is_none() && verb == "patch" && is_apply {
        let exists = shared.read(|s| {
            s.get(
                rt,
                ns.unwrap_or_default(),
                rp.name.as_deref().unwrap_or_default(),
            )
            .is_some()
        });
        if !exists && !check("create") {
            refused = Some("create");
        }
    }
    match refused {
        None => Ok(()),
        Some(v) => {
            shared.forbidden.lock().push(recorded);
            Err(ApiError::forbidden(
                user,
                v,
                &rt.group,
                resource,
                ns,
                rp.name.as_deref(),
            ))
        }
    }
}

/// An object as the type `rt` shows it: core/v1 events also find
/// events.k8s.io ones (the same storage on a real server).
fn get_viewed(s: &Store, rt: &ResourceType, ns: &str, name: &str) -> Option<Arc<Value>> {
    if let Some(o) = s.get(rt, ns, name) {
        return Some(o);
    }
    if events::is_core_events(rt) {
        let new = s
            .registry
            .find_any_version("events.k8s.io", "events")?
            .clone();
        return s.get(&new, ns, name).map(|o| Arc::new(events::to_core(&o)));
    }
    None
}

/// Every object of `rt` in scope, events.k8s.io events included for core
/// events (shared, not copied: lists and watches are hot paths).
fn list_viewed(s: &Store, rt: &ResourceType, ns: Option<&str>) -> Vec<Arc<Value>> {
    let mut out = s.list(rt, ns);
    if events::is_core_events(rt)
        && let Some(new) = s
            .registry
            .find_any_version("events.k8s.io", "events")
            .cloned()
    {
        out.extend(
            s.list(&new, ns)
                .into_iter()
                .map(|o| Arc::new(events::to_core(&o))),
        );
    }
    out
}

/// Whether the client asked for metadata only ([`metadata`]).
fn metadata_view(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(metadata::wants_metadata)
}

/// The table columns and `includeObject` when the client asked for a Table.
fn table_view(
    shared: &Shared,
    rt: &ResourceType,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Option<(Vec<table::Column>, table::Include)> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    if !table::wants_table(accept) {
        return None;
    }
    let crd = shared.read(|s| crds::find(s, &rt.group, &rt.resource));
    let version = crd.as_ref().and_then(|c| crds::version_of(c, &rt.version));
    let cols = table::columns(rt, version);
    Some((
        cols,
        table::Include::from_query(query.get("includeObject").map(String::as_str)),
    ))
}

/// Runs a write on the store, or for `dryRun=All` on a copy of it: the
/// answer is what the write would return, and nothing is stored or watched.
fn dry_or_write<T>(shared: &Shared, dry: bool, f: impl FnOnce(&mut Store) -> T) -> T {
    if dry {
        let mut copy = shared.read(Store::clone);
        f(&mut copy)
    } else {
        shared.write(f)
    }
}

/// What a dry-run write answers: the object as it would be, with the stored
/// resourceVersion (none for a create), since nothing was written.
fn dry_view(shared: &Shared, dry: bool, rt: &ResourceType, ns: &str, obj: &Value) -> Value {
    let mut out = obj.clone();
    if !dry {
        return out;
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let stored_rv = shared.read(|s| {
        s.get(rt, ns, name)
            .and_then(|o| o.pointer("/metadata/resourceVersion").cloned())
    });
    if let Some(meta) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        match stored_rv {
            Some(rv) => meta.insert("resourceVersion".into(), rv),
            None => meta.remove("resourceVersion"),
        };
    }
    out
}

/// A create/update body: JSON, or protobuf (see [`protobuf`]).
fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if ct.starts_with(protobuf::CONTENT_TYPE) {
        return protobuf::decode(body);
    }
    parse_json(body)
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn delete_opts(
    headers: &HeaderMap,
    body: &Bytes,
    query: &HashMap<String, String>,
) -> Result<DeleteOpts, ApiError> {
    let v: Value = if body.is_empty() {
        json!({})
    } else {
        parse_body(headers, body)?
    };
    let policy = v
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .or(query.get("propagationPolicy").map(String::as_str));
    let propagation = match policy {
        None | Some("Background") => Propagation::Background,
        Some("Foreground") => Propagation::Foreground,
        Some("Orphan") => Propagation::Orphan,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown propagationPolicy {other:?}"
            )));
        }
    };
    let pre = |f: &str| {
        v.get("preconditions")
            .and_then(|p| p.get(f))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Ok(DeleteOpts {
        propagation,
        precondition_rv: pre("resourceVersion"),
        precondition_uid: pre("uid"),
    })
}

struct Selectors {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selectors {
    fn from_query(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        Ok(Self {
            labels: LabelSelector::parse(
                q.get("labelSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            )?,
            fields: FieldSelector::parse(
                q.get("fieldSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            )?,
        })
    }

    fn matches(&self, v: &Value) -> bool {
        self.labels.matches(v) && self.fields.matches(v)
    }
}

/// Lists everything that matches; `limit`/`continue` are ignored (one page, no
/// continue token), which clients must accept from a real server as well.
fn list(
    shared: &Shared,
    rt: &ResourceType,
    ns: Option<&str>,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let sel = Selectors::from_query(query)?;
    let (shared_items, rv) = shared.read(|s| {
        let items: Vec<Arc<Value>> = list_viewed(s, rt, ns)
            .into_iter()
            .filter(|o| sel.matches(o))
            .collect();
        (items, s.current_rv())
    });
    if metadata_view(headers) {
        let body = metadata::partial_list(shared_items.iter().map(Arc::as_ref), &rv.to_string());
        return Ok(json_response(StatusCode::OK, &body));
    }
    let items: Vec<Value> = shared_items.iter().map(|o| (**o).clone()).collect();
    if let Some((cols, include)) = table_view(shared, rt, headers, query) {
        let t = table::table(&cols, &items, include, &rv.to_string(), true);
        return Ok(json_response(StatusCode::OK, &t));
    }
    let body = json!({
        "kind": format!("{}List", rt.kind),
        "apiVersion": rt.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &body))
}

struct WatchSpec {
    rt: ResourceType,
    namespace: Option<String>,
    sel: Selectors,
    start: Option<u64>,
    timeout: Duration,
    bookmarks: bool,
    send_initial: bool,
    /// Events carry one-row Tables (`kubectl get -w`).
    table: Option<(Arc<Vec<table::Column>>, table::Include)>,
    /// Events carry the objects' metadata only ([`metadata`]).
    metadata_only: bool,
}

impl WatchSpec {
    /// The watch line of one event: the object itself or its one-row Table
    /// (column definitions only in the first, as the real server sends them).
    fn line(&self, event_type: &str, object: &Value, first: &mut bool) -> Bytes {
        match &self.table {
            Some((cols, include)) if event_type != "BOOKMARK" && event_type != "ERROR" => {
                let rv = object
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let t = table::table(cols, std::slice::from_ref(object), *include, rv, *first);
                *first = false;
                line(event_type, &t)
            }
            _ if self.metadata_only && event_type != "BOOKMARK" && event_type != "ERROR" => {
                line(event_type, &metadata::partial(object))
            }
            _ => line(event_type, object),
        }
    }
}

fn watch_response(
    shared: &Arc<Shared>,
    rt: ResourceType,
    namespace: Option<String>,
    query: &HashMap<String, String>,
    table: Option<(Arc<Vec<table::Column>>, table::Include)>,
    metadata_only: bool,
) -> Result<Response, ApiError> {
    let start = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let spec = WatchSpec {
        rt,
        namespace,
        sel: Selectors::from_query(query)?,
        start,
        timeout: Duration::from_secs(timeout),
        bookmarks: query
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true"),
        send_initial: query.get("sendInitialEvents").is_some_and(|b| b == "true"),
        table,
        metadata_only,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(run_watch(shared.clone(), spec, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error_response(&ApiError::unavailable("cannot build watch response"))))
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut v =
        serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta}),
    )
}

/// Translates a stored event for one watcher, including selector transitions:
/// an object that starts matching arrives as ADDED, one that stops as DELETED.
/// Returns the line with the time the event happened.
fn translate(
    spec: &WatchSpec,
    ev: &StoredEvent,
    first: &mut bool,
) -> Option<(tokio::time::Instant, Bytes)> {
    let converted =
        events::is_core_events(&spec.rt) && events::is_new_events(&ev.group, &ev.resource);
    if !converted && (ev.group != spec.rt.group || ev.resource != spec.rt.resource) {
        return None;
    }
    if spec.rt.namespaced
        && let Some(ns) = &spec.namespace
        && *ns != ev.namespace
    {
        return None;
    }
    // Borrowed unless converted: every watcher sees every event.
    let view = |o: &'_ Value| -> Option<Value> { converted.then(|| events::to_core(o)) };
    let converted_object = view(&ev.object);
    let object = converted_object.as_ref().unwrap_or(&ev.object);
    let now = spec.sel.matches(object);
    let t = match ev.kind {
        EventType::Added => now.then_some("ADDED"),
        EventType::Deleted => now.then_some("DELETED"),
        EventType::Modified => {
            let before = ev
                .old
                .as_deref()
                .is_some_and(|o| spec.sel.matches(view(o).as_ref().unwrap_or(o)));
            match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
    }?;
    Some((ev.at, spec.line(t, object, first)))
}

/// Streams one watch until timeout, client disconnect, pause or shutdown.
async fn run_watch(shared: Arc<Shared>, spec: WatchSpec, tx: mpsc::Sender<Bytes>) {
    let mut changes = shared.changed.subscribe();
    let mut paused = shared.paused.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let bookmark_every = *shared.bookmark_interval.lock();
    let delay = *shared.watch_delay.lock();
    changes.borrow_and_update();

    let mut first = true;
    let (mut cursor, initial) = shared.read(|s| match spec.start {
        None | Some(0) => {
            let lines: Vec<Bytes> = list_viewed(s, &spec.rt, spec.namespace.as_deref())
                .into_iter()
                .filter(|o| spec.sel.matches(o))
                .map(|o| spec.line("ADDED", &o, &mut first))
                .collect();
            (s.current_rv(), Ok(lines))
        }
        Some(rv) => (rv, s.events_after(rv).map(|_| Vec::new())),
    });
    let initial = match initial {
        Ok(lines) => lines,
        Err(gone) => {
            let _ = tx.send(line("ERROR", &gone.to_status())).await;
            return;
        }
    };
    for l in initial {
        if tx.send(l).await.is_err() {
            return;
        }
    }
    if spec.send_initial
        && spec.bookmarks
        && tx.send(bookmark(&spec.rt, cursor, true)).await.is_err()
    {
        return;
    }
    loop {
        changes.borrow_and_update();
        let batch = shared.read(|s| {
            let events = s.events_after(cursor)?;
            let lines: Vec<(tokio::time::Instant, Bytes)> = events
                .filter_map(|e| translate(&spec, e, &mut first))
                .collect();
            Ok::<_, ApiError>((lines, s.current_rv().max(cursor)))
        });
        match batch {
            Ok((lines, rv)) => {
                cursor = rv;
                for (at, l) in lines {
                    // A lagging cache: each change arrives `delay` after it happened.
                    if !delay.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at + delay) => {}
                            _ = tx.closed() => return,
                        }
                    }
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
            }
            Err(gone) => {
                let _ = tx.send(line("ERROR", &gone.to_status())).await;
                return;
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tokio::time::sleep(bookmark_every), if spec.bookmarks => {
                if tx.send(bookmark(&spec.rt, cursor, false)).await.is_err() {
                    return;
                }
            }
            _ = until(&mut paused, true) => return,
            _ = until(&mut shutdown, true) => return,
            _ = tx.closed() => return,
        }
    }
}

/// `/openapi/v3` and its group-version documents (see [`openapi`]); v2 is
/// not served (kubectl then uses its compiled-in types).
fn openapi_response(shared: &Shared, path: &str) -> Response {
    let body = if path.trim_end_matches('/') == "/openapi/v3" {
        Some(shared.read(openapi::index))
    } else {
        openapi::parse_path(path).and_then(|(g, v)| shared.read(|s| openapi::document(s, &g, &v)))
    };
    match body {
        Some(b) => json_response(StatusCode::OK, &b),
        None => error_response(&ApiError::unknown_path(path)),
    }
}

/// Discovery documents (see [`discovery`]): aggregated when the client asks
/// for it on `/api` and `/apis`, legacy otherwise.
fn discovery_response(shared: &Shared, target: &Target, headers: &HeaderMap) -> Response {
    let types = shared.read(|s| s.registry.all().to_vec());
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let core = match target {
        Target::CoreVersions => Some(true),
        Target::Groups => Some(false),
        _ => None,
    };
    if let Some(core) = core
        && discovery::wants_aggregated(accept)
    {
        let body = discovery::aggregated(&types, core);
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, discovery::AGGREGATED)],
            body.to_string(),
        )
            .into_response();
    }
    match discovery::legacy(&types, target) {
        Some(Ok(body)) => json_response(StatusCode::OK, &body),
        Some(Err(e)) => error_response(&e),
        None => error_response(&ApiError::unknown_path("resource")),
    }
}
