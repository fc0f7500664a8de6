//! One ready queue per egress path (source × site × protocol): the messages
//! due for that path, in order, and how many connections serve them.

use super::Ready;
use crate::delivery::Deliver;
use crate::policy::Fetched;
use parking_lot::Mutex;
use sluice_common::egress::{EgressPathConfig, EgressSource};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The messages due on one egress path, in order, with the path's config and
/// a count of the connections serving them.
pub struct ReadyQueue {
    /// `source->site@protocol`.
    pub name: String,
    /// The egress source its connections send from.
    pub source: Arc<EgressSource>,
    /// The site name (SMTP), or the routing domain or queue the protocol
    /// delivers for.
    pub site: String,
    /// The protocol its connections drive.
    pub deliver: Arc<dyn Deliver>,
    /// What the path config hook gave, and when.
    pub(super) config: Mutex<Fetched<EgressPathConfig>>,
    /// That config with shaping's replaced settings applied.
    in_force: Mutex<Arc<EgressPathConfig>>,
    items: Mutex<VecDeque<Ready>>,
    connections: AtomicUsize,
    pub(super) work: Notify,
    /// When it last held a message or ran a connection, and how long it
    /// then stays: the `reap_interval` of the queue that fed it last.
    active: Mutex<Instant>,
    reap_after: Mutex<std::time::Duration>,
}

/// Connections wanted for `queued` ready messages under `limit` (spec §4.4):
/// a ramp, so a few messages do not open every allowed connection.
pub fn wanted_connections(queued: usize, limit: usize) -> usize {
    let ideal = (limit as f64 * (1.0 - (-0.023 * queued as f64).exp())).ceil() as usize;
    queued.min(ideal.max(1)).min(limit)
}

impl ReadyQueue {
    pub(super) fn new(
        name: String,
        source: Arc<EgressSource>,
        site: String,
        deliver: Arc<dyn Deliver>,
        config: Fetched<EgressPathConfig>,
    ) -> Self {
        ReadyQueue {
            name,
            source,
            site,
            deliver,
            in_force: Mutex::new(config.value.clone()),
            config: Mutex::new(config),
            items: Mutex::new(VecDeque::new()),
            connections: AtomicUsize::new(0),
            work: Notify::new(),
            active: Mutex::new(Instant::now()),
            reap_after: Mutex::new(std::time::Duration::from_secs(600)),
        }
    }

    pub(super) fn set_reap_after(&self, after: std::time::Duration) {
        *self.reap_after.lock() = after;
    }

    /// The path config now in force (refreshed when stale, on the next
    /// submit), with shaping's replaced settings.
    pub fn config(&self) -> Arc<EgressPathConfig> {
        self.in_force.lock().clone()
    }

    /// Its path, `source->site` (the name without `@protocol`): what
    /// suspensions and replaced settings are kept by.
    pub fn path(&self) -> &str {
        self.name.rsplit_once('@').map_or(&self.name, |(p, _)| p)
    }

    /// The path config as its hook gave it.
    pub(super) fn base_config(&self) -> Arc<EgressPathConfig> {
        self.config.lock().value.clone()
    }

