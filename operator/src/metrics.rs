//! Prometheus metrics of the reconciler (prefix `macp_operator`).
//!
//! Per-`MacpAuth` series carry `namespace` and `name` labels. They are set at
//! the end of each reconciliation, so `seconds_since_last_rotation` is as
//! fresh as the last reconcile (at most the resync interval old), not a live
//! clock; alert on it with a margin of one resync interval.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::{MacpAuthStatus, RotationPhase};
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

/// The reconciler's metrics, registered in their own registry.
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
        Self {
            reconciles,
            errors,
            writes,
            duration,
            rotation_phase,
            seconds_since_last_rotation,
            rotation_verify_failures,
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
        status: &MacpAuthStatus,
        now: DateTime<Utc>,
    ) {
        let current = status
            .rotation
            .as_ref()
            .map(|r| r.phase)
            .unwrap_or_default();
        for phase in RotationPhase::ALL {
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
    }

    /// Counts pods that failed verification this round.
    pub fn verify_failed(&self, namespace: &str, name: &str, pods: u64) {
        if pods > 0 {
            self.rotation_verify_failures
                .get_or_create(&object_labels(namespace, name))
                .inc_by(pods);
        }
    }

    /// Drops every series of a deleted `MacpAuth`.
    pub fn forget(&self, namespace: &str, name: &str) {
        for phase in RotationPhase::ALL {
            self.rotation_phase
                .remove(&phase_labels(namespace, name, phase));
        }
        let object = object_labels(namespace, name);
        self.seconds_since_last_rotation.remove(&object);
        self.rotation_verify_failures.remove(&object);
    }

    /// OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("encoding metrics failed");
        }
        out
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
pub fn failed_verifications(status: &MacpAuthStatus, observed: &Observed) -> u64 {
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
        m.observe_rotation("auth", "prod", &status, t(90));
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
        m.observe_rotation("auth", "prod", &status, t(100));
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
        m.observe_rotation("auth", "new", &MacpAuthStatus::default(), t(5));
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
        m.observe_rotation("auth", "new", &status, t(5));
        assert!(m.render().contains(
            "macp_operator_seconds_since_last_rotation{namespace=\"auth\",name=\"new\"} 5.0"
        ));
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
