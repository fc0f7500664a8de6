//! `kumo.start_esmtp_listener{...}` (spec §6.1), with KumoMTA's defaults.

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_common::duration;
use sluice_common::egress::deserialize_cidrs;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsmtpListenerConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default = "default_banner")]
    pub banner: String,
    /// Peers that may relay to any domain.
    #[serde(
        default = "default_relay_hosts",
        deserialize_with = "deserialize_cidrs"
    )]
    pub relay_hosts: Vec<IpNet>,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Counts accepted RCPTs, as KumoMTA's source does.
    #[serde(default = "default_max_messages_per_connection")]
    pub max_messages_per_connection: usize,
    #[serde(default = "default_max_recipients")]
    pub max_recipients_per_message: usize,
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    #[serde(default = "default_line_length")]
    pub line_length_hard_limit: usize,
    #[serde(default)]
    pub invalid_line_endings: InvalidLineEndings,
    #[serde(
        default = "default_client_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub client_timeout: Duration,
    #[serde(
        default = "default_data_processing_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub data_processing_timeout: Duration,
    #[serde(default)]
    pub batch_handling: BatchHandling,
    #[serde(default)]
    pub deferred_spool: bool,
    #[serde(default)]
    pub deferred_queue: bool,
    #[serde(default)]
    pub trace_headers: TraceHeaders,
    #[serde(default)]
    pub tls_certificate: Option<PathBuf>,
    #[serde(default)]
    pub tls_private_key: Option<PathBuf>,
    #[serde(default = "default_data_buffer_size")]
    pub data_buffer_size: usize,
    /// Extra connection meta set for every session on this listener.
    #[serde(default)]
    pub meta: Map<String, Value>,
    /// The client must open with a PROXY protocol header (v1 or v2), whose
    /// addresses then replace the connection's: set it only in a `peer`
    /// block naming the proxies, as KumoMTA advises, since any client that
    /// may send the header chooses the address relay control sees.
    #[serde(default)]
    pub require_proxy_protocol: bool,
}

/// A listener's parameters: the base set from `start_esmtp_listener`, and
/// the `via` (local address) and `peer` (client address) blocks that
/// override it, each already merged and validated at `init` so a session
/// only picks one. `configs[v * (peer.len() + 1) + p]` is the base with via
/// block `v - 1` (none when 0) and then peer block `p - 1` applied.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub via: Vec<IpNet>,
    pub peer: Vec<IpNet>,
    pub configs: Vec<std::sync::Arc<EsmtpListenerConfig>>,
}

impl ListenerSpec {
    /// A listener without `via` or `peer` blocks.
    pub fn single(config: EsmtpListenerConfig) -> Self {
        ListenerSpec {
            via: vec![],
            peer: vec![],
            configs: vec![std::sync::Arc::new(config)],
        }
    }

    pub fn base(&self) -> &EsmtpListenerConfig {
        &self.configs[0]
    }

    /// The index of the parameters for a session from `peer` to `local`:
    /// the most specific (longest prefix) `via` and `peer` entries win.
    pub fn select(&self, local: IpAddr, peer: IpAddr) -> usize {
        let v = longest_match(&self.via, local);
        let p = longest_match(&self.peer, peer);
        v * (self.peer.len() + 1) + p
    }
}

/// 1 + the index of the longest prefix in `nets` containing `ip`, or 0.
fn longest_match(nets: &[IpNet], ip: IpAddr) -> usize {
    let ip = canonical(ip);
    nets.iter()
        .enumerate()
        .filter(|(_, n)| n.contains(&ip))
        .max_by_key(|(_, n)| n.prefix_len())
        .map(|(i, _)| i + 1)
        .unwrap_or(0)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum InvalidLineEndings {
    #[default]
    Deny,
    Allow,
    Fix,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum BatchHandling {
    #[default]
    BifurcateAlways,
    BatchByDomain,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceHeaders {
    #[serde(default = "yes")]
    pub received_header: bool,
    #[serde(default = "yes")]
    pub supplemental_header: bool,
    #[serde(default = "default_trace_header_name")]
    pub header_name: String,
    #[serde(default)]
    pub include_meta_names: Vec<String>,
}

impl Default for TraceHeaders {
    fn default() -> Self {
        TraceHeaders {
            received_header: true,
            supplemental_header: true,
            header_name: default_trace_header_name(),
            include_meta_names: vec![],
        }
    }
}

fn yes() -> bool {
    true
}
fn default_trace_header_name() -> String {
    "X-KumoRef".into()
}
fn default_listen() -> String {
    "127.0.0.1:2025".into()
}
fn default_banner() -> String {
    "Sluice ESMTP".into()
}
fn default_relay_hosts() -> Vec<IpNet> {
    vec![
        "127.0.0.1/32".parse().expect("valid"),
        "::1/128".parse().expect("valid"),
    ]
}
fn default_max_connections() -> usize {
    32768
}
fn default_max_messages_per_connection() -> usize {
    10000
}
fn default_max_recipients() -> usize {
    1024
}
fn default_max_message_size() -> usize {
    20 * 1024 * 1024
}
fn default_line_length() -> usize {
    998
}
fn default_client_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_data_processing_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_data_buffer_size() -> usize {
    128 * 1024
}

impl EsmtpListenerConfig {
    pub fn hostname(&self) -> String {
        self.hostname.clone().unwrap_or_else(crate::hostname)
    }

    pub fn may_relay(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.relay_hosts.iter().any(|net| net.contains(&peer))
    }
}
