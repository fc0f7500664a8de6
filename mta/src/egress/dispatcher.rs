//! A ready queue's connections (spec §4.4): each takes work, opens a
//! session through the queue's [`Deliver`], sends until the session ends,
//! the path's `max_deliveries_per_connection` is reached or no work comes
//! for `idle_timeout`, then lets another take over. The path's message and
//! connection rates pace it; a wait longer than `idle_timeout` hands the
//! queue's messages back to their scheduled queues. Every attempt is
//! reported through [`super::Outcomes`]. The same loop serves every
//! protocol.

use super::ready::ReadyQueue;
use super::{Egress, Ready};
use crate::delivery::{Attempt, Batch, Outcome, Path};
use crate::log::Response;
use crate::throttle::{Kind, Lease};
use sluice_common::egress::EgressPathConfig;
use std::sync::Arc;
use std::time::Duration;

/// Start a connection task for `rq` (its slot already claimed).
pub(super) fn spawn(egress: Arc<Egress>, rq: Arc<ReadyQueue>) {
    tokio::spawn(run(egress, rq));
}

/// An attempt that failed before reaching the peer: one outcome for all.
fn failed(item: &Ready, outcome: Outcome) -> Attempt {
    Attempt::for_all("ESMTP", None, item.msg.recipients(), outcome)
}

/// Wait for work for up to `idle`; `None` when none came or a drain began.
async fn next_item(egress: &Egress, rq: &ReadyQueue, idle: Duration) -> Option<Ready> {
    let deadline = tokio::time::Instant::now() + idle;
    loop {
        if egress.lifecycle.is_draining() {
            return None;
        }
        let notified = rq.work.notified();
        if let Some(item) = rq.pop() {
            return Some(item);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return rq.pop();
        }
    }
}

/// One connection's life.
async fn run(egress: Arc<Egress>, rq: Arc<ReadyQueue>) {
    let _busy = egress.lifecycle.delivery();
    let batch = rq.deliver.batch();
    let mut failures = 0usize;
    'connections: loop {
        let config = rq.config();
        let Some(first) = next_item(&egress, &rq, config.idle_timeout).await else {
            break;
        };
        if let Some(rate) = &config.max_connection_rate
            && let Some(wait) = egress
                .throttles
                .check(
                    Kind::ConnectionRate,
                    &format!("{}-connection-rate", rq.name),
                    rate,
                )
                .await
        {
            if wait < config.idle_timeout {
                rq.push_front(first);
                tokio::time::sleep(wait).await;
                continue;
            }
            egress.hand_back(&rq, vec![first], wait);
            break;
        }
        let path = Path {
            name: rq.name.clone(),
            source: rq.source.clone(),
            config: config.clone(),
        };
        // the fleet-wide leases of this connection (with Redis), then the
        // node's named limits, all held for the session
        let Some(leases) = leases(&egress, &rq, &config).await else {
            rq.push_front(first);
            tokio::time::sleep(LEASE_RETRY).await;
            continue;
        };
        let mut shared = vec![];
        for (name, limit) in &config.additional_connection_limits {
            let sem = egress.named_limit(name, limit.limit.max(1));
            shared.push(sem.acquire_owned().await.expect("never closed"));
        }
        let mut session = match rq.deliver.connect(&path).await {
            Ok(s) => s,
            Err(refused) => {
                failures += 1;
                let mut items = vec![first];
                let give_up = refused.code >= 500
                    || failures > config.consecutive_connection_failures_before_delay;
                if give_up {
                    items.extend(std::iter::from_fn(|| rq.pop()));
                    failures = 0;
                }
                for item in &items {
                    let resp = Response::new(refused.code, &refused.text);
                    let outcome = match refused.code >= 500 {
                        true => Outcome::Bounced(resp),
                        false => Outcome::Transient(resp),
                    };
                    egress.complete(item, &rq, failed(item, outcome)).await;
                }
                continue;
            }
        };
        failures = 0;
        let mut delivered = 0;
        let mut next = Some(first);
        while let Some(first) = next.take() {
            let (items, throttled) = gather(&egress, &rq, first, &batch).await;
            let mut sendable = Vec::with_capacity(items.len());
            for item in items {
                match egress.load_body(&item.msg) {
                    Ok(()) => sendable.push(item),
                    Err(e) => {
                        let text = format!("KumoMTA internal: cannot read spooled body: {e}");
                        let attempt = failed(&item, Outcome::Transient(Response::new(400, &text)));
                        egress.complete(&item, &rq, attempt).await;
                    }
                }
            }
            if !sendable.is_empty() {
                let msgs: Vec<_> = sendable.iter().map(|i| i.msg.clone()).collect();
                let sent = session.send(&msgs).await;
                for (item, attempt) in sendable.iter().zip(sent.attempts) {
                    egress.complete(item, &rq, attempt).await;
                }
                delivered += sendable.len();
                if sent.close {
                    // unusable (a 421, a broken connection): dropped, not closed
                    drop(session);
                    continue 'connections;
                }
            }
            if throttled {
                session.close().await;
                break 'connections;
            }
            if leases.iter().any(Lease::lost) {
                // another node may hold this connection's lease now
                session.close().await;
                continue 'connections;
            }
            if delivered >= config.max_deliveries_per_connection {
                session.close().await;
                continue 'connections;
            }
            // the path's settings changed (a refresh, shaping's SetConfig):
            // the next connection runs on them
            let now = rq.config();
            if !Arc::ptr_eq(&now, &config) && *now != *config {
                session.close().await;
                continue 'connections;
            }
            // a fleet-wide lease held by an idle connection is one another
            // node with work cannot have: idle briefly, then give it back
            let idle = match leases.iter().any(Lease::is_shared) {
                true => config.idle_timeout.min(SHARED_IDLE),
                false => config.idle_timeout,
            };
            next = next_item(&egress, &rq, idle).await;
        }
        session.close().await;
        if rq.is_empty() {
            break;
        }
    }
    if rq.release_connection() {
        spawn(egress.clone(), rq.clone());
    }
}

