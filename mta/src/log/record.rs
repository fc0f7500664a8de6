//! Log records (spec §8): the JSON objects every step of a message's life
//! writes, in KumoMTA's shape, and the SMTP response they carry.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A record's `type`: the event it reports, named as in KumoMTA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub enum RecordType {
    /// A message was accepted over SMTP or HTTP.
    Reception,
    /// An attempt delivered the message to the record's recipients.
    Delivery,
    /// The message failed permanently for the record's recipients, which are
    /// dropped.
    Bounce,
    /// An attempt failed temporarily; the message will be tried again.
    TransientFailure,
    /// The message was given up undelivered (too old, past its `expires` time,
    /// or with an unusable queue name) and removed.
    Expiration,
    /// An admin bounce rule (`/api/admin/bounce/v1`) removed the message.
    AdminBounce,
    /// The SMTP server answered the client with a 4xx or 5xx; the record has no
    /// message id.
    Rejection,
    /// The message was moved to another queue by an admin action or the
    /// policy: into an xfer queue (`/api/admin/xfer/v1`, `kumo.xfer.xfer`),
    /// or out of one (`/api/admin/xfer/cancel/v1`); the response says from
    /// where to where, and why.
    AdminRebind,
    /// The message was handed to another node, which spooled it; it is
    /// removed here. The response names the node's id for it.
    XferOut,
    /// The message arrived from another node (`peer_address` is that node)
    /// and is queued here as it was there.
    XferIn,
    /// A `deferred_queue` message left the deferred queue for the queue
    /// `smtp_server_message_deferred_inject` gave it.
    DeferredInjectionRebind,
    /// The message waits without an attempt (scheduling, a throttle, a full
    /// ready queue, a suspension); `delay_reason` says why.
    Delayed,
    /// An ARF feedback report (RFC 5965) arrived for a listener domain with
    /// `log_arf`: logged in place of its Reception record, the parsed report
    /// in `feedback_report`.
    Feedback,
    /// An out-of-band bounce (an RFC 3464 DSN) arrived for a listener domain
    /// with `log_oob`: one record per failed recipient it reports, after the
    /// report's Reception record.
    #[serde(rename = "OOB")]
    Oob,
}

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EnhancedCode {
    /// 2 (success), 4 (transient) or 5 (permanent).
    pub class: u8,
    /// The subject, 7 in `5.7.1`.
    pub subject: u16,
    /// The detail, 1 in `5.7.1`.
    pub detail: u16,
}

/// The SMTP response a record carries: the reply that decided the event, or one
/// Sluice composed for it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Response {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code the reply text opened with, if any.
    pub enhanced_code: Option<EnhancedCode>,
    /// The reply text after the enhanced code.
    pub content: String,
    /// The command that drew the reply, on Rejection records (AUTH credentials
    /// redacted); otherwise `None`.
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

    /// The same response, with `command` set.
    pub fn with_command(mut self, command: &str) -> Self {
        self.command = Some(command.to_string());
        self
    }

    /// The response as the bounce classifier's rules see it: one line,
    /// `code enhanced-code text`.
    pub fn to_single_line(&self) -> String {
        let enhanced = self
            .enhanced_code
            .as_ref()
            .map(|e| (e.class, e.subject, e.detail));
        crate::bounce::single_line(self.code, enhanced, &self.content)
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
    /// Shaping automation suspended its path (`Suspend`).
    ReadyQueueSuspended,
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
            DelayReason::ReadyQueueSuspended => "ready_queue_suspended",
        }
    }
}

/// The far end of the connection an event happened on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerAddress {
    /// Its name: the client's EHLO name on reception, the host connected to on
    /// delivery; empty when unknown.
    pub name: String,
    /// Its IP address, as text.
    pub addr: String,
}

