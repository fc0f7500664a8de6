//! `smtp_client_rewrite_delivery_status` on a destination's refusals: the
//! policy may read a reply as another code (KumoMTA's example: a full
//! mailbox as permanent for notifications that will not be missed). The
//! rewritten reply says so in its text, so the logs show both codes. A
//! handler that fails leaves the reply as it was, and is counted with the
//! other hook failures.

use super::client::Reply;
use crate::message::MessageRef;
use crate::message::name::{QueueName, queue_name};
use crate::policy::Policy;

const EVENT: &str = "smtp_client_rewrite_delivery_status";

/// `reply` for `msg`, as the policy would have it counted.
pub async fn status(policy: &Policy, msg: &MessageRef, reply: &Reply) -> Reply {
    if (200..300).contains(&reply.code) || !policy.has_handler(EVENT) {
        return reply.clone();
    }
    let queue = match queue_name(msg) {
        Ok(q) => QueueName::parse(&q),
        Err(_) => return reply.clone(),
    };
    let line = format!("{} {}", reply.code, reply.text.replace('\n', "\\r\\n"));
    match policy.rewrite_delivery_status(&line, &queue).await {
        Ok(Some(code)) if code != reply.code => Reply {
            code,
            text: format!(
                "{} (kumomta: status was rewritten from {} -> {code})",
                reply.text, reply.code
            ),
        },
        Ok(_) => reply.clone(),
        Err(e) => {
            tracing::warn!("{EVENT} failed, keeping {}: {e}", reply.code);
            crate::policy::hook_errors::record(EVENT, &e.to_string());
            reply.clone()
        }
    }
}
