//! The emergency TTL clamp: while an emergency rotation runs and for
//! `rotation.drainSeconds` after it, the token service runs with
//! `spec.emergency.maxTtlSeconds` as its max TTL, then with the normal one
//! again. This automates the runbook's "shorten MACP_AUTH_MAX_TTL_SECONDS
//! temporarily" and, above all, its undoing, which people forget.
//!
//! Pure: the decision depends only on the spec, the status and `now`, so a
//! restarted operator renders exactly what its predecessor rendered. The
//! window is derived from the rotation status and the history (the incident
//! record), never from a timer held in memory.

use chrono::{DateTime, Utc};

use crate::crd::{MacpAuthSpec, MacpAuthStatus, RotationPhase, RotationTrigger, TtlClampStatus};

/// The TTLs the service runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TtlLimits {
    pub max_ttl_seconds: i64,
    pub default_ttl_seconds: i64,
}

/// An active clamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Clamp {
    /// The lowered max TTL.
    pub max_ttl_seconds: i64,
    /// End of the window; `None` while the emergency rotation is in flight
    /// (its end is not known yet, the rotation machine's own requeue covers it).
    pub until: Option<DateTime<Utc>>,
}

impl Clamp {
    pub(crate) fn to_status(self) -> TtlClampStatus {
        TtlClampStatus {
            max_ttl_seconds: self.max_ttl_seconds,
            until: self.until,
        }
    }
}

/// How long the reconciler may wait before it must lift `clamp` (none for an
/// in-flight clamp: the rotation machine requeues while its rotation runs).
/// One second late on purpose: at exactly `until` the clamp is already off,
/// and a timer a hair early would find it still on.
pub(crate) fn requeue_after(
    clamp: Option<&Clamp>,
    now: DateTime<Utc>,
) -> Option<std::time::Duration> {
    let until = clamp?.until?;
    let left = (until - now).to_std().unwrap_or(std::time::Duration::ZERO);
    Some(left + std::time::Duration::from_secs(1))
}

/// Whether the clamp is active at `now`, and until when.
///
/// `None` when no emergency max TTL is configured, when it would not lower
/// anything (it is at least `maxTtlSeconds`), or outside the window. The
/// window is: an emergency rotation in flight (`trigger: emergency`, phase not
/// `Idle`), or less than `drainSeconds` since the newest emergency in the
/// history finished, whatever its outcome (the incident happened either way).
pub(crate) fn clamp_at(
    spec: &MacpAuthSpec,
    status: &MacpAuthStatus,
    now: DateTime<Utc>,
) -> Option<Clamp> {
    let cap = spec.emergency.as_ref()?.max_ttl_seconds;
    if cap >= spec.max_ttl_seconds {
        return None;
    }
    let max_ttl_seconds = cap;
    let in_flight = status.rotation.as_ref().is_some_and(|r| {
        r.trigger == Some(RotationTrigger::Emergency) && r.phase != RotationPhase::Idle
    });
    if in_flight {
        return Some(Clamp {
            max_ttl_seconds,
            until: None,
        });
    }
    let finished = status
        .history
        .iter()
        .filter(|r| r.trigger == RotationTrigger::Emergency)
        .map(|r| r.finished_at)
        .max()?;
    let drain = chrono::Duration::seconds(spec.effective_drain_seconds().max(0));
    // Saturates instead of panicking on an absurd drain: the clamp then simply stays.
    let until = finished
        .checked_add_signed(drain)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    (now < until).then_some(Clamp {
        max_ttl_seconds,
        until: Some(until),
    })
}

