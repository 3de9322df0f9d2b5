//! Simulated-cluster harness for the end-to-end scenarios.
//!
//! - [`apiserver`]: an in-process Kubernetes API server (HTTP, list/watch, apply,
//!   status subresources, garbage collection) that kube's client and
//!   `kube::runtime::Controller` use unchanged.
//! - [`cluster`]: a deployment controller and kubelet that run the token service
//!   as real processes on loopback addresses, rolling them like Kubernetes.
//! - [`endpoints`]: a Service's ready endpoints, from the simulated store or a real cluster's API.
//! - [`proxy`]: a Service stand-in that forwards to ready pods.
//! - [`ready_pods`]: a Deployment's rollout played by hand, for tests without the simulated cluster.
//! - `reconcile_harness`: the real reconciler against the API server with the
//!   operator's RBAC, for the reconciler-level tests (`reconcile-harness` feature,
//!   on in the crate's own tests).
//! - [`load`]: a load generator that verifies every token with the MACP runtime's verifier.
//! - [`sandbox`]: the API server and the simulated cluster as one local cluster for `kubectl` and `helm`.
//! - [`standin`]: a kubelet stand-in for benchmarks: pods as in-process token services, rolled out at once.
//! - [`binary`]: finds (or builds) the service executable the pods run.
//! - [`helm`]: the real helm binary run on the chart, its output parsed.
//! - [`wait`]: [`wait::wait_until`], the one way a test waits for the cluster to get somewhere.
//!
//! See `tests/README.md` for what is simulated and how it differs from a real cluster.

pub mod apiserver;
pub mod binary;
pub mod cluster;
pub mod endpoints;
pub mod helm;
pub mod load;
pub mod proxy;
pub mod ready_pods;
#[cfg(feature = "reconcile-harness")]
pub mod reconcile_harness;
pub mod sandbox;
pub mod standin;
pub mod wait;
