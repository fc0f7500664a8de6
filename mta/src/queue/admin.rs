//! Admin actions on queued mail (spec §10): bounce by criteria, suspend and
//! resume scheduled queues, and a queue summary like `kcli queue-summary`.
//! Rules live in memory, as KumoMTA's do; they lapse at their expiry.

use super::{QueueManager, ScheduledQueue};
use crate::log::{RecordType, Response};
use crate::message::MessageRef;
use crate::message::name::QueueName;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sluice_common::duration;
use std::sync::Arc;
use std::time::Duration;

/// Which scheduled queues a rule applies to; no criteria means all.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Criteria {
    /// Only queues for this domain (case-insensitive).
    pub domain: Option<String>,
    /// Only queues of this tenant (case-insensitive).
    pub tenant: Option<String>,
    /// Only queues of this campaign (case-insensitive).
    pub campaign: Option<String>,
    /// Only queues routed to this domain (case-insensitive): the queue's
    /// routing domain, else its domain.
    pub routing_domain: Option<String>,
    /// Only these queues, by exact full name; empty means any.
    #[serde(default)]
    pub queue_names: Vec<String>,
}

impl Criteria {
    /// Whether the scheduled queue `name`, parsed as `parts`, meets every
    /// criterion given.
    pub fn matches(&self, name: &str, parts: &QueueName) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref()
                .is_none_or(|w| have.is_some_and(|h| h.eq_ignore_ascii_case(w)))
        };
        (self.queue_names.is_empty() || self.queue_names.iter().any(|q| q == name))
            && eq(&self.domain, Some(&parts.domain))
            && eq(&self.tenant, parts.tenant.as_deref())
            && eq(&self.campaign, parts.campaign.as_deref())
            && eq(&self.routing_domain, Some(parts.routing_domain()))
    }
}

/// `POST /api/admin/bounce/v1` and `/api/admin/suspend/v1` bodies.
#[derive(Debug, Deserialize)]
pub struct RuleRequest {
    /// Which queues the rule applies to (the body's top-level fields).
    #[serde(flatten)]
    pub criteria: Criteria,
    /// Why: logged with what the rule does, and shown in the rule list.
    pub reason: String,
    /// How long the rule stays (default five minutes).
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    pub duration: Option<Duration>,
    /// Bounce without writing AdminBounce log records.
    #[serde(default)]
    pub suppress_logging: bool,
}

/// What an admin rule does to the queues it matches.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum RuleKind {
    /// Bounce their messages, those queued now and those attempted while it
    /// lasts.
    Bounce,
    /// Hold what falls due until the rule is deleted or expires.
    Suspend,
}

/// An admin rule as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RuleInfo {
    /// The rule's id (a UUID), for deleting it.
    pub id: String,
    /// Bounce or suspend.
    pub kind: RuleKind,
    /// Which queues it applies to.
    #[serde(flatten)]
    pub criteria: Criteria,
    /// The reason it was given.
    pub reason: String,
    /// When it lapses.
    pub expires: DateTime<Utc>,
    /// Messages bounced so far, or held by the suspension now.
    pub messages: usize,
}

struct Rule {
    info: RuleInfo,
    suppress_logging: bool,
    /// Messages that fell due while their queue was suspended.
    parked: Vec<MessageRef>,
}

/// The admin rules in force on this node, in memory only.
#[derive(Default)]
pub struct AdminRules {
    rules: parking_lot::Mutex<Vec<Rule>>,
}

impl AdminRules {
    fn find(&self, kind: RuleKind, queue: &ScheduledQueue, now: DateTime<Utc>) -> Option<String> {
        self.rules
            .lock()
            .iter()
            .find(|r| {
                r.info.kind == kind
                    && r.info.expires > now
                    && r.info.criteria.matches(&queue.name, &queue.parts)
            })
            .map(|r| r.info.id.clone())
    }

    /// The unexpired rules of `kind` at `now`.
    pub fn list(&self, kind: RuleKind, now: DateTime<Utc>) -> Vec<RuleInfo> {
        self.rules
            .lock()
            .iter()
            .filter(|r| r.info.kind == kind && r.info.expires > now)
            .map(|r| r.info.clone())
            .collect()
    }

    /// How many messages suspensions hold.
    pub(super) fn parked_count(&self) -> usize {
        self.rules.lock().iter().map(|r| r.parked.len()).sum()
    }

    /// Take out the messages suspensions hold whose queue `matches`.
    pub(super) fn take_parked(&self, matches: impl Fn(&str) -> bool) -> Vec<MessageRef> {
        let mut taken = vec![];
        for r in self.rules.lock().iter_mut() {
            r.parked.retain(|m| {
                let hit = crate::message::name::queue_name(m).is_ok_and(|q| matches(&q));
                if hit {
                    taken.push(m.clone());
                }
                !hit
            });
        }
        taken
    }

