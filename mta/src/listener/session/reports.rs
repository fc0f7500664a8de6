//! Listener domains in a session (KumoMTA's `get_listener_domain`): the
//! relay decision at RCPT, with each domain's answer asked once per
//! session, and at DATA the reports a listener domain takes in — an ARF
//! report's `Feedback` record in place of its Reception record, a DSN's
//! `OOB` records (one per failed recipient) after it — and whether the
//! message is then relayed or dropped.

use super::Session;
use crate::config::listener_domain::{ListenerDomain, RelayDisposition};
use crate::feedback::{self, DeliveryReport, Report};
use crate::log::{EnhancedCode, LogRecord, PeerAddress, RecordType, Response};
use crate::message::split_address;
use crate::policy::EventError;
use serde_json::{Map, Value};
use std::sync::Arc;

/// `get_listener_domain`'s answers in this session, by lowercase domain.
pub(super) type DomainCache = std::collections::HashMap<String, Option<Arc<ListenerDomain>>>;

impl Session {
    /// The listener domain the policy gives `domain`, asked once per
    /// session; `None` for the empty domain of a null sender.
    async fn listener_domain(
        &mut self,
        domain: &str,
    ) -> Result<Option<Arc<ListenerDomain>>, EventError> {
        if domain.is_empty() {
            return Ok(None);
        }
        let key = domain.to_ascii_lowercase();
        if let Some(known) = self.listener_domains.get(&key) {
            return Ok(known.clone());
        }
        let answer = self
            .services
            .policy
            .get_listener_domain(&key, &self.config.listen, &self.meta)
            .await?
            .map(Arc::new);
        self.listener_domains.insert(key, answer.clone());
        Ok(answer)
    }

    /// What may be done with mail from `sender` to `recipient` in this
    /// session (KumoMTA's `check_relaying`).
    pub(super) async fn relay_disposition(
        &mut self,
        sender: &str,
        recipient: &str,
    ) -> Result<RelayDisposition, EventError> {
        let client = self.authz.is_some() || self.config.may_relay(self.peer.ip());
        if !self
            .services
            .policy
            .has_handler(crate::policy::lua_listener_domain::EVENT)
        {
            return Ok(RelayDisposition::decide(client, None, None, self.peer.ip()));
        }
        let from = self.listener_domain(split_address(sender).1).await?;
        let to = self.listener_domain(split_address(recipient).1).await?;
        Ok(RelayDisposition::decide(
            client,
            from.as_deref(),
            to.as_deref(),
            self.peer.ip(),
        ))
    }
}

/// What DATA found in one message, judged by its first recipient's
/// disposition.
#[derive(Debug, Default)]
pub(super) struct Arrival {
    /// The report it carries, when the disposition logs reports of its kind.
    pub report: Option<Report>,
    /// Whether it is spooled and queued; otherwise it is dropped after its
    /// records are logged.
    pub relay: bool,
}

/// Look at `data` as the disposition asks: parsed only when a report kind
/// is logged; a logged report is relayed as its disposition says, anything
/// else as the relay decision says.
pub(super) fn examine(disposition: &RelayDisposition, data: &[u8], trace_header: &str) -> Arrival {
    let (arf, oob) = (disposition.log_arf, disposition.log_oob);
    if !arf.logs() && !oob.logs() {
        return Arrival {
            report: None,
            relay: disposition.relay,
        };
    }
    match feedback::parse(data, trace_header) {
        Some(r @ Report::Feedback(_)) if arf.logs() => Arrival {
            report: Some(r),
            relay: arf.relays(),
        },
        Some(r @ Report::Delivery(_)) if oob.logs() => Arrival {
            report: Some(r),
            relay: oob.relays(),
        },
        _ => Arrival {
            report: None,
            relay: disposition.relay,
        },
    }
}

