//! `/metrics`: the gauges that are read off the MTA's state (queue depths,
//! spool, storage, memory, per-provider backlog) are set at each scrape,
//! then every metric is rendered.

use super::AdminState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

pub(super) async fn metrics(State(s): State<AdminState>) -> Response {
    s.metrics.scheduled.set(s.queues.delayed_count() as i64);
    let ready_queues = s.queues.egress().ready_queues();
    s.metrics
        .ready
        .set(ready_queues.iter().map(|q| q.len() as i64).sum());
    s.metrics.spooled.set(s.queues.spool().len() as i64);
    let spool_bytes = s.queues.spool().disk_bytes();
    s.metrics
        .spool_bytes
        .set(spool_bytes.min(i64::MAX as u64) as i64);
    let configs: Vec<_> = ready_queues.iter().map(|q| q.config()).collect();
    s.metrics
        .providers
        .set_backlog(ready_queues.iter().zip(&configs).map(|(q, c)| {
            crate::metrics::provider::Backlog {
                provider: c.provider_name.as_deref().unwrap_or(&q.site),
                queued: q.len(),
                connections: q.connection_count(),
            }
        }));
    s.metrics
        .queued
        .set(s.metrics.scheduled.get() + s.metrics.ready.get());
    let oldest = s.queues.spool().oldest_created();
    let age = oldest.map_or(0, |t| (chrono::Utc::now() - t).num_seconds().max(0));
    s.metrics.oldest_age.set(age);
    s.metrics.draining.set(i64::from(s.lifecycle.is_draining()));
    s.metrics
        .storage_short
        .set(i64::from(s.admission.storage.shortage().is_some()));
    let memory = &s.admission.memory;
    s.metrics.memory_usage_bytes.set(memory.usage() as i64);
    s.metrics
        .memory_short
        .set(i64::from(memory.shortage().is_some()));
    let limits = memory.limits();
    for (name, value) in [
        ("hard", limits.hard),
        ("soft", limits.soft),
        ("low", limits.low),
    ] {
        s.metrics
            .memory_limit_bytes
            .with_label_values(&[name])
            .set(value.min(i64::MAX as u64) as i64);
    }
    for (volume, usage) in s.admission.storage.volumes() {
        let path = volume.path.display().to_string();
        if let Some(u) = usage {
            let labels = [volume.kind, path.as_str()];
            s.metrics
                .storage_free_bytes
                .with_label_values(&labels)
                .set(u.free_bytes as i64);
            s.metrics
                .storage_free_inodes
                .with_label_values(&labels)
                .set(u.free_inodes as i64);
            s.metrics
                .storage_size_bytes
                .with_label_values(&labels)
                .set(u.total_bytes.min(i64::MAX as u64) as i64);
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(),
    )
        .into_response()
}
