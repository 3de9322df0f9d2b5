//! Durations and instants as kubectl shows them.

use chrono::{DateTime, SecondsFormat, Utc};

/// kubectl's short human durations (`45s`, `5m3s`, `42m`, `3h7m`, `30h`,
/// `5d3h`, `12d`), coarser as they grow. Negative durations print as `0s`.
pub fn short(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        match s % 60 {
            0 => format!("{m}m"),
            rest => format!("{m}m{rest}s"),
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            rest => format!("{h}h{rest}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        match h % 24 {
            0 => format!("{d}d"),
            rest => format!("{d}d{rest}h"),
        }
    } else {
        format!("{d}d")
    }
}

/// Seconds from `from` to `to`, rounded down.
pub fn secs_between(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (to - from).num_seconds()
}

/// RFC 3339 in UTC to the second, as the API server writes timestamps.
pub fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `2026-12-06T12:00:00Z (in 5m3s)` or `(... ago)`.
pub fn instant_rel(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let d = secs_between(now, t);
    if d >= 0 {
        format!("{} (in {})", instant(t), short(d))
    } else {
        format!("{} ({} ago)", instant(t), short(-d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_durations_follow_kubectl() {
        let cases = [
            (-5, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (303, "5m3s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600 + 7 * 60, "3h7m"),
            (30 * 3600, "30h"),
            (5 * 86_400 + 3 * 3600, "5d3h"),
            (12 * 86_400 + 5, "12d"),
        ];
        for (secs, want) in cases {
            assert_eq!(short(secs), want, "{secs} s");
        }
    }

    #[test]
    fn instants_say_in_or_ago() {
        let now = DateTime::parse_from_rfc3339("2026-12-06T12:00:00Z")
            .unwrap()
            .to_utc();
        let later = now + chrono::Duration::seconds(303);
        assert_eq!(instant_rel(later, now), "2026-12-06T12:05:03Z (in 5m3s)");
        assert_eq!(instant_rel(now, later), "2026-12-06T12:00:00Z (5m3s ago)");
    }
}
