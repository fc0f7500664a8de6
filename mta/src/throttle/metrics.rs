//! What the throttles report: decisions by kind and outcome, and, with
//! Redis, whether it answers, how fast, and how often a node decided alone.

use crate::metrics::{counter, counter_vec, gauge};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};

/// The throttle layer's metrics (bounded labels: a handful of kinds,
/// outcomes and commands).
pub struct ThrottleMetrics {
    /// `sluice_throttle_decisions_total{kind, outcome}`: allowed or delayed.
    pub decisions: IntCounterVec,
    /// `sluice_connection_leases_total{outcome}`: granted or refused.
    pub leases: IntCounterVec,
    /// `sluice_redis_up`: 1 while Redis answers (0 without Redis).
    pub redis_up: IntGauge,
    /// `sluice_fleet_nodes`: the nodes sharing the throttles, as the last
    /// heartbeat counted them.
    pub fleet_nodes: IntGauge,
    /// `sluice_redis_fallback_total`: decisions made on this node's split
    /// share because Redis could not be reached.
    pub fallback: IntCounter,
    /// `sluice_redis_command_seconds{command}`.
    pub latency: HistogramVec,
}

impl ThrottleMetrics {
    /// Register on `r`.
    pub fn register(r: &Registry) -> ThrottleMetrics {
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "sluice_redis_command_seconds",
                "Round trip of the shared throttles' Redis commands",
            )
            .buckets(vec![
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0,
            ]),
            &["command"],
        )
        .expect("valid metric");
        r.register(Box::new(latency.clone()))
            .expect("unique metric");
        ThrottleMetrics {
            decisions: counter_vec(
                r,
                "sluice_throttle_decisions_total",
                "Throttle checks by kind (queue_rate, path_rate, connection_rate, policy) and outcome",
                &["kind", "outcome"],
            ),
            leases: counter_vec(
                r,
                "sluice_connection_leases_total",
                "Fleet-wide connection leases asked for, by outcome (granted, refused)",
                &["outcome"],
            ),
            redis_up: gauge(
                r,
                "sluice_redis_up",
                "1 while the shared throttles' Redis answers",
            ),
            fleet_nodes: gauge(
                r,
                "sluice_fleet_nodes",
                "Nodes sharing the throttles through Redis, as last counted there",
            ),
            fallback: counter(
                r,
                "sluice_redis_fallback_total",
                "Throttle and lease decisions made on this node's split share while Redis was unreachable",
            ),
            latency,
        }
    }

    /// Metrics registered nowhere (unit tests, tools).
    pub fn unregistered() -> ThrottleMetrics {
        ThrottleMetrics::register(&Registry::new())
    }
}
