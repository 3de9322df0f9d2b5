//! Verifier evidence: what the token-service pods saw of the verifiers that
//! fetch their JWKS (`GET /verifiers`), merged over pods and rounds
//! (docs/operations.md, "Verifier evidence").
//!
//! The configured cache TTL is what verifiers *should* cache for. The
//! evidence is what they did: a verifier whose last fetch got a JWKS holding
//! the new key has it in its cache, whatever its TTL. Propagating therefore
//! ends only when every verifier seen fetching recently has done so, or at
//! a ceiling.
//!
//! A verifier is a peer address plus `User-Agent`. Pods forget their records
//! when they are replaced (the Publishing rollout replaces them all), so the
//! verifiers are remembered in `status.verifiers.known`: a snapshot is taken
//! from the old pods in the round that starts publishing, and merged with
//! every later round's reports.

use chrono::{DateTime, Utc};
use macp_auth_service::verifiers::VerifiersReport;

use crate::crd::{KnownVerifier, VerifiersStatus};
use crate::rotation::PROPAGATION_SLACK_SECONDS;

/// The `User-Agent` of the operator's own probes: its JWKS fetches are no verifier's.
pub(crate) const PROBE_USER_AGENT: &str = "macp-auth-operator";
/// A verifier counts as present while its last fetch is within this many of
/// its own fetch intervals (or of the cache TTL, when that is longer).
const RECENT_INTERVALS: i64 = 3;
/// Verifiers kept in status, most recent first.
const KNOWN_LIMIT: usize = 100;
/// Verifiers named in a message or `waitingFor`.
const NAMED_LIMIT: usize = 10;

/// One pod's answer to `GET /verifiers`.
pub type PodReport = Result<VerifiersReport, String>;

fn id_of(address: &std::net::IpAddr, user_agent: Option<&str>) -> String {
    match user_agent {
        Some(ua) => format!("{address} ({ua})"),
        None => address.to_string(),
    }
}

/// Whole seconds, rounded up: an interval is an upper bound on a cache TTL.
fn ceil_secs(seconds: f64) -> i64 {
    seconds.ceil().clamp(0.0, i64::MAX as f64) as i64
}

/// One verifier as this round's reports show it, over every pod.
struct Seen {
    id: String,
    last_fetch: DateTime<Utc>,
    first_fetch: DateTime<Utc>,
    fetches: u64,
    shortest: Option<f64>,
    holds_new_kid: bool,
}

