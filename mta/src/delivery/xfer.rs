//! The xfer queues' dispatcher: each message is handed to the target node
//! (`xfer::client`); a 2xx is a delivery (logged as XferOut), a refusal
//! of the moment a transient failure retried from this node's xfer queue,
//! and a target that refuses the message itself (400) a transient failure
//! too: a message is never bounced because a peer would not take it.

use super::{Attempt, BoxFuture, Deliver, Outcome, Path, Refused, Sent, Session};
use crate::log::Response;
use crate::message::MessageRef;
use crate::xfer::client::XferClient;
use std::sync::Arc;

/// The [`Deliver`] of one xfer queue.
pub struct XferDeliver {
    /// The target's HTTP listener URL.
    pub target: String,
    /// This node's xfer client.
    pub client: Arc<XferClient>,
}

impl Deliver for XferDeliver {
    fn label(&self) -> String {
        crate::xfer::PROTOCOL.into()
    }

    fn connect<'a>(&'a self, _path: &'a Path) -> BoxFuture<'a, Result<Box<dyn Session>, Refused>> {
        let session = XferSession {
            target: self.target.clone(),
            client: self.client.clone(),
        };
        Box::pin(async move { Ok(Box::new(session) as Box<dyn Session>) })
    }
}

struct XferSession {
    target: String,
    client: Arc<XferClient>,
}

impl XferSession {
    async fn transfer(&self, msg: &MessageRef) -> Attempt {
        let Some(data) = msg.data() else {
            let resp = Response::new(400, "KumoMTA internal: the body is not loaded");
            return Attempt::for_all(
                crate::xfer::PROTOCOL,
                None,
                msg.recipients(),
                Outcome::Transient(resp),
            );
        };
        let body = crate::xfer::encode(msg, &self.client.nodeid, &data);
        let outcome = match self.client.send(&self.target, body).await {
            Ok(id) => Outcome::Delivered(Response::new(250, &format!("new id is {id}"))),
            Err(e) => {
                let text = format!("KumoMTA internal: xfer to {}: {e}", self.target);
                Outcome::Transient(Response::new(400, &text))
            }
        };
        Attempt::for_all(crate::xfer::PROTOCOL, None, msg.recipients(), outcome)
    }
}

impl Session for XferSession {
    fn send<'a>(&'a mut self, msgs: &'a [MessageRef]) -> BoxFuture<'a, Sent> {
        Box::pin(async move {
            let mut attempts = Vec::with_capacity(msgs.len());
            for msg in msgs {
                attempts.push(self.transfer(msg).await);
            }
            Sent {
                attempts,
                close: false,
            }
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}
