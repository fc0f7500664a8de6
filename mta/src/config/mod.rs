//! What a policy configures, as plain typed values: the parameters of
//! `start_esmtp_listener`, `start_http_listener`, `define_spool`,
//! `configure_local_logs`, `configure_log_hook` and
//! `dns.configure_resolver`, and what `init` produced in all. The policy
//! engine builds them; the layers that act on them (listener, admin, spool,
//! log) read them. No behaviour lives here beyond checking a value's shape.

pub mod http;
pub mod listener;
pub mod logs;

use serde::Deserialize;
use std::path::PathBuf;

/// A config value that is well-formed but unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("name server {0:?} is not ip or ip:port")]
    NameServer(String),
}

/// `kumo.define_spool{...}` (spec §7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolDefinition {
    pub name: String,
    pub path: PathBuf,
    #[serde(default)]
    pub kind: Option<SpoolKind>,
    /// Accepted for compatibility: Sluice always syncs before replying 250.
    #[serde(default)]
    pub flush: Option<bool>,
    #[serde(default)]
    pub rocks_params: Option<serde_json::Value>,
    #[serde(default)]
    pub min_free_space: Option<serde_json::Value>,
    #[serde(default)]
    pub min_free_inodes: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub enum SpoolKind {
    LocalDisk,
    RocksDB,
}

/// `kumo.dns.configure_resolver{ name_servers = {'ip:port', ...} }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverDefinition {
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
    pub listeners: Vec<listener::ListenerSpec>,
    pub spools: Vec<SpoolDefinition>,
    pub logs: Vec<logs::LocalLogConfig>,
    pub resolver: Option<ResolverDefinition>,
    pub http_listeners: Vec<http::HttpListenerConfig>,
    pub log_hooks: Vec<logs::LogHookConfig>,
}
