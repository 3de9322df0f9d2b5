//! Layer 3 (docs/architecture.md, Test layers): the real reconciler, through
//! the real kube client, against the in-process API server enforcing the
//! operator's RBAC; pods and Deployment status set by hand, a fake prober
//! answering for the pods (`macp_auth_e2e::reconcile_harness`).
//!
//! One test binary, a module per topic: each binary of this crate links the
//! operator, the service and kube, so one link serves them all.

mod controller;
mod degraded;
mod drift;
mod incident;
mod objects;
mod rotation;
mod scaling;
mod stale_reads;
mod standby;