    fn is_suspended(&self, queue: &ScheduledQueue, now: DateTime<Utc>) -> bool {
        self.find(RuleKind::Suspend, queue, now).is_some()
    }
}

impl QueueManager {
    /// Add a bounce rule and bounce every matching message now queued;
    /// newly arriving matches are bounced when they are attempted.
    pub fn admin_bounce(self: &Arc<Self>, req: RuleRequest) -> RuleInfo {
        let id = self.add_rule(RuleKind::Bounce, &req);
        let matches = |q: &ScheduledQueue| req.criteria.matches(&q.name, &q.parts);
        let mut msgs = self.timer.take_matching(matches);
        for rq in self.egress.ready_queues() {
            for item in rq.take_matching(|item| {
                let parts = QueueName::parse(&item.queue);
                req.criteria.matches(&item.queue, &parts)
            }) {
                msgs.push(item.msg);
            }
        }
        for msg in msgs {
            self.bounce_by_rule(&msg, &id);
        }
        self.rule_info(&id).expect("just added")
    }

    /// Suspend matching scheduled queues: what falls due waits until the
    /// suspension is deleted or expires.
    pub fn admin_suspend(self: &Arc<Self>, req: RuleRequest) -> RuleInfo {
        let id = self.add_rule(RuleKind::Suspend, &req);
        // read before the expiry task runs: a zero duration may end it at once
        let info = self.rule_info(&id).expect("just added");
        let me = self.clone();
        let wait = (info.expires - self.now()).to_std().unwrap_or_default();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            me.delete_rule(&id);
        });
        info
    }

    /// Delete a rule (a suspension's held messages are attempted at once).
    pub fn delete_rule(self: &Arc<Self>, id: &str) -> Option<RuleInfo> {
        let rule = {
            let mut rules = self.rules.rules.lock();
            let i = rules.iter().position(|r| r.info.id == id)?;
            rules.remove(i)
        };
        for msg in rule.parked {
            self.dispatch(msg);
        }
        Some(rule.info)
    }

    /// The bounce or suspension rules in force.
    pub fn list_rules(&self, kind: RuleKind) -> Vec<RuleInfo> {
        self.rules.list(kind, self.now())
    }

    fn add_rule(&self, kind: RuleKind, req: &RuleRequest) -> String {
        let duration = req.duration.unwrap_or(Duration::from_secs(300));
        let id = uuid::Uuid::new_v4().to_string();
        self.rules.rules.lock().push(Rule {
            info: RuleInfo {
                id: id.clone(),
                kind,
                criteria: req.criteria.clone(),
                reason: req.reason.clone(),
                expires: self.now() + chrono::TimeDelta::from_std(duration).unwrap_or_default(),
                messages: 0,
            },
            suppress_logging: req.suppress_logging,
            parked: vec![],
        });
        id
    }

    fn rule_info(&self, id: &str) -> Option<RuleInfo> {
        let rules = self.rules.rules.lock();
        let r = rules.iter().find(|r| r.info.id == id)?;
        let mut info = r.info.clone();
        if info.kind == RuleKind::Suspend {
            info.messages = r.parked.len();
        }
        Some(info)
    }

    /// AdminBounce `551 5.7.1 Administrator bounced with reason: ...`.
    fn bounce_by_rule(&self, msg: &MessageRef, id: &str) {
        let (reason, quiet) = {
            let mut rules = self.rules.rules.lock();
            match rules.iter_mut().find(|r| r.info.id == id) {
                Some(r) => {
                    r.info.messages += 1;
                    (r.info.reason.clone(), r.suppress_logging)
                }
                None => return,
            }
        };
        if let Err(e) = self.restore(msg) {
            tracing::error!(id = %msg.id, "cannot restore message meta from the spool: {e}");
        }
        if !quiet {
            let queue = crate::message::name::queue_name(msg).unwrap_or_default();
            let text = format!("5.7.1 Administrator bounced with reason: {reason}");
            self.logger.log(self.record(
                RecordType::AdminBounce,
                msg,
                &queue,
                Response::new(551, &text),
            ));
        }
        self.forget(msg);
    }

    /// At each attempt: `true` when an admin rule took the message (bounced,
    /// or held for a suspended queue).
    pub(super) fn held_by_admin(&self, msg: &MessageRef, queue: &ScheduledQueue) -> bool {
        let now = self.now();
        if let Some(id) = self.rules.find(RuleKind::Bounce, queue, now) {
            self.bounce_by_rule(msg, &id);
            return true;
        }
        if let Some(id) = self.rules.find(RuleKind::Suspend, queue, now) {
            let reason = {
                let mut rules = self.rules.rules.lock();
                let Some(r) = rules.iter_mut().find(|r| r.info.id == id) else {
                    return false;
                };
                r.parked.push(msg.clone());
                r.info.reason.clone()
            };
            let text = format!("Context: AdminSuspended: {reason}. Held until resumed");
            let mut rec = self.record(
                RecordType::Delayed,
                msg,
                &queue.name,
                Response::new(400, &text),
            );
            rec.delay_reason = Some(crate::log::DelayReason::AdminSuspended);
            self.logger.log(rec);
            return true;
        }
        false
    }

    /// Scheduled queues with how many messages wait in each (biggest
    /// first, at most `limit`), and ready queues with their backlog.
    pub fn summary(&self, limit: usize) -> serde_json::Value {
        let now = self.now();
        let mut waiting = self.timer.counts();
        for r in self.rules.rules.lock().iter() {
            for msg in &r.parked {
                if let Ok(q) = crate::message::name::queue_name(msg) {
                    *waiting.entry(q).or_default() += 1;
                }
            }
        }
        let queues: Vec<Arc<ScheduledQueue>> = self.queues.lock().values().cloned().collect();
        let mut scheduled: Vec<serde_json::Value> = queues
            .iter()
            .map(|q| {
                serde_json::json!({
                    "name": q.name,
                    "count": waiting.get(&q.name).copied().unwrap_or(0),
                    "suspended": self.rules.is_suspended(q, now),
                    "provider": q.config().provider_name,
                })
            })
            .collect();
        scheduled.sort_by(|a, b| b["count"].as_u64().cmp(&a["count"].as_u64()));
        let total_scheduled: usize = waiting.values().sum();
        let scheduled_queues = scheduled.len();
        scheduled.truncate(limit);
        let mut ready: Vec<serde_json::Value> = self
            .egress
            .ready_queues()
            .iter()
            .map(|rq| {
                serde_json::json!({
                    "name": rq.name,
                    "count": rq.len(),
                    "connections": rq.connection_count(),
                    // kcli's queue-summary groups ready queues by provider
                    "provider": rq.config().provider_name,
                })
            })
            .collect();
        ready.sort_by(|a, b| b["count"].as_u64().cmp(&a["count"].as_u64()));
        ready.truncate(limit);
        serde_json::json!({
            "scheduled_total": total_scheduled,
            "scheduled_queues": scheduled_queues,
            "scheduled": scheduled,
            "ready": ready,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn criteria(json: &str) -> Criteria {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn criteria_match_the_parts_of_a_queue_name() {
        let queue = "spring:acme@example.com!mx.example.net";
        let parts = QueueName::parse(queue);
        for (json, hit) in [
            ("{}", true),
            (r#"{"domain": "EXAMPLE.com"}"#, true),
            (r#"{"domain": "example.org"}"#, false),
            (r#"{"tenant": "acme", "campaign": "spring"}"#, true),
            (r#"{"tenant": "other"}"#, false),
            (r#"{"routing_domain": "mx.example.net"}"#, true),
            (
                r#"{"queue_names": ["spring:acme@example.com!mx.example.net"]}"#,
                true,
            ),
            (r#"{"queue_names": ["example.com"]}"#, false),
            (r#"{"domain": "example.com", "tenant": "nobody"}"#, false),
        ] {
            assert_eq!(criteria(json).matches(queue, &parts), hit, "{json}");
        }
        // a queue without a tenant does not match a tenant criterion
        let plain = QueueName::parse("example.com");
        assert!(!criteria(r#"{"tenant": "acme"}"#).matches("example.com", &plain));
    }

    #[test]
    fn rules_lapse_at_their_expiry() {
        let rules = AdminRules::default();
        let now = Utc::now();
        rules.rules.lock().push(Rule {
            info: RuleInfo {
                id: "1".into(),
                kind: RuleKind::Suspend,
                criteria: criteria(r#"{"domain": "example.com"}"#),
                reason: "maintenance".into(),
                expires: now + chrono::TimeDelta::minutes(5),
                messages: 0,
            },
            suppress_logging: false,
            parked: vec![],
        });
        assert_eq!(rules.list(RuleKind::Suspend, now).len(), 1);
        assert!(rules.list(RuleKind::Bounce, now).is_empty(), "kinds apart");
        let later = now + chrono::TimeDelta::minutes(5);
        assert!(rules.list(RuleKind::Suspend, later).is_empty(), "lapsed");
    }
}
