//! One ESMTP session (spec §6.2): the command state machine, limits, relay
//! control, STARTTLS, and the DATA commit path (policy, spool, queue, 250).

use super::io::{Conn, Line, ReadError};
use super::{Listener, Services};
use crate::listener::config::{BatchHandling, InvalidLineEndings};
use crate::log::{LogRecord, PeerAddress, RecordType, Response};
use crate::message::{Message, MessageId, MessageRef, split_address};
use crate::policy::{ConnMeta, EventError};
use crate::queue::deferred::DEFERRED_QUEUE;
use crate::smtp::{Command, parse_command};
use base64::Engine;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

/// Consecutive errors after which the session is closed (as Postfix's
/// smtpd_hard_error_limit).
const MAX_ERRORS: usize = 20;
const COMMAND_LINE_LIMIT: usize = 4096;

struct Transaction {
    sender: String,
    recipients: Vec<String>,
}

struct Session {
    conn: Conn,
    peer: SocketAddr,
    listener: Arc<Listener>,
    services: Arc<Services>,
    meta: ConnMeta,
    ehlo: Option<String>,
    tls: Option<(String, String)>,
    tx: Option<Transaction>,
    accepted_rcpts: usize,
    errors: usize,
}

enum Flow {
    Continue,
    Close,
}

pub async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    listener: Arc<Listener>,
    services: Arc<Services>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let meta = ConnMeta::default();
    for (k, v) in &listener.config.meta {
        meta.set(k, v.clone());
    }
    meta.set("received_from", json!(peer.to_string()));
    if let Some(local) = local {
        meta.set("received_via", json!(local.to_string()));
    }
    meta.set("hostname", json!(listener.hostname));
    meta.set("reception_protocol", json!("ESMTP"));
    let mut s = Session {
        conn: Conn::new(Box::new(stream), listener.config.client_timeout),
        peer,
        listener,
        services,
        meta,
        ehlo: None,
        tls: None,
        tx: None,
        accepted_rcpts: 0,
        errors: 0,
    };
    let lifecycle = s.services.lifecycle.clone();
    let _busy = lifecycle.session();
    let metrics = s.services.metrics.clone();
    metrics
        .connections_total
        .with_label_values(&["esmtp_listener"])
        .inc();
    let open = metrics.connections.with_label_values(&["esmtp_listener"]);
    open.inc();
    if let Err(e) = s.serve().await {
        tracing::debug!(peer = %s.peer, "session ended: {e}");
    }
    open.dec();
    // free the slot before the socket closes, so a client that saw the
    // close can always connect again
    drop(slot);
    drop(s);
}

impl Session {
    fn hostname(&self) -> &str {
        &self.listener.hostname
    }

    /// Send a reply; every 4xx/5xx except `421 4.3.2` is logged as a Rejection.
    fn reply(&mut self, code: u16, text: &str, command: Option<&str>) {
        self.conn.reply(code, text);
        if code >= 400 && !(code == 421 && text.starts_with("4.3.2")) {
            self.log_rejection(code, text, command);
        }
    }

    fn log_rejection(&self, code: u16, text: &str, command: Option<&str>) {
        let mut resp = Response::new(code, text);
        resp.command = command.map(str::to_string);
        let mut rec = LogRecord::new(RecordType::Rejection, String::new(), resp);
        if let Some(tx) = &self.tx {
            rec.sender = tx.sender.clone();
            rec.set_recipients(&tx.recipients);
        }
        rec.peer_address = Some(self.peer_address());
        rec.reception_protocol = Some("ESMTP".into());
        rec.nodeid = self.services.queues.nodeid().to_string();
        rec.meta = self.meta.snapshot();
        self.services.queues.log(rec);
    }

    fn peer_address(&self) -> PeerAddress {
        PeerAddress {
            name: self.ehlo.clone().unwrap_or_default(),
            addr: self.peer.ip().to_string(),
        }
    }