/// The TTLs to render: the spec's, or clamped (the default never exceeds the max).
pub(crate) fn limits(spec: &MacpAuthSpec, clamp: Option<&Clamp>) -> TtlLimits {
    let max_ttl_seconds = clamp.map_or(spec.max_ttl_seconds, |c| {
        c.max_ttl_seconds.min(spec.max_ttl_seconds)
    });
    TtlLimits {
        max_ttl_seconds,
        default_ttl_seconds: spec.default_ttl_seconds.min(max_ttl_seconds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{RotationOutcome, RotationRecord, RotationStatus};
    use crate::fixtures::spec;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    fn clamped_spec() -> MacpAuthSpec {
        spec(serde_json::json!({
            "maxTtlSeconds": 3600, "defaultTtlSeconds": 900,
            "rotation": {"drainSeconds": 600},
            "emergency": {"maxTtlSeconds": 300}
        }))
    }

    fn record(trigger: RotationTrigger, finished: i64) -> RotationRecord {
        RotationRecord {
            trigger,
            request_id: Some("INC-1".into()),
            old_kid: Some("a".into()),
            new_kid: Some("b".into()),
            started_at: t(finished - 10),
            finished_at: t(finished),
            outcome: RotationOutcome::Succeeded,
            message: None,
        }
    }

    fn in_flight(trigger: RotationTrigger, phase: RotationPhase) -> MacpAuthStatus {
        MacpAuthStatus {
            rotation: Some(RotationStatus {
                phase,
                trigger: Some(trigger),
                ..RotationStatus::default()
            }),
            ..MacpAuthStatus::default()
        }
    }

    #[test]
    fn off_without_an_emergency_setting() {
        let s = spec(serde_json::json!({}));
        let st = in_flight(RotationTrigger::Emergency, RotationPhase::Activating);
        assert_eq!(clamp_at(&s, &st, t(0)), None);
        assert_eq!(
            limits(&s, None),
            TtlLimits {
                max_ttl_seconds: 3600,
                default_ttl_seconds: 300
            }
        );
    }

    #[test]
    fn active_while_an_emergency_is_in_flight() {
        let s = clamped_spec();
        for phase in [RotationPhase::KeyGenerated, RotationPhase::Activating] {
            let c = clamp_at(&s, &in_flight(RotationTrigger::Emergency, phase), t(0));
            assert_eq!(
                c,
                Some(Clamp {
                    max_ttl_seconds: 300,
                    until: None
                })
            );
            assert_eq!(
                limits(&s, c.as_ref()),
                TtlLimits {
                    max_ttl_seconds: 300,
                    default_ttl_seconds: 300
                }
            );
        }
        // A routine rotation, or an Idle leftover with an emergency trigger, is no emergency.
        let routine = in_flight(RotationTrigger::Manual, RotationPhase::Activating);
        assert_eq!(clamp_at(&s, &routine, t(0)), None);
        let idle = in_flight(RotationTrigger::Emergency, RotationPhase::Idle);
        assert_eq!(clamp_at(&s, &idle, t(0)), None);
    }

    #[test]
    fn lasts_drain_seconds_after_the_emergency_then_lifts() {
        let s = clamped_spec();
        let st = MacpAuthStatus {
            history: vec![
                record(RotationTrigger::Emergency, 100),
                record(RotationTrigger::Manual, 200),
            ],
            ..MacpAuthStatus::default()
        };
        let expected = Some(Clamp {
            max_ttl_seconds: 300,
            until: Some(t(700)),
        });
        assert_eq!(clamp_at(&s, &st, t(100)), expected);
        assert_eq!(clamp_at(&s, &st, t(699)), expected);
        // The boundary itself is outside: the requeue at `until` restores.
        assert_eq!(clamp_at(&s, &st, t(700)), None);
        assert_eq!(clamp_at(&s, &st, t(10_000)), None);
        assert_eq!(
            limits(&s, None),
            TtlLimits {
                max_ttl_seconds: 3600,
                default_ttl_seconds: 900
            }
        );
    }

    #[test]
    fn the_newest_emergency_counts_and_the_default_drain_applies() {
        // No drainSeconds: maxTtlSeconds + 60 = 3660.
        let s = spec(serde_json::json!({"emergency": {"maxTtlSeconds": 120}}));
        let st = MacpAuthStatus {
            history: vec![
                record(RotationTrigger::Emergency, 5000),
                record(RotationTrigger::Emergency, 100),
            ],
            ..MacpAuthStatus::default()
        };
        assert_eq!(clamp_at(&s, &st, t(8000)).unwrap().until, Some(t(8660)));
        let routine_only = MacpAuthStatus {
            history: vec![record(RotationTrigger::Scheduled, 100)],
            ..MacpAuthStatus::default()
        };
        assert_eq!(clamp_at(&s, &routine_only, t(101)), None);
    }

    #[test]
    fn requeue_at_the_end_of_the_window() {
        let c = Clamp {
            max_ttl_seconds: 300,
            until: Some(t(700)),
        };
        assert_eq!(
            requeue_after(Some(&c), t(100)),
            Some(std::time::Duration::from_secs(601))
        );
        assert_eq!(
            requeue_after(Some(&c), t(800)),
            Some(std::time::Duration::from_secs(1))
        );
        let in_flight = Clamp { until: None, ..c };
        assert_eq!(requeue_after(Some(&in_flight), t(100)), None);
        assert_eq!(requeue_after(None, t(100)), None);
    }

    #[test]
    fn a_cap_that_lowers_nothing_is_no_clamp() {
        let s =
            spec(serde_json::json!({"maxTtlSeconds": 600, "emergency": {"maxTtlSeconds": 600}}));
        let st = in_flight(RotationTrigger::Emergency, RotationPhase::Activating);
        assert_eq!(clamp_at(&s, &st, t(0)), None);
    }

    #[test]
    fn default_below_the_cap_is_kept() {
        let s =
            spec(serde_json::json!({"defaultTtlSeconds": 60, "emergency": {"maxTtlSeconds": 300}}));
        let c = Clamp {
            max_ttl_seconds: 300,
            until: None,
        };
        assert_eq!(
            limits(&s, Some(&c)),
            TtlLimits {
                max_ttl_seconds: 300,
                default_ttl_seconds: 60
            }
        );
        assert_eq!(
            c.to_status(),
            TtlClampStatus {
                max_ttl_seconds: 300,
                until: None
            }
        );
    }
}
