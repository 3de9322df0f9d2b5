//! Status helpers: conditions that keep their transition time, and the
//! minimal patch between two statuses (none when nothing changed, so an
//! unchanged resource costs no write).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::crd::{Condition, MacpAuthStatus};

pub const READY: &str = "Ready";
pub const DEGRADED: &str = "Degraded";

pub const TRUE: &str = "True";
pub const FALSE: &str = "False";

/// Sets condition `type_`; `lastTransitionTime` moves only when the status flips.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
    generation: Option<i64>,
) {
    let status = if status { TRUE } else { FALSE };
    let since = match conditions.iter().find(|c| c.type_ == type_) {
        Some(c) if c.status == status => c.last_transition_time,
        _ => now,
    };
    let fresh = Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time: since,
        observed_generation: generation,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => *existing = fresh,
        None => conditions.push(fresh),
    }
}

pub fn condition<'a>(status: &'a MacpAuthStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Whether condition `type_` is `True` (with `reason`, when given).
pub fn is_true(status: &MacpAuthStatus, type_: &str, reason: Option<&str>) -> bool {
    condition(status, type_)
        .is_some_and(|c| c.status == TRUE && reason.is_none_or(|r| c.reason == r))
}

/// RFC 7386 merge patch turning `old` into `new`, or `None` when they are equal.
/// Removed members become `null`; arrays and scalars are replaced whole.
pub fn merge_diff(old: &Value, new: &Value) -> Option<Value> {
    if old == new {
        return None;
    }
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) => {
                        if let Some(p) = merge_diff(ov, nv) {
                            patch.insert(k.clone(), p);
                        }
                    }
                    None => {
                        patch.insert(k.clone(), nv.clone());
                    }
                }
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            Some(Value::Object(patch))
        }
        // A null in a merge patch means "delete", so a new null value cannot be
        // expressed; statuses never contain one (options are skipped).
        _ => Some(new.clone()),
    }
}

/// The `/status` merge patch from `old` to `new`, or `None` when nothing
/// changed. With `resource_version` (the one `old` was read at) the API
/// server applies it only if the object is still at that version, else 409:
/// a status decided from a stale read never overwrites a newer one.
pub fn status_patch(
    old: &MacpAuthStatus,
    new: &MacpAuthStatus,
    resource_version: Option<&str>,
) -> Result<Option<Value>, serde_json::Error> {
    let (o, n) = (serde_json::to_value(old)?, serde_json::to_value(new)?);
    Ok(merge_diff(&o, &n).map(|p| {
        let mut patch = serde_json::json!({ "status": p });
        if let Some(rv) = resource_version {
            patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
        }
        patch
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn t(min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, min, 0).unwrap()
    }

    #[test]
    fn transition_time_only_moves_on_flip() {
        let mut c = Vec::new();
        set_condition(&mut c, READY, false, "RollingOut", "a", t(0), Some(1));
        set_condition(&mut c, READY, false, "Probing", "b", t(1), Some(2));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, t(0));
        assert_eq!(
            (c[0].reason.as_str(), c[0].observed_generation),
            ("Probing", Some(2))
        );
        set_condition(&mut c, READY, true, "Verified", "ok", t(2), Some(2));
        assert_eq!(c[0].last_transition_time, t(2));
        assert_eq!(c[0].status, TRUE);
        set_condition(&mut c, DEGRADED, false, "AsExpected", "", t(3), Some(2));
        assert_eq!(c.len(), 2);
        let s = MacpAuthStatus {
            conditions: c,
            ..Default::default()
        };
        assert!(is_true(&s, READY, None));
        assert!(is_true(&s, READY, Some("Verified")));
        assert!(!is_true(&s, READY, Some("Other")));
        assert!(!is_true(&s, DEGRADED, None));
    }

    #[test]
    fn merge_diff_is_minimal_and_deletes_with_null() {
        assert_eq!(merge_diff(&json!({"a": 1}), &json!({"a": 1})), None);
        assert_eq!(
            merge_diff(
                &json!({"a": 1, "b": {"x": 1, "y": 2}, "c": [1], "gone": true}),
                &json!({"a": 1, "b": {"x": 1, "y": 3}, "c": [1, 2], "new": "n"})
            ),
            Some(json!({"b": {"y": 3}, "c": [1, 2], "new": "n", "gone": null}))
        );
    }

    #[test]
    fn merge_diff_applies_back_to_new() {
        // Applying the patch with RFC 7386 semantics yields `new`.
        fn apply(target: &mut Value, patch: &Value) {
            match patch {
                Value::Object(p) => {
                    if !target.is_object() {
                        *target = json!({});
                    }
                    let obj = target.as_object_mut().unwrap();
                    for (k, v) in p {
                        if v.is_null() {
                            obj.remove(k);
                        } else {
                            apply(obj.entry(k.clone()).or_insert(Value::Null), v);
                        }
                    }
                }
                other => *target = other.clone(),
            }
        }
        let old = json!({"rotation": {"phase": "Draining", "waitUntil": "x"}, "activeKid": "a"});
        let new = json!({"rotation": {"phase": "Idle"}, "activeKid": "b", "publishedKids": ["a"]});
        let mut target = old.clone();
        apply(&mut target, &merge_diff(&old, &new).unwrap());
        assert_eq!(target, new);
    }

    #[test]
    fn unchanged_status_needs_no_patch() {
        let mut s = MacpAuthStatus {
            active_kid: Some("k".into()),
            ..Default::default()
        };
        assert_eq!(status_patch(&s, &s.clone(), Some("7")).unwrap(), None);
        let old = s.clone();
        s.observed_generation = Some(3);
        assert_eq!(
            status_patch(&old, &s, None).unwrap(),
            Some(json!({"status": {"observedGeneration": 3}}))
        );
        assert_eq!(
            status_patch(&old, &s, Some("7")).unwrap(),
            Some(
                json!({"metadata": {"resourceVersion": "7"}, "status": {"observedGeneration": 3}})
            )
        );
    }
}
