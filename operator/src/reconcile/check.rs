//! Step 1: validate the name and the spec. An invalid one is reported and
//! nothing is touched: no key is generated for a name the objects cannot carry.
//!
//! One exception: an emergency rotation does not wait for a valid spec. It
//! runs with the last spec that passed these checks (`status.lastValidSpec`,
//! recorded by every round whose spec is valid), `Degraded` stays
//! `InvalidSpec`, and a Warning event says so. Routine rotations keep
//! waiting for a valid spec.

use std::ops::ControlFlow;
use std::time::Duration;

use kube::ResourceExt;
use tracing::warn;

use crate::conditions::READY;
use crate::crd::{
    EMERGENCY_ROTATE_ANNOTATION, LastValidSpec, MacpAuthSpec, RotationPhase, RotationTrigger,
};
use crate::validate;

use super::round::Round;

/// Reason of the Warning event of an emergency that runs with the last valid spec.
const REASON_EMERGENCY_WITH_LAST_VALID_SPEC: &str = "EmergencyWithLastValidSpec";
/// Reason of the Warning event of an emergency that cannot run: the spec is
/// invalid and no valid one was ever recorded.
const REASON_EMERGENCY_BLOCKED: &str = "EmergencyBlockedByInvalidSpec";

/// What an invalid spec means for an emergency rotation.
enum Emergency {
    /// None requested and none in flight.
    None,
    /// A new `macp.io/emergency-rotate` value (not yet handled).
    Requested(String),
    /// An emergency rotation that started earlier and has not finished.
    InFlight,
}

impl Round<'_> {
    /// `Break` (wait for a change) with `Degraded` and `Ready` set when the
    /// name or the spec cannot be applied, unless an emergency rotation runs
    /// with the last valid spec.
    pub(super) fn validate(&mut self) -> ControlFlow<Option<Duration>> {
        let name_errors = validate::validate_name(&self.owner.name);
        if !name_errors.is_empty() {
            let message = name_errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            self.degrade(validate::REASON_INVALID_NAME, &message);
            self.set(
                READY,
                false,
                validate::REASON_INVALID_NAME,
                "the owned objects cannot be named after this MacpAuth; nothing was created",
            );
            return ControlFlow::Break(None);
        }

        let errors = validate::validate(self.spec());
        if errors.is_empty() {
            self.record_valid_spec();
            return ControlFlow::Continue(());
        }
        let message = validate::message(&errors);
        self.degrade(validate::REASON_INVALID_SPEC, &message);
        self.set(
            READY,
            false,
            validate::REASON_INVALID_SPEC,
            "the spec cannot be applied; nothing was changed",
        );
        match self.emergency() {
            Emergency::None => ControlFlow::Break(None),
            Emergency::Requested(id) => match self.last_valid_spec() {
                Some((spec, generation)) => {
                    let from =
                        generation.map_or_else(String::new, |g| format!(" (generation {g})"));
                    self.note(
                        true,
                        REASON_EMERGENCY_WITH_LAST_VALID_SPEC,
                        format!(
                            "emergency rotation {id} runs with the last valid spec{from}: the current spec is invalid ({message}); routine rotations wait until it is fixed"
                        ),
                    );
                    self.fallback = Some(spec);
                    ControlFlow::Continue(())
                }
                None => {
                    self.note(
                        true,
                        REASON_EMERGENCY_BLOCKED,
                        format!(
                            "emergency rotation {id} cannot run: the spec is invalid ({message}) and no valid spec was ever recorded; fix the spec"
                        ),
                    );
                    ControlFlow::Break(None)
                }
            },
            Emergency::InFlight => match self.last_valid_spec() {
                Some((spec, _)) => {
                    self.fallback = Some(spec);
                    ControlFlow::Continue(())
                }
                None => ControlFlow::Break(None),
            },
        }
    }

    /// Keeps the spec this round applies as the last valid one.
    fn record_valid_spec(&mut self) {
        match serde_json::to_value(&self.mauth.spec) {
            Ok(spec) => {
                self.status.last_valid_spec = Some(LastValidSpec {
                    generation: self.generation,
                    spec,
                })
            }
            // Not expected (the spec was just deserialized); the previous
            // record stays, which is the right fallback anyway.
            Err(e) => {
                warn!(name = %self.owner.name, error = %e, "spec not recorded as the last valid one")
            }
        }
    }

    /// The last valid spec and its generation; `None` when none was
    /// recorded or it no longer reads as a spec.
    fn last_valid_spec(&self) -> Option<(MacpAuthSpec, Option<i64>)> {
        let last = self.status.last_valid_spec.as_ref()?;
        let spec = serde_json::from_value::<MacpAuthSpec>(last.spec.clone())
            .inspect_err(|e| warn!(name = %self.owner.name, error = %e, "the last valid spec does not read back"))
            .ok()?;
        // Not checked again: it was valid when recorded, the pods run with
        // it, and a check added since must not block an emergency.
        Some((spec, last.generation))
    }

    fn emergency(&self) -> Emergency {
        let requested = self
            .mauth
            .annotations()
            .get(EMERGENCY_ROTATE_ANNOTATION)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .filter(|v| self.status.handled_emergency_request.as_deref() != Some(*v));
        if let Some(id) = requested {
            return Emergency::Requested(id.to_string());
        }
        let in_flight = self.status.rotation.as_ref().is_some_and(|r| {
            r.phase != RotationPhase::Idle && r.trigger == Some(RotationTrigger::Emergency)
        });
        if in_flight {
            Emergency::InFlight
        } else {
            Emergency::None
        }
    }
}
