//! Shaping automation carried out by the queue engine: a `Suspend` holds
//! the path in egress and sends back what its ready queues held; a
//! `SetConfig` replaces a setting of the path in egress; tenant
//! and campaign suspensions and the bounce actions are admin rules named
//! after the automation rule, replaced when the action is extended.

use super::QueueManager;
use super::admin::{Criteria, RuleRequest};
use crate::egress::{Ready, Suspension};
use crate::log::{DelayReason, RecordType, Response};
use crate::shaping::{Enacted, Enforcer};
use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// The queue engine as shaping's [`Enforcer`].
pub struct ShapingEnforcer {
    queues: Weak<QueueManager>,
    /// The admin rule id of each enacted action, by its key.
    rules: parking_lot::Mutex<HashMap<String, String>>,
}

impl ShapingEnforcer {
    /// Enforce through `queues`.
    pub fn new(queues: &Arc<QueueManager>) -> Arc<ShapingEnforcer> {
        Arc::new(ShapingEnforcer {
            queues: Arc::downgrade(queues),
            rules: Default::default(),
        })
    }
}

impl Enforcer for ShapingEnforcer {
    fn enact(&self, a: &Enacted) {
        let Some(q) = self.queues.upgrade() else {
            return;
        };
        let left = (a.expires - q.now()).to_std().unwrap_or_default();
        let criteria = Criteria {
            domain: Some(a.domain.clone()),
            tenant: a.tenant.clone(),
            campaign: a.campaign.clone(),
            ..Criteria::default()
        };
        let req = RuleRequest {
            criteria,
            reason: a.rule.clone(),
            duration: Some(left),
            suppress_logging: false,
        };
        let info = match a.action.as_str() {
            "Suspend" => {
                let suspension = Suspension {
                    until: a.expires,
                    reason: a.rule.clone(),
                    admin: None,
                };
                for item in q.egress.suspend(&a.source, &a.site, suspension.clone()) {
                    q.hold_for_path(item, &suspension);
                }
                return;
            }
            "SetConfig" => {
                if let Some(c) = &a.config {
                    q.egress
                        .set_setting(&a.source, &a.site, &a.key, &c.name, &c.value);
                }
                return;
            }
            "SuspendTenant" | "SuspendCampaign" => q.admin_suspend(req),
            "Bounce" | "BounceTenant" | "BounceCampaign" => q.admin_bounce(req),
            other => {
                tracing::error!("shaping action {other} cannot be enforced");
                return;
            }
        };
        if let Some(old) = self.rules.lock().insert(a.key.clone(), info.id) {
            q.delete_rule(&old);
        }
    }

    fn lift(&self, a: &Enacted) {
        let Some(q) = self.queues.upgrade() else {
            return;
        };
        match a.action.as_str() {
            "Suspend" => q.egress.resume_path(&a.source, &a.site),
            "SetConfig" => q.egress.clear_setting(&a.source, &a.site, &a.key),
            _ => {}
        }
        if let Some(id) = self.rules.lock().remove(&a.key) {
            q.delete_rule(&id);
        }
    }
}

impl QueueManager {
    /// A message whose path is suspended: a Delayed record naming the
    /// rule, and back to its scheduled queue until the suspension lapses.
    pub(super) fn hold_for_path(self: &Arc<Self>, item: Ready, s: &Suspension) {
        let wait = (s.until - self.now()).to_std().unwrap_or_default();
        let wait = std::time::Duration::from_secs(wait.as_secs());
        let text = format!(
            "Context: ReadyQueueSuspended: {}. Next due in {} at {}",
            s.reason,
            sluice_common::duration::format_duration(wait),
            s.until.to_rfc3339()
        );
        let mut rec = self.record(
            RecordType::Delayed,
            &item.msg,
            &item.queue,
            Response::new(400, &text),
        );
        rec.delay_reason = Some(DelayReason::ReadyQueueSuspended);
        self.logger.log(rec);
        let due = super::retry::constrained(item.msg.state().schedule.as_ref(), s.until);
        self.wait_until(&item.msg, due, &item.queue);
    }
}
