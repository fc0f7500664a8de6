//! The DATA command and the commit path: split the transaction, add trace
//! headers, run the reception events, spool (one group commit), log
//! Reception, reply 250, then queue.

use super::reports::{Arrival, examine, oob_records, reception_record};
use super::{Flow, Session, Transaction};
use crate::config::listener::{BatchHandling, InvalidLineEndings};
use crate::feedback::Report;
use crate::listener::io::ReadError;
use crate::log::{RecordType, Response};
use crate::message::{Message, MessageId, MessageRef, split_address};
use crate::policy::EventError;
use crate::queue::deferred::DEFERRED_QUEUE;
use base64::Engine;
use serde_json::{Value, json};

impl Session {
    pub(super) async fn data(&mut self, line: &str) -> Result<Flow, ReadError> {
        let rcpts_ok = self.tx.as_ref().is_some_and(|t| !t.recipients.is_empty());
        if !rcpts_ok {
            let text = if self.tx.is_none() {
                "5.5.0 MAIL FROM must be issued first"
            } else {
                "5.5.0 RCPT TO must be issued first"
            };
            self.error(503, text, Some(line));
            return Ok(Flow::Continue);
        }
        self.ok(354, "Send body; end with CRLF.CRLF");
        let cfg = self.config.clone();
        let body = self
            .conn
            .read_data(cfg.max_message_size, cfg.line_length_hard_limit)
            .await?;
        if let Some(t) = &self.conn.trace {
            t.read_body(&body.data);
        }
        if body.too_big {
            self.error(552, "5.3.4 message too big", Some("DATA"));
            self.tx = None;
            return Ok(Flow::Continue);
        }
        if body.line_too_long {
            self.error(500, "5.2.3 line too long", Some("DATA"));
            self.tx = None;
            return Ok(Flow::Continue);
        }
        if body.bare_line_ending && cfg.invalid_line_endings == InvalidLineEndings::Deny {
            self.error(
                552,
                "5.6.0 message contains bare CR or LF line endings, which are not permitted",
                Some("DATA"),
            );
            self.tx = None;
            return Ok(Flow::Continue);
        }
        let tx = self.tx.take().expect("checked above");
        let processing = tokio::time::timeout(
            cfg.data_processing_timeout,
            self.prepare_messages(&tx, body.data),
        )
        .await;
        let prepared = match processing {
            Err(_) => {
                let text = format!(
                    "4.4.5 data_processing_timeout exceeded ({})",
                    sluice_common::duration::format_duration(cfg.data_processing_timeout)
                );
                self.error(451, &text, Some("DATA"));
                return Ok(Flow::Continue);
            }
            Ok(Err(e)) => {
                self.tx = Some(tx);
                let flow = self.reject(&e, "DATA");
                self.tx = None;
                return Ok(flow);
            }
            Ok(Ok(prepared)) => prepared,
        };
        self.commit(prepared).await
    }

    /// Split the transaction, add trace headers, run the policy events and
    /// resolve every message's queue; nothing is spooled yet.
    async fn prepare_messages(
        &self,
        tx: &Transaction,
        data: Vec<u8>,
    ) -> Result<Vec<(MessageRef, String, Arrival)>, EventError> {
        let policy = &self.services.policy;
        let batches: Vec<Vec<String>> = match self.config.batch_handling {
            BatchHandling::BifurcateAlways => {
                tx.recipients.iter().map(|r| vec![r.clone()]).collect()
            }
            BatchHandling::BatchByDomain => {
                let mut by_domain: Vec<(String, Vec<String>)> = vec![];
                for r in &tx.recipients {
                    let d = split_address(r).1.to_ascii_lowercase();
                    match by_domain.iter_mut().find(|(k, _)| *k == d) {
                        Some((_, list)) => list.push(r.clone()),
                        None => by_domain.push((d, vec![r.clone()])),
                    }
                }
                by_domain.into_iter().map(|(_, l)| l).collect()
            }
        };
        let base_meta = self.meta.snapshot();
        // smtp_server_data sees the whole transaction once
        let whole = Message::new(
            MessageId::new(),
            tx.sender.clone(),
            tx.recipients.clone(),
            base_meta.clone(),
            data,
        );
        policy
            .message_event("smtp_server_data", Some(&whole), Some(&self.meta))
            .await?;
        let data = whole.data().expect("in memory");
        let mut out = vec![];
        for rcpts in batches {
            let rcpts_first = rcpts[0].clone();
            let id = MessageId::new();
            let mut body = self.trace_headers(id, &rcpts);
            body.extend_from_slice(&data);
            let msg = Message::new(
                id,
                tx.sender.clone(),
                rcpts,
                whole.state().meta.clone(),
                body,
            );
            if self.config.deferred_queue {
                // the policy runs later, off the client's clock (spec §6.4)
                msg.set_meta("queue", DEFERRED_QUEUE.into());
            } else {
                policy
                    .message_event("smtp_server_message_received", Some(&msg), Some(&self.meta))
                    .await?;
            }
            let queue = self
                .services
                .queues
                .route(&msg)
                .await
                .map_err(|e| EventError::Failed(e.to_string()))?;
            // as KumoMTA: the first recipient's disposition stands for the batch
            let first = tx.recipients.iter().position(|r| *r == rcpts_first);
            let disposition = first.map(|i| tx.dispositions[i]).unwrap_or_default();
            let arrival = match msg.data() {
                Some(d) => examine(&disposition, &d, &self.config.trace_headers.header_name),
                None => Arrival::default(),
            };
            out.push((msg, queue, arrival));
        }
        Ok(out)
    }

