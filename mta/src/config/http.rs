//! `kumo.start_http_listener{...}` (spec §10), with KumoMTA's defaults.

use ipnet::IpNet;
use serde::Deserialize;
use sluice_common::egress::deserialize_cidrs;

/// `kumo.start_http_listener{...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListenerConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default = "default_trusted", deserialize_with = "deserialize_cidrs")]
    pub trusted_hosts: Vec<IpNet>,
    /// Only plain HTTP is served; `true` is refused at start.
    #[serde(default)]
    pub use_tls: bool,
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
