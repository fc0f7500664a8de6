//! sluice-mta: a KumoMTA-compatible mail transfer agent.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod admission;
pub mod bounce;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod egress;
pub mod feedback;
pub mod handoff;

pub mod inject;
pub mod lifecycle;
pub mod listener;
pub mod log;
pub mod log_hook;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod policy;
pub mod queue;
pub mod reload;
pub mod shaping;
pub mod smtp;
pub mod spool;
pub mod storage;
pub mod throttle;
pub mod trace;
pub mod xfer;

/// The machine's host name (the pod's, in Kubernetes: the UTS namespace's),
/// used in greetings and trace headers.
pub fn hostname() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    })
    .clone()
}
