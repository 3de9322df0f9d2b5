//! Step 1: validate the name and the spec. An invalid one is reported and
//! nothing is touched: no key is generated for a name the objects cannot carry.

use std::ops::ControlFlow;
use std::time::Duration;

use crate::conditions::READY;
use crate::validate;

use super::round::Round;

impl Round<'_> {
    /// `Break` (wait for a change) with `Degraded` and `Ready` set when the
    /// name or the spec cannot be applied.
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
        if !errors.is_empty() {
            let message = validate::message(&errors);
            self.degrade(validate::REASON_INVALID_SPEC, &message);
            self.set(
                READY,
                false,
                validate::REASON_INVALID_SPEC,
                "the spec cannot be applied; nothing was changed",
            );
            return ControlFlow::Break(None);
        }
        ControlFlow::Continue(())
    }
}
