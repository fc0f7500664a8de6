//! Reports that come back: ARF complaint reports (RFC 5965, feedback
//! loops) and delivery status notifications (RFC 3464, out-of-band
//! bounces), parsed from a received message, with Sluice's own
//! supplemental trace header (`X-KumoRef`, added at reception) decoded
//! from the returned original so that a report names the recipient, id
//! and meta of the message it is about.
//!
//! mail-parser splits the MIME structure; the report fields are header
//! syntax, read by [`fields`].

pub mod fields;
#[cfg(test)]
mod tests;

use base64::Engine;
use fields::{Fields, blocks, typed};
use mail_parser::{MessageParser, MimeHeaders};
use serde::Serialize;
use serde_json::{Map, Value};

/// The supplemental trace header's default name (`trace_headers`'
/// `header_name`).
pub const TRACE_HEADER: &str = "X-KumoRef";

/// An address field of a report (`rfc822; user@example.com`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypedAddress {
    /// The address type, lowercased: `rfc822` nearly always.
    pub address_type: String,
    /// The address.
    pub address: String,
}

impl TypedAddress {
    fn parse(value: &str) -> TypedAddress {
        let (address_type, address) = typed(value);
        TypedAddress {
            address_type,
            address: address.trim_matches(['<', '>']).to_string(),
        }
    }
}

/// An RFC 5965 feedback report, as KumoMTA's `feedback_report` has it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackReport {
    /// `Feedback-Type`: abuse, fraud, virus, other, not-spam, auth-failure.
    pub feedback_type: String,
    /// `User-Agent`.
    pub user_agent: String,
    /// `Version`.
    pub version: String,
    /// `Arrival-Date`, as given.
    pub arrival_date: Option<String>,
    /// `Incidents`.
    pub incidents: Option<u32>,
    /// `Original-Envelope-Id`.
    pub original_envelope_id: Option<String>,
    /// `Original-Mail-From`.
    pub original_mail_from: Option<String>,
    /// `Reporting-MTA`.
    pub reporting_mta: Option<TypedAddress>,
    /// `Source-IP`.
    pub source_ip: Option<String>,
    /// `Authentication-Results`, each.
    pub authentication_results: Vec<String>,
    /// `Original-Rcpt-To`, each.
    pub original_rcpt_to: Vec<String>,
    /// `Reported-Domain`, each.
    pub reported_domain: Vec<String>,
    /// `Reported-URI`, each.
    pub reported_uri: Vec<String>,
    /// Fields this list does not name, by lowercase name.
    pub extensions: Map<String, Value>,
    /// The returned original (or its headers), as text.
    pub original_message: Option<String>,
    /// Its decoded supplemental trace header, when it has one of ours.
    pub supplemental_trace: Option<Value>,
}

/// A DSN's per-message fields (RFC 3464 §2.2).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PerMessage {
    /// `Original-Envelope-Id`.
    pub original_envelope_id: Option<String>,
    /// `Reporting-MTA`.
    pub reporting_mta: Option<TypedAddress>,
    /// `DSN-Gateway`.
    pub dsn_gateway: Option<TypedAddress>,
    /// `Received-From-MTA`.
    pub received_from_mta: Option<TypedAddress>,
    /// `Arrival-Date`, as given.
    pub arrival_date: Option<String>,
    /// Other fields, by lowercase name.
    pub extensions: Map<String, Value>,
}

/// A `Diagnostic-Code` (`smtp; 550 5.1.1 user unknown`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiagnosticCode {
    /// The diagnostic type, lowercased: `smtp` nearly always.
    pub diagnostic_type: String,
    /// The reply, as given.
    pub diagnostic: String,
}

