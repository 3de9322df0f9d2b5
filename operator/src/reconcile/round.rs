//! The working state of one round, and the condition and event helpers its
//! steps share.

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Api, Client, Resource};
use tracing::warn;

use crate::conditions::{self, DEGRADED};
use crate::crd::{MacpAuth, MacpAuthSpec, MacpAuthStatus};
use crate::resources::Owner;
use crate::rotation::Event;
use crate::ttl_clamp::{self, Clamp, TtlLimits};

use super::{Context, Error, OWN_DEGRADED_REASONS};

/// The typed APIs of one namespace.
pub(super) struct Apis {
    pub(super) mauths: Api<MacpAuth>,
    pub(super) secrets: Api<Secret>,
    pub(super) deployments: Api<Deployment>,
    pub(super) services: Api<Service>,
    pub(super) config_maps: Api<ConfigMap>,
    pub(super) pods: Api<Pod>,
    pub(super) autoscalers: Api<HorizontalPodAutoscaler>,
    pub(super) budgets: Api<PodDisruptionBudget>,
}

impl Apis {
    fn new(client: &Client, ns: &str) -> Self {
        Self {
            mauths: Api::namespaced(client.clone(), ns),
            secrets: Api::namespaced(client.clone(), ns),
            deployments: Api::namespaced(client.clone(), ns),
            services: Api::namespaced(client.clone(), ns),
            config_maps: Api::namespaced(client.clone(), ns),
            pods: Api::namespaced(client.clone(), ns),
            autoscalers: Api::namespaced(client.clone(), ns),
            budgets: Api::namespaced(client.clone(), ns),
        }
    }
}

/// The working state of one round: the `MacpAuth` as read in step 0, the
/// status the steps build up, and the events to emit once it is written.
pub(super) struct Round<'a> {
    pub(super) mauth: &'a MacpAuth,
    pub(super) ctx: &'a Context,
    pub(super) owner: Owner,
    pub(super) apis: Apis,
    pub(super) now: DateTime<Utc>,
    pub(super) generation: Option<i64>,
    pub(super) status: MacpAuthStatus,
    /// Events to emit after the status write.
    pub(super) events: Vec<Event>,
    /// The `MacpAuth` as the API server answered this round's status patch.
    pub(super) written: Option<MacpAuth>,
    /// The last valid spec, which this round runs with instead of the
    /// invalid current one: only for an emergency rotation ([`super::check`]).
    pub(super) fallback: Option<MacpAuthSpec>,
}

impl<'a> Round<'a> {
    pub(super) fn new(mauth: &'a MacpAuth, ctx: &'a Context) -> Result<Self, Error> {
        let owner = Owner::of(mauth)?;
        let apis = Apis::new(&ctx.client, &owner.namespace);
        let generation = mauth.meta().generation;
        let mut status = mauth.status.clone().unwrap_or_default();
        status.observed_generation = generation;
        Ok(Self {
            mauth,
            ctx,
            owner,
            apis,
            now: Utc::now(),
            generation,
            status,
            events: Vec::new(),
            written: None,
            fallback: None,
        })
    }
}

impl Round<'_> {
    /// The spec the round applies: the `MacpAuth`'s, or the last valid one
    /// while an emergency runs past an invalid spec.
    pub(super) fn spec(&self) -> &MacpAuthSpec {
        self.fallback.as_ref().unwrap_or(&self.mauth.spec)
    }

    /// The TTLs to render with `clamp`.
    pub(super) fn ttl(&self, clamp: Option<&Clamp>) -> TtlLimits {
        ttl_clamp::limits(self.spec(), clamp)
    }

    pub(super) fn note(&mut self, warning: bool, reason: &str, message: String) {
        self.events.push(Event {
            warning,
            reason: reason.to_string(),
            message,
        });
    }

    pub(super) fn set(&mut self, type_: &str, value: bool, reason: &str, message: &str) {
        conditions::set(
            &mut self.status.conditions,
            type_,
            value,
            reason,
            message,
            self.now,
            self.generation,
        );
    }

    /// Sets `Degraded` with one of our reasons; a Warning event only when it is news.
    pub(super) fn degrade(&mut self, reason: &str, message: &str) {
        let same = conditions::get(&self.status.conditions, DEGRADED).is_some_and(|c| {
            c.status == conditions::TRUE && c.reason == reason && c.message == message
        });
        if !same {
            warn!(name = %self.owner.name, namespace = %self.owner.namespace, reason, message, "degraded");
            self.note(true, reason, message.to_string());
        }
        self.set(DEGRADED, true, reason, message);
    }

    /// Clears `Degraded` if we set it; rotation's reasons are rotation's to clear.
    pub(super) fn undegrade(&mut self) {
        // Running on the last valid spec, the current one is still invalid.
        if self.fallback.is_some() {
            return;
        }
        let held = conditions::is_true(&self.status.conditions, DEGRADED, None);
        let held_by_others =
            held && !conditions::degraded_by(&self.status.conditions, OWN_DEGRADED_REASONS);
        if held_by_others {
            return;
        }
        self.set(DEGRADED, false, "AsExpected", "");
        if held {
            self.note(
                false,
                "Recovered",
                "the problem reported as Degraded is resolved".into(),
            );
        }
    }
}
