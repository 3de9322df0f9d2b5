//! `kubectl macp status`: what one MacpAuth's status, spec and pods say,
//! gathered into a [`StatusView`] (pure) and rendered as text, JSON or YAML.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use macp_auth_operator::crd::{
    MacpAuth, MacpAuthStatus, RotationPhase, RotationStatus, VariantArray,
};
use macp_auth_operator::keyset::keyset_hash;
use macp_auth_operator::rotation::desired_plan;
use serde::Serialize;
use serde_json::Value;

use crate::fmt;
use crate::steps::{self, Timed};
use crate::table::Table;

/// A pod of the MacpAuth, as listed by its labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub ready: bool,
    /// `status.phase` (`Running`, `Pending`, ...), and `Terminating` when deleted.
    pub phase: String,
    /// The pod's `macp.io/keyset-hash` annotation: which keyset its template carries.
    pub keyset_hash: Option<String>,
    pub started: Option<DateTime<Utc>>,
    pub ip: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRow {
    pub kid: String,
    pub role: String,
    /// When the key was made, from the time the operator writes into every kid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRow {
    pub name: String,
    pub ready: bool,
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyset_hash: Option<String>,
    /// Kids of the pod's JWKS, when its keyset hash is one the status explains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serves: Option<Vec<String>>,
    /// The kid it signs with, likewise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signs_with: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub namespace: String,
    pub name: String,
    /// The Ready condition's status and reason.
    pub ready: String,
    pub phase: RotationPhase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationStatus>,
    pub keys: Vec<KeyRow>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suspect_kids: Vec<String>,
    pub pods: Vec<PodRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<DateTime<Utc>>,
    /// Why there is no next rotation, or that the schedule is paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_note: Option<String>,
    /// Each remaining step of a rotation in flight with its end.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remaining: Vec<Timed>,
    /// `status.verifiers` as the operator reports it, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verifiers: Option<Value>,
    /// The standby key, or how its preparation goes.
    pub standby: String,
}

/// The creation time the operator writes into a kid: `<name>-<yyyymmddHHMMSS>-<hex>`.
pub fn kid_time(kid: &str) -> Option<DateTime<Utc>> {
    let mut parts = kid.rsplitn(3, '-');
    let _suffix = parts.next()?;
    let stamp = parts.next()?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%d%H%M%S")
        .ok()
        .map(|t| t.and_utc())
}

/// Every key the status names, with its role.
///
/// An operator that reports roles itself (`status.keys[]` with `kid` and
/// `role`) is believed; otherwise the roles follow from the active kid, the
/// published kids and the keyset the rotation's phase wants. The standby key
/// (`status.standby`) shows as `standby`.
pub fn key_rows(status: &MacpAuthStatus, raw: &Value) -> Vec<KeyRow> {
    let row = |kid: &str, role: &str| KeyRow {
        kid: kid.to_string(),
        role: role.to_string(),
        created: kid_time(kid),
    };
    let standby = status.standby.as_ref().map(|s| s.kid.clone());
    if let Some(keys) = raw.pointer("/keys").and_then(Value::as_array) {
        let rows: Vec<KeyRow> = keys
            .iter()
            .filter_map(|k| {
                let kid = k.get("kid")?.as_str()?;
                let role = k.get("role").and_then(Value::as_str).unwrap_or("published");
                // The ledger lists the standby in the `next` slot it sits in.
                let role = if standby.as_deref() == Some(kid) {
                    "standby".to_string()
                } else {
                    role.to_lowercase()
                };
                Some(row(kid, &role))
            })
            .collect();
        if !rows.is_empty() {
            return rows;
        }
    }
    let plan = status
        .rotation
        .as_ref()
        .filter(|r| r.phase != RotationPhase::Idle)
        .and_then(desired_plan);
    let mut rows = Vec::new();
    if let Some(active) = &status.active_kid {
        rows.push(row(active, "active"));
    }
    for kid in &status.published_kids {
        if rows.iter().any(|r| &r.kid == kid) {
            continue;
        }
        let role = match &plan {
            Some(p) if p.next.as_ref() == Some(kid) => "next",
            Some(p) if p.previous.as_ref() == Some(kid) => "previous",
            _ if standby.as_ref() == Some(kid) => "standby",
            _ if status.suspect_kids.contains(kid) => "suspect (being withdrawn)",
            _ => "published",
        };
        rows.push(row(kid, role));
    }
    // A key being made is not published yet, but it is the one to watch.
    if let Some(r) = &status.rotation {
        for kid in r.new_kid.iter().chain(&r.pending_kid) {
            if r.phase == RotationPhase::KeyGenerated && !rows.iter().any(|x| &x.kid == kid) {
                rows.push(row(kid, "next (not published yet)"));
            }
        }
    }
    rows
}

