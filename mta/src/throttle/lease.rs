//! A connection lease: the right to hold one connection of a fleet-wide
//! `connection_limit`. Held in Redis, renewed every third of its TTL while
//! the connection lives, given back when it ends; a node that dies stops
//! renewing and its leases expire. While Redis is down a node leases from
//! its split share alone.

use super::shared::Shared;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// One held lease; dropping it gives it back.
pub struct Lease {
    held: Option<Held>,
}

struct Held {
    shared: Arc<Shared>,
    key: String,
    /// The Redis member, when Redis granted it.
    member: Option<String>,
    lost: Arc<AtomicBool>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Lease {
    /// No fleet-wide limit applies: the node's own limits decide.
    pub fn unshared() -> Lease {
        Lease { held: None }
    }

    /// A lease of `key` that `shared` counts; `member` when Redis holds it.
    pub(super) fn held(shared: Arc<Shared>, key: &str, member: Option<String>) -> Lease {
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = member.as_ref().map(|m| {
            let (shared, key, member, lost) =
                (shared.clone(), key.to_string(), m.clone(), lost.clone());
            tokio::spawn(async move {
                let every = shared.store().settings().lease_ttl / 3;
                loop {
                    tokio::time::sleep(every).await;
                    // an error is Redis being away: the lease lives on
                    // until its TTL, and the next renewal tells
                    if let Ok(false) = shared.store().renew(&key, &member).await {
                        lost.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            })
        });
        Lease {
            held: Some(Held {
                shared,
                key: key.to_string(),
                member,
                lost,
                renewer,
            }),
        }
    }

    /// Whether the fleet shares this lease (Redis granted it): holding it
    /// idle keeps it from other nodes.
    pub fn is_shared(&self) -> bool {
        self.held.as_ref().is_some_and(|h| h.member.is_some())
    }

    /// The lease expired before it could be renewed (Redis was away longer
    /// than its TTL): another node may hold it now, so the connection
    /// should end after its current transaction.
    pub fn lost(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|h| h.lost.load(Ordering::Relaxed))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        self.shared.released(&self.key);
        if let Some(member) = self.member.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (shared, key) = (self.shared.clone(), std::mem::take(&mut self.key));
            // best effort: unreleased, it expires within its TTL
            rt.spawn(async move { shared.store().release(&key, &member).await });
        }
    }
}
