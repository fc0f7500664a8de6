//! What an attempt or a delay does to a message (spec §3): delivered and
//! bounced recipients are logged and dropped; the rest retry once, as one
//! TransientFailure with backoff (after `requeue_message`), or expire; a
//! throttle or a full ready queue sends it back to wait, logged `Delayed`.
//! The queue engine receives egress's outcomes here.

use super::requeue::Requeue;
use super::{QueueManager, retry};
use crate::delivery::{Attempt, BoxFuture, Outcome};
use crate::egress::{Outcomes, Ready, ReadyQueue};
use crate::log::{DelayReason, LogRecord, RecordType, Response};
use crate::message::{Message, MessageRef};
use chrono::{DateTime, TimeDelta, Utc};
use sluice_common::duration::format_duration;
use sluice_common::queue_config::QueueConfig;
use std::sync::Arc;
use std::time::Duration;

impl Outcomes for QueueManager {
    fn completed<'a>(
        &'a self,
        item: &'a Ready,
        ready_queue: &'a ReadyQueue,
        attempt: Attempt,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // outcomes arrive only while the engine is alive
            if let Some(me) = self.this() {
                me.apply(item, Some(ready_queue), attempt).await;
            }
        })
    }

    fn throttled(&self, items: Vec<Ready>, ready_queue: &str, wait: Duration) {
        let Some(me) = self.this() else {
            return;
        };
        let due = self.now() + TimeDelta::from_std(wait).unwrap_or_default();
        for item in items {
            me.delayed(
                &item.msg,
                &item.queue,
                DelayReason::ReadyQueueThrottled,
                wait,
                Some(ready_queue),
            );
            let due = retry::constrained(item.msg.state().schedule.as_ref(), due);
            me.wait_until(&item.msg, due, &item.queue);
        }
    }
}

/// The `Delayed` record's response for `reason`, `wait` from now.
fn delay_response(reason: DelayReason, wait: Duration, due: DateTime<Utc>) -> Response {
    let when = format!(
        "Next due in {} at {}",
        format_duration(wait),
        due.to_rfc3339()
    );
    match reason {
        DelayReason::ScheduledForLater => Response::new(
            400,
            &format!("Context: Received, ScheduledForLater. {when}"),
        ),
        DelayReason::MessageRateThrottle => {
            Response::new(400, &format!("Context: MessageRateThrottle. {when}"))
        }
        DelayReason::ReadyQueueWasFull => {
            Response::new(400, &format!("Context: ReadyQueueWasFull. {when}"))
        }
        DelayReason::ReadyQueueThrottled => Response::new(
            451,
            &format!("4.4.1 KumoMTA internal: ready queue throttled. {when}"),
        ),
        DelayReason::AdminSuspended => Response::new(400, "Context: AdminSuspended"),
        DelayReason::ReadyQueueSuspended => {
            Response::new(400, &format!("Context: ReadyQueueSuspended. {when}"))
        }
    }
}

impl QueueManager {
    /// This engine as an `Arc` (egress holds it weakly, and reports
    /// through a plain reference).
    fn this(&self) -> Option<Arc<QueueManager>> {
        self.me.upgrade()
    }

    /// Log a `Delayed` record for `reason`; its response.
    pub(super) fn delayed(
        &self,
        msg: &Message,
        queue: &str,
        reason: DelayReason,
        wait: Duration,
        site: Option<&str>,
    ) -> Response {
        let due = self.now() + TimeDelta::from_std(wait).unwrap_or_default();
        let resp = delay_response(reason, wait, due);
        let mut rec = self.record(RecordType::Delayed, msg, queue, resp.clone());
        rec.delay_reason = Some(reason);
        if let Some(site) = site {
            rec.site = site.to_string();
        }
        self.logger.log(rec);
        resp
    }

    /// Apply an attempt's per-recipient results: log and drop the delivered
    /// and bounced recipients; retry the rest once, as one TransientFailure.
    /// A rebind (the deferred-inject dispatcher) moves the message instead.
    pub(super) async fn apply(
        self: &Arc<Self>,
        item: &Ready,
        ready_queue: Option<&ReadyQueue>,
        attempt: Attempt,
    ) {
        let (msg, queue, config) = (&item.msg, item.queue.as_str(), &item.config);
        if let Some(target) = attempt.rebind {
            return self.rebind(msg, queue, config, &target, ready_queue).await;
        }
        let mut delivered = vec![];
        let mut bounced = vec![];
        let mut transient = vec![];
        for r in attempt.results {
            match r.outcome {
                Outcome::Delivered(resp) => delivered.push((r.recipient, resp)),
                Outcome::Bounced(resp) => bounced.push((r.recipient, resp)),
                Outcome::Transient(resp) => transient.push((r.recipient, resp)),
            }
        }
        let delivery_protocol = Some(attempt.protocol.to_string());
        // a message handed to another node is not delivered: it moved
        let delivery = match attempt.protocol == crate::xfer::PROTOCOL {
            true => RecordType::XferOut,
            false => RecordType::Delivery,
        };
        for (kind, list) in [(delivery, &delivered), (RecordType::Bounce, &bounced)] {
            // one record per distinct response, as a batch delivery logs once
            let mut by_response: Vec<(Response, Vec<String>)> = vec![];
            for (rcpt, resp) in list {
                match by_response.iter_mut().find(|(r, _)| r == resp) {
                    Some((_, rcpts)) => rcpts.push(rcpt.clone()),
                    None => by_response.push((resp.clone(), vec![rcpt.clone()])),
                }
            }
            for (resp, rcpts) in by_response {
                let mut rec = self.record(kind, msg, queue, resp);
                rec.set_recipients(&rcpts);
                rec.delivery_protocol = delivery_protocol.clone();
                rec.peer_address = attempt.peer.clone();
                if let Some((version, cipher)) = &attempt.tls {
                    rec.tls_protocol_version = Some(version.clone());
                    rec.tls_cipher = Some(cipher.clone());
                }
                set_egress_fields(&mut rec, config, ready_queue);
                self.logger.log(rec);
            }
        }
        let Some((_, first)) = transient.first().cloned() else {
            self.forget(msg);
            return;
        };
        msg.state().recipients = transient.into_iter().map(|(r, _)| r).collect();
        self.transient(msg, queue, config, first, delivery_protocol, ready_queue)
            .await;
    }

