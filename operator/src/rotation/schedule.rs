//! `spec.rotation.interval` parsing and the `nextRotationTime` schedule.
//!
//! The interval grammar is the CRD's pattern, `^([0-9]+(ns|us|ms|s|m|h|d))+$`
//! (Go durations plus days). It is parsed here rather than with `humantime`
//! so that exactly the strings the API server accepts parse, no more and no
//! fewer (humantime also accepts spaces, `min`, `weeks`, ...).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::crd::{MacpAuthSpec, MacpAuthStatus, RotationOutcome};
use crate::rotation::PROPAGATION_SLACK_SECONDS;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntervalError {
    #[error("rotation interval {0:?} is empty")]
    Empty(String),
    #[error("rotation interval {0:?} is not a duration like 720h or 1h30m")]
    Syntax(String),
    #[error("rotation interval {0:?} is too long")]
    Overflow(String),
    #[error("rotation interval {0:?} must be positive")]
    Zero(String),
}

/// Parses an interval such as `720h`, `1h30m` or `7d`.
pub fn parse_interval(text: &str) -> Result<Duration, IntervalError> {
    if text.is_empty() {
        return Err(IntervalError::Empty(text.to_string()));
    }
    let syntax = || IntervalError::Syntax(text.to_string());
    let overflow = || IntervalError::Overflow(text.to_string());
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(syntax)?;
        if digits == 0 {
            return Err(syntax());
        }
        let amount: u64 = rest[..digits].parse().map_err(|_| overflow())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let nanos_per: u64 = match &rest[..unit_len] {
            "ns" => 1,
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return Err(syntax()),
        };
        rest = &rest[unit_len..];
        let nanos = amount.checked_mul(nanos_per).ok_or_else(overflow)?;
        total = total
            .checked_add(Duration::from_nanos(nanos))
            .ok_or_else(overflow)?;
    }
    // chrono cannot represent instants arbitrarily far away; a century is plenty.
    if total > Duration::from_secs(100 * 365 * 86_400) {
        return Err(overflow());
    }
    if total.is_zero() {
        return Err(IntervalError::Zero(text.to_string()));
    }
    Ok(total)
}

/// Converts a std duration to chrono (saturating; callers bound their inputs).
fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Adds a duration to an instant, saturating far in the future instead of panicking.
pub fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(chrono_duration(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Adds whole seconds (spec values, never negative in a valid resource) to an instant.
pub(crate) fn add_secs(t: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    add(t, Duration::from_secs(secs.max(0).unsigned_abs()))
}

/// Time left until `t`, zero when it has passed.
pub fn until(now: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    (t - now).to_std().unwrap_or(Duration::ZERO)
}

/// The instant the schedule is measured from: the active key's activation
/// (`lastRotationTime`, when every pod signs with it), or, before any
/// rotation, the creation of the first key (its history entry). Not the end
/// of the last rotation: that comes a drain later, and the key has signed
/// since its activation.
pub fn schedule_base(status: &MacpAuthStatus) -> Option<DateTime<Utc>> {
    status
        .last_rotation_time
        .or_else(|| status.history.iter().map(|r| r.finished_at).max())
}

/// The rollouts between a rotation's start and the moment its key signs on
/// every pod (publish and activate, or activate alone without
/// `prepublish`), plus one for the rollout that activated the current key:
/// its first pods signed up to one rollout before `lastRotationTime`.
fn rollouts_to_activation(spec: &MacpAuthSpec) -> u32 {
    if spec.rotation.prepublish { 3 } else { 2 }
}

/// The longest propagation wait of a rotation, only with `prepublish`: the
/// verifiers' cache TTL plus [`PROPAGATION_SLACK_SECONDS`], or, with
/// verifier evidence, up to its ceiling (`propagationTimeoutSeconds`) while
/// a verifier has not fetched the new key.
pub(crate) fn propagation_wait(spec: &MacpAuthSpec) -> Duration {
    if !spec.rotation.prepublish {
        return Duration::ZERO;
    }
    let wait = spec
        .jwks_cache_ttl_seconds
        .saturating_add(PROPAGATION_SLACK_SECONDS);
    let ceiling = if spec.rotation.verifier_evidence {
        spec.rotation.propagation_timeout_seconds
    } else {
        0
    };
    secs(wait.max(ceiling))
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0).unsigned_abs())
}

