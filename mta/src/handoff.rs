//! Spool handoff (`sluice-mta --handoff-to URL ...`): a node that will not
//! run again (a StatefulSet ordinal scaled away, a pod whose node is gone)
//! hands its spool to the live nodes. Nothing is accepted (no listener is
//! started) and nothing is delivered to a destination: every recovered
//! message is bound for one of the targets in turn (spread across them),
//! the bindings flushed to disk, and the xfer queues move them; the run
//! ends, with success, when the spool is empty. A restart after a crash
//! resumes from the spool.

use crate::queue::QueueManager;
use crate::spool::Recovered;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Messages queued for transfer and not yet moved, at most: within one
/// ready queue's default `max_ready` (1024), so none overflows whatever
/// the path config says.
const WINDOW: usize = 1000;

/// How a handoff ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff {
    /// Messages the spool held at start.
    pub found: usize,
    /// Messages still in the spool (0 when it succeeded).
    pub remaining: usize,
}

/// A handoff that stopped before the spool was empty.
#[derive(Debug, thiserror::Error)]
#[error("spool handoff stopped with {remaining} of {found} message(s) still in the spool")]
pub struct Unfinished {
    /// Messages the spool held at start.
    pub found: usize,
    /// Messages not moved.
    pub remaining: usize,
}

/// Bind everything recovered for `targets` and wait until the spool is
/// empty, or `stop` resolves (a signal). Progress is logged every 5 s, and
/// the outcome written to `report` (Kubernetes' termination message, so
/// the operator can show it).
pub async fn run(
    queues: &Arc<QueueManager>,
    recovered: Vec<Recovered>,
    targets: &[String],
    report: Option<&std::path::Path>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Handoff, Unfinished> {
    let found = recovered.len();
    let bound = queues
        .bind_recovered(recovered, targets, "spool handoff")
        .await;
    tracing::info!(found, targets = ?targets, "spool handoff: every message bound for the live nodes");
    tokio::pin!(stop);
    let mut last_log = Instant::now();
    // fed to the xfer queues as they keep up: all at once would overflow
    // their ready queues, and what overflows waits a random while
    let mut pending = bound.into_iter();
    let mut queued = 0usize;
    let remaining = loop {
        let remaining = queues.spool().len();
        if remaining == 0 {
            break 0;
        }
        let moved = found.saturating_sub(remaining);
        while queued.saturating_sub(moved) < WINDOW {
            match pending.next() {
                Some(msg) => {
                    queues.queue_bound(msg).await;
                    queued += 1;
                }
                None => break,
            }
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            tracing::info!(found, remaining, "spool handoff in progress");
            last_log = Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = &mut stop => break queues.spool().len(),
        }
    };
    if let Some(path) = report {
        let text = serde_json::json!({ "found": found, "moved": found - remaining.min(found), "remaining": remaining });
        if let Err(e) = std::fs::write(path, text.to_string()) {
            tracing::warn!("cannot write the handoff report to {}: {e}", path.display());
        }
    }
    match remaining {
        0 => {
            tracing::info!(found, "spool handoff done: the spool is empty");
            Ok(Handoff { found, remaining })
        }
        _ => Err(Unfinished { found, remaining }),
    }
}
