//! Step 2: load the keyset from the signing-keys Secret. Create the first key
//! when the Secret is absent (written, then read back and confirmed before
//! anything refers to it), adopt a valid one, refuse (Degraded) an unusable
//! one without writing it.

use std::ops::ControlFlow;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use tracing::info;

use crate::conditions::READY;
use crate::crd::{RotationOutcome, RotationRecord, RotationTrigger};
use crate::keyset::{self, Keyset, KeysetError};

use super::error::KubeContext;
use super::round::Round;
use super::{BROKEN_SECRET_REQUEUE, Error};

/// The keyset in the Secret, and the Secret as last read or written.
pub(super) struct Keys {
    pub(super) keyset: Keyset,
    pub(super) secret: Secret,
}

impl Round<'_> {
    /// The keys to run the round with, or `Break` when the Secret is unusable.
    /// `known` is the Secret as the previous pass of the turn left it; without
    /// it the Secret is read.
    pub(super) async fn load_keyset(
        &mut self,
        known: Option<Secret>,
    ) -> Result<ControlFlow<Option<Duration>, Keys>, Error> {
        let secret_name = self.owner.secret_name();
        let live =
            match known {
                Some(secret) => Some(secret),
                None => self.apis.secrets.get_opt(&secret_name).await.ctx(
                    "get",
                    "Secret",
                    &secret_name,
                )?,
            };
        let Some(secret) = live else {
            return Ok(ControlFlow::Continue(self.create_first_key().await?));
        };
        match self.ctx.keysets.parse(&secret) {
            Ok(keyset) => {
                if self.status.active_kid.is_none() {
                    self.note(
                        false,
                        "KeyAdopted",
                        format!(
                            "adopted existing signing key {} from Secret {secret_name}",
                            keyset.active.kid
                        ),
                    );
                }
                Ok(ControlFlow::Continue(Keys { keyset, secret }))
            }
            Err(e) => Ok(ControlFlow::Break(self.refuse_keyset(&e))),
        }
    }

    async fn create_first_key(&mut self) -> Result<Keys, Error> {
        let spec = self.spec().clone();
        let kid = keyset::new_kid(&self.owner.name, self.now, rand::random());
        let key = self
            .generate(spec.signing_alg, kid.clone(), spec.rsa_key_bits)
            .await?;
        let keys = self.write_keyset(&Keyset::initial(key), None).await?;
        if keys.keyset.active.kid != kid {
            return Err(Error::NotConfirmed(format!(
                "expected active kid {kid}, found {}",
                keys.keyset.active.kid
            )));
        }
        let (alg, bits) = spec.key_kind();
        let kind = alg.kind_label(bits);
        info!(name = %self.owner.name, namespace = %self.owner.namespace, %kid, "created first signing key");
        self.note(
            false,
            "KeyCreated",
            format!("generated {kind} signing key {kid}"),
        );
        self.status.push_history(RotationRecord {
            trigger: RotationTrigger::Initial,
            request_id: None,
            old_kid: None,
            new_kid: Some(kid),
            started_at: self.now,
            finished_at: self.now,
            outcome: RotationOutcome::Succeeded,
            message: Some(format!("first {kind} key")),
        });
        Ok(keys)
    }

    /// The Secret exists but holds no usable active key: report it and touch nothing.
    fn refuse_keyset(&mut self, e: &KeysetError) -> Option<Duration> {
        let message = format!(
            "Secret {}: {e}; the operator does not overwrite it",
            self.owner.secret_name()
        );
        self.degrade(e.reason(), &message);
        self.set(READY, false, e.reason(), "the signing keys are unusable");
        Some(BROKEN_SECRET_REQUEUE)
    }
}
