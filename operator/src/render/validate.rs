//! Each object's spec as the table its `kumo.make_*` call receives, checked
//! with the MTA's own parsers and config types (`sluice-common`), so the
//! operator rejects exactly what the MTA would. Errors name the field.

use super::{Fleet, Options, Rejection};
use crate::crd::{EgressPath, EgressPool, QueuePolicy};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use sluice_common::{duration::parse_duration, egress, queue_config, throttle::ThrottleSpec};

fn rejection(reason: &'static str, field: &str, message: impl std::fmt::Display) -> Rejection {
    Rejection {
        reason,
        message: format!("{field}: {message}"),
    }
}

fn duration(field: &str, value: &str) -> Result<Value, Rejection> {
    parse_duration(value).map_err(|e| rejection("InvalidDuration", field, e))?;
    Ok(json!(value))
}

/// A throttle, as written, or its share of a split fleet.
fn throttle(field: &str, value: &str, fleet: Fleet) -> Result<Value, Rejection> {
    let spec = value
        .parse::<ThrottleSpec>()
        .map_err(|e| rejection("InvalidThrottle", field, e))?;
    match fleet.divisor() {
        n if n > 1 && !spec.force_local => Ok(json!(spec.split(n).to_string())),
        _ => Ok(json!(value)),
    }
}

/// A connection limit's share of a split fleet: rounded down, at least 1.
fn connections(limit: u32, fleet: Fleet) -> Value {
    json!((limit / fleet.divisor()).max(1))
}

fn cidrs(field: &str, list: &[String]) -> Result<Value, Rejection> {
    for (i, c) in list.iter().enumerate() {
        egress::parse_cidr(c).map_err(|e| rejection("InvalidCidr", &format!("{field}[{i}]"), e))?;
    }
    Ok(json!(list))
}

/// The table must also be what the MTA's config type accepts.
fn accepted_by_mta<T: DeserializeOwned>(what: &str, table: &Value) -> Result<(), Rejection> {
    serde_path_to_error::deserialize::<_, T>(table.clone())
        .map(|_| ())
        .map_err(|e| {
            rejection(
                "InvalidSpec",
                "spec",
                format!("{what} rejects key {}: {}", e.path(), e.inner()),
            )
        })
}

fn insert_some(m: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    if let Some(v) = v {
        m.insert(key.into(), v);
    }
}

/// A QueuePolicy's `make_queue_config` table, and for the amqp protocol
/// the publisher the generated `constructor` event builds.
pub fn queue_policy(
    qp: &QueuePolicy,
    constructor: &str,
    options: &Options,
) -> Result<(Value, Option<Value>), Rejection> {
    let s = &qp.spec;
    let mut m = Map::new();
    // the generated file changes only through a reload, which bumps the
    // epoch: an edited object then applies at once, not after the 60 s Ttl
    m.insert("refresh_strategy".into(), json!("Epoch"));
    insert_some(
        &mut m,
        "egress_pool",
        s.egress_pool.as_ref().map(|p| json!(p)),
    );
    for (field, key, value) in [
        ("spec.maxAge", "max_age", &s.max_age),
        ("spec.retryInterval", "retry_interval", &s.retry_interval),
        (
            "spec.maxRetryInterval",
            "max_retry_interval",
            &s.max_retry_interval,
        ),
    ] {
        if let Some(v) = value {
            m.insert(key.into(), duration(field, v)?);
        }
    }
    if let Some(v) = &s.max_message_rate {
        m.insert(
            "max_message_rate".into(),
            throttle("spec.maxMessageRate", v, options.fleet)?,
        );
    }
    let mut publisher = None;
    if let Some(p) = &s.protocol {
        let set = [
            p.smtp.is_some(),
            p.maildir.is_some(),
            p.custom_lua.is_some(),
            p.amqp.is_some(),
        ];
        if set.iter().filter(|x| **x).count() != 1 {
            return Err(rejection(
                "InvalidSpec",
                "spec.protocol",
                "set exactly one of smtp, maildir, customLua, amqp",
            ));
        }
        let protocol = if let Some(smtp) = &p.smtp {
            let list: Vec<Value> = smtp
                .mx_list
                .iter()
                .map(|h| match &h.addr {
                    Some(addr) => json!({ "name": h.host, "addr": addr }),
                    None => json!(h.host),
                })
                .collect();
            if list.is_empty() {
                json!({ "smtp": {} })
            } else {
                json!({ "smtp": { "mx_list": list } })
            }
        } else if let Some(maildir) = &p.maildir {
            json!({ "maildir_path": maildir.path })
        } else if let Some(lua) = &p.custom_lua {
            json!({ "custom_lua": { "constructor": lua.constructor } })
        } else {
            let amqp = p.amqp.as_ref().expect("one protocol is set");
            let secret = &amqp.url_secret_ref;
            if secret.name.is_empty() || secret.key.is_empty() {
                return Err(rejection(
                    "InvalidSpec",
                    "spec.protocol.amqp.urlSecretRef",
                    "needs a name and a key",
                ));
            }
            let mut p = json!({
                "url_file": format!("{}/{}/{}", options.secrets_dir, secret.name, secret.key),
                "routing_key": amqp.routing_key,
            });
            if let Some(exchange) = &amqp.exchange {
                p["exchange"] = json!(exchange);
            }
            publisher = Some(p);
            json!({ "custom_lua": { "constructor": constructor } })
        };
        m.insert("protocol".into(), protocol);
    }
    if let Some(r) = &s.requeue {
        if r.after_attempts == 0 {
            return Err(rejection(
                "InvalidSpec",
                "spec.requeue.afterAttempts",
                "must be at least 1",
            ));
        }
        if r.queue.is_empty() {
            return Err(rejection(
                "InvalidSpec",
                "spec.requeue.queue",
                "must not be empty",
            ));
        }
    }
    let table = Value::Object(m);
    accepted_by_mta::<queue_config::QueueConfig>("make_queue_config", &table)?;
    Ok((table, publisher))
}

