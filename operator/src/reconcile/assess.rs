//! Step 7: assess. The round's status becomes the decision's, with the
//! keyset now in the Secret and the emergency TTL clamp; `Ready` (and the
//! rollout's `Degraded`) come from [`readiness`], and the round's requeue is
//! the soonest of everything that is waiting.

use std::time::Duration;

use tracing::info;

use crate::conditions::{PROGRESSING, READY};
use crate::readiness::{self, Readiness, RolloutDegraded};
use crate::rotation::Decision;
use crate::rotation::PodView;
use crate::spread::{self, spread};
use crate::ttl_clamp::{self, Clamp};

use super::NOT_READY_REQUEUE;
use super::execute::Executed;
use super::observe::Seen;
use super::round::Round;

impl Round<'_> {
    /// Settles the status; returns when to run again.
    pub(super) fn assess(
        &mut self,
        decision: Decision,
        executed: &Executed,
        seen: &Seen,
    ) -> Option<Duration> {
        self.status = decision.status;
        self.status.observed_generation = self.generation;
        self.status.active_kid = Some(executed.keyset.active.kid.clone());
        self.status.published_kids = executed.keyset.published_kids();
        self.events.extend(decision.events);
        self.record_clamp(executed.clamp);

        // Every available pod, of whatever template, serves verifiers.
        let available: Vec<PodView> = seen
            .observed
            .pods
            .iter()
            .chain(&seen.others)
            .cloned()
            .collect();
        // This round's writes roll the pods: the rollout seen before them is
        // not theirs, but the pods seen keep serving until replaced.
        let readiness = if executed.keyset_changed || executed.ttl_changed {
            readiness::rolling_out(
                executed.keyset_changed,
                &executed.keyset.active.kid,
                &available,
            )
        } else {
            readiness::assess(
                &seen.rollout,
                &executed.keyset.active.kid,
                &available,
                &self.status.conditions,
            )
        };
        let ready_requeue = self.set_readiness(readiness);

        // The clamp's end is a deadline nobody else watches: requeue for it.
        let requeue = [
            decision.requeue_after,
            ready_requeue,
            ttl_clamp::requeue_after(executed.clamp.as_ref(), self.now),
            // Spread per object, so objects created together do not all
            // resync in the same second.
            Some(spread(
                self.ctx.settings.resync_interval,
                &spread::key(&self.owner.namespace, &self.owner.name),
            )),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.ctx.settings.resync_interval);
        Some(requeue)
    }

    /// Writes `Ready`, `Progressing` and the rollout's `Degraded`; returns a
    /// requeue while not ready or rolling.
    fn set_readiness(&mut self, r: Readiness) -> Option<Duration> {
        match &r.degraded {
            RolloutDegraded::Set { reason, message } => self.degrade(reason, message),
            RolloutDegraded::Clear => self.undegrade(),
            RolloutDegraded::Keep => {}
        }
        self.set(READY, r.ready, r.reason, &r.message);
        self.set(
            PROGRESSING,
            r.progress.progressing,
            r.progress.reason,
            &r.progress.message,
        );
        (!r.ready || r.progress.progressing).then_some(NOT_READY_REQUEUE)
    }

    /// Records the clamp in status and announces when it starts and when it is lifted.
    fn record_clamp(&mut self, clamp: Option<Clamp>) {
        let was = self
            .mauth
            .status
            .as_ref()
            .and_then(|s| s.emergency_ttl_clamp.clone());
        let normal = self.ttl(None);
        match (&was, clamp) {
            (None, Some(c)) => {
                let ttl = self.ttl(Some(&c));
                let request = self
                    .status
                    .rotation
                    .as_ref()
                    .and_then(|r| r.request_id.clone())
                    .unwrap_or_else(|| "?".into());
                info!(name = %self.owner.name, namespace = %self.owner.namespace, max_ttl = ttl.max_ttl_seconds, %request, "emergency TTL clamp on");
                self.note(
                    false,
                    "EmergencyTtlClamp",
                    format!(
                        "emergency rotation {request}: max token TTL lowered from {}s to {}s (default {}s) until drainSeconds after the rotation",
                        normal.max_ttl_seconds, ttl.max_ttl_seconds, ttl.default_ttl_seconds
                    ),
                );
            }
            (Some(_), None) => {
                info!(name = %self.owner.name, namespace = %self.owner.namespace, max_ttl = normal.max_ttl_seconds, "emergency TTL clamp lifted");
                self.note(
                    false,
                    "EmergencyTtlRestored",
                    format!(
                        "max token TTL restored to {}s (default {}s)",
                        normal.max_ttl_seconds, normal.default_ttl_seconds
                    ),
                );
            }
            _ => {}
        }
        self.status.emergency_ttl_clamp = clamp.map(Clamp::to_status);
    }
}
