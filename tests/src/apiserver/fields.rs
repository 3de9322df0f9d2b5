//! Field ownership for server-side apply: field paths, the set of fields an
//! object sets, merging an apply into an object, and `managedFields`.
//!
//! Modelled on structured-merge-diff, with a small built-in schema instead of
//! the OpenAPI one: every JSON object is a granular map (each member owned on
//! its own), the lists in [`list_keys`] are keyed lists (each item owned on its
//! own, matched by its key fields), `metadata.finalizers` is a set, and every
//! other list is atomic (owned and replaced whole).
//!
//! Rules implemented (as the real server does):
//! - an apply sets the fields it names, merging maps and keyed lists into the
//!   live object; a field the manager applied before and omits now is removed
//!   only when no other manager owns it (or, for a map member or list item,
//!   anything inside it);
//! - a field another manager owns with a different value is a conflict (409)
//!   unless the apply is forced, which moves the ownership; equal values are
//!   shared;
//! - any other write (create, update, merge/JSON patch) makes its manager the
//!   owner of every field it changed and takes those fields from the others;
//!   a field that disappears is owned by nobody.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pe {
    /// A member of an object (`f:<name>`).
    Field(String),
    /// An item of a keyed list, by its key fields as compact JSON (`k:{...}`).
    Key(String),
    /// An item of a set-like list of scalars (`v:<json>`).
    Value(String),
}

pub type Path = Vec<Pe>;
pub type FieldSet = BTreeSet<Path>;

// Twin of the operator's `diff::list_keys` on purpose: the stand-in for the real server must not take the operator's word for the keys.
/// The key fields of the items of the list held in member `field`, or `None`
/// for an atomic list. `item` tells container ports from service ports.
pub fn list_keys(field: &str, item: &Value) -> Option<&'static [&'static str]> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => &["name"],
        "ports" if item.get("containerPort").is_some() => &["containerPort", "protocol"],
        "ports" => &["port", "protocol"],
        "volumeMounts" => &["mountPath"],
        // The real schema's list-map keys (x-kubernetes-list-map-keys).
        "topologySpreadConstraints" => &["topologyKey", "whenUnsatisfiable"],
        "ownerReferences" => &["uid"],
        "conditions" => &["type"],
        "hostAliases" => &["ip"],
        _ => return None,
    })
}

/// How a set member is named in a path (`v:<json>`).
fn set_member(v: &Value) -> String {
    v.to_string()
}

fn is_set(field: &str) -> bool {
    field == "finalizers"
}

// Twin of the operator's `diff::item_key` on purpose: the stand-in for the real server must not take the operator's word for the encoding.
/// The key of a keyed-list item as the `k:` JSON (key fields in name order).
pub fn item_key(keys: &[&str], item: &Value) -> String {
    let mut m = BTreeMap::new();
    for k in keys {
        let v = item.get(*k).cloned().unwrap_or(Value::Null);
        // The protocol of a port defaults to TCP: an omitted one is the same item.
        let v = if *k == "protocol" && v.is_null() {
            Value::String("TCP".into())
        } else {
            v
        };
        m.insert(k.to_string(), v);
    }
    serde_json::to_string(&m).unwrap_or_default()
}

/// Members of an object that no manager owns: identity and server-set metadata.
fn unowned(path: &[Pe], name: &str) -> bool {
    match path {
        [] => matches!(name, "apiVersion" | "kind"),
        [Pe::Field(m)] if m == "metadata" => matches!(
            name,
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "managedFields"
                | "generateName"
                | "selfLink"
        ),
        _ => false,
    }
}

/// Which part of an object a write may own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything (types without a status subresource).
    All,
    /// Everything but `.status`.
    Main,
    /// Only `.status`.
    Status,
}

impl Scope {
    fn admits(self, top: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Main => top != "status",
            Scope::Status => top == "status",
        }
    }
}

/// The fields `obj` sets: every leaf, every keyed-list item and set member.
pub fn field_set(obj: &Value, scope: Scope) -> FieldSet {
    let mut out = FieldSet::new();
    if let Some(m) = obj.as_object() {
        for (k, v) in m {
            if !unowned(&[], k) && scope.admits(k) {
                walk(v, vec![Pe::Field(k.clone())], k, &mut out);
            }
        }
    }
    out
}

