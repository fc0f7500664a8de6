//! What a policy configures, as plain typed values: the parameters of
//! `start_esmtp_listener`, `start_http_listener`, `define_spool`,
//! `configure_local_logs`, `configure_log_hook` and
//! `dns.configure_resolver`, `configure_redis_throttles`, and what `init`
//! produced in all. The policy
//! engine builds them; the layers that act on them (listener, admin, spool,
//! log) read them. No behaviour lives here beyond checking a value's shape.

pub mod http;
pub mod listener;
pub mod listener_domain;
pub mod logs;
pub mod min_free;
pub mod redis;
pub mod xfer;

pub use min_free::MinFree;

use serde::Deserialize;
use std::path::PathBuf;

pub use sluice_common::key_source::read_secret_file;

/// A config value that is well-formed but unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A `name_servers` entry that is neither `ip` nor `ip:port`.
    #[error("name server {0:?} is not ip or ip:port")]
    NameServer(String),
}

/// `kumo.define_spool{...}` (spec §7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolDefinition {
    /// The spool's name; KumoMTA policies define `data` and `meta`. Sluice
    /// keeps bodies and meta in one spool: the one named `data`, else the first
    /// defined.
    pub name: String,
    /// Directory of the spool's segment files, created if missing.
    pub path: PathBuf,
    /// Accepted for compatibility: Sluice always uses its own segment-log
    /// spool, whatever the kind.
    #[serde(default)]
    pub kind: Option<SpoolKind>,
    /// Accepted for compatibility: Sluice always syncs before replying 250.
    #[serde(default)]
    pub flush: Option<bool>,
    /// Accepted for compatibility; ignored (there is no RocksDB).
    #[serde(default)]
    pub rocks_params: Option<serde_json::Value>,
    /// Free space the spool's volume must keep (`"10%"` of it, the default,
    /// or a number of bytes): below it, SMTP and HTTP injection are refused
    /// with a 4xx and readiness fails until deliveries free space.
    #[serde(default)]
    pub min_free_space: MinFree,
    /// Free inodes the spool's volume must keep (`"10%"`, the default, or a
    /// number), with the same effect as `min_free_space`.
    #[serde(default)]
    pub min_free_inodes: MinFree,
}

/// KumoMTA's spool kinds, accepted in `define_spool{ kind = ... }`; either
/// means Sluice's own spool.
#[derive(Debug, Clone, Copy, Deserialize)]
pub enum SpoolKind {
    /// KumoMTA's file-per-message spool.
    LocalDisk,
    /// KumoMTA's RocksDB spool.
    RocksDB,
}

/// `kumo.dns.configure_resolver{ name_servers = {'ip:port', ...} }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverDefinition {
    /// Name servers to ask instead of those in `/etc/resolv.conf`, each `ip` or
    /// `ip:port` (port 53 when none is given).
    pub name_servers: Vec<String>,
}

impl ResolverDefinition {
    /// The servers as socket addresses (port 53 when none is given).
    pub fn servers(&self) -> Result<Vec<std::net::SocketAddr>, ConfigError> {
        self.name_servers
            .iter()
            .map(|s| {
                s.parse::<std::net::SocketAddr>()
                    .or_else(|_| {
                        s.parse::<std::net::IpAddr>()
                            .map(|ip| std::net::SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| ConfigError::NameServer(s.clone()))
            })
            .collect()
    }
}

/// What the `init` event configured.
#[derive(Debug, Default, Clone)]
pub struct InitConfig {
    /// One per `start_esmtp_listener` call, its `via` and `peer` blocks merged.
    pub listeners: Vec<listener::ListenerSpec>,
    /// One per `define_spool` call, in order.
    pub spools: Vec<SpoolDefinition>,
    /// One per `configure_local_logs` call.
    pub logs: Vec<logs::LocalLogConfig>,
    /// From the last `dns.configure_resolver` call; `None` uses the system
    /// resolver.
    pub resolver: Option<ResolverDefinition>,
    /// One per `start_http_listener` call.
    pub http_listeners: Vec<http::HttpListenerConfig>,
    /// One per `configure_log_hook` call.
    pub log_hooks: Vec<logs::LogHookConfig>,
    /// From `kumo.set_memory_hard_limit`, `set_memory_soft_limit` and
    /// `set_memory_low_thresh` (in `pre_init` or `init`).
    pub memory: crate::memory::Settings,
    /// From `kumo.configure_redis_throttles`, checked: throttles and
    /// connection limits shared through Redis. `None` keeps them per node.
    pub redis_throttles: Option<redis::RedisSettings>,
    /// From `kumo.xfer.configure_client`: how transfers to other nodes
    /// authenticate.
    pub xfer_client: xfer::XferClientConfig,
    /// From `kumo.configure_bounce_classifier`, its rules compiled.
    pub bounce_classifier: Option<std::sync::Arc<crate::bounce::Classifier>>,
    /// From `kumo.configure_shaping_automation`: the `shaping.toml` files
    /// whose automation rules watch delivery responses (checked when given).
    pub shaping_files: Vec<std::path::PathBuf>,
}
