//! Traffic shaping automation (KumoMTA's TSA, inside the MTA): the rules
//! of `shaping.toml` files watch every TransientFailure and Bounce record;
//! a rule that triggers (at once, or at `N/period` matches for the same
//! site — counted across the fleet when Redis is configured) enacts its
//! actions for its duration: a ready-queue suspension, a tenant or
//! campaign suspension, a bounce rule, a path setting replaced (SetConfig).
//! Enacted actions are shared through Redis (each node looks every 250 ms),
//! or kept in a file beside the spool without it, and survive a restart
//! either way. The queue engine carries
//! them out through [`Enforcer`].

pub mod rules;
mod store;
#[cfg(test)]
mod tests;

use crate::log::{LogRecord, Observer, RecordType};
use chrono::{DateTime, Utc};
use rules::{Action, Rule, Subject, Trigger};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
pub use store::Store;
use tokio::sync::mpsc;

/// How often a node looks for the fleet's new and lapsed actions.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);

/// An action in force, as shared and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enacted {
    /// Its identity: the rule, the action and what it applies to; the
    /// same on every node, so a second trigger extends rather than adds.
    pub key: String,
    /// The rule that enacted it (`automation rule <entry> automation[i] (regex)`).
    pub rule: String,
    /// `Suspend`, `SuspendTenant`, `SuspendCampaign`, `Bounce`, ...
    pub action: String,
    /// The egress source of the ready queue (Suspend).
    pub source: String,
    /// The site of the ready queue (Suspend).
    pub site: String,
    /// The destination domain.
    pub domain: String,
    /// The tenant (SuspendTenant, SuspendCampaign, BounceTenant...).
    pub tenant: Option<String>,
    /// The campaign (SuspendCampaign, BounceCampaign).
    pub campaign: Option<String>,
    /// When it was enacted.
    pub since: DateTime<Utc>,
    /// When it lapses.
    pub expires: DateTime<Utc>,
    /// The node whose record triggered it.
    pub node: String,
    /// The path setting and its value while it lasts (SetConfig).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<rules::ConfigValue>,
}

/// Carries enacted actions out (the queue engine and egress).
pub trait Enforcer: Send + Sync {
    /// Put `action` in force until its expiry.
    fn enact(&self, action: &Enacted);
    /// End `action` before its expiry (the fleet lifted it).
    fn lift(&self, action: &Enacted);
}

/// The automation of one node.
pub struct Shaping {
    rules: Vec<Rule>,
    store: Store,
    node: String,
    enforcer: OnceLock<Arc<dyn Enforcer>>,
    /// What this node has put in force, by key.
    applied: parking_lot::Mutex<HashMap<String, Enacted>>,
    records: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<LogRecord>>>,
    /// `sluice_shaping_actions_total{action}`.
    enacted_total: prometheus::IntCounterVec,
}

/// The records automation watches, as the log shows them: TransientFailure
/// and Bounce records go into a channel that [`Shaping`] reads.
pub struct Feed(mpsc::UnboundedSender<LogRecord>);

/// A feed for the log, and its other end for [`Shaping::new`].
pub fn feed() -> (Arc<Feed>, mpsc::UnboundedReceiver<LogRecord>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(Feed(tx)), rx)
}

impl Observer for Feed {
    fn observe(&self, rec: &LogRecord) {
        if matches!(rec.kind, RecordType::TransientFailure | RecordType::Bounce) {
            let _ = self.0.send(rec.clone());
        }
    }
}

impl Shaping {
    /// Automation with `rules` over the `records` of a [`feed`], keeping
    /// its state in `store`; actions counted in `enacted_total`.
    pub fn new(
        rules: Vec<Rule>,
        store: Store,
        node: String,
        records: mpsc::UnboundedReceiver<LogRecord>,
        enacted_total: prometheus::IntCounterVec,
    ) -> Arc<Shaping> {
        Arc::new(Shaping {
            rules,
            store,
            node,
            enforcer: OnceLock::new(),
            applied: Default::default(),
            records: parking_lot::Mutex::new(Some(records)),
            enacted_total,
        })
    }