/// How long before the current key is `interval` old a scheduled rotation
/// starts, so that the next key signs on every pod before then: the
/// propagation wait and the rollouts up to the new key's activation, each
/// rollout counted at `rolloutTimeoutSeconds` (a slower one fails and rolls
/// back). Counted from the current key's first signature, which came up to
/// one rollout before its recorded activation ([`schedule_base`]).
pub fn activation_lead(spec: &MacpAuthSpec) -> Duration {
    let rollout = secs(spec.rotation.rollout_timeout_seconds);
    propagation_wait(spec).saturating_add(rollout.saturating_mul(rollouts_to_activation(spec)))
}

/// The shortest `rotation.interval` that keeps a key from signing longer
/// than the interval: what one rotation can take from the current key's
/// first signature, the rotation after it included, when rotations run back
/// to back (the next starts only when the previous one has drained and
/// retired its old key). [`activation_lead`] plus the drain and the
/// retiring rollout.
pub fn min_interval(spec: &MacpAuthSpec) -> Duration {
    let rollout = secs(spec.rotation.rollout_timeout_seconds);
    activation_lead(spec)
        .saturating_add(secs(spec.effective_drain_seconds()))
        .saturating_add(rollout)
}

/// The share of an interval by which a scheduled rotation may start early.
const EARLY_START_FRACTION: f64 = 0.1;
/// The longest early start, whatever the interval.
const EARLY_START_MAX: Duration = Duration::from_secs(3600);

/// How early a MacpAuth at `place` (its fixed place in `[0, 1)`,
/// [`crate::spread::place`]) starts its scheduled rotations: that share of a
/// window of a tenth of the interval, at most an hour.
///
/// MacpAuths created together with the same interval would otherwise all
/// fall due in the same second, again every interval: a storm of rotations
/// whose last ones wait for all the others (docs/performance.md). Spread
/// over the window before the due moment, they start at a pace the operator
/// and the API server keep up with, and none is late: a key is never older
/// than its interval, it is only replaced up to a tenth earlier.
pub fn early_start(interval: Duration, place: f64) -> Duration {
    if !(0.0..1.0).contains(&place) {
        return Duration::ZERO;
    }
    interval
        .mul_f64(EARLY_START_FRACTION)
        .min(EARLY_START_MAX)
        .mul_f64(place)
}

/// `nextRotationTime` for an interval: one interval after the active key's
/// activation ([`schedule_base`]), less the `lead` its successor needs to
/// sign on every pod ([`activation_lead`]) and this MacpAuth's `early` start
/// ([`early_start`]); kept earlier when already scheduled earlier (a retry
/// after a rollback, or a first rotation scheduled before the interval was
/// lengthened).
pub fn next_rotation(
    status: &MacpAuthStatus,
    interval: Duration,
    lead: Duration,
    early: Duration,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let due = add(schedule_base(status).unwrap_or(now), interval);
    let candidate = due
        .checked_sub_signed(chrono_duration(lead.saturating_add(early)))
        .unwrap_or(due);
    match status.next_rotation_time {
        Some(existing) if existing <= candidate => existing,
        _ => candidate,
    }
}