/// The keysets a pod of this MacpAuth may carry now, by keyset hash: the one
/// the status reports, and every one the rotation in flight passes through.
fn known_keysets(status: &MacpAuthStatus) -> BTreeMap<String, (String, Vec<String>)> {
    let mut known = BTreeMap::new();
    let mut add = |active: &str, published: &[String]| {
        let mut served = vec![active.to_string()];
        served.extend(published.iter().filter(|k| *k != active).cloned());
        known.insert(keyset_hash(active, published), (active.to_string(), served));
    };
    if let Some(active) = &status.active_kid {
        add(active, &status.published_kids);
        add(active, &[]);
    }
    if let Some(rot) = &status.rotation {
        for &phase in RotationPhase::VARIANTS {
            let mut r = rot.clone();
            r.phase = phase;
            if let Some(p) = desired_plan(&r) {
                add(&p.active, &p.published);
            }
        }
        for kid in rot.old_kid.iter().chain(&rot.new_kid) {
            add(kid, &[]);
        }
    }
    known
}

/// What each pod serves, as far as its keyset hash tells.
pub fn pod_rows(status: &MacpAuthStatus, pods: &[PodInfo]) -> Vec<PodRow> {
    let known = known_keysets(status);
    pods.iter()
        .map(|p| {
            let ks = p.keyset_hash.as_ref().and_then(|h| known.get(h));
            PodRow {
                name: p.name.clone(),
                ready: p.ready,
                phase: p.phase.clone(),
                keyset_hash: p.keyset_hash.clone(),
                serves: ks.map(|(_, served)| served.clone()),
                signs_with: ks.map(|(active, _)| active.clone()),
                ip: p.ip.clone(),
                started: p.started,
            }
        })
        .collect()
}

fn ready_text(status: &MacpAuthStatus) -> String {
    match status.conditions.iter().find(|c| c.type_ == "Ready") {
        Some(c) if c.status == "True" => "True".to_string(),
        Some(c) => format!("{} ({}: {})", c.status, c.reason, c.message),
        None => "Unknown (no Ready condition yet)".to_string(),
    }
}

/// Everything `status` shows about `m`, `raw_status` being its status as JSON
/// (fields this plugin's CRD types do not know yet are read from there).
pub fn build(m: &MacpAuth, raw_status: &Value, pods: &[PodInfo], now: DateTime<Utc>) -> StatusView {
    let status = m.status.clone().unwrap_or_default();
    let rot = status.rotation.clone().unwrap_or_default();
    let remaining = steps::eta(&m.spec, &status, now);
    let schedule_note = if m.spec.rotation.paused {
        Some(
            "paused (spec.rotation.paused): routine rotations wait, emergencies do not".to_string(),
        )
    } else if m.spec.rotation.interval.is_none() {
        Some(
            "none scheduled: spec.rotation.interval is unset (rotates on request only)".to_string(),
        )
    } else if status.next_rotation_time.is_none() {
        Some("not computed yet".to_string())
    } else {
        None
    };
    StatusView {
        namespace: m.metadata.namespace.clone().unwrap_or_default(),
        name: m.metadata.name.clone().unwrap_or_default(),
        ready: ready_text(&status),
        phase: rot.phase,
        phase_since: rot.phase_since.or(status.last_rotation_time),
        rotation: status
            .rotation
            .clone()
            .filter(|r| r.phase != RotationPhase::Idle),
        keys: key_rows(&status, raw_status),
        suspect_kids: status.suspect_kids.clone(),
        pods: pod_rows(&status, pods),
        next_rotation: status.next_rotation_time,
        schedule_note,
        remaining,
        verifiers: raw_status.get("verifiers").cloned(),
        standby: standby_text(&m.spec, &status),
    }
}

