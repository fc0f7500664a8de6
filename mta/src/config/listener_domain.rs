//! `kumo.make_listener_domain{...}`: what the `get_listener_domain` event
//! says about a recipient's domain — whether anyone may relay to it,
//! relaying from some addresses, and whether ARF complaint reports and
//! out-of-band bounces sent to it are logged (and then dropped or relayed).

use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;

/// What to do with a report (ARF or DSN) addressed to the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReportDisposition {
    /// Not looked at (`false`, KumoMTA's old spelling, too).
    #[default]
    Ignore,
    /// Log the `Feedback`/`OOB` record, then queue the message as usual
    /// (`true` too).
    LogThenRelay,
    /// Log the record and drop the message: nothing is spooled.
    LogThenDrop,
}

impl<'de> Deserialize<'de> for ReportDisposition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Flag(bool),
            Name(String),
        }
        match Given::deserialize(d)? {
            Given::Flag(false) => Ok(ReportDisposition::Ignore),
            Given::Flag(true) => Ok(ReportDisposition::LogThenRelay),
            Given::Name(n) => match n.as_str() {
                "Ignore" => Ok(ReportDisposition::Ignore),
                "LogThenRelay" => Ok(ReportDisposition::LogThenRelay),
                "LogThenDrop" => Ok(ReportDisposition::LogThenDrop),
                other => Err(serde::de::Error::custom(format!(
                    "{other:?} is not Ignore, LogThenRelay or LogThenDrop"
                ))),
            },
        }
    }
}

/// A listener domain, as `kumo.make_listener_domain` takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerDomain {
    /// Anyone may relay to this domain (an inbound domain of ours).
    #[serde(default)]
    pub relay_to: bool,
    /// Clients in these ranges may relay to this domain.
    #[serde(default)]
    pub relay_from: Vec<IpNet>,
    /// ARF feedback reports (RFC 5965) to this domain.
    #[serde(default)]
    pub log_arf: ReportDisposition,
    /// Out-of-band bounces, DSNs (RFC 3464), to this domain.
    #[serde(default)]
    pub log_oob: ReportDisposition,
}

impl ReportDisposition {
    /// Whether reports of this kind are looked for and logged.
    pub fn logs(self) -> bool {
        self != ReportDisposition::Ignore
    }

    /// Whether a report of this kind, once logged, is queued for relay.
    pub fn relays(self) -> bool {
        self == ReportDisposition::LogThenRelay
    }
}

/// What the listener domains (and the listener) say about one message,
/// judged by its sender and first recipient as KumoMTA does: whether it may
/// be relayed, and whether reports in it are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayDisposition {
    /// The client may relay it: it is in `relay_hosts` (or authenticated),
    /// in the sender domain's `relay_from`, or the recipient domain has
    /// `relay_to`.
    pub relay: bool,
    /// The recipient domain's `log_arf`.
    pub log_arf: ReportDisposition,
    /// The recipient domain's `log_oob`.
    pub log_oob: ReportDisposition,
}

impl RelayDisposition {
    /// Combine the listener's verdict on the client (`relay_hosts`, AUTH)
    /// with the sender's and the recipient's listener domains.
    pub fn decide(
        client_may_relay: bool,
        sender_domain: Option<&ListenerDomain>,
        recipient_domain: Option<&ListenerDomain>,
        ip: IpAddr,
    ) -> Self {
        let relay_from =
            sender_domain.is_some_and(|d| d.relay_from.iter().any(|n| n.contains(&ip)));
        let relay_to = recipient_domain.is_some_and(|d| d.relay_to);
        let (log_arf, log_oob) = recipient_domain
            .map(|d| (d.log_arf, d.log_oob))
            .unwrap_or_default();
        RelayDisposition {
            relay: client_may_relay || relay_from || relay_to,
            log_arf,
            log_oob,
        }
    }

    /// Whether a RCPT is accepted: it may be relayed, or it may be a report
    /// that is logged.
    pub fn accepts(&self) -> bool {
        self.relay || self.log_arf.logs() || self.log_oob.logs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(lua_like: serde_json::Value) -> ListenerDomain {
        serde_json::from_value(lua_like).unwrap()
    }

    #[test]
    fn dispositions_follow_kumomtas_spellings() {
        let d = domain(serde_json::json!({"log_arf": true, "log_oob": "LogThenDrop"}));
        assert_eq!(d.log_arf, ReportDisposition::LogThenRelay);
        assert_eq!(d.log_oob, ReportDisposition::LogThenDrop);
        let d = domain(serde_json::json!({"log_arf": false, "log_oob": "Ignore"}));
        assert!(!d.log_arf.logs() && !d.log_oob.logs());
        let bad = serde_json::from_value::<ListenerDomain>(serde_json::json!({"log_arf": "Drop"}));
        assert!(bad.unwrap_err().to_string().contains("LogThenDrop"));
        let typo = serde_json::from_value::<ListenerDomain>(serde_json::json!({"relay_too": true}));
        assert!(typo.unwrap_err().to_string().contains("relay_too"));
    }

    #[test]
    fn relay_from_is_the_senders_domain_and_relay_to_the_recipients() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let from = domain(serde_json::json!({"relay_from": ["10.0.0.0/24"]}));
        let to = domain(serde_json::json!({"relay_to": true}));
        let fbl = domain(serde_json::json!({"log_arf": "LogThenDrop"}));
        let decide = |c, s, r| RelayDisposition::decide(c, s, r, ip);
        assert!(decide(false, Some(&from), None).relay);
        // relay_from on the recipient's domain grants nothing
        assert!(!decide(false, None, Some(&from)).accepts());
        assert!(
            !RelayDisposition::decide(false, Some(&from), None, "192.0.2.1".parse().unwrap()).relay
        );
        assert!(decide(false, None, Some(&to)).relay);
        let report = decide(false, None, Some(&fbl));
        assert!(!report.relay && report.accepts());
        assert!(decide(true, None, None).relay);
        assert!(!decide(false, None, None).accepts());
    }
}
