//! `meta.k8s.io/v1` Table responses (Accept `application/json;as=Table;...`),
//! what `kubectl get` prints: the columns a real server's printers give the
//! served built-in types, and a CRD's `additionalPrinterColumns` evaluated
//! on each object. Cells that hold a time are rendered as an age the way the
//! server does (`5m12s`); priority-1 columns are the `-o wide` ones.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::jsonpath;
use super::resources::ResourceType;

/// What each row carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn from_query(v: Option<&str>) -> Self {
        match v {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

/// Whether the client asked for a Table (kubectl lists it first in Accept).
pub fn wants_table(accept: &str) -> bool {
    super::metadata::accepts_as(accept, "Table")
}

/// One column: header, type, format, priority, and how to compute the cell.
pub struct Column {
    name: String,
    kind: &'static str,
    format: &'static str,
    priority: u8,
    description: String,
    cell: Cell,
}

enum Cell {
    Name,
    Age,
    Builtin(fn(&Value) -> Value),
    Path { path: String, date: bool },
}

fn col(name: &str, priority: u8, f: fn(&Value) -> Value) -> Column {
    Column {
        name: name.to_string(),
        kind: "string",
        format: "",
        priority,
        description: String::new(),
        cell: Cell::Builtin(f),
    }
}

fn name_col() -> Column {
    Column {
        name: "Name".into(),
        kind: "string",
        format: "name",
        priority: 0,
        description: "Name must be unique within a namespace.".into(),
        cell: Cell::Name,
    }
}

fn age_col() -> Column {
    Column {
        name: "Age".into(),
        kind: "string",
        format: "",
        priority: 0,
        description: "CreationTimestamp is a timestamp representing the server time when this object was created.".into(),
        cell: Cell::Age,
    }
}

fn s(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn n(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn len(v: &Value, ptr: &str) -> usize {
    match v.pointer(ptr) {
        Some(Value::Array(a)) => a.len(),
        Some(Value::Object(m)) => m.len(),
        _ => 0,
    }
}

fn or_none(x: String) -> Value {
    if x.is_empty() {
        json!("<none>")
    } else {
        json!(x)
    }
}

fn containers(v: &Value, field: &str) -> Value {
    let names: Vec<String> = v
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().map(|c| s(c, field)).collect())
        .unwrap_or_default();
    json!(names.join(","))
}

fn selector(v: &Value, ptr: &str) -> Value {
    let Some(m) = v.pointer(ptr).and_then(Value::as_object) else {
        return json!("<none>");
    };
    let parts: Vec<String> = m
        .iter()
        .map(|(k, x)| format!("{k}={}", x.as_str().unwrap_or_default()))
        .collect();
    or_none(parts.join(","))
}

/// The STATUS column of a pod, as `kubectl get pods` shows it.
fn pod_status(p: &Value) -> Value {
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        return json!("Terminating");
    }
    let mut reason = s(p, "/status/reason");
    if reason.is_empty() {
        reason = s(p, "/status/phase");
    }
    if let Some(cs) = p
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
    {
        for c in cs.iter().rev() {
            let waiting = s(c, "/state/waiting/reason");
            let terminated = s(c, "/state/terminated/reason");
            if !waiting.is_empty() {
                reason = waiting;
            } else if !terminated.is_empty() {
                reason = terminated;
            }
        }
    }
    or_none(if reason.is_empty() {
        "Pending".into()
    } else {
        reason
    })
}

fn pod_ready(p: &Value) -> Value {
    let total = len(p, "/spec/containers");
    let ready = p
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().filter(|c| c["ready"] == true).count())
        .unwrap_or(0);
    json!(format!("{ready}/{total}"))
}

fn pod_restarts(p: &Value) -> Value {
    let r: i64 = p
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().map(|c| n(c, "/restartCount")).sum())
        .unwrap_or(0);
    json!(r)
}

fn service_ports(v: &Value) -> Value {
    let ports: Vec<String> = v
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let proto = s(p, "/protocol");
                    let proto = if proto.is_empty() {
                        "TCP".into()
                    } else {
                        proto
                    };
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) => format!("{}:{np}/{proto}", n(p, "/port")),
                        None => format!("{}/{proto}", n(p, "/port")),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    or_none(ports.join(","))
}

