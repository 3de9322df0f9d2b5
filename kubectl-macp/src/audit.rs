//! `kubectl macp audit --kid`: who minted with a kid, from the token service's
//! mint audit lines (service/src/audit.rs: one JSON object per line, `event`
//! `mint`, on each pod's stdout), and how complete that answer is.
//!
//! Everything here is pure: the client reads the logs, this parses, filters,
//! counts and says which part of the kid's signing time no readable pod covers.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use macp_auth_operator::crd::{MacpAuthStatus, RotationOutcome};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fmt;
use crate::table::Table;

/// One mint audit line as the service writes it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct AuditLine {
    pub ts: DateTime<Utc>,
    pub event: String,
    #[serde(default)]
    pub caller: Option<String>,
    #[serde(default)]
    pub client: Option<String>,
    #[serde(default)]
    pub sender: Option<String>,
    #[serde(default)]
    pub scopes: Option<Value>,
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    pub kid: String,
    pub status: u16,
    pub outcome: String,
}

/// A mint audit line, or `None` for any other output (startup lines, logs).
pub fn parse(line: &str) -> Option<AuditLine> {
    let line = line.trim();
    if !line.starts_with('{') {
        return None;
    }
    serde_json::from_str::<AuditLine>(line)
        .ok()
        .filter(|l| l.event == "mint")
}

/// One mint with the kid, and the pod whose log holds it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mint {
    pub pod: String,
    pub ts: DateTime<Utc>,
    /// The caller identity (`caller-<hash>`) with caller authentication on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The token's subject (`sender`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    pub status: u16,
    /// `issued`, or the error the caller got.
    pub outcome: String,
}

impl Mint {
    pub fn issued(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Who asked: the caller identity, else the client's address without its
    /// port (each connection has its own).
    pub fn who(&self) -> String {
        if let Some(c) = &self.caller {
            return c.clone();
        }
        match &self.client {
            Some(addr) => {
                let host = match addr.rsplit_once(':') {
                    Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
                    _ => addr.as_str(),
                };
                format!(
                    "client {}",
                    host.trim_start_matches('[').trim_end_matches(']')
                )
            }
            None => "unknown".to_string(),
        }
    }
}

/// The mints with `kid` in one pod's log, at or after `since`.
pub fn mints_in_log(pod: &str, log: &str, kid: &str, since: Option<DateTime<Utc>>) -> Vec<Mint> {
    log.lines()
        .filter_map(parse)
        .filter(|l| l.kid == kid && since.is_none_or(|s| l.ts >= s))
        .map(|l| Mint {
            pod: pod.to_string(),
            ts: l.ts,
            caller: l.caller,
            client: l.client,
            subject: l.sender,
            ttl_seconds: l.ttl_seconds,
            status: l.status,
            outcome: l.outcome,
        })
        .collect()
}

/// Mints per caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallerCount {
    pub caller: String,
    pub issued: u64,
    pub refused: u64,
    pub subjects: BTreeSet<String>,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

/// Counts per caller, the most tokens first.
pub fn per_caller(mints: &[Mint]) -> Vec<CallerCount> {
    let mut by: BTreeMap<String, CallerCount> = BTreeMap::new();
    for m in mints {
        let who = m.who();
        let c = by.entry(who.clone()).or_insert_with(|| CallerCount {
            caller: who,
            issued: 0,
            refused: 0,
            subjects: BTreeSet::new(),
            first: m.ts,
            last: m.ts,
        });
        if m.issued() {
            c.issued += 1;
        } else {
            c.refused += 1;
        }
        if let Some(s) = &m.subject {
            c.subjects.insert(s.clone());
        }
        c.first = c.first.min(m.ts);
        c.last = c.last.max(m.ts);
    }
    let mut out: Vec<CallerCount> = by.into_values().collect();
    out.sort_by(|a, b| {
        b.issued
            .cmp(&a.issued)
            .then_with(|| a.caller.cmp(&b.caller))
    });
    out
}

/// When `kid` could sign: from the start of the rotation that made it (or
/// its creation time) to the end of the one that replaced it; `None` as the
/// end while it may still sign. `None` when nothing tells when it began.
pub fn signing_window(
    status: &MacpAuthStatus,
    kid: &str,
) -> Option<(DateTime<Utc>, Option<DateTime<Utc>>)> {
    let made = status
        .history
        .iter()
        .find(|r| r.new_kid.as_deref() == Some(kid));
    let in_flight = status
        .rotation
        .as_ref()
        .filter(|r| r.new_kid.as_deref() == Some(kid) || r.pending_kid.as_deref() == Some(kid));
    let start = made
        .map(|r| r.started_at)
        .or_else(|| in_flight.and_then(|r| r.started_at))
        .or_else(|| crate::status::kid_time(kid))?;
    let replaced = status
        .history
        .iter()
        .find(|r| r.old_kid.as_deref() == Some(kid) && r.outcome == RotationOutcome::Succeeded)
        .map(|r| r.finished_at);
    let discarded = made
        .filter(|r| r.outcome != RotationOutcome::Succeeded)
        .map(|r| r.finished_at);
    Some((start, replaced.or(discarded)))
}

/// A stretch of the kid's signing time that no readable pod's log covers:
/// the pods that ran then are gone, and their audit lines with them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Gap {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// The part of `[window start or since, window end]` before the earliest
/// start of a pod whose log was read.
pub fn uncovered(
    window: (DateTime<Utc>, Option<DateTime<Utc>>),
    since: Option<DateTime<Utc>>,
    readable_starts: &[DateTime<Utc>],
    now: DateTime<Utc>,
) -> Option<Gap> {
    let from = since.map_or(window.0, |s| s.max(window.0));
    let earliest = readable_starts.iter().min().copied();
    let to = match (earliest, window.1) {
        (Some(e), Some(end)) => e.min(end),
        (Some(e), None) => e,
        // No pod read: nothing of the window is covered.
        (None, Some(end)) => end,
        (None, None) => now,
    };
    (to > from).then_some(Gap { from, to })
}

/// Caller, subject, TTL and outcome: one row of who minted what.
type GroupKey = (String, String, String, String);

/// A pod whose log could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unreadable {
    pub pod: String,
    pub reason: String,
}

