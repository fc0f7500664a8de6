//! AMQP message properties and publish parameters, as named in KumoMTA's API.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde::Deserialize;

/// AMQP message properties, as named in KumoMTA's API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Properties {
    pub(super) content_type: Option<String>,
    pub(super) content_encoding: Option<String>,
    pub(super) headers: Option<serde_json::Map<String, serde_json::Value>>,
    pub(super) delivery_mode: Option<u8>,
    pub(super) priority: Option<u8>,
    pub(super) correlation_id: Option<String>,
    pub(super) reply_to: Option<String>,
    pub(super) expiration: Option<String>,
    pub(super) message_id: Option<String>,
    pub(super) timestamp: Option<u64>,
    #[serde(rename = "type", alias = "kind")]
    pub(super) kind: Option<String>,
    pub(super) user_id: Option<String>,
    pub(super) app_id: Option<String>,
    pub(super) cluster_id: Option<String>,
}

fn amqp_value(v: &serde_json::Value) -> AMQPValue {
    match v {
        serde_json::Value::Bool(b) => AMQPValue::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        serde_json::Value::Null => AMQPValue::Void,
        other => AMQPValue::LongString(LongString::from(other.to_string().as_bytes())),
    }
}

impl Properties {
    pub(super) fn build(self) -> BasicProperties {
        let mut p = BasicProperties::default();
        let short = |s: String| ShortString::from(s);
        if let Some(v) = self.content_type {
            p = p.with_content_type(short(v));
        }
        if let Some(v) = self.content_encoding {
            p = p.with_content_encoding(short(v));
        }
        if let Some(h) = self.headers {
            let mut table = FieldTable::default();
            for (k, v) in &h {
                table.insert(short(k.clone()), amqp_value(v));
            }
            p = p.with_headers(table);
        }
        if let Some(v) = self.delivery_mode {
            p = p.with_delivery_mode(v);
        }
        if let Some(v) = self.priority {
            p = p.with_priority(v);
        }
        if let Some(v) = self.correlation_id {
            p = p.with_correlation_id(short(v));
        }
        if let Some(v) = self.reply_to {
            p = p.with_reply_to(short(v));
        }
        if let Some(v) = self.expiration {
            p = p.with_expiration(short(v));
        }
        if let Some(v) = self.message_id {
            p = p.with_message_id(short(v));
        }
        if let Some(v) = self.timestamp {
            p = p.with_timestamp(v);
        }
        if let Some(v) = self.kind {
            p = p.with_type(short(v));
        }
        if let Some(v) = self.user_id {
            p = p.with_user_id(short(v));
        }
        if let Some(v) = self.app_id {
            p = p.with_app_id(short(v));
        }
        if let Some(v) = self.cluster_id {
            p = p.with_cluster_id(short(v));
        }
        p
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishOptions {
    #[serde(default)]
    pub(super) mandatory: bool,
    #[serde(default)]
    pub(super) immediate: bool,
}

/// `client:publish{...}` parameters (the payload is taken out first: it may
/// be binary).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishParams {
    pub(super) routing_key: String,
    #[serde(default)]
    pub(super) exchange: String,
    #[serde(default)]
    pub(super) options: PublishOptions,
    #[serde(default)]
    pub(super) properties: Properties,
}
