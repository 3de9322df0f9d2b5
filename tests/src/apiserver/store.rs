//! The in-memory object store: server-side write semantics, resource versions,
//! the event history that watches replay, and owner-reference garbage collection.
//!
//! Everything here is synchronous and free of I/O; the HTTP layer and the direct
//! test access both call it under one mutex, so every write is atomic.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use chrono::SecondsFormat;
use serde_json::{Map, Value};

use super::admission;
use super::error::ApiError;
use super::fields::{Managed, Scope};
use super::owners::{OwnerIndex, owner_uids};
use super::patch::{self, PatchKind};
use super::resources::{Registry, ResourceType};

/// `(group, resource, namespace or "", name)`.
pub type ObjKey = (String, String, String, String);

/// Which part of an object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sub {
    Main,
    Status,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, as replayed to watches.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub rv: u64,
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub kind: EventType,
    pub object: Arc<Value>,
    /// The object before a modification (selector transitions need it).
    pub old: Option<Arc<Value>>,
    /// When it happened (watches with a delay deliver it that much later).
    pub at: tokio::time::Instant,
}

/// `DeleteOptions.propagationPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

/// The parts of `DeleteOptions` honoured.
#[derive(Clone, Debug, Default)]
pub struct DeleteOpts {
    pub propagation: Propagation,
    pub precondition_rv: Option<String>,
    pub precondition_uid: Option<String>,
}

/// Result of a delete: gone at once, or marked for deletion while finalizers remain.
#[derive(Clone, Debug)]
pub enum Deleted {
    Gone(Arc<Value>),
    Pending(Arc<Value>),
}

/// Oldest events are dropped beyond this; a watch from before them gets 410 Gone.
const MAX_HISTORY: usize = 200_000;

// Clone: a `dryRun=All` write runs on a copy (server.rs).
#[derive(Clone)]
pub struct Store {
    pub registry: Registry,
    objects: BTreeMap<ObjKey, Arc<Value>>,
    rv: u64,
    history: VecDeque<StoredEvent>,
    /// Watches may resume from any resource version >= floor.
    floor: u64,
    /// Field ownership per object (`metadata.managedFields` is rendered from it).
    managed: HashMap<ObjKey, Managed>,
    owners: OwnerIndex,
}

impl Default for Store {
    fn default() -> Self {
        Self::new(Registry::default())
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn new_uid() -> String {
    let b = rand::random::<u128>().to_be_bytes();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn set_meta(obj: &mut Value, field: &str, value: Value) {
    let meta = patch::ensure_object(obj, "metadata");
    if let Some(m) = meta.as_object_mut() {
        m.insert(field.to_string(), value);
    }
}

fn remove_meta(obj: &mut Value, field: &str) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove(field);
    }
}

/// Whether `old` and `new` differ outside metadata and status: what a
/// generation counts. Compared in place (every update asks, and copying
/// whole objects to compare them was a twentieth of the harness's CPU).
fn spec_changed(old: &Value, new: &Value) -> bool {
    const NOT_SPEC: [&str; 4] = ["metadata", "status", "apiVersion", "kind"];
    let empty = Map::new();
    let (old, new) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let spec = |(k, _): &(&String, &Value)| !NOT_SPEC.contains(&k.as_str());
    old.iter().filter(spec).count() != new.iter().filter(spec).count()
        || old.iter().filter(spec).any(|(k, v)| new.get(k) != Some(v))
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// Keeps `.status` out of main-resource writes and everything but `.status` out of
/// `/status` writes, for types with a status subresource.
fn scope_to_subresource(rt: &ResourceType, sub: Sub, old: &Value, new: Value) -> Value {
    if !rt.has_status {
        return new;
    }
    let (mut base, source) = match sub {
        Sub::Main => (new, old),
        Sub::Status => (old.clone(), &new),
    };
    if let Some(b) = base.as_object_mut() {
        match source.get("status") {
            Some(s) => {
                b.insert("status".to_string(), s.clone());
            }
            None => {
                b.remove("status");
            }
        }
    }
    base
}

/// Who a write is attributed to in `managedFields`.
pub enum Ownership {
    /// A direct test write: attributed to nobody (fields it removes lose their owners).
    Direct,
    /// A create, update or non-apply patch by this field manager.
    Update(String),
    /// A server-side apply, already merged: the ownership after it.
    Applied(Managed),
}

/// The part of an object a write to `sub` may own.
fn scope_of(rt: &ResourceType, sub: Sub) -> Scope {
    match (rt.has_status, sub) {
        (false, _) => Scope::All,
        (true, Sub::Main) => Scope::Main,
        (true, Sub::Status) => Scope::Status,
    }
}

impl Store {
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            floor: 0,
            managed: HashMap::new(),
            owners: OwnerIndex::default(),
        }
    }