fn walk(v: &Value, path: Path, field: &str, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            let mut any = false;
            for (k, child) in m {
                if unowned(&path, k) {
                    continue;
                }
                any = true;
                let mut p = path.clone();
                p.push(Pe::Field(k.clone()));
                walk(child, p, k, out);
            }
            // metadata with only identity in it sets nothing.
            if !any && path != [Pe::Field("metadata".into())] {
                out.insert(path);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            if is_set(field) {
                for item in items {
                    let mut p = path.clone();
                    p.push(Pe::Value(item.to_string()));
                    out.insert(p);
                }
                return;
            }
            match list_keys(field, &items[0]) {
                Some(_) if items.iter().all(Value::is_object) => {
                    for item in items {
                        let keys = list_keys(field, item).unwrap_or(&[]);
                        let mut p = path.clone();
                        p.push(Pe::Key(item_key(keys, item)));
                        out.insert(p.clone());
                        walk_item(item, p, out);
                    }
                }
                _ => {
                    out.insert(path);
                }
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

fn walk_item(item: &Value, path: Path, out: &mut FieldSet) {
    if let Some(m) = item.as_object() {
        for (k, child) in m {
            let mut p = path.clone();
            p.push(Pe::Field(k.clone()));
            walk(child, p, k, out);
        }
    }
}

fn find_item<'a>(items: &'a [Value], field: &str, key: &str) -> Option<(usize, &'a Value)> {
    items
        .iter()
        .enumerate()
        .find(|(_, it)| list_keys(field, it).is_some_and(|ks| item_key(ks, it) == key))
}

/// The value at `path`, if present.
pub fn get<'a>(obj: &'a Value, path: &[Pe]) -> Option<&'a Value> {
    let mut cur = obj;
    let mut field = "";
    for pe in path {
        cur = match pe {
            Pe::Field(f) => {
                field = f;
                cur.get(f)?
            }
            Pe::Key(k) => find_item(cur.as_array()?, field, k)?.1,
            Pe::Value(v) => cur.as_array()?.iter().find(|it| it.to_string() == *v)?,
        };
    }
    Some(cur)
}

/// Removes the member, item or set value at `path`; then removes the objects
/// and lists on the way that it left empty (an apply that stops setting the
/// last label leaves no empty `labels`). Returns whether anything was removed.
pub fn remove(obj: &mut Value, path: &[Pe]) -> bool {
    let Some((last, parent_path)) = path.split_last() else {
        return false;
    };
    let field = parent_path
        .iter()
        .rev()
        .find_map(|pe| match pe {
            Pe::Field(f) => Some(f.as_str()),
            _ => None,
        })
        .unwrap_or_default();
    // A key field goes with its item, never alone (the item would be lost).
    if let (Pe::Field(f), Some(Pe::Key(k))) = (last, parent_path.last())
        && serde_json::from_str::<Map<String, Value>>(k).is_ok_and(|m| m.contains_key(f))
    {
        return false;
    }
    let Some(parent) = get_mut(obj, parent_path) else {
        return false;
    };
    let removed = match (last, parent) {
        (Pe::Field(f), Value::Object(m)) => m.remove(f).is_some(),
        (Pe::Key(k), Value::Array(items)) => {
            let before = items.len();
            items.retain(|it| list_keys(field, it).is_none_or(|ks| item_key(ks, it) != *k));
            items.len() != before
        }
        (Pe::Value(v), Value::Array(items)) => {
            let before = items.len();
            items.retain(|it| set_member(it) != *v);
            items.len() != before
        }
        _ => false,
    };
    if removed && parent_path.len() > 1 {
        let empty = get(obj, parent_path).is_some_and(|p| match p {
            Value::Object(m) => m.is_empty(),
            Value::Array(a) => a.is_empty(),
            _ => false,
        });
        if empty {
            remove(obj, parent_path);
        }
    }
    removed
}

fn get_mut<'a>(obj: &'a mut Value, path: &[Pe]) -> Option<&'a mut Value> {
    let mut cur = obj;
    let mut field = String::new();
    for pe in path {
        cur = match pe {
            Pe::Field(f) => {
                field = f.clone();
                cur.get_mut(f.as_str())?
            }
            Pe::Key(k) => {
                let items = cur.as_array_mut()?;
                let idx = find_item(items, &field, k)?.0;
                &mut items[idx]
            }
            Pe::Value(v) => {
                let items = cur.as_array_mut()?;
                items.iter_mut().find(|it| it.to_string() == *v)?
            }
        };
    }
    Some(cur)
}

