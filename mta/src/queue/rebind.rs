//! `/api/admin/rebind/v1` (KumoMTA's `RebindV1Request`, kcli's `rebind`):
//! take the waiting messages of the matching scheduled queues, apply the
//! request's `data` to their meta (or pass them with it to the policy's
//! `rebind_message` event, which decides), and queue them again. A message
//! whose scheduled queue changed (its `queue`, `tenant`, `campaign` or
//! `routing_domain` meta, or its recipient) logs AdminRebind and is due at
//! once; one whose queue did not keeps its due time unless `always_flush`.
//! The answer comes at once with how many messages were taken; the work
//! goes on in a task, as KumoMTA's does (a large queue takes a while).

use super::QueueManager;
use super::admin::Criteria;
use super::xfer::XferRefused;
use crate::message::{MessageRef, name};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `POST /api/admin/rebind/v1`.
#[derive(Debug, Deserialize)]
pub struct RebindRequest {
    /// Which scheduled queues' messages are rebound; none: all of them.
    #[serde(flatten)]
    pub criteria: Criteria,
    /// Why: in each AdminRebind record.
    pub reason: String,
    /// Write no AdminRebind records.
    #[serde(default)]
    pub suppress_logging: bool,
    /// Meta to set on each message (string keys and values, as KumoMTA's).
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Pass each message and `data` to `rebind_message` instead of setting
    /// the meta.
    #[serde(default)]
    pub trigger_rebind_event: bool,
    /// Make every matched message due now, moved or not.
    #[serde(default)]
    pub always_flush: bool,
}

impl QueueManager {
    /// Take the matching messages and rebind them in a task; returns how
    /// many were taken.
    pub fn admin_rebind(
        self: &Arc<Self>,
        req: RebindRequest,
    ) -> Result<serde_json::Value, XferRefused> {
        let refuse = |text: &str| XferRefused {
            status: 400,
            text: text.to_string(),
        };
        if req.trigger_rebind_event && !self.policy.has_handler("rebind_message") {
            return Err(refuse(
                "trigger_rebind_event: the policy has no rebind_message handler",
            ));
        }
        if req.data.is_empty() && !req.trigger_rebind_event && !req.always_flush {
            return Err(refuse(
                "nothing to do: give data, trigger_rebind_event or always_flush",
            ));
        }
        // an xfer queue's messages are bound for another node: xfer-cancel
        // is what brings them back
        let msgs = self.take_queued(|queue, parts| {
            crate::xfer::target_of(queue).is_none() && req.criteria.matches(queue, parts)
        });
        let count = msgs.len();
        let me = self.clone();
        tokio::spawn(async move {
            for msg in msgs {
                me.rebind_one(&msg, &req).await;
            }
        });
        Ok(serde_json::json!({ "messages": count }))
    }

    async fn rebind_one(self: &Arc<Self>, msg: &MessageRef, req: &RebindRequest) {
        if let Err(e) = self.restore(msg) {
            tracing::error!(id = %msg.id, "cannot restore message meta from the spool: {e}");
        }
        let from = name::queue_name(msg).unwrap_or_default();
        if req.trigger_rebind_event {
            if let Err(e) = self.policy.rebind_event(msg, &req.data).await {
                tracing::error!(id = %msg.id, queue = from, "rebind_message failed: {e}");
            }
        } else {
            for (key, value) in &req.data {
                msg.set_meta(key, value.clone().into());
            }
        }
        let to = match name::queue_name(msg) {
            Ok(q) => q,
            Err(e) => {
                tracing::error!(id = %msg.id, "rebind left no usable queue name: {e}");
                from.clone()
            }
        };
        let moved = to != from;
        if moved && !req.suppress_logging {
            self.rebound(msg, &from, &to, &req.reason);
        }
        if moved || req.always_flush {
            msg.state().due = None;
        }
        self.save_meta(msg);
        self.queue_when_due(msg, &to);
    }
}
