//! One ESMTP session (spec §6.2): the PROXY header where required, the
//! command state machine, limits, relay control and STARTTLS. AUTH is in
//! `auth`, DATA and the commit path in `data`.

mod auth;
mod data;
mod reports;
mod rewrite;

use super::io::{Conn, Line, ReadError};
use super::{Listener, Params, Services};
use crate::config::listener::EsmtpListenerConfig;
use crate::log::{LogRecord, PeerAddress, RecordType, Response};
use crate::policy::{ConnMeta, EventError};
use crate::smtp::{Command, parse_command};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// Consecutive errors after which the session is closed (as Postfix's
/// smtpd_hard_error_limit).
const MAX_ERRORS: usize = 20;
const COMMAND_LINE_LIMIT: usize = 4096;

struct Transaction {
    sender: String,
    recipients: Vec<String>,
    /// What may be done with mail to each recipient, in the same order.
    dispositions: Vec<crate::config::listener_domain::RelayDisposition>,
}

struct Session {
    conn: Conn,
    /// The client: the socket's peer, or the one a PROXY header named.
    peer: SocketAddr,
    listener: Arc<Listener>,
    /// This session's parameters (base, `via` and `peer` blocks applied).
    config: Arc<EsmtpListenerConfig>,
    hostname: String,
    acceptor: TlsAcceptor,
    services: Arc<Services>,
    meta: ConnMeta,
    ehlo: Option<String>,
    tls: Option<(String, String)>,
    /// The authorization identity, once AUTH succeeded.
    authz: Option<String>,
    auth_failures: u32,
    tx: Option<Transaction>,
    /// `get_listener_domain`'s answers, asked once per domain.
    listener_domains: reports::DomainCache,
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
    let lifecycle = services.lifecycle.clone();
    let _busy = lifecycle.session();
    let metrics = services.metrics.clone();
    metrics
        .connections_total
        .with_label_values(&["esmtp_listener"])
        .inc();
    let open = metrics.connections.with_label_values(&["esmtp_listener"]);
    open.inc();
    let params = listener.params(local, peer);
    let mut conn = Conn::new(Box::new(stream), params.config.client_timeout);
    let (peer, local, params) = if params.config.require_proxy_protocol {
        match super::proxy::read_header(&mut conn).await {
            // the real client and the address it reached: parameters again
            Ok(Some(p)) => (
                p.source,
                Some(p.destination),
                listener.params(Some(p.destination), p.source),
            ),
            Ok(None) => (peer, local, params),
            Err(e) => {
                tracing::warn!(%peer, "session refused: {e}");
                metrics
                    .proxy_refused_total
                    .with_label_values(&[e.metric_label()])
                    .inc();
                open.dec();
                return;
            }
        }
    } else {
        (peer, local, params)
    };
    conn.trace = Some(crate::trace::SERVER.session(peer, local));
    let Params {
        config,
        hostname,
        acceptor,
    } = params;
    let meta = ConnMeta::default();
    for (k, v) in &config.meta {
        meta.set(k, v.clone());
    }
    meta.set("received_from", json!(peer.to_string()));
    if let Some(local) = local {
        meta.set("received_via", json!(local.to_string()));
    }
    meta.set("hostname", json!(hostname));
    meta.set("reception_protocol", json!("ESMTP"));
    if let Some(r) = rewrite::PolicyRewrite::for_session(&services.policy, &meta) {
        conn.set_rewrite(r);
    }
    let mut s = Session {
        conn,
        peer,
        listener,
        config,
        hostname,
        acceptor,
        services,
        meta,
        ehlo: None,
        tls: None,
        authz: None,
        auth_failures: 0,
        tx: None,
        listener_domains: Default::default(),
        accepted_rcpts: 0,
        errors: 0,
    };
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
        &self.hostname
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
        resp.command = command.map(auth::redact);
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
        let banner = format!("{} {}", self.hostname(), self.config.banner);
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
                self.conn.command = None;
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
                    self.conn.trace_read("[line too long]");
                    self.conn.command = None;
                    self.error(500, "5.2.3 line too long", None);
                    Flow::Continue
                }
                Line::Ok { bytes, .. } => match String::from_utf8(bytes) {
                    Err(_) => {
                        self.conn.command = None;
                        self.error(500, "5.5.2 command is not valid UTF-8", None);
                        Flow::Continue
                    }
                    Ok(line) => {
                        self.conn.trace_read(&line);
                        self.command(&line).await?
                    }
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
        let parsed = parse_command(line);
        // the verb the replies answer (smtp_server_rewrite_response): none
        // for a command the server does not know
        self.conn.command = match &parsed {
            Ok(Command::Unknown(_)) => None,
            _ => Some(crate::smtp::verb(line).0),
        };
        let cmd = match parsed {
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
                        format!("SIZE {}", self.config.max_message_size),
                    ];
                    if self.tls.is_none() {
                        lines.push("STARTTLS".to_string());
                    } else if self.auth_offered() {
                        lines.push("AUTH PLAIN LOGIN".to_string());
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
                let acceptor = self.acceptor.clone();
                let tls =
                    match tokio::time::timeout(self.config.client_timeout, acceptor.accept(plain))
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
                if let Some(t) = &self.conn.trace {
                    t.tls(&version, &cipher);
                }
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
                if let Some(refusal) = self.services.admission.refusal() {
                    tracing::warn!(peer = %self.peer, "MAIL refused: {refusal}");
                    let (code, text) = refusal.mail_reply();
                    self.error(code, text, Some(line));
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
                            Some(size) if size > self.config.max_message_size => {
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
                    dispositions: vec![],
                });
            }
            Command::RcptTo { address, .. } => {
                let Some(tx) = &self.tx else {
                    self.error(503, "5.5.0 MAIL FROM must be issued first", Some(line));
                    return Ok(Flow::Continue);
                };
                if tx.recipients.len() >= self.config.max_recipients_per_message {
                    self.error(452, "4.5.3 too many recipients", Some(line));
                    return Ok(Flow::Continue);
                }
                if self.accepted_rcpts >= self.config.max_messages_per_connection {
                    self.error(
                        451,
                        "4.5.3 too many recipients on this connection; reconnect",
                        Some(line),
                    );
                    return Ok(Flow::Continue);
                }
                let sender = tx.sender.clone();
                let disposition = match self.relay_disposition(&sender, &address).await {
                    Ok(d) => d,
                    Err(e) => return Ok(self.reject(&e, line)),
                };
                if !disposition.accepts() {
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
                    tx.dispositions.push(disposition);
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
            Command::Auth { mechanism, initial } => {
                return self.auth(&mechanism, initial, line).await;
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
}
