//! `requeue_message` (spec §3.4), run after a transient failure or a
//! throttle: the policy may bounce the message (`kumo.reject`) or rebind it
//! to another queue by changing what its queue name is made of.

use super::{QueueManager, retry};
use crate::log::{LogRecord, RecordType, Response};
use crate::message::MessageRef;
use crate::message::name;
use crate::policy::EventError;
use sluice_common::duration::format_duration;
use std::sync::Arc;
use std::time::Duration;

/// What `requeue_message` decided.
pub(super) enum Requeue {
    /// The message stays in its queue; carry on as usual.
    Stay,
    /// Bounced or moved to another queue: already handled.
    Done,
}

impl QueueManager {
    /// Run `requeue_message` (spec §3.4) and act on what it did: a
    /// `kumo.reject` bounces the message; a changed queue name rebinds it to
    /// the new queue, due now (scheduling constraints still apply), with one
    /// more attempt counted. `pending` (the caller's record) is logged before
    /// any record of this function's own.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn requeue_event(
        self: &Arc<Self>,
        msg: &MessageRef,
        queue: &str,
        response: &str,
        context: &[&str],
        increment_attempts: bool,
        delay: Option<Duration>,
        pending: &mut Option<LogRecord>,
    ) -> Requeue {
        match self
            .policy
            .requeue_message(msg, response, context, increment_attempts, delay)
            .await
        {
            Ok(()) => {}
            Err(EventError::Rejected { code, text }) => {
                self.log_pending(pending);
                self.finish(
                    msg,
                    queue,
                    RecordType::Bounce,
                    Response::new(code, &text),
                    None,
                );
                return Requeue::Done;
            }
            Err(EventError::Failed(e)) => {
                tracing::error!(id = %msg.id, queue, "requeue_message failed: {e}");
                return Requeue::Stay;
            }
        }
        let new_queue = match name::queue_name(msg) {
            Ok(q) if q != queue => q,
            Ok(_) => return Requeue::Stay,
            Err(e) => {
                tracing::error!(id = %msg.id, "requeue_message left an invalid queue name: {e}");
                return Requeue::Stay;
            }
        };
        self.log_pending(pending);
        if crate::xfer::target_of(&new_queue).is_some() {
            self.rebind_for_xfer(msg, queue, &new_queue, increment_attempts, delay)
                .await;
            return Requeue::Done;
        }
        {
            let mut s = msg.state();
            s.num_attempts = s.num_attempts.saturating_add(1);
            s.due = None;
        }
        let due = retry::constrained(msg.state().schedule.as_ref(), self.now());
        if new_queue != "null" {
            match self.resolve(&new_queue).await {
                Ok(q) if retry::too_old(&q.config(), msg.id.created(), due) => {
                    let text = format!(
                        "5.4.7 message is older than max_age={} of {new_queue}",
                        format_duration(q.config().max_age)
                    );
                    self.expire(msg, &new_queue, &text);
                    return Requeue::Done;
                }
                Ok(_) => {}
                // delivery will retry resolving it and log why
                Err(e) => tracing::error!(id = %msg.id, queue = new_queue, "{e}"),
            }
        }
        self.wait_until(msg, due, &new_queue);
        Requeue::Done
    }

    /// `kumo.xfer.xfer` in `requeue_message`: the message goes to the xfer
    /// queue at once, and what travels is what this node would have done:
    /// one more attempt counted (when the failure counts), due after the
    /// event's `delay` or its own queue's backoff. A move that makes it too
    /// old for its queue expires it here.
    async fn rebind_for_xfer(
        self: &Arc<Self>,
        msg: &MessageRef,
        queue: &str,
        xfer_queue: &str,
        increment_attempts: bool,
        delay: Option<Duration>,
    ) {
        let Some(mut info) = crate::xfer::saved(msg) else {
            return self.wait_until(msg, self.now(), xfer_queue);
        };
        if increment_attempts {
            info.num_attempts = info.num_attempts.saturating_add(1);
        }
        let now = self.now();
        let next = match (delay, self.resolve(queue).await) {
            (Some(d), Ok(q)) => retry::after_throttle(
                &q.config(),
                msg.id.created(),
                info.schedule.as_ref(),
                now,
                d,
            ),
            (None, Ok(q)) => retry::after_transient(
                &q.config(),
                info.num_attempts.saturating_sub(1),
                msg.id.created(),
                info.schedule.as_ref(),
                now,
                rand::random(),
            ),
            (_, Err(_)) => retry::Next::At(
                now + chrono::TimeDelta::from_std(delay.unwrap_or_default()).unwrap_or_default(),
            ),
        };
        match next {
            retry::Next::Expire(text) => {
                crate::xfer::unbind(msg);
                return self.expire(msg, queue, &text);
            }
            retry::Next::At(due) => info.due = Some(due.timestamp_millis()),
        }
        msg.set_meta(
            crate::xfer::INFO_KEY,
            serde_json::to_value(info).expect("serialises"),
        );
        self.rebound(msg, queue, xfer_queue, "kumo.xfer.xfer in requeue_message");
        self.wait_until(msg, now, xfer_queue);
    }
}
