//! The JWKS clients this process has served: who fetched the JWKS, when, and
//! how often (`GET /verifiers`).
//!
//! The operator reads these records from every pod during a rotation to see
//! whether each verifier has fetched a JWKS holding the new key before that
//! key signs, and how long verifiers really cache (docs/operations.md,
//! "Verifier evidence"). A client is its peer address plus its `User-Agent`:
//! the only identity an anonymous JWKS fetch carries. Verifiers behind one
//! address (NAT, a mesh sidecar, a CDN) therefore merge into one record.
//!
//! Memory is bounded: at most `capacity` records; a new client at the cap
//! replaces the least recently seen one, which is counted as evicted. Times
//! are kept on the monotonic clock and reported as ages, so a reader with a
//! skewed wall clock still places them correctly on its own clock.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Longest `User-Agent` kept; a longer one is cut (clients choose it freely).
pub const MAX_USER_AGENT_BYTES: usize = 200;
/// Fetches on one connection closer together than this count once. A caching
/// verifier fetches once per TTL (a second at least); only a client
/// hammering the JWKS comes closer, and recording each of its requests under
/// the lock would cost the JWKS a tenth of its throughput
/// (docs/performance.md, "The JWKS client record").
pub const COALESCE: Duration = Duration::from_millis(250);
/// Slots of the per-connection filter that spares the lock: a power of two.
const RECENT_SLOTS: usize = 4096;

/// What `GET /verifiers` answers: the records plus what every fetch of this
/// process was served.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiersReport {
    /// The kids of the JWKS this process serves: every fetch got these.
    pub kids: Vec<String>,
    /// The JWKS's `Cache-Control: max-age`.
    pub max_age_seconds: u64,
    /// Records kept at most.
    pub capacity: usize,
    /// Records dropped for newer clients since the process started.
    pub evicted: u64,
    /// Seconds since this process started recording.
    pub uptime_seconds: f64,
    pub clients: Vec<ClientRecord>,
}

/// One JWKS client as seen by this process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientRecord {
    /// The peer address of its connections.
    pub address: IpAddr,
    /// Its `User-Agent`, cut at [`MAX_USER_AGENT_BYTES`]; `None` when it sent none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// JWKS fetches answered (304s included: a revalidated cache holds the same keys).
    pub fetches: u64,
    pub first_fetch_seconds_ago: f64,
    pub last_fetch_seconds_ago: f64,
    /// The shortest time between two of its fetches: how long it caches at
    /// most (a caching verifier never fetches sooner than its TTL, but an
    /// idle one fetches later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortest_interval_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longest_interval_seconds: Option<f64>,
}

#[derive(Debug)]
struct Record {
    user_agent: Option<Box<str>>,
    first: Instant,
    last: Instant,
    fetches: u64,
    shortest: Option<Duration>,
    longest: Option<Duration>,
}

#[derive(Debug, Default)]
struct Inner {
    /// By address, then by `User-Agent`: a known client costs no allocation.
    by_address: HashMap<IpAddr, Vec<Record>>,
    len: usize,
    evicted: u64,
}

/// The bounded client log. Cheap to record into from every JWKS request.
#[derive(Debug)]
pub struct VerifierLog {
    capacity: usize,
    started: Instant,
    inner: Mutex<Inner>,
    /// Per connection (a hash of its peer address and port), the tag of the
    /// connection and when it was last recorded, in milliseconds since
    /// `started`: `tag << 40 | millis`. Lock-free, so a connection's repeat
    /// within [`COALESCE`] costs one atomic load.
    recent: Box<[AtomicU64]>,
}

/// What one [`VerifierLog::record`] did, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// A new client took the place of the least recently seen one.
    pub evicted: bool,
    /// Records held after this one.
    pub held: usize,
}

fn cut(user_agent: Option<&str>) -> Option<&str> {
    user_agent.map(|ua| {
        if ua.len() <= MAX_USER_AGENT_BYTES {
            return ua;
        }
        let mut end = MAX_USER_AGENT_BYTES;
        while !ua.is_char_boundary(end) {
            end -= 1;
        }
        &ua[..end]
    })
}

impl VerifierLog {
    /// A log of at most `capacity` clients (0 records nothing).
    pub fn new(capacity: usize) -> Self {
        Self::started_at(capacity, Instant::now())
    }

