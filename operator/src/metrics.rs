//! Prometheus metrics of the reconciler.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub resource: String,
}

/// The reconciler's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub writes: Family<WriteLabels, Counter>,
    pub duration: Histogram,
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
        Self {
            reconciles,
            errors,
            writes,
            duration,
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

    /// OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