    pub(super) fn set_in_force(&self, config: Arc<EgressPathConfig>) {
        *self.in_force.lock() = config;
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.items.lock().len()
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many connections serve it now.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    pub(super) fn pop(&self) -> Option<Ready> {
        self.items.lock().pop_front()
    }

    pub(super) fn push_front(&self, item: Ready) {
        self.items.lock().push_front(item);
    }

    /// Add `item` unless `max_ready` are waiting; the number now waiting.
    pub(super) fn push(&self, item: Ready) -> Result<usize, Ready> {
        let mut items = self.items.lock();
        if items.len() >= self.config().max_ready {
            return Err(item);
        }
        items.push_back(item);
        *self.active.lock() = Instant::now();
        Ok(items.len())
    }

    /// Claim a connection slot if fewer than `wanted` run.
    pub(super) fn claim_connection(&self, wanted: usize) -> bool {
        loop {
            let current = self.connections.load(Ordering::Acquire);
            if current >= wanted {
                return false;
            }
            if self
                .connections
                .compare_exchange(current, current + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return true;
            }
        }
    }

    /// A connection ended: `true` when it should be replaced at once
    /// (work arrived after it decided to stop, and no other runs).
    pub(super) fn release_connection(&self) -> bool {
        self.connections.fetch_sub(1, Ordering::AcqRel);
        *self.active.lock() = Instant::now();
        !self.is_empty()
            && self
                .connections
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Release the bodies of the spooled messages waiting here (not those a
    /// connection has taken); how many went.
    pub fn release_bodies(&self) -> usize {
        let items = self.items.lock();
        items.iter().filter(|item| item.msg.release_body()).count()
    }

    /// Take out the waiting messages `f` selects.
    pub fn take_matching(&self, f: impl Fn(&Ready) -> bool) -> Vec<Ready> {
        let mut items = self.items.lock();
        let (taken, kept): (Vec<Ready>, Vec<Ready>) = items.drain(..).partition(|i| f(i));
        items.extend(kept);
        taken
    }

    /// Look at every waiting message.
    pub fn for_each(&self, mut f: impl FnMut(&Ready)) {
        self.items.lock().iter().for_each(&mut f);
    }

    /// Take every waiting message out (to send them back to their queues).
    pub fn drain(&self) -> Vec<Ready> {
        self.items.lock().drain(..).collect()
    }

    /// Idle for its reap interval: no message, no connection, nothing since.
    pub(super) fn reapable(&self, now: Instant) -> bool {
        let idle_for = now.saturating_duration_since(*self.active.lock());
        self.is_empty() && self.connection_count() == 0 && idle_for >= *self.reap_after.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_ramp_up_with_the_backlog_and_stop_at_the_limit() {
        let ramp: Vec<usize> = [0, 1, 2, 10, 30, 100, 1000]
            .iter()
            .map(|&q| wanted_connections(q, 32))
            .collect();
        assert_eq!(ramp, vec![0, 1, 2, 7, 16, 29, 32]);
        assert_eq!(wanted_connections(1000, 2), 2);
        assert_eq!(wanted_connections(5, 1), 1);
        // never more connections than messages
        assert!((0..200).all(|q| wanted_connections(q, 32) <= q));
    }

    struct Nothing;
    impl Deliver for Nothing {
        fn label(&self) -> String {
            "nothing".into()
        }
        fn connect<'a>(
            &'a self,
            _: &'a crate::delivery::Path,
        ) -> crate::delivery::BoxFuture<
            'a,
            Result<Box<dyn crate::delivery::Session>, crate::delivery::Refused>,
        > {
            unreachable!("not connected in these tests")
        }
    }

    fn ready_queue(max_ready: usize, limit: usize) -> ReadyQueue {
        let config = EgressPathConfig {
            max_ready,
            connection_limit: sluice_common::egress::ConnectionLimit {
                limit,
                force_local: false,
            },
            ..EgressPathConfig::default()
        };
        ReadyQueue::new(
            "unspecified->site@nothing".into(),
            Arc::new(serde_json::from_value(serde_json::json!({ "name": "unspecified" })).unwrap()),
            "site".into(),
            Arc::new(Nothing),
            Fetched::new(Arc::new(config), 1),
        )
    }

    fn item() -> Ready {
        Ready {
            msg: crate::message::Message::new(
                crate::message::MessageId::new(),
                "s@x".into(),
                vec!["r@y".into()],
                Default::default(),
                vec![],
            ),
            queue: "y".into(),
            config: Default::default(),
        }
    }

    #[test]
    fn a_full_ready_queue_refuses_and_gives_the_message_back() {
        let rq = ready_queue(2, 1);
        assert_eq!(rq.push(item()).ok(), Some(1));
        assert_eq!(rq.push(item()).ok(), Some(2));
        let refused = rq.push(item());
        assert!(refused.is_err(), "max_ready = 2");
        assert_eq!(rq.len(), 2);
        rq.pop();
        assert!(rq.push(refused.err().unwrap()).is_ok(), "room again");
    }

    #[test]
    fn connection_slots_are_claimed_up_to_what_is_wanted() {
        let rq = ready_queue(10, 3);
        assert!(rq.claim_connection(2));
        assert!(rq.claim_connection(2));
        assert!(!rq.claim_connection(2), "two wanted, two running");
        assert_eq!(rq.connection_count(), 2);
        // the last one to stop with work left restarts a connection
        rq.push(item()).ok().unwrap();
        assert!(!rq.release_connection(), "another still runs");
        assert!(rq.release_connection(), "none runs and a message waits");
        assert_eq!(rq.connection_count(), 1);
    }
}
