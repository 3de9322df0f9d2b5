//! Step 3: apply the owned objects: the Secret's metadata, then the
//! Deployment for the keyset in the Secret, the Service, the verifier
//! ConfigMap, the autoscaler and the disruption budget. Each write is skipped
//! when the live object already matches, so an unchanged resource costs reads
//! only; an unchanged Service and ConfigMap not even those, as they are
//! compared with the watch caches first ([`crate::watch_caches`] says why that is
//! safe for them and for nothing else).
//!
//! These objects are applied (server-side apply); keys, list items and
//! defaults that others own or the server adds are no drift
//! ([`diff::matches_live`]). The Secret is written otherwise (see `secret`).

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info};

use crate::conditions::{self, READY};
use crate::diff;
use crate::keyset::Keyset;
use crate::metrics::Metrics;
use crate::resources::{self, MANAGER};
use crate::ttl_clamp::{self, TtlLimits};

use super::error::KubeContext;
use super::load::Keys;
use super::round::Round;
use super::{Context, Error};

/// What step 3 left live.
pub(super) struct Applied {
    pub(super) deployment: Deployment,
    /// The token TTLs the Deployment was rendered with.
    pub(super) ttl: TtlLimits,
}

impl Round<'_> {
    /// Writes the Secret's metadata and applies the other objects with the
    /// persisted emergency TTL clamp ([`ttl_clamp`]: it is decided from the
    /// status; a clamp the rotation machine moves this round is applied in
    /// step 6).
    /// `known` is the Deployment as the previous pass of the turn left it;
    /// without it the Deployment is read.
    pub(super) async fn apply_owned(
        &self,
        keys: &mut Keys,
        known: Option<Deployment>,
    ) -> Result<Applied, Error> {
        // Metadata (owner reference, labels) and a published.jwks.json for adopted Secrets.
        keys.secret = self.write_secret(&keys.keyset, Some(&keys.secret)).await?;
        let clamp = ttl_clamp::clamp_at(self.spec(), &self.status, self.now);
        let ttl = self.ttl(clamp.as_ref());
        let deployment = self.apply_children(&keys.keyset, ttl, known).await?;
        Ok(Applied { deployment, ttl })
    }

    /// Applies the Deployment for `keys` and `ttl`, the Service, the
    /// ConfigMap, and the autoscaler and budget the spec asks for (removing
    /// ours it no longer does); returns the live Deployment. `known` is the
    /// Deployment as this round last read or wrote it, if it did.
    pub(super) async fn apply_children(
        &self,
        keys: &Keyset,
        ttl: TtlLimits,
        known: Option<Deployment>,
    ) -> Result<Deployment, Error> {
        let deployment = self.apply_deployment(keys, ttl, known).await?;
        let (ns, name) = (&self.owner.namespace, &self.owner.name);
        let caches = &self.ctx.watch_caches;
        let desired = resources::service(&self.owner, self.spec());
        let cached = caches.service(ns, name);
        apply_unless_cached(&self.apis.services, name, cached, &desired, self.ctx).await?;
        let cm_name = self.owner.config_map_name();
        let desired = resources::verifier_config_map(&self.owner, self.spec());
        let cached = caches.config_map(ns, &cm_name);
        apply_unless_cached(&self.apis.config_maps, &cm_name, cached, &desired, self.ctx).await?;
        self.apply_scaling_objects().await?;
        Ok(deployment)
    }

    async fn apply_deployment(
        &self,
        keys: &Keyset,
        ttl: TtlLimits,
        known: Option<Deployment>,
    ) -> Result<Deployment, Error> {
        let spec = self.spec();
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.ctx.settings.service_image.clone());
        let m = &self.ctx.metrics;
        let name = &self.owner.name;
        let api = &self.apis.deployments;
        let live = match known {
            Some(deployment) => Some(deployment),
            None => api.get_opt(name).await.ctx("get", "Deployment", name)?,
        };
        let handed_over =
            spec.autoscaling.is_some() && hand_over_replicas(api, live.as_ref(), m).await?;
        let live = if handed_over {
            api.get_opt(name).await.ctx("get", "Deployment", name)?
        } else {
            live
        };
        let desired = resources::deployment(
            &self.owner,
            spec,
            &image,
            &keys.hash(),
            keys.active.alg,
            ttl,
        );
        apply(api, live.as_ref(), &desired, self.ctx).await
    }

    /// The autoscaler and the disruption budget: applied when the spec asks
    /// for them, else ours removed.
    async fn apply_scaling_objects(&self) -> Result<(), Error> {
        let spec = self.spec();
        let name = &self.owner.name;
        let uid = &self.owner.owner_ref.uid;
        // `Ready=True` of this generation is only set by a round that applied
        // these objects (a round that stopped early, on an invalid spec or an
        // unusable Secret, never sets it), so it proves a removal was done;
        // so does this process's own record, which outlives a rotation's
        // `Ready=False`.
        let ready_this_generation = self
            .mauth
            .status
            .as_ref()
            .and_then(|s| conditions::get(&s.conditions, READY))
            .is_some_and(|c| {
                c.status == conditions::TRUE && c.observed_generation == self.generation
            });
        let applied = &self.ctx.scaling_applied;
        let spec_changed = !ready_this_generation && !applied.is_applied(uid, self.generation);
        apply_or_remove(
            &self.apis.autoscalers,
            name,
            resources::horizontal_pod_autoscaler(&self.owner, spec).as_ref(),
            uid,
            spec_changed,
            self.ctx,
        )
        .await?;
        apply_or_remove(
            &self.apis.budgets,
            name,
            resources::pod_disruption_budget(&self.owner, spec).as_ref(),
            uid,
            spec_changed,
            self.ctx,
        )
        .await?;
        applied.record(uid, self.generation);
        Ok(())
    }
}

