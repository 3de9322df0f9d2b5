//! core/v1 and events.k8s.io/v1 Events are one storage on a real server, so
//! an Event the operator writes with kube's `Recorder` (events.k8s.io/v1) is
//! also listed, read and watched as a core/v1 Event — which is what
//! `kubectl describe` and `kubectl get events` ask for. Here the two stay
//! separate in the store and the core view converts on read.

use serde_json::{Map, Value, json};

use super::resources::ResourceType;

/// Whether `rt` is core/v1 events (the view that also shows events.k8s.io ones).
pub fn is_core_events(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.resource == "events"
}

/// Whether `(group, resource)` is events.k8s.io events.
pub fn is_new_events(group: &str, resource: &str) -> bool {
    group == "events.k8s.io" && resource == "events"
}

/// An events.k8s.io/v1 Event as the core/v1 Event a real server returns for it.
pub fn to_core(e: &Value) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("Event"));
    let copy = |out: &mut Map<String, Value>, from: &str, to: &str| {
        if let Some(v) = e.get(from).filter(|v| !v.is_null()) {
            out.insert(to.to_string(), v.clone());
        }
    };
    copy(&mut out, "metadata", "metadata");
    copy(&mut out, "regarding", "involvedObject");
    copy(&mut out, "related", "related");
    copy(&mut out, "note", "message");
    copy(&mut out, "reason", "reason");
    copy(&mut out, "type", "type");
    copy(&mut out, "action", "action");
    copy(&mut out, "eventTime", "eventTime");
    copy(&mut out, "reportingController", "reportingComponent");
    copy(&mut out, "reportingInstance", "reportingInstance");
    copy(&mut out, "deprecatedFirstTimestamp", "firstTimestamp");
    copy(&mut out, "deprecatedLastTimestamp", "lastTimestamp");
    copy(&mut out, "deprecatedCount", "count");
    copy(&mut out, "deprecatedSource", "source");
    if let Some(series) = e.get("series").filter(|s| s.is_object()) {
        let mut s = Map::new();
        if let Some(c) = series.get("count") {
            s.insert("count".into(), c.clone());
            out.insert("count".into(), c.clone());
        }
        if let Some(t) = series.get("lastObservedTime") {
            s.insert("lastObservedTime".into(), t.clone());
        }
        out.insert("series".into(), Value::Object(s));
    }
    if !out.contains_key("source")
        && let Some(c) = e.get("reportingController")
    {
        out.insert("source".into(), json!({"component": c}));
    }
    if !out.contains_key("involvedObject") {
        out.insert("involvedObject".into(), json!({}));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_k8s_io_as_core() {
        let e = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "auth.1", "namespace": "macp"},
            "regarding": {"kind": "MacpAuth", "name": "auth", "namespace": "macp", "uid": "u1"},
            "note": "rotated", "reason": "Rotated", "type": "Normal", "action": "Rotate",
            "reportingController": "macp-auth-operator", "reportingInstance": "op-1",
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "series": {"count": 3, "lastObservedTime": "2026-01-01T00:01:00.000000Z"}});
        let c = to_core(&e);
        assert_eq!(c["apiVersion"], "v1");
        assert_eq!(c["involvedObject"]["uid"], "u1");
        assert_eq!(c["message"], "rotated");
        assert_eq!(c["source"]["component"], "macp-auth-operator");
        assert_eq!(c["count"], 3);
        assert_eq!(c["metadata"]["namespace"], "macp");
    }
}