/// An EgressPool's `make_egress_pool` table and its sources'
/// `make_egress_source` tables, by source name.
pub fn egress_pool(pool: &EgressPool) -> Result<(Value, Vec<(String, Value)>), Rejection> {
    let s = &pool.spec;
    if s.sources.is_empty() {
        return Err(rejection(
            "InvalidSpec",
            "spec.sources",
            "needs at least one source",
        ));
    }
    let mut entries = Vec::new();
    let mut sources: Vec<(String, Value)> = Vec::new();
    for (i, src) in s.sources.iter().enumerate() {
        let field = format!("spec.sources[{i}]");
        if src.name.is_empty() {
            return Err(rejection(
                "InvalidSpec",
                &format!("{field}.name"),
                "must not be empty",
            ));
        }
        if sources.iter().any(|(n, _)| n == &src.name) {
            return Err(rejection(
                "InvalidSpec",
                &format!("{field}.name"),
                format!("source {:?} is listed twice", src.name),
            ));
        }
        let mut m = Map::new();
        m.insert("name".into(), json!(src.name));
        if let Some(a) = &src.source_address {
            a.parse::<std::net::IpAddr>().map_err(|e| {
                rejection(
                    "InvalidAddress",
                    &format!("{field}.sourceAddress"),
                    format!("{a:?}: {e}"),
                )
            })?;
            m.insert("source_address".into(), json!(a));
        }
        insert_some(
            &mut m,
            "ehlo_domain",
            src.ehlo_domain.as_ref().map(|v| json!(v)),
        );
        insert_some(&mut m, "remote_port", src.remote_port.map(|v| json!(v)));
        if let Some(t) = &src.ttl {
            m.insert("ttl".into(), duration(&format!("{field}.ttl"), t)?);
        }
        let table = Value::Object(m);
        accepted_by_mta::<egress::EgressSource>("make_egress_source", &table)?;
        sources.push((src.name.clone(), table));
        entries.push(json!({ "name": src.name, "weight": src.weight }));
    }
    let name = kube::ResourceExt::name_any(pool);
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("entries".into(), json!(entries));
    if let Some(t) = &s.ttl {
        m.insert("ttl".into(), duration("spec.ttl", t)?);
    }
    let table = Value::Object(m);
    accepted_by_mta::<egress::EgressPool>("make_egress_pool", &table)?;
    Ok((table, sources))
}

/// An EgressPath's `make_egress_path` table.
pub fn egress_path(path: &EgressPath, fleet: Fleet) -> Result<Value, Rejection> {
    let s = &path.spec;
    let mut m = Map::new();
    insert_some(
        &mut m,
        "connection_limit",
        s.connection_limit.map(|v| connections(v, fleet)),
    );
    insert_some(
        &mut m,
        "max_deliveries_per_connection",
        s.max_deliveries_per_connection.map(|v| json!(v)),
    );
    insert_some(&mut m, "max_ready", s.max_ready.map(|v| json!(v)));
    insert_some(&mut m, "smtp_port", s.smtp_port.map(|v| json!(v)));
    insert_some(
        &mut m,
        "ehlo_domain",
        s.ehlo_domain.as_ref().map(|v| json!(v)),
    );
    // the CRD's enum variants are spelled as KumoMTA's
    insert_some(&mut m, "enable_tls", s.enable_tls.map(|t| json!(t)));
    insert_some(
        &mut m,
        "refresh_strategy",
        s.refresh_strategy.map(|r| json!(r)),
    );
    if let Some(v) = &s.refresh_interval {
        m.insert(
            "refresh_interval".into(),
            duration("spec.refreshInterval", v)?,
        );
    }
    if let Some(v) = &s.max_connection_rate {
        m.insert(
            "max_connection_rate".into(),
            throttle("spec.maxConnectionRate", v, fleet)?,
        );
    }
    if let Some(v) = &s.max_message_rate {
        m.insert(
            "max_message_rate".into(),
            throttle("spec.maxMessageRate", v, fleet)?,
        );
    }
    if let Some(v) = &s.prohibited_hosts {
        m.insert("prohibited_hosts".into(), cidrs("spec.prohibitedHosts", v)?);
    }
    if let Some(v) = &s.skip_hosts {
        m.insert("skip_hosts".into(), cidrs("spec.skipHosts", v)?);
    }
    if let Some(t) = &s.timeouts {
        for (field, key, value) in [
            ("connect", "connect_timeout", &t.connect),
            ("banner", "banner_timeout", &t.banner),
            ("ehlo", "ehlo_timeout", &t.ehlo),
            ("mailFrom", "mail_from_timeout", &t.mail_from),
            ("rcptTo", "rcpt_to_timeout", &t.rcpt_to),
            ("data", "data_timeout", &t.data),
            ("dataDot", "data_dot_timeout", &t.data_dot),
            ("rset", "rset_timeout", &t.rset),
            ("starttls", "starttls_timeout", &t.starttls),
            ("idle", "idle_timeout", &t.idle),
        ] {
            if let Some(v) = value {
                m.insert(key.into(), duration(&format!("spec.timeouts.{field}"), v)?);
            }
        }
    }
    let table = Value::Object(m);
    accepted_by_mta::<egress::EgressPathConfig>("make_egress_path", &table)?;
    Ok(table)
}