    fn started_at(capacity: usize, started: Instant) -> Self {
        VerifierLog {
            capacity,
            started,
            inner: Mutex::new(Inner::default()),
            recent: (0..RECENT_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records one JWKS fetch on the connection from `peer` at `now`, unless
    /// the same connection was recorded less than [`COALESCE`] ago (then
    /// `None`). `user_agent` is read only when the fetch is recorded.
    pub fn record_connection<'a>(
        &self,
        peer: SocketAddr,
        user_agent: impl FnOnce() -> Option<&'a str>,
        now: Instant,
    ) -> Option<Recorded> {
        if self.capacity == 0 {
            return None;
        }
        let hash = connection_hash(peer);
        let slot = &self.recent[(hash as usize) & (RECENT_SLOTS - 1)];
        // `| 1` keeps a stored value non-zero (zero is "empty").
        let tag = (hash >> 40) | 1;
        let millis = u64::try_from(now.saturating_duration_since(self.started).as_millis())
            .unwrap_or(u64::MAX)
            & ((1 << 40) - 1);
        let seen = slot.load(Ordering::Relaxed);
        let coalesce = u64::try_from(COALESCE.as_millis()).unwrap_or(0);
        if seen >> 40 == tag && millis.wrapping_sub(seen & ((1 << 40) - 1)) < coalesce {
            return None;
        }
        slot.store((tag << 40) | millis, Ordering::Relaxed);
        Some(self.record(peer.ip(), user_agent(), now))
    }

    /// Records one JWKS fetch by `address` with `user_agent` at `now`.
    pub fn record(&self, address: IpAddr, user_agent: Option<&str>, now: Instant) -> Recorded {
        if self.capacity == 0 {
            return Recorded {
                evicted: false,
                held: 0,
            };
        }
        let user_agent = cut(user_agent);
        let mut inner = self.inner.lock();
        if let Some(record) = inner
            .by_address
            .get_mut(&address)
            .and_then(|v| v.iter_mut().find(|r| r.user_agent.as_deref() == user_agent))
        {
            let gap = now.saturating_duration_since(record.last);
            record.shortest = Some(record.shortest.map_or(gap, |s| s.min(gap)));
            record.longest = Some(record.longest.map_or(gap, |l| l.max(gap)));
            record.last = record.last.max(now);
            record.fetches += 1;
            return Recorded {
                evicted: false,
                held: inner.len,
            };
        }
        let evicted = inner.len >= self.capacity && inner.evict_least_recent();
        inner.by_address.entry(address).or_default().push(Record {
            user_agent: user_agent.map(Box::from),
            first: now,
            last: now,
            fetches: 1,
            shortest: None,
            longest: None,
        });
        inner.len += 1;
        Recorded {
            evicted,
            held: inner.len,
        }
    }

    /// Every record, most recent first, with ages counted back from `now`.
    pub fn report(&self, kids: &[String], max_age_seconds: u64, now: Instant) -> VerifiersReport {
        let inner = self.inner.lock();
        let ago = |t: Instant| now.saturating_duration_since(t).as_secs_f64();
        let mut clients: Vec<ClientRecord> = inner
            .by_address
            .iter()
            .flat_map(|(address, records)| records.iter().map(move |r| (address, r)))
            .map(|(address, r)| ClientRecord {
                address: *address,
                user_agent: r.user_agent.as_deref().map(str::to_string),
                fetches: r.fetches,
                first_fetch_seconds_ago: ago(r.first),
                last_fetch_seconds_ago: ago(r.last),
                shortest_interval_seconds: r.shortest.map(|d| d.as_secs_f64()),
                longest_interval_seconds: r.longest.map(|d| d.as_secs_f64()),
            })
            .collect();
        clients.sort_by(|a, b| {
            a.last_fetch_seconds_ago
                .total_cmp(&b.last_fetch_seconds_ago)
        });
        VerifiersReport {
            kids: kids.to_vec(),
            max_age_seconds,
            capacity: self.capacity,
            evicted: inner.evicted,
            uptime_seconds: ago(self.started),
            clients,
        }
    }
}

/// A cheap, well-mixed hash of a connection's peer (address and port): the
/// filter only needs to tell connections apart, not to resist anyone (a
/// collision records a fetch it could have skipped, or skips one within
/// [`COALESCE`] of another connection's).
fn connection_hash(peer: SocketAddr) -> u64 {
    let mut x = match peer.ip() {
        IpAddr::V4(ip) => u64::from(u32::from(ip)),
        IpAddr::V6(ip) => {
            let v = u128::from(ip);
            (v as u64) ^ ((v >> 64) as u64).rotate_left(17)
        }
    };
    x = (x << 16) ^ u64::from(peer.port());
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Inner {
    /// Drops the least recently seen record. A linear scan: it runs only when
    /// a new client arrives at the cap, and the cap is small.
    fn evict_least_recent(&mut self) -> bool {
        let oldest = self
            .by_address
            .iter()
            .flat_map(|(a, v)| v.iter().enumerate().map(move |(i, r)| (*a, i, r.last)))
            .min_by_key(|(_, _, last)| *last)
            .map(|(a, i, _)| (a, i));
        let Some((address, index)) = oldest else {
            return false;
        };
        if let Some(records) = self.by_address.get_mut(&address) {
            records.swap_remove(index);
            if records.is_empty() {
                self.by_address.remove(&address);
            }
        }
        self.len -= 1;
        self.evicted += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_client_is_its_address_and_user_agent_with_its_fetch_intervals() {
        let t0 = Instant::now();
        let log = VerifierLog::started_at(8, t0);
        let s = Duration::from_secs;
        log.record(ip(1), Some("runtime/1"), t0);
        log.record(ip(1), Some("runtime/1"), t0 + s(30));
        log.record(ip(1), Some("runtime/1"), t0 + s(40));
        log.record(ip(1), Some("other"), t0 + s(41));
        log.record(ip(2), None, t0 + s(42));
        let report = log.report(&["k1".into()], 30, t0 + s(50));
        assert_eq!(report.kids, vec!["k1".to_string()]);
        assert_eq!(report.clients.len(), 3, "{report:?}");
        let runtime = report
            .clients
            .iter()
            .find(|c| c.user_agent.as_deref() == Some("runtime/1"))
            .expect("the runtime's record");
        assert_eq!(runtime.fetches, 3);
        assert_eq!(runtime.shortest_interval_seconds, Some(10.0));
        assert_eq!(runtime.longest_interval_seconds, Some(30.0));
        assert_eq!(runtime.last_fetch_seconds_ago, 10.0);
        assert_eq!(runtime.first_fetch_seconds_ago, 50.0);
        // Most recent first.
        assert_eq!(report.clients[0].address, ip(2));
        assert_eq!(report.clients[0].shortest_interval_seconds, None);
    }

    #[test]
    fn at_the_cap_the_least_recent_client_makes_room_and_is_counted() {
        let t0 = Instant::now();
        let log = VerifierLog::started_at(2, t0);
        let s = Duration::from_secs;
        assert!(!log.record(ip(1), None, t0).evicted);
        assert!(!log.record(ip(2), None, t0 + s(1)).evicted);
        // ip(1) fetches again: now ip(2) is the least recent.
        assert!(!log.record(ip(1), None, t0 + s(2)).evicted);
        let third = log.record(ip(3), None, t0 + s(3));
        assert_eq!(
            third,
            Recorded {
                evicted: true,
                held: 2
            }
        );
        let report = log.report(&[], 0, t0 + s(4));
        let addresses: Vec<IpAddr> = report.clients.iter().map(|c| c.address).collect();
        assert_eq!(addresses, vec![ip(3), ip(1)]);
        assert_eq!(report.evicted, 1);
    }

    #[test]
    fn a_connection_fetching_again_within_the_coalescing_window_counts_once() {
        let t0 = Instant::now();
        let log = VerifierLog::started_at(8, t0);
        let a = SocketAddr::from(([127, 0, 0, 1], 40000));
        let b = SocketAddr::from(([127, 0, 0, 1], 40001));
        let ms = Duration::from_millis;
        assert!(log.record_connection(a, || Some("v"), t0 + ms(1)).is_some());
        assert!(
            log.record_connection(a, || Some("v"), t0 + ms(100))
                .is_none()
        );
        // Another connection of the same client is recorded.
        assert!(
            log.record_connection(b, || Some("v"), t0 + ms(101))
                .is_some()
        );
        // The first connection again, past the window.
        assert!(
            log.record_connection(a, || Some("v"), t0 + ms(1 + 250))
                .is_some()
        );
        let report = log.report(&[], 0, t0 + ms(300));
        assert_eq!(report.clients.len(), 1);
        assert_eq!(report.clients[0].fetches, 3);
    }

    #[test]
    fn a_zero_capacity_log_records_nothing() {
        let log = VerifierLog::new(0);
        log.record(ip(1), None, Instant::now());
        assert!(log.report(&[], 0, Instant::now()).clients.is_empty());
    }

    #[test]
    fn a_long_user_agent_is_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_USER_AGENT_BYTES);
        let log = VerifierLog::new(4);
        let now = Instant::now();
        log.record(ip(1), Some(&long), now);
        log.record(ip(1), Some(&long), now);
        let report = log.report(&[], 0, now);
        assert_eq!(report.clients.len(), 1, "the same cut agent is one client");
        let kept = report.clients[0].user_agent.as_deref().unwrap_or_default();
        assert!(kept.len() <= MAX_USER_AGENT_BYTES && long.starts_with(kept));
    }
}
