//! The enumerated and parsed values of an egress path's keys:
//! `connection_limit`, `enable_tls`, `ip_lookup_strategy`,
//! `reconnect_strategy`, and the outbound SMTP AUTH credential.

use serde::{Deserialize, Deserializer, Serialize};

/// A connection limit: an integer, or a string such as `"1_000"` or `"local:20"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimit {
    /// Most concurrent connections (at least 1).
    pub limit: usize,
    /// `local:` prefix: always node-local, even if shared limits exist.
    pub force_local: bool,
}

/// Written as `make_egress_path` reads it: a number, or `"local:N"`.
impl Serialize for ConnectionLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.force_local {
            true => format!("local:{}", self.limit).serialize(s),
            false => self.limit.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ConnectionLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        let (limit, force_local, input) = match Raw::deserialize(d)? {
            Raw::N(n) => (Some(n), false, n.to_string()),
            Raw::S(s) => {
                let (local, rest) = match s.strip_prefix("local:") {
                    Some(r) => (true, r),
                    None => (false, s.as_str()),
                };
                let digits: String = rest.chars().filter(|c| *c != '_' && *c != ',').collect();
                (digits.parse::<u64>().ok(), local, s.clone())
            }
        };
        match limit {
            Some(n) if n >= 1 => Ok(ConnectionLimit {
                limit: n as usize,
                force_local,
            }),
            _ => Err(serde::de::Error::custom(format!(
                "invalid connection limit {input:?}: must be a whole number >= 1"
            ))),
        }
    }
}

/// `enable_tls`: whether STARTTLS is used towards the destination, and how
/// strictly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum Tls {
    /// STARTTLS when the server offers it, with certificate verification; plain
    /// text when it does not (the default).
    #[default]
    Opportunistic,
    /// As `Opportunistic`, without certificate verification.
    OpportunisticInsecure,
    /// STARTTLS with a verified certificate, or the connection fails.
    Required,
    /// STARTTLS without certificate verification, or the connection fails.
    RequiredInsecure,
    /// Never STARTTLS.
    Disabled,
}

/// `ip_lookup_strategy`: which addresses a destination host name resolves to,
/// in which order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum IpLookupStrategy {
    /// A and AAAA records, the IPv4 addresses first (the default).
    #[default]
    Ipv4AndIpv6,
    /// A records only.
    Ipv4Only,
    /// AAAA records only.
    Ipv6Only,
    /// IPv4 addresses, then IPv6 ones (as `Ipv4AndIpv6`).
    Ipv4thenIpv6,
    /// IPv6 addresses, then IPv4 ones.
    Ipv6thenIpv4,
}

/// `reconnect_strategy`: where in the site's plan the next connection starts
/// after a session failed on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum ReconnectStrategy {
    /// The host after the one that failed (the default).
    #[default]
    ConnectNextHost,
    /// The host that failed.
    ReconnectSameHost,
    /// The top of the plan, as a fresh session.
    TerminateSession,
}
