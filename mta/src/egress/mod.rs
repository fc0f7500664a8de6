//! Egress (spec §4): sources, pools and paths, and one ready queue per
//! egress path (source × site × protocol). [`Egress::submit`] takes a due
//! message from the queue engine, picks its source from the queue's pool
//! and its site and protocol from the queue's config, and places it in that
//! path's ready queue, whose connections ([`dispatcher`]) drive the
//! protocol's [`Deliver`] and report every outcome through [`Outcomes`].
//! Maildir needs no session: it is delivered at once. Idle ready queues
//! are reaped.

mod dispatcher;
mod error;
mod overrides;
mod ready;
mod suspend;
#[cfg(test)]
mod tests;
mod wrr;

pub use error::EgressError;
pub use ready::ReadyQueue;
pub use suspend::Suspension;
pub use wrr::Wrr;

use crate::delivery::custom_lua::LuaDeliver;
use crate::delivery::deferred_inject::DeferredInject;
use crate::delivery::smtp::{NoSite, SmtpDeliver};
use crate::delivery::xfer::XferDeliver;
use crate::delivery::{Attempt, Batch, BoxFuture, Deliver, Outcome};
use crate::dns::Dns;
use crate::lifecycle::Lifecycle;
use crate::log::Response;
use crate::message::name::QueueName;
use crate::message::{Message, MessageRef};
use crate::policy::{Fetched, Policy};
use crate::spool::{Spool, SpoolError};
use crate::throttle::Throttles;
use crate::xfer::client::XferClient;
use parking_lot::Mutex;
use sluice_common::egress::{EgressPool, EgressSource};
use sluice_common::queue_config::{Protocol, QueueConfig};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// A message waiting in a ready queue, with the scheduled queue it came from.
pub struct Ready {
    /// The message, as the scheduled queue holds it.
    pub msg: MessageRef,
    /// The name of the scheduled queue it came from, and goes back to on a
    /// retry.
    pub queue: String,
    /// That queue's config when the message was submitted.
    pub config: Arc<QueueConfig>,
}

/// Where ready queues report to: the queue engine.
pub trait Outcomes: Send + Sync + 'static {
    /// What an attempt did to `item`, on the path of `ready_queue`.
    fn completed<'a>(
        &'a self,
        item: &'a Ready,
        ready_queue: &'a ReadyQueue,
        attempt: Attempt,
    ) -> BoxFuture<'a, ()>;

    /// A path throttle asks for longer than a connection may idle: `items`
    /// go back to their scheduled queues for `wait` (spec §2.3).
    fn throttled(&self, items: Vec<Ready>, ready_queue: &str, wait: Duration);
}

/// Why a message could not be placed on a path now.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Try again later (no eligible source, a failing policy hook, DNS).
    Transient(Response),
    /// Never deliverable (a null MX).
    Bounce(Response),
}

/// What became of a submitted message.
pub enum Submitted {
    /// In a ready queue; its outcome comes through [`Outcomes`].
    Queued,
    /// The path's ready queue holds `max_ready` already (spec §3.2).
    Full(Ready),
    /// Delivered at once (maildir): apply this attempt.
    Done(Ready, Attempt),
    /// No path now.
    Refused(Ready, Refusal),
    /// Its path is suspended (shaping automation) until then.
    Suspended(Ready, Suspension),
}

/// Egress for one node: the cached pools and sources, the ready queues and
/// their connections, and the shared connection limits.
pub struct Egress {
    policy: Arc<Policy>,
    dns: Arc<Dns>,
    spool: Arc<Spool>,
    throttles: Arc<Throttles>,
    lifecycle: Arc<Lifecycle>,
    outcomes: OnceLock<Weak<dyn Outcomes>>,
    pools: Mutex<HashMap<String, (Arc<EgressPool>, Instant)>>,
    sources: Mutex<HashMap<String, (Arc<EgressSource>, Instant)>>,
    ready: Mutex<HashMap<String, Arc<ReadyQueue>>>,
    /// `additional_connection_limits`: each name one limit for every path
    /// that names it (on this node).
    limits: Mutex<HashMap<String, (usize, Arc<tokio::sync::Semaphore>)>>,
    /// The client the xfer queues hand messages to other nodes with.
    xfer: OnceLock<Arc<XferClient>>,
    /// Paths suspended by shaping automation.
    suspended: suspend::Suspensions,
    /// Path settings replaced by shaping automation.
    overrides: overrides::Overrides,
}

