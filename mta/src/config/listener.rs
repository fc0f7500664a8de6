//! `kumo.start_esmtp_listener{...}` (spec §6.1), with KumoMTA's defaults.

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_common::duration;
use sluice_common::egress::deserialize_cidrs;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `kumo.start_esmtp_listener{...}`: the parameters of one listener, or of one
/// of its sessions once a `via` or `peer` block is merged in. Keys are
/// KumoMTA's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsmtpListenerConfig {
    /// The `ip:port` to accept SMTP on; default `127.0.0.1:2025`. Only the base
    /// set's value counts.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The name the server gives in its banner, replies and `Received` header,
    /// and the self-signed certificate's name; default the machine's host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Text of the 220 greeting, after the host name; default `Sluice ESMTP`.
    #[serde(default = "default_banner")]
    pub banner: String,
    /// Peers that may relay to any domain.
    #[serde(
        default = "default_relay_hosts",
        deserialize_with = "deserialize_cidrs"
    )]
    pub relay_hosts: Vec<IpNet>,
    /// Sessions served at once; a client beyond that gets 421 and is
    /// disconnected. Only the base set's value counts. Default 32768.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Counts accepted RCPTs, as KumoMTA's source does.
    #[serde(default = "default_max_messages_per_connection")]
    pub max_messages_per_connection: usize,
    /// RCPT TOs accepted in one transaction; further ones get 452 4.5.3.
    /// Default 1024.
    #[serde(default = "default_max_recipients")]
    pub max_recipients_per_message: usize,
    /// Largest message accepted, in bytes of the body as stored (CRLF line
    /// endings, dot-unstuffed); advertised as the EHLO `SIZE`, and a larger
    /// body or MAIL FROM `SIZE=` gets 552 5.3.4. Default 20 MiB.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// Longest line allowed in a message body, in bytes without the CRLF; a
    /// longer one gets the message refused with 500 5.2.3. Default 998, as
    /// RFC 5322 says.
    #[serde(default = "default_line_length")]
    pub line_length_hard_limit: usize,
    /// What to do with a body that has bare CR or LF line endings; default
    /// `Deny`.
    #[serde(default)]
    pub invalid_line_endings: InvalidLineEndings,
    /// How long the server waits for the client to send (or to finish a
    /// STARTTLS handshake) before closing the session, with a 421 when it was
    /// waiting for a command; default 60 s.
    #[serde(
        default = "default_client_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub client_timeout: Duration,
    /// How long the work after DATA (`smtp_server_data`,
    /// `smtp_server_message_received` and resolving each message's queue) may
    /// take before the client gets 451 4.4.5; default 300 s.
    #[serde(
        default = "default_data_processing_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub data_processing_timeout: Duration,
    /// How a transaction's recipients are split into messages; default one
    /// message per recipient.
    #[serde(default)]
    pub batch_handling: BatchHandling,
    /// Reply 250 with the message in memory only; it is written to the spool
    /// when first delayed or at a graceful shutdown, so a crash loses it.
    /// Default false.
    #[serde(default)]
    pub deferred_spool: bool,
    /// Reply 250 right after the spool write, without running
    /// `smtp_server_message_received`: the message goes to
    /// `deferred_smtp_inject.kumomta.internal`, where
    /// `smtp_server_message_deferred_inject` runs later. Default false.
    #[serde(default)]
    pub deferred_queue: bool,
    /// Which trace headers are prepended to each message; by default `Received`
    /// and `X-KumoRef`.
    #[serde(default)]
    pub trace_headers: TraceHeaders,
    /// PEM certificate (chain) file offered on STARTTLS, set together with
    /// `tls_private_key`; without both, a self-signed certificate for
    /// `hostname` is made at start.
    #[serde(default)]
    pub tls_certificate: Option<PathBuf>,
    /// PEM private key file for `tls_certificate`.
    #[serde(default)]
    pub tls_private_key: Option<PathBuf>,
    /// Accepted for KumoMTA compatibility (there, the DATA read buffer size in
    /// bytes; default 128 KiB); unused here.
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
    /// The local networks of the `via` blocks, in order.
    pub via: Vec<IpNet>,
    /// The client networks of the `peer` blocks, in order.
    pub peer: Vec<IpNet>,
    /// The merged parameter sets, `(via.len() + 1) * (peer.len() + 1)` of them,
    /// indexed as above.
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

    /// The base parameters, with no `via` or `peer` block applied: where
    /// listener-wide settings such as `listen` and `max_connections` come from.
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

/// `invalid_line_endings`: how a message body with bare CR or LF line endings
/// is treated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum InvalidLineEndings {
    /// Refuse the message with 552 5.6.0 (the default).
    #[default]
    Deny,
    /// Accept the message; bare LF line ends are stored as CRLF, a stray CR
    /// inside a line is kept.
    Allow,
    /// Accept the message with CRLF line endings: here the same as `Allow`,
    /// since every stored line ends in CRLF either way.
    Fix,
}

/// `batch_handling`: how a transaction with several recipients becomes
/// messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum BatchHandling {
    /// One message per recipient (the default).
    #[default]
    BifurcateAlways,
    /// One message per recipient domain (compared case-insensitively), carrying
    /// all of that domain's recipients.
    BatchByDomain,
}

/// `trace_headers = {...}`: the trace headers prepended to each accepted
/// message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceHeaders {
    /// Prepend a `Received` header naming the client, this host, the protocol
    /// (with the TLS version and cipher) and the message id; default true.
    #[serde(default = "yes")]
    pub received_header: bool,
    /// Prepend the `header_name` header: base64 JSON with the recipient, the
    /// message id and the `include_meta_names` meta; default true.
    #[serde(default = "yes")]
    pub supplemental_header: bool,
    /// Name of the supplemental header; default `X-KumoRef`.
    #[serde(default = "default_trace_header_name")]
    pub header_name: String,
    /// Session meta keys whose values are added to the supplemental header;
    /// default none.
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
    /// The configured `hostname`, or the machine's host name.
    pub fn hostname(&self) -> String {
        self.hostname.clone().unwrap_or_else(crate::hostname)
    }

    /// Whether `peer` is in `relay_hosts` (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn may_relay(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.relay_hosts.iter().any(|net| net.contains(&peer))
    }
}
