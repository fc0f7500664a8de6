//! Shared mode: every decision asks Redis while it answers; while it does
//! not, the node decides alone on its split share (limit / the fleet's
//! size), so the fleet never exceeds the limit (it may run below it). The
//! fleet's size is the larger of `fleet_size` and the nodes that last
//! announced themselves in Redis (each does, every second), so a fleet
//! that scaled out splits by its real size. Redis is down from the first
//! failed or slow command until a probe, once a second, gets an answer;
//! each transition is logged once.

use super::batch::Batches;
use super::lease::Lease;
use super::local::LocalThrottles;
use super::metrics::ThrottleMetrics;
use super::redis::{RedisError, RedisStore};
use crate::config::redis::RedisSettings;
use parking_lot::Mutex;
use sluice_common::ThrottleSpec;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Redis, its health, and the node's fallback state.
pub struct Shared {
    store: RedisStore,
    up: AtomicBool,
    fallback: LocalThrottles,
    /// Leases this node holds, by key, however they were granted.
    held: Mutex<HashMap<String, usize>>,
    metrics: Arc<ThrottleMetrics>,
    /// This node's name in lease members.
    node: String,
    serial: AtomicU64,
    /// Nodes alive at the last heartbeat.
    seen: AtomicU32,
    /// Checks waiting for a round trip, by throttle key.
    batches: Arc<Batches>,
}

/// How long a node's heartbeat counts it as alive (it beats every second).
const ALIVE: Duration = Duration::from_secs(5);

impl Shared {
    /// Shared throttles over `settings`; down until [`Shared::probe`]
    /// connects.
    pub fn new(settings: RedisSettings, metrics: Arc<ThrottleMetrics>) -> Arc<Shared> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Arc::new(Shared {
            store: RedisStore::new(settings),
            up: AtomicBool::new(false),
            fallback: LocalThrottles::default(),
            held: Mutex::new(HashMap::new()),
            metrics,
            node: format!("{}-{}", host.trim(), std::process::id()),
            serial: AtomicU64::new(0),
            seen: AtomicU32::new(1),
            batches: Arc::new(Batches::default()),
        })
    }

    /// The Redis connections.
    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    /// Whether Redis answers.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// How many nodes share the limits: the configured size, or more when
    /// more announced themselves.
    pub fn fleet(&self) -> u32 {
        let seen = self.seen.load(Ordering::Relaxed);
        self.store.settings().fleet_size.max(seen)
    }

    /// Connect, then check on Redis once a second for the life of the
    /// process with a heartbeat (which counts the fleet); while Redis is
    /// down, connect afresh first (a broken connection would have to fail
    /// once more).
    pub async fn probe(self: Arc<Self>) {
        loop {
            let result = match self.is_up() {
                false => self.store.connect().await,
                true => Ok(()),
            };
            match result.map(|()| self.store.heartbeat(&self.node, ALIVE)) {
                Ok(beat) => match beat.await {
                    Ok(n) => {
                        self.metrics.fleet_nodes.set(i64::from(n));
                        if self.seen.swap(n, Ordering::Relaxed) != n {
                            tracing::info!(nodes = n, "nodes sharing the throttles");
                        }
                        self.set_up(None)
                    }
                    Err(e) => self.set_up(Some(&e)),
                },
                Err(e) => self.set_up(Some(&e)),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn set_up(&self, failure: Option<&RedisError>) {
        let up = failure.is_none();
        if self.up.swap(up, Ordering::Relaxed) == up {
            return;
        }
        self.metrics.redis_up.set(i64::from(up));
        let nodes = self.store.settings().nodes.join(",");
        match failure {
            None => tracing::info!(
                redis = %nodes,
                redis_cell = self.store.uses_cell(),
                "Redis answers: throttles and connection limits are shared by the fleet"
            ),
            Some(e) => tracing::warn!(
                redis = %nodes,
                fleet_size = self.fleet(),
                "Redis cannot be reached ({e}): each limit is enforced on this node's share until it answers"
            ),
        }
    }

    fn timed<T>(&self, command: &str, started: Instant, r: Result<T, RedisError>) -> Option<T> {
        self.metrics
            .latency
            .with_label_values(&[command])
            .observe(started.elapsed().as_secs_f64());
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.set_up(Some(&e));
                None
            }
        }
    }

    /// One unit of `spec` under `name`, fleet-wide; checks of one throttle
    /// made while a round trip for it is in flight go together in the next.
    pub async fn check(self: &Arc<Self>, name: &str, spec: &ThrottleSpec) -> Option<Duration> {
        if self.is_up() {
            let me = self.clone();
            let spec_ = *spec;
            let call = move |key: String, n: u64| {
                let me = me.clone();
                async move {
                    let started = Instant::now();
                    let r = me.store.check(&key, &spec_, n).await;
                    me.timed("throttle", started, r)
                }
            };
            if let Some(wait) = self.batches.check(&spec.key(name), call).await {
                return wait;
            }
        }
        self.metrics.fallback.inc();
        self.fallback.check(name, &spec.split(self.fleet()))
    }

    /// A lease of one of `limit` connections under `key`, or `None` when
    /// the fleet (or, with Redis down, this node's share) holds them all.
    pub async fn lease(self: &Arc<Self>, key: &str, limit: usize) -> Option<Lease> {
        if self.is_up() {
            let member = format!(
                "{}-{}",
                self.node,
                self.serial.fetch_add(1, Ordering::Relaxed)
            );
            let started = Instant::now();
            let r = self.store.acquire(key, limit, &member).await;
            match self.timed("lease", started, r) {
                Some(true) => {
                    *self.held.lock().entry(key.to_string()).or_default() += 1;
                    return Some(Lease::held(self.clone(), key, Some(member)));
                }
                Some(false) => return None,
                None => {}
            }
        }
        self.metrics.fallback.inc();
        let share = (limit / self.fleet() as usize).max(1);
        let mut held = self.held.lock();
        let n = held.entry(key.to_string()).or_default();
        if *n >= share {
            return None;
        }
        *n += 1;
        drop(held);
        Some(Lease::held(self.clone(), key, None))
    }

    /// A lease of `key` ended.
    pub(super) fn released(&self, key: &str) {
        let mut held = self.held.lock();
        if let Some(n) = held.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(key);
            }
        }
    }
}
