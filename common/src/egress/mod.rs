//! Egress sources, pools and paths (spec §4): `kumo.make_egress_source`,
//! `kumo.make_egress_pool`, `kumo.make_egress_path`, with KumoMTA's defaults.
//! Unknown keys are errors.

use crate::throttle::ThrottleSpec;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

mod overrides;
mod settings;
pub use overrides::SettingError;
pub use settings::{ConnectionLimit, IpLookupStrategy, ReconnectStrategy, Tls};

/// `"10.0.0.0/8"` or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("invalid CIDR or IP address {s:?}"))
}

/// serde helper: a list of CIDRs or bare addresses, each as [`parse_cidr`] reads it.
pub fn deserialize_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    list.iter()
        .map(|s| parse_cidr(s).map_err(serde::de::Error::custom))
        .collect()
}

fn serialize_cidrs<S: serde::Serializer>(v: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|n| n.to_string()))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `kumo.make_egress_source{...}` (spec §4.2): where outgoing connections
/// come from and how they introduce themselves.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSource {
    /// Source name, as pool entries name it and log records show it (`egress_source`).
    pub name: String,
    /// Local address to bind outgoing connections to; kernel's choice when unset.
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    /// EHLO name for connections from this source; the path's `ehlo_domain` wins,
    /// and the host name is used when neither is set.
    #[serde(default)]
    pub ehlo_domain: Option<String>,
    /// Destination port that beats every other port setting.
    #[serde(default)]
    pub remote_port: Option<u16>,
    /// How long the MTA caches this source before asking `get_egress_source`
    /// again; default 60 s.
    #[serde(default = "default_ttl", with = "duration_field")]
    pub ttl: Duration,
}

fn default_ttl() -> Duration {
    secs(60)
}

impl EgressSource {
    /// KumoMTA's built-in `unspecified` source: no bind address, no overrides.
    pub fn unspecified() -> Self {
        EgressSource {
            name: "unspecified".into(),
            source_address: None,
            ehlo_domain: None,
            remote_port: None,
            ttl: default_ttl(),
        }
    }
}

/// One member of a pool (an element of `make_egress_pool`'s `entries`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPoolEntry {
    /// Name of the egress source, resolved with `get_egress_source`.
    pub name: String,
    /// Relative share of the pool's weighted round robin; default 1, and 0
    /// takes the source out.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// `kumo.make_egress_pool{...}` (spec §4.3): the sources a scheduled queue
/// sends through, picked by weighted round robin.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPool {
    /// Pool name, as a queue config's `egress_pool` names it.
    pub name: String,
    /// The member sources and their weights; an empty pool has nothing to send
    /// through.
    #[serde(default)]
    pub entries: Vec<EgressPoolEntry>,
    /// How long the MTA caches this pool before asking `get_egress_pool` again;
    /// default 60 s.
    #[serde(default = "default_ttl", with = "duration_field")]
    pub ttl: Duration,
}

impl EgressPool {
    /// KumoMTA's built-in `unspecified` pool: the `unspecified` source alone.
    pub fn unspecified() -> Self {
        EgressPool {
            name: "unspecified".into(),
            entries: vec![EgressPoolEntry {
                name: "unspecified".into(),
                weight: 1,
            }],
            ttl: default_ttl(),
        }
    }
}

mod duration_field {
    pub use crate::duration::deserialize;
    pub use crate::duration::serialize;
}

fn default_prohibited() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128"]
        .iter()
        .map(|s| s.parse().expect("valid"))
        .collect()
}

macro_rules! duration_defaults {
    ($($name:ident = $secs:expr;)*) => {
        $(fn $name() -> Duration { secs($secs) })*
    };
}

duration_defaults! {
    d_refresh = 60; d_connect = 60; d_banner = 60; d_ehlo = 300; d_mail_from = 300;
    d_rcpt_to = 300; d_data = 300; d_data_dot = 300; d_rset = 5; d_starttls = 5;
    d_idle = 5; d_auth = 60;
}

