//! Step 4: observe the rollout and probe the ready pods of the current
//! template, as the rotation machine needs them ([`rotation::probe_plan`]).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;

use crate::keyset::Keyset;
use crate::keyset_rollout::{self, PodTarget, RolloutState};
use crate::probe::PodProber;
use crate::resources;
use crate::rotation::{self, Observed, PodView};

use super::Error;
use super::error::KubeContext;
use super::round::Round;

/// What the round saw of the pods serving `keyset`.
pub(super) struct Seen {
    /// The Deployment's rollout towards the keyset, with what is missing.
    pub(super) rollout: RolloutState,
    /// The same, as the rotation machine reads it, with the probed pods.
    pub(super) observed: Observed,
    /// The pods as listed.
    pub(super) pods: Vec<Pod>,
    /// The ready pods of other keysets, their JWKS probed: during a rollout
    /// they serve too, and `Ready` counts them.
    pub(super) others: Vec<PodView>,
}

/// The pods and their probes as a previous pass of the same turn saw them.
pub(super) struct SeenPods {
    pub(super) pods: Vec<Pod>,
    pub(super) views: Vec<PodView>,
}

impl SeenPods {
    /// What `seen` leaves for the next pass, when that pass's decision reads
    /// no pod (its persisted `status` asks for no probe): the pods then only
    /// feed `Ready`. A rollout phase's verification always lists and probes.
    /// The verifiers' records are asked for afresh in every pass that wants them.
    pub(super) fn carry(seen: Seen, status: &crate::crd::MacpAuthStatus) -> Option<Self> {
        let plan = rotation::probe_plan(status);
        (!plan.jwks && !plan.signing).then_some(Self {
            pods: seen.pods,
            views: seen.observed.pods,
        })
    }
}

impl Round<'_> {
    /// `known` are the pods a previous pass of the turn listed and probed
    /// ([`SeenPods::carry`]); without it the pods are listed and probed.
    pub(super) async fn observe(
        &self,
        keyset: &Keyset,
        deployment: &Deployment,
        known: Option<SeenPods>,
    ) -> Result<Seen, Error> {
        let hash = keyset.hash();
        let (pods, known_views) = match known {
            Some(known) => (known.pods, known.views),
            None => (self.list_pods().await?, Vec::new()),
        };
        let rollout = keyset_rollout::rollout_state(Some(deployment), &pods, &hash);
        let targets = keyset_rollout::current_pods(&pods, &hash);
        let plan = rotation::probe_plan(&self.status);
        let spec = self.spec();
        let port = u16::try_from(spec.port).unwrap_or_default();
        let mint_port = u16::try_from(spec.effective_mint_port()).unwrap_or_default();
        let prober = self.ctx.prober.as_ref();
        let views = probe(
            prober,
            &targets,
            &known_views,
            port,
            mint_port,
            plan.signing,
        )
        .await;
        let other_targets = keyset_rollout::other_keyset_pods(&pods, &hash);
        let others = probe(prober, &other_targets, &[], port, mint_port, false).await;
        let verifiers = if plan.verifiers {
            ask_verifiers(prober, &views, &targets, port).await
        } else {
            Vec::new()
        };
        let observed = Observed {
            keyset: Some(keyset.view()),
            rollout: rollout.for_rotation(),
            pods: views,
            verifiers,
        };
        Ok(Seen {
            rollout,
            observed,
            pods,
            others,
        })
    }

    async fn list_pods(&self) -> Result<Vec<Pod>, Error> {
        let selector = resources::pod_selector(&self.owner.name);
        Ok(self
            .apis
            .pods
            .list(&ListParams::default().labels(&selector))
            .await
            .ctx("list", "Pod", &selector)?
            .items)
    }
}

/// Each probed pod's record of the verifiers that fetched its JWKS, in the
/// order of `views` (the rotation machine pairs them up).
async fn ask_verifiers(
    prober: &dyn PodProber,
    views: &[PodView],
    targets: &[PodTarget],
    port: u16,
) -> Vec<rotation::evidence::PodReport> {
    let asks = views.iter().map(|v| async move {
        match targets.iter().find(|t| t.name == v.name) {
            Some(t) => prober
                .verifiers(&t.ip, port)
                .await
                .map_err(|e| e.to_string()),
            None => Err("not a pod of the current template".to_string()),
        }
    });
    futures::future::join_all(asks).await
}