    /// The queue's `max_message_rate` said wait: back into the same queue
    /// after exactly `wait`, attempts unchanged, a `Delayed` record (spec §2.3).
    pub(super) async fn throttled(
        self: &Arc<Self>,
        msg: &MessageRef,
        queue: &str,
        config: &Arc<QueueConfig>,
        wait: Duration,
    ) {
        let resp = self.delayed(msg, queue, DelayReason::MessageRateThrottle, wait, None);
        let line = resp.to_smtp_line();
        let context = ["MessageRateThrottle"];
        let requeue = self
            .requeue_event(msg, queue, &line, &context, false, Some(wait), &mut None)
            .await;
        if let Requeue::Done = requeue {
            return;
        }
        let schedule = msg.state().schedule.clone();
        match retry::after_throttle(
            config,
            msg.id.created(),
            schedule.as_ref(),
            self.now(),
            wait,
        ) {
            retry::Next::Expire(text) => self.expire(msg, queue, &text),
            retry::Next::At(due) => self.wait_until(msg, due, queue),
        }
    }

    /// Log a TransientFailure, run `requeue_message`, then schedule the next
    /// attempt with backoff, or expire the message when that attempt would
    /// come after `max_age` (or its `expires` time).
    pub(super) async fn transient(
        self: &Arc<Self>,
        msg: &MessageRef,
        queue: &str,
        config: &Arc<QueueConfig>,
        resp: Response,
        delivery_protocol: Option<String>,
        ready_queue: Option<&ReadyQueue>,
    ) {
        let mut rec = self.record(RecordType::TransientFailure, msg, queue, resp.clone());
        rec.delivery_protocol = delivery_protocol;
        set_egress_fields(&mut rec, config, ready_queue);
        // logged once the next due time is on disk (or before whatever the
        // requeue handler logs), so a crash after the record cannot lose it
        let mut record = Some(rec);
        let line = resp.to_smtp_line();
        // kept with the next due time, for inspect-message
        msg.state().last_response = Some(line.clone());
        let context = ["LoggedTransientFailure"];
        let requeue = self
            .requeue_event(msg, queue, &line, &context, true, None, &mut record)
            .await;
        if let Requeue::Done = requeue {
            return;
        }
        let attempts = msg.num_attempts();
        let schedule = msg.state().schedule.clone();
        let next = retry::after_transient(
            config,
            attempts,
            msg.id.created(),
            schedule.as_ref(),
            self.now(),
            rand::random::<f64>(),
        );
        let due = match next {
            retry::Next::Expire(text) => {
                self.log_pending(&mut record);
                return self.expire(msg, queue, &text);
            }
            retry::Next::At(due) => due,
        };
        {
            let mut state = msg.state();
            state.num_attempts = attempts.saturating_add(1);
            state.due = Some(due.timestamp_millis());
        }
        if !msg.is_spooled() {
            // first delay of a deferred_spool message: now it goes to disk
            self.spool_deferred(msg).await;
        } else {
            self.save_meta_synced(msg).await;
        }
        self.log_pending(&mut record);
        if due <= self.now() {
            self.dispatch(msg.clone());
            return;
        }
        if msg.is_spooled() {
            // the META record is on disk: the envelope can go at once
            msg.shrink_meta(due.timestamp_millis(), self.now().timestamp_millis() + 1000);
            msg.shrink();
        }
        // else the spool refused it: it stays whole in memory
        self.park(due.timestamp_millis(), msg.clone(), queue);
    }

    pub(super) fn log_pending(&self, record: &mut Option<LogRecord>) {
        if let Some(rec) = record.take() {
            self.logger.log(rec);
        }
    }

    /// Expiration `551 5.4.7 …` (`text` carries the enhanced code).
    pub(super) fn expire(&self, msg: &Message, queue: &str, text: &str) {
        self.finish(
            msg,
            queue,
            RecordType::Expiration,
            Response::new(551, text),
            None,
        );
    }

    /// Log a final disposition and remove the message from the spool.
    pub(super) fn finish(
        &self,
        msg: &Message,
        queue: &str,
        kind: RecordType,
        resp: Response,
        delivery_protocol: Option<String>,
    ) {
        let mut rec = self.record(kind, msg, queue, resp);
        rec.delivery_protocol = delivery_protocol;
        self.logger.log(rec);
        self.forget(msg);
    }
}

/// The path's fields on a record of an attempt made through a ready queue;
/// the provider is the path's `provider_name`, else its queue's.
fn set_egress_fields(rec: &mut LogRecord, config: &QueueConfig, ready_queue: Option<&ReadyQueue>) {
    if let Some(rq) = ready_queue {
        rec.site = rq.name.clone();
        rec.provider_name = rq
            .config()
            .provider_name
            .clone()
            .or_else(|| config.provider_name.clone());
        rec.egress_pool = Some(
            config
                .egress_pool
                .clone()
                .unwrap_or_else(|| "unspecified".into()),
        );
        rec.egress_source = Some(rq.source.name.clone());
    }
}
