//! Step 4: observe the rollout and probe the ready pods of the current
//! template, as the rotation machine needs them ([`rotation::probe_plan`]).

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ListParams;

use crate::keyset::Keyset;
use crate::observe::{self, PodTarget, RolloutState};
use crate::probe::PodProber;
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
        let spec = self.spec();
        let port = u16::try_from(spec.port).unwrap_or_default();
        let mint_port = u16::try_from(spec.effective_mint_port()).unwrap_or_default();
        let prober = self.ctx.prober.as_ref();
        let views = probe(prober, &targets, port, mint_port, plan.signing).await;
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
}

/// Probes each target at once: its JWKS, and with `signing` a probe mint. A
/// probe that fails is reported in its pod's view, not as an error: the
/// rotation machine judges it inconclusive.
async fn probe(
    prober: &dyn PodProber,
    targets: &[PodTarget],
    port: u16,
    mint_port: u16,
    signing: bool,
) -> Vec<PodView> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::FakeProber;

    fn target(name: &str, ip: &str) -> PodTarget {
        PodTarget {
            name: name.into(),
            ip: ip.into(),
        }
    }

    #[tokio::test]
    async fn every_target_is_probed_and_a_failed_probe_stays_with_its_pod() {
        let prober = FakeProber::default();
        prober.serve("10.0.0.1", &["k1", "k0"]);
        let targets = [target("p0", "10.0.0.1"), target("p1", "10.0.0.2")];

        let views = probe(&prober, &targets, 3200, 3201, false).await;
        assert_eq!(
            views,
            vec![
                PodView {
                    name: "p0".into(),
                    served_kids: Ok(vec!["k1".into(), "k0".into()]),
                    signing_kid: None,
                },
                PodView {
                    name: "p1".into(),
                    served_kids: Err("request to 10.0.0.2 failed: connection refused".into()),
                    signing_kid: None,
                },
            ]
        );
        assert!(
            prober.mint_ports.lock().unwrap().is_empty(),
            "no mint unless asked"
        );

        let views = probe(&prober, &targets, 3200, 3201, true).await;
        assert_eq!(views[0].signing_kid, Some(Ok("k1".into())));
        assert!(matches!(views[1].signing_kid, Some(Err(_))));
        assert_eq!(*prober.mint_ports.lock().unwrap(), vec![3201, 3201]);
    }
}