/// `ks (propagated 2026-…)`, `being prepared (Publishing)`, or why there is none.
fn standby_text(spec: &macp_auth_operator::crd::MacpAuthSpec, status: &MacpAuthStatus) -> String {
    let preparing = status
        .rotation
        .as_ref()
        .filter(|r| r.trigger == Some(macp_auth_operator::crd::RotationTrigger::Standby));
    match (&status.standby, preparing) {
        (Some(s), _) => match s.propagated_at {
            Some(t) => format!("{} (propagated at {})", s.kid, fmt::instant(t)),
            None => format!("{} (propagated)", s.kid),
        },
        (None, Some(r)) => format!("being prepared ({:?})", r.phase),
        (None, None) if spec.rotation.standby => {
            "none yet (one is prepared once no rotation is in flight)".to_string()
        }
        (None, None) => "off (spec.rotation.standby: false)".to_string(),
    }
}

/// The remaining steps as a table (shared with `rotate --wait`).
pub fn steps_table(steps: &[Timed], now: DateTime<Utc>, indent: &str) -> String {
    // The marker column only where a step is in flight (not in a plan).
    let marked = steps.iter().any(|s| s.current);
    let mut headers = vec![
        "phase",
        "wait",
        "ends (earliest)",
        "ends (latest)",
        "wait from",
    ];
    if marked {
        headers.insert(0, "");
    }
    let mut t = Table::new(&headers);
    for s in steps {
        let end = |at: DateTime<Utc>| {
            format!(
                "{} (in {})",
                fmt::instant(at),
                fmt::short(fmt::secs_between(now, at))
            )
        };
        let mut row = vec![
            format!("{:?}", s.step.phase),
            s.step.wait.short(),
            end(s.earliest_end),
            end(s.latest_end),
            s.step.source.clone(),
        ];
        if marked {
            row.insert(0, if s.current { "now" } else { "" }.to_string());
        }
        t.row(row);
    }
    t.render_indented(indent)
}