/// Probes each target at once: its JWKS, and with `signing` a probe mint,
/// unless `known` holds a view of the same pod with what is asked. A probe
/// that fails is reported in its pod's view, not as an error: the rotation
/// machine judges it inconclusive.
async fn probe(
    prober: &dyn PodProber,
    targets: &[PodTarget],
    known: &[PodView],
    port: u16,
    mint_port: u16,
    signing: bool,
) -> Vec<PodView> {
    let probes = targets.iter().map(|t| async move {
        if let Some(view) = known
            .iter()
            .find(|v| v.name == t.name && (!signing || v.signing_kid.is_some()))
        {
            return view.clone();
        }
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

        let views = probe(&prober, &targets, &[], 3200, 3201, false).await;
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
        assert!(prober.mint_ports().is_empty(), "no mint unless asked");

        let views = probe(&prober, &targets, &[], 3200, 3201, true).await;
        assert_eq!(views[0].signing_kid, Some(Ok("k1".into())));
        assert!(matches!(views[1].signing_kid, Some(Err(_))));
        assert_eq!(prober.mint_ports(), vec![3201, 3201]);
    }

    fn view(name: &str, kids: &[&str], signing: Option<&str>) -> PodView {
        PodView {
            name: name.into(),
            served_kids: Ok(kids.iter().map(|k| k.to_string()).collect()),
            signing_kid: signing.map(|k| Ok(k.to_string())),
        }
    }

    #[tokio::test]
    async fn a_known_view_is_reused_and_only_what_it_lacks_is_probed() {
        let prober = FakeProber::default();
        prober.serve("10.0.0.1", &["fresh"]);
        prober.serve("10.0.0.2", &["fresh"]);
        let targets = [target("p0", "10.0.0.1"), target("p1", "10.0.0.2")];
        // p0 was probed by the previous pass; p1 is new; "gone" is no target.
        let known = [view("p0", &["known"], None), view("gone", &["known"], None)];

        let views = probe(&prober, &targets, &known, 3200, 3201, false).await;
        assert_eq!(
            views,
            vec![view("p0", &["known"], None), view("p1", &["fresh"], None)]
        );

        // A signing probe asked for and not in the known view is made.
        let views = probe(&prober, &targets, &known, 3200, 3201, true).await;
        assert_eq!(
            views,
            vec![
                view("p0", &["fresh"], Some("fresh")),
                view("p1", &["fresh"], Some("fresh")),
            ]
        );
    }

    fn seen() -> Seen {
        Seen {
            rollout: RolloutState::Complete,
            observed: Observed {
                keyset: None,
                rollout: rotation::Rollout::Complete,
                pods: vec![view("p0", &["k0"], None)],
                verifiers: Vec::new(),
            },
            pods: vec![Pod::default()],
            others: Vec::new(),
        }
    }

    #[test]
    fn pods_are_carried_only_into_a_pass_whose_decision_reads_no_pod() {
        use crate::crd::{MacpAuthStatus, RotationPhase, RotationStatus};
        let status = |phase: RotationPhase| MacpAuthStatus {
            rotation: Some(RotationStatus {
                phase,
                ..RotationStatus::default()
            }),
            ..MacpAuthStatus::default()
        };
        for phase in [
            RotationPhase::Idle,
            RotationPhase::KeyGenerated,
            RotationPhase::Propagating,
            RotationPhase::Draining,
        ] {
            let carried = SeenPods::carry(seen(), &status(phase));
            assert!(carried.is_some_and(|c| c.views.len() == 1), "{phase:?}");
        }
        for phase in [
            RotationPhase::Publishing,
            RotationPhase::Activating,
            RotationPhase::Retiring,
            RotationPhase::RollingBack,
        ] {
            assert!(
                SeenPods::carry(seen(), &status(phase)).is_none(),
                "{phase:?}"
            );
        }
        assert!(SeenPods::carry(seen(), &MacpAuthStatus::default()).is_some());
    }
}