    async fn serve(&mut self) -> Result<(), ReadError> {
        if let Err(e) = self
            .services
            .policy
            .message_event("smtp_server_connection_accepted", None, Some(&self.meta))
            .await
        {
            let (code, text) = self.policy_error_reply(&e);
            self.reply(code, &text, None);
            self.conn.flush().await?;
            return Ok(());
        }
        let banner = format!("{} {}", self.hostname(), self.listener.config.banner);
        self.conn.reply(220, &banner);
        loop {
            let lifecycle = self.services.lifecycle.clone();
            let idle = self.tx.is_none();
            // a drain closes idle sessions; a transaction in progress may finish
            let read = tokio::select! {
                r = self.conn.read_line(COMMAND_LINE_LIMIT) => Some(r),
                _ = lifecycle.draining(), if idle => None,
            };
            let Some(read) = read else {
                let text = format!("4.3.2 {} is shutting down. Try later", self.hostname());
                self.reply(421, &text, None);
                let _ = self.conn.flush().await;
                return Ok(());
            };
            let line = match read {
                Ok(line) => line,
                Err(ReadError::Timeout) => {
                    let text = format!("4.3.2 {} idle too long", self.hostname());
                    self.reply(421, &text, None);
                    let _ = self.conn.flush().await;
                    return Err(ReadError::Timeout);
                }
                Err(e) => return Err(e),
            };
            let flow = match line {
                Line::TooLong => {
                    self.error(500, "5.2.3 line too long", None);
                    Flow::Continue
                }
                Line::Ok { bytes, .. } => match String::from_utf8(bytes) {
                    Err(_) => {
                        self.error(500, "5.5.2 command is not valid UTF-8", None);
                        Flow::Continue
                    }
                    Ok(line) => self.command(&line).await?,
                },
            };
            if self.errors >= MAX_ERRORS {
                let text = format!(
                    "4.7.0 {} too many errors, closing connection",
                    self.hostname()
                );
                self.reply(421, &text, None);
                self.conn.flush().await?;
                return Ok(());
            }
            if let Flow::Close = flow {
                self.conn.flush().await?;
                return Ok(());
            }
        }
    }

    fn error(&mut self, code: u16, text: &str, command: Option<&str>) {
        self.errors += 1;
        self.reply(code, text, command);
    }

    fn ok(&mut self, code: u16, text: &str) {
        self.errors = 0;
        self.conn.reply(code, text);
    }

    /// Map a policy failure to the SMTP reply (spec §6.2).
    fn policy_error_reply(&self, e: &EventError) -> (u16, String) {
        match e {
            EventError::Rejected { code, text } => (*code, text.clone()),
            EventError::Failed(msg) => {
                tracing::error!(peer = %self.peer, "policy error: {msg}");
                (
                    421,
                    format!("4.3.0 {} technical difficulties", self.hostname()),
                )
            }
        }
    }