fn event_object(e: &Value) -> Value {
    let kind = s(e, "/involvedObject/kind").to_lowercase();
    json!(format!("{kind}/{}", s(e, "/involvedObject/name")))
}

fn event_last_seen(e: &Value) -> Value {
    for ptr in [
        "/series/lastObservedTime",
        "/lastTimestamp",
        "/eventTime",
        "/firstTimestamp",
        "/metadata/creationTimestamp",
    ] {
        if let Some(t) = e.pointer(ptr).and_then(Value::as_str) {
            return json!(age_of(t));
        }
    }
    json!("<unknown>")
}

/// The columns of a built-in type (None: the default NAME/AGE table).
fn builtin_columns(rt: &ResourceType) -> Option<Vec<Column>> {
    let c = col;
    Some(match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") => vec![
            name_col(),
            c("Ready", 0, |d| {
                json!(format!(
                    "{}/{}",
                    n(d, "/status/readyReplicas"),
                    n(d, "/spec/replicas")
                ))
            }),
            c("Up-to-date", 0, |d| json!(n(d, "/status/updatedReplicas"))),
            c("Available", 0, |d| json!(n(d, "/status/availableReplicas"))),
            age_col(),
            c("Containers", 1, |d| containers(d, "/name")),
            c("Images", 1, |d| containers(d, "/image")),
            c("Selector", 1, |d| selector(d, "/spec/selector/matchLabels")),
        ],
        ("apps", "ReplicaSet") => vec![
            name_col(),
            c("Desired", 0, |d| json!(n(d, "/spec/replicas"))),
            c("Current", 0, |d| json!(n(d, "/status/replicas"))),
            c("Ready", 0, |d| json!(n(d, "/status/readyReplicas"))),
            age_col(),
            c("Containers", 1, |d| containers(d, "/name")),
            c("Images", 1, |d| containers(d, "/image")),
            c("Selector", 1, |d| selector(d, "/spec/selector/matchLabels")),
        ],
        ("", "Pod") => vec![
            name_col(),
            c("Ready", 0, pod_ready),
            c("Status", 0, pod_status),
            c("Restarts", 0, pod_restarts),
            age_col(),
            c("IP", 1, |p| or_none(s(p, "/status/podIP"))),
            c("Node", 1, |p| or_none(s(p, "/spec/nodeName"))),
            c("Nominated Node", 1, |p| {
                or_none(s(p, "/status/nominatedNodeName"))
            }),
            c("Readiness Gates", 1, |_| json!("<none>")),
        ],
        ("", "Service") => vec![
            name_col(),
            c("Type", 0, |v| json!(s(v, "/spec/type"))),
            c("Cluster-IP", 0, |v| or_none(s(v, "/spec/clusterIP"))),
            c("External-IP", 0, |v| {
                let ips: Vec<String> = v
                    .pointer("/spec/externalIPs")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                or_none(ips.join(","))
            }),
            c("Port(s)", 0, service_ports),
            age_col(),
            c("Selector", 1, |v| selector(v, "/spec/selector")),
        ],
        ("", "Secret") => vec![
            name_col(),
            c("Type", 0, |v| json!(s(v, "/type"))),
            c("Data", 0, |v| json!(len(v, "/data"))),
            age_col(),
        ],
        ("", "ConfigMap") => vec![
            name_col(),
            c("Data", 0, |v| {
                json!(len(v, "/data") + len(v, "/binaryData"))
            }),
            age_col(),
        ],
        ("", "Namespace") => vec![
            name_col(),
            c("Status", 0, |v| json!(s(v, "/status/phase"))),
            age_col(),
        ],
        ("", "ServiceAccount") => vec![
            name_col(),
            c("Secrets", 0, |v| json!(len(v, "/secrets"))),
            age_col(),
        ],
        ("", "Endpoints") => vec![
            name_col(),
            c("Endpoints", 0, |v| {
                let mut out = Vec::new();
                for sub in v["subsets"].as_array().into_iter().flatten() {
                    for a in sub["addresses"].as_array().into_iter().flatten() {
                        for p in sub["ports"].as_array().into_iter().flatten() {
                            out.push(format!("{}:{}", s(a, "/ip"), n(p, "/port")));
                        }
                    }
                }
                or_none(out.join(","))
            }),
            age_col(),
        ],
        ("", "Event") => vec![
            c("Last Seen", 0, event_last_seen),
            c("Type", 0, |e| json!(s(e, "/type"))),
            c("Reason", 0, |e| json!(s(e, "/reason"))),
            c("Object", 0, event_object),
            c("Subobject", 1, |e| json!(s(e, "/involvedObject/fieldPath"))),
            c("Source", 1, |e| {
                let from = s(e, "/source/component");
                json!(if from.is_empty() {
                    s(e, "/reportingComponent")
                } else {
                    from
                })
            }),
            c("Message", 0, |e| json!(s(e, "/message"))),
            c("First Seen", 1, |e| {
                match e.get("firstTimestamp").and_then(Value::as_str) {
                    Some(t) => json!(age_of(t)),
                    None => json!("<unknown>"),
                }
            }),
            c("Count", 1, |e| json!(n(e, "/count").max(1))),
            Column {
                priority: 1,
                ..name_col()
            },
        ],
        ("coordination.k8s.io", "Lease") => vec![
            name_col(),
            c("Holder", 0, |v| json!(s(v, "/spec/holderIdentity"))),
            age_col(),
        ],
        ("policy", "PodDisruptionBudget") => vec![
            name_col(),
            c("Min Available", 0, |v| or_na(v, "/spec/minAvailable")),
            c("Max Unavailable", 0, |v| or_na(v, "/spec/maxUnavailable")),
            c("Allowed Disruptions", 0, |v| {
                json!(n(v, "/status/disruptionsAllowed"))
            }),
            age_col(),
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => vec![
            name_col(),
            c("Created At", 0, |v| {
                json!(s(v, "/metadata/creationTimestamp"))
            }),
        ],
        _ => return None,
    })
}