/// One recipient's fields of a DSN (RFC 3464 §2.3).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PerRecipient {
    /// `Final-Recipient`.
    pub final_recipient: TypedAddress,
    /// `Action`: failed, delayed, delivered, relayed, expanded.
    pub action: String,
    /// `Status`: the enhanced status code (`5.1.1`).
    pub status: String,
    /// `Original-Recipient`.
    pub original_recipient: Option<TypedAddress>,
    /// `Remote-MTA`.
    pub remote_mta: Option<TypedAddress>,
    /// `Diagnostic-Code`.
    pub diagnostic_code: Option<DiagnosticCode>,
    /// `Last-Attempt-Date`, as given.
    pub last_attempt_date: Option<String>,
    /// `Final-Log-ID`.
    pub final_log_id: Option<String>,
    /// `Will-Retry-Until`, as given.
    pub will_retry_until: Option<String>,
    /// Other fields, by lowercase name.
    pub extensions: Map<String, Value>,
}

/// An RFC 3464 delivery status notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryReport {
    /// The per-message fields.
    pub per_message: PerMessage,
    /// One entry per recipient reported on.
    pub per_recipient: Vec<PerRecipient>,
    /// The returned original (or its headers), as text.
    pub original_message: Option<String>,
    /// Its decoded supplemental trace header, when it has one of ours.
    pub supplemental_trace: Option<Value>,
}

/// What a received message turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// An ARF complaint or feedback report.
    Feedback(Box<FeedbackReport>),
    /// A delivery status notification.
    Delivery(Box<DeliveryReport>),
}

/// Parse `message` as a report; `None` when it is neither kind (or lacks
/// the fields each must have).
pub fn parse(message: &[u8], trace_header: &str) -> Option<Report> {
    let parsed = MessageParser::default().parse(message)?;
    let mut report: Option<(&str, String)> = None;
    let mut original: Option<String> = None;
    for part in &parsed.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let (ctype, sub) = (
            ct.ctype().to_ascii_lowercase(),
            ct.subtype().unwrap_or_default().to_ascii_lowercase(),
        );
        let text = || String::from_utf8_lossy(part.contents()).into_owned();
        match (ctype.as_str(), sub.as_str()) {
            ("message", "feedback-report") if report.is_none() => {
                report = Some(("arf", text()));
            }
            ("message", "delivery-status" | "global-delivery-status") if report.is_none() => {
                report = Some(("dsn", text()));
            }
            ("message", "rfc822" | "global" | "rfc822-headers" | "global-headers")
            | ("text", "rfc822-headers")
                if original.is_none() =>
            {
                original = Some(text());
            }
            _ => {}
        }
    }
    let (kind, text) = report?;
    let trace = original
        .as_deref()
        .and_then(|o| supplemental_trace(o, trace_header));
    let blocks = blocks(&text);
    match kind {
        "arf" => feedback(blocks.first()?, original, trace).map(|r| Report::Feedback(Box::new(r))),
        _ => delivery(&blocks, original, trace).map(|r| Report::Delivery(Box::new(r))),
    }
}

fn extensions(fields: &Fields, known: &[&str]) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in &fields.0 {
        if !known.contains(&name.as_str()) {
            out.entry(name.clone())
                .or_insert_with(|| Value::String(value.clone()));
        }
    }
    out
}

fn owned(v: Option<&str>) -> Option<String> {
    v.map(str::to_string)
}

fn feedback(f: &Fields, original: Option<String>, trace: Option<Value>) -> Option<FeedbackReport> {
    const KNOWN: &[&str] = &[
        "feedback-type",
        "user-agent",
        "version",
        "arrival-date",
        "received-date",
        "incidents",
        "original-envelope-id",
        "original-mail-from",
        "reporting-mta",
        "source-ip",
        "authentication-results",
        "original-rcpt-to",
        "reported-domain",
        "reported-uri",
    ];
    let all = |name: &str| f.all(name).into_iter().map(str::to_string).collect();
    Some(FeedbackReport {
        // the three fields RFC 5965 §3.1 requires; Version is often left
        // out in the wild, so only the type is insisted on
        feedback_type: f.get("feedback-type")?.to_ascii_lowercase(),
        user_agent: f.get("user-agent").unwrap_or_default().to_string(),
        version: f.get("version").unwrap_or("1").to_string(),
        arrival_date: owned(f.get("arrival-date").or(f.get("received-date"))),
        incidents: f.get("incidents").and_then(|n| n.parse().ok()),
        original_envelope_id: owned(f.get("original-envelope-id")),
        original_mail_from: owned(f.get("original-mail-from")),
        reporting_mta: f.get("reporting-mta").map(TypedAddress::parse),
        source_ip: owned(f.get("source-ip")),
        authentication_results: all("authentication-results"),
        original_rcpt_to: all("original-rcpt-to"),
        reported_domain: all("reported-domain"),
        reported_uri: all("reported-uri"),
        extensions: extensions(f, KNOWN),
        original_message: original,
        supplemental_trace: trace,
    })
}

