//! `smtp_server_rewrite_response` for a session: every reply passes
//! through the policy's handler before it is sent (only when the policy
//! has one). A handler that fails is logged and counted, and the reply goes
//! out as it was: it cannot break the session, as in KumoMTA.

use crate::listener::io::{Rewrite, Rewritten};
use crate::policy::{ConnMeta, Policy};
use std::sync::Arc;

const EVENT: &str = "smtp_server_rewrite_response";

/// The policy's handler, with the session's connection meta.
pub struct PolicyRewrite {
    pub policy: Arc<Policy>,
    pub meta: ConnMeta,
}

impl PolicyRewrite {
    /// A rewriter when the policy has a handler for the event.
    pub fn for_session(policy: &Arc<Policy>, meta: &ConnMeta) -> Option<Arc<dyn Rewrite>> {
        policy.has_handler(EVENT).then(|| {
            Arc::new(PolicyRewrite {
                policy: policy.clone(),
                meta: meta.clone(),
            }) as Arc<dyn Rewrite>
        })
    }
}

impl Rewrite for PolicyRewrite {
    fn rewrite<'a>(&'a self, code: u16, text: &'a str, command: Option<&'a str>) -> Rewritten<'a> {
        Box::pin(async move {
            match self
                .policy
                .rewrite_response(code, text, command, &self.meta)
                .await
            {
                Ok((None, None)) => None,
                Ok((new, new_text)) => Some((
                    new.unwrap_or(code),
                    new_text.unwrap_or_else(|| text.to_string()),
                )),
                Err(e) => {
                    tracing::warn!("{EVENT} failed, sending {code} as it was: {e}");
                    crate::policy::hook_errors::record(EVENT, &e.to_string());
                    None
                }
            }
        })
    }
}