    /// The latest resource version handed out.
    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    fn key(rt: &ResourceType, ns: &str, name: &str) -> ObjKey {
        let ns = if rt.namespaced { ns } else { "" };
        (
            rt.group.clone(),
            rt.resource.clone(),
            ns.to_string(),
            name.to_string(),
        )
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.objects.get(&Self::key(rt, ns, name)).cloned()
    }

    /// Objects of one type, in one namespace or all, in (namespace, name) order.
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>) -> Vec<Arc<Value>> {
        // Keys sort by (group, resource, namespace, name): one namespace is one
        // contiguous range, so a namespaced list never walks other namespaces.
        let ns = ns.filter(|_| rt.namespaced);
        let lo = (
            rt.group.clone(),
            rt.resource.clone(),
            ns.unwrap_or_default().to_string(),
            String::new(),
        );
        self.objects
            .range(lo..)
            .take_while(|(k, _)| {
                k.0 == rt.group && k.1 == rt.resource && ns.is_none_or(|n| k.2 == n)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Events after `rv`, or `Err` when they have been compacted away.
    pub fn events_after(&self, rv: u64) -> Result<impl Iterator<Item = &StoredEvent>, ApiError> {
        if rv < self.floor {
            return Err(ApiError::gone(format!(
                "too old resource version: {rv} ({})",
                self.floor
            )));
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        Ok(self.history.range(start..))
    }

    /// Forgets all history: watches from any earlier resource version get 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.floor = self.rv;
    }

    /// Sets name, namespace, apiVersion and kind from the request; refuses mismatches.
    fn prepare_identity(
        rt: &ResourceType,
        ns: &str,
        url_name: Option<&str>,
        mut obj: Value,
        allow_generate: bool,
    ) -> Result<(Value, String), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        if let Some(kind) = obj.get("kind").and_then(Value::as_str)
            && kind != rt.kind
        {
            return Err(ApiError::bad_request(format!(
                "kind {kind:?} does not match the resource {} (kind {})",
                rt.resource, rt.kind
            )));
        }
        if rt.namespaced
            && let Some(body_ns) = meta_str(&obj, "namespace")
            && !body_ns.is_empty()
            && body_ns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let name = match (meta_str(&obj, "name"), url_name) {
            (Some(n), Some(u)) if !n.is_empty() && n != u => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({u})"
                )));
            }
            (_, Some(u)) => u.to_string(),
            (Some(n), None) if !n.is_empty() => n.to_string(),
            _ => match meta_str(&obj, "generateName") {
                Some(prefix) if allow_generate && !prefix.is_empty() => {
                    format!("{prefix}{}", random_suffix())
                }
                _ => {
                    return Err(ApiError::invalid(format!(
                        "{} is invalid: metadata.name: Required value: name or generateName is required",
                        rt.kind
                    )));
                }
            },
        };
        set_meta(&mut obj, "name", Value::String(name.clone()));
        if rt.namespaced {
            set_meta(&mut obj, "namespace", Value::String(ns.to_string()));
        } else {
            remove_meta(&mut obj, "namespace");
        }
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".into(), Value::String(rt.api_version()));
            o.insert("kind".into(), Value::String(rt.kind.clone()));
        }
        if rt.kind == "Secret" && rt.group.is_empty() {
            patch::normalize_secret(&mut obj);
        }
        Ok((obj, name))
    }

    /// Stores `new` unless it equals `old` (then nothing changes: no new resource
    /// version, no event), and records the event.
    fn commit(&mut self, key: ObjKey, old: Option<Arc<Value>>, mut new: Value) -> Arc<Value> {
        if let Some(old) = &old {
            let old_rv = meta_str(old, "resourceVersion")
                .unwrap_or_default()
                .to_string();
            set_meta(&mut new, "resourceVersion", Value::String(old_rv));
            if **old == new {
                return old.clone();
            }
        }
        self.rv += 1;
        set_meta(
            &mut new,
            "resourceVersion",
            Value::String(self.rv.to_string()),
        );
        let new = Arc::new(new);
        self.owners.stored(&key, old.as_deref(), &new);
        self.objects.insert(key.clone(), new.clone());
        let kind = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.push_event(&key, kind, new.clone(), old);
        new
    }

    fn push_event(
        &mut self,
        key: &ObjKey,
        kind: EventType,
        object: Arc<Value>,
        old: Option<Arc<Value>>,
    ) {
        self.history.push_back(StoredEvent {
            rv: self.rv,
            group: key.0.clone(),
            resource: key.1.clone(),
            namespace: key.2.clone(),
            kind,
            object,
            old,
            at: tokio::time::Instant::now(),
        });
        while self.history.len() > MAX_HISTORY {
            if let Some(e) = self.history.pop_front() {
                self.floor = e.rv;
            }
        }
    }

    /// Creates an object. `from_api` drops `.status` for types with a status
    /// subresource, as the real server does; direct test writes keep it.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        obj: Value,
        from_api: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let ownership = if from_api {
            Ownership::Update("unknown".into())
        } else {
            Ownership::Direct
        };
        self.create_by(rt, ns, obj, from_api, ownership)
    }

    /// [`create`](Self::create) attributed to `ownership`.
    pub fn create_by(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        obj: Value,
        from_api: bool,
        ownership: Ownership,
    ) -> Result<Arc<Value>, ApiError> {
        let (mut obj, name) = Self::prepare_identity(rt, ns, None, obj, true)?;
        let key = Self::key(rt, ns, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&rt.group, &rt.resource, &name));
        }
        if from_api
            && rt.has_status
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "managedFields",
            "generation",
            "uid",
        ] {
            remove_meta(&mut obj, f);
        }
        set_meta(&mut obj, "uid", Value::String(new_uid()));
        set_meta(&mut obj, "creationTimestamp", Value::String(now()));
        if rt.has_generation {
            set_meta(&mut obj, "generation", Value::from(1));
        }
        admission::normalize(rt, &mut obj);
        admission::apply_defaults(rt, &mut obj, None);
        admission::validate(rt, &obj, true)?;
        let managed = match ownership {
            Ownership::Direct => Managed::default(),
            Ownership::Update(manager) => {
                let mut m = Managed::default();
                m.update(None, &obj, &manager, scope_of(rt, Sub::Main), &now());
                m
            }
            Ownership::Applied(m) => m,
        };
        Self::render_managed(rt, &mut obj, &managed);
        self.managed.insert(key.clone(), managed);
        let stored = self.commit(key.clone(), None, obj);
        self.collect_if_orphaned(&key, &stored);
        Ok(stored)
    }

    fn render_managed(rt: &ResourceType, obj: &mut Value, managed: &Managed) {
        if managed.entries.is_empty() {
            remove_meta(obj, "managedFields");
        } else {
            set_meta(obj, "managedFields", managed.render(&rt.api_version()));
        }
    }

    /// Common tail of every update: keeps server-owned metadata, normalises,
    /// defaults and validates, records field ownership, bumps the generation on
    /// spec changes, finishes deletion when the last finalizer goes.
    fn finish_update(
        &mut self,
        rt: &ResourceType,
        key: ObjKey,
        old: Arc<Value>,
        mut new: Value,
        ownership: Ownership,
        sub: Sub,
    ) -> Result<Arc<Value>, ApiError> {
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            match old.get("metadata").and_then(|m| m.get(f)) {
                Some(v) => set_meta(&mut new, f, v.clone()),
                None => remove_meta(&mut new, f),
            }
        }
        remove_meta(&mut new, "managedFields");
        if rt.kind == "Secret" && rt.group.is_empty() {
            patch::normalize_secret(&mut new);
        }
        admission::normalize(rt, &mut new);
        admission::apply_defaults(rt, &mut new, Some(&old));
        admission::validate(rt, &new, false)?;
        let mut managed = match ownership {
            Ownership::Applied(m) => m,
            other => {
                let mut m = self.managed.get(&key).cloned().unwrap_or_default();
                if let Ownership::Update(manager) = other {
                    m.update(Some(&old), &new, &manager, scope_of(rt, sub), &now());
                }
                m
            }
        };
        managed.prune(&new);
        Self::render_managed(rt, &mut new, &managed);
        if rt.has_generation && spec_changed(&old, &new) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            set_meta(&mut new, "generation", Value::from(g + 1));
        }
        let terminating = new.pointer("/metadata/deletionTimestamp").is_some();
        self.managed.insert(key.clone(), managed);
        let stored = self.commit(key.clone(), Some(old), new);
        if terminating && !has_finalizers(&stored) {
            self.remove_now(&key, Propagation::Background);
        } else {
            self.collect_if_orphaned(&key, &stored);
        }
        Ok(stored)
    }

    fn check_rv(rt: &ResourceType, old: &Value, wanted: Option<&str>) -> Result<(), ApiError> {
        let current = meta_str(old, "resourceVersion").unwrap_or_default();
        match wanted {
            Some(w) if !w.is_empty() && w != current => Err(ApiError::conflict(
                &rt.group,
                &rt.resource,
                meta_str(old, "name").unwrap_or_default(),
            )),
            _ => Ok(()),
        }
    }

    /// PUT: replaces the object (or its status), with optimistic concurrency when the
    /// body carries a resourceVersion.
    #[cfg(test)]
    pub fn update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
        sub: Sub,
    ) -> Result<Arc<Value>, ApiError> {
        self.update_by(rt, ns, name, obj, sub, "unknown")
    }

    /// [`update`](Self::update) by field manager `manager`.
    pub fn update_by(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
        sub: Sub,
        manager: &str,
    ) -> Result<Arc<Value>, ApiError> {
        let key = Self::key(rt, ns, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.resource, name))?;
        let (obj, _) = Self::prepare_identity(rt, ns, Some(name), obj, false)?;
        Self::check_rv(rt, &old, meta_str(&obj, "resourceVersion"))?;
        let new = scope_to_subresource(rt, sub, &old, obj);
        self.finish_update(
            rt,
            key,
            old,
            new,
            Ownership::Update(manager.to_string()),
            sub,
        )
    }

    /// PATCH in any of its flavours, forced when it is an apply. Returns the
    /// object and whether it was created (server-side apply of an absent object).
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
        field_manager: &str,
        sub: Sub,
    ) -> Result<(Arc<Value>, bool), ApiError> {
        self.patch_with(rt, ns, name, kind, body, field_manager, true, sub)
    }

    /// PATCH; an apply that is not `force`d fails on conflicts with other managers.
    #[allow(clippy::too_many_arguments)]
    pub fn patch_with(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
        field_manager: &str,
        force: bool,
        sub: Sub,
    ) -> Result<(Arc<Value>, bool), ApiError> {
        let key = Self::key(rt, ns, name);
        let old = self.objects.get(&key).cloned();
        let scope = scope_of(rt, sub);
        let (old, candidate, ownership) = match kind {
            PatchKind::Apply => {
                let (mut applied, _) =
                    Self::prepare_identity(rt, ns, Some(name), body.clone(), false)?;
                admission::normalize(rt, &mut applied);
                let mut managed = old
                    .as_ref()
                    .and_then(|_| self.managed.get(&key).cloned())
                    .unwrap_or_default();
                let base = old
                    .as_deref()
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({}));
                let merged = managed
                    .apply(&base, &applied, field_manager, scope, force, &now())
                    .map_err(|c| ApiError::apply_conflict(&rt.group, &rt.resource, name, &c))?;
                let Some(old) = old else {
                    if sub == Sub::Status {
                        return Err(ApiError::not_found(&rt.group, &rt.resource, name));
                    }
                    let mut merged = merged;
                    for f in ["apiVersion", "kind"] {
                        if let (Some(m), Some(v)) = (merged.as_object_mut(), applied.get(f)) {
                            m.insert(f.to_string(), v.clone());
                        }
                    }
                    if let (Some(m), Some(v)) = (
                        merged.get_mut("metadata").and_then(Value::as_object_mut),
                        applied.pointer("/metadata/name"),
                    ) {
                        m.insert("name".into(), v.clone());
                    }
                    let created =
                        self.create_by(rt, ns, merged, true, Ownership::Applied(managed))?;
                    return Ok((created, true));
                };
                Self::check_rv(rt, &old, meta_str(&applied, "resourceVersion"))?;
                (old, merged, Ownership::Applied(managed))
            }
            PatchKind::Merge | PatchKind::Strategic => {
                let old = old.ok_or_else(|| ApiError::not_found(&rt.group, &rt.resource, name))?;
                Self::check_rv(rt, &old, meta_str(body, "resourceVersion"))?;
                let candidate = patch::merge_patch(&old, body);
                (old, candidate, Ownership::Update(field_manager.to_string()))
            }
            PatchKind::Json => {
                let old = old.ok_or_else(|| ApiError::not_found(&rt.group, &rt.resource, name))?;
                let candidate = patch::json_patch(&old, body)?;
                Self::check_rv(rt, &old, meta_str(&candidate, "resourceVersion"))?;
                (old, candidate, Ownership::Update(field_manager.to_string()))
            }
        };
        let (candidate, _) =
            Self::prepare_identity(rt, ns, Some(name), candidate, false).map_err(|e| {
                ApiError::invalid(format!("the patched object is invalid: {}", e.message))
            })?;
        let new = scope_to_subresource(rt, sub, &old, candidate);
        Ok((
            self.finish_update(rt, key, old, new, ownership, sub)?,
            false,
        ))
    }

    /// Direct test write: creates or replaces the whole object, status included, without
    /// resourceVersion checks.
    pub fn put(&mut self, rt: &ResourceType, obj: Value) -> Result<Arc<Value>, ApiError> {
        let ns = Self::object_namespace(rt, &obj);
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let key = Self::key(rt, &ns, &name);
        match self.objects.get(&key).cloned() {
            None => self.create(rt, &ns, obj, false),
            Some(old) => {
                let (obj, _) = Self::prepare_identity(rt, &ns, Some(&name), obj, false)?;
                self.finish_update(rt, key, old, obj, Ownership::Direct, Sub::Main)
            }
        }
    }

    /// Direct test write: read-modify-write under the store lock.
    pub fn modify(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Arc<Value>, ApiError> {
        let key = Self::key(rt, ns, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.resource, name))?;
        let mut new = (*old).clone();
        f(&mut new);
        let (new, _) = Self::prepare_identity(rt, ns, Some(name), new, false)?;
        self.finish_update(rt, key, old, new, Ownership::Direct, Sub::Main)
    }

    /// The namespace a direct write goes to: the object's, or `default`.
    pub fn object_namespace(rt: &ResourceType, obj: &Value) -> String {
        if !rt.namespaced {
            return String::new();
        }
        meta_str(obj, "namespace")
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_string()
    }

    /// DELETE: marks for deletion while finalizers remain, else removes the object and
    /// garbage-collects its dependents.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Deleted, ApiError> {
        let key = Self::key(rt, ns, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.resource, name))?;
        Self::check_rv(rt, &old, opts.precondition_rv.as_deref())?;
        if let Some(uid) = &opts.precondition_uid
            && meta_str(&old, "uid") != Some(uid.as_str())
        {
            return Err(ApiError::conflict(&rt.group, &rt.resource, name));
        }
        Ok(self.delete_key(&key, opts.propagation))
    }

    fn delete_key(&mut self, key: &ObjKey, propagation: Propagation) -> Deleted {
        let Some(old) = self.objects.get(key).cloned() else {
            return Deleted::Gone(Arc::new(Value::Null));
        };
        if has_finalizers(&old) {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Deleted::Pending(old);
            }
            let mut new = (*old).clone();
            set_meta(&mut new, "deletionTimestamp", Value::String(now()));
            return Deleted::Pending(self.commit(key.clone(), Some(old), new));
        }
        Deleted::Gone(self.remove_now(key, propagation).unwrap_or(old))
    }

    /// Removes the object, records DELETED, and collects dependents.
    fn remove_now(&mut self, key: &ObjKey, propagation: Propagation) -> Option<Arc<Value>> {
        let old = self.objects.remove(key)?;
        self.owners.removed(key, &old);
        self.rv += 1;
        let mut gone = (*old).clone();
        set_meta(
            &mut gone,
            "resourceVersion",
            Value::String(self.rv.to_string()),
        );
        let gone = Arc::new(gone);
        self.push_event(key, EventType::Deleted, gone.clone(), Some(old.clone()));
        self.managed.remove(key);
        if let Some(uid) = meta_str(&old, "uid") {
            self.collect_dependents(uid, propagation);
        }
        if key.0.is_empty() && key.1 == "namespaces" {
            let inside: Vec<ObjKey> = self
                .objects
                .keys()
                .filter(|k| k.2 == key.3)
                .cloned()
                .collect();
            for k in inside {
                self.delete_key(&k, Propagation::Background);
            }
        }
        Some(gone)
    }

    /// Owner-reference garbage collection. Real GC runs asynchronously and owner
    /// deletion may wait for dependents (foreground); here dependents go at once in
    /// both modes. A dependent with another owner that still exists is kept.
    fn collect_dependents(&mut self, uid: &str, propagation: Propagation) {
        let dependents: Vec<(ObjKey, Arc<Value>)> = self
            .owners
            .dependents_of(uid)
            .into_iter()
            .filter_map(|k| self.objects.get(&k).cloned().map(|v| (k, v)))
            .collect();
        for (key, obj) in dependents {
            if propagation == Propagation::Orphan {
                let mut new = (*obj).clone();
                if let Some(refs) = new
                    .pointer_mut("/metadata/ownerReferences")
                    .and_then(Value::as_array_mut)
                {
                    refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
                }
                self.commit(key, Some(obj), new);
                continue;
            }
            let other_owner_alive = owner_uids(&obj)
                .iter()
                .filter(|u| **u != uid)
                .any(|u| self.uid_exists(u));
            if !other_owner_alive {
                self.delete_key(&key, Propagation::Background);
            }
        }
    }

    /// Real garbage collection also deletes a dependent none of whose owners
    /// exists: one a controller created from a stale read, after its owner
    /// was deleted (a ReplicaSet's pod for a Deployment just collected, an
    /// operator's Deployment for a MacpAuth just deleted). Left alone, such an
    /// object would outlive its owner for good, which no real cluster does;
    /// here it goes at once, through its finalizers like any deletion.
    fn collect_if_orphaned(&mut self, key: &ObjKey, obj: &Value) {
        let owners = owner_uids(obj);
        let orphaned = !owners.is_empty() && !owners.iter().any(|u| self.uid_exists(u));
        if orphaned && obj.pointer("/metadata/deletionTimestamp").is_none() {
            self.delete_key(key, Propagation::Background);
        }
    }

    fn uid_exists(&self, uid: &str) -> bool {
        self.owners.uid_exists(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rt(store: &Store, group: &str, resource: &str) -> ResourceType {
        store
            .registry
            .find_any_version(group, resource)
            .unwrap()
            .clone()
    }

    fn rv_of(v: &Value) -> u64 {
        meta_str(v, "resourceVersion").unwrap().parse().unwrap()
    }

    #[test]
    fn create_sets_server_fields_and_refuses_duplicates() {
        let mut s = Store::default();
        let cm = rt(&s, "", "configmaps");
        let o = s
            .create(
                &cm,
                "ns",
                json!({"metadata": {"name": "a"}, "data": {"k": "v"}}),
                true,
            )
            .unwrap();
        assert_eq!(o["kind"], "ConfigMap");
        assert_eq!(o["apiVersion"], "v1");
        assert_eq!(o["metadata"]["namespace"], "ns");
        assert_eq!(meta_str(&o, "uid").unwrap().len(), 36);
        assert!(o.pointer("/metadata/generation").is_none());
        assert_eq!(rv_of(&o), 1);
        let e = s
            .create(&cm, "ns", json!({"metadata": {"name": "a"}}), true)
            .unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
        let g = s
            .create(&cm, "ns", json!({"metadata": {"generateName": "x-"}}), true)
            .unwrap();
        assert!(meta_str(&g, "name").unwrap().starts_with("x-"));
        let e = s
            .create(&cm, "ns", json!({"metadata": {}}), true)
            .unwrap_err();
        assert_eq!(e.code, 422);
        let e = s
            .create(
                &cm,
                "ns",
                json!({"metadata": {"name": "b", "namespace": "other"}}),
                true,
            )
            .unwrap_err();
        assert_eq!(e.code, 400);
    }

    #[test]
    fn status_subresource_isolation_and_generation() {
        let mut s = Store::default();
        let d = rt(&s, "apps", "deployments");
        let o = s
            .create(
                &d,
                "ns",
                json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}, "status": {"x": 1}}),
                true,
            )
            .unwrap();
        assert!(o.get("status").is_none(), "create drops status");
        assert_eq!(o["metadata"]["generation"], 1);
        let mut upd = (*o).clone();
        upd["status"] = json!({"replicas": 5});
        upd["spec"]["replicas"] = json!(2);
        let o2 = s.update(&d, "ns", "d", upd, Sub::Main).unwrap();
        assert!(o2.get("status").is_none());
        assert_eq!(o2["metadata"]["generation"], 2);
        let st = s
            .patch(
                &d,
                "ns",
                "d",
                PatchKind::Merge,
                &json!({"spec": {"replicas": 9}, "status": {"replicas": 2}}),
                "m",
                Sub::Status,
            )
            .unwrap()
            .0;
        assert_eq!(st["status"]["replicas"], 2);
        assert_eq!(st["spec"]["replicas"], 2);
        assert_eq!(
            st["metadata"]["generation"], 2,
            "status writes keep the generation"
        );
        let meta = s
            .patch(
                &d,
                "ns",
                "d",
                PatchKind::Merge,
                &json!({"metadata": {"labels": {"a": "b"}}}),
                "m",
                Sub::Main,
            )
            .unwrap()
            .0;
        assert_eq!(
            meta["metadata"]["generation"], 2,
            "metadata writes keep the generation"
        );
    }

    #[test]
    fn optimistic_concurrency() {
        let mut s = Store::default();
        let cm = rt(&s, "", "configmaps");
        let o = s
            .create(&cm, "ns", json!({"metadata": {"name": "a"}}), true)
            .unwrap();
        let mut stale = (*o).clone();
        s.patch(
            &cm,
            "ns",
            "a",
            PatchKind::Merge,
            &json!({"data": {"x": "1"}}),
            "m",
            Sub::Main,
        )
        .unwrap();
        stale["data"] = json!({"y": "2"});
        let e = s
            .update(&cm, "ns", "a", stale.clone(), Sub::Main)
            .unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
        remove_meta(&mut stale, "resourceVersion");
        let u = s.update(&cm, "ns", "a", stale, Sub::Main).unwrap();
        assert_eq!(u["data"], json!({"y": "2"}));
        let e = s
            .patch(
                &cm,
                "ns",
                "a",
                PatchKind::Merge,
                &json!({"metadata": {"resourceVersion": "1"}}),
                "m",
                Sub::Main,
            )
            .unwrap_err();
        assert_eq!(e.code, 409);
    }

    #[test]
    fn noop_writes_keep_resource_version_and_emit_nothing() {
        let mut s = Store::default();
        let sec = rt(&s, "", "secrets");
        let apply = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"a": "b"}},
                           "stringData": {"k": "v"}});
        let (o, created) = s
            .patch(&sec, "ns", "s", PatchKind::Apply, &apply, "op", Sub::Main)
            .unwrap();
        assert!(created);
        assert_eq!(o["data"]["k"], "dg==");
        assert!(o.get("stringData").is_none());
        let before = s.current_rv();
        let (o2, created) = s
            .patch(&sec, "ns", "s", PatchKind::Apply, &apply, "op", Sub::Main)
            .unwrap();
        assert!(!created);
        assert_eq!(s.current_rv(), before);
        assert_eq!(o2, o);
        assert_eq!(s.events_after(before).unwrap().count(), 0);
        s.patch(
            &sec,
            "ns",
            "s",
            PatchKind::Merge,
            &json!({"data": {"k": "dg=="}}),
            "m",
            Sub::Main,
        )
        .unwrap();
        assert_eq!(s.current_rv(), before);
    }

    #[test]
    fn delete_with_gc_orphan_and_finalizers() {
        let mut s = Store::default();
        let d = rt(&s, "apps", "deployments");
        let p = rt(&s, "", "pods");
        let cm = rt(&s, "", "configmaps");
        let owner = s
            .create(&cm, "ns", json!({"metadata": {"name": "owner"}}), true)
            .unwrap();
        let uid = meta_str(&owner, "uid").unwrap().to_string();
        let refs = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]);
        let dep = s
            .create(
                &d,
                "ns",
                json!({"metadata": {"name": "d", "ownerReferences": refs}}),
                true,
            )
            .unwrap();
        let dep_uid = meta_str(&dep, "uid").unwrap().to_string();
        let pod_refs =
            json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "d", "uid": dep_uid}]);
        s.create(
            &p,
            "ns",
            json!({"metadata": {"name": "p", "ownerReferences": pod_refs}}),
            true,
        )
        .unwrap();
        s.create(
            &p,
            "ns",
            json!({"metadata": {"name": "fin", "finalizers": ["x"], "ownerReferences": pod_refs}}),
            true,
        )
        .unwrap();
        s.delete(&cm, "ns", "owner", &DeleteOpts::default())
            .unwrap();
        assert!(s.get(&d, "ns", "d").is_none(), "dependent collected");
        assert!(s.get(&p, "ns", "p").is_none(), "cascades");
        let fin = s.get(&p, "ns", "fin").unwrap();
        assert!(
            fin.pointer("/metadata/deletionTimestamp").is_some(),
            "finalizer holds it"
        );
        s.patch(
            &p,
            "ns",
            "fin",
            PatchKind::Merge,
            &json!({"metadata": {"finalizers": null}}),
            "m",
            Sub::Main,
        )
        .unwrap();
        assert!(
            s.get(&p, "ns", "fin").is_none(),
            "gone once finalizers are cleared"
        );

        let owner = s
            .create(&cm, "ns", json!({"metadata": {"name": "o2"}}), true)
            .unwrap();
        let uid = meta_str(&owner, "uid").unwrap().to_string();
        s.create(
            &cm,
            "ns",
            json!({"metadata": {"name": "kept", "ownerReferences": [{"uid": uid}]}}),
            true,
        )
        .unwrap();
        let opts = DeleteOpts {
            propagation: Propagation::Orphan,
            ..Default::default()
        };
        s.delete(&cm, "ns", "o2", &opts).unwrap();
        let kept = s.get(&cm, "ns", "kept").unwrap();
        assert_eq!(kept["metadata"]["ownerReferences"], json!([]));
        assert_eq!(s.delete(&cm, "ns", "o2", &opts).unwrap_err().code, 404);
    }

    #[test]
    fn a_dependent_created_after_its_owner_is_gone_is_collected() {
        let mut s = Store::default();
        let d = rt(&s, "apps", "deployments");
        let p = rt(&s, "", "pods");
        let dep = s
            .create(&d, "ns", json!({"metadata": {"name": "d"}}), true)
            .unwrap();
        let dep_uid = meta_str(&dep, "uid").unwrap().to_string();
        let refs =
            json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "d", "uid": dep_uid}]);
        s.delete(&d, "ns", "d", &DeleteOpts::default()).unwrap();
        // A controller that read the Deployment before its deletion creates
        // a pod for it: the API server accepts it, the collector removes it.
        let created = s.create(
            &p,
            "ns",
            json!({"metadata": {"name": "late", "ownerReferences": refs}}),
            true,
        );
        assert!(created.is_ok(), "the create itself succeeds");
        assert!(s.get(&p, "ns", "late").is_none(), "collected");
        // With a finalizer it is marked for deletion, as any deletion would.
        s.create(
            &p,
            "ns",
            json!({"metadata": {"name": "fin", "finalizers": ["x"], "ownerReferences": refs}}),
            true,
        )
        .unwrap();
        let fin = s.get(&p, "ns", "fin").unwrap();
        assert!(fin.pointer("/metadata/deletionTimestamp").is_some());
        // An owner that exists keeps its dependent; so does one of two owners.
        let live = s
            .create(&d, "ns", json!({"metadata": {"name": "live"}}), true)
            .unwrap();
        let live_uid = meta_str(&live, "uid").unwrap().to_string();
        s.create(
            &p,
            "ns",
            json!({"metadata": {"name": "two", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d", "uid": dep_uid},
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "live", "uid": live_uid},
            ]}}),
            true,
        )
        .unwrap();
        assert!(s.get(&p, "ns", "two").is_some());
    }

    #[test]
    fn events_and_compaction() {
        let mut s = Store::default();
        let cm = rt(&s, "", "configmaps");
        s.create(&cm, "ns", json!({"metadata": {"name": "a"}}), true)
            .unwrap();
        s.patch(
            &cm,
            "ns",
            "a",
            PatchKind::Merge,
            &json!({"data": {"x": "1"}}),
            "m",
            Sub::Main,
        )
        .unwrap();
        s.delete(&cm, "ns", "a", &DeleteOpts::default()).unwrap();
        let kinds: Vec<_> = s.events_after(0).unwrap().map(|e| (e.rv, e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (1, EventType::Added),
                (2, EventType::Modified),
                (3, EventType::Deleted)
            ]
        );
        assert_eq!(s.events_after(2).unwrap().count(), 1);
        s.compact();
        assert_eq!(s.events_after(2).err().map(|e| e.code), Some(410));
        assert_eq!(s.events_after(3).unwrap().count(), 0);
    }

    #[test]
    fn list_scopes_by_namespace() {
        let mut s = Store::default();
        let cm = rt(&s, "", "configmaps");
        let sec = rt(&s, "", "secrets");
        for (ns, n) in [("a", "1"), ("b", "2"), ("a", "3")] {
            s.create(&cm, ns, json!({"metadata": {"name": n}}), true)
                .unwrap();
        }
        s.create(&sec, "a", json!({"metadata": {"name": "s"}}), true)
            .unwrap();
        assert_eq!(s.list(&cm, Some("a")).len(), 2);
        assert_eq!(s.list(&cm, None).len(), 3);
        assert_eq!(s.list(&sec, None).len(), 1);
    }
}