fn delivery(
    blocks: &[Fields],
    original: Option<String>,
    trace: Option<Value>,
) -> Option<DeliveryReport> {
    const MESSAGE: &[&str] = &[
        "original-envelope-id",
        "reporting-mta",
        "dsn-gateway",
        "received-from-mta",
        "arrival-date",
    ];
    const RECIPIENT: &[&str] = &[
        "final-recipient",
        "action",
        "status",
        "original-recipient",
        "remote-mta",
        "diagnostic-code",
        "last-attempt-date",
        "final-log-id",
        "will-retry-until",
    ];
    let (first, rest) = blocks.split_first()?;
    let per_message = PerMessage {
        original_envelope_id: owned(first.get("original-envelope-id")),
        reporting_mta: first.get("reporting-mta").map(TypedAddress::parse),
        dsn_gateway: first.get("dsn-gateway").map(TypedAddress::parse),
        received_from_mta: first.get("received-from-mta").map(TypedAddress::parse),
        arrival_date: owned(first.get("arrival-date")),
        extensions: extensions(first, MESSAGE),
    };
    let mut per_recipient = vec![];
    for f in rest {
        // Final-Recipient, Action and Status are required (§2.3)
        let (Some(rcpt), Some(action), Some(status)) =
            (f.get("final-recipient"), f.get("action"), f.get("status"))
        else {
            continue;
        };
        per_recipient.push(PerRecipient {
            final_recipient: TypedAddress::parse(rcpt),
            action: action.to_ascii_lowercase(),
            status: status
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
            original_recipient: f.get("original-recipient").map(TypedAddress::parse),
            remote_mta: f.get("remote-mta").map(TypedAddress::parse),
            diagnostic_code: f.get("diagnostic-code").map(|d| {
                let (diagnostic_type, diagnostic) = typed(d);
                DiagnosticCode {
                    diagnostic_type,
                    diagnostic: diagnostic.to_string(),
                }
            }),
            last_attempt_date: owned(f.get("last-attempt-date")),
            final_log_id: owned(f.get("final-log-id")),
            will_retry_until: owned(f.get("will-retry-until")),
            extensions: extensions(f, RECIPIENT),
        });
    }
    if per_recipient.is_empty() {
        return None;
    }
    Some(DeliveryReport {
        per_message,
        per_recipient,
        original_message: original,
        supplemental_trace: trace,
    })
}

/// The decoded supplemental trace header of a returned original: its
/// header block is searched for `name` (folded or not), the value base64
/// decoded and parsed as a JSON object carrying KumoMTA's `"_@_"` marker.
/// Anything else — no such header, bad base64, not our JSON — is `None`.
pub fn supplemental_trace(original: &str, name: &str) -> Option<Value> {
    let header_end = original
        .find("\r\n\r\n")
        .or_else(|| original.find("\n\n"))
        .unwrap_or(original.len());
    let fields = blocks(&original[..header_end]);
    let value = fields.first()?.get(&name.to_ascii_lowercase())?.to_string();
    let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .ok()?;
    let json: Value = serde_json::from_slice(&bytes).ok()?;
    json.get("_@_")?;
    Some(json)
}