fn d_connection_limit() -> ConnectionLimit {
    ConnectionLimit {
        limit: 32,
        force_local: false,
    }
}
fn d_1024() -> usize {
    1024
}
fn d_100() -> usize {
    100
}
fn d_25() -> u16 {
    25
}
fn yes() -> bool {
    true
}

/// `kumo.make_egress_path{...}` (spec §4.4): shaping for one ready queue.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPathConfig {
    /// Concurrent connections per ready queue; default 32. An integer or a
    /// string such as `"1_000"` or `"local:20"`.
    #[serde(default = "d_connection_limit")]
    pub connection_limit: ConnectionLimit,
    /// Named limits shared by every path that names them (on this node):
    /// a session holds one slot of each.
    #[serde(default)]
    pub additional_connection_limits: BTreeMap<String, ConnectionLimit>,
    /// Throttle on new connections of the path, e.g. `"10/s"`; none by default.
    #[serde(default)]
    pub max_connection_rate: Option<ThrottleSpec>,
    /// Throttle on messages sent through the path, e.g. `"1,000/hr"`; none by
    /// default. A wait longer than `idle_timeout` hands the messages back to
    /// their scheduled queues.
    #[serde(default)]
    pub max_message_rate: Option<ThrottleSpec>,
    /// Further named message-rate throttles of the path, each checked as well as
    /// `max_message_rate`.
    #[serde(default)]
    pub additional_message_rate_throttles: BTreeMap<String, ThrottleSpec>,
    /// Messages sent over one connection before it is closed and a new one
    /// opened; default 1024.
    #[serde(default = "d_1024")]
    pub max_deliveries_per_connection: usize,
    /// Recipients per SMTP transaction; default 100. The rest go in further
    /// transactions on the same connection.
    #[serde(default = "d_100")]
    pub max_recipients_per_batch: usize,
    /// Ready-queue capacity: messages waiting for a connection; default 1024.
    #[serde(default = "d_1024")]
    pub max_ready: usize,
    /// Failed connection attempts in a row after which every message in the
    /// ready queue gets a transient failure; default 100.
    #[serde(default = "d_100")]
    pub consecutive_connection_failures_before_delay: usize,
    /// STARTTLS use towards the destination; default `Opportunistic`.
    #[serde(default)]
    pub enable_tls: Tls,
    /// With an opportunistic `enable_tls`: when the handshake (or the EHLO
    /// after it) fails, reconnect to the same address in clear instead of
    /// moving on to the next one; default false.
    #[serde(default)]
    pub opportunistic_tls_reconnect_on_failed_handshake: bool,
    /// The rustls cipher suites to offer, by name (`TLS13_AES_256_GCM_SHA384`,
    /// ...); default ring's safe set.
    #[serde(default)]
    pub rustls_cipher_suites: Vec<String>,
    /// Send 8-bit mail to a next hop that does not offer 8BITMIME (or an
    /// 8-bit envelope without SMTPUTF8) instead of failing it; default false.
    #[serde(default)]
    pub ignore_8bit_checks: bool,
    /// Speak LMTP (RFC 2033: LHLO, a reply per recipient after the body)
    /// instead of ESMTP; default false.
    #[serde(default)]
    pub use_lmtp: bool,
    /// Use ESMTP PIPELINING when the server offers it; default true.
    #[serde(default = "yes")]
    pub enable_pipelining: bool,
    /// Send RSET before each later transaction on a connection; default true.
    #[serde(default = "yes")]
    pub enable_rset: bool,
    /// Destination port when neither the source's `remote_port` nor the host
    /// names one; default 25.
    #[serde(default = "d_25")]
    pub smtp_port: u16,
    /// EHLO name for this path; beats the source's `ehlo_domain`, and the host
    /// name is used when neither is set.
    #[serde(default)]
    pub ehlo_domain: Option<String>,
    /// Destination CIDRs never connected to: a host resolving into one bounces
    /// the ready messages (`550 5.4.4`). Default loopback and the unspecified
    /// addresses.
    #[serde(
        default = "default_prohibited",
        deserialize_with = "deserialize_cidrs",
        serialize_with = "serialize_cidrs"
    )]
    pub prohibited_hosts: Vec<IpNet>,
    /// Destination CIDRs left out of the connection plan; a plan left empty is
    /// a transient failure. Empty by default.
    #[serde(
        default,
        deserialize_with = "deserialize_cidrs",
        serialize_with = "serialize_cidrs"
    )]
    pub skip_hosts: Vec<IpNet>,
    /// Which addresses a destination host name resolves to; default
    /// `Ipv4AndIpv6`.
    #[serde(default)]
    pub ip_lookup_strategy: IpLookupStrategy,
    /// Where an SMTP connection after a failed session starts in the
    /// site's plan: the next host (default), the same one, or the top.
    #[serde(default)]
    pub reconnect_strategy: ReconnectStrategy,
    /// How often a `Ttl` path asks `get_egress_path_config` again; default 60 s.
    #[serde(default = "d_refresh", with = "duration_field")]
    pub refresh_interval: Duration,
    /// When the path's config is asked for again: after `refresh_interval`
    /// (`Ttl`, the default) or after a policy reload (`Epoch`).
    #[serde(default)]
    pub refresh_strategy: crate::queue_config::RefreshStrategy,
    /// Groups the paths of one mailbox provider (gmail, outlook...): shown
    /// per ready queue by the queue summary, as kcli groups by it.
    #[serde(default)]
    pub provider_name: Option<String>,
    /// Time to establish the TCP connection; default 60 s.
    #[serde(default = "d_connect", with = "duration_field")]
    pub connect_timeout: Duration,
    /// Time to wait for the server's greeting; default 60 s.
    #[serde(default = "d_banner", with = "duration_field")]
    pub banner_timeout: Duration,
    /// Time to wait for the reply to EHLO (or HELO); default 300 s.
    #[serde(default = "d_ehlo", with = "duration_field")]
    pub ehlo_timeout: Duration,
    /// Time to wait for the reply to MAIL FROM; default 300 s.
    #[serde(default = "d_mail_from", with = "duration_field")]
    pub mail_from_timeout: Duration,
    /// Time to wait for the reply to each RCPT TO; default 300 s.
    #[serde(default = "d_rcpt_to", with = "duration_field")]
    pub rcpt_to_timeout: Duration,
    /// Time to wait for the reply to DATA; default 300 s.
    #[serde(default = "d_data", with = "duration_field")]
    pub data_timeout: Duration,
    /// Time to wait for the reply to the final `.` of the message; default 300 s.
    #[serde(default = "d_data_dot", with = "duration_field")]
    pub data_dot_timeout: Duration,
    /// Time to wait for the reply to RSET; default 5 s.
    #[serde(default = "d_rset", with = "duration_field")]
    pub rset_timeout: Duration,
    /// Time for the reply to STARTTLS and for the TLS handshake; default 5 s.
    #[serde(default = "d_starttls", with = "duration_field")]
    pub starttls_timeout: Duration,
    /// KumoMTA's time for SMTP AUTH; default 60 s. Accepted for compatibility:
    /// How long to wait for the reply to AUTH; default 60 s.
    #[serde(default = "d_auth", with = "duration_field")]
    pub auth_timeout: Duration,
    /// AUTH PLAIN (RFC 4616) as this user after EHLO; none by default.
    #[serde(default)]
    pub smtp_auth_plain_username: Option<String>,
    /// The password for `smtp_auth_plain_username`: a KeySource (a file,
    /// such as a mounted Secret, or `{ key_data = '...' }`).
    #[serde(default)]
    pub smtp_auth_plain_password: Option<crate::key_source::KeySource>,
    /// Send the credential over a connection without TLS; default false.
    #[serde(default)]
    pub allow_smtp_auth_plain_without_tls: bool,
    /// Send it over TLS whose certificate was not verified (an `*Insecure`
    /// `enable_tls`); default false.
    #[serde(default)]
    pub allow_smtp_auth_plain_without_valid_certificate: bool,
    /// How long an idle connection waits for more messages before closing.
    #[serde(default = "d_idle", with = "duration_field")]
    pub idle_timeout: Duration,
}

