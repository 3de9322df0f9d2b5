//! Prometheus metrics of the operator (prefix `macp_operator`): the
//! reconciler's, the leader-election gauge and the `/metrics` endpoint's
//! connections, in one registry, so `/metrics` is one encoding of it.
//!
//! Per-`MacpAuth` series carry `namespace` and `name` labels. They are set at
//! the end of each reconciliation, so `seconds_since_last_rotation` is as
//! fresh as the last reconcile (at most the resync interval old), not a live
//! clock; alert on it with a margin of one resync interval.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use macp_auth_service::listener::ConnectionMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::{MacpAuthStatus, RotationOutcome, RotationPhase, RotationSpec, VariantArray};
use crate::rotation::phase::{self, Gate};
use crate::rotation::{self, Observed, Verdict};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub resource: String,
}

/// One `MacpAuth`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    pub namespace: String,
    pub name: String,
}

/// One `MacpAuth` and one rotation phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub namespace: String,
    pub name: String,
    pub phase: String,
}

/// The operator's metrics, all registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub writes: Family<WriteLabels, Counter>,
    pub duration: Histogram,
    /// 1 for the current phase of each `MacpAuth`, 0 for every other phase.
    pub rotation_phase: Family<PhaseLabels, Gauge>,
    pub seconds_since_last_rotation: Family<ObjectLabels, Gauge<f64, AtomicU64>>,
    pub rotation_verify_failures: Family<ObjectLabels, Counter>,
    /// Propagating phases that reached `rotation.propagationTimeoutSeconds`
    /// with verifiers that never fetched the new key.
    pub propagation_timeouts: Family<ObjectLabels, Counter>,
    /// Seconds the rotation in flight has spent in its current phase.
    pub rotation_phase_seconds: Family<ObjectLabels, Gauge<f64, AtomicU64>>,
    /// How long the current phase may take before it counts as stuck: the
    /// rollout timeout plus the phase's own wait (`status.rotation.waitUntil`).
    pub rotation_phase_limit_seconds: Family<ObjectLabels, Gauge<f64, AtomicU64>>,
    /// `spec.rotation.interval` in seconds, for MacpAuths on an unpaused schedule.
    pub rotation_interval_seconds: Family<ObjectLabels, Gauge<f64, AtomicU64>>,
    /// When the newest rolled-back rotation in `status.history` finished.
    pub last_rollback_timestamp_seconds: Family<ObjectLabels, Gauge<f64, AtomicU64>>,
    /// `macp_operator_leader`: 1 while this process holds the lease; without
    /// leader election `main` sets it to 1, since that process reconciles alone.
    pub leader: Gauge,
    /// `macp_operator_http_*`: the endpoint's open, shed, evicted and
    /// timed-out connections (the service's listener counts them).
    pub http: ConnectionMetrics,
    registry: std::sync::Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let writes = Family::<WriteLabels, Counter>::default();
        // 1 ms .. ~16 s: RSA-4096 generation is the slow end.
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let mut registry = Registry::with_prefix("macp_operator");
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by reason",
            errors.clone(),
        );
        registry.register(
            "writes",
            "Write requests sent to the API server, by resource",
            writes.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            duration.clone(),
        );
        let rotation_phase = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "rotation_phase",
            "Rotation phase of each MacpAuth: 1 for the current phase, 0 for the others",
            rotation_phase.clone(),
        );
        let seconds_since_last_rotation = Family::<ObjectLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "seconds_since_last_rotation",
            "Seconds since the active key started signing (status.lastRotationTime, else the first key's creation), refreshed at each reconcile",
            seconds_since_last_rotation.clone(),
        );
        let rotation_verify_failures = Family::<ObjectLabels, Counter>::default();
        registry.register(
            "rotation_verify_failures",
            "Pods seen contradicting the keyset a rotation expects (JWKS or signing kid), per MacpAuth",
            rotation_verify_failures.clone(),
        );
        let propagation_timeouts = Family::<ObjectLabels, Counter>::default();
        registry.register(
            "propagation_timeouts",
            "Rotations whose new key started signing at rotation.propagationTimeoutSeconds, before every verifier seen fetching the JWKS had fetched it",
            propagation_timeouts.clone(),
        );
        let rotation_phase_seconds = Family::<ObjectLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "rotation_phase_seconds",
            "Seconds the rotation in flight has spent in its current phase (absent when Idle)",
            rotation_phase_seconds.clone(),
        );
        let rotation_phase_limit_seconds = Family::<ObjectLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "rotation_phase_limit_seconds",
            "Seconds the current rotation phase may last: spec.rotation.rolloutTimeoutSeconds plus the phase's own wait (absent when Idle)",
            rotation_phase_limit_seconds.clone(),
        );
        let rotation_interval_seconds = Family::<ObjectLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "rotation_interval_seconds",
            "spec.rotation.interval in seconds (absent without a schedule or while paused)",
            rotation_interval_seconds.clone(),
        );
        let last_rollback_timestamp_seconds =
            Family::<ObjectLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "last_rollback_timestamp_seconds",
            "Unix time at which the newest rolled-back rotation in status.history finished (absent when none)",
            last_rollback_timestamp_seconds.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this operator process holds the leader-election lease",
            leader.clone(),
        );
        let http = ConnectionMetrics::default();
        http.register(registry.sub_registry_with_prefix("http"));
        Self {
            reconciles,
            errors,
            writes,
            duration,
            rotation_phase,
            seconds_since_last_rotation,
            rotation_verify_failures,
            propagation_timeouts,
            rotation_phase_seconds,
            rotation_phase_limit_seconds,
            rotation_interval_seconds,
            last_rollback_timestamp_seconds,
            leader,
            http,
            registry: std::sync::Arc::new(registry),
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn failed(&self, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn wrote(&self, resource: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                resource: resource.to_string(),
            })
            .inc();
    }

    /// Sets the per-`MacpAuth` gauges from the status a reconcile ended with.
    pub fn observe_rotation(
        &self,
        namespace: &str,
        name: &str,
        spec: &RotationSpec,
        status: &MacpAuthStatus,
        now: DateTime<Utc>,
    ) {
        let current = status
            .rotation
            .as_ref()
            .map(|r| r.phase)
            .unwrap_or_default();
        for &phase in RotationPhase::VARIANTS {
            self.rotation_phase
                .get_or_create(&phase_labels(namespace, name, phase))
                .set(i64::from(phase == current));
        }
        let object = object_labels(namespace, name);
        match last_rotation(status) {
            Some(t) => {
                let age = (now - t).num_milliseconds().max(0) as f64 / 1000.0;
                self.seconds_since_last_rotation
                    .get_or_create(&object)
                    .set(age);
            }
            None => {
                self.seconds_since_last_rotation.remove(&object);
            }
        }
        // Present at 0 from the first reconcile, so `increase()` sees the first failure.
        let _ = self.rotation_verify_failures.get_or_create(&object);
        let gauges = RotationGauges::of(spec, status, now);
        set_or_remove(&self.rotation_phase_seconds, &object, gauges.phase_seconds);
        set_or_remove(
            &self.rotation_phase_limit_seconds,
            &object,
            gauges.phase_limit_seconds,
        );
        set_or_remove(
            &self.rotation_interval_seconds,
            &object,
            gauges.interval_seconds,
        );
        set_or_remove(
            &self.last_rollback_timestamp_seconds,
            &object,
            gauges.last_rollback_timestamp,
        );
    }

    /// Counts pods that failed verification this round.
    pub fn verify_failed(&self, namespace: &str, name: &str, pods: u64) {
        if pods > 0 {
            self.rotation_verify_failures
                .get_or_create(&object_labels(namespace, name))
                .inc_by(pods);
        }
    }

    /// One Propagating phase ended at its ceiling without every verifier's evidence.
    pub fn propagation_timed_out(&self, namespace: &str, name: &str) {
        self.propagation_timeouts
            .get_or_create(&object_labels(namespace, name))
            .inc();
    }

    /// Drops every series of a deleted `MacpAuth`.
    pub(crate) fn forget(&self, namespace: &str, name: &str) {
        for &phase in RotationPhase::VARIANTS {
            self.rotation_phase
                .remove(&phase_labels(namespace, name, phase));
        }
        let object = object_labels(namespace, name);
        self.seconds_since_last_rotation.remove(&object);
        self.rotation_verify_failures.remove(&object);
        self.propagation_timeouts.remove(&object);
        self.rotation_phase_seconds.remove(&object);
        self.rotation_phase_limit_seconds.remove(&object);
        self.rotation_interval_seconds.remove(&object);
        self.last_rollback_timestamp_seconds.remove(&object);
    }

    /// OpenMetrics text of every metric, ending with its one `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("encoding metrics failed");
        }
        out
    }
}