/// Merges an applied configuration into the live object: objects member by
/// member, keyed lists item by item (new items appended), sets by value,
/// everything else replaced.
pub fn merge(live: &mut Value, applied: &Value, field: &str) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, av) in a {
                match l.get_mut(k) {
                    Some(lv) if !av.is_null() => merge(lv, av, k),
                    _ => {
                        l.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(a)) if is_set(field) => {
            for av in a {
                if !l.contains(av) {
                    l.push(av.clone());
                }
            }
        }
        (Value::Array(l), Value::Array(a))
            if a.first().is_some_and(|f| list_keys(field, f).is_some())
                && a.iter().chain(l.iter()).all(Value::is_object) =>
        {
            for av in a {
                let keys = list_keys(field, av).unwrap_or(&[]);
                let key = item_key(keys, av);
                match find_item(l, field, &key).map(|(i, _)| i) {
                    Some(i) => merge(&mut l[i], av, ""),
                    None => l.push(av.clone()),
                }
            }
        }
        (l, a) => *l = a.clone(),
    }
}

/// `managedFields[].operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Apply,
    Update,
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    /// `""` or `"status"`.
    pub subresource: String,
    pub fields: FieldSet,
    pub time: String,
}

/// Who owns what in one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Managed {
    pub entries: Vec<Entry>,
}

/// A field two managers want with different values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub path: String,
}

/// `.spec.template.spec.containers[name="x"].image`, for conflict messages.
pub fn render_path(path: &[Pe]) -> String {
    let mut s = String::new();
    for pe in path {
        match pe {
            Pe::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Pe::Key(k) => {
                let m: BTreeMap<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let inner: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                s.push_str(&format!("[{}]", inner.join(",")));
            }
            Pe::Value(v) => s.push_str(&format!("[={v}]")),
        }
    }
    s
}

fn is_prefix(prefix: &[Pe], path: &[Pe]) -> bool {
    path.len() >= prefix.len() && path[..prefix.len()] == *prefix
}

impl Managed {
    fn entry_mut(&mut self, manager: &str, op: Operation, sub: &str, now: &str) -> &mut Entry {
        let idx = match self
            .entries
            .iter()
            .position(|e| e.manager == manager && e.operation == op && e.subresource == sub)
        {
            Some(i) => i,
            None => {
                self.entries.push(Entry {
                    manager: manager.to_string(),
                    operation: op,
                    subresource: sub.to_string(),
                    fields: FieldSet::new(),
                    time: now.to_string(),
                });
                self.entries.len() - 1
            }
        };
        &mut self.entries[idx]
    }

    fn others_own(&self, me: &(String, Operation, String), path: &[Pe]) -> bool {
        self.entries
            .iter()
            .filter(|e| (e.manager.clone(), e.operation, e.subresource.clone()) != *me)
            .any(|e| e.fields.iter().any(|p| is_prefix(path, p)))
    }