/// Earliest time an automatic trigger may start a rotation after a rolled-back or failed one.
pub(crate) fn automatic_not_before(
    status: &MacpAuthStatus,
    backoff: Duration,
) -> Option<DateTime<Utc>> {
    let last = status.history.last()?;
    matches!(
        last.outcome,
        RotationOutcome::RolledBack | RotationOutcome::Failed
    )
    .then(|| add(last.finished_at, backoff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_early_start_is_a_share_of_a_tenth_of_the_interval_capped_at_an_hour() {
        let day = Duration::from_secs(86_400);
        assert_eq!(early_start(Duration::from_secs(600), 0.0), Duration::ZERO);
        assert_eq!(
            early_start(Duration::from_secs(600), 0.5),
            Duration::from_secs(30)
        );
        assert_eq!(early_start(day, 0.5), Duration::from_secs(1800));
        assert!(early_start(day, 0.999_999) < EARLY_START_MAX);
        // A place outside [0, 1) is no place: the rotation is not moved.
        for bad in [1.0, -0.1, f64::NAN, f64::INFINITY] {
            assert_eq!(early_start(day, bad), Duration::ZERO, "{bad}");
        }
    }

    #[test]
    fn the_next_rotation_is_one_interval_after_the_activation_less_the_lead_and_the_early_start() {
        let t = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        // The last rotation finished (its drain over) 20 minutes after its
        // key activated: the schedule counts from the activation.
        let status = MacpAuthStatus {
            last_rotation_time: Some(t),
            history: vec![crate::crd::RotationRecord {
                trigger: crate::crd::RotationTrigger::Scheduled,
                request_id: None,
                old_kid: None,
                new_kid: None,
                started_at: t - chrono::Duration::minutes(1),
                finished_at: t + chrono::Duration::minutes(20),
                outcome: RotationOutcome::Succeeded,
                message: None,
            }],
            ..MacpAuthStatus::default()
        };
        assert_eq!(schedule_base(&status), Some(t));
        let hour = Duration::from_secs(3600);
        let lead = Duration::from_secs(600);
        let early = Duration::from_secs(60);
        let later = t + chrono::Duration::days(9);
        assert_eq!(
            next_rotation(&status, hour, lead, early, later),
            t + chrono::Duration::minutes(49)
        );
        // An earlier schedule stands.
        let earlier = MacpAuthStatus {
            next_rotation_time: Some(t + chrono::Duration::minutes(5)),
            ..status.clone()
        };
        assert_eq!(
            next_rotation(&earlier, hour, lead, early, later),
            t + chrono::Duration::minutes(5)
        );
        // Before any rotation: from the first key's creation.
        let first = MacpAuthStatus {
            last_rotation_time: None,
            ..status
        };
        assert_eq!(
            schedule_base(&first),
            Some(t + chrono::Duration::minutes(20))
        );
    }

    #[test]
    fn the_lead_and_the_minimum_interval_count_the_waits_and_the_rollouts() {
        let mut spec: MacpAuthSpec = serde_json::from_value(serde_json::json!({
            "maxTtlSeconds": 600,
            "jwksCacheTtlSeconds": 300,
            "rotation": {"rolloutTimeoutSeconds": 100}
        }))
        .unwrap();
        // Propagation up to the evidence ceiling (1800), and three rollouts:
        // publish, activate, and the current key's own activation.
        assert_eq!(activation_lead(&spec), Duration::from_secs(1800 + 300));
        // Plus the drain (600 + 60) and the retiring rollout.
        assert_eq!(min_interval(&spec), Duration::from_secs(2100 + 660 + 100));
        // Without evidence, the cache TTL + slack.
        spec.rotation.verifier_evidence = false;
        assert_eq!(activation_lead(&spec), Duration::from_secs(310 + 300));
        assert_eq!(min_interval(&spec), Duration::from_secs(610 + 660 + 100));
        // A ceiling below the TTL + slack: the TTL + slack.
        spec.rotation.verifier_evidence = true;
        spec.rotation.propagation_timeout_seconds = 60;
        assert_eq!(activation_lead(&spec), Duration::from_secs(310 + 300));
        spec.rotation.prepublish = false;
        assert_eq!(activation_lead(&spec), Duration::from_secs(200));
        assert_eq!(min_interval(&spec), Duration::from_secs(200 + 660 + 100));
    }

    #[test]
    fn parses_the_crd_grammar() {
        assert_eq!(parse_interval("720h"), Ok(Duration::from_secs(720 * 3600)));
        assert_eq!(parse_interval("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_interval("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_interval("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_interval("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_interval("2us3ns"), Ok(Duration::from_nanos(2003)));
    }

    #[test]
    fn refuses_what_the_crd_refuses() {
        for bad in ["", "h", "10", "10 h", "1.5h", "10min", "-1h", "1w", "h1"] {
            assert!(parse_interval(bad).is_err(), "{bad:?} must not parse");
        }
        assert!(matches!(parse_interval("0s"), Err(IntervalError::Zero(_))));
        assert!(matches!(
            parse_interval("99999999999999999999h"),
            Err(IntervalError::Overflow(_))
        ));
        assert!(matches!(
            parse_interval("999999d"),
            Err(IntervalError::Overflow(_))
        ));
    }
}
