//! Who may relay through a listener, said plainly: the report on
//! `/api/admin/config/v1`, and the warning for relay ranges that a
//! masquerading proxy makes unsafe.
//!
//! A Kubernetes Service with `externalTrafficPolicy: Cluster` (and many
//! cloud load balancers) rewrites an internet client's address to a node
//! address, which is private. A listener that relays for private ranges by
//! address alone then relays for the whole internet. Sluice cannot tell a
//! masqueraded stranger from a pod, so it says so at start, in a metric and
//! in the admin API, unless the client address comes from a PROXY header.

use crate::config::listener::{EsmtpListenerConfig, ListenerSpec};
use ipnet::IpNet;
use serde::Serialize;

/// Address ranges a masquerading proxy (kube-proxy, a cloud NAT) can make
/// a client appear from: RFC 1918, carrier-grade NAT (RFC 6598), link-local,
/// and IPv6 unique-local and link-local.
const PRIVATE: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
];

/// The entries of `relay_hosts` that overlap a private range.
pub fn private_relay_ranges(config: &EsmtpListenerConfig) -> Vec<IpNet> {
    let private: Vec<IpNet> = PRIVATE.iter().map(|n| n.parse().expect("valid")).collect();
    config
        .relay_hosts
        .iter()
        .filter(|net| private.iter().any(|p| overlaps(net, p)))
        .copied()
        .collect()
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// One listener's relay policy, as the admin API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    /// The address the listener binds.
    pub listen: String,
    /// Clients in these ranges relay to any domain without authenticating.
    pub relay_hosts: Vec<String>,
    /// The part of `relay_hosts` a masquerading proxy can impersonate.
    pub relay_private_ranges: Vec<String>,
    /// AUTH is offered after STARTTLS (the policy handles
    /// `smtp_server_auth_plain`); an authenticated client may relay.
    pub auth_offered: bool,
    /// Whether sessions must start with a PROXY header (base parameters).
    pub require_proxy_protocol: bool,
    /// Per-client overrides, most specific first as written.
    pub peer: Vec<PeerReport>,
    /// Set when a stranger behind a masquerading proxy could relay: the
    /// listener relays for private ranges by address alone.
    pub warning: Option<String>,
}

/// One `peer` block's relay parameters, merged over the base ones (outside
/// any `via` block).
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    /// The client range the block applies to.
    pub peer: String,
    /// The block's `relay_hosts`: clients in these ranges relay to any
    /// domain without authenticating.
    pub relay_hosts: Vec<String>,
    /// Whether these clients' sessions must start with a PROXY header.
    pub require_proxy_protocol: bool,
}

fn strings(nets: &[IpNet]) -> Vec<String> {
    nets.iter().map(IpNet::to_string).collect()
}

impl RelayReport {
    /// The report for the listener made from `spec`; `auth_offered` says
    /// whether the policy handles `smtp_server_auth_plain`.
    pub fn new(spec: &ListenerSpec, auth_offered: bool) -> Self {
        let base = spec.base();
        // the parameters a client outside every peer block gets, for each via block
        let unscoped: Vec<&EsmtpListenerConfig> = (0..=spec.via.len())
            .map(|v| spec.configs[v * (spec.peer.len() + 1)].as_ref())
            .collect();
        let mut private: Vec<IpNet> = unscoped
            .iter()
            .filter(|c| !c.require_proxy_protocol)
            .flat_map(|c| private_relay_ranges(c))
            .collect();
        private.sort();
        private.dedup();
        let warning = (!private.is_empty()).then(|| {
            format!(
                "relays for private ranges {} by address alone: behind a proxy that masquerades \
                 clients (a Kubernetes Service with externalTrafficPolicy: Cluster, many cloud \
                 load balancers) every internet client arrives from a private address and may \
                 relay; keep such listeners cluster-internal, require AUTH, or take the client \
                 address from a PROXY header (require_proxy_protocol in a peer block)",
                strings(&private).join(", ")
            )
        });
        RelayReport {
            listen: base.listen.clone(),
            relay_hosts: strings(&base.relay_hosts),
            relay_private_ranges: strings(&private),
            auth_offered,
            require_proxy_protocol: base.require_proxy_protocol,
            peer: spec
                .peer
                .iter()
                .enumerate()
                .map(|(i, net)| {
                    let c = &spec.configs[i + 1];
                    PeerReport {
                        peer: net.to_string(),
                        relay_hosts: strings(&c.relay_hosts),
                        require_proxy_protocol: c.require_proxy_protocol,
                    }
                })
                .collect(),
            warning,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(relay: &[&str]) -> EsmtpListenerConfig {
        let json = serde_json::json!({ "relay_hosts": relay });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn private_ranges_are_found_by_overlap() {
        let c = config(&[
            "127.0.0.1",
            "10.1.0.0/16",
            "0.0.0.0/0",
            "203.0.113.0/24",
            "fd00::/8",
        ]);
        let found: Vec<String> = strings(&private_relay_ranges(&c));
        assert_eq!(found, ["10.1.0.0/16", "0.0.0.0/0", "fd00::/8"]);
        assert!(private_relay_ranges(&config(&["127.0.0.1", "::1"])).is_empty());
    }

    #[test]
    fn the_report_warns_only_for_address_based_private_relaying() {
        let spec = ListenerSpec::single(config(&["10.0.0.0/8"]));
        let r = RelayReport::new(&spec, false);
        assert_eq!(r.relay_private_ranges, ["10.0.0.0/8"]);
        assert!(
            r.warning
                .as_deref()
                .unwrap()
                .contains("externalTrafficPolicy")
        );
        let safe = RelayReport::new(&ListenerSpec::single(config(&["127.0.0.1"])), true);
        assert!(safe.warning.is_none());
        assert!(safe.auth_offered);
    }
}