impl Egress {
    /// Egress with nothing cached and no ready queues; outcomes go nowhere
    /// until [`Egress::report_to`] is called.
    pub fn new(
        policy: Arc<Policy>,
        dns: Arc<Dns>,
        spool: Arc<Spool>,
        throttles: Arc<Throttles>,
        lifecycle: Arc<Lifecycle>,
    ) -> Arc<Egress> {
        Arc::new(Egress {
            policy,
            dns,
            spool,
            throttles,
            lifecycle,
            outcomes: OnceLock::new(),
            pools: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            ready: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
            xfer: OnceLock::new(),
            suspended: Default::default(),
            overrides: Default::default(),
        })
    }

    /// The xfer client (set once at start-up, from `kumo.xfer.configure_client`).
    pub fn set_xfer_client(&self, client: Arc<XferClient>) {
        if self.xfer.set(client).is_err() {
            tracing::error!("xfer client set twice; keeping the first");
        }
    }

    fn xfer_client(&self) -> Arc<XferClient> {
        self.xfer
            .get_or_init(|| Arc::new(XferClient::new(Default::default(), String::new())))
            .clone()
    }

    /// Where outcomes go (set once, by the queue engine that owns this).
    pub fn report_to(&self, outcomes: Weak<dyn Outcomes>) {
        if self.outcomes.set(outcomes).is_err() {
            tracing::error!("egress outcomes attached twice; keeping the first");
        }
    }

    fn outcomes(&self) -> Option<Arc<dyn Outcomes>> {
        self.outcomes.get().and_then(Weak::upgrade)
    }

    async fn complete(&self, item: &Ready, ready_queue: &ReadyQueue, attempt: Attempt) {
        if let Some(o) = self.outcomes() {
            o.completed(item, ready_queue, attempt).await;
        }
    }

    /// `items` and everything else waiting in `rq` back to their queues.
    fn hand_back(&self, rq: &ReadyQueue, mut items: Vec<Ready>, wait: Duration) {
        items.extend(rq.drain());
        if let Some(o) = self.outcomes() {
            o.throttled(items, &rq.name, wait);
        }
    }

    fn load_body(&self, msg: &Message) -> Result<(), SpoolError> {
        if msg.data().is_none() {
            msg.set_data(self.spool.read_data(msg.id)?);
        }
        Ok(())
    }

    /// Place a due message of the scheduled queue `parts` on its path.
    /// `wrr` is the queue's position in its pool's rotation.
    pub async fn submit(
        self: &Arc<Self>,
        item: Ready,
        parts: &QueueName,
        wrr: &Mutex<Wrr>,
    ) -> Submitted {
        let transient = |text: String| Refusal::Transient(Response::new(451, &text));
        let (site, deliver): (String, Arc<dyn Deliver>) = match &item.config.protocol {
            Protocol::Maildir(proto) => {
                if let Err(e) = self.load_body(&item.msg) {
                    let text = format!("KumoMTA internal: cannot read spooled body: {e}");
                    return Submitted::Refused(item, Refusal::Transient(Response::new(400, &text)));
                }
                let attempt = self.maildir(&item, parts, proto.clone()).await;
                return Submitted::Done(item, attempt);
            }
            Protocol::Smtp(proto) => {
                let domain = &parts.domain;
                match crate::delivery::smtp::plan_site(
                    &self.dns,
                    domain,
                    parts.routing_domain(),
                    proto,
                )
                .await
                {
                    Ok(site) => (
                        site.name.clone(),
                        Arc::new(SmtpDeliver::new(
                            self.dns.clone(),
                            site,
                            self.policy.clone(),
                        )),
                    ),
                    Err(NoSite::Transient(r)) => {
                        return Submitted::Refused(item, Refusal::Transient(r));
                    }
                    Err(NoSite::Bounce(r)) => return Submitted::Refused(item, Refusal::Bounce(r)),
                }
            }
            Protocol::CustomLua(lua) => (
                parts.routing_domain().to_string(),
                Arc::new(LuaDeliver {
                    policy: self.policy.clone(),
                    constructor: lua.constructor.clone(),
                    domain: parts.domain.clone(),
                    tenant: parts.tenant.clone(),
                    campaign: parts.campaign.clone(),
                    batch: Batch {
                        size: lua.batch_size.max(1),
                        min: lua.min_batch_size.clamp(1, lua.batch_size.max(1)),
                        max_latency: lua.max_batch_latency,
                    },
                }),
            ),
            Protocol::DeferredInject => (
                item.queue.clone(),
                Arc::new(DeferredInject {
                    policy: self.policy.clone(),
                }),
            ),
            Protocol::Xfer(target) => (
                item.queue.clone(),
                Arc::new(XferDeliver {
                    target: target.clone(),
                    client: self.xfer_client(),
                }),
            ),
        };
        let source = match self.pick_source(&item, wrr).await {
            Ok(s) => s,
            Err(e) => {
                return Submitted::Refused(item, transient(format!("4.4.4 KumoMTA internal: {e}")));
            }
        };
        if let Some(s) = self.suspended.get(&format!("{}->{site}", source.name)) {
            return Submitted::Suspended(item, s);
        }
        let rq = match self
            .ready_queue(source, site, parts.routing_domain(), deliver)
            .await
        {
            Ok(rq) => rq,
            Err(e) => {
                return Submitted::Refused(item, transient(format!("4.4.4 KumoMTA internal: {e}")));
            }
        };
        self.place(rq, item)
    }

