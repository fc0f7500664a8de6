//! xfer in the queue engine: `/api/admin/xfer/v1` binds every matching
//! queued message for another node (its xfer queue then hands each one
//! over), `/api/admin/xfer/cancel/v1` binds an xfer queue's messages back
//! to their own queues, and a node takes in what another sends it. The
//! binding is saved in the spool before it counts, so a restart resumes it;
//! the sender removes a message only after the target has it in its spool.

use super::QueueManager;
use super::admin::Criteria;
use crate::log::{PeerAddress, RecordType, Response};
use crate::message::name::{self, QueueName};
use crate::message::{Message, MessageRef};
use crate::spool::{NewMessage, Recovered};
use serde::Deserialize;
use std::sync::Arc;

/// `POST /api/admin/xfer/v1`: KumoMTA's `XferV1Request`, and Sluice's
/// `targets` to spread the messages across several nodes.
#[derive(Debug, Deserialize)]
pub struct XferRequest {
    /// Which scheduled queues' messages move; none: all of them.
    #[serde(flatten)]
    pub criteria: Criteria,
    /// Why: in each AdminRebind record.
    pub reason: String,
    /// The HTTP listener of the node to move them to.
    #[serde(default)]
    pub target: Option<String>,
    /// Several nodes' listeners: the messages go to each in turn.
    #[serde(default)]
    pub targets: Vec<String>,
}

/// `POST /api/admin/xfer/cancel/v1`: KumoMTA's `XferCancelV1Request`.
#[derive(Debug, Deserialize)]
pub struct XferCancelRequest {
    /// The xfer queue (`<target>.xfer.kumomta.internal`).
    pub queue_name: String,
    /// Why: in each AdminRebind record.
    pub reason: String,
}

/// An admin request that cannot be carried out: its HTTP status and why.
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub struct XferRefused {
    /// 400 for a bad request, 404 for an unknown queue.
    pub status: u16,
    /// Why.
    pub text: String,
}

