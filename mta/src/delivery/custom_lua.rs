//! custom_lua delivery (spec §5.3): a session is the object the queue's
//! constructor event returns; `send` (or `send_batch`) answers with a
//! disposition string for success, or `kumo.reject` for a failure.

use super::{Attempt, Batch, BoxFuture, Deliver, Outcome, Path, Refused, Sent, Session};
use crate::log::{PeerAddress, Response};
use crate::message::MessageRef;
use crate::policy::{EventError, LuaConnection, Policy};
use std::sync::Arc;

/// The constructor of one queue; it gets the (domain, tenant, campaign) of
/// the scheduled queue that created the ready queue, as KumoMTA passes one
/// representative feeding queue.
pub struct LuaDeliver {
    /// The policy version whose Lua runs the constructor and the session's
    /// `send`.
    pub policy: Arc<Policy>,
    /// The event the queue's custom_lua protocol names; its handler returns the
    /// connection object.
    pub constructor: String,
    /// The domain of the scheduled queue, passed to the constructor.
    pub domain: String,
    /// The tenant of the scheduled queue, if any, passed to the constructor.
    pub tenant: Option<String>,
    /// The campaign of the scheduled queue, if any, passed to the constructor.
    pub campaign: Option<String>,
    /// How many messages one send takes (`batch_size`, `min_batch_size`,
    /// `max_batch_latency`); more than one means `send_batch`.
    pub batch: Batch,
}

impl Deliver for LuaDeliver {
    fn label(&self) -> String {
        format!("lua:{}", self.constructor)
    }

    fn batch(&self) -> Batch {
        self.batch.clone()
    }

    fn connect<'a>(&'a self, _path: &'a Path) -> BoxFuture<'a, Result<Box<dyn Session>, Refused>> {
        Box::pin(async move {
            let conn = self
                .policy
                .lua_connection(
                    &self.constructor,
                    &self.domain,
                    self.tenant.as_deref(),
                    self.campaign.as_deref(),
                )
                .await
                .map_err(|e| Refused {
                    code: 400,
                    text: format!(
                        "KumoMTA internal: failed to connect to any candidate hosts: {e}"
                    ),
                })?;
            let peer = PeerAddress {
                name: format!("Lua via {}", self.constructor),
                addr: "0.0.0.0".into(),
            };
            Ok(Box::new(LuaSession {
                conn,
                peer,
                batch: self.batch.size > 1,
            }) as Box<dyn Session>)
        })
    }
}

struct LuaSession {
    conn: LuaConnection,
    peer: PeerAddress,
    /// `send_batch` rather than `send`.
    batch: bool,
}

/// A send result as a recipient outcome, and whether the session ends.
pub fn outcome(result: &Result<String, EventError>) -> (Outcome, bool) {
    match result {
        Ok(text) => (Outcome::Delivered(Response::new(200, text)), false),
        Err(EventError::Rejected { code, text }) if (400..500).contains(code) => {
            (Outcome::Transient(Response::new(*code, text)), *code == 421)
        }
        Err(EventError::Rejected { code, text }) => {
            (Outcome::Bounced(Response::new(*code, text)), false)
        }
        Err(EventError::Failed(e)) => (
            Outcome::Transient(Response::new(
                400,
                &format!("KumoMTA internal: error in deliver_message: {e}"),
            )),
            true,
        ),
    }
}

impl Session for LuaSession {
    fn send<'a>(&'a mut self, msgs: &'a [MessageRef]) -> BoxFuture<'a, Sent> {
        Box::pin(async move {
            let result = match (self.batch, msgs) {
                (false, [one]) => self.conn.send(one).await,
                _ => self.conn.send_batch(msgs).await,
            };
            // one disposition (or rejection) for the whole batch
            let (outcome, close) = outcome(&result);
            if close {
                self.conn.close().await;
            }
            let attempts = msgs
                .iter()
                .map(|m| {
                    Attempt::for_all(
                        "Lua",
                        Some(self.peer.clone()),
                        m.recipients(),
                        outcome.clone(),
                    )
                })
                .collect();
            Sent { attempts, close }
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.conn.close().await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_results_become_outcomes_and_421_or_errors_end_the_session() {
        let rejected = |code: u16| {
            Err(EventError::Rejected {
                code,
                text: format!("{code} text"),
            })
        };
        let cases: Vec<(Result<String, EventError>, &str, bool)> = vec![
            (Ok("queued as 12".into()), "delivered", false),
            (rejected(450), "transient", false),
            (rejected(421), "transient", true),
            (rejected(550), "bounced", false),
            (Err(EventError::Failed("boom".into())), "transient", true),
        ];
        for (result, want, closes) in cases {
            let (o, close) = outcome(&result);
            let kind = match o {
                Outcome::Delivered(_) => "delivered",
                Outcome::Transient(_) => "transient",
                Outcome::Bounced(_) => "bounced",
            };
            assert_eq!((kind, close), (want, closes), "{result:?}");
        }
    }
}
