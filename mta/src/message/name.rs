//! Scheduled-queue names (spec §1.2): `campaign:tenant@domain!routing_domain`.

use crate::message::{Message, split_address};
use serde_json::Value;

/// The parts of a scheduled-queue name,
/// `campaign:tenant@domain!routing_domain`: the arguments of
/// `get_queue_config`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueName {
    /// From the message's `campaign` meta.
    pub campaign: Option<String>,
    /// From the message's `tenant` meta; present (perhaps empty) whenever
    /// `campaign` is.
    pub tenant: Option<String>,
    /// The first recipient's domain, lowercased.
    pub domain: String,
    /// From the message's `routing_domain` meta: the domain to route on instead
    /// of `domain`.
    pub routing_domain: Option<String>,
}

impl QueueName {
    /// Split a queue name back into the arguments of `get_queue_config`.
    pub fn parse(name: &str) -> QueueName {
        let (prefix, domain_part) = match name.split_once('@') {
            Some((p, d)) => (Some(p), d),
            None => (None, name),
        };
        let (campaign, tenant) = match prefix {
            None => (None, None),
            Some(p) => match p.split_once(':') {
                Some((c, t)) => (Some(c.to_string()), Some(t.to_string())),
                None => (None, Some(p.to_string())),
            },
        };
        let (domain, routing_domain) = match domain_part.split_once('!') {
            Some((d, r)) => (d.to_string(), Some(r.to_string())),
            None => (domain_part.to_string(), None),
        };
        QueueName {
            campaign,
            tenant,
            domain,
            routing_domain,
        }
    }

    /// The name as text; an absent part is left out with its separator.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(c) = &self.campaign {
            s.push_str(c);
            s.push(':');
        }
        if let Some(t) = &self.tenant {
            s.push_str(t);
        }
        if self.campaign.is_some() || self.tenant.is_some() {
            s.push('@');
        }
        s.push_str(&self.domain);
        if let Some(r) = &self.routing_domain {
            s.push('!');
            s.push_str(r);
        }
        s
    }

    /// The domain that delivery routes on.
    pub fn routing_domain(&self) -> &str {
        self.routing_domain.as_deref().unwrap_or(&self.domain)
    }
}

/// Why a message's queue name cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NameError {
    /// A meta value the queue name is made from (`queue`, `campaign`,
    /// `tenant`, `routing_domain`) is not a string.
    #[error("meta '{key}' must be a string, not {value}")]
    NotAString {
        /// The meta key.
        key: String,
        /// The value it holds instead.
        value: Value,
    },
    /// The message has no recipient to take the domain from.
    #[error("message has no recipients")]
    NoRecipients,
}

fn meta_str(msg: &Message, key: &str) -> Result<Option<String>, NameError> {
    match msg.state().meta.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(NameError::NotAString {
            key: key.to_string(),
            value: other.clone(),
        }),
    }
}

/// The scheduled queue a message belongs in right now.
pub fn queue_name(msg: &Message) -> Result<String, NameError> {
    if let Some(q) = meta_str(msg, "queue")? {
        return Ok(q);
    }
    let campaign = meta_str(msg, "campaign")?;
    let tenant = meta_str(msg, "tenant")?;
    let routing_domain = meta_str(msg, "routing_domain")?;
    let recipient = msg
        .state()
        .recipients
        .first()
        .cloned()
        .ok_or(NameError::NoRecipients)?;
    let (_, domain) = split_address(&recipient);
    let name = QueueName {
        tenant: if campaign.is_some() {
            Some(tenant.unwrap_or_default())
        } else {
            tenant
        },
        campaign,
        domain: domain.to_ascii_lowercase(),
        routing_domain,
    };
    Ok(name.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageId;
    use serde_json::{Map, json};

    fn msg(meta: Value) -> crate::message::MessageRef {
        let Value::Object(meta) = meta else { panic!() };
        Message::new(
            MessageId::new(),
            "s@x".into(),
            vec!["u@Example.COM".into()],
            meta,
            vec![],
        )
    }

    /// Conformance scenario C1.
    #[test]
    fn names_follow_campaign_tenant_domain_routing() {
        let m = msg(json!({"tenant": "t1", "campaign": "c1"}));
        assert_eq!(queue_name(&m).unwrap(), "c1:t1@example.com");
        m.set_meta("routing_domain", json!("r.net"));
        assert_eq!(queue_name(&m).unwrap(), "c1:t1@example.com!r.net");
        let m = msg(json!({"campaign": "c1"}));
        assert_eq!(queue_name(&m).unwrap(), "c1:@example.com");
        let m = msg(json!({"tenant": "t1"}));
        assert_eq!(queue_name(&m).unwrap(), "t1@example.com");
        let m = msg(Value::Object(Map::new()));
        assert_eq!(queue_name(&m).unwrap(), "example.com");
        m.set_meta("queue", json!("[10.0.0.1]"));
        assert_eq!(queue_name(&m).unwrap(), "[10.0.0.1]");
        m.set_meta("queue", json!(5));
        assert!(queue_name(&m).is_err());
    }

    #[test]
    fn parse_is_the_inverse_of_render() {
        let q = QueueName::parse("c1:@example.com!r.net");
        assert_eq!(q.campaign.as_deref(), Some("c1"));
        assert_eq!(q.tenant.as_deref(), Some(""));
        assert_eq!(q.domain, "example.com");
        assert_eq!(q.routing_domain.as_deref(), Some("r.net"));
        for name in [
            "c1:t1@example.com!r.net",
            "t1@d",
            "d",
            "d!r",
            "c:@d",
            "[10.0.0.1]",
            "d:25",
        ] {
            assert_eq!(QueueName::parse(name).render(), name);
        }
        assert_eq!(QueueName::parse("t1@d").tenant.as_deref(), Some("t1"));
        assert_eq!(QueueName::parse("t1@d").campaign, None);
    }
}
