//! sluice-operator: reconciles QueuePolicy, EgressPool and EgressPath into
//! the policy the MTA pods hot-load.

pub mod crd;
pub mod crdgen;
pub mod manifests;
pub mod render;
