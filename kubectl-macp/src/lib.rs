//! `kubectl macp`: a kubectl plugin for MacpAuth resources (docs/kubectl-macp.md).
//!
//! The pure parts (what a status means, the steps of a rotation and their
//! ETA, tables, the audit lines) live in their own modules and are tested
//! without a cluster; [`client`] does the Kubernetes I/O and [`cli`] ties the
//! commands together.

pub mod audit;
pub mod cli;
pub mod client;
pub mod error;
pub mod fmt;
pub mod history;
pub mod rotate;
pub mod status;
pub mod steps;
pub mod table;