    /// Start watching records and the fleet's actions; actions saved
    /// before a restart are put back in force first.
    pub fn start(self: &Arc<Self>, enforcer: Arc<dyn Enforcer>) {
        let _ = self.enforcer.set(enforcer);
        for a in self.store.load() {
            self.apply(a);
        }
        let Some(mut rx) = self.records.lock().take() else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_INTERVAL);
            loop {
                // an action ends at its expiry, not at the next look
                let lapse = me.next_lapse();
                tokio::select! {
                    rec = rx.recv() => match rec {
                        Some(rec) => me.process(&rec).await,
                        None => return,
                    },
                    _ = tick.tick() => me.sync().await,
                    _ = async {
                        match lapse {
                            Some(d) => tokio::time::sleep(d).await,
                            None => std::future::pending().await,
                        }
                    } => me.sync().await,
                }
            }
        });
    }

    /// The actions in force here, soonest to lapse first: each until it is
    /// lifted at its expiry, so what this lists is what is enforced.
    pub fn in_force(&self) -> Vec<Enacted> {
        let mut v: Vec<Enacted> = self.applied.lock().values().cloned().collect();
        v.sort_by_key(|a| a.expires);
        v
    }

    /// How long until the first action here lapses (a little after, so
    /// that its expiry has passed when the lapse is looked at).
    fn next_lapse(&self) -> Option<Duration> {
        let first = self.applied.lock().values().map(|a| a.expires).min()?;
        let left = (first - Utc::now()).to_std().unwrap_or_default();
        Some(left + Duration::from_millis(5))
    }

    /// How many rules are loaded.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    async fn process(&self, rec: &LogRecord) {
        let domain = crate::message::split_address(rec.first_recipient())
            .1
            .to_ascii_lowercase();
        let (source, site) = split_site(&rec.site, rec.egress_source.as_deref());
        let hosts = mx_hosts(&site);
        let response = rec.response.to_single_line();
        let subject = Subject {
            domain: &domain,
            mx_hosts: &hosts,
            response: &response,
        };
        let parts = crate::message::name::QueueName::parse(&rec.queue);
        for rule in self.rules.iter().filter(|r| r.matches(&subject)) {
            let triggered = match &rule.trigger {
                Trigger::Immediate => true,
                Trigger::Threshold(spec) => {
                    let key = format!("{}|{source}->{site}", rule.name);
                    self.store.count(&key, spec.period(), &self.node).await >= spec.limit
                }
            };
            if !triggered {
                continue;
            }
            let now = Utc::now();
            let expires = now + chrono::TimeDelta::from_std(rule.duration).unwrap_or_default();
            for action in &rule.actions {
                let (tenant, campaign) = match action {
                    Action::SuspendTenant | Action::BounceTenant => (parts.tenant.clone(), None),
                    Action::SuspendCampaign | Action::BounceCampaign => {
                        (parts.tenant.clone(), parts.campaign.clone())
                    }
                    _ => (None, None),
                };
                if matches!(
                    action,
                    Action::SuspendTenant
                        | Action::SuspendCampaign
                        | Action::BounceTenant
                        | Action::BounceCampaign
                ) && tenant.is_none()
                {
                    tracing::warn!(
                        rule = %rule.name,
                        queue = %rec.queue,
                        "{} needs a tenant; the queue has none",
                        action.name()
                    );
                    continue;
                }
                let target = match action {
                    Action::Suspend | Action::SetConfig(_) => format!("{source}->{site}"),
                    _ => format!(
                        "{domain} {} {}",
                        tenant.as_deref().unwrap_or("-"),
                        campaign.as_deref().unwrap_or("-")
                    ),
                };
                let (what, config) = match action {
                    // two settings of one rule are two actions
                    Action::SetConfig(c) => (format!("SetConfig:{}", c.name), Some(c.clone())),
                    _ => (action.name().to_string(), None),
                };
                let enacted = Enacted {
                    key: format!("{} {what} {target}", rule.name),
                    rule: rule.describe(),
                    action: action.name().to_string(),
                    source: source.clone(),
                    site: site.clone(),
                    domain: domain.clone(),
                    tenant,
                    campaign,
                    since: now,
                    expires,
                    node: self.node.clone(),
                    config,
                };
                let known = self.applied.lock().get(&enacted.key).map(|a| a.expires);
                // a rule that keeps triggering extends by whole seconds at most
                if known.is_some_and(|e| e + chrono::TimeDelta::seconds(1) > expires) {
                    continue;
                }
                tracing::info!(key = %enacted.key, until = %expires, "shaping: {}", enacted.rule);
                self.enacted_total.with_label_values(&[action.name()]).inc();
                self.apply(enacted.clone());
                let all = self.in_force();
                self.store.put(&enacted, &all).await;
            }
        }
    }

    /// Put `a` in force here (again, when it was extended).
    fn apply(&self, a: Enacted) {
        let Some(enforcer) = self.enforcer.get() else {
            return;
        };
        let was = self.applied.lock().insert(a.key.clone(), a.clone());
        if was.as_ref() != Some(&a) {
            enforcer.enact(&a);
        }
    }

    /// Adopt the fleet's actions; end what lapsed or was lifted.
    async fn sync(&self) {
        let now = Utc::now();
        let fleet = if self.store.is_fleet() {
            self.store.fleet_actions().await
        } else {
            None
        };
        if let Some(fleet) = &fleet {
            for a in fleet {
                let newer = self
                    .applied
                    .lock()
                    .get(&a.key)
                    .is_none_or(|mine| mine.expires < a.expires);
                if newer {
                    self.apply(a.clone());
                }
            }
        }
        let ended: Vec<Enacted> = {
            let mut applied = self.applied.lock();
            let gone: Vec<String> = applied
                .values()
                .filter(|a| {
                    a.expires <= now
                        || fleet
                            .as_ref()
                            .is_some_and(|f| !f.iter().any(|x| x.key == a.key))
                })
                .map(|a| a.key.clone())
                .collect();
            gone.iter().filter_map(|k| applied.remove(k)).collect()
        };
        if ended.is_empty() {
            return;
        }
        if let Some(enforcer) = self.enforcer.get() {
            for a in &ended {
                enforcer.lift(a);
            }
        }
        if !self.store.is_fleet() {
            self.store.save(&self.in_force());
        }
    }
}

/// A record's `site` (`source->site@protocol`) as its source and site.
pub fn split_site(site: &str, source: Option<&str>) -> (String, String) {
    let (src, site) = crate::log::split_ready_queue(site);
    let src = src.or(source).unwrap_or("unspecified");
    (src.to_string(), site.to_string())
}

/// The MX host names a site name stands for, for provider matching: the
/// names of an `mx_list:` site; the factored name of an MX site (whose
/// common right-hand labels are plain, so suffixes match).
pub fn mx_hosts(site: &str) -> Vec<String> {
    match site.strip_prefix("mx_list:") {
        Some(list) => list
            .split(',')
            .map(|h| {
                let h = h.trim_start_matches('[');
                let h = h.split(']').next().unwrap_or(h);
                h.rsplit_once(':')
                    .filter(|(_, p)| p.parse::<u16>().is_ok())
                    .map(|(n, _)| n)
                    .unwrap_or(h)
                    .to_ascii_lowercase()
            })
            .collect(),
        None => vec![site.to_ascii_lowercase()],
    }
}
