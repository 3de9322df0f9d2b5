//! Verifier evidence in the machine: keeping `status.verifiers` and the cache
//! TTL in effect from the pods' reports, and holding Propagating until every
//! verifier seen fetching has the new key ([`crate::rotation::evidence`]).

use crate::rotation::reasons::{EVENT_VERIFIER_EVIDENCE_UNAVAILABLE, EVENT_WAITING_FOR_VERIFIERS};
use std::time::Duration;

use crate::conditions::{self, VERIFIERS_PROPAGATED};
use crate::rotation::POLL;
use crate::rotation::evidence::{self, PodReport};
use crate::rotation::phase::{self, VerifierWatch};
use crate::rotation::reasons::{
    REASON_EVIDENCE_NOT_USED, REASON_PROPAGATION_TIMEOUT, REASON_VERIFIERS_FETCHED,
};
use crate::rotation::schedule::{add_secs, until};

use super::Machine;

/// How a pod without `GET /verifiers` (an image older than the endpoint) answers.
const NOT_SERVED: &str = "answered HTTP 404";

impl Machine<'_> {
    fn reports(&self) -> &[PodReport] {
        &self.inp.observed.verifiers
    }

    /// The cache TTL the Propagating wait counts ([`evidence::cache_ttl_in_effect`]).
    pub(super) fn cache_ttl(&self) -> i64 {
        let configured = self.inp.spec.jwks_cache_ttl_seconds;
        self.status
            .jwks_cache_ttl_in_effect_seconds
            .map_or(configured, |t| t.max(configured))
    }

    /// Updates `status.verifiers` and the cache TTL in effect from this
    /// round's reports. Runs every round; without reports only the TTL's
    /// rise to the spec applies.
    pub(super) fn observe_verifiers(&mut self) {
        let now = self.now();
        let spec = self.inp.spec;
        let configured = spec.jwks_cache_ttl_seconds;
        let gathered = !self.reports().is_empty();
        let watch = phase::verifier_watch(self.rot.phase);
        let previous_known = self
            .status
            .verifiers
            .as_ref()
            .map(|v| v.known.clone())
            .unwrap_or_default();
        let known = if !gathered {
            None
        } else if watch == VerifierWatch::Baseline {
            Some(evidence::start(&previous_known, self.reports(), now))
        } else {
            let propagating = watch == VerifierWatch::NewKey;
            let new_kid = self.rot.new_kid.clone().filter(|_| propagating);
            Some(evidence::merge(
                &previous_known,
                self.reports(),
                new_kid.as_deref(),
                now,
            ))
        };
        let ttl = if spec.rotation.verifier_evidence {
            evidence::cache_ttl_in_effect(
                self.status.jwks_cache_ttl_in_effect_seconds,
                configured,
                known.as_deref(),
                now,
            )
        } else {
            configured
        };
        self.status.jwks_cache_ttl_in_effect_seconds = Some(ttl);
        if let Some(known) = known {
            let propagating = watch == VerifierWatch::NewKey;
            self.status.verifiers = Some(evidence::summary(known, ttl, now, propagating));
        }
    }

    /// Whether Propagating may end now that its configured wait is over:
    /// every recent verifier has fetched the new key, or the ceiling passed
    /// (with a Warning naming the ones that did not), or there is no evidence
    /// to wait for. Otherwise it says whom it waits for and polls.
    pub(super) fn evidence_allows_activation(&mut self) -> bool {
        let now = self.now();
        let spec = self.inp.spec;
        let new = self.rot.new_kid.clone().unwrap_or_default();
        if !spec.rotation.verifier_evidence {
            self.verifiers_propagated(
                true,
                REASON_EVIDENCE_NOT_USED,
                format!(
                    "rotation.verifierEvidence is off: {new} signs after the cache TTL + slack, whatever the verifiers fetched"
                ),
            );
            return true;
        }
        let reports = self.reports();
        if !reports.is_empty()
            && reports
                .iter()
                .all(|r| r.as_ref().is_err_and(|e| e.contains(NOT_SERVED)))
        {
            self.event(
                true,
                EVENT_VERIFIER_EVIDENCE_UNAVAILABLE,
                format!(
                    "the token-service pods do not serve GET /verifiers (an older image?): {new} signs after the cache TTL + slack without evidence"
                ),
            );
            self.verifiers_propagated(
                true,
                REASON_EVIDENCE_NOT_USED,
                "the pods do not report the verifiers that fetch their JWKS".to_string(),
            );
            return true;
        }
        let ttl = self.cache_ttl();
        let known = self
            .status
            .verifiers
            .as_ref()
            .map(|v| v.known.clone())
            .unwrap_or_default();
        let pending = evidence::pending(&known, ttl, now);
        let unanswered: Vec<String> = self
            .inp
            .observed
            .pods
            .iter()
            .zip(reports)
            .filter_map(|(pod, r)| r.as_ref().err().map(|e| format!("{} ({e})", pod.name)))
            .collect();
        if pending.is_empty() && unanswered.is_empty() {
            let observed = self.status.verifiers.as_ref().map_or(0, |v| v.observed);
            self.verifiers_propagated(
                true,
                REASON_VERIFIERS_FETCHED,
                format!("all {observed} verifiers seen fetching the JWKS fetched one holding {new} before it signed"),
            );
            return true;
        }
        let since = self.rot.phase_since.unwrap_or(now);
        let ceiling = add_secs(since, spec.rotation.propagation_timeout_seconds);
        let whom = if pending.is_empty() {
            format!(
                "pods that did not answer GET /verifiers: {}",
                unanswered.join(", ")
            )
        } else {
            evidence::names(&pending)
        };
        if now >= ceiling {
            let message = format!(
                "{new} signs without evidence from every verifier: after {}s (rotation.propagationTimeoutSeconds) these never fetched a JWKS holding it: {whom}",
                spec.rotation.propagation_timeout_seconds
            );
            self.event(true, REASON_PROPAGATION_TIMEOUT, message.clone());
            self.verifiers_propagated(false, REASON_PROPAGATION_TIMEOUT, message);
            return true;
        }
        let was_waiting = self
            .inp
            .status
            .verifiers
            .as_ref()
            .is_some_and(|v| !v.waiting_for.is_empty());
        let message = format!(
            "waiting for {} to fetch a JWKS holding {new} (at most until {})",
            whom,
            ceiling.to_rfc3339()
        );
        if !was_waiting {
            self.event(false, EVENT_WAITING_FOR_VERIFIERS, message.clone());
        }
        self.rot.message = Some(message);
        self.requeue_soon(
            POLL.min(until(now, ceiling))
                .max(Duration::from_millis(100)),
        );
        false
    }

    fn verifiers_propagated(&mut self, ok: bool, reason: &str, message: String) {
        conditions::set(
            &mut self.status.conditions,
            VERIFIERS_PROPAGATED,
            ok,
            reason,
            &message,
            self.inp.now,
            self.inp.generation,
        );
    }
}
