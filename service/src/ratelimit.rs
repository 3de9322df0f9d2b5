//! Per-caller token-bucket rate limit for `POST /tokens`.
//!
//! A small keyed bucket instead of `governor`: governor's keyed limiter grows
//! without bound unless something calls `retain_recent` periodically, pulls in
//! `dashmap`, `quanta` and friends, and we need only one check per mint. Here
//! memory is bounded by [`MAX_KEYS`]: idle buckets (refilled to the brim, thus
//! equal to a fresh one) are purged when the table is full, and if it is still
//! full every further new key shares one overflow bucket, so spraying source
//! addresses can neither exhaust memory nor escape the limit.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most distinct callers tracked at once.
pub const MAX_KEYS: usize = 65_536;
/// Key of the bucket shared by callers that found the table full.
const OVERFLOW_KEY: &str = "\u{0}overflow";

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
struct Table {
    buckets: HashMap<String, Bucket>,
    /// Earliest time the next full-table purge may run (purging is O(n)).
    next_purge: Instant,
}

/// A token bucket per key: `burst` capacity, refilled at `per_second`.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    max_keys: usize,
    table: Mutex<Table>,
}

impl RateLimiter {
    /// `per_second` must be positive and finite, `burst` at least 1 (the
    /// configuration validates both).
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self::with_capacity(per_second, burst, MAX_KEYS)
    }

    fn with_capacity(per_second: f64, burst: u32, max_keys: usize) -> Self {
        RateLimiter {
            per_second,
            burst: f64::from(burst.max(1)),
            max_keys: max_keys.max(1),
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                next_purge: Instant::now(),
            }),
        }
    }

    /// Takes one token from `key`'s bucket. `Err` carries how long until a
    /// token is available (for `retry-after`).
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut table = self.table.lock();
        let key = if table.buckets.contains_key(key) || self.make_room(&mut table, now) {
            key
        } else {
            OVERFLOW_KEY
        };
        let burst = self.burst;
        let bucket = table.buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.per_second;
            Err(Duration::from_secs_f64(wait.clamp(0.0, 86_400.0)))
        }
    }

    /// True when a new key may be inserted, purging idle buckets if needed.
    fn make_room(&self, table: &mut Table, now: Instant) -> bool {
        if table.buckets.len() < self.max_keys {
            return true;
        }
        if now < table.next_purge {
            return false;
        }
        table.next_purge = now + Duration::from_secs(1);
        let refill = self.burst / self.per_second;
        table.buckets.retain(|k, b| {
            k == OVERFLOW_KEY || now.saturating_duration_since(b.last).as_secs_f64() < refill
        });
        table.buckets.len() < self.max_keys
    }

    /// Buckets currently tracked.
    pub fn tracked_keys(&self) -> usize {
        self.table.lock().buckets.len()
    }
}

/// Whole seconds for a `retry-after` header: rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("a", t0).is_ok());
        }
        let wait = limiter.check("a", t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert_eq!(retry_after_seconds(wait), 1);
        // Other keys have their own bucket.
        assert!(limiter.check("b", t0).is_ok());
        // Half a second refills one token at 2/s.
        let t1 = t0 + Duration::from_millis(500);
        assert!(limiter.check("a", t1).is_ok());
        assert!(limiter.check("a", t1).is_err());
        // Refill never exceeds the burst.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(limiter.check("a", t2).is_ok());
        }
        assert!(limiter.check("a", t2).is_err());
    }

    #[test]
    fn slow_rates_give_long_retry_after() {
        let limiter = RateLimiter::new(0.1, 1);
        let t0 = Instant::now();
        assert!(limiter.check("a", t0).is_ok());
        assert_eq!(retry_after_seconds(limiter.check("a", t0).unwrap_err()), 10);
    }

    #[test]
    fn memory_is_bounded_and_overflow_shares_one_bucket() {
        let limiter = RateLimiter::with_capacity(1.0, 1, 4);
        let t0 = Instant::now();
        for i in 0..4 {
            assert!(limiter.check(&format!("k{i}"), t0).is_ok());
        }
        // Table full of busy buckets: new keys share the overflow bucket.
        assert!(limiter.check("new-1", t0).is_ok());
        assert!(limiter.check("new-2", t0).is_err());
        assert!(limiter.tracked_keys() <= 5);
        // Once the old buckets are idle (refilled) they are purged.
        let later = t0 + Duration::from_secs(5);
        assert!(limiter.check("new-3", later).is_ok());
        assert!(limiter.tracked_keys() <= 5);
    }

    /// A request that panics while it holds the table (a bug elsewhere)
    /// must not turn every later request into a panic too.
    #[test]
    fn a_panic_while_the_table_is_held_leaves_the_limiter_working() {
        let limiter = RateLimiter::new(1.0, 1);
        let t0 = Instant::now();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = limiter.table.lock();
            panic!("a request handler's bug");
        }));
        assert!(panicked.is_err());
        assert!(limiter.check("a", t0).is_ok());
        assert!(limiter.check("a", t0).is_err());
        assert_eq!(limiter.tracked_keys(), 1);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(7)), 7);
    }
}
