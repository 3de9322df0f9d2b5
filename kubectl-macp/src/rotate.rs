//! `kubectl macp rotate`: the request id it writes, and how it reads the
//! rotation's progress and end from the status (pure; the client polls).
//!
//! The terminal's progress bar is one line redrawn with `\r` and an erase,
//! not `indicatif`: that crate would bring its own dependency tree for what
//! one formatted line does.

use chrono::{DateTime, Utc};
use macp_auth_operator::crd::{
    MacpAuthSpec, MacpAuthStatus, RotationOutcome, RotationPhase, RotationRecord, RotationStatus,
};

use crate::fmt;
use crate::steps::{self, Timed};

/// A fresh request id: the incident id with a unique suffix for an emergency,
/// else `rotate-<UTC time>-<suffix>`. The operator acts once per value, so a
/// repeated incident id must still make a new value.
pub fn request_id(incident: Option<&str>, now: DateTime<Utc>, random: u32) -> String {
    let suffix = format!("{:06x}", random & 0xff_ffff);
    match incident {
        Some(i) => format!("{i}-{suffix}"),
        None => format!("rotate-{}-{suffix}", now.format("%Y%m%dT%H%M%SZ")),
    }
}

/// An incident id must be one plain token: it becomes an annotation value,
/// event messages and a history entry.
pub fn check_incident(incident: &str) -> Result<(), String> {
    if incident.is_empty() {
        return Err("the incident id is empty".into());
    }
    if incident.len() > 200 {
        return Err("the incident id is longer than 200 characters".into());
    }
    if incident
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "the incident id {incident:?} contains spaces or control characters"
        ));
    }
    Ok(())
}

/// Where a request stands, as the status tells.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// The operator has not acted on it yet.
    Waiting,
    /// The operator saw it and put it off (a rotation in flight, or paused).
    Deferred,
    /// Its rotation is in this state.
    Running(RotationStatus),
    /// Its rotation ended.
    Finished(RotationRecord),
}

/// Where request `id` stands.
pub fn observe(status: &MacpAuthStatus, id: &str) -> Progress {
    if let Some(r) = status
        .history
        .iter()
        .rev()
        .find(|r| r.request_id.as_deref() == Some(id))
    {
        return Progress::Finished(r.clone());
    }
    match &status.rotation {
        Some(r) if r.request_id.as_deref() == Some(id) && r.phase != RotationPhase::Idle => {
            Progress::Running(r.clone())
        }
        Some(r) if r.deferred_request.as_deref() == Some(id) => Progress::Deferred,
        _ => Progress::Waiting,
    }
}

/// `Succeeded` is success; any other outcome is why the rotation did not do what was asked.
pub fn failure(record: &RotationRecord) -> Option<String> {
    if record.outcome == RotationOutcome::Succeeded {
        return None;
    }
    Some(format!(
        "{:?}{}",
        record.outcome,
        record
            .message
            .as_ref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    ))
}

/// Step `i` of `n` of the rotation's whole sequence (1-based), for a phase on it.
pub fn step_number(
    spec: &MacpAuthSpec,
    status: &MacpAuthStatus,
    rot: &RotationStatus,
) -> Option<(usize, usize)> {
    let retiring = rot.old_kid.as_deref().unwrap_or_default();
    let all = steps::sequence(spec, status, steps::Kind::of(rot), retiring);
    let i = all.iter().position(|s| s.phase == rot.phase)?;
    Some((i + 1, all.len()))
}

fn eta_text(remaining: &[Timed], now: DateTime<Utc>) -> String {
    match remaining.last() {
        Some(last) if last.earliest_end == last.latest_end => {
            format!("done {}", fmt::instant_rel(last.earliest_end, now))
        }
        Some(last) => format!(
            "done {} at the earliest, {} at the latest",
            fmt::instant_rel(last.earliest_end, now),
            fmt::instant(last.latest_end)
        ),
        None => "finishing".to_string(),
    }
}

/// One plain line per phase (not a terminal): `<time> <phase> (step i/n): <message>; <eta>`.
pub fn phase_line(spec: &MacpAuthSpec, status: &MacpAuthStatus, now: DateTime<Utc>) -> String {
    let rot = status.rotation.clone().unwrap_or_default();
    let step = step_number(spec, status, &rot)
        .map(|(i, n)| format!(" (step {i}/{n})"))
        .unwrap_or_default();
    let message = rot
        .message
        .as_ref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    format!(
        "{} {:?}{step}{message}; {}",
        fmt::instant(now),
        rot.phase,
        eta_text(&steps::eta(spec, status, now), now)
    )
}