/// The per-`MacpAuth` gauges the alerting rules compare with each other,
/// derived from the spec and the status a round ended with (no I/O).
#[derive(Debug, Default, PartialEq)]
struct RotationGauges {
    phase_seconds: Option<f64>,
    phase_limit_seconds: Option<f64>,
    interval_seconds: Option<f64>,
    last_rollback_timestamp: Option<f64>,
}

impl RotationGauges {
    fn of(spec: &RotationSpec, status: &MacpAuthStatus, now: DateTime<Utc>) -> Self {
        let in_flight = status
            .rotation
            .as_ref()
            .filter(|r| r.phase != RotationPhase::Idle);
        let since = in_flight.and_then(|r| r.phase_since);
        let phase_seconds = since.map(|t| seconds(now - t));
        let phase_limit_seconds = in_flight.map(|r| {
            let mut wait = match (r.phase_since, r.wait_until) {
                (Some(from), Some(to)) => seconds(to - from),
                _ => 0.0,
            };
            // A phase gated by verifier evidence may hold up to its ceiling.
            if phase::gate(r.phase) == Gate::VerifierEvidence && spec.verifier_evidence {
                wait = wait.max(spec.propagation_timeout_seconds.max(0) as f64);
            }
            spec.rollout_timeout_seconds.max(0) as f64 + wait
        });
        let interval_seconds = spec
            .interval
            .as_deref()
            .filter(|_| !spec.paused)
            .and_then(|text| rotation::parse_interval(text).ok())
            .map(|d| d.as_secs_f64());
        let last_rollback_timestamp = status
            .history
            .iter()
            .filter(|r| r.outcome == RotationOutcome::RolledBack)
            .map(|r| r.finished_at)
            .max()
            .map(|t| t.timestamp_millis() as f64 / 1000.0);
        Self {
            phase_seconds,
            phase_limit_seconds,
            interval_seconds,
            last_rollback_timestamp,
        }
    }
}

