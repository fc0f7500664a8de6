//! sluice-mta: a KumoMTA-compatible mail transfer agent.

pub mod admin;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod dns;
pub mod egress;

pub mod inject;
pub mod lifecycle;
pub mod listener;
pub mod log;
pub mod log_hook;
pub mod message;
pub mod metrics;
pub mod policy;
pub mod queue;
pub mod reload;
pub mod smtp;
pub mod spool;
pub mod throttle;

/// The machine's host name, used in greetings and trace headers.
pub fn hostname() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most buf.len() bytes into buf.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return "localhost".into();
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    })
    .clone()
}