fn or_na(v: &Value, ptr: &str) -> Value {
    match v.pointer(ptr) {
        Some(Value::String(x)) => json!(x),
        Some(Value::Number(x)) => json!(x.to_string()),
        _ => json!("N/A"),
    }
}

/// The columns of a custom resource: Name, then the version's printer
/// columns; NAME/AGE when it declares none (as the real server does).
fn crd_columns(crd_version: &Value) -> Vec<Column> {
    let Some(cols) = crd_version
        .get("additionalPrinterColumns")
        .and_then(Value::as_array)
    else {
        return vec![name_col(), age_col()];
    };
    let mut out = vec![name_col()];
    for c in cols {
        let kind = match c.get("type").and_then(Value::as_str) {
            Some("integer") => "integer",
            Some("number") => "number",
            Some("boolean") => "boolean",
            Some("date") => "date",
            _ => "string",
        };
        out.push(Column {
            name: s(c, "/name"),
            kind,
            format: "",
            priority: c
                .get("priority")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(9) as u8,
            description: s(c, "/description"),
            cell: Cell::Path {
                path: s(c, "/jsonPath"),
                date: kind == "date",
            },
        });
    }
    out
}

/// The columns for `rt`; `crd_version` is the CRD's `spec.versions[]` entry
/// when `rt` is a custom resource.
pub fn columns(rt: &ResourceType, crd_version: Option<&Value>) -> Vec<Column> {
    if let Some(v) = crd_version {
        return crd_columns(v);
    }
    builtin_columns(rt).unwrap_or_else(|| vec![name_col(), age_col()])
}

/// `duration.HumanDuration` of the time since `ts` (RFC 3339).
pub fn age_of(ts: &str) -> String {
    match DateTime::parse_from_rfc3339(ts) {
        Ok(t) => human_duration(Utc::now().signed_duration_since(t.with_timezone(&Utc))),
        Err(_) => "<invalid>".into(),
    }
}

fn human_duration(d: chrono::TimeDelta) -> String {
    let secs = d.num_seconds();
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let mins = secs / 60;
    if mins < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{mins}m")
        } else {
            format!("{mins}m{s}s")
        };
    }
    if mins < 180 {
        return format!("{mins}m");
    }
    let hours = mins / 60;
    if hours < 8 {
        let m = mins % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    format!("{}y", hours / 24 / 365)
}

