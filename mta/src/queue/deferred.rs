//! `deferred_queue = true` listeners (spec §6.4): the message is spooled and
//! acknowledged at once, queued to `deferred_smtp_inject.kumomta.internal`;
//! that queue's dispatcher runs `smtp_server_message_deferred_inject` and
//! rebinds the message into the queue its envelope and meta choose.

use super::QueueManager;
use crate::delivery::{Attempt, Outcome};
use crate::egress::Ready;
use crate::log::{RecordType, Response};
use crate::policy::{ConnMeta, EventError};
use sluice_common::queue_config::QueueConfig;
use std::sync::Arc;
use std::time::Duration;

pub const DEFERRED_QUEUE: &str = "deferred_smtp_inject.kumomta.internal";
pub const DELIVERY_PROTOCOL: &str = "DeferredSmtpInjection";

/// The queue's hard-coded schedule: one minute doubling without a cap, for
/// up to a week (expiry at the 14th failure, about 136.5 hours).
pub fn queue_config() -> QueueConfig {
    QueueConfig {
        retry_interval: Duration::from_secs(60),
        max_retry_interval: None,
        max_age: Duration::from_secs(7 * 86400),
        refresh_interval: Duration::from_secs(u32::MAX as u64),
        ..QueueConfig::default()
    }
}

impl QueueManager {
    /// Run the deferred-inject event for one message and rebind it.
    pub async fn deferred_inject(self: &Arc<Self>, item: &Ready, ready_queue: &str) {
        let msg = &item.msg;
        let fail = |code: u16, text: String| {
            Attempt::for_all(
                DELIVERY_PROTOCOL,
                None,
                msg.recipients(),
                if code >= 500 {
                    Outcome::Bounced(Response::new(code, &text))
                } else {
                    Outcome::Transient(Response::new(code, &text))
                },
            )
        };
        if let Err(e) = self.load_body(msg) {
            let attempt = fail(450, format!("cannot read spooled body: {e}"));
            return self.complete(item, ready_queue, attempt).await;
        }
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
        let target = match result {
            Ok(()) => self.route(msg).await.map_err(|e| (450, e)),
            Err(EventError::Rejected { code, text }) => Err((code, text)),
            Err(EventError::Failed(e)) => Err((450, e)),
        };
        match target {
            Ok(queue) => self.rebind(item, &queue),
            Err((code, text)) => {
                if code < 500 {
                    msg.set_meta("queue", DEFERRED_QUEUE.into());
                }
                self.complete(item, ready_queue, fail(code, text)).await;
            }
        }
    }

    /// Log DeferredInjectionRebind, persist the new meta, and queue the
    /// message where it now belongs.
    fn rebind(self: &Arc<Self>, item: &Ready, queue: &str) {
        let msg = &item.msg;
        let mut rec = self.record(
            RecordType::DeferredInjectionRebind,
            msg,
            queue,
            Response::new(250, "ok"),
        );
        rec.delivery_protocol = Some(DELIVERY_PROTOCOL.into());
        self.logger.log(rec);
        if queue == "null" {
            self.forget(msg);
            return;
        }
        msg.state().due = None;
        // so that a restart resumes in the new queue, without running the
        // deferred-inject event again
        self.save_meta(msg);
        self.insert(msg.clone(), queue);
    }
}
