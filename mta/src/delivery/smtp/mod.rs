//! SMTP delivery (spec §5.1): the site a queue delivers to (its `mx_list`,
//! an address literal, or the domain's MX hosts), sessions to the first
//! reachable host of that site, and per-recipient results mapped from the
//! replies.

pub mod client;
mod rewrite;
pub mod site;
mod tls;

use super::{Attempt, BoxFuture, Deliver, Outcome, Path, RecipientResult, Refused, Sent, Session};
use crate::dns::{Dns, MxAnswer};
use crate::log::{PeerAddress, Response};
use crate::message::MessageRef;
use crate::policy::Policy;
use client::{ClientError, Reply, SmtpClient};
use site::Site;
use sluice_common::egress::ReconnectStrategy;
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
    /// The resolver for the targets' host names.
    pub dns: Arc<Dns>,
    /// The site's plan: the hosts to try, in order.
    pub site: Site,
    /// Where the next connection starts in the site's plan, after a session
    /// that failed (the path's `reconnect_strategy`); the top otherwise.
    restart: Arc<parking_lot::Mutex<Option<usize>>>,
    /// For `smtp_client_rewrite_delivery_status`.
    policy: Arc<Policy>,
}

impl SmtpDeliver {
    /// SMTP to `site`; the first connection starts at the top of its plan.
    pub fn new(dns: Arc<Dns>, site: Site, policy: Arc<Policy>) -> SmtpDeliver {
        SmtpDeliver {
            dns,
            site,
            restart: Default::default(),
            policy,
        }
    }
}

impl Deliver for SmtpDeliver {
    fn label(&self) -> String {
        "smtp_client".into()
    }

    fn connect<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<Box<dyn Session>, Refused>> {
        Box::pin(async move {
            let start = self.restart.lock().take().unwrap_or(0);
            let (client, target) = connect(&self.dns, &self.site, path, start).await?;
            let batch = path.config.max_recipients_per_batch.max(1);
            Ok(Box::new(SmtpSession {
                client,
                batch,
                target,
                targets: self.site.targets.len(),
                strategy: path.config.reconnect_strategy,
                restart: self.restart.clone(),
                policy: self.policy.clone(),
                protocol: if path.config.use_lmtp {
                    "LMTP"
                } else {
                    "ESMTP"
                },
            }) as Box<dyn Session>)
        })
    }
}

/// Where a connection after a session that failed on target `failed` (of
/// `n`) starts in the plan.
fn restart_at(strategy: ReconnectStrategy, failed: usize, n: usize) -> Option<usize> {
    match strategy {
        ReconnectStrategy::ConnectNextHost => Some((failed + 1) % n.max(1)),
        ReconnectStrategy::ReconnectSameHost => Some(failed),
        // a fresh session, from the top of the plan
        ReconnectStrategy::TerminateSession => None,
    }
}

/// Open a connection to the first reachable host of the site's plan,
/// trying from target `start` on (and around); the target it reached.
async fn connect(
    dns: &Dns,
    site: &Site,
    path: &Path,
    start: usize,
) -> Result<(SmtpClient, usize), Refused> {
    let config = &path.config;
    let port = path.source.remote_port;
    let ehlo = config
        .ehlo_domain
        .clone()
        .or_else(|| path.source.ehlo_domain.clone())
        .unwrap_or_else(crate::hostname);
    let mut errors = vec![];
    let mut candidates = 0;
    let n = site.targets.len();
    for index in (0..n).map(|k| (start + k) % n) {
        let target = &site.targets[index];
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
                Ok(c) => return Ok((c, index)),
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
    /// The plan's target this session reached, of `targets`.
    target: usize,
    targets: usize,
    strategy: ReconnectStrategy,
    restart: Arc<parking_lot::Mutex<Option<usize>>>,
    /// `ESMTP`, or `LMTP` with the path's `use_lmtp`.
    protocol: &'static str,
    policy: Arc<Policy>,
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
                        *self.restart.lock() = restart_at(self.strategy, self.target, self.targets);
                        Attempt {
                            protocol: self.protocol,
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
                Ok(tx) => {
                    for (r, reply) in &tx.results {
                        let reply = rewrite::status(&self.policy, msg, reply).await;
                        results.push(RecipientResult {
                            recipient: r.clone(),
                            outcome: classify(&reply),
                        });
                    }
                }
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
            protocol: self.protocol,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_session_reconnects_where_reconnect_strategy_says() {
        use ReconnectStrategy::*;
        assert_eq!(restart_at(ConnectNextHost, 0, 3), Some(1));
        assert_eq!(
            restart_at(ConnectNextHost, 2, 3),
            Some(0),
            "around the plan"
        );
        assert_eq!(restart_at(ReconnectSameHost, 2, 3), Some(2));
        assert_eq!(restart_at(TerminateSession, 2, 3), None);
        assert_eq!(restart_at(ConnectNextHost, 0, 1), Some(0));
    }

    #[test]
    fn replies_map_to_outcomes_as_the_spec_table_says() {
        let kind = |code: u16| match classify(&Reply {
            code,
            text: "x".into(),
        }) {
            Outcome::Delivered(_) => "delivered",
            Outcome::Transient(_) => "transient",
            Outcome::Bounced(_) => "bounced",
        };
        for (code, want) in [
            (250, "delivered"),
            (251, "delivered"),
            (354, "transient"),
            (421, "transient"),
            (450, "transient"),
            (452, "transient"),
            // 503 (bad sequence) is the MTA's fault, not the recipient's
            (503, "transient"),
            (550, "bounced"),
            (551, "bounced"),
            (552, "bounced"),
            (554, "bounced"),
        ] {
            assert_eq!(kind(code), want, "{code}");
        }
        let multi = classify(&Reply {
            code: 550,
            text: "5.1.1 no such user\nsee https://example.com".into(),
        });
        assert_eq!(
            multi,
            Outcome::Bounced(Response::new(
                550,
                "5.1.1 no such user see https://example.com"
            ))
        );
    }
}