/// The whole answer of `audit`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub namespace: String,
    pub name: String,
    pub kid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    pub audit_enabled: bool,
    pub pods_read: Vec<String>,
    pub pods_unreadable: Vec<Unreadable>,
    /// Pods known from Events that no longer exist.
    pub pods_gone: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncovered: Option<Gap>,
    /// False when any of the above means mints may be missing.
    pub complete: bool,
    pub issued: u64,
    pub refused: u64,
    pub callers: Vec<CallerCount>,
    pub mints: Vec<Mint>,
}

impl Report {
    /// Assembles the report; `complete` follows from the rest.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        namespace: &str,
        name: &str,
        kid: &str,
        since: Option<DateTime<Utc>>,
        audit_enabled: bool,
        pods_read: Vec<String>,
        pods_unreadable: Vec<Unreadable>,
        pods_gone: Vec<String>,
        uncovered: Option<Gap>,
        mut mints: Vec<Mint>,
    ) -> Self {
        mints.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.pod.cmp(&b.pod)));
        let issued = mints.iter().filter(|m| m.issued()).count() as u64;
        let refused = mints.len() as u64 - issued;
        let complete = audit_enabled
            && pods_unreadable.is_empty()
            && pods_gone.is_empty()
            && uncovered.is_none();
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            kid: kid.to_string(),
            since,
            audit_enabled,
            pods_read,
            pods_unreadable,
            pods_gone,
            uncovered,
            complete,
            issued,
            refused,
            callers: per_caller(&mints),
            mints,
        }
    }

    /// The text answer: a warning per reason the answer may be incomplete,
    /// who minted what (grouped; every mint with `wide`), and the counts.
    pub fn render(&self, wide: bool) -> String {
        let mut out = format!(
            "Mint audit of kid {} in MacpAuth {}/{}{}\n",
            self.kid,
            self.namespace,
            self.name,
            self.since
                .map(|s| format!(" since {}", fmt::instant(s)))
                .unwrap_or_default()
        );
        if !self.audit_enabled {
            out.push_str(&format!(
                "WARNING: the mint audit log is off (spec.audit.enabled is not true): the pods print no audit lines, \
                 so mints are not recorded. Turn it on: kubectl patch macpauth -n {} {} --type merge -p '{{\"spec\":{{\"audit\":{{\"enabled\":true}}}}}}'\n",
                self.namespace, self.name
            ));
        }
        out.push_str(&format!(
            "Pods read: {}\n",
            if self.pods_read.is_empty() {
                "none".to_string()
            } else {
                self.pods_read.join(", ")
            }
        ));
        for u in &self.pods_unreadable {
            out.push_str(&format!("WARNING: pod {} not read: {}\n", u.pod, u.reason));
        }
        if !self.pods_gone.is_empty() {
            out.push_str(&format!(
                "WARNING: pods gone, their logs with them: {}\n",
                self.pods_gone.join(", ")
            ));
        }
        if let Some(g) = &self.uncovered {
            out.push_str(&format!(
                "WARNING: no pod running now ran between {} and {}, while {} could sign: the pods that did are gone, and so are their audit lines. \
                 A log collector keeps them beyond the pods' lifetimes (docs/kubectl-macp.md).\n",
                fmt::instant(g.from),
                fmt::instant(g.to),
                self.kid
            ));
        }
        out.push('\n');
        if self.mints.is_empty() {
            out.push_str("No mint with this kid in the logs read.\n");
        } else if wide {
            let mut t = Table::new(&[
                "time", "pod", "caller", "subject", "ttl", "status", "outcome",
            ]);
            for m in &self.mints {
                t.row([
                    fmt::instant(m.ts),
                    m.pod.clone(),
                    m.who(),
                    m.subject.clone().unwrap_or_else(|| "-".into()),
                    m.ttl_seconds
                        .map(|t| format!("{t}s"))
                        .unwrap_or_else(|| "-".into()),
                    m.status.to_string(),
                    m.outcome.clone(),
                ]);
            }
            out.push_str(&t.render());
        } else {
            // Who minted what: one row per caller, subject, TTL and outcome.
            let mut groups: BTreeMap<GroupKey, (u64, DateTime<Utc>, DateTime<Utc>)> =
                BTreeMap::new();
            for m in &self.mints {
                let key = (
                    m.who(),
                    m.subject.clone().unwrap_or_else(|| "-".into()),
                    m.ttl_seconds
                        .map(|t| format!("{t}s"))
                        .unwrap_or_else(|| "-".into()),
                    m.outcome.clone(),
                );
                let e = groups.entry(key).or_insert((0, m.ts, m.ts));
                e.0 += 1;
                e.1 = e.1.min(m.ts);
                e.2 = e.2.max(m.ts);
            }
            let mut t = Table::new(&[
                "caller", "subject", "ttl", "outcome", "tokens", "first", "last",
            ]);
            for ((who, subject, ttl, outcome), (n, first, last)) in groups {
                t.row([
                    who,
                    subject,
                    ttl,
                    outcome,
                    n.to_string(),
                    fmt::instant(first),
                    fmt::instant(last),
                ]);
            }
            out.push_str(&t.render());
            out.push_str("\nPer caller:\n");
            let mut t = Table::new(&["caller", "issued", "refused", "subjects"]);
            for c in &self.callers {
                t.row([
                    c.caller.clone(),
                    c.issued.to_string(),
                    c.refused.to_string(),
                    c.subjects.iter().cloned().collect::<Vec<_>>().join(","),
                ]);
            }
            out.push_str(&t.render());
        }
        out.push_str(&format!(
            "\n{} tokens issued with {} ({} refused) to {} callers; {}\n",
            self.issued,
            self.kid,
            self.refused,
            self.callers.iter().filter(|c| c.issued > 0).count(),
            if self.complete {
                "every pod that could have signed with it was read."
            } else {
                "the answer MAY BE INCOMPLETE (see the warnings above)."
            }
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use macp_auth_operator::crd::{RotationRecord, RotationTrigger};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    const LOG: &str = r#"[auth-service] listening on port 3200
{"ts":"2026-12-06T12:00:01.000Z","event":"mint","caller":null,"client":"10.0.0.5:51234","sender":"agent://a","scopes":{},"ttl_seconds":60,"kid":"k2","alg":"RS256","status":200,"outcome":"issued"}
{"ts":"2026-12-06T12:00:02.000Z","event":"mint","caller":"caller-1a2b","client":"10.0.0.6:40000","sender":"agent://b","scopes":null,"ttl_seconds":600,"kid":"k2","alg":"RS256","status":200,"outcome":"issued"}
{"ts":"2026-12-06T12:00:03.000Z","event":"mint","caller":"caller-1a2b","client":"10.0.0.6:40001","sender":"agent://b","scopes":null,"ttl_seconds":9000,"kid":"k2","alg":"RS256","status":400,"outcome":"ttl_seconds exceeds the maximum"}
{"ts":"2026-12-06T12:00:04.000Z","event":"mint","caller":null,"client":"10.0.0.5:51299","sender":"agent://a","scopes":{},"ttl_seconds":60,"kid":"k1","alg":"RS256","status":200,"outcome":"issued"}
{"ts":"2026-12-06T12:00:05.000Z","event":"mint","caller":null,"client":"[::1]:51300","sender":"agent://c","scopes":{},"ttl_seconds":60,"kid":"k2","alg":"RS256","status":200,"outcome":"issued"}
{"level":"INFO","message":"not an audit line"}
{"ts":"2026-12-06T12:00:06.000Z","event":"mint","kid":"k2"
"#;

    #[test]
    fn only_complete_mint_lines_with_the_kid_count() {
        let mints = mints_in_log("auth-0", LOG, "k2", None);
        assert_eq!(mints.len(), 4);
        assert_eq!(mints[0].who(), "client 10.0.0.5");
        assert_eq!(mints[1].who(), "caller-1a2b");
        assert_eq!(mints[3].who(), "client ::1");
        assert_eq!(mints[0].subject.as_deref(), Some("agent://a"));
        assert_eq!(mints[1].ttl_seconds, Some(600));
        assert!(!mints[2].issued());
        let since = mints_in_log("auth-0", LOG, "k2", Some(t("2026-12-06T12:00:02Z")));
        assert_eq!(since.len(), 3);
    }

    #[test]
    fn callers_are_counted_most_tokens_first() {
        let mut mints = mints_in_log("auth-0", LOG, "k2", None);
        mints.extend(mints_in_log("auth-1", LOG, "k2", None));
        let c = per_caller(&mints);
        let counts: Vec<(&str, u64, u64)> = c
            .iter()
            .map(|c| (c.caller.as_str(), c.issued, c.refused))
            .collect();
        assert_eq!(
            counts,
            [
                ("caller-1a2b", 2, 2),
                ("client 10.0.0.5", 2, 0),
                ("client ::1", 2, 0)
            ]
        );
        assert_eq!(c[0].first, t("2026-12-06T12:00:02Z"));
        assert_eq!(c[0].last, t("2026-12-06T12:00:03Z"));
    }

    fn record(
        old: Option<&str>,
        new: &str,
        start: &str,
        end: &str,
        outcome: RotationOutcome,
    ) -> RotationRecord {
        RotationRecord {
            trigger: RotationTrigger::Manual,
            request_id: None,
            old_kid: old.map(str::to_string),
            new_kid: Some(new.to_string()),
            started_at: t(start),
            finished_at: t(end),
            outcome,
            message: None,
        }
    }

    #[test]
    fn a_kid_signs_from_the_rotation_that_made_it_to_the_one_that_replaced_it() {
        let status = MacpAuthStatus {
            history: vec![
                record(
                    None,
                    "k1",
                    "2026-12-06T10:00:00Z",
                    "2026-12-06T10:00:00Z",
                    RotationOutcome::Succeeded,
                ),
                record(
                    Some("k1"),
                    "k2",
                    "2026-12-06T11:00:00Z",
                    "2026-12-06T11:02:00Z",
                    RotationOutcome::Succeeded,
                ),
                record(
                    Some("k2"),
                    "k3",
                    "2026-12-06T11:30:00Z",
                    "2026-12-06T11:31:00Z",
                    RotationOutcome::RolledBack,
                ),
                record(
                    Some("k2"),
                    "k4",
                    "2026-12-06T12:00:00Z",
                    "2026-12-06T12:05:00Z",
                    RotationOutcome::Succeeded,
                ),
            ],
            ..MacpAuthStatus::default()
        };
        assert_eq!(
            signing_window(&status, "k2"),
            Some((t("2026-12-06T11:00:00Z"), Some(t("2026-12-06T12:05:00Z"))))
        );
        // A rolled-back key may have signed until its rotation ended.
        assert_eq!(
            signing_window(&status, "k3"),
            Some((t("2026-12-06T11:30:00Z"), Some(t("2026-12-06T11:31:00Z"))))
        );
        assert_eq!(
            signing_window(&status, "k4"),
            Some((t("2026-12-06T12:00:00Z"), None))
        );
        assert_eq!(signing_window(&status, "unknown"), None);
    }

    #[test]
    fn what_no_readable_pod_covers_is_reported() {
        let now = t("2026-12-06T13:00:00Z");
        let window = (t("2026-12-06T11:00:00Z"), Some(t("2026-12-06T12:00:00Z")));
        // A pod running since before the window covers all of it.
        assert_eq!(
            uncovered(window, None, &[t("2026-12-06T10:00:00Z")], now),
            None
        );
        // Pods started later: the start of the window is lost.
        assert_eq!(
            uncovered(
                window,
                None,
                &[t("2026-12-06T11:40:00Z"), t("2026-12-06T11:20:00Z")],
                now
            ),
            Some(Gap {
                from: t("2026-12-06T11:00:00Z"),
                to: t("2026-12-06T11:20:00Z")
            })
        );
        // Every pod started after the kid stopped signing: all of it is lost.
        assert_eq!(
            uncovered(window, None, &[t("2026-12-06T12:30:00Z")], now),
            Some(Gap {
                from: t("2026-12-06T11:00:00Z"),
                to: t("2026-12-06T12:00:00Z")
            })
        );
        // --since after the loss: nothing missing.
        assert_eq!(
            uncovered(
                window,
                Some(t("2026-12-06T11:30:00Z")),
                &[t("2026-12-06T11:20:00Z")],
                now
            ),
            None
        );
        // No pod to read while the kid still signs: everything up to now is lost.
        assert_eq!(
            uncovered((window.0, None), None, &[], now),
            Some(Gap {
                from: window.0,
                to: now
            })
        );
    }

    #[test]
    fn the_report_says_when_it_may_be_incomplete() {
        let mints = mints_in_log("auth-0", LOG, "k2", None);
        let full = Report::new(
            "macp",
            "auth",
            "k2",
            None,
            true,
            vec!["auth-0".into()],
            vec![],
            vec![],
            None,
            mints.clone(),
        );
        assert!(full.complete);
        assert_eq!(
            full.render(false),
            r#"Mint audit of kid k2 in MacpAuth macp/auth
Pods read: auth-0

CALLER            SUBJECT     TTL     OUTCOME                           TOKENS   FIRST                  LAST
caller-1a2b       agent://b   600s    issued                            1        2026-12-06T12:00:02Z   2026-12-06T12:00:02Z
caller-1a2b       agent://b   9000s   ttl_seconds exceeds the maximum   1        2026-12-06T12:00:03Z   2026-12-06T12:00:03Z
client 10.0.0.5   agent://a   60s     issued                            1        2026-12-06T12:00:01Z   2026-12-06T12:00:01Z
client ::1        agent://c   60s     issued                            1        2026-12-06T12:00:05Z   2026-12-06T12:00:05Z

Per caller:
CALLER            ISSUED   REFUSED   SUBJECTS
caller-1a2b       1        1         agent://b
client 10.0.0.5   1        0         agent://a
client ::1        1        0         agent://c

3 tokens issued with k2 (1 refused) to 3 callers; every pod that could have signed with it was read.
"#
        );
        let gone = Report::new(
            "macp",
            "auth",
            "k2",
            None,
            false,
            vec![],
            vec![Unreadable {
                pod: "auth-9".into(),
                reason: "404".into(),
            }],
            vec![],
            Some(Gap {
                from: t("2026-12-06T11:00:00Z"),
                to: t("2026-12-06T11:20:00Z"),
            }),
            vec![],
        );
        assert!(!gone.complete);
        // The audit log off alone makes the answer incomplete.
        let off = Report::new(
            "macp",
            "auth",
            "k2",
            None,
            false,
            vec!["auth-0".into()],
            vec![],
            vec![],
            None,
            mints.clone(),
        );
        assert!(!off.complete);
        let text = gone.render(false);
        assert!(text.contains("the mint audit log is off"), "{text}");
        assert!(text.contains("WARNING: pod auth-9 not read: 404"), "{text}");
        assert!(
            text.contains(
                "no pod running now ran between 2026-12-06T11:00:00Z and 2026-12-06T11:20:00Z"
            ),
            "{text}"
        );
        assert!(text.contains("MAY BE INCOMPLETE"), "{text}");
        let json = serde_json::to_value(&gone).unwrap();
        assert_eq!(json["complete"], false);
        assert_eq!(json["podsUnreadable"][0]["pod"], "auth-9");
    }
}