/// The text form of one MacpAuth's status.
pub fn render(v: &StatusView, now: DateTime<Utc>, wide: bool) -> String {
    let mut out = format!("MacpAuth {}/{}\n", v.namespace, v.name);
    out.push_str(&format!("  Ready:          {}\n", v.ready));
    let since = v
        .phase_since
        .map(|t| format!(" since {}", fmt::instant_rel(t, now)))
        .unwrap_or_default();
    out.push_str(&format!("  Phase:          {:?}{since}\n", v.phase));
    if let Some(r) = &v.rotation {
        let trigger = r
            .trigger
            .map(|t| format!("{t:?}").to_lowercase())
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "  Rotation:       {trigger}, request {}, {} -> {}\n",
            r.request_id.as_deref().unwrap_or("-"),
            r.old_kid.as_deref().unwrap_or("-"),
            r.new_kid
                .as_deref()
                .or(r.pending_kid.as_deref())
                .unwrap_or("-"),
        ));
        if let Some(msg) = &r.message {
            out.push_str(&format!("  Message:        {msg}\n"));
        }
    }
    out.push_str("  Keys:\n");
    let mut keys = Table::new(&["kid", "role", "age"]);
    for k in &v.keys {
        let age = k
            .created
            .map(|c| fmt::short(fmt::secs_between(c, now)))
            .unwrap_or_else(|| "-".into());
        keys.row([k.kid.clone(), k.role.clone(), age]);
    }
    out.push_str(&keys.render_indented("    "));
    if !v.suspect_kids.is_empty() {
        out.push_str(&format!(
            "  Suspect kids:   {} (never published again)\n",
            v.suspect_kids.join(", ")
        ));
    }
    out.push_str("  Pods:\n");
    if v.pods.is_empty() {
        out.push_str("    (none)\n");
    } else {
        let mut headers = vec!["name", "ready", "status", "serves", "signs with"];
        if wide {
            headers.extend(["keyset hash", "ip", "started"]);
        }
        let mut pods = Table::new(&headers);
        for p in &v.pods {
            let mut row = vec![
                p.name.clone(),
                if p.ready { "true" } else { "false" }.to_string(),
                p.phase.clone(),
                p.serves
                    .as_ref()
                    .map(|s| s.join(","))
                    .unwrap_or_else(|| match &p.keyset_hash {
                        Some(h) => format!("unknown keyset {}", &h[..h.len().min(12)]),
                        None => "unknown (no keyset-hash annotation)".to_string(),
                    }),
                p.signs_with.clone().unwrap_or_else(|| "-".into()),
            ];
            if wide {
                row.push(p.keyset_hash.clone().unwrap_or_else(|| "-".into()));
                row.push(p.ip.clone().unwrap_or_else(|| "-".into()));
                row.push(p.started.map(fmt::instant).unwrap_or_else(|| "-".into()));
            }
            pods.row(row);
        }
        out.push_str(&pods.render_indented("    "));
    }
    let next = match (&v.schedule_note, v.next_rotation) {
        (Some(note), Some(t)) => format!("{} — {note}", fmt::instant_rel(t, now)),
        (Some(note), None) => note.clone(),
        (None, Some(t)) => fmt::instant_rel(t, now),
        (None, None) => "-".to_string(),
    };
    out.push_str(&format!("  Next rotation:  {next}\n"));
    out.push_str(&format!("  Standby:        {}\n", v.standby));
    if !v.remaining.is_empty() {
        out.push_str("  Remaining steps (rollouts: earliest counts them instant, latest at their full timeout):\n");
        out.push_str(&steps_table(&v.remaining, now, "    "));
        if let Some(last) = v.remaining.last() {
            out.push_str(&format!(
                "  ETA:            {} at the earliest, {} at the latest\n",
                fmt::instant_rel(last.earliest_end, now),
                fmt::instant(last.latest_end)
            ));
        }
    }
    match &v.verifiers {
        Some(obj @ Value::Object(_)) => out.push_str(&verifiers_text(obj, now)),
        Some(Value::Array(list)) => {
            out.push_str(&format!("  Verifiers:      {} observed\n", list.len()));
            for item in list {
                out.push_str(&format!("    {item}\n"));
            }
        }
        Some(other) => out.push_str(&format!("  Verifiers:      {other}\n")),
        None => out.push_str("  Verifiers:      none reported yet (the operator reports those it sees fetching the JWKS during a rotation)\n"),
    }
    out
}

