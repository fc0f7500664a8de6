//! Where an SMTP queue delivers: the `mx_list` plan and its site name
//! (spec §1.3–1.4). Hosts are resolved when a connection is made.

use sluice_common::queue_config::MxListEntry;
use std::net::{IpAddr, SocketAddr};

/// Why a site cannot be planned or a target reached.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SiteError {
    /// An `mx_list` entry or address literal that is not well-formed.
    #[error("{0}")]
    Invalid(String),
    /// The target's name did not resolve.
    #[error("{0}")]
    Resolve(String),
}

/// One candidate host: the name used in logs and TLS, and how to reach it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The host's name (or the address literal's IP), for logs and TLS
    /// verification.
    pub name: String,
    /// What to connect to: an IP address as is, or a name to resolve.
    pub host: Host,
    /// The port the entry named; the source's `remote_port` overrides it, and
    /// the path's `smtp_port` applies when neither is set.
    pub port: Option<u16>,
}

/// How a target is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum Host {
    /// An address used as is.
    Ip(IpAddr),
    /// A host name, resolved when a connection is made.
    Name(String),
}

/// Where an SMTP queue delivers: the targets to try in order, and the site
/// name that identifies them.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// The site name in the ready queue's name: the factored MX host names,
    /// `mx_list:...`, or the literal's IP.
    pub name: String,
    /// The candidate hosts, in the order connections try them.
    pub targets: Vec<Target>,
}

/// Split `host:port` / `[ip]:port` / `[ip]` / `host`.
fn split_port(s: &str) -> Result<(&str, Option<u16>), SiteError> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| SiteError::Invalid(format!("unterminated '[' in {s:?}")))?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => {
                return Err(SiteError::Invalid(format!(
                    "unexpected {after:?} after ']' in {s:?}"
                )));
            }
        };
        (&s[..end + 2], port)
    } else {
        match s.rsplit_once(':') {
            // a bare IPv6 address has colons but no port
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (s, None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| SiteError::Invalid(format!("invalid port {p:?} in {s:?}")))
        })
        .transpose()?;
    Ok((host, port))
}

fn parse_host(host: &str) -> Result<Host, SiteError> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let inner = inner.strip_prefix("IPv6:").unwrap_or(inner);
        return inner
            .parse()
            .map(Host::Ip)
            .map_err(|_| SiteError::Invalid(format!("[{inner}] is not an IP address")));
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(Host::Ip(ip)),
        Err(_) if !host.is_empty() => Ok(Host::Name(host.to_ascii_lowercase())),
        Err(_) => Err(SiteError::Invalid("empty host name".into())),
    }
}

/// The plan and site name for an `mx_list`, in list order.
pub fn mx_list_site(entries: &[MxListEntry]) -> Result<Site, SiteError> {
    let mut targets = vec![];
    let mut labels = vec![];
    for e in entries {
        match e {
            MxListEntry::Name(s) => {
                let (host, port) = split_port(s)?;
                targets.push(Target {
                    name: host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string(),
                    host: parse_host(host)?,
                    port,
                });
                labels.push(s.clone());
            }
            MxListEntry::Address { name, addr } => {
                let (host, port) = split_port(addr)?;
                let ip = match parse_host(host)? {
                    Host::Ip(ip) => ip,
                    Host::Name(_) => {
                        return Err(SiteError::Invalid(format!(
                            "addr {addr:?} for {name:?} must be an IP address"
                        )));
                    }
                };
                targets.push(Target {
                    name: name.clone(),
                    host: Host::Ip(ip),
                    port,
                });
                labels.push(addr.clone());
            }
        }
    }
    if targets.is_empty() {
        return Err(SiteError::Invalid("mx_list is empty".into()));
    }
    Ok(Site {
        name: format!("mx_list:{}", labels.join(",")),
        targets,
    })
}

/// The site of a queue whose domain is an address literal (`[10.0.0.1]`).
pub fn literal_site(domain: &str) -> Option<Site> {
    let (host, port) = split_port(domain).ok()?;
    match parse_host(host).ok()? {
        Host::Ip(ip) if host.starts_with('[') => Some(Site {
            name: ip.to_string(),
            targets: vec![Target {
                name: ip.to_string(),
                host: Host::Ip(ip),
                port,
            }],
        }),
        _ => None,
    }
}

/// Addresses for a target, in resolver order.
pub async fn resolve(
    dns: &crate::dns::Dns,
    target: &Target,
    port: u16,
    strategy: sluice_common::egress::IpLookupStrategy,
) -> Result<Vec<SocketAddr>, SiteError> {
    match &target.host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
        Host::Name(name) => dns
            .addresses(name, strategy)
            .await
            .map(|ips| {
                ips.into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect()
            })
            .map_err(|e| SiteError::Resolve(e.to_string())),
    }
}

/// The site for MX hosts (best preference first): each host a target.
pub fn mx_site(hosts: &[String]) -> Site {
    Site {
        name: crate::dns::site_name(hosts),
        targets: hosts
            .iter()
            .map(|h| Target {
                name: h.clone(),
                host: Host::Name(h.clone()),
                port: None,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_list_plans_and_site_names() {
        let site = mx_list_site(&[
            MxListEntry::Name("smart.host.local".into()),
            MxListEntry::Address {
                name: "mx.example.com".into(),
                addr: "10.0.0.1".into(),
            },
            MxListEntry::Name("[127.0.0.1]:2600".into()),
            MxListEntry::Name("relay.example:587".into()),
        ])
        .unwrap();
        assert_eq!(
            site.name,
            "mx_list:smart.host.local,10.0.0.1,[127.0.0.1]:2600,relay.example:587"
        );
        assert_eq!(site.targets[0].host, Host::Name("smart.host.local".into()));
        assert_eq!(site.targets[1].name, "mx.example.com");
        assert_eq!(site.targets[2].host, Host::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(site.targets[2].port, Some(2600));
        assert_eq!(site.targets[3].port, Some(587));
        assert!(mx_list_site(&[]).is_err());
        assert!(
            mx_list_site(&[MxListEntry::Address {
                name: "x".into(),
                addr: "not.ip".into()
            }])
            .is_err()
        );
        assert!(mx_list_site(&[MxListEntry::Name("[10.0.0.1".into())]).is_err());
    }

    #[test]
    fn address_literal_queues() {
        let site = literal_site("[10.0.0.1]").unwrap();
        assert_eq!(site.name, "10.0.0.1");
        assert_eq!(literal_site("[IPv6:::1]").unwrap().name, "::1");
        assert_eq!(literal_site("example.com"), None);
    }
}