impl Default for EgressPathConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialise")
    }
}

impl EgressPathConfig {
    /// Message-rate throttles of this path, smallest rate first.
    pub fn message_rate_throttles(&self) -> Vec<(String, ThrottleSpec)> {
        let mut all: Vec<(String, ThrottleSpec)> = self
            .max_message_rate
            .iter()
            .map(|t| ("max_message_rate".to_string(), *t))
            .chain(
                self.additional_message_rate_throttles
                    .iter()
                    .map(|(k, v)| (k.clone(), *v)),
            )
            .collect();
        all.sort_by(|a, b| {
            let ra = a.1.limit as f64 / a.1.period_secs as f64;
            let rb = b.1.limit as f64 / b.1.period_secs as f64;
            ra.total_cmp(&rb)
        });
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_defaults_follow_the_source() {
        let p = EgressPathConfig::default();
        assert_eq!(p.connection_limit.limit, 32);
        assert_eq!(p.max_deliveries_per_connection, 1024);
        assert_eq!(p.max_ready, 1024);
        assert_eq!(p.idle_timeout, secs(5));
        assert_eq!(p.smtp_port, 25);
        assert_eq!(p.enable_tls, Tls::Opportunistic);
        assert!(
            p.prohibited_hosts
                .iter()
                .any(|n| n.contains(&"127.0.0.1".parse::<IpAddr>().unwrap()))
        );
    }

    #[test]
    fn connection_limits_take_numbers_and_strings() {
        let p: EgressPathConfig =
            serde_json::from_str(r#"{"connection_limit": "local:20"}"#).unwrap();
        assert_eq!(
            p.connection_limit,
            ConnectionLimit {
                limit: 20,
                force_local: true
            }
        );
        let p: EgressPathConfig = serde_json::from_str(r#"{"connection_limit": "1_000"}"#).unwrap();
        assert_eq!(p.connection_limit.limit, 1000);
        for bad in [r#"0"#, r#""none""#, r#""local:0""#] {
            let e = serde_json::from_str::<EgressPathConfig>(&format!(
                r#"{{"connection_limit": {bad}}}"#
            ))
            .unwrap_err();
            assert!(e.to_string().contains("connection limit"), "{e}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = serde_json::from_str::<EgressPathConfig>(r#"{"conection_limit": 2}"#).unwrap_err();
        assert!(e.to_string().contains("conection_limit"), "{e}");
        let e =
            serde_json::from_str::<EgressPathConfig>(r#"{"enable_tls": "Sometimes"}"#).unwrap_err();
        assert!(e.to_string().contains("Sometimes"), "{e}");
        let e = serde_json::from_str::<EgressPathConfig>(r#"{"prohibited_hosts": ["not-an-ip"]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("not-an-ip"), "{e}");
        let e =
            serde_json::from_str::<EgressSource>(r#"{"name": "a", "socks5_proxy_server": "x"}"#)
                .unwrap_err();
        assert!(e.to_string().contains("socks5_proxy_server"), "{e}");
    }

    #[test]
    fn message_rates_are_ordered_smallest_first() {
        let p: EgressPathConfig = serde_json::from_str(
            r#"{"max_message_rate": "100/s", "additional_message_rate_throttles": {"hourly": "1000/h", "minutely": "600/m"}}"#,
        )
        .unwrap();
        let names: Vec<String> = p
            .message_rate_throttles()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, vec!["hourly", "minutely", "max_message_rate"]);
    }
}
