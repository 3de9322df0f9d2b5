//! `kubectl macp history`: the rotations the status records, newest last, and
//! the one in flight.

use chrono::{DateTime, Utc};
use macp_auth_operator::crd::{MacpAuthStatus, RotationPhase};

use crate::fmt;
use crate::table::Table;

fn lower<T: std::fmt::Debug>(v: T) -> String {
    format!("{v:?}").to_lowercase()
}

/// The history table; `wide` adds each record's message.
pub fn render(status: &MacpAuthStatus, now: DateTime<Utc>, wide: bool) -> String {
    let mut headers = vec![
        "trigger",
        "request id",
        "old kid",
        "new kid",
        "outcome",
        "started",
        "duration",
    ];
    if wide {
        headers.push("message");
    }
    let mut t = Table::new(&headers);
    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    for r in &status.history {
        let mut row = vec![
            lower(r.trigger),
            dash(&r.request_id),
            dash(&r.old_kid),
            dash(&r.new_kid),
            format!("{:?}", r.outcome),
            fmt::instant(r.started_at),
            fmt::short(fmt::secs_between(r.started_at, r.finished_at)),
        ];
        if wide {
            row.push(dash(&r.message));
        }
        t.row(row);
    }
    if let Some(r) = status
        .rotation
        .as_ref()
        .filter(|r| r.phase != RotationPhase::Idle)
    {
        let mut row = vec![
            r.trigger.map(lower).unwrap_or_else(|| "-".into()),
            dash(&r.request_id),
            dash(&r.old_kid),
            r.new_kid
                .clone()
                .or(r.pending_kid.clone())
                .unwrap_or_else(|| "-".into()),
            format!("({:?})", r.phase),
            r.started_at.map(fmt::instant).unwrap_or_else(|| "-".into()),
            r.started_at
                .map(|s| format!("{} so far", fmt::short(fmt::secs_between(s, now))))
                .unwrap_or_else(|| "-".into()),
        ];
        if wide {
            row.push(dash(&r.message));
        }
        t.row(row);
    }
    if t.is_empty() {
        return "No rotation recorded yet.\n".to_string();
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use macp_auth_operator::crd::{
        RotationOutcome, RotationRecord, RotationStatus, RotationTrigger,
    };

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn status() -> MacpAuthStatus {
        MacpAuthStatus {
            history: vec![
                RotationRecord {
                    trigger: RotationTrigger::Initial,
                    request_id: None,
                    old_kid: None,
                    new_kid: Some("k1".into()),
                    started_at: t("2026-12-06T10:00:00Z"),
                    finished_at: t("2026-12-06T10:00:00Z"),
                    outcome: RotationOutcome::Succeeded,
                    message: Some("first RS256 (2048 bits) key".into()),
                },
                RotationRecord {
                    trigger: RotationTrigger::Manual,
                    request_id: Some("rotate-1".into()),
                    old_kid: Some("k1".into()),
                    new_kid: Some("k2".into()),
                    started_at: t("2026-12-06T11:00:00Z"),
                    finished_at: t("2026-12-06T11:01:35Z"),
                    outcome: RotationOutcome::RolledBack,
                    message: Some("rolled back; the new key is discarded".into()),
                },
            ],
            rotation: Some(RotationStatus {
                phase: RotationPhase::Propagating,
                trigger: Some(RotationTrigger::Emergency),
                request_id: Some("INC-7-x1".into()),
                started_at: Some(t("2026-12-06T11:59:00Z")),
                old_kid: Some("k1".into()),
                pending_kid: Some("k3".into()),
                ..RotationStatus::default()
            }),
            ..MacpAuthStatus::default()
        }
    }

    #[test]
    fn history_renders_one_row_per_rotation_and_the_one_in_flight() {
        let now = t("2026-12-06T12:00:00Z");
        assert_eq!(
            render(&status(), now, false),
            "\
TRIGGER     REQUEST ID   OLD KID   NEW KID   OUTCOME         STARTED                DURATION
initial     -            -         k1        Succeeded       2026-12-06T10:00:00Z   0s
manual      rotate-1     k1        k2        RolledBack      2026-12-06T11:00:00Z   95s
emergency   INC-7-x1     k1        k3        (Propagating)   2026-12-06T11:59:00Z   60s so far
"
        );
        let wide = render(&status(), now, true);
        assert!(
            wide.lines()
                .next()
                .unwrap()
                .ends_with("DURATION     MESSAGE"),
            "{wide}"
        );
        assert!(
            wide.contains("rolled back; the new key is discarded"),
            "{wide}"
        );
        assert_eq!(
            render(&MacpAuthStatus::default(), now, false),
            "No rotation recorded yet.\n"
        );
    }
}
