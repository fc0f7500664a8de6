//! SMTP delivery (spec §5.1): the site a queue delivers to (its `mx_list`,
//! an address literal, or the domain's MX hosts), sessions to the first
//! reachable host of that site, and per-recipient results mapped from the
//! replies.

pub mod client;
pub mod site;

use super::{Attempt, BoxFuture, Deliver, Outcome, Path, RecipientResult, Refused, Sent, Session};
use crate::dns::{Dns, MxAnswer};
use crate::log::{PeerAddress, Response};
use crate::message::MessageRef;
use client::{ClientError, Reply, SmtpClient};
use site::Site;
use sluice_common::queue_config::SmtpProtocol;
use std::sync::Arc;

/// Why a queue has no site to deliver to.
#[derive(Debug, Clone, PartialEq)]
pub enum NoSite {
    /// Try again later (a DNS failure, a broken `mx_list`).
    Transient(Response),
    /// Never deliverable (a null MX).
    Bounce(Response),
}

/// The site for a queue's `domain` (MX looked up for `routing_domain`).
pub async fn plan_site(
    dns: &Dns,
    domain: &str,
    routing_domain: &str,
    proto: &SmtpProtocol,
) -> Result<Site, NoSite> {
    let fail = |text: String| NoSite::Transient(Response::new(451, &text));
    if !proto.mx_list.is_empty() {
        return site::mx_list_site(&proto.mx_list)
            .map_err(|e| fail(format!("4.4.4 KumoMTA internal: invalid mx_list: {e}")));
    }
    if let Some(site) = site::literal_site(domain) {
        return Ok(site);
    }
    match dns.mx(routing_domain).await {
        Ok(MxAnswer::Hosts(hosts)) => Ok(site::mx_site(&hosts)),
        Ok(MxAnswer::NullMx) => Err(NoSite::Bounce(Response::new(
            556,
            "5.1.10 Recipient address has a null MX",
        ))),
        Err(e) => Err(fail(format!("4.4.4 KumoMTA internal: {e}"))),
    }
}

/// Map one reply to a recipient outcome (spec §5.1 table).
pub fn classify(reply: &Reply) -> Outcome {
    let resp = Response::new(reply.code, &reply.text.replace('\n', " "));
    match reply.code {
        200..=299 => Outcome::Delivered(resp),
        300..=499 | 503 => Outcome::Transient(resp),
        _ => Outcome::Bounced(resp),
    }
}

/// SMTP to one site.
pub struct SmtpDeliver {
    pub dns: Arc<Dns>,
    pub site: Site,
}

impl Deliver for SmtpDeliver {
    fn label(&self) -> String {
        "smtp_client".into()
    }

    fn connect<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<Box<dyn Session>, Refused>> {
        Box::pin(async move {
            let client = connect(&self.dns, &self.site, path).await?;
            let batch = path.config.max_recipients_per_batch.max(1);
            Ok(Box::new(SmtpSession { client, batch }) as Box<dyn Session>)
        })
    }
}

/// Open a connection to the first reachable host of the site's plan.
async fn connect(dns: &Dns, site: &Site, path: &Path) -> Result<SmtpClient, Refused> {
    let config = &path.config;
    let port = path.source.remote_port;
    let ehlo = config
        .ehlo_domain
        .clone()
        .or_else(|| path.source.ehlo_domain.clone())
        .unwrap_or_else(crate::hostname);
    let mut errors = vec![];
    let mut candidates = 0;
    for target in &site.targets {
        let port = port.or(target.port).unwrap_or(config.smtp_port);
        let addrs = match site::resolve(dns, target, port, config.ip_lookup_strategy).await {
            Ok(a) => a,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        for addr in addrs {
            if config.skip_hosts.iter().any(|n| n.contains(&addr.ip())) {
                continue;
            }
            if config
                .prohibited_hosts
                .iter()
                .any(|n| n.contains(&addr.ip()))
            {
                return Err(Refused {
                    code: 550,
                    text: format!(
                        "5.4.4 {} resolves to {} which is on the prohibited_hosts list",
                        target.name,
                        addr.ip()
                    ),
                });
            }
            candidates += 1;
            match SmtpClient::connect(
                &target.name,
                addr,
                path.source.source_address,
                &ehlo,
                config.clone(),
            )
            .await
            {
                Ok(c) => return Ok(c),
                Err(e) => errors.push(format!("{}:{}: {e}", target.name, addr)),
            }
        }
    }
    if candidates == 0 && errors.is_empty() {
        return Err(Refused {
            code: 451,
            text: "4.4.4 KumoMTA internal: MX consisted solely of hosts on the skip_hosts list"
                .into(),
        });
    }
    Err(Refused {
        code: 400,
        text: format!(
            "KumoMTA internal: failed to connect to any candidate hosts: {}",
            errors.join(", ")
        ),
    })
}

struct SmtpSession {
    client: SmtpClient,
    /// `max_recipients_per_batch`: recipients per transaction.
    batch: usize,
}

impl Session for SmtpSession {
    fn send<'a>(&'a mut self, msgs: &'a [MessageRef]) -> BoxFuture<'a, Sent> {
        Box::pin(async move {
            let mut attempts = Vec::with_capacity(msgs.len());
            let mut close = false;
            for msg in msgs {
                let attempt = match self.deliver(msg).await {
                    Ok(attempt) => {
                        // a 421 from the server ends the session
                        close |= attempt.results.iter().any(
                            |r| matches!(&r.outcome, Outcome::Transient(resp) if resp.code == 421),
                        );
                        attempt
                    }
                    Err((e, results)) => {
                        tracing::debug!(peer = %self.client.peer, "connection failed mid-transaction: {e}");
                        close = true;
                        Attempt {
                            protocol: "ESMTP",
                            peer: None,
                            tls: None,
                            results,
                            rebind: None,
                        }
                    }
                };
                attempts.push(attempt);
            }
            Sent { attempts, close }
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(self.client.quit())
    }
}

impl SmtpSession {
    /// One message, in transactions of at most `batch` recipients.
    async fn deliver(
        &mut self,
        msg: &MessageRef,
    ) -> Result<Attempt, (ClientError, Vec<RecipientResult>)> {
        let data = msg.data().unwrap_or_default();
        let sender = msg.sender();
        let rcpts = msg.recipients();
        let mut results = vec![];
        for (i, chunk) in rcpts.chunks(self.batch).enumerate() {
            match self.client.send(&sender, chunk, &data).await {
                Ok(tx) => results.extend(tx.results.iter().map(|(r, reply)| RecipientResult {
                    recipient: r.clone(),
                    outcome: classify(reply),
                })),
                Err(e) => {
                    // the failed chunk and everything after it stay transient
                    let (code, text) = match &e {
                        ClientError::Timeout(..) => (421, format!("4.4.2 KumoMTA internal: {e}")),
                        _ => (
                            400,
                            format!("KumoMTA internal: failed to send message: {e}"),
                        ),
                    };
                    for r in rcpts[i * self.batch..].iter() {
                        results.push(RecipientResult {
                            recipient: r.clone(),
                            outcome: Outcome::Transient(Response::new(code, &text)),
                        });
                    }
                    return Err((e, results));
                }
            }
        }
        Ok(Attempt {
            protocol: "ESMTP",
            peer: Some(PeerAddress {
                name: self.client.name.clone(),
                addr: self.client.peer.ip().to_string(),
            }),
            tls: self.client.tls.clone(),
            results,
            rebind: None,
        })
    }
}
