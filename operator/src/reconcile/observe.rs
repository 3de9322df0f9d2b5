//! Step 4: observe the rollout and probe the ready pods of the current
//! template, as the rotation machine needs them ([`rotation::probe_plan`]).

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ListParams;

use crate::keyset::Keyset;
use crate::observe::{self, PodTarget, RolloutState};
use crate::resources;
use crate::rotation::{self, Observed, PodView, Rollout};

use super::Error;
use super::error::KubeContext;
use super::round::Round;

/// What the round saw of the pods serving `keyset`.
pub(super) struct Seen {
    /// The Deployment's rollout towards the keyset, with what is missing.
    pub(super) rollout: RolloutState,
    /// The same, as the rotation machine reads it, with the probed pods.
    pub(super) observed: Observed,
}

impl Round<'_> {
    pub(super) async fn observe(
        &self,
        keyset: &Keyset,
        deployment: &Deployment,
    ) -> Result<Seen, Error> {
        let hash = keyset.hash();
        let selector = resources::pod_selector(&self.owner.name);
        let pods = self
            .apis
            .pods
            .list(&ListParams::default().labels(&selector))
            .await
            .ctx("list", "Pod", &selector)?
            .items;
        let rollout = observe::rollout_state(Some(deployment), &pods, &hash);
        let targets = observe::current_pods(&pods, &hash);
        let plan = rotation::probe_plan(&self.status);
        let views = self.probe(&targets, plan.signing).await;
        let observed = Observed {
            keyset: Some(keyset.view()),
            rollout: if rollout == RolloutState::Complete {
                Rollout::Complete
            } else {
                Rollout::InProgress
            },
            pods: views,
        };
        Ok(Seen { rollout, observed })
    }

    /// Probes each target: its JWKS, and with `signing` a probe mint.
    async fn probe(&self, targets: &[PodTarget], signing: bool) -> Vec<PodView> {
        let port = u16::try_from(self.spec().port).unwrap_or_default();
        let mint_port = u16::try_from(self.spec().effective_mint_port()).unwrap_or_default();
        let prober = &self.ctx.prober;
        let probes = targets.iter().map(|t| async move {
            let served_kids = prober
                .served_kids(&t.ip, port)
                .await
                .map_err(|e| e.to_string());
            let signing_kid = if signing {
                Some(
                    prober
                        .signing_kid(&t.ip, port, mint_port)
                        .await
                        .map_err(|e| e.to_string()),
                )
            } else {
                None
            };
            PodView {
                name: t.name.clone(),
                served_kids,
                signing_kid,
            }
        });
        futures::future::join_all(probes).await
    }
}
