//! The MACP auth operator: the `MacpAuth` CRD, the objects it owns, key rotation and reconciliation.
//!
//! For tests and embedding: [`run`] runs the real controllers against any
//! `kube::Client` (a cluster or an in-process fake API server) with a
//! [`PodProber`] of the caller's choice, until a shutdown future resolves.
//! [`leader::run`] does the same only while holding a leader-election Lease.

// The crate's docs are for its maintainers: the public items' docs name the
// internal modules and functions they are built on (the machine's `decide`,
// the readiness rules), which are `pub(crate)` so that no other crate leans on
// them.
#![allow(rustdoc::private_intra_doc_links)]

pub mod cli;
pub(crate) mod conditions;
pub mod config;
pub mod controller;
pub mod crd;
pub(crate) mod diff;
pub mod events;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod keyset;
pub(crate) mod keyset_rollout;
pub mod leader;
pub mod metrics;
pub(crate) mod probe;
pub mod rbac;
pub(crate) mod readiness;
pub mod reconcile;
pub mod resources;
pub mod rotation;
pub mod spread;
pub(crate) mod status;
pub mod telemetry;
pub(crate) mod ttl_clamp;
pub mod validate;
pub(crate) mod watch_caches;

pub use config::Settings;
pub use controller::{State, run, run_with_state};
pub use probe::{HttpProber, PodProber, ProbeError};
