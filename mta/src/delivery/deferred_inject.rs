//! The `deferred_smtp_inject.kumomta.internal` dispatcher (spec §6.4): for
//! messages a `deferred_queue` listener accepted at once, it runs
//! `smtp_server_message_deferred_inject` and answers with the queue the
//! message now belongs in (its envelope and meta decide), which the queue
//! engine moves it to. A `kumo.reject` 5xx bounces it; anything else
//! failing is retried.

use super::{Attempt, BoxFuture, Deliver, Outcome, Path, Refused, Sent, Session};
use crate::log::Response;
use crate::message::MessageRef;
use crate::policy::{ConnMeta, EventError, Policy};
use std::sync::Arc;

/// The internal queue that holds messages a `deferred_queue` listener accepted
/// before their real queue was decided.
pub const DEFERRED_QUEUE: &str = "deferred_smtp_inject.kumomta.internal";
/// The delivery protocol name the deferred-inject dispatcher's attempts and log
/// records carry.
pub const DELIVERY_PROTOCOL: &str = "DeferredSmtpInjection";

/// The [`Deliver`] of the deferred queue: each session runs
/// `smtp_server_message_deferred_inject` and answers with the message's real
/// queue.
pub struct DeferredInject {
    /// The policy version whose handler decides where each message goes.
    pub policy: Arc<Policy>,
}

impl Deliver for DeferredInject {
    fn label(&self) -> String {
        "defersmtpinject".into()
    }

    fn connect<'a>(&'a self, _path: &'a Path) -> BoxFuture<'a, Result<Box<dyn Session>, Refused>> {
        let policy = self.policy.clone();
        Box::pin(async move { Ok(Box::new(InjectSession { policy }) as Box<dyn Session>) })
    }
}

struct InjectSession {
    policy: Arc<Policy>,
}

impl InjectSession {
    async fn inject(&self, msg: &MessageRef) -> Attempt {
        // the handler sees the message without its deferred queue; the
        // conn_meta it gets is a copy of the message meta (edits discarded)
        msg.state().meta.remove("queue");
        let conn_meta = ConnMeta(Arc::new(parking_lot::Mutex::new(msg.state().meta.clone())));
        let result = self
            .policy
            .message_event(
                "smtp_server_message_deferred_inject",
                Some(msg),
                Some(&conn_meta),
            )
            .await;
        let failure = match result {
            Ok(()) => match crate::message::name::queue_name(msg) {
                Ok(queue) => {
                    return Attempt {
                        protocol: DELIVERY_PROTOCOL,
                        peer: None,
                        tls: None,
                        results: vec![],
                        rebind: Some(queue),
                    };
                }
                Err(e) => (450, e.to_string()),
            },
            Err(EventError::Rejected { code, text }) => (code, text),
            Err(EventError::Failed(e)) => (450, e),
        };
        let (code, text) = failure;
        if code < 500 {
            // retried here, in the deferred queue
            msg.set_meta("queue", DEFERRED_QUEUE.into());
        }
        let resp = Response::new(code, &text);
        let outcome = match code >= 500 {
            true => Outcome::Bounced(resp),
            false => Outcome::Transient(resp),
        };
        Attempt::for_all(DELIVERY_PROTOCOL, None, msg.recipients(), outcome)
    }
}

impl Session for InjectSession {
    fn send<'a>(&'a mut self, msgs: &'a [MessageRef]) -> BoxFuture<'a, Sent> {
        Box::pin(async move {
            let mut attempts = Vec::with_capacity(msgs.len());
            for msg in msgs {
                attempts.push(self.inject(msg).await);
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