    /// Add `item` to `rq` and make sure enough connections serve it.
    fn place(self: &Arc<Self>, rq: Arc<ReadyQueue>, item: Ready) -> Submitted {
        let reap_after = item.config.reap_interval;
        match rq.push(item) {
            Err(item) => Submitted::Full(item),
            Ok(queued) => {
                rq.set_reap_after(reap_after);
                rq.work.notify_one();
                let wanted = ready::wanted_connections(queued, rq.config().connection_limit.limit);
                while rq.claim_connection(wanted) {
                    dispatcher::spawn(self.clone(), rq.clone());
                }
                Submitted::Queued
            }
        }
    }

    /// The next source of the queue's pool, by weight.
    async fn pick_source(
        &self,
        item: &Ready,
        wrr: &Mutex<Wrr>,
    ) -> Result<Arc<EgressSource>, EgressError> {
        let pool_name = item.config.egress_pool.as_deref().unwrap_or("unspecified");
        let pool = self.pool(pool_name).await?;
        let weights: Vec<u32> = pool.entries.iter().map(|e| e.weight).collect();
        let pick = wrr.lock().next(&weights);
        match pick {
            Some(i) => self.source(&pool.entries[i].name).await,
            None => Err(EgressError::NoSource {
                queue: item.queue.clone(),
                pool: pool_name.to_string(),
            }),
        }
    }

    async fn maildir(
        &self,
        item: &Ready,
        parts: &QueueName,
        proto: sluice_common::queue_config::MaildirProtocol,
    ) -> Attempt {
        let (msg, queue, parts) = (item.msg.clone(), item.queue.clone(), parts.clone());
        let recipients = msg.recipients();
        tokio::task::spawn_blocking(move || {
            let (meta, sender, rcpts, data) = {
                let s = msg.state();
                (
                    s.meta.clone(),
                    s.sender.clone(),
                    s.recipients.clone(),
                    s.data.clone().unwrap_or_default(),
                )
            };
            let vars = crate::delivery::maildir::TemplateVars {
                meta: &meta,
                queue: &queue,
                campaign: parts.campaign.as_deref(),
                tenant: parts.tenant.as_deref(),
                domain: &parts.domain,
                routing_domain: parts.routing_domain.as_deref(),
                sender: &sender,
            };
            crate::delivery::maildir::deliver(&proto, &vars, &msg.id.to_string(), &rcpts, &data)
        })
        .await
        .unwrap_or_else(|e| {
            let text = format!("KumoMTA internal: maildir task failed: {e}");
            Attempt::for_all(
                "Maildir",
                None,
                recipients,
                Outcome::Transient(Response::new(400, &text)),
            )
        })
    }

    /// The pool `name`, from the cache while its `ttl` lasts, else from
    /// `get_egress_pool`; resolving a pool resolves all its sources.
    pub async fn pool(&self, name: &str) -> Result<Arc<EgressPool>, EgressError> {
        if let Some((p, at)) = self.pools.lock().get(name)
            && at.elapsed() < p.ttl
        {
            return Ok(p.clone());
        }
        let pool = Arc::new(self.policy.get_egress_pool(name).await?);
        // resolving a pool resolves all its sources: any error fails it
        for e in &pool.entries {
            self.source(&e.name).await?;
        }
        self.pools
            .lock()
            .insert(name.to_string(), (pool.clone(), Instant::now()));
        Ok(pool)
    }

