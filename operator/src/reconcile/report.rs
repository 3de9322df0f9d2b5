//! Step 8: report. Patch the status if it changed, conditional on the
//! resourceVersion read in step 0, then emit the round's events.

use std::time::Duration;

use kube::Resource;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use tracing::{debug, info, warn};

use crate::resources::MANAGER;
use crate::rotation;
use crate::status;

use super::round::Round;
use super::{CONFLICT_REQUEUE, Error};

impl Round<'_> {
    /// Writes what the round decided and passes its `requeue` on; a round
    /// that lost the race for the status runs again after [`CONFLICT_REQUEUE`].
    pub(super) async fn report(
        &mut self,
        requeue: Option<Duration>,
    ) -> Result<Option<Duration>, Error> {
        if !self.write_status().await? {
            return Ok(Some(CONFLICT_REQUEUE));
        }
        self.publish_events().await;
        self.ctx.metrics.observe_rotation(
            &self.owner.namespace,
            &self.owner.name,
            &self.spec().rotation,
            &self.status,
            self.now,
        );
        Ok(requeue)
    }

    /// Patches the status when it changed. `Ok(false)`: the MacpAuth changed
    /// since this round read it (409), so neither the status nor the events
    /// are written; the round runs again.
    async fn write_status(&mut self) -> Result<bool, Error> {
        let old = self.mauth.status.clone().unwrap_or_default();
        let rv = self.mauth.resource_version();
        let Some(patch) = status::status_patch(&old, &self.status, rv.as_deref())? else {
            return Ok(true);
        };
        debug!(name = %self.owner.name, %patch, "patching status");
        self.ctx.metrics.wrote("macpauths/status");
        let pp = PatchParams {
            field_manager: Some(MANAGER.to_string()),
            ..PatchParams::default()
        };
        match self
            .apis
            .mauths
            .patch_status(&self.owner.name, &pp, &Patch::Merge(&patch))
            .await
        {
            Ok(written) => {
                self.written = Some(written);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                info!(name = %self.owner.name, namespace = %self.owner.namespace,
                      "the MacpAuth changed during the round; its status is decided again");
                self.events.clear();
                Ok(false)
            }
            Err(e) => Err(Error::kube(
                "patch status of",
                "MacpAuth",
                &self.owner.name,
                e,
            )),
        }
    }

    async fn publish_events(&mut self) {
        let reference = self.mauth.object_ref(&());
        for e in self.events.drain(..) {
            if e.reason == rotation::REASON_PROPAGATION_TIMEOUT {
                self.ctx
                    .metrics
                    .propagation_timed_out(&self.owner.namespace, &self.owner.name);
            }
            let event = KubeEvent {
                type_: if e.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                action: "Reconcile".into(),
                reason: e.reason,
                note: Some(truncate(&e.message, 1000)),
                secondary: None,
            };
            // An event that cannot be published is not a reason to redo the round.
            if let Err(e) = self.ctx.recorder.publish(&event, &reference).await {
                warn!(name = %self.owner.name, error = %e, reason = %event.reason, "publishing event failed");
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
