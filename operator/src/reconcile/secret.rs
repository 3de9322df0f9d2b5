//! Writing the signing-keys Secret (steps 2, 3 and 6).
//!
//! The Secret is never applied: server-side apply leaves keys that another
//! field manager owns (a Secret made with `kubectl create secret`), so a key
//! the plan drops could survive. It is created, then replaced whole with the
//! resourceVersion it was read at: what it holds is exactly what was decided.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::PostParams;
use tracing::debug;

use crate::keyset::Keyset;
use crate::resources::{self, MANAGER};

use super::Error;
use super::error::KubeContext;
use super::load::Keys;
use super::round::Round;

impl Round<'_> {
    /// Makes the Secret hold exactly `keys`, with our labels and owner
    /// reference: created when absent, else replaced with the resourceVersion
    /// it was read at (409 if anyone wrote since), unless it already is so.
    pub(super) async fn write_secret(
        &self,
        keys: &Keyset,
        live: Option<&Secret>,
    ) -> Result<Secret, Error> {
        let name = self.owner.secret_name();
        let desired = resources::secret(&self.owner, keys);
        let pp = PostParams {
            field_manager: Some(MANAGER.to_string()),
            ..PostParams::default()
        };
        let Some(live) = live else {
            debug!(%name, "creating the Secret");
            self.ctx.metrics.wrote("secrets");
            return self
                .apis
                .secrets
                .create(&pp, &desired)
                .await
                .ctx("create", "Secret", &name);
        };
        let Some(next) = exact_secret(live, &desired) else {
            return Ok(live.clone());
        };
        debug!(%name, rv = ?live.resource_version(), "replacing the Secret");
        self.ctx.metrics.wrote("secrets");
        self.apis
            .secrets
            .replace(&name, &pp, &next)
            .await
            .ctx("replace", "Secret", &name)
    }

    /// Writes `keys` to the Secret and reads it back: what the Secret holds
    /// now, for the caller to confirm before anything refers to it.
    pub(super) async fn write_keyset(
        &self,
        keys: &Keyset,
        live: Option<&Secret>,
    ) -> Result<Keys, Error> {
        self.write_secret(keys, live).await?;
        let name = self.owner.secret_name();
        let secret = self
            .apis
            .secrets
            .get(&name)
            .await
            .ctx("read back", "Secret", &name)?;
        let keyset = self
            .ctx
            .keysets
            .parse(&secret)
            .map_err(|e| Error::NotConfirmed(e.to_string()))?;
        Ok(Keys { keyset, secret })
    }
}

/// The Secret to write so that `live` becomes `desired` exactly: `desired`'s
/// data (no other key survives) and type, our labels and owner reference
/// added to what is there, `live`'s resourceVersion kept as the precondition
/// of the replace. `None` when `live` already is that.
fn exact_secret(live: &Secret, desired: &Secret) -> Option<Secret> {
    let mut next = live.clone();
    next.data.clone_from(&desired.data);
    next.string_data = None;
    if next.type_.is_none() {
        next.type_.clone_from(&desired.type_);
    }
    let labels = next.metadata.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in desired.metadata.labels.iter().flatten() {
        labels.insert(k.clone(), v.clone());
    }
    let owners = next.metadata.owner_references.get_or_insert_with(Vec::new);
    for o in desired.metadata.owner_references.iter().flatten() {
        if !owners.iter().any(|x| x.uid == o.uid) {
            owners.push(o.clone());
        }
    }
    // Echoing the ownership back would only repeat it; the server keeps its own.
    next.metadata.managed_fields = None;
    let mut unchanged = live.clone();
    unchanged.metadata.managed_fields = None;
    (next != unchanged).then_some(next)
}