    async fn command(&mut self, line: &str) -> Result<Flow, ReadError> {
        let cmd = match parse_command(line) {
            Ok(cmd) => cmd,
            Err(e) => {
                self.error(e.code, e.text, Some(line));
                return Ok(Flow::Continue);
            }
        };
        match cmd {
            Command::Ehlo(domain) | Command::Helo(domain) => {
                let is_ehlo = line[..4].eq_ignore_ascii_case("EHLO");
                self.meta.set("ehlo_domain", json!(domain));
                if let Err(e) = self.services.policy.ehlo_event(&domain, &self.meta).await {
                    return Ok(self.reject(&e, line));
                }
                self.ehlo = Some(domain.clone());
                self.tx = None;
                if is_ehlo {
                    let mut lines = vec![
                        format!("{} Aloha {domain}", self.hostname()),
                        "PIPELINING".to_string(),
                        "ENHANCEDSTATUSCODES".to_string(),
                        "8BITMIME".to_string(),
                        "SMTPUTF8".to_string(),
                        format!("SIZE {}", self.listener.config.max_message_size),
                    ];
                    if self.tls.is_none() {
                        lines.push("STARTTLS".to_string());
                    }
                    self.ok(250, &lines.join("\n"));
                } else {
                    self.ok(250, &format!("Hello {domain}!"));
                }
            }
            Command::StartTls => {
                if self.tls.is_some() {
                    self.error(503, "5.5.1 TLS already active", Some(line));
                    return Ok(Flow::Continue);
                }
                self.ok(220, "2.0.0 Ready to start TLS");
                self.conn.flush().await?;
                let Some(plain) = self.conn.take_for_tls() else {
                    // pipelined plaintext after STARTTLS: a command injection attempt
                    return Ok(Flow::Close);
                };
                let acceptor = self.listener.tls.clone();
                let tls = match tokio::time::timeout(
                    self.listener.config.client_timeout,
                    acceptor.accept(plain),
                )
                .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return Err(ReadError::Io(e)),
                    Err(_) => return Err(ReadError::Timeout),
                };
                let (_, conn) = tls.get_ref();
                let version = conn
                    .protocol_version()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default();
                let cipher = conn
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default();
                self.meta.set("tls_cipher", json!(cipher));
                self.meta.set("tls_protocol_version", json!(version));
                self.tls = Some((cipher, version));
                self.conn.io = Box::new(tls);
                // RFC 3207: forget everything learned before TLS
                self.ehlo = None;
                self.tx = None;
            }
            Command::MailFrom { address, params } => {
                if self.tx.is_some() {
                    self.error(
                        503,
                        "5.5.0 MAIL FROM already issued; you must RSET first",
                        Some(line),
                    );
                    return Ok(Flow::Continue);
                }
                for (k, v) in &params {
                    if k == "SIZE" {
                        let size = v.as_deref().and_then(|v| v.parse::<usize>().ok());
                        match size {
                            None => {
                                self.error(501, "5.5.4 invalid SIZE parameter", Some(line));
                                return Ok(Flow::Continue);
                            }
                            Some(size) if size > self.listener.config.max_message_size => {
                                self.error(552, "5.3.4 message too big", Some(line));
                                return Ok(Flow::Continue);
                            }
                            Some(_) => {}
                        }
                    }
                }
                if let Err(e) = self
                    .services
                    .policy
                    .address_event("smtp_server_mail_from", &address, &self.meta)
                    .await
                {
                    return Ok(self.reject(&e, line));
                }
                self.ok(250, &format!("OK <{address}>"));
                self.tx = Some(Transaction {
                    sender: address,
                    recipients: vec![],
                });
            }
            Command::RcptTo { address, .. } => {
                let Some(tx) = &self.tx else {
                    self.error(503, "5.5.0 MAIL FROM must be issued first", Some(line));
                    return Ok(Flow::Continue);
                };
                if tx.recipients.len() >= self.listener.config.max_recipients_per_message {
                    self.error(452, "4.5.3 too many recipients", Some(line));
                    return Ok(Flow::Continue);
                }
                if self.accepted_rcpts >= self.listener.config.max_messages_per_connection {
                    self.error(
                        451,
                        "4.5.3 too many recipients on this connection; reconnect",
                        Some(line),
                    );
                    return Ok(Flow::Continue);
                }
                if !self.listener.config.may_relay(self.peer.ip()) {
                    let text = format!("5.7.1 relaying not permitted for {}", self.peer);
                    self.error(550, &text, Some(line));
                    return Ok(Flow::Continue);
                }
                if let Err(e) = self
                    .services
                    .policy
                    .address_event("smtp_server_rcpt_to", &address, &self.meta)
                    .await
                {
                    return Ok(self.reject(&e, line));
                }
                self.accepted_rcpts += 1;
                self.ok(250, &format!("OK <{address}>"));
                if let Some(tx) = &mut self.tx {
                    tx.recipients.push(address);
                }
            }
            Command::Data => return self.data(line).await,
            Command::Rset => {
                self.tx = None;
                self.ok(250, "Reset state");
            }
            Command::Noop => self.ok(250, "OK"),
            Command::Quit => {
                self.ok(221, &format!("{} closing connection", self.hostname()));
                return Ok(Flow::Close);
            }
            Command::Auth => {
                self.error(524, "5.7.11 AUTH is not available", Some(line));
            }
            Command::Vrfy | Command::Expn | Command::Help | Command::Unknown(_) => {
                self.error(502, "5.5.1 Command unimplemented", Some(line));
            }
        }
        Ok(Flow::Continue)
    }

    /// Reply to a policy rejection; a 421 also closes the session.
    fn reject(&mut self, e: &EventError, line: &str) -> Flow {
        let (code, text) = self.policy_error_reply(e);
        self.error(code, &text, Some(line));
        if code == 421 {
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    async fn data(&mut self, line: &str) -> Result<Flow, ReadError> {
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
        let cfg = self.listener.config.clone();
        let body = self
            .conn
            .read_data(cfg.max_message_size, cfg.line_length_hard_limit)
            .await?;
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
    ) -> Result<Vec<(MessageRef, String)>, EventError> {
        let policy = &self.services.policy;
        let batches: Vec<Vec<String>> = match self.listener.config.batch_handling {
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
            if self.listener.config.deferred_queue {
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
                .map_err(EventError::Failed)?;
            out.push((msg, queue));
        }
        Ok(out)
    }

    fn trace_headers(&self, id: MessageId, rcpts: &[String]) -> Vec<u8> {
        let trace = &self.listener.config.trace_headers;
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
    async fn commit(&mut self, prepared: Vec<(MessageRef, String)>) -> Result<Flow, ReadError> {
        let deferred_spool = self.listener.config.deferred_spool;
        if let Err(e) = self.services.queues.admit(&prepared, deferred_spool).await {
            tracing::error!("spool write failed: {e}");
            self.error(
                451,
                "4.4.5 unable to spool the message, try again later",
                Some("DATA"),
            );
            return Ok(Flow::Continue);
        }
        let ids: Vec<String> = prepared.iter().map(|(m, _)| m.id.to_string()).collect();
        // the 250 goes out before anything is queued, so no delivery can
        // happen for a message whose client never saw its 250
        self.ok(250, &ids_reply(&ids));
        let sent = self.conn.flush().await;
        let queues = self.services.queues.clone();
        for (msg, queue) in prepared {
            let mut rec =
                queues.record(RecordType::Reception, &msg, &queue, Response::new(250, ""));
            rec.peer_address = Some(self.peer_address());
            rec.reception_protocol = Some("ESMTP".into());
            if let Some((cipher, version)) = &self.tls {
                rec.tls_cipher = Some(cipher.clone());
                rec.tls_protocol_version = Some(version.clone());
            }
            queues.log(rec);
            if queue != "null" {
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