/// `known` merged with this round's `reports` (ages counted back from `now`,
/// the operator's clock, so a pod's clock skew does not matter). Each
/// verifier keeps its most recent fetch and whether that fetch's JWKS held
/// `new_kid`; its mean interval over every pod's fetches this round (a
/// verifier's fetches spread over the pods, so no one pod sees them all);
/// and the shortest interval any one pod saw.
pub fn merge(
    known: &[KnownVerifier],
    reports: &[PodReport],
    new_kid: Option<&str>,
    now: DateTime<Utc>,
) -> Vec<KnownVerifier> {
    let at = |ago: f64| now - chrono::Duration::milliseconds((ago * 1000.0) as i64);
    let mut seen: Vec<Seen> = Vec::new();
    for report in reports.iter().flatten() {
        let holds = new_kid.is_some_and(|kid| report.kids.iter().any(|k| k == kid));
        for client in &report.clients {
            if client.user_agent.as_deref() == Some(PROBE_USER_AGENT) {
                continue;
            }
            let id = id_of(&client.address, client.user_agent.as_deref());
            let (first, last) = (
                at(client.first_fetch_seconds_ago),
                at(client.last_fetch_seconds_ago),
            );
            match seen.iter_mut().find(|v| v.id == id) {
                Some(v) => {
                    if last > v.last_fetch {
                        v.last_fetch = last;
                        v.holds_new_kid = holds;
                    }
                    v.first_fetch = v.first_fetch.min(first);
                    v.fetches += client.fetches;
                    v.shortest = match (v.shortest, client.shortest_interval_seconds) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                None => seen.push(Seen {
                    id,
                    last_fetch: last,
                    first_fetch: first,
                    fetches: client.fetches,
                    shortest: client.shortest_interval_seconds,
                    holds_new_kid: holds,
                }),
            }
        }
    }
    let mut merged: Vec<KnownVerifier> = known.to_vec();
    for s in seen {
        let mean = (s.fetches >= 2).then(|| {
            let span = (s.last_fetch - s.first_fetch).num_milliseconds().max(0) as f64 / 1000.0;
            ceil_secs(span / (s.fetches - 1) as f64)
        });
        let shortest = s.shortest.map(ceil_secs);
        match merged.iter_mut().find(|v| v.id == s.id) {
            Some(v) => {
                if s.last_fetch > v.last_fetch {
                    v.last_fetch = s.last_fetch;
                    v.holds_new_kid = s.holds_new_kid;
                }
                // The pods' records only grow: this round's figures are the
                // freshest; older pods' figures stand where these have none.
                v.interval_seconds = mean.or(v.interval_seconds);
                v.shortest_interval_seconds = match (v.shortest_interval_seconds, shortest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                v.fetches = v.fetches.max(s.fetches);
            }
            None => merged.push(KnownVerifier {
                id: s.id,
                last_fetch: s.last_fetch,
                interval_seconds: mean,
                shortest_interval_seconds: shortest,
                fetches: s.fetches,
                holds_new_kid: s.holds_new_kid,
            }),
        }
    }
    merged.sort_by(|a, b| {
        b.last_fetch
            .cmp(&a.last_fetch)
            .then_with(|| a.id.cmp(&b.id))
    });
    merged.truncate(KNOWN_LIMIT);
    merged
}

/// The snapshot that starts a rotation's evidence: what the pods saw so
/// far, none of it holding the new key (it has not been published yet).
pub fn start(
    known: &[KnownVerifier],
    reports: &[PodReport],
    now: DateTime<Utc>,
) -> Vec<KnownVerifier> {
    let reset: Vec<KnownVerifier> = known
        .iter()
        .cloned()
        .map(|v| KnownVerifier {
            holds_new_kid: false,
            ..v
        })
        .collect();
    merge(&reset, reports, None, now)
}

/// Whether `v` still counts as present: its last fetch is within
/// [`RECENT_INTERVALS`] of its own interval, or of `cache_ttl` when longer.
fn is_recent(v: &KnownVerifier, cache_ttl: i64, now: DateTime<Utc>) -> bool {
    let span = RECENT_INTERVALS.saturating_mul(v.interval_seconds.unwrap_or(0).max(cache_ttl));
    now - v.last_fetch <= chrono::Duration::seconds(span)
}

/// The recent verifiers whose last fetch lacked the new key.
pub fn pending(known: &[KnownVerifier], cache_ttl: i64, now: DateTime<Utc>) -> Vec<&KnownVerifier> {
    known
        .iter()
        .filter(|v| is_recent(v, cache_ttl, now) && !v.holds_new_kid)
        .collect()
}

/// Names for a message: at most [`NAMED_LIMIT`], then how many more.
pub fn names(verifiers: &[&KnownVerifier]) -> String {
    let mut out: Vec<String> = verifiers
        .iter()
        .take(NAMED_LIMIT)
        .map(|v| v.id.clone())
        .collect();
    if verifiers.len() > NAMED_LIMIT {
        out.push(format!("and {} more", verifiers.len() - NAMED_LIMIT));
    }
    out.join(", ")
}

/// The longest cache time observed among recent verifiers with a known interval.
fn longest_interval(known: &[KnownVerifier], cache_ttl: i64, now: DateTime<Utc>) -> Option<i64> {
    known
        .iter()
        .filter(|v| is_recent(v, cache_ttl, now))
        .filter_map(|v| v.interval_seconds)
        .max()
}

/// `status.verifiers` for `known`. `new_kid_published`: a rotation's new key
/// is being propagated, so `holdingNewKid` and `waitingFor` mean something.
pub fn summary(
    known: Vec<KnownVerifier>,
    cache_ttl: i64,
    now: DateTime<Utc>,
    new_kid_published: bool,
) -> VerifiersStatus {
    let recent: Vec<&KnownVerifier> = known
        .iter()
        .filter(|v| is_recent(v, cache_ttl, now))
        .collect();
    let waiting = pending(&known, cache_ttl, now);
    VerifiersStatus {
        observed_at: Some(now),
        observed: u32::try_from(recent.len()).unwrap_or(u32::MAX),
        holding_new_kid: new_kid_published.then(|| {
            u32::try_from(recent.iter().filter(|v| v.holds_new_kid).count()).unwrap_or(u32::MAX)
        }),
        longest_interval_seconds: longest_interval(&known, cache_ttl, now),
        waiting_for: if new_kid_published {
            waiting
                .iter()
                .take(NAMED_LIMIT)
                .map(|v| v.id.clone())
                .collect()
        } else {
            Vec::new()
        },
        known,
    }
}

/// The cache TTL the Propagating wait counts after this round.
///
/// It follows `jwksCacheTtlSeconds` up at once. Down, it follows only when the
/// evidence shows it: verifiers read the TTL from the ConfigMap when they
/// start, so one not restarted since the change still caches for the old
/// value. The lower value takes effect once at least one recent verifier
/// has a known shortest interval and every recent verifier with one
/// fetched twice within the new TTL plus the slack (a caching verifier
/// never fetches sooner than its TTL, so that interval bounds its TTL). `known` is `None` in a round that asked
/// the pods nothing: what was in effect stays. (With evidence switched off
/// the caller trusts the spec instead.)
pub fn cache_ttl_in_effect(
    previous: Option<i64>,
    configured: i64,
    known: Option<&[KnownVerifier]>,
    now: DateTime<Utc>,
) -> i64 {
    let Some(previous) = previous.filter(|p| *p > configured) else {
        return configured;
    };
    let Some(known) = known else {
        return previous;
    };
    let intervals: Vec<i64> = known
        .iter()
        .filter(|v| is_recent(v, previous, now))
        .filter_map(|v| v.shortest_interval_seconds)
        .collect();
    let shown = !intervals.is_empty()
        && intervals
            .iter()
            .all(|i| *i <= configured + PROPAGATION_SLACK_SECONDS);
    if shown { configured } else { previous }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use macp_auth_service::verifiers::ClientRecord;
    use std::net::IpAddr;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    fn client(last: u8, ago: f64, shortest: Option<f64>, fetches: u64) -> ClientRecord {
        ClientRecord {
            address: IpAddr::from([127, 1, 0, last]),
            user_agent: None,
            fetches,
            first_fetch_seconds_ago: 100.0,
            last_fetch_seconds_ago: ago,
            shortest_interval_seconds: shortest,
            longest_interval_seconds: shortest,
        }
    }

    fn report(kids: &[&str], clients: Vec<ClientRecord>) -> PodReport {
        Ok(VerifiersReport {
            kids: kids.iter().map(|k| k.to_string()).collect(),
            clients,
            ..VerifiersReport::default()
        })
    }

    #[test]
    fn a_verifier_holds_the_new_key_only_when_its_latest_fetch_did() {
        // Old pods (only K) saw verifier 1 at t=90; a new pod (K and K') at t=95.
        let old = report(&["k"], vec![client(1, 10.0, Some(30.0), 4)]);
        let new = report(&["k", "k2"], vec![client(1, 5.0, Some(30.0), 1)]);
        let merged = merge(&[], &[old.clone(), new], Some("k2"), t(100));
        assert_eq!(merged.len(), 1);
        assert!(merged[0].holds_new_kid);
        assert_eq!(merged[0].last_fetch, t(95));
        // Five fetches over both pods in 95 s: a mean interval of 24 s (rounded
        // up); the shortest one pod saw is 30 s.
        assert_eq!(merged[0].interval_seconds, Some(24));
        assert_eq!(merged[0].shortest_interval_seconds, Some(30));
        // The other order in time: the latest fetch came from an old pod.
        let old_later = report(&["k"], vec![client(1, 1.0, None, 5)]);
        let new_earlier = report(&["k", "k2"], vec![client(1, 5.0, None, 1)]);
        let merged = merge(&[], &[new_earlier, old_later], Some("k2"), t(100));
        assert!(!merged[0].holds_new_kid);
    }

    #[test]
    fn the_operators_own_probes_are_not_verifiers() {
        let mut probe = client(9, 1.0, Some(2.0), 50);
        probe.user_agent = Some(PROBE_USER_AGENT.into());
        let merged = merge(&[], &[report(&["k"], vec![probe])], None, t(0));
        assert!(merged.is_empty());
    }

    #[test]
    fn a_snapshot_survives_the_pods_that_took_it() {
        let snapshot = start(
            &[],
            &[report(&["k"], vec![client(1, 10.0, Some(20.0), 3)])],
            t(100),
        );
        // The old pods are gone; the new ones have not seen verifier 1 yet.
        let later = merge(
            &snapshot,
            &[report(&["k", "k2"], vec![])],
            Some("k2"),
            t(130),
        );
        let waiting = pending(&later, 2, t(130));
        assert_eq!(
            waiting.len(),
            1,
            "verifier 1 (interval 20 s, last seen 40 s ago) is waited for"
        );
        // It fetches from a new pod: nothing left to wait for.
        let fetched = merge(
            &later,
            &[report(&["k", "k2"], vec![client(1, 0.5, None, 1)])],
            Some("k2"),
            t(131),
        );
        assert!(pending(&fetched, 2, t(131)).is_empty());
        // A new rotation starts: the held key is the old one now.
        let next = start(&fetched, &[], t(200));
        assert!(!next[0].holds_new_kid);
    }

    #[test]
    fn a_verifier_is_recent_within_three_of_its_intervals_or_of_the_ttl() {
        let v = |interval: Option<i64>, last: i64| KnownVerifier {
            id: "v".into(),
            last_fetch: t(last),
            interval_seconds: interval,
            shortest_interval_seconds: interval,
            fetches: 3,
            holds_new_kid: false,
        };
        assert!(is_recent(&v(Some(20), 0), 2, t(60)));
        assert!(!is_recent(&v(Some(20), 0), 2, t(61)));
        assert!(is_recent(&v(None, 0), 5, t(15)));
        assert!(!is_recent(&v(None, 0), 5, t(16)));
        assert!(
            is_recent(&v(Some(1), 0), 5, t(15)),
            "the TTL when it is longer"
        );
    }

    #[test]
    fn a_lowered_cache_ttl_counts_the_old_one_until_the_verifiers_show_the_new_one() {
        let v = |interval: i64| KnownVerifier {
            id: format!("v{interval}"),
            last_fetch: t(0),
            interval_seconds: Some(interval),
            shortest_interval_seconds: Some(interval),
            fetches: 5,
            holds_new_kid: false,
        };
        // Raised: at once.
        assert_eq!(cache_ttl_in_effect(Some(3), 30, Some(&[]), t(0)), 30);
        // Lowered from 30 to 3, no evidence yet: 30 stays.
        assert_eq!(cache_ttl_in_effect(Some(30), 3, Some(&[]), t(1)), 30);
        // One verifier still caches for 30 s: 30 stays.
        assert_eq!(
            cache_ttl_in_effect(Some(30), 3, Some(&[v(3), v(30)]), t(1)),
            30
        );
        // Every verifier shows the shorter interval: 3.
        assert_eq!(
            cache_ttl_in_effect(Some(30), 3, Some(&[v(3), v(4)]), t(1)),
            3
        );
        // A round that asked the pods nothing keeps what was in effect.
        assert_eq!(cache_ttl_in_effect(Some(30), 3, None, t(1)), 30);
        // Nothing recorded before: the spec.
        assert_eq!(cache_ttl_in_effect(None, 3, Some(&[]), t(1)), 3);
    }

    #[test]
    fn the_summary_counts_recent_verifiers_and_names_the_ones_waited_for() {
        let mk = |i: u8, last: i64, holds: bool| KnownVerifier {
            id: format!("127.1.0.{i}"),
            last_fetch: t(last),
            interval_seconds: Some(2),
            shortest_interval_seconds: Some(2),
            fetches: 9,
            holds_new_kid: holds,
        };
        let known = vec![mk(1, 99, true), mk(2, 98, false), mk(3, 0, false)];
        let s = summary(known, 2, t(100), true);
        assert_eq!(s.observed, 2, "verifier 3 was last seen 100 s ago");
        assert_eq!(s.holding_new_kid, Some(1));
        assert_eq!(s.waiting_for, vec!["127.1.0.2".to_string()]);
        assert_eq!(s.longest_interval_seconds, Some(2));
        let idle = summary(s.known.clone(), 2, t(100), false);
        assert_eq!(idle.holding_new_kid, None);
        assert!(idle.waiting_for.is_empty());
    }
}