/// A bar of `width` cells, `done` of 1 filled.
pub fn bar(done: f64, width: usize) -> String {
    let filled = ((done.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// The terminal's progress line: time elapsed against the earliest end.
pub fn progress_line(spec: &MacpAuthSpec, status: &MacpAuthStatus, now: DateTime<Utc>) -> String {
    let rot = status.rotation.clone().unwrap_or_default();
    let remaining = steps::eta(spec, status, now);
    let done = match (rot.started_at, remaining.last()) {
        (Some(start), Some(last)) => {
            let total = (last.earliest_end - start).num_milliseconds().max(1) as f64;
            (now - start).num_milliseconds() as f64 / total
        }
        _ => 0.0,
    };
    let step = step_number(spec, status, &rot)
        .map(|(i, n)| format!(" {i}/{n}"))
        .unwrap_or_default();
    format!(
        "{} {:?}{step}  {}",
        bar(done, 30),
        rot.phase,
        eta_text(&remaining, now)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use macp_auth_operator::crd::RotationTrigger;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn request_ids_are_fresh_and_name_the_incident() {
        let now = t("2026-12-06T12:00:00Z");
        assert_eq!(
            request_id(None, now, 0xabcdef),
            "rotate-20261206T120000Z-abcdef"
        );
        assert_eq!(
            request_id(Some("INC-42"), now, 0x1_000_001),
            "INC-42-000001"
        );
        assert!(check_incident("INC-42").is_ok());
        assert!(check_incident("").is_err());
        assert!(check_incident("INC 42").is_err());
    }

    fn record(id: &str, outcome: RotationOutcome) -> RotationRecord {
        RotationRecord {
            trigger: RotationTrigger::Manual,
            request_id: Some(id.into()),
            old_kid: None,
            new_kid: None,
            started_at: t("2026-12-06T12:00:00Z"),
            finished_at: t("2026-12-06T12:01:00Z"),
            outcome,
            message: Some("rolled back; the new key is discarded".into()),
        }
    }

    #[test]
    fn a_request_is_waiting_deferred_running_or_finished() {
        let mut st = MacpAuthStatus::default();
        assert_eq!(observe(&st, "r1"), Progress::Waiting);
        st.rotation = Some(RotationStatus {
            phase: RotationPhase::Draining,
            request_id: Some("other".into()),
            deferred_request: Some("r1".into()),
            ..RotationStatus::default()
        });
        assert_eq!(observe(&st, "r1"), Progress::Deferred);
        st.rotation = Some(RotationStatus {
            phase: RotationPhase::Publishing,
            request_id: Some("r1".into()),
            ..RotationStatus::default()
        });
        assert!(
            matches!(observe(&st, "r1"), Progress::Running(r) if r.phase == RotationPhase::Publishing)
        );
        st.history.push(record("r1", RotationOutcome::RolledBack));
        let Progress::Finished(r) = observe(&st, "r1") else {
            panic!("finished")
        };
        assert_eq!(
            failure(&r).as_deref(),
            Some("RolledBack: rolled back; the new key is discarded")
        );
        assert_eq!(failure(&record("r2", RotationOutcome::Succeeded)), None);
    }

    #[test]
    fn progress_shows_the_step_and_the_eta() {
        let spec: MacpAuthSpec = serde_json::from_value(serde_json::json!({
            "maxTtlSeconds": 5, "jwksCacheTtlSeconds": 2
        }))
        .unwrap();
        let rot = RotationStatus {
            phase: RotationPhase::Draining,
            trigger: Some(RotationTrigger::Manual),
            started_at: Some(t("2026-12-06T12:00:00Z")),
            phase_since: Some(t("2026-12-06T12:00:20Z")),
            wait_until: Some(t("2026-12-06T12:01:25Z")),
            message: Some("k2 signs".into()),
            ..RotationStatus::default()
        };
        let now = t("2026-12-06T12:00:25Z");
        let status = MacpAuthStatus {
            rotation: Some(rot),
            ..MacpAuthStatus::default()
        };
        assert_eq!(
            phase_line(&spec, &status, now),
            "2026-12-06T12:00:25Z Draining (step 5/6): k2 signs; done 2026-12-06T12:01:25Z (in 60s) at the earliest, 2026-12-06T12:11:25Z at the latest"
        );
        // 25 s of 85 s to the earliest end.
        assert_eq!(
            progress_line(&spec, &status, now),
            "[#########.....................] Draining 5/6  done 2026-12-06T12:01:25Z (in 60s) at the earliest, 2026-12-06T12:11:25Z at the latest"
        );
        // The propagated standby's rotation has no publishing step to count.
        let mut from_standby = status.clone();
        if let Some(r) = from_standby.rotation.as_mut() {
            r.from_standby = true;
        }
        assert!(
            phase_line(&spec, &from_standby, now).contains("Draining (step 3/4)"),
            "{}",
            phase_line(&spec, &from_standby, now)
        );
        assert_eq!(bar(2.0, 4), "[####]");
        assert_eq!(bar(-1.0, 4), "[....]");
    }
}
