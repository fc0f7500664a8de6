//! Promotion (spec §3.2): a due message gets its queue, passes the admin
//! rules and the queue's `max_message_rate`, and is handed to egress, which
//! places it on a path or says why it cannot. While memory is short,
//! promotion waits for the ready queues to drain to what their connections
//! take.

use super::{QueueManager, retry};
use crate::egress::{Ready, Refusal, Submitted};
use crate::log::{DelayReason, RecordType, Response};
use crate::message::MessageRef;
use crate::message::name;
use sluice_common::queue_config::QueueConfig;
use std::sync::Arc;

impl QueueManager {
    /// Start promoting a due message.
    ///
    /// Due messages wait in a FIFO served by a fixed set of workers, so a
    /// million messages falling due at once cost a million pointers, not a
    /// million tasks.
    pub(super) fn dispatch(self: &Arc<Self>, msg: MessageRef) {
        self.due.lock().push_back(msg);
        self.due_ready.notify_one();
    }

    /// Runs for the life of the process (the manager lives as long). While
    /// draining it starts nothing new: undelivered mail stays in the spool.
    pub(super) async fn promotion_worker(me: Arc<QueueManager>) {
        loop {
            if me.lifecycle.is_draining() {
                return;
            }
            let notified = me.due_ready.notified();
            let next = me.due.lock().pop_front();
            match next {
                Some(msg) => {
                    let lifecycle = me.lifecycle.clone();
                    let _busy = lifecycle.delivery();
                    me.clone().attempt(msg).await
                }
                None => {
                    tokio::select! {
                        _ = notified => {}
                        _ = me.lifecycle.draining() => return,
                    }
                }
            }
        }
    }

    async fn attempt(self: Arc<Self>, msg: MessageRef) {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.restore(&msg) {
            // the spool lost it: nothing can be delivered or logged meaningfully
            tracing::error!(id = %msg.id, "cannot restore message meta from the spool: {e}");
            return;
        }
        let queue_name = match name::queue_name(&msg) {
            Ok(q) => q,
            Err(e) => {
                let resp = Response::new(551, &format!("5.1.3 invalid queue name: {e}"));
                self.finish(&msg, "", RecordType::Bounce, resp, None);
                return;
            }
        };
        if queue_name == "null" {
            // rebound to the null queue: silently removed (spec §1.5)
            self.forget(&msg);
            return;
        }
        let queue = match self.resolve(&queue_name).await {
            Ok(q) => q,
            Err(e) => {
                let config = Arc::new(QueueConfig::default());
                let resp = Response::new(451, &format!("4.4.4 KumoMTA internal: {e}"));
                self.transient(&msg, &queue_name, &config, resp, None, None)
                    .await;
                return;
            }
        };
        if self.held_by_admin(&msg, &queue) {
            return;
        }
        let config = queue.config();
        if let Some(rate) = &config.max_message_rate {
            let key = format!("schedq-{queue_name}-message-rate");
            let kind = crate::throttle::Kind::QueueRate;
            if let Some(wait) = self.throttles.check(kind, &key, rate).await {
                self.throttled(&msg, &queue_name, &config, wait).await;
                return;
            }
        }
        // the body is read back (if released) when a connection takes the
        // message, so ready queues hold no more bodies than they send
        self.hold_while_short().await;
        let item = Ready {
            msg,
            queue: queue_name,
            config,
        };
        match self.egress.submit(item, &queue.parts, &queue.wrr).await {
            Submitted::Queued => {}
            Submitted::Done(item, attempt) => self.apply(&item, None, attempt).await,
            Submitted::Refused(item, Refusal::Transient(resp)) => {
                self.transient(&item.msg, &item.queue, &item.config, resp, None, None)
                    .await
            }
            Submitted::Refused(item, Refusal::Bounce(resp)) => {
                let attempt = crate::delivery::Attempt::for_all(
                    "ESMTP",
                    None,
                    item.msg.recipients(),
                    crate::delivery::Outcome::Bounced(resp),
                );
                self.apply(&item, None, attempt).await;
            }
            Submitted::Suspended(item, suspension) => self.hold_for_path(item, &suspension),
            Submitted::Full(item) => {
                // back to the scheduled queue for a random 0-60 s, no event (spec §3.2)
                let wait = retry::ready_full_wait(rand::random());
                let due = self.now() + chrono::TimeDelta::from_std(wait).unwrap_or_default();
                self.delayed(
                    &item.msg,
                    &item.queue,
                    DelayReason::ReadyQueueWasFull,
                    wait,
                    None,
                );
                let due = retry::constrained(item.msg.state().schedule.as_ref(), due);
                self.wait_until(&item.msg, due, &item.queue);
            }
        }
    }
}