fn cell(c: &Column, obj: &Value) -> Value {
    match &c.cell {
        Cell::Name => json!(s(obj, "/metadata/name")),
        Cell::Age => json!(age_of(&s(obj, "/metadata/creationTimestamp"))),
        Cell::Builtin(f) => f(obj),
        Cell::Path { path, date } => match jsonpath::find(obj, path).into_iter().next() {
            None | Some(Value::Null) => Value::Null,
            Some(Value::String(t)) if *date => json!(age_of(&t)),
            Some(v) => v,
        },
    }
}

/// The `columnDefinitions` member.
pub fn definitions(cols: &[Column]) -> Value {
    Value::Array(
        cols.iter()
            .map(|c| {
                json!({"name": c.name, "type": c.kind, "format": c.format,
                       "description": c.description, "priority": c.priority})
            })
            .collect(),
    )
}

/// One row for `obj`.
pub fn row(cols: &[Column], obj: &Value, include: Include) -> Value {
    let cells: Vec<Value> = cols.iter().map(|c| cell(c, obj)).collect();
    let mut r = json!({"cells": cells});
    match include {
        Include::None => {}
        Include::Object => r["object"] = obj.clone(),
        Include::Metadata => r["object"] = super::metadata::partial(obj),
    }
    r
}

/// A whole Table; `with_definitions` false leaves the columns out (watch
/// events after the first).
pub fn table(
    cols: &[Column],
    objs: &[Value],
    include: Include,
    resource_version: &str,
    with_definitions: bool,
) -> Value {
    let rows: Vec<Value> = objs.iter().map(|o| row(cols, o, include)).collect();
    let mut t = json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "rows": rows,
    });
    if with_definitions {
        t["columnDefinitions"] = definitions(cols);
    } else {
        t["columnDefinitions"] = Value::Null;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::Registry;

    #[test]
    fn deployment_and_pod_columns() {
        let r = Registry::default();
        let d = json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [{"name": "c", "image": "img:1"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let cols = columns(r.find("apps", "v1", "deployments").unwrap(), None);
        let t = table(&cols, &[d], Include::None, "5", true);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            &names[..5],
            ["Name", "Ready", "Up-to-date", "Available", "Age"]
        );
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        assert_eq!(t["rows"][0]["cells"][1], "2/3");
        assert_eq!(t["rows"][0]["cells"][7], "app=web");
        assert!(t["rows"][0].get("object").is_none());

        let p = json!({"metadata": {"name": "p", "deletionTimestamp": "x"},
            "spec": {"containers": [{}, {}]},
            "status": {"phase": "Running", "podIP": "127.0.0.2",
                       "containerStatuses": [{"ready": true, "restartCount": 2}]}});
        let cols = columns(r.find("", "v1", "pods").unwrap(), None);
        let row = row(&cols, &p, Include::Metadata);
        assert_eq!(row["cells"][1], "1/2");
        assert_eq!(row["cells"][2], "Terminating");
        assert_eq!(row["cells"][3], 2);
        assert_eq!(row["cells"][5], "127.0.0.2");
        assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn crd_printer_columns() {
        let v = json!({"name": "v1alpha1", "additionalPrinterColumns": [
            {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
            {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas", "priority": 1}]});
        let r = Registry::default();
        let cols = columns(
            r.find("macp.io", "v1alpha1", "macpauths").unwrap(),
            Some(&v),
        );
        let o = json!({"metadata": {"name": "a"}, "spec": {"replicas": 2},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let row = row(&cols, &o, Include::Object);
        assert_eq!(row["cells"], json!(["a", "True", 2]));
        assert_eq!(definitions(&cols)[2]["priority"], 1);
        assert_eq!(row["object"]["spec"]["replicas"], 2);
    }

    #[test]
    fn ages_like_kubectl() {
        let d = chrono::TimeDelta::seconds;
        assert_eq!(human_duration(d(5)), "5s");
        assert_eq!(human_duration(d(119)), "119s");
        assert_eq!(human_duration(d(150)), "2m30s");
        assert_eq!(human_duration(d(3600 * 5)), "5h");
        assert_eq!(human_duration(d(3600 * 50)), "2d2h");
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
