//! The queue of `deferred_queue = true` listeners (spec §6.4): messages are
//! spooled and acknowledged at once into `deferred_smtp_inject.kumomta.internal`,
//! whose dispatcher (`delivery::deferred_inject`) runs the deferred-inject
//! event and names the queue each message now belongs in; here the engine
//! moves it there.

use super::QueueManager;
use crate::log::{RecordType, Response};
use crate::message::MessageRef;
use sluice_common::queue_config::{Protocol, QueueConfig};
use std::sync::Arc;
use std::time::Duration;

pub use crate::delivery::deferred_inject::{DEFERRED_QUEUE, DELIVERY_PROTOCOL};

/// The queue's hard-coded schedule: one minute doubling without a cap, for
/// up to a week (expiry at the 14th failure, about 136.5 hours).
pub fn queue_config() -> QueueConfig {
    QueueConfig {
        retry_interval: Duration::from_secs(60),
        max_retry_interval: None,
        max_age: Duration::from_secs(7 * 86400),
        refresh_interval: Duration::from_secs(u32::MAX as u64),
        protocol: Protocol::DeferredInject,
        ..QueueConfig::default()
    }
}

impl QueueManager {
    /// Move a message the deferred-inject dispatcher rebound to `target`:
    /// log DeferredInjectionRebind, persist the new meta, and queue it there.
    /// A target whose config cannot be had is a transient failure here.
    pub(super) async fn rebind(
        self: &Arc<Self>,
        msg: &MessageRef,
        queue: &str,
        config: &Arc<QueueConfig>,
        target: &str,
        ready_queue: Option<&crate::egress::ReadyQueue>,
    ) {
        if let Err(e) = self.route(msg).await {
            msg.set_meta("queue", DEFERRED_QUEUE.into());
            let resp = Response::new(450, &e.to_string());
            let protocol = Some(DELIVERY_PROTOCOL.to_string());
            return self
                .transient(msg, queue, config, resp, protocol, ready_queue)
                .await;
        }
        let mut rec = self.record(
            RecordType::DeferredInjectionRebind,
            msg,
            target,
            Response::new(250, "ok"),
        );
        rec.delivery_protocol = Some(DELIVERY_PROTOCOL.into());
        self.logger.log(rec);
        if target == "null" {
            self.forget(msg);
            return;
        }
        msg.state().due = None;
        // so that a restart resumes in the new queue, without running the
        // deferred-inject event again
        self.save_meta(msg);
        self.insert(msg.clone(), target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deferred_queue_retries_for_a_week_from_a_minute() {
        let c = queue_config();
        let delays: Vec<u64> = (0..14).map(|a| c.delay_for_attempt(a).as_secs()).collect();
        assert_eq!(delays[..4], [60, 120, 240, 480]);
        // the 14th failure would wait past the week's max_age: about 136.5 h
        let total: u64 = delays[..13].iter().sum();
        assert_eq!(total, 60 * (2u64.pow(13) - 1));
        assert!(total < c.max_age.as_secs() && total + delays[13] > c.max_age.as_secs());
        assert_eq!(c.protocol, Protocol::DeferredInject);
    }
}