/// One log record: a JSON line in KumoMTA's shape. The fields after
/// `tls_protocol_version` are not written; they serve the sinks' selections and
/// the metrics.
#[derive(Debug, Clone, Serialize)]
pub struct LogRecord {
    /// The event this record reports (`type` in the JSON).
    #[serde(rename = "type")]
    pub kind: RecordType,
    /// The message id, 32 hex digits; empty on a Rejection.
    pub id: String,
    /// The envelope sender.
    pub sender: String,
    /// A string for one recipient, an array for several.
    pub recipient: Value,
    /// The message's scheduled queue; empty when it has none (a Rejection, an
    /// unusable queue name).
    pub queue: String,
    /// The ready queue (`source->site@protocol`) of the attempt, or that a
    /// Delayed message was throttled in; otherwise empty.
    pub site: String,
    /// The message's size in bytes (headers and body); 0 on a Rejection.
    pub size: usize,
    /// The response that decided the event: the remote reply of an attempt, the
    /// reply sent to a client, or one Sluice composed.
    pub response: Response,
    /// The client on Reception and Rejection, the host delivered to on Delivery
    /// and Bounce; otherwise `None`.
    pub peer_address: Option<PeerAddress>,
    /// When the event happened, in unix seconds.
    pub timestamp: i64,
    /// When the event happened: RFC 3339, UTC, microseconds.
    pub event_time: String,
    /// When the message was created (from its id): RFC 3339, UTC, microseconds;
    /// empty on a Rejection.
    pub created: String,
    /// When the message was created, in unix seconds; 0 on a Rejection.
    pub created_time: i64,
    /// The message's attempt count when the record was made: it rises after
    /// each transient failure, so a record of a first attempt has 0.
    pub num_attempts: u16,
    /// The bounce classification (`configure_bounce_classifier`) of a
    /// Bounce, TransientFailure or Expiration; otherwise, or without a
    /// classifier, `Uncategorized`.
    pub bounce_classification: crate::bounce::Label,
    /// The queue's `egress_pool` (`unspecified` when unset), on records of an
    /// attempt through a ready queue.
    pub egress_pool: Option<String>,
    /// The egress source of that ready queue (its name before `->`).
    pub egress_source: Option<String>,
    /// The provider the attempt's path belongs to (its egress path's
    /// `provider_name`, else its queue's), as KumoMTA logs it; `null`
    /// without one.
    pub provider_name: Option<String>,
    /// KumoMTA's local address of the delivery connection; Sluice leaves it
    /// `null`.
    pub source_address: Option<Value>,
    /// The parsed ARF feedback report of a Feedback record; otherwise `null`.
    pub feedback_report: Option<Value>,
    /// Message meta, as the log's `meta` patterns select it; a Rejection logged
    /// without patterns carries its session's meta.
    pub meta: Map<String, Value>,
    /// Message headers, as the log's `headers` patterns select them, by
    /// lowercase name.
    pub headers: Map<String, Value>,
    /// The protocol of the attempt behind the record (`ESMTP`, `Maildir`,
    /// `DeferredSmtpInjection`, a Lua one); `None` when there was no attempt.
    pub delivery_protocol: Option<String>,
    /// How the message arrived: `ESMTP`, `HTTP`, or `LogRecord` for a log
    /// hook's message.
    pub reception_protocol: Option<String>,
    /// The id of the node that wrote the record (`SLUICE_NODE_ID`,
    /// `KUMO_NODE_ID` or the host name).
    pub nodeid: String,
    /// KumoMTA's session id; Sluice sets none, so the key is left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The TLS cipher suite of the connection the event happened on; left out
    /// without TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cipher: Option<String>,
    /// That connection's TLS version; left out without TLS.
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

/// A ready queue's name (`source->site@protocol`, a record's `site`) as
/// its source, when it names one, and its site.
pub fn split_ready_queue(name: &str) -> (Option<&str>, &str) {
    let (source, rest) = match name.split_once("->") {
        Some((s, r)) => (Some(s), r),
        None => (None, name),
    };
    (source, rest.rsplit_once('@').map_or(rest, |(s, _)| s))
}

impl LogRecord {
    /// A record of `kind` for message `id` with `response`, stamped now; the
    /// other fields are empty for the caller to fill.
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
            bounce_classification: crate::bounce::Label::uncategorized(),
            egress_pool: None,
            egress_source: None,
            provider_name: None,
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

    /// Set `created` and `created_time` from the message's creation time.
    pub fn set_created(&mut self, created: DateTime<Utc>) {
        self.created = created.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        self.created_time = created.timestamp();
        self.created_at = Some(created);
    }

    /// The first recipient of `recipient` (string or array); empty when
    /// there is none.
    pub fn first_recipient(&self) -> &str {
        match &self.recipient {
            Value::String(s) => s,
            Value::Array(a) => a.first().and_then(Value::as_str).unwrap_or_default(),
            _ => "",
        }
    }

    /// Set `recipient`: a string for one recipient, an array for several.
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