    /// Server-side apply of `applied` (identity already set) by `manager` onto
    /// `live`. Returns the new object or the conflicts.
    pub fn apply(
        &mut self,
        live: &Value,
        applied: &Value,
        manager: &str,
        scope: Scope,
        force: bool,
        now: &str,
    ) -> Result<Value, Vec<Conflict>> {
        let sub = if scope == Scope::Status { "status" } else { "" };
        let me = (manager.to_string(), Operation::Apply, sub.to_string());
        let wanted = field_set(applied, scope);
        // Conflicts: leaves another manager owns with a different value.
        let mut conflicts = Vec::new();
        let mut taken: Vec<(usize, Path)> = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if (e.manager.clone(), e.operation, e.subresource.clone()) == me {
                continue;
            }
            for p in e.fields.intersection(&wanted) {
                if matches!(p.last(), Some(Pe::Key(_))) {
                    continue;
                }
                if get(live, p) != get(applied, p) {
                    if force || e.manager == manager {
                        taken.push((i, p.clone()));
                    } else {
                        conflicts.push(Conflict {
                            manager: e.manager.clone(),
                            path: render_path(p),
                        });
                    }
                }
            }
        }
        if !conflicts.is_empty() {
            return Err(conflicts);
        }
        for (i, p) in taken {
            self.entries[i].fields.remove(&p);
        }
        let before: FieldSet = self
            .entries
            .iter()
            .find(|e| (e.manager.clone(), e.operation, e.subresource.clone()) == me)
            .map(|e| e.fields.clone())
            .unwrap_or_default();
        let mut out = live.clone();
        // Deepest first, so an item is judged after the fields inside it.
        let mut dropped: Vec<&Path> = before.difference(&wanted).collect();
        dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in dropped {
            if !self.others_own(&me, p) && !wanted.iter().any(|w| is_prefix(p, w)) {
                remove(&mut out, p);
            }
        }
        let mut scoped = applied.clone();
        if let Some(m) = scoped.as_object_mut() {
            m.retain(|k, _| scope.admits(k) && !unowned(&[], k));
        }
        merge(&mut out, &scoped, "");
        let entry = self.entry_mut(manager, Operation::Apply, sub, now);
        if entry.fields != wanted {
            entry.fields = wanted;
            entry.time = now.to_string();
        }
        self.prune(&out);
        Ok(out)
    }

    /// Records a non-apply write from `old` (`None` on create) to `new` by `manager`.
    pub fn update(
        &mut self,
        old: Option<&Value>,
        new: &Value,
        manager: &str,
        scope: Scope,
        now: &str,
    ) {
        let sub = if scope == Scope::Status { "status" } else { "" };
        let after = field_set(new, scope);
        let changed: FieldSet = after
            .iter()
            .filter(|p| old.is_none_or(|o| get(o, p) != get(new, p)))
            .cloned()
            .collect();
        if !changed.is_empty() {
            for e in &mut self.entries {
                if e.manager != manager || e.operation != Operation::Update || e.subresource != sub
                {
                    e.fields
                        .retain(|p| !changed.contains(p) || matches!(p.last(), Some(Pe::Key(_))));
                }
            }
            let entry = self.entry_mut(manager, Operation::Update, sub, now);
            entry.fields.extend(changed);
            entry.time = now.to_string();
        }
        self.prune(new);
    }

    /// Forgets fields the object no longer has and entries left empty.
    pub fn prune(&mut self, obj: &Value) {
        for e in &mut self.entries {
            e.fields.retain(|p| get(obj, p).is_some());
        }
        self.entries.retain(|e| !e.fields.is_empty());
    }

    /// Whether `manager` owns `path` (any operation).
    pub fn owns(&self, manager: &str, path: &[Pe]) -> bool {
        self.entries
            .iter()
            .any(|e| e.manager == manager && e.fields.contains(path))
    }

    /// `metadata.managedFields` as the real server renders it (`FieldsV1`).
    pub fn render(&self, api_version: &str) -> Value {
        let entries: Vec<Value> = self
            .entries
            .iter()
            .map(|e| {
                let mut v = json!({
                    "manager": e.manager,
                    "operation": match e.operation { Operation::Apply => "Apply", Operation::Update => "Update" },
                    "apiVersion": api_version,
                    "time": e.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1(&e.fields),
                });
                if !e.subresource.is_empty() {
                    v["subresource"] = Value::String(e.subresource.clone());
                }
                v
            })
            .collect();
        Value::Array(entries)
    }
}

fn pe_name(pe: &Pe) -> String {
    match pe {
        Pe::Field(f) => format!("f:{f}"),
        Pe::Key(k) => format!("k:{k}"),
        Pe::Value(v) => format!("v:{v}"),
    }
}

