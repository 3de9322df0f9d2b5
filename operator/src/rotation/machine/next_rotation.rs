//! `status.nextRotationTime` from `spec.rotation.interval` (less the lead the
//! next key needs to sign everywhere, [`activation_lead`], and this
//! MacpAuth's early start, [`early_start`]), and the `Degraded` an invalid
//! interval holds.

use crate::conditions;
use crate::rotation::reasons::REASON_INVALID_INTERVAL;
use crate::rotation::schedule::{activation_lead, early_start, next_rotation, parse_interval};

use super::Machine;

impl Machine<'_> {
    pub(super) fn update_next_rotation(&mut self) {
        let now = self.now();
        match self.inp.spec.rotation.interval.as_deref() {
            None => self.status.next_rotation_time = None,
            Some(text) => match parse_interval(text) {
                Ok(interval) => {
                    let early = early_start(interval, self.inp.schedule_place);
                    let lead = activation_lead(self.inp.spec);
                    self.status.next_rotation_time =
                        Some(next_rotation(&self.status, interval, lead, early, now));
                    let held = conditions::degraded_by(
                        &self.status.conditions,
                        &[REASON_INVALID_INTERVAL],
                    );
                    if held {
                        self.undegrade("rotation interval is valid");
                    }
                }
                Err(e) => {
                    self.status.next_rotation_time = None;
                    let already = conditions::degraded_by(
                        &self.status.conditions,
                        &[REASON_INVALID_INTERVAL],
                    );
                    if !already {
                        self.event(true, REASON_INVALID_INTERVAL, e.to_string());
                    }
                    self.degrade(REASON_INVALID_INTERVAL, &e.to_string());
                }
            },
        }
    }
}
