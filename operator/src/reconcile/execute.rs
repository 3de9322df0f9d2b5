//! Step 6: execute the decision's actions, at most one Secret write (a new
//! key, or a new layout of the keys it holds), confirmed by reading it back;
//! then apply the Deployment again when the keyset or the TTL clamp changed.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use tracing::info;

use crate::keyset::Keyset;
use crate::rotation::{Action, Decision};
use crate::ttl_clamp::{self, Clamp};

use super::Error;
use super::apply::Applied;
use super::load::Keys;
use super::round::Round;

/// What the Secret and the Deployment hold after step 6.
pub(super) struct Executed {
    /// The keyset now in the Secret.
    pub(super) keyset: Keyset,
    /// The Secret as last read back.
    pub(super) secret: Secret,
    /// The Deployment as last applied.
    pub(super) deployment: Deployment,
    /// It differs from the one the round loaded: the pods roll onto it.
    pub(super) keyset_changed: bool,
    /// The decision moved the token TTLs (the emergency clamp): the pods roll onto them.
    pub(super) ttl_changed: bool,
    /// The emergency TTL clamp of the decision's status.
    pub(super) clamp: Option<Clamp>,
}

impl Round<'_> {
    pub(super) async fn execute(
        &self,
        decision: &Decision,
        mut keys: Keys,
        applied: Applied,
    ) -> Result<Executed, Error> {
        let before = keys.keyset.hash();
        // At most one Secret write, confirmed, then the Deployment follows.
        for action in &decision.actions {
            keys = self.execute_one(action, &keys).await?;
        }
        let keyset_changed = keys.keyset.hash() != before;
        // Step 3 rendered the clamp of the persisted status; when the new
        // status moves it (an emergency starts), the Deployment is applied
        // again. Either way it is a pod-template change, never a keyset one.
        let clamp = ttl_clamp::clamp_at(self.spec(), &decision.status, self.now);
        let ttl = self.ttl(clamp.as_ref());
        let ttl_changed = ttl != applied.ttl;
        // Step 3's Deployment is the live one: this round wrote only the
        // Secret since, and the apply below is server-side apply either way.
        let deployment = if keyset_changed || ttl_changed {
            self.apply_children(&keys.keyset, ttl, Some(applied.deployment))
                .await?
        } else {
            applied.deployment
        };
        Ok(Executed {
            keyset: keys.keyset,
            secret: keys.secret,
            deployment,
            keyset_changed,
            ttl_changed,
            clamp,
        })
    }

    /// Executes one rotation action; returns the keys now in the Secret.
    async fn execute_one(&self, action: &Action, current: &Keys) -> Result<Keys, Error> {
        let live = Some(&current.secret);
        match action {
            Action::GenerateNextKey { kid, alg, rsa_bits } => {
                let bits = rsa_bits.unwrap_or(self.spec().rsa_key_bits);
                let key = self.generate(*alg, kid.clone(), bits).await?;
                let back = self
                    .write_keyset(&current.keyset.with_next(key), live)
                    .await?;
                match &back.keyset.next {
                    Some(k) if k.kid == *kid => {}
                    other => {
                        return Err(Error::NotConfirmed(format!(
                            "expected next kid {kid}, found {:?}",
                            other.as_ref().map(|k| &k.kid)
                        )));
                    }
                }
                info!(name = %self.owner.name, %kid, "wrote next signing key");
                Ok(back)
            }
            Action::ApplyKeyset(plan) => {
                let desired = current.keyset.apply_plan(plan)?;
                let back = self.write_keyset(&desired, live).await?;
                if !plan.matches(&back.keyset.view()) {
                    return Err(Error::NotConfirmed(format!("expected keyset {plan:?}")));
                }
                info!(name = %self.owner.name, active = %plan.active, published = ?plan.published, "applied keyset");
                Ok(back)
            }
        }
    }
}
