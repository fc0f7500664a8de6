//! Failures of the config hooks (`get_queue_config`, `get_egress_pool`,
//! `get_egress_source`, `get_egress_path_config`) while the MTA runs. Each
//! one already turns into TransientFailures for the messages it was asked
//! about; an operator also needs to see that the policy is failing without
//! reading log records, so the count (a Prometheus counter by event) and
//! the last error of each event are kept here for `/metrics` and
//! `/api/admin/config/v1`. Process-wide: a reload does not reset them.

use parking_lot::Mutex;
use prometheus::{IntCounterVec, Opts};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// `sluice_policy_hook_errors_total{event}`.
static COUNTER: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "sluice_policy_hook_errors_total",
            "Config hook calls that failed at run time, by event",
        ),
        &["event"],
    )
    .expect("valid metric")
});

/// Put the counter in the registry `/metrics` serves.
pub fn register(registry: &prometheus::Registry) {
    if let Err(e) = registry.register(Box::new(COUNTER.clone())) {
        tracing::warn!("policy hook error counter not registered: {e}");
    }
}

/// The failures of one event.
#[derive(Debug, Clone, Serialize)]
pub struct HookError {
    /// Failures since the process started.
    pub count: u64,
    /// The last failure, naming the policy file, line and key.
    pub last_error: String,
    /// When it happened: RFC 3339, UTC.
    pub last_error_at: String,
}

static LAST: LazyLock<Mutex<BTreeMap<String, HookError>>> = LazyLock::new(Default::default);

/// Count a failure of `event`.
pub fn record(event: &str, error: &str) {
    COUNTER.with_label_values(&[event]).inc();
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut last = LAST.lock();
    let entry = last.entry(event.to_string()).or_insert_with(|| HookError {
        count: 0,
        last_error: String::new(),
        last_error_at: String::new(),
    });
    entry.count += 1;
    entry.last_error = error.to_string();
    entry.last_error_at = at;
}

/// Each event that has failed, with its count and last error.
pub fn snapshot() -> BTreeMap<String, HookError> {
    LAST.lock().clone()
}