/// A verifiers summary (`observed`, `holdingNewKid`, `longestIntervalSeconds`,
/// `waitingFor`, `known[]`), each part shown only when reported.
fn verifiers_text(v: &Value, now: DateTime<Utc>) -> String {
    let num = |k: &str| v.get(k).and_then(Value::as_i64);
    let mut parts = Vec::new();
    if let Some(n) = num("observed") {
        parts.push(format!("{n} observed"));
    }
    if let Some(n) = num("holdingNewKid") {
        parts.push(format!("{n} hold the new kid"));
    }
    if let Some(s) = num("longestIntervalSeconds") {
        parts.push(format!("longest fetch interval {}", fmt::short(s)));
    }
    let mut out = format!(
        "  Verifiers:      {}\n",
        if parts.is_empty() {
            v.to_string()
        } else {
            parts.join(", ")
        }
    );
    if let Some(w) = v
        .get("waitingFor")
        .and_then(Value::as_array)
        .filter(|w| !w.is_empty())
    {
        let names: Vec<&str> = w.iter().filter_map(Value::as_str).collect();
        out.push_str(&format!("  Waiting for:    {}\n", names.join(", ")));
    }
    if let Some(known) = v
        .get("known")
        .and_then(Value::as_array)
        .filter(|k| !k.is_empty())
    {
        let mut t = Table::new(&[
            "verifier",
            "last fetch",
            "interval",
            "fetches",
            "holds new kid",
        ]);
        for k in known {
            let s = |f: &str| k.get(f).and_then(Value::as_str).unwrap_or("-").to_string();
            let last = k
                .get("lastFetch")
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| format!("{} ago", fmt::short(fmt::secs_between(t.to_utc(), now))))
                .unwrap_or_else(|| "-".into());
            t.row([
                s("id"),
                last,
                k.get("intervalSeconds")
                    .and_then(Value::as_i64)
                    .map(fmt::short)
                    .unwrap_or_else(|| "-".into()),
                k.get("fetches")
                    .and_then(Value::as_u64)
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                k.get("holdsNewKid")
                    .and_then(Value::as_bool)
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        out.push_str(&t.render_indented("    "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use macp_auth_operator::crd::{Condition, MacpAuthSpec, RotationTrigger};
    use serde_json::json;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    const OLD: &str = "auth-20261206110000-aaaa";
    const NEW: &str = "auth-20261206120000-bbbb";

    fn draining() -> MacpAuth {
        let spec: MacpAuthSpec = serde_json::from_value(json!({"maxTtlSeconds": 300})).unwrap();
        let mut m = MacpAuth::new("auth", spec);
        m.metadata.namespace = Some("macp".into());
        m.status = Some(MacpAuthStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Ready".into(),
                message: String::new(),
                last_transition_time: t("2026-12-06T11:00:00Z"),
                observed_generation: None,
            }],
            active_kid: Some(NEW.into()),
            published_kids: vec![OLD.into()],
            rotation: Some(RotationStatus {
                phase: RotationPhase::Draining,
                trigger: Some(RotationTrigger::Manual),
                request_id: Some("r-1".into()),
                phase_since: Some(t("2026-12-06T12:01:00Z")),
                wait_until: Some(t("2026-12-06T12:07:00Z")),
                old_kid: Some(OLD.into()),
                new_kid: Some(NEW.into()),
                ..RotationStatus::default()
            }),
            ..MacpAuthStatus::default()
        });
        m
    }

    fn pods(status: &MacpAuthStatus) -> Vec<PodInfo> {
        let rot = status.rotation.clone().unwrap();
        vec![
            PodInfo {
                name: "auth-1".into(),
                ready: true,
                phase: "Running".into(),
                keyset_hash: Some(keyset_hash(NEW, &[OLD.to_string()])),
                ..PodInfo::default()
            },
            PodInfo {
                name: "auth-0".into(),
                ready: false,
                phase: "Running".into(),
                keyset_hash: Some(keyset_hash(
                    rot.old_kid.as_deref().unwrap(),
                    &[NEW.to_string()],
                )),
                ..PodInfo::default()
            },
            PodInfo {
                name: "auth-x".into(),
                phase: "Pending".into(),
                keyset_hash: Some("0123456789abcdef0123".into()),
                ..PodInfo::default()
            },
        ]
    }

    #[test]
    fn kids_carry_their_creation_time() {
        assert_eq!(kid_time(NEW), Some(t("2026-12-06T12:00:00Z")));
        assert_eq!(
            kid_time("my-auth-20261206120000-00ff"),
            Some(t("2026-12-06T12:00:00Z"))
        );
        assert_eq!(kid_time("hand-made"), None);
    }

    #[test]
    fn roles_follow_the_phase() {
        let m = draining();
        let rows = key_rows(m.status.as_ref().unwrap(), &json!({}));
        let roles: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.kid.as_str(), r.role.as_str()))
            .collect();
        assert_eq!(roles, [(NEW, "active"), (OLD, "previous")]);
        // Once the operator reports a standby, it shows.
        let mut st = m.status.clone().unwrap();
        st.rotation = None;
        st.standby = Some(macp_auth_operator::crd::StandbyStatus {
            kid: OLD.into(),
            propagated: true,
            propagated_at: None,
        });
        let rows = key_rows(&st, &json!({}));
        assert_eq!(rows[1].role, "standby");
        // The ledger lists it in its `next` slot; it still reads as the standby.
        let rows = key_rows(&st, &json!({"keys": [{"kid": OLD, "role": "Next"}]}));
        assert_eq!(rows[0].role, "standby");
        let rows = key_rows(&st, &json!({"keys": [{"kid": "k9", "role": "verifying"}]}));
        assert_eq!(
            (rows[0].kid.as_str(), rows[0].role.as_str()),
            ("k9", "verifying")
        );
    }

    #[test]
    fn the_status_of_a_draining_rotation_renders_as_a_table() {
        let m = draining();
        let now = t("2026-12-06T12:02:00Z");
        let st = m.status.clone().unwrap();
        let view = build(&m, &json!({}), &pods(&st), now);
        let text = render(&view, now, false);
        // Roles follow the Draining phase; each pod's keyset hash names what it
        // serves (auth-0 still runs the Propagating keyset); the drain ends at
        // the operator's waitUntil and Retiring at most a rollout timeout later.
        let want = r#"MacpAuth macp/auth
  Ready:          True
  Phase:          Draining since 2026-12-06T12:01:00Z (60s ago)
  Rotation:       manual, request r-1, auth-20261206110000-aaaa -> auth-20261206120000-bbbb
  Keys:
    KID                        ROLE       AGE
    auth-20261206120000-bbbb   active     2m
    auth-20261206110000-aaaa   previous   62m
  Pods:
    NAME     READY   STATUS    SERVES                                              SIGNS WITH
    auth-1   true    Running   auth-20261206120000-bbbb,auth-20261206110000-aaaa   auth-20261206120000-bbbb
    auth-0   false   Running   auth-20261206110000-aaaa,auth-20261206120000-bbbb   auth-20261206110000-aaaa
    auth-x   false   Pending   unknown keyset 0123456789ab                         -
  Next rotation:  none scheduled: spec.rotation.interval is unset (rotates on request only)
  Standby:        none yet (one is prepared once no rotation is in flight)
  Remaining steps (rollouts: earliest counts them instant, latest at their full timeout):
          PHASE      WAIT   ENDS (EARLIEST)                ENDS (LATEST)                   WAIT FROM
    now   Draining   6m     2026-12-06T12:07:00Z (in 5m)   2026-12-06T12:07:00Z (in 5m)    drain: tokens it signed live up to 300s + 60s verifier leeway
          Retiring   ≤10m   2026-12-06T12:07:00Z (in 5m)   2026-12-06T12:17:00Z (in 15m)   rollout: no pod serves the old key (at most rolloutTimeoutSeconds 600)
  ETA:            2026-12-06T12:07:00Z (in 5m) at the earliest, 2026-12-06T12:17:00Z at the latest
  Verifiers:      none reported yet (the operator reports those it sees fetching the JWKS during a rotation)
"#;
        assert_eq!(text, want);
    }

    #[test]
    fn idle_without_status_fields_still_renders() {
        let spec: MacpAuthSpec =
            serde_json::from_value(json!({"rotation": {"interval": "720h"}})).unwrap();
        let mut m = MacpAuth::new("auth", spec);
        m.metadata.namespace = Some("macp".into());
        let now = t("2026-12-06T12:00:00Z");
        let view = build(
            &m,
            &json!({"verifiers": [{"address": "10.0.0.7"}]}),
            &[],
            now,
        );
        let text = render(&view, now, true);
        assert!(
            text.contains("  Ready:          Unknown (no Ready condition yet)\n"),
            "{text}"
        );
        assert!(text.contains("  Phase:          Idle\n"), "{text}");
        assert!(
            text.contains(
                "  Standby:        none yet (one is prepared once no rotation is in flight)\n"
            ),
            "{text}"
        );
        assert!(text.contains("  Pods:\n    (none)\n"), "{text}");
        assert!(
            text.contains("  Next rotation:  not computed yet\n"),
            "{text}"
        );
        assert!(
            text.contains("  Verifiers:      1 observed\n    {\"address\":\"10.0.0.7\"}\n"),
            "{text}"
        );
        assert!(!text.contains("Remaining steps"), "{text}");
        let reported = json!({"verifiers": {
            "observed": 2, "holdingNewKid": 1, "longestIntervalSeconds": 30,
            "waitingFor": ["10.0.0.9"],
            "known": [{"id": "10.0.0.9 (gateway)", "lastFetch": "2026-12-06T11:59:00Z", "intervalSeconds": 30, "fetches": 12, "holdsNewKid": false}]
        }});
        let text = render(&build(&m, &reported, &[], now), now, false);
        assert!(
            text.ends_with(
                "  Verifiers:      2 observed, 1 hold the new kid, longest fetch interval 30s\n  \
                 Waiting for:    10.0.0.9\n    \
                 VERIFIER             LAST FETCH   INTERVAL   FETCHES   HOLDS NEW KID\n    \
                 10.0.0.9 (gateway)   60s ago      30s        12        false\n"
            ),
            "{text}"
        );
    }
}
