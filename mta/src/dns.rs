//! MX resolution (spec §1.4) with hickory-resolver: hosts grouped by
//! preference, alphabetical within one; a missing MX means the domain itself;
//! `MX 0 .` is a null MX; the site name is the factored host list, so that
//! domains sharing MX hosts share one ready queue.

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use sluice_common::egress::IpLookupStrategy;
use std::net::{IpAddr, SocketAddr};

/// An MX and address resolver: the system's, or one asking the name servers
/// from `dns.configure_resolver`.
pub struct Dns {
    resolver: TokioResolver,
}

/// Where a domain's mail goes, as [`Dns::mx`] found it.
#[derive(Debug, Clone, PartialEq)]
pub enum MxAnswer {
    /// Host names, best preference first.
    Hosts(Vec<String>),
    /// RFC 7505: the domain accepts no mail.
    NullMx,
}

/// A lookup that gave no usable answer.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DnsFailure {
    /// The name (held here) does not exist: NXDOMAIN.
    #[error("NXDOMAIN: {0} does not exist")]
    NxDomain(String),
    /// The lookup failed otherwise (a timeout, SERVFAIL, ...): the name, then
    /// the resolver's error.
    #[error("DNS lookup for {0} failed: {1}")]
    Failed(String, String),
}

fn is_no_data(e: &NetError) -> Option<ResponseCode> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(nr)) => Some(nr.response_code),
        _ => None,
    }
}

impl Dns {
    /// The system resolver (`/etc/resolv.conf`).
    pub fn system() -> Result<Dns, NetError> {
        Ok(Dns {
            resolver: TokioResolver::builder_tokio()?.build()?,
        })
    }

    /// Ask these name servers (`ip:port`) only.
    pub fn with_servers(servers: &[SocketAddr]) -> Result<Dns, NetError> {
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        let config = ResolverConfig::from_name_servers(name_servers);
        let resolver = TokioResolver::builder_with_config(config, Default::default()).build()?;
        Ok(Dns { resolver })
    }

    /// MX hosts for `domain`, ordered as spec §1.4 says.
    pub async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsFailure> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut records: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        hickory_resolver::proto::rr::RData::MX(mx) => Some((
                            mx.preference,
                            mx.exchange
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                        )),
                        _ => None,
                    })
                    .collect();
                if records.iter().any(|(_, host)| host.is_empty()) {
                    return Ok(MxAnswer::NullMx);
                }
                records.sort();
                records.dedup();
                if records.is_empty() {
                    return Ok(MxAnswer::Hosts(vec![domain.to_ascii_lowercase()]));
                }
                Ok(MxAnswer::Hosts(
                    records.into_iter().map(|(_, h)| h).collect(),
                ))
            }
            Err(e) => match is_no_data(&e) {
                Some(ResponseCode::NXDomain) => Err(DnsFailure::NxDomain(domain.to_string())),
                // the domain exists but has no MX: it is its own mail host
                Some(_) => Ok(MxAnswer::Hosts(vec![domain.to_ascii_lowercase()])),
                None => Err(DnsFailure::Failed(domain.to_string(), e.to_string())),
            },
        }
    }

    /// Addresses of `host` under the path's lookup strategy.
    pub async fn addresses(
        &self,
        host: &str,
        strategy: IpLookupStrategy,
    ) -> Result<Vec<IpAddr>, DnsFailure> {
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        let v4 = || async {
            match self.resolver.ipv4_lookup(fqdn.as_str()).await {
                Ok(l) => Ok(l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        hickory_resolver::proto::rr::RData::A(a) => Some(IpAddr::V4(a.0)),
                        _ => None,
                    })
                    .collect::<Vec<_>>()),
                Err(e) if is_no_data(&e) == Some(ResponseCode::NoError) => Ok(vec![]),
                Err(e) if is_no_data(&e) == Some(ResponseCode::NXDomain) => {
                    Err(DnsFailure::NxDomain(host.to_string()))
                }
                Err(e) => Err(DnsFailure::Failed(host.to_string(), e.to_string())),
            }
        };
        let v6 = || async {
            match self.resolver.ipv6_lookup(fqdn.as_str()).await {
                Ok(l) => Ok(l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        hickory_resolver::proto::rr::RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    })
                    .collect::<Vec<_>>()),
                Err(e) if is_no_data(&e).is_some() => Ok(vec![]),
                Err(e) => Err(DnsFailure::Failed(host.to_string(), e.to_string())),
            }
        };
        let addrs = match strategy {
            IpLookupStrategy::Ipv4Only => v4().await?,
            IpLookupStrategy::Ipv6Only => v6().await?,
            IpLookupStrategy::Ipv4AndIpv6 | IpLookupStrategy::Ipv4thenIpv6 => {
                let mut a = v4().await?;
                a.extend(v6().await.unwrap_or_default());
                a
            }
            IpLookupStrategy::Ipv6thenIpv4 => {
                let mut a = v6().await.unwrap_or_default();
                a.extend(v4().await?);
                a
            }
        };
        Ok(addrs)
    }
}

/// The factored site name of a host list (spec §1.4): labels aligned from
/// the right, alternatives per position in first-seen order as `(a|b)`, `?`
/// when some name lacks the position.
pub fn site_name(hosts: &[String]) -> String {
    let labels: Vec<Vec<&str>> = hosts
        .iter()
        .map(|h| h.trim_end_matches('.').rsplit('.').collect())
        .collect();
    let depth = labels.iter().map(Vec::len).max().unwrap_or(0);
    let mut parts = vec![];
    for pos in 0..depth {
        let mut alternatives: Vec<&str> = vec![];
        let mut missing = false;
        for l in &labels {
            match l.get(pos) {
                Some(label) if !alternatives.contains(label) => alternatives.push(label),
                Some(_) => {}
                None => missing = true,
            }
        }
        let mut part = match alternatives.as_slice() {
            [one] => one.to_string(),
            many => format!("({})", many.join("|")),
        };
        if missing {
            part.push('?');
        }
        parts.push(part);
    }
    parts.reverse();
    parts.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn site_names_roll_up_shared_hosts() {
        assert_eq!(
            site_name(&hosts(&[
                "mta5.am0.yahoodns.net",
                "mta6.am0.yahoodns.net",
                "mta7.am0.yahoodns.net"
            ])),
            "(mta5|mta6|mta7).am0.yahoodns.net"
        );
        assert_eq!(
            site_name(&hosts(&[
                "gmail-smtp-in.l.google.com",
                "alt1.gmail-smtp-in.l.google.com",
                "alt2.gmail-smtp-in.l.google.com",
                "alt3.gmail-smtp-in.l.google.com",
                "alt4.gmail-smtp-in.l.google.com",
            ])),
            "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"
        );
        assert_eq!(site_name(&hosts(&["mx.example.com."])), "mx.example.com");
    }
}