    fn trace_headers(&self, id: MessageId, rcpts: &[String]) -> Vec<u8> {
        let trace = &self.config.trace_headers;
        let mut out = Vec::with_capacity(512);
        if trace.supplemental_header {
            let mut obj = serde_json::Map::new();
            obj.insert("_@_".into(), json!("\\_/"));
            obj.insert("recipient".into(), json!(rcpts.first()));
            obj.insert("id".into(), json!(id.to_string()));
            let meta = self.meta.snapshot();
            for name in &trace.include_meta_names {
                if let Some(v) = meta.get(name) {
                    obj.insert(name.clone(), v.clone());
                }
            }
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(&Value::Object(obj)).unwrap_or_default());
            out.extend_from_slice(format!("{}: {encoded}\r\n", trace.header_name).as_bytes());
        }
        if trace.received_header {
            let with = match &self.tls {
                Some(_) => "ESMTPS",
                None => "ESMTP",
            };
            let tls = match &self.tls {
                Some((cipher, version)) => format!(" tls {version}:{cipher}"),
                None => String::new(),
            };
            let rcpt = match rcpts {
                [one] => format!("\r\n\tfor <{one}>"),
                _ => String::new(),
            };
            out.extend_from_slice(
                format!(
                    "Received: from {} ({})\r\n\tby {} (Sluice) with {with}{tls} id {id}{rcpt};\r\n\t{}\r\n",
                    self.ehlo.as_deref().unwrap_or("unknown"),
                    self.peer.ip(),
                    self.hostname(),
                    chrono::Utc::now().to_rfc2822(),
                )
                .as_bytes(),
            );
        }
        out
    }

    /// Spool every message (one group commit; not with `deferred_spool`),
    /// log Reception, queue, reply 250.
    async fn commit(
        &mut self,
        prepared: Vec<(MessageRef, String, Arrival)>,
    ) -> Result<Flow, ReadError> {
        let deferred_spool = self.config.deferred_spool;
        // what is not relayed (a logged-then-dropped report, a message
        // accepted only as a possible report) is never spooled
        let kept: Vec<(MessageRef, String)> = prepared
            .iter()
            .filter(|(_, _, a)| a.relay)
            .map(|(m, q, _)| (m.clone(), q.clone()))
            .collect();
        if let Err(e) = self.services.queues.admit(&kept, deferred_spool).await {
            tracing::error!("spool write failed: {e}");
            self.error(
                451,
                "4.4.5 unable to spool the message, try again later",
                Some("DATA"),
            );
            return Ok(Flow::Continue);
        }
        let ids: Vec<String> = prepared.iter().map(|(m, ..)| m.id.to_string()).collect();
        // the 250 goes out before anything is queued, so no delivery can
        // happen for a message whose client never saw its 250
        self.ok(250, &ids_reply(&ids));
        let sent = self.conn.flush().await;
        let queues = self.services.queues.clone();
        for (msg, queue, arrival) in prepared {
            let mut rec =
                queues.record(RecordType::Reception, &msg, &queue, Response::new(250, ""));
            rec.peer_address = Some(self.peer_address());
            rec.reception_protocol = Some("ESMTP".into());
            if let Some((cipher, version)) = &self.tls {
                rec.tls_cipher = Some(cipher.clone());
                rec.tls_protocol_version = Some(version.clone());
            }
            let rec = reception_record(rec, arrival.report.as_ref());
            let oob = match &arrival.report {
                Some(Report::Delivery(dsn)) => oob_records(&rec, dsn),
                _ => vec![],
            };
            queues.log(rec);
            for r in oob {
                queues.log(r);
            }
            if arrival.relay && queue != "null" {
                queues.insert(msg, &queue);
            }
        }
        // spooled messages are queued even if the client has gone
        sent?;
        Ok(Flow::Continue)
    }
}

/// `OK ids=...`, kept under RFC 5321's 512-octet reply limit: a transaction
/// with many recipients lists the first ids and how many more there are.
fn ids_reply(ids: &[String]) -> String {
    let mut out = String::from("OK ids=");
    for (i, id) in ids.iter().enumerate() {
        if out.len() + id.len() + 20 > 500 {
            out.push_str(&format!("(+{} more)", ids.len() - i));
            break;
        }
        out.push_str(id);
        out.push(' ');
    }
    out.truncate(out.trim_end().len());
    out
}