/// Non-negative seconds of a duration, to the millisecond.
fn seconds(d: chrono::Duration) -> f64 {
    d.num_milliseconds().max(0) as f64 / 1000.0
}

fn set_or_remove(
    family: &Family<ObjectLabels, Gauge<f64, AtomicU64>>,
    object: &ObjectLabels,
    value: Option<f64>,
) {
    match value {
        Some(v) => {
            family.get_or_create(object).set(v);
        }
        None => {
            family.remove(object);
        }
    }
}

fn object_labels(namespace: &str, name: &str) -> ObjectLabels {
    ObjectLabels {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

fn phase_labels(namespace: &str, name: &str, phase: RotationPhase) -> PhaseLabels {
    PhaseLabels {
        namespace: namespace.to_string(),
        name: name.to_string(),
        phase: format!("{phase:?}"),
    }
}

/// When the active key started signing: `lastRotationTime`, or for a
/// resource that never rotated, when its first key was created (history).
fn last_rotation(status: &MacpAuthStatus) -> Option<DateTime<Utc>> {
    status
        .last_rotation_time
        .or_else(|| status.history.iter().map(|r| r.finished_at).max())
}

/// Pods of this round that contradict what the rotation in flight expects,
/// judged exactly as the rotation machine judges them (same plan, same
/// verification) but pod by pod, so two bad pods count two. Zero outside
/// rollout phases, while the rollout is still running (old pods are expected
/// then), when the Secret does not hold the plan yet, and for pods that
/// merely could not be probed (inconclusive is not a failure).
pub(crate) fn failed_verifications(status: &MacpAuthStatus, observed: &Observed) -> u64 {
    let Some(rot) = status.rotation.as_ref() else {
        return 0;
    };
    let Some(plan) = rotation::desired_plan(rot) else {
        return 0;
    };
    if !observed.keyset.as_ref().is_some_and(|k| plan.matches(k)) {
        return 0;
    }
    let probes = rotation::probe_plan(status);
    if !probes.jwks {
        return 0;
    }
    let failed = observed
        .pods
        .iter()
        .filter(|pod| {
            let one = Observed {
                pods: vec![(*pod).clone()],
                ..observed.clone()
            };
            matches!(
                rotation::verify(&plan, &one, probes.signing),
                Verdict::Mismatch(_)
            )
        })
        .count();
    u64::try_from(failed).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{RotationStatus, RotationTrigger, SigningAlg};
    use crate::rotation::{KeyView, KeysetView, PodView, Rollout};
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    fn key(kid: &str) -> KeyView {
        KeyView {
            kid: kid.into(),
            alg: SigningAlg::ES256,
            rsa_bits: None,
        }
    }

    fn pod(name: &str, kids: &[&str]) -> PodView {
        PodView {
            name: name.into(),
            served_kids: Ok(kids.iter().map(|k| k.to_string()).collect()),
            signing_kid: None,
        }
    }

    /// A routine rotation publishing `new` next to the active `old`.
    fn publishing() -> (MacpAuthStatus, KeysetView) {
        let status = MacpAuthStatus {
            rotation: Some(RotationStatus {
                phase: RotationPhase::Publishing,
                trigger: Some(RotationTrigger::Manual),
                old_kid: Some("old".into()),
                new_kid: Some("new".into()),
                ..RotationStatus::default()
            }),
            ..MacpAuthStatus::default()
        };
        let keyset = KeysetView {
            active: key("old"),
            published: vec!["new".into()],
            next: Some(key("new")),
            previous: None,
        };
        (status, keyset)
    }

    #[test]
    fn verification_failures_are_counted_per_contradicting_pod() {
        let (status, keyset) = publishing();
        let mut observed = Observed {
            keyset: Some(keyset),
            rollout: Rollout::Complete,
            pods: vec![
                pod("p0", &["old", "new"]),
                pod("p1", &["old"]),
                pod("p2", &["other"]),
                PodView {
                    name: "p3".into(),
                    served_kids: Err("connection refused".into()),
                    signing_kid: None,
                },
            ],
            verifiers: Vec::new(),
        };
        assert_eq!(failed_verifications(&status, &observed), 2);
        // While the rollout runs, old pods are expected: nothing counts.
        observed.rollout = Rollout::InProgress;
        assert_eq!(failed_verifications(&status, &observed), 0);
        observed.rollout = Rollout::Complete;
        // Idle: no rotation, nothing to verify against.
        assert_eq!(
            failed_verifications(&MacpAuthStatus::default(), &observed),
            0
        );
        // The Secret does not hold the plan yet: the machine rewrites it, no verdict.
        observed.keyset.as_mut().unwrap().published.clear();
        assert_eq!(failed_verifications(&status, &observed), 0);
    }

    #[test]
    fn renders_rotation_series_with_labels() {
        let m = Metrics::default();
        let (mut status, _) = publishing();
        status.last_rotation_time = Some(t(0));
        m.observe_rotation("auth", "prod", &RotationSpec::default(), &status, t(90));
        m.verify_failed("auth", "prod", 2);
        m.verify_failed("auth", "prod", 0);
        let text = m.render();
        for line in [
            "macp_operator_rotation_phase{namespace=\"auth\",name=\"prod\",phase=\"Publishing\"} 1",
            "macp_operator_rotation_phase{namespace=\"auth\",name=\"prod\",phase=\"Idle\"} 0",
            "macp_operator_rotation_phase{namespace=\"auth\",name=\"prod\",phase=\"RollingBack\"} 0",
            "macp_operator_seconds_since_last_rotation{namespace=\"auth\",name=\"prod\"} 90.0",
            "macp_operator_rotation_verify_failures_total{namespace=\"auth\",name=\"prod\"} 2",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert_eq!(text.matches("macp_operator_rotation_phase{").count(), 8);

        // Back to Idle: the phase moves, exactly one series is 1.
        status.rotation = None;
        m.observe_rotation("auth", "prod", &RotationSpec::default(), &status, t(100));
        let text = m.render();
        assert!(text.contains(
            "macp_operator_rotation_phase{namespace=\"auth\",name=\"prod\",phase=\"Idle\"} 1"
        ));
        assert_eq!(text.matches("\"} 1\n").count(), 1, "{text}");

        m.forget("auth", "prod");
        let text = m.render();
        assert!(!text.contains("name=\"prod\""), "{text}");
    }

    #[test]
    fn age_falls_back_to_the_first_key_and_is_absent_without_one() {
        let m = Metrics::default();
        m.observe_rotation(
            "auth",
            "new",
            &RotationSpec::default(),
            &MacpAuthStatus::default(),
            t(5),
        );
        assert!(!m.render().contains("seconds_since_last_rotation{"));
        let status = MacpAuthStatus {
            history: vec![crate::crd::RotationRecord {
                trigger: RotationTrigger::Initial,
                request_id: None,
                old_kid: None,
                new_kid: Some("k".into()),
                started_at: t(0),
                finished_at: t(0),
                outcome: crate::crd::RotationOutcome::Succeeded,
                message: None,
            }],
            ..MacpAuthStatus::default()
        };
        m.observe_rotation("auth", "new", &RotationSpec::default(), &status, t(5));
        assert!(m.render().contains(
            "macp_operator_seconds_since_last_rotation{namespace=\"auth\",name=\"new\"} 5.0"
        ));
    }

    fn record(outcome: crate::crd::RotationOutcome, finished: i64) -> crate::crd::RotationRecord {
        crate::crd::RotationRecord {
            trigger: RotationTrigger::Manual,
            request_id: None,
            old_kid: Some("a".into()),
            new_kid: Some("b".into()),
            started_at: t(finished - 10),
            finished_at: t(finished),
            outcome,
            message: None,
        }
    }

    #[test]
    fn alerting_gauges_follow_phase_waits_schedule_and_rollbacks() {
        use crate::crd::RotationOutcome::{RolledBack, Succeeded};
        let spec = RotationSpec {
            interval: Some("1h".into()),
            rollout_timeout_seconds: 300,
            ..RotationSpec::default()
        };
        let (mut status, _) = publishing();
        // Propagating since t=100, waiting until t=160, but it may hold for
        // verifier evidence up to its ceiling: limit = 300 + 1800.
        let rot = status.rotation.as_mut().unwrap();
        rot.phase = RotationPhase::Propagating;
        rot.phase_since = Some(t(100));
        rot.wait_until = Some(t(160));
        status.history = vec![
            record(RolledBack, 20),
            record(Succeeded, 50),
            record(RolledBack, 40),
        ];
        let g = RotationGauges::of(&spec, &status, t(130));
        assert_eq!(
            g,
            RotationGauges {
                phase_seconds: Some(30.0),
                phase_limit_seconds: Some(2100.0),
                interval_seconds: Some(3600.0),
                last_rollback_timestamp: Some(t(40).timestamp() as f64),
            }
        );
        // A rollout phase without a wait: the rollout timeout alone.
        let rot = status.rotation.as_mut().unwrap();
        rot.phase = RotationPhase::Activating;
        rot.wait_until = None;
        assert_eq!(
            RotationGauges::of(&spec, &status, t(130)).phase_limit_seconds,
            Some(300.0)
        );
        // Idle, paused, no rollback: every gauge absent.
        let paused = RotationSpec {
            paused: true,
            ..spec.clone()
        };
        assert_eq!(
            RotationGauges::of(&paused, &MacpAuthStatus::default(), t(130)),
            RotationGauges::default()
        );

        let m = Metrics::default();
        m.observe_rotation("auth", "prod", &spec, &status, t(130));
        let text = m.render();
        for line in [
            "macp_operator_rotation_phase_seconds{namespace=\"auth\",name=\"prod\"} 30.0",
            "macp_operator_rotation_phase_limit_seconds{namespace=\"auth\",name=\"prod\"} 300.0",
            "macp_operator_rotation_interval_seconds{namespace=\"auth\",name=\"prod\"} 3600.0",
            "macp_operator_last_rollback_timestamp_seconds{namespace=\"auth\",name=\"prod\"}",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // Back to Idle and paused: the gauges go away instead of going stale.
        m.observe_rotation("auth", "prod", &paused, &MacpAuthStatus::default(), t(140));
        let text = m.render();
        assert!(!text.contains("rotation_phase_seconds{"), "{text}");
        assert!(!text.contains("rotation_interval_seconds{"), "{text}");
        assert!(!text.contains("last_rollback_timestamp_seconds{"), "{text}");
    }

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(3));
        m.failed("Kube");
        m.wrote("secrets");
        let text = m.render();
        assert!(text.contains("macp_operator_reconciles_total 1"), "{text}");
        assert!(
            text.contains("macp_operator_reconcile_errors_total{reason=\"Kube\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("macp_operator_writes_total{resource=\"secrets\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("macp_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }
}
