//! Log records (spec §8): the JSON objects every step of a message's life
//! writes, in KumoMTA's shape, and the SMTP response they carry.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub enum RecordType {
    Reception,
    Delivery,
    Bounce,
    TransientFailure,
    Expiration,
    AdminBounce,
    Rejection,
    AdminRebind,
    DeferredInjectionRebind,
    Delayed,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Response {
    pub code: u16,
    pub enhanced_code: Option<EnhancedCode>,
    pub content: String,
    pub command: Option<String>,
}

impl Response {
    /// Build a response from a code and text that may start with an enhanced
    /// status code (`"5.7.1 relaying not permitted"`).
    pub fn new(code: u16, text: &str) -> Self {
        let (enhanced_code, content) = parse_enhanced(text);
        Response {
            code,
            enhanced_code,
            content: content.to_string(),
            command: None,
        }
    }

    pub fn with_command(mut self, command: &str) -> Self {
        self.command = Some(command.to_string());
        self
    }

    /// The reply line as an SMTP peer would see it.
    pub fn to_smtp_line(&self) -> String {
        match &self.enhanced_code {
            Some(e) => format!(
                "{} {}.{}.{} {}",
                self.code, e.class, e.subject, e.detail, self.content
            ),
            None => format!("{} {}", self.code, self.content),
        }
    }
}

fn parse_enhanced(text: &str) -> (Option<EnhancedCode>, &str) {
    let (first, rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut parts = first.split('.');
    let (Some(c), Some(s), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (None, text);
    };
    match (c.parse::<u8>(), s.parse::<u16>(), d.parse::<u16>()) {
        (Ok(class @ 2..=5), Ok(subject), Ok(detail)) => (
            Some(EnhancedCode {
                class,
                subject,
                detail,
            }),
            rest,
        ),
        _ => (None, text),
    }
}

/// Why a message waits without an attempt (a `Delayed` record): what the
/// metrics count by, and what KumoMTA writes as the response's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DelayReason {
    /// Its scheduling (`set_scheduling`) holds it for later.
    ScheduledForLater,
    /// The scheduled queue's `max_message_rate`.
    MessageRateThrottle,
    /// Its ready queue holds `max_ready` already.
    ReadyQueueWasFull,
    /// A path throttle asked for longer than a connection may idle.
    ReadyQueueThrottled,
    /// An admin suspension holds its queue.
    AdminSuspended,
}

impl DelayReason {
    /// A stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            DelayReason::ScheduledForLater => "scheduled_for_later",
            DelayReason::MessageRateThrottle => "message_rate_throttle",
            DelayReason::ReadyQueueWasFull => "ready_queue_full",
            DelayReason::ReadyQueueThrottled => "ready_queue_throttled",
            DelayReason::AdminSuspended => "admin_suspended",
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerAddress {
    pub name: String,
    pub addr: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogRecord {
    #[serde(rename = "type")]
    pub kind: RecordType,
    pub id: String,
    pub sender: String,
    /// A string for one recipient, an array for several.
    pub recipient: Value,
    pub queue: String,
    pub site: String,
    pub size: usize,
    pub response: Response,
    pub peer_address: Option<PeerAddress>,
    pub timestamp: i64,
    pub event_time: String,
    pub created: String,
    pub created_time: i64,
    pub num_attempts: u16,
    pub bounce_classification: &'static str,
    pub egress_pool: Option<String>,
    pub egress_source: Option<String>,
    pub source_address: Option<Value>,
    pub feedback_report: Option<Value>,
    pub meta: Map<String, Value>,
    pub headers: Map<String, Value>,
    pub delivery_protocol: Option<String>,
    pub reception_protocol: Option<String>,
    pub nodeid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cipher: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_protocol_version: Option<String>,
    /// The full message meta, for the per-sink `meta` selection; not logged.
    #[serde(skip)]
    pub all_meta: Map<String, Value>,
    /// Header block of the message, for the per-sink `headers` selection.
    #[serde(skip)]
    pub header_block: Option<String>,
    /// Exact creation time, for latency metrics.
    #[serde(skip)]
    pub created_at: Option<DateTime<Utc>>,
    /// Why a `Delayed` record's message waits, for the metrics.
    #[serde(skip)]
    pub delay_reason: Option<DelayReason>,
}

impl LogRecord {
    pub fn new(kind: RecordType, id: String, response: Response) -> Self {
        let now = Utc::now();
        LogRecord {
            kind,
            id,
            sender: String::new(),
            recipient: Value::String(String::new()),
            queue: String::new(),
            site: String::new(),
            size: 0,
            response,
            peer_address: None,
            timestamp: now.timestamp(),
            event_time: now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            created: String::new(),
            created_time: 0,
            num_attempts: 0,
            bounce_classification: "Uncategorized",
            egress_pool: None,
            egress_source: None,
            source_address: None,
            feedback_report: None,
            meta: Map::new(),
            headers: Map::new(),
            delivery_protocol: None,
            reception_protocol: None,
            nodeid: String::new(),
            session_id: None,
            tls_cipher: None,
            tls_protocol_version: None,
            all_meta: Map::new(),
            header_block: None,
            created_at: None,
            delay_reason: None,
        }
    }

    pub fn set_created(&mut self, created: DateTime<Utc>) {
        self.created = created.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        self.created_time = created.timestamp();
        self.created_at = Some(created);
    }

    pub fn set_recipients(&mut self, recipients: &[String]) {
        self.recipient = match recipients {
            [one] => Value::String(one.clone()),
            many => Value::Array(many.iter().cloned().map(Value::String).collect()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_are_split_from_the_text() {
        let r = Response::new(550, "5.7.1 relaying not permitted");
        assert_eq!(
            r.enhanced_code,
            Some(EnhancedCode {
                class: 5,
                subject: 7,
                detail: 1
            })
        );
        assert_eq!(r.content, "relaying not permitted");
        assert_eq!(r.to_smtp_line(), "550 5.7.1 relaying not permitted");
        let r = Response::new(400, "KumoMTA internal: x");
        assert_eq!(r.enhanced_code, None);
        assert_eq!(r.content, "KumoMTA internal: x");
    }
}