    /// The source `name`, from the cache while its `ttl` lasts, else from
    /// `get_egress_source`.
    pub async fn source(&self, name: &str) -> Result<Arc<EgressSource>, EgressError> {
        if let Some((s, at)) = self.sources.lock().get(name)
            && at.elapsed() < s.ttl
        {
            return Ok(s.clone());
        }
        let source = Arc::new(self.policy.get_egress_source(name).await?);
        self.sources
            .lock()
            .insert(name.to_string(), (source.clone(), Instant::now()));
        Ok(source)
    }

    /// The ready queue for (source, site, protocol), created with its path
    /// config on first use and refreshed when the config is stale.
    async fn ready_queue(
        &self,
        source: Arc<EgressSource>,
        site: String,
        routing_domain: &str,
        deliver: Arc<dyn Deliver>,
    ) -> Result<Arc<ReadyQueue>, EgressError> {
        let name = format!("{}->{}@{}", source.name, site, deliver.label());
        let existing = self.ready.lock().get(&name).cloned();
        let epoch = self.policy.epoch();
        if let Some(rq) = &existing {
            let fetched = rq.config.lock();
            let c = &fetched.value;
            if fetched.is_fresh(c.refresh_strategy, c.refresh_interval, epoch) {
                return Ok(rq.clone());
            }
        }
        let config = self
            .policy
            .get_egress_path_config(routing_domain, &source.name, &site)
            .await;
        let config = match (config, existing) {
            (Ok(c), Some(rq)) => {
                *rq.config.lock() = Fetched::new(Arc::new(c), epoch);
                self.refresh_in_force(&rq);
                return Ok(rq);
            }
            (Err(e), Some(rq)) => {
                tracing::error!(
                    ready_queue = name,
                    "get_egress_path_config failed, keeping previous config: {e}"
                );
                let old = rq.base_config();
                *rq.config.lock() = Fetched::new(old, epoch);
                return Ok(rq);
            }
            (Ok(c), None) => Arc::new(c),
            (Err(source), None) => return Err(EgressError::PathConfig { name, source }),
        };
        let rq = Arc::new(ReadyQueue::new(
            name.clone(),
            source,
            site,
            deliver,
            Fetched::new(config, epoch),
        ));
        let rq = self.ready.lock().entry(name).or_insert(rq).clone();
        // after it is listed, so a setting made meanwhile reaches it
        self.refresh_in_force(&rq);
        Ok(rq)
    }

    /// The scheduled queues that have messages in some ready queue.
    pub fn queues_waiting(&self) -> std::collections::HashSet<String> {
        let mut names = std::collections::HashSet::new();
        for rq in self.ready_queues() {
            rq.for_each(|item| {
                if !names.contains(&item.queue) {
                    names.insert(item.queue.clone());
                }
            });
        }
        names
    }

    /// Every ready queue now held.
    pub fn ready_queues(&self) -> Vec<Arc<ReadyQueue>> {
        self.ready.lock().values().cloned().collect()
    }

    /// Messages waiting in ready queues, and connections serving them.
    pub fn backlog(&self) -> (usize, usize) {
        let ready = self.ready.lock();
        ready.values().fold((0, 0), |(msgs, conns), rq| {
            (msgs + rq.len(), conns + rq.connection_count())
        })
    }

    /// Release the bodies of spooled messages waiting in ready queues (a
    /// connection reads each back when it takes it); how many went.
    pub fn release_bodies(&self) -> usize {
        self.ready_queues()
            .iter()
            .map(|rq| rq.release_bodies())
            .sum()
    }

    /// Drop the ready queues idle for the `reap_interval` of the queues
    /// that fed them: empty, no connection, and held by nothing else.
    /// Returns how many went.
    pub fn reap(&self) -> usize {
        let now = Instant::now();
        let mut ready = self.ready.lock();
        let before = ready.len();
        ready.retain(|_, rq| Arc::strong_count(rq) > 1 || !rq.reapable(now));
        before - ready.len()
    }
}
