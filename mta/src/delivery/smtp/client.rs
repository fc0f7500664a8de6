//! SMTP client (spec §5.1): connect, banner, EHLO, STARTTLS per the path's
//! `enable_tls`, then transactions with per-recipient results, pipelined
//! when the server offers PIPELINING. One `SmtpClient` is one connection and
//! may carry many transactions.

use crate::smtp::Io;

mod auth;
mod eight_bit;
use sluice_common::egress::{EgressPathConfig, Tls};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

/// A reply from the server; `text` holds every line's text joined by `\n`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The text after the code and separator, one line per reply line.
    pub text: String,
}

impl Reply {
    /// One line for logs: code, then the text with line breaks folded.
    pub fn line(&self) -> String {
        format!("{} {}", self.code, self.text.replace('\n', " "))
    }
}

/// Why an SMTP client connection failed; after any of these the connection is
/// unusable.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer within the configured timeout (the duration) to the named
    /// phase.
    #[error("Timed Out waiting {0:?} for response to {1}")]
    Timeout(Duration, &'static str),
    /// The socket failed, or the server closed the connection.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A reply line that is not a valid SMTP reply.
    #[error("malformed reply: {0:?}")]
    Malformed(String),
    /// The server refused the banner, HELO or RSET, which ends the session.
    #[error("{phase}: {reply}", reply = .reply.line())]
    Rejected {
        /// The step the reply answered (`banner`, `HELO`, `RSET`).
        phase: &'static str,
        /// The server's reply.
        reply: Reply,
    },
    /// The path requires TLS, but the server does not offer STARTTLS or
    /// refused it.
    #[error("STARTTLS is required but {0}")]
    TlsRequired(String),
    /// The TLS handshake after STARTTLS failed.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// SMTP AUTH was refused, or not attempted because the connection could
    /// not protect the credential.
    #[error("{0}")]
    Auth(String),
}

/// The result of one transaction for each recipient.
pub struct Transaction {
    /// Each recipient with its final reply, in the order given.
    pub results: Vec<(String, Reply)>,
}

/// One connection to an SMTP server, past EHLO (and STARTTLS when it
/// applies), ready for transactions.
pub struct SmtpClient {
    io: BufReader<Box<dyn Io>>,
    /// The address connected to.
    pub peer: SocketAddr,
    /// The host name the address was resolved from: used for TLS server name
    /// verification and in logs.
    pub name: String,
    extensions: HashSet<String>,
    /// (protocol version, cipher suite) once STARTTLS succeeded.
    pub tls: Option<(String, String)>,
    /// The TLS session's certificate was verified (not an `*Insecure` mode).
    tls_verified: bool,
    transactions: usize,
    settings: Arc<EgressPathConfig>,
    /// Publishes the session's transcript (`crate::trace`).
    trace: crate::trace::Tracer,
}

async fn with_timeout<T>(
    d: Duration,
    phase: &'static str,
    f: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(d, f)
        .await
        .unwrap_or(Err(ClientError::Timeout(d, phase)))
}