/// The trace fields worth carrying into a record's meta (tenant, campaign
/// and whatever `include_meta_names` added): all but the marker and the
/// recipient, which has its own place.
fn trace_meta(trace: Option<&Value>, meta: &mut Map<String, Value>) {
    if let Some(Value::Object(fields)) = trace {
        for (k, v) in fields {
            if k != "_@_" && k != "recipient" {
                meta.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Turn the message's Reception record into what its report makes it: a
/// Feedback record for an ARF report; unchanged otherwise.
pub(super) fn reception_record(mut rec: LogRecord, report: Option<&Report>) -> LogRecord {
    if let Some(Report::Feedback(f)) = report {
        rec.kind = RecordType::Feedback;
        rec.feedback_report = serde_json::to_value(f).ok();
        trace_meta(f.supplemental_trace.as_ref(), &mut rec.all_meta);
    }
    rec
}

/// The OOB records of a DSN, one per recipient it reports as failed, made
/// from the report message's Reception record `reception`. The bounce went
/// to the original sender, so the report's recipient is the sender here;
/// the recipient is the one the original was sent to: the trace header's
/// when the DSN is about one recipient, else the DSN's own.
pub(super) fn oob_records(reception: &LogRecord, report: &DeliveryReport) -> Vec<LogRecord> {
    let failed: Vec<_> = report
        .per_recipient
        .iter()
        .filter(|r| r.action == "failed")
        .collect();
    let traced = report
        .supplemental_trace
        .as_ref()
        .and_then(|t| t.get("recipient"))
        .and_then(Value::as_str)
        .filter(|_| failed.len() == 1);
    let sender = reception.first_recipient().to_string();
    failed
        .into_iter()
        .map(|r| {
            let mut rec = reception.clone();
            rec.kind = RecordType::Oob;
            rec.sender = sender.clone();
            let dsn_recipient = r
                .original_recipient
                .as_ref()
                .unwrap_or(&r.final_recipient)
                .address
                .clone();
            rec.recipient = Value::String(traced.map(str::to_string).unwrap_or(dsn_recipient));
            rec.response = dsn_response(r.diagnostic_code.as_ref(), &r.status);
            rec.size = 0;
            rec.num_attempts = 0;
            rec.peer_address = Some(PeerAddress {
                name: report
                    .per_message
                    .reporting_mta
                    .as_ref()
                    .map(|m| m.address.clone())
                    .unwrap_or_default(),
                addr: reception
                    .peer_address
                    .as_ref()
                    .map(|p| p.addr.clone())
                    .unwrap_or_default(),
            });
            trace_meta(report.supplemental_trace.as_ref(), &mut rec.all_meta);
            rec
        })
        .collect()
}

/// The reply a DSN recipient reports: the code and text of an `smtp`
/// diagnostic (550 when there is none or it has no code), the enhanced
/// code from `Status`.
fn dsn_response(diagnostic: Option<&feedback::DiagnosticCode>, status: &str) -> Response {
    let (code, text) = match diagnostic {
        Some(d) if d.diagnostic_type == "smtp" => match d.diagnostic.split_once(' ') {
            Some((code, rest)) if code.len() == 3 && code.parse::<u16>().is_ok() => {
                (code.parse().unwrap_or(550), rest.trim())
            }
            _ => (550, d.diagnostic.as_str()),
        },
        Some(d) => (550, d.diagnostic.as_str()),
        None => (550, ""),
    };
    let mut response = Response::new(code, text);
    let mut parts = status.split('.').map(str::parse::<u16>);
    if let (Some(Ok(class @ 2..=5)), Some(Ok(subject)), Some(Ok(detail))) =
        (parts.next(), parts.next(), parts.next())
    {
        response.enhanced_code = Some(EnhancedCode {
            class: class as u8,
            subject,
            detail,
        });
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_replies_take_the_smtp_diagnostic_and_the_status() {
        let d = |t: &str, v: &str| feedback::DiagnosticCode {
            diagnostic_type: t.into(),
            diagnostic: v.into(),
        };
        let r = dsn_response(Some(&d("smtp", "550 5.1.1 <a@b> user unknown")), "5.1.1");
        assert_eq!(r.to_smtp_line(), "550 5.1.1 <a@b> user unknown");
        // the Status wins over a text that says otherwise
        let r = dsn_response(Some(&d("smtp", "554 mailbox disabled")), "5.2.1");
        assert_eq!(r.to_smtp_line(), "554 5.2.1 mailbox disabled");
        let r = dsn_response(Some(&d("x-unix", "no such user")), "5.1.1");
        assert_eq!(r.to_smtp_line(), "550 5.1.1 no such user");
        assert_eq!(dsn_response(None, "4.4.7").to_smtp_line(), "550 4.4.7 ");
    }
}
