//! How long the policy's Lua handlers take, per event: a slow
//! `get_queue_config` (an HTTP lookup in it, say) slows every message, and
//! this is where an operator sees it. KumoMTA's `lua_event_latency`, with
//! its buckets. Labels are the events the policy registers handlers for: a
//! set its code fixes, not one that grows with traffic.

use prometheus::{HistogramOpts, HistogramVec};
use std::sync::LazyLock;
use std::time::Duration;

static LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        HistogramOpts::new(
            "lua_event_latency",
            "How long the policy's handlers of an event took, in seconds",
        )
        .buckets(vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
        &["event"],
    )
    .expect("valid metric")
});

/// Put the histogram in the registry `/metrics` serves.
pub fn register(registry: &prometheus::Registry) {
    if let Err(e) = registry.register(Box::new(LATENCY.clone())) {
        tracing::warn!("lua event latency histogram not registered: {e}");
    }
}

/// Count one call of `event`'s handlers that took `took`.
pub fn observe(event: &str, took: Duration) {
    LATENCY
        .with_label_values(&[event])
        .observe(took.as_secs_f64());
}