/// The next send's messages, starting with `first`: what is ready now, then
/// waiting up to the batch's `max_latency` for at least its `min`; each
/// paced by the path's rates. `true` when a throttle handed the rest back
/// to the scheduled queues.
async fn gather(
    egress: &Arc<Egress>,
    rq: &ReadyQueue,
    first: Ready,
    batch: &Batch,
) -> (Vec<Ready>, bool) {
    let mut items = vec![];
    let deadline = tokio::time::Instant::now() + batch.max_latency;
    let mut next = Some(first);
    while let Some(item) = next.take() {
        match pace(egress, rq, item).await {
            Some(item) => items.push(item),
            None => return (items, true),
        }
        if items.len() >= batch.size {
            break;
        }
        next = match rq.pop() {
            Some(item) => Some(item),
            None if items.len() >= batch.min => None,
            None => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    None
                } else {
                    next_item(egress, rq, left).await
                }
            }
        };
    }
    (items, false)
}

/// Honour the path's message rates before sending `item`: wait when the
/// throttle asks for less than `idle_timeout`, then ask again (the wait
/// consumed nothing); otherwise hand `item` and everything ready back to
/// the scheduled queues and return `None`. The rates are the path's as they
/// are now, not as they were when the connection opened: a rate shaping
/// set or lifted applies from the next message.
async fn pace(egress: &Arc<Egress>, rq: &ReadyQueue, item: Ready) -> Option<Ready> {
    loop {
        let config = rq.config();
        match path_rate_wait(egress, rq, &config).await {
            Some(wait) if wait >= config.idle_timeout => {
                egress.hand_back(rq, vec![item], wait);
                return None;
            }
            Some(wait) => tokio::time::sleep(wait).await,
            None => return Some(item),
        }
    }
}

/// The first wait one of the path's message-rate throttles asks for.
async fn path_rate_wait(
    egress: &Egress,
    rq: &ReadyQueue,
    config: &EgressPathConfig,
) -> Option<Duration> {
    for (name, spec) in config.message_rate_throttles() {
        let key = if name == "max_message_rate" {
            format!("kumomta.max_message_rate.{}", rq.name)
        } else {
            format!("kumomta.{name}.{}", rq.name)
        };
        if let Some(wait) = egress.throttles.check(Kind::PathRate, &key, &spec).await {
            return Some(wait);
        }
    }
    None
}

/// How long a connection that found every fleet-wide lease taken waits
/// before asking again.
const LEASE_RETRY: Duration = Duration::from_secs(1);

/// The longest a connection holding a fleet-wide lease waits for work.
const SHARED_IDLE: Duration = Duration::from_secs(1);

/// The fleet-wide leases a new connection of `rq` needs: its path's
/// `connection_limit` and each of `additional_connection_limits`; all or
/// none.
async fn leases(egress: &Egress, rq: &ReadyQueue, config: &EgressPathConfig) -> Option<Vec<Lease>> {
    let limit = &config.connection_limit;
    let path_key = format!("kumomta.connection_limit.{}", rq.name);
    let mut wanted = vec![(path_key, limit.limit, limit.force_local)];
    for (name, l) in &config.additional_connection_limits {
        let key = format!("kumomta.connection_limit.{name}");
        wanted.push((key, l.limit, l.force_local));
    }
    let mut held = Vec::with_capacity(wanted.len());
    for (key, limit, local) in wanted {
        held.push(egress.throttles.lease(&key, limit, local).await?);
    }
    Some(held)
}

impl Egress {
    /// The shared limit `name` of `limit` connections; a changed limit
    /// starts a new one (sessions holding the old one keep it until done).
    pub(super) fn named_limit(&self, name: &str, limit: usize) -> Arc<tokio::sync::Semaphore> {
        let mut limits = self.limits.lock();
        match limits.get(name) {
            Some((n, sem)) if *n == limit => sem.clone(),
            _ => {
                let sem = Arc::new(tokio::sync::Semaphore::new(limit));
                limits.insert(name.to_string(), (limit, sem.clone()));
                sem
            }
        }
    }
}
