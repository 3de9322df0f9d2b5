//! Spreads periodic work of many objects over a window, so that a thousand
//! MacpAuths created together do not all resync, nor rotate, in the same
//! second. Pure and deterministic: the same object always gets the same
//! place in any window, so its period stays regular.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

/// The share of a period over which requeues are spread.
const SPREAD_FRACTION: f64 = 0.1;

/// `period` plus a per-object offset in `[0, period * SPREAD_FRACTION)`.
pub(crate) fn spread(period: Duration, key: &str) -> Duration {
    period + period.mul_f64(SPREAD_FRACTION * place(key))
}

/// The object's fixed place in `[0, 1)`, from a hash of `key`.
pub fn place(key: &str) -> f64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    // The top 53 bits as a fraction in [0, 1).
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The key [`place`] and [`spread`] take for a MacpAuth.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_stay_in_the_window_and_are_stable() {
        let period = Duration::from_secs(300);
        for i in 0..1000 {
            let key = format!("ns-{}/auth-{i}", i % 7);
            let d = spread(period, &key);
            assert!(
                d >= period && d < period.mul_f64(1.0 + SPREAD_FRACTION),
                "{d:?}"
            );
            assert_eq!(d, spread(period, &key));
        }
    }

    #[test]
    fn a_thousand_objects_land_in_different_seconds() {
        let period = Duration::from_secs(300);
        let mut per_second = std::collections::BTreeMap::<u64, usize>::new();
        for i in 0..1000 {
            let d = spread(period, &format!("bench-{}/auth-{i:04}", i % 10));
            *per_second.entry(d.as_secs()).or_default() += 1;
        }
        // A 30 s window: every second is used, and none gets more than about
        // twice its even share of 33.
        assert_eq!(per_second.len(), 30, "{per_second:?}");
        assert!(per_second.values().all(|&n| n < 70), "{per_second:?}");
    }
}
