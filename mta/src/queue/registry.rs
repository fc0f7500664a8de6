//! The scheduled queues: found or made by name, their config asked of the
//! policy when new or stale (spec §11), and reaped once idle for their
//! `reap_interval` (KumoMTA's semantics), so that every destination ever
//! seen does not stay in memory.

use super::{QueueError, QueueManager};
use crate::egress::Wrr;
use crate::message::name::QueueName;
use crate::policy::Fetched;
use parking_lot::Mutex;
use sluice_common::queue_config::QueueConfig;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// How often idle queues are looked for.
const REAP_EVERY: Duration = Duration::from_secs(10);

/// One scheduled queue: its name, its config from `get_queue_config`
/// (refreshed when stale), and its place in its pool's source rotation.
pub struct ScheduledQueue {
    /// The full queue name, `campaign:tenant@domain!routing`.
    pub name: String,
    /// The name's parts (domain, tenant, campaign, routing domain), which
    /// admin rules match on.
    pub parts: QueueName,
    config: Mutex<Fetched<QueueConfig>>,
    /// Source selection state over the queue's egress pool.
    pub(super) wrr: Mutex<Wrr>,
    /// When a message last entered or left it, for reaping.
    active: Mutex<Instant>,
}

impl ScheduledQueue {
    /// A queue with this config, outside any registry.
    #[cfg(test)]
    pub(super) fn for_tests(name: &str, config: Fetched<QueueConfig>) -> Self {
        ScheduledQueue {
            name: name.to_string(),
            parts: QueueName::parse(name),
            config: Mutex::new(config),
            wrr: Mutex::new(Wrr::default()),
            active: Mutex::new(Instant::now()),
        }
    }

    /// The queue config now in force.
    pub fn config(&self) -> Arc<QueueConfig> {
        self.config.lock().value.clone()
    }

    pub(super) fn touch(&self) {
        *self.active.lock() = Instant::now();
    }

    /// Nothing waits in it (nothing else holds it: the timer and attempts
    /// being promoted hold the queue of each of their messages) and it has
    /// been idle for its `reap_interval`. Messages in ready queues are
    /// checked by the caller.
    fn reapable(this: &Arc<Self>, now: Instant) -> bool {
        Arc::strong_count(this) == 1
            && now.saturating_duration_since(*this.active.lock()) >= this.config().reap_interval
    }
}

impl QueueManager {
    /// Find or create the scheduled queue `name`, asking the policy for its
    /// config when it is new or stale (its `refresh_interval` has passed, or
    /// with `refresh_strategy = 'Epoch'`, the policy was reloaded).
    pub async fn resolve(&self, name: &str) -> Result<Arc<ScheduledQueue>, QueueError> {
        let existing = self.queues.lock().get(name).cloned();
        let epoch = self.policy.epoch();
        if let Some(q) = &existing {
            q.touch();
            let fetched = q.config.lock();
            let c = &fetched.value;
            if fetched.is_fresh(c.refresh_strategy, c.refresh_interval, epoch) {
                return Ok(q.clone());
            }
        }
        let parts = QueueName::parse(name);
        let config = if name == super::deferred::DEFERRED_QUEUE {
            Ok(super::deferred::queue_config())
        } else if let Some(target) = crate::xfer::target_of(name) {
            Ok(crate::xfer::queue_config(target))
        } else {
            self.policy
                .get_queue_config(
                    &parts.domain,
                    parts.tenant.as_deref(),
                    parts.campaign.as_deref(),
                    parts.routing_domain.as_deref(),
                )
                .await
        };
        let config = match (config, &existing) {
            (Ok(c), _) => Arc::new(c),
            // a failing refresh keeps the old config (spec §11)
            (Err(e), Some(q)) => {
                tracing::error!(
                    queue = name,
                    "get_queue_config failed, keeping previous config: {e}"
                );
                *q.config.lock() = Fetched::new(q.config(), epoch);
                return Ok(q.clone());
            }
            (Err(source), None) => {
                return Err(QueueError::Config {
                    queue: name.to_string(),
                    source,
                });
            }
        };
        if let Some(q) = existing {
            *q.config.lock() = Fetched::new(config, epoch);
            return Ok(q);
        }
        let q = Arc::new(ScheduledQueue {
            name: name.to_string(),
            parts,
            config: Mutex::new(Fetched::new(config, epoch)),
            wrr: Mutex::new(Wrr::default()),
            active: Mutex::new(Instant::now()),
        });
        Ok(self
            .queues
            .lock()
            .entry(name.to_string())
            .or_insert(q)
            .clone())
    }

    /// The scheduled queue `name`, if it has been resolved.
    pub(super) fn scheduled(&self, name: &str) -> Option<Arc<ScheduledQueue>> {
        self.queues.lock().get(name).cloned()
    }

    /// How many scheduled queues exist now.
    pub fn queue_count(&self) -> usize {
        self.queues.lock().len()
    }

    /// Drop the idle scheduled queues, and the idle ready queues of egress;
    /// how many of each went.
    pub fn reap(&self) -> (usize, usize) {
        let now = Instant::now();
        let in_ready_queues = self.egress.queues_waiting();
        let mut queues = self.queues.lock();
        let before = queues.len();
        queues
            .retain(|name, q| in_ready_queues.contains(name) || !ScheduledQueue::reapable(q, now));
        let scheduled = before - queues.len();
        drop(queues);
        (scheduled, self.egress.reap())
    }

    /// Runs while the engine lives.
    pub(super) async fn reaper(me: Weak<QueueManager>) {
        loop {
            tokio::time::sleep(REAP_EVERY).await;
            let Some(me) = me.upgrade() else {
                return;
            };
            let (scheduled, ready) = me.reap();
            if scheduled + ready > 0 {
                tracing::debug!(scheduled, ready, "reaped idle queues");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::duration::parse_duration;

    fn queue(reap_interval: &str) -> Arc<ScheduledQueue> {
        let config = QueueConfig {
            reap_interval: parse_duration(reap_interval).unwrap(),
            ..QueueConfig::default()
        };
        Arc::new(ScheduledQueue::for_tests(
            "example.com",
            Fetched::new(Arc::new(config), 1),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_queue_is_reapable_after_its_reap_interval() {
        let q = queue("10m");
        assert!(!ScheduledQueue::reapable(&q, Instant::now()));
        tokio::time::advance(Duration::from_secs(599)).await;
        assert!(!ScheduledQueue::reapable(&q, Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(ScheduledQueue::reapable(&q, Instant::now()));
        // use starts the interval again
        q.touch();
        assert!(!ScheduledQueue::reapable(&q, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_something_holds_is_never_reaped() {
        let q = queue("1s");
        // as a timer entry or an attempt in flight holds its queue
        let held = q.clone();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!ScheduledQueue::reapable(&q, Instant::now()));
        drop(held);
        assert!(ScheduledQueue::reapable(&q, Instant::now()));
    }
}
