//! The admin API's ready-queue suspensions (KumoMTA's `suspend-ready-q`):
//! a ready queue named as the queue summary names it
//! (`source->site@protocol`) is held in egress like a shaping `Suspend`,
//! what it holds goes back to its scheduled queues with a Delayed record
//! naming the reason, and nothing is attempted there until the suspension
//! lapses or is cancelled.

use super::QueueManager;
use crate::egress::Suspension;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sluice_common::duration;
use std::sync::Arc;
use std::time::Duration;

/// `POST /api/admin/suspend-ready-q/v1`, in KumoMTA's shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuspendReadyRequest {
    /// The ready queue (`source->site@protocol`).
    pub name: String,
    /// Why: in the Delayed records and the list.
    pub reason: String,
    /// How long it lasts (default five minutes).
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    pub duration: Option<Duration>,
    /// When it lapses, instead of `duration`.
    #[serde(default)]
    pub expires: Option<DateTime<Utc>>,
}

/// A suspension in force, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct ReadySuspensionInfo {
    /// Its id, for cancelling it.
    pub id: String,
    /// The ready queue.
    pub name: String,
    /// Why.
    pub reason: String,
    /// When it lapses.
    pub expires: DateTime<Utc>,
    /// How long until then.
    pub duration: String,
}

/// A ready queue name that is not `source->site@protocol`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a ready queue name (source->site@protocol, as queue-summary lists them)")]
pub struct BadReadyQueueName(String);

fn info(s: &Suspension) -> Option<ReadySuspensionInfo> {
    let (id, name) = s.admin.clone()?;
    let left = (s.until - Utc::now()).to_std().unwrap_or_default();
    Some(ReadySuspensionInfo {
        id,
        name,
        reason: s.reason.clone(),
        expires: s.until,
        duration: duration::format_duration(Duration::from_secs(left.as_secs())),
    })
}

impl QueueManager {
    /// Suspend the ready queue `req.name`; its id.
    pub fn suspend_ready_queue(
        self: &Arc<Self>,
        req: SuspendReadyRequest,
    ) -> Result<ReadySuspensionInfo, BadReadyQueueName> {
        let bad = || BadReadyQueueName(req.name.clone());
        let (source, rest) = req.name.split_once("->").ok_or_else(bad)?;
        let (site, _protocol) = rest.rsplit_once('@').ok_or_else(bad)?;
        if source.is_empty() || site.is_empty() {
            return Err(bad());
        }
        let until = req.expires.unwrap_or_else(|| {
            let d = req.duration.unwrap_or(Duration::from_secs(300));
            self.now() + chrono::TimeDelta::from_std(d).unwrap_or_default()
        });
        let suspension = Suspension {
            until,
            reason: req.reason.clone(),
            admin: Some((uuid::Uuid::new_v4().to_string(), req.name.clone())),
        };
        tracing::info!(ready_queue = req.name, %until, "suspended: {}", req.reason);
        for item in self.egress.suspend(source, site, suspension.clone()) {
            self.hold_for_path(item, &suspension);
        }
        Ok(info(&suspension).expect("an admin suspension"))
    }

    /// The ready-queue suspensions in force.
    pub fn ready_suspensions(&self) -> Vec<ReadySuspensionInfo> {
        self.egress
            .admin_suspensions()
            .iter()
            .filter_map(info)
            .collect()
    }

    /// End the ready-queue suspension `id`; what it held is due now.
    pub fn cancel_ready_suspension(self: &Arc<Self>, id: &str) -> Option<ReadySuspensionInfo> {
        let s = self.egress.cancel_suspension(id)?;
        let shown = info(&s);
        // held messages wait until the suspension's end to the millisecond
        // (one with a later schedule constraint keeps waiting for it)
        let held = self.timer.take_due_at(s.until.timestamp_millis());
        tracing::info!(
            id,
            released = held.len(),
            "ready queue suspension cancelled"
        );
        let now = self.now().timestamp_millis();
        for msg in held {
            msg.state().due = Some(now);
            self.dispatch(msg);
        }
        shown
    }
}
