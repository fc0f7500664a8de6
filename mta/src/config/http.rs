//! `kumo.start_http_listener{...}` (spec §10), with KumoMTA's defaults.

use ipnet::IpNet;
use serde::Deserialize;
use sluice_common::egress::deserialize_cidrs;

/// `kumo.start_http_listener{...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListenerConfig {
    /// The `ip:port` to serve HTTP on; default `127.0.0.1:8000`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Accepted for KumoMTA compatibility, where it names the TLS certificate;
    /// unused, since only plain HTTP is served.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Clients (CIDR blocks or single addresses) that may use the endpoints
    /// beyond the probes without HTTP Basic credentials; default `127.0.0.1`
    /// and `::1`.
    #[serde(default = "default_trusted", deserialize_with = "deserialize_cidrs")]
    pub trusted_hosts: Vec<IpNet>,
    /// Only plain HTTP is served; `true` is refused at start.
    #[serde(default)]
    pub use_tls: bool,
    /// Largest request body accepted, in bytes (a larger one gets 413); default
    /// 2 MiB.
    #[serde(default = "default_body_limit")]
    pub request_body_limit: usize,
}

fn default_listen() -> String {
    "127.0.0.1:8000".into()
}
fn default_trusted() -> Vec<IpNet> {
    vec![
        "127.0.0.1/32".parse().expect("valid"),
        "::1/128".parse().expect("valid"),
    ]
}
fn default_body_limit() -> usize {
    2 * 1024 * 1024
}