/// Why a transfer from another node was not taken in.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The body is not a transfer (HTTP 400).
    #[error("not a transfer: {0}")]
    Decode(#[from] crate::xfer::DecodeError),
    /// It came from this node (HTTP 400).
    #[error("cannot xfer to myself: the message came from node {0}")]
    Loop(String),
    /// The spool refused it for now (HTTP 503: the sender keeps it and
    /// retries).
    #[error("cannot spool the message now: {0}")]
    Spool(#[from] crate::spool::SpoolError),
}

impl QueueManager {
    /// Bind every queued message that matches for `req.target`; the xfer
    /// queue hands them over. Returns how many and the xfer queue.
    pub fn admin_xfer(
        self: &Arc<Self>,
        req: XferRequest,
    ) -> Result<serde_json::Value, XferRefused> {
        let mut targets: Vec<String> = req.target.into_iter().chain(req.targets).collect();
        targets.iter_mut().for_each(|t| *t = t.trim().to_string());
        if targets.is_empty() {
            return Err(XferRefused {
                status: 400,
                text: "give the node to move the messages to: target (or targets)".into(),
            });
        }
        for target in &targets {
            let url_ok = reqwest::Url::parse(target)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !url_ok {
                return Err(XferRefused {
                    status: 400,
                    text: format!("target {target:?} is not an http:// or https:// URL"),
                });
            }
        }
        let queues: Vec<String> = targets.iter().map(|t| crate::xfer::queue_name(t)).collect();
        let criteria = req.criteria;
        // what already waits for one of these targets stays where it is
        let msgs = self.take_queued(|queue, parts| {
            !queues.iter().any(|q| q == queue) && criteria.matches(queue, parts)
        });
        let count = msgs.len();
        let (me, reason) = (self.clone(), req.reason);
        tokio::spawn(async move {
            let mut bound = Vec::with_capacity(msgs.len());
            for (i, msg) in msgs.into_iter().enumerate() {
                match me.bind_for(&msg, &targets[i % targets.len()], &reason) {
                    Some(q) => bound.push((msg, q)),
                    None => me.insert(msg.clone(), &name::queue_name(&msg).unwrap_or_default()),
                }
            }
            // every binding on disk before any transfer: a restart resumes
            // each one, none is left behind in its own queue
            if let Err(e) = me.spool.flush().await {
                tracing::error!("xfer: the bindings may not all be on disk: {e}");
            }
            for (msg, q) in bound {
                me.insert(msg, &q);
            }
        });
        let mut answer = serde_json::json!({ "messages": count, "queues": queues });
        if queues.len() == 1 {
            answer["queue"] = queues[0].clone().into();
        }
        Ok(answer)
    }

    /// Bind the messages of an xfer queue back to their own queues, due
    /// when they were.
    pub fn admin_xfer_cancel(
        self: &Arc<Self>,
        req: XferCancelRequest,
    ) -> Result<serde_json::Value, XferRefused> {
        let xq = req.queue_name;
        if crate::xfer::target_of(&xq).is_none() {
            return Err(XferRefused {
                status: 400,
                text: format!("{xq} is not an xfer queue"),
            });
        }
        if self.scheduled(&xq).is_none() {
            return Err(XferRefused {
                status: 404,
                text: format!("{xq} is not a current scheduled queue"),
            });
        }
        let msgs = self.take_queued(|queue, _| queue == xq);
        let count = msgs.len();
        for msg in msgs {
            if let Err(e) = self.restore(&msg) {
                tracing::error!(id = %msg.id, "cannot restore message meta from the spool: {e}");
            }
            if !crate::xfer::unbind(&msg) {
                continue;
            }
            let own = name::queue_name(&msg).unwrap_or_default();
            self.rebound(&msg, &xq, &own, &req.reason);
            self.save_meta(&msg);
            self.queue_when_due(&msg, &own);
        }
        Ok(serde_json::json!({ "messages": count }))
    }

    /// Take every message waiting (in the timer, in a ready queue, or held
    /// by a suspension; not one in flight) whose scheduled queue `matches`.
    pub(super) fn take_queued(
        &self,
        matches: impl Fn(&str, &QueueName) -> bool,
    ) -> Vec<MessageRef> {
        let mut msgs = self.timer.take_matching(|q| matches(&q.name, &q.parts));
        msgs.extend(self.rules.take_parked(|q| matches(q, &QueueName::parse(q))));
        for rq in self.egress.ready_queues() {
            for item in
                rq.take_matching(|item| matches(&item.queue, &QueueName::parse(&item.queue)))
            {
                msgs.push(item.msg);
            }
        }
        msgs
    }

    /// Bind one message for `target`, logged, its binding sent to the
    /// spool (the caller flushes); its xfer queue, or `None` when it was
    /// bound there already.
    fn bind_for(&self, msg: &MessageRef, target: &str, reason: &str) -> Option<String> {
        if let Err(e) = self.restore(msg) {
            tracing::error!(id = %msg.id, "cannot restore message meta from the spool: {e}");
        }
        let from = name::queue_name(msg).unwrap_or_default();
        let xq = crate::xfer::bind(msg, target)?;
        self.rebound(msg, &from, &xq, reason);
        self.save_meta(msg);
        Some(xq)
    }

    /// The AdminRebind record of a move from `from` to `to`.
    pub(super) fn rebound(&self, msg: &Message, from: &str, to: &str, reason: &str) {
        let text = format!("Rebound from {from} to {to}: {reason}");
        let rec = self.record(RecordType::AdminRebind, msg, to, Response::new(250, &text));
        self.logger.log(rec);
    }

    /// At the start of a spool handoff: bind every recovered message for
    /// one of `targets` in turn (one already bound elsewhere, for a node
    /// that may be gone, is bound again) and flush the bindings. Returns
    /// the bound messages, to be queued with [`QueueManager::queue_bound`]
    /// as the xfer queues keep up.
    pub async fn bind_recovered(
        &self,
        recovered: Vec<Recovered>,
        targets: &[String],
        reason: &str,
    ) -> Vec<MessageRef> {
        let mut msgs = Vec::with_capacity(recovered.len());
        let found = recovered
            .into_iter()
            .filter_map(|r| self.recovered_message(r));
        for (i, msg) in found.enumerate() {
            self.bind_for(&msg, &targets[i % targets.len()], reason);
            msgs.push(msg);
        }
        if let Err(e) = self.spool.flush().await {
            tracing::error!("spool handoff: the bindings may not all be on disk: {e}");
        }
        msgs
    }

    /// Queue a bound message (from [`QueueManager::bind_recovered`]) in its
    /// xfer queue; `false` when it expired instead.
    pub async fn queue_bound(self: &Arc<Self>, msg: MessageRef) -> bool {
        self.requeue_spooled(msg).await
    }

    /// Take in a message another node transfers: spooled (synced) before
    /// the answer, logged as XferIn, then queued as it was there: its id,
    /// attempts, due time and scheduling kept. A message this node holds
    /// already (a retry whose first answer was lost) is answered again
    /// without a second copy. Returns the id.
    pub async fn accept_xfer(
        self: &Arc<Self>,
        body: &[u8],
        peer: std::net::IpAddr,
    ) -> Result<String, AcceptError> {
        let (header, id, data) = crate::xfer::decode(body)?;
        if header.from_node == self.nodeid {
            return Err(AcceptError::Loop(header.from_node));
        }
        if self.spool.contains(id) {
            return Ok(header.id);
        }
        let meta = serde_json::to_vec(&header.message).expect("serialises");
        let msg = Message::recovered(id, header.message, data.len());
        self.spool
            .put(vec![NewMessage {
                id,
                meta,
                data: Arc::new(data.to_vec()),
            }])
            .await?;
        let queue = name::queue_name(&msg).unwrap_or_default();
        let mut rec = self.record(RecordType::XferIn, &msg, &queue, Response::new(250, ""));
        rec.peer_address = Some(PeerAddress {
            name: header.from_node.clone(),
            addr: peer.to_string(),
        });
        rec.delivery_protocol = Some(crate::xfer::PROTOCOL.into());
        self.logger.log(rec);
        self.requeue_spooled(msg).await;
        Ok(header.id)
    }
}