impl SmtpClient {
    /// Connect to `addr` (called `name` in logs and TLS) and get as far as a
    /// session ready for MAIL FROM.
    pub async fn connect(
        name: &str,
        addr: SocketAddr,
        source: Option<IpAddr>,
        ehlo_domain: &str,
        settings: Arc<EgressPathConfig>,
    ) -> Result<SmtpClient, ClientError> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = with_timeout(settings.connect_timeout, "connect", async {
            Ok(socket.connect(addr).await?)
        })
        .await?;
        let _ = stream.set_nodelay(true);
        let trace = crate::trace::CLIENT
            .session(addr, stream.local_addr().ok())
            .with_name(name);
        let mut client = SmtpClient {
            io: BufReader::new(Box::new(stream)),
            peer: addr,
            name: name.to_string(),
            extensions: HashSet::new(),
            tls: None,
            tls_verified: false,
            transactions: 0,
            settings: settings.clone(),
            trace,
        };
        let banner = client.read_reply(settings.banner_timeout, "banner").await?;
        if banner.code != 220 {
            return Err(ClientError::Rejected {
                phase: "banner",
                reply: banner,
            });
        }
        client.ehlo(ehlo_domain).await?;
        let wants_tls = settings.enable_tls != Tls::Disabled;
        let required = matches!(settings.enable_tls, Tls::Required | Tls::RequiredInsecure);
        if wants_tls && client.extensions.contains("STARTTLS") {
            if client.starttls_command().await?
                && let Err(e) = client.handshake(ehlo_domain).await
            {
                if required || !settings.opportunistic_tls_reconnect_on_failed_handshake {
                    return Err(e);
                }
                tracing::debug!(%addr, "opportunistic TLS failed ({e}); reconnecting in clear");
                let mut clear = (*settings).clone();
                clear.enable_tls = Tls::Disabled;
                return Box::pin(Self::connect(
                    name,
                    addr,
                    source,
                    ehlo_domain,
                    Arc::new(clear),
                ))
                .await;
            }
        } else if required {
            return Err(ClientError::TlsRequired(format!(
                "{name} does not offer STARTTLS"
            )));
        }
        client.authenticate().await?;
        Ok(client)
    }

    async fn ehlo(&mut self, domain: &str) -> Result<(), ClientError> {
        let timeout = self.settings.ehlo_timeout;
        let (verb, phase) = if self.settings.use_lmtp {
            ("LHLO", "LHLO")
        } else {
            ("EHLO", "EHLO")
        };
        let reply = self
            .command(&format!("{verb} {domain}"), timeout, phase)
            .await?;
        if reply.code != 250 && self.settings.use_lmtp {
            // LMTP has no HELO to fall back to (RFC 2033 §4.1)
            return Err(ClientError::Rejected { phase, reply });
        }
        if reply.code == 250 {
            self.extensions = reply
                .text
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next())
                .map(|k| k.to_ascii_uppercase())
                .collect();
            return Ok(());
        }
        let reply = self
            .command(&format!("HELO {domain}"), timeout, "HELO")
            .await?;
        if reply.code != 250 {
            return Err(ClientError::Rejected {
                phase: "HELO",
                reply,
            });
        }
        self.extensions.clear();
        Ok(())
    }

    /// Send STARTTLS: true when the server is ready for the handshake,
    /// false when it refused and the session may go on in clear.
    async fn starttls_command(&mut self) -> Result<bool, ClientError> {
        let timeout = self.settings.starttls_timeout;
        let reply = self.command("STARTTLS", timeout, "STARTTLS").await?;
        let required = matches!(
            self.settings.enable_tls,
            Tls::Required | Tls::RequiredInsecure
        );
        if reply.code != 220 {
            if required {
                return Err(ClientError::TlsRequired(format!(
                    "STARTTLS was refused: {}",
                    reply.line()
                )));
            }
            return Ok(false);
        }
        Ok(true)
    }

    /// The TLS handshake after a 220 to STARTTLS, then EHLO again.
    async fn handshake(&mut self, ehlo_domain: &str) -> Result<(), ClientError> {
        let timeout = self.settings.starttls_timeout;
        let insecure = matches!(
            self.settings.enable_tls,
            Tls::OpportunisticInsecure | Tls::RequiredInsecure
        );
        let config = super::tls::client_config(insecure, &self.settings.rustls_cipher_suites)?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let server_name = rustls::pki_types::ServerName::try_from(self.name.clone())
            .unwrap_or_else(|_| rustls::pki_types::ServerName::IpAddress(self.peer.ip().into()));
        let plain = std::mem::replace(
            &mut self.io,
            BufReader::new(Box::new(crate::smtp::EmptyDuplex)),
        );
        let stream = plain.into_inner();
        let tls = tokio::time::timeout(timeout, connector.connect(server_name, stream))
            .await
            .map_err(|_| ClientError::Timeout(timeout, "STARTTLS handshake"))?
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let (_, conn) = tls.get_ref();
        self.tls_verified = !insecure;
        self.tls = Some((
            conn.protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            conn.negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()))
                .unwrap_or_default(),
        ));
        if let Some((version, cipher)) = &self.tls {
            self.trace.tls(version, cipher);
        }
        self.io = BufReader::new(Box::new(tls));
        self.ehlo(ehlo_domain).await
    }

    /// Write commands (one, or a pipelined batch), traced line by line.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if self.trace.watched() {
            for line in String::from_utf8_lossy(bytes).split("\r\n") {
                if !line.is_empty() {
                    self.trace.write(line);
                }
            }
        }
        self.write_raw(bytes).await
    }

    /// Write a message body, traced as its length and first line.
    async fn write_body(&mut self, body: &[u8]) -> Result<(), ClientError> {
        self.trace.write_body(body);
        self.write_raw(body).await
    }

    async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let io = self.io.get_mut();
        io.write_all(bytes).await?;
        io.flush().await?;
        Ok(())
    }

    async fn read_reply(
        &mut self,
        timeout: Duration,
        phase: &'static str,
    ) -> Result<Reply, ClientError> {
        with_timeout(timeout, phase, async {
            let mut text = String::new();
            loop {
                let mut line = String::new();
                if self.io.read_line(&mut line).await? == 0 {
                    return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                let line = line.trim_end_matches(['\r', '\n']);
                self.trace.read(line);
                let code: u16 = line
                    .get(..3)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| ClientError::Malformed(line.to_string()))?;
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(line.get(4..).unwrap_or(""));
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok(Reply { code, text });
                }
            }
        })
        .await
    }

    async fn command(
        &mut self,
        line: &str,
        timeout: Duration,
        phase: &'static str,
    ) -> Result<Reply, ClientError> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply(timeout, phase).await
    }

    /// One transaction: MAIL, RCPT for each recipient, DATA. Returns each
    /// recipient's final reply. `Err` means the connection is unusable.
    pub async fn send(
        &mut self,
        sender: &str,
        recipients: &[String],
        data: &[u8],
    ) -> Result<Transaction, ClientError> {
        let s = self.settings.clone();
        let params = match self.mail_params(sender, recipients, data) {
            Ok(params) => params,
            Err(refusal) => return Ok(all(recipients, &refusal)),
        };
        if self.transactions > 0 && s.enable_rset {
            let reply = self.command("RSET", s.rset_timeout, "RSET").await?;
            if reply.code != 250 {
                return Err(ClientError::Rejected {
                    phase: "RSET",
                    reply,
                });
            }
        }
        self.transactions += 1;
        let mail = format!("MAIL FROM:<{sender}>{params}\r\n");
        let pipelining = s.enable_pipelining && self.extensions.contains("PIPELINING");
        let mail_reply;
        let mut rcpt_replies = Vec::with_capacity(recipients.len());
        let data_reply;
        if pipelining {
            let mut batch = mail.into_bytes();
            for r in recipients {
                batch.extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
            }
            batch.extend_from_slice(b"DATA\r\n");
            self.write(&batch).await?;
            mail_reply = self.read_reply(s.mail_from_timeout, "MAIL FROM").await?;
            for _ in recipients {
                rcpt_replies.push(self.read_reply(s.rcpt_to_timeout, "RCPT TO").await?);
            }
            data_reply = self.read_reply(s.data_timeout, "DATA").await?;
        } else {
            self.write(mail.as_bytes()).await?;
            mail_reply = self.read_reply(s.mail_from_timeout, "MAIL FROM").await?;
            if mail_reply.code != 250 {
                return Ok(all(recipients, &mail_reply));
            }
            for r in recipients {
                let reply = self
                    .command(&format!("RCPT TO:<{r}>"), s.rcpt_to_timeout, "RCPT TO")
                    .await?;
                rcpt_replies.push(reply);
            }
            if !rcpt_replies.iter().any(|r| r.code / 100 == 2) {
                return Ok(Transaction {
                    results: recipients.iter().cloned().zip(rcpt_replies).collect(),
                });
            }
            data_reply = self.command("DATA", s.data_timeout, "DATA").await?;
        }
        if mail_reply.code != 250 {
            // a pipelined DATA after a failed MAIL is meaningless; make sure
            // the server is not waiting for a body
            if data_reply.code == 354 {
                self.write(b".\r\n").await?;
                self.read_reply(s.data_dot_timeout, "data dot").await?;
            }
            return Ok(all(recipients, &mail_reply));
        }
        let accepted: Vec<usize> = (0..recipients.len())
            .filter(|i| rcpt_replies[*i].code / 100 == 2)
            .collect();
        if data_reply.code != 354 {
            let mut results: Vec<(String, Reply)> =
                recipients.iter().cloned().zip(rcpt_replies).collect();
            for i in &accepted {
                results[*i].1 = data_reply.clone();
            }
            return Ok(Transaction { results });
        }
        if accepted.is_empty() {
            // every RCPT failed but DATA was accepted (pipelined): send an
            // empty body so the session stays in sync
            self.write(b".\r\n").await?;
            self.read_reply(s.data_dot_timeout, "data dot").await?;
            return Ok(Transaction {
                results: recipients.iter().cloned().zip(rcpt_replies).collect(),
            });
        }
        self.write_body(&dot_stuff(data)).await?;
        let mut results: Vec<(String, Reply)> =
            recipients.iter().cloned().zip(rcpt_replies).collect();
        if s.use_lmtp {
            // one reply per accepted recipient, in RCPT order (RFC 2033 §4.2)
            for i in accepted {
                results[i].1 = self.read_reply(s.data_dot_timeout, "data dot").await?;
            }
        } else {
            let final_reply = self.read_reply(s.data_dot_timeout, "data dot").await?;
            for i in accepted {
                results[i].1 = final_reply.clone();
            }
        }
        Ok(Transaction { results })
    }

    /// Send QUIT (waiting up to 5 seconds for the reply, which is ignored)
    /// and drop the connection.
    pub async fn quit(mut self) {
        let _ = self.command("QUIT", Duration::from_secs(5), "QUIT").await;
    }
}

fn all(recipients: &[String], reply: &Reply) -> Transaction {
    Transaction {
        results: recipients
            .iter()
            .map(|r| (r.clone(), reply.clone()))
            .collect(),
    }
}

/// The body with leading dots doubled, CRLF line ends, and the final dot.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 5);
    if data.first() == Some(&b'.') {
        out.push(b'.');
    }
    // copy runs between line-leading dots at memchr speed
    let mut start = 0;
    for at in memchr::memmem::find_iter(data, b"\n.") {
        out.extend_from_slice(&data[start..=at]);
        out.push(b'.');
        start = at + 1;
    }
    out.extend_from_slice(&data[start..]);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(dot_stuff(b".x"), b"..x\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b"\r\n.\r\n");
        assert_eq!(
            dot_stuff(b"..\r\n.\r\n.\n..x\r\n"),
            b"...\r\n..\r\n..\n...x\r\n.\r\n"
        );
    }
}