/// The `FieldsV1` tree of a field set: `{"f:spec": {"f:replicas": {}}}`, with
/// `"."` marking a list item or map member owned as a whole.
pub fn fields_v1(set: &FieldSet) -> Value {
    let mut root = Value::Object(Map::new());
    for path in set {
        let mut node = &mut root;
        for pe in path {
            node = super::patch::ensure_object(node, &pe_name(pe));
        }
        if matches!(path.last(), Some(Pe::Key(_)))
            && let Some(m) = node.as_object_mut()
        {
            m.insert(".".into(), json!({}));
        }
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Pe {
        Pe::Field(s.into())
    }

    fn deployment(env: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "1"}},
               "spec": {"replicas": 2, "template": {"spec": {"containers": [
                   {"name": "main", "image": "i:1", "env": env}]}}}})
    }

    #[test]
    fn field_sets_see_keyed_items_and_atomic_lists() {
        let set = field_set(
            &deployment(json!([{"name": "A", "value": "1"}])),
            Scope::Main,
        );
        let c = vec![
            f("spec"),
            f("template"),
            f("spec"),
            f("containers"),
            Pe::Key(r#"{"name":"main"}"#.into()),
        ];
        assert!(set.contains(&c));
        let mut env_a = c.clone();
        env_a.extend([f("env"), Pe::Key(r#"{"name":"A"}"#.into()), f("value")]);
        assert!(set.contains(&env_a));
        assert!(set.contains(&vec![f("metadata"), f("labels"), f("a")]));
        assert!(!set.iter().any(|p| p.contains(&f("name")) && p.len() == 2));
        let args = field_set(&json!({"spec": {"args": ["a", "b"]}}), Scope::All);
        assert_eq!(args, FieldSet::from([vec![f("spec"), f("args")]]));
        assert_eq!(
            fields_v1(&FieldSet::from([c]))["f:spec"]["f:template"]["f:spec"]["f:containers"][r#"k:{"name":"main"}"#],
            json!({".": {}})
        );
    }

    #[test]
    fn another_managers_list_item_survives_an_apply_and_a_dropped_one_goes() {
        let mut m = Managed::default();
        let op = deployment(json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]));
        let live = m
            .apply(&json!({}), &op, "op", Scope::Main, true, "t")
            .unwrap();
        let extra = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "main", "env": [{"name": "X", "value": "x"}]}]}}}});
        let live = m
            .apply(&live, &extra, "injector", Scope::Main, false, "t")
            .unwrap();
        let env = |v: &Value| v["spec"]["template"]["spec"]["containers"][0]["env"].clone();
        assert_eq!(env(&live).as_array().unwrap().len(), 3);
        // The operator drops B: B goes, the injector's X stays.
        let op2 = deployment(json!([{"name": "A", "value": "1"}]));
        let live = m.apply(&live, &op2, "op", Scope::Main, true, "t").unwrap();
        assert_eq!(
            env(&live),
            json!([{"name": "A", "value": "1"}, {"name": "X", "value": "x"}])
        );
        // A conflicting value is refused without force, taken with it.
        let steal = json!({"spec": {"replicas": 5}});
        let err = m
            .apply(&live, &steal, "other", Scope::Main, false, "t")
            .unwrap_err();
        assert_eq!(err[0].manager, "op");
        assert_eq!(err[0].path, ".spec.replicas");
        let live = m
            .apply(&live, &steal, "other", Scope::Main, true, "t")
            .unwrap();
        assert_eq!(live["spec"]["replicas"], 5);
        assert!(!m.owns("op", &[f("spec"), f("replicas")]));
        // Dropping every label removes the map.
        let mut no_labels = op2.clone();
        no_labels["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("labels");
        let live = m
            .apply(&live, &no_labels, "op", Scope::Main, true, "t")
            .unwrap();
        assert!(live["metadata"].get("labels").is_none(), "{live}");
    }

    #[test]
    fn updates_take_what_they_change_and_map_keys_are_owned_one_by_one() {
        let mut m = Managed::default();
        let created = json!({"data": {"active": "a", "previous": "p"}});
        m.update(None, &created, "kubectl-create", Scope::All, "t");
        let applied = json!({"data": {"active": "a", "published": "x"}});
        let live = m
            .apply(&created, &applied, "op", Scope::All, true, "t")
            .unwrap();
        // previous belongs to kubectl-create: an apply without it keeps it.
        assert_eq!(live["data"]["previous"], "p");
        let next = json!({"data": {"active": "b", "published": "x"}});
        let live2 = m.apply(&live, &next, "op", Scope::All, true, "t").unwrap();
        assert_eq!(live2["data"]["previous"], "p");
        // An update that removes it leaves it owned by nobody.
        let exact = json!({"data": {"active": "b", "published": "x"}});
        m.update(Some(&live2), &exact, "op", Scope::All, "t");
        assert!(!m.owns("kubectl-create", &[f("data"), f("previous")]));
        assert!(m.owns("op", &[f("data"), f("active")]));
    }
}