/// Applies `desired` unless the watch cache's copy already matches it; when
/// it does not, or nothing is cached, decides from the live object, as
/// [`apply`] does. Only for objects a stale cache cannot make unsafe
/// ([`crate::watch_caches`]).
async fn apply_unless_cached<K>(
    api: &Api<K>,
    name: &str,
    cached: Option<Arc<K>>,
    desired: &K,
    ctx: &Context,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + k8s_openapi::Resource + Clone + Serialize + DeserializeOwned,
    K: std::fmt::Debug,
{
    if let Some(cached) = cached
        && is_current(&desired_value(desired)?, cached.as_ref())?
    {
        return Ok(());
    }
    let live = api.get_opt(name).await.ctx("get", K::KIND, name)?;
    apply(api, live.as_ref(), desired, ctx).await?;
    Ok(())
}

/// What is applied for `desired`: the object with the hash of what it applies.
fn desired_value<K: Serialize>(desired: &K) -> Result<serde_json::Value, Error> {
    Ok(diff::with_applied_hash(serde_json::to_value(desired)?))
}

/// Whether `live` already carries everything of `desired` (see [`diff::matches_live`]).
fn is_current<K: Serialize>(desired: &serde_json::Value, live: &K) -> Result<bool, Error> {
    Ok(diff::matches_live(
        desired,
        &serde_json::to_value(live)?,
        MANAGER,
    ))
}

/// Applies `desired` with server-side apply unless `live` already matches it
/// (known from an earlier round for the same version, [`super::matched_versions`],
/// or compared now).
async fn apply<K>(api: &Api<K>, live: Option<&K>, desired: &K, ctx: &Context) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + k8s_openapi::Resource + Clone + Serialize + DeserializeOwned,
    K: std::fmt::Debug,
{
    let desired = desired_value(desired)?;
    if let Some(live) = live {
        let matched = &ctx.matched_versions;
        if matched.known(K::KIND, live.meta(), &desired) {
            return Ok(live.clone());
        }
        if is_current(&desired, live)? {
            matched.remember(K::KIND, live.meta(), &desired);
            return Ok(live.clone());
        }
    }
    let metrics = &ctx.metrics;
    let name = desired
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    debug!(kind = K::KIND, %name, "applying");
    metrics.wrote(&K::plural(&()));
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .ctx("apply", K::KIND, &name)
}

/// Makes `desired` the live object, or, when `desired` is `None`, deletes
/// the live one if this `MacpAuth` owns it (a user's object of the same name
/// is left alone). Each write only when something differs.
///
/// `spec_changed`: whether the spec may have changed since a round applied
/// the objects. When it did not and nothing is desired, that round already
/// removed the object, so not even a read is spent on it (most MacpAuths have
/// no autoscaler: this keeps their steady state at the reads it had).
async fn apply_or_remove<K>(
    api: &Api<K>,
    name: &str,
    desired: Option<&K>,
    owner_uid: &str,
    spec_changed: bool,
    ctx: &Context,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + k8s_openapi::Resource + Clone + Serialize + DeserializeOwned,
    K: std::fmt::Debug,
{
    if desired.is_none() && !spec_changed {
        return Ok(());
    }
    let live = api.get_opt(name).await.ctx("get", K::KIND, name)?;
    match (desired, live) {
        (Some(desired), live) => {
            apply(api, live.as_ref(), desired, ctx).await?;
        }
        (None, Some(live))
            if live
                .owner_references()
                .iter()
                .any(|o| o.uid == owner_uid && o.controller == Some(true)) =>
        {
            debug!(kind = K::KIND, %name, "deleting, no longer wanted by the spec");
            ctx.metrics.wrote(&K::plural(&()));
            // Only the object we looked at: a replacement made meanwhile stays.
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: live.uid(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::kube("delete", K::KIND, name, e)),
            }
        }
        (None, _) => {}
    }
    Ok(())
}

/// Hands `spec.replicas` of a live Deployment over before the first apply
/// that leaves it out (autoscaling was just turned on).
///
/// Server-side apply removes a field its only owner stops applying: the
/// Deployment would fall back to 1 replica, terminating signers until the
/// autoscaler scales up again. A second field manager first claims the
/// current value (the handover Kubernetes documents for autoscalers); the
/// autoscaler's own writes then take it over.
async fn hand_over_replicas(
    api: &Api<Deployment>,
    live: Option<&Deployment>,
    metrics: &Metrics,
) -> Result<bool, Error> {
    let Some(live) = live else { return Ok(false) };
    let value = serde_json::to_value(live)?;
    if !diff::applies_field(&value, MANAGER, &["spec", "replicas"]) {
        return Ok(false);
    }
    let Some(replicas) = live.spec.as_ref().and_then(|s| s.replicas) else {
        return Ok(false);
    };
    let name = live.name_any();
    let patch = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    info!(%name, replicas, "autoscaling on: handing spec.replicas over");
    metrics.wrote("deployments");
    api.patch(
        &name,
        &PatchParams::apply(REPLICAS_HANDOVER_MANAGER),
        &Patch::Apply(&patch),
    )
    .await
    .ctx("hand over spec.replicas of", "Deployment", &name)?;
    Ok(true)
}

/// The field manager that holds `spec.replicas` between the operator's last
/// write of it and the autoscaler's first (see `hand_over_replicas`).
const REPLICAS_HANDOVER_MANAGER: &str = "macp-auth-operator-replicas-handover";
