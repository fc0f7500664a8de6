//! Rate throttles (GCRA, spec §2.3) and fleet-wide connection limits.
//! Everything that throttles (scheduled queues' `max_message_rate`, egress
//! paths' message and connection rates, the policy's own
//! `kumo.make_throttle`) asks [`Throttles`], which keeps the state on this
//! node, or, after `kumo.configure_redis_throttles`, in Redis for every node
//! that uses it (a `local:` spec stays per node either way).

pub mod batch;
pub mod lease;
pub mod local;
pub mod metrics;
pub mod redis;
pub mod shared;

pub use lease::Lease;
pub use local::LocalThrottles;

use crate::config::redis::RedisSettings;
use metrics::ThrottleMetrics;
use redis::RedisStore;
use shared::Shared;
use sluice_common::ThrottleSpec;
use std::sync::Arc;
use std::time::Duration;

/// What a check throttles: a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A scheduled queue's `max_message_rate`.
    QueueRate,
    /// An egress path's `max_message_rate` or `additional_message_rate_throttles`.
    PathRate,
    /// An egress path's `max_connection_rate`.
    ConnectionRate,
    /// `kumo.make_throttle` in the policy.
    Policy,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::QueueRate => "queue_rate",
            Kind::PathRate => "path_rate",
            Kind::ConnectionRate => "connection_rate",
            Kind::Policy => "policy",
        }
    }
}

/// The node's throttles: local state, and Redis when configured.
pub struct Throttles {
    local: LocalThrottles,
    shared: Option<Arc<Shared>>,
    metrics: Arc<ThrottleMetrics>,
}

impl Throttles {
    /// Node-local throttles with unregistered metrics (tests, tools).
    pub fn local() -> Throttles {
        Throttles::new(Arc::new(ThrottleMetrics::unregistered()), None)
    }

    /// Throttles reporting to `metrics`; shared through Redis when
    /// `redis` is given (call [`Throttles::start`] to connect).
    pub fn new(metrics: Arc<ThrottleMetrics>, redis: Option<RedisSettings>) -> Throttles {
        Throttles {
            local: LocalThrottles::default(),
            shared: redis.map(|s| Shared::new(s, metrics.clone())),
            metrics,
        }
    }

    /// Connect to Redis and watch it, in the background (the MTA runs on
    /// split shares until it answers).
    pub fn start(&self) {
        if let Some(s) = &self.shared {
            tokio::spawn(s.clone().probe());
        }
    }

    /// The fleet's Redis when configured and answering.
    pub fn shared_store(&self) -> Option<&RedisStore> {
        self.shared
            .as_ref()
            .filter(|s| s.is_up())
            .map(|s| s.store())
    }

    /// Whether Redis is configured (answering or not).
    pub fn is_fleet(&self) -> bool {
        self.shared.is_some()
    }

    /// The mode in force, for status and logs.
    pub fn mode(&self) -> &'static str {
        match &self.shared {
            None => "local",
            Some(s) if s.is_up() => "shared",
            Some(_) => "split",
        }
    }

    /// Check (and on success consume) one unit of `spec` under `name`:
    /// `None` when allowed now, `Some(wait)` when throttled for `wait`.
    pub async fn check(&self, kind: Kind, name: &str, spec: &ThrottleSpec) -> Option<Duration> {
        let wait = match &self.shared {
            Some(s) if !spec.force_local => s.check(name, spec).await,
            _ => self.local.check(name, spec),
        };
        let outcome = if wait.is_none() { "allowed" } else { "delayed" };
        self.metrics
            .decisions
            .with_label_values(&[kind.label(), outcome])
            .inc();
        wait
    }

    /// A lease of one of `limit` connections under `key` when connection
    /// limits are shared (and this one is not `local:`); `None` when the
    /// fleet holds them all. Without Redis the node's own limits decide and
    /// this always grants.
    pub async fn lease(&self, key: &str, limit: usize, force_local: bool) -> Option<Lease> {
        let Some(s) = self.shared.as_ref().filter(|_| !force_local) else {
            return Some(Lease::unshared());
        };
        let lease = s.lease(key, limit).await;
        let outcome = if lease.is_some() {
            "granted"
        } else {
            "refused"
        };
        self.metrics.leases.with_label_values(&[outcome]).inc();
        lease
    }
}
