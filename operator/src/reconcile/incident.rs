//! After step 8: remove the `macp.io/emergency-rotate` annotation once its
//! emergency rotation is recorded in the status (`handledEmergencyRequest`).
//!
//! Left in place, a handled value makes a later `kubectl annotate
//! --overwrite` with the same value (a drill's `INC-1234`, then the real
//! incident's) a no-op the operator never hears of. Removed, setting it
//! again is a change, and the rotation machine answers it with a Warning
//! and the `EmergencyRequest` condition naming the value and when it was
//! handled. It is removed only while its own rotation is in flight, so a
//! value re-applied after that (by a GitOps tool, say) is warned about once
//! and left alone: no loop of removals and re-applies.

use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use tracing::{debug, info};

use crate::crd::{EMERGENCY_ROTATE_ANNOTATION, RotationPhase, RotationTrigger};
use crate::resources::MANAGER;

use super::Error;
use super::round::Round;

impl Round<'_> {
    /// Removes the emergency annotation if the persisted status records it
    /// as handled and its rotation is in flight. A conflict (the MacpAuth
    /// changed meanwhile) leaves it to a later round.
    pub(super) async fn remove_handled_emergency_request(&mut self) -> Result<(), Error> {
        let current = self.written.as_ref().unwrap_or(self.mauth);
        let Some(value) = current.annotations().get(EMERGENCY_ROTATE_ANNOTATION) else {
            return Ok(());
        };
        let Some(status) = current.status.as_ref() else {
            return Ok(());
        };
        let value = value.trim();
        let handled = status.handled_emergency_request.as_deref() == Some(value);
        let in_flight = status.rotation.as_ref().is_some_and(|r| {
            r.phase != RotationPhase::Idle
                && r.trigger == Some(RotationTrigger::Emergency)
                && r.request_id.as_deref() == Some(value)
        });
        if !handled || !in_flight {
            return Ok(());
        }
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": current.resource_version(),
                "annotations": {EMERGENCY_ROTATE_ANNOTATION: null},
            }
        });
        let pp = PatchParams {
            field_manager: Some(MANAGER.to_string()),
            ..PatchParams::default()
        };
        self.ctx.metrics.wrote("macpauths");
        match self
            .apis
            .mauths
            .patch(&self.owner.name, &pp, &Patch::Merge(&patch))
            .await
        {
            Ok(patched) => {
                info!(name = %self.owner.name, namespace = %self.owner.namespace, request = value,
                      "emergency request recorded in the status; its annotation removed");
                self.written = Some(patched);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(name = %self.owner.name, "the MacpAuth changed; the emergency annotation is removed by a later round");
                Ok(())
            }
            Err(e) => Err(Error::kube(
                "remove the emergency annotation of",
                "MacpAuth",
                &self.owner.name,
                e,
            )),
        }
    }
}
