//! sluice-operator: reconciles QueuePolicy, EgressPool and EgressPath into
//! the policy the MTA pods hot-load.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin_auth;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod handoff;
pub mod last_accepted;
pub mod manifests;
pub mod metrics;
pub mod render;
pub mod status;
