//! Scheduled queues: resolve each queue's config from the policy, hold
//! messages until they are due, promote due messages through the queue's
//! rate throttle to their protocol, and apply the outcome (delivery, retry
//! with backoff, bounce, expiry), running `requeue_message` on the way.

pub mod admin;
pub mod deferred;
pub mod name;
pub mod schedule;
mod throttle;
mod timer;

use crate::delivery::{self, Attempt, Outcome};
use crate::egress::{Egress, Placement, Ready, ReadyQueue};
use crate::log::{LogRecord, Logger, RecordType, Response};
use crate::message::{Message, MessageRef, SpooledMeta};
use crate::policy::{EventError, Policy};
use crate::spool::Spool;
use chrono::{DateTime, Utc};
use name::QueueName;
use parking_lot::Mutex;
use sluice_common::duration::format_duration;
use sluice_common::queue_config::{Protocol, QueueConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use throttle::Throttles;
use timer::Timer;

/// How many promotions (and the deliveries that do not go through a ready
/// queue, such as maildir) run at once.
const PROMOTION_WORKERS: usize = 128;

pub struct ScheduledQueue {
    pub name: String,
    pub parts: QueueName,
    config: Mutex<crate::policy::Fetched<QueueConfig>>,
    /// Source selection state over the queue's egress pool.
    wrr: Mutex<crate::egress::Wrr>,
}

impl ScheduledQueue {
    pub fn config(&self) -> Arc<QueueConfig> {
        self.config.lock().value.clone()
    }
}

/// What `requeue_message` decided.
enum Requeue {
    /// The message stays in its queue; carry on as usual.
    Stay,
    /// Bounced or moved to another queue: already handled.
    Done,
}

pub struct QueueManager {
    policy: Arc<Policy>,
    spool: Arc<Spool>,
    logger: Arc<Logger>,
    queues: Mutex<HashMap<String, Arc<ScheduledQueue>>>,
    timer: Timer,
    rules: admin::AdminRules,
    throttles: Throttles,
    /// Messages that are due, waiting for a promotion worker.
    due: Mutex<std::collections::VecDeque<MessageRef>>,
    due_ready: tokio::sync::Notify,
    egress: Egress,
    nodeid: String,
    /// Delivery attempts started (promotions out of the scheduled queues).
    attempts: std::sync::atomic::AtomicU64,
    lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// Accepted with `deferred_spool` and not yet written: the spool gets
    /// them when first delayed, or at shutdown.
    unspooled: Mutex<HashMap<crate::message::MessageId, MessageRef>>,
}

/// Why a message has no site to go to.
enum NoSite {
    Transient(Response),
    Bounce(Response),
}

/// The site an SMTP queue delivers to: its `mx_list`, an address literal,
/// or the domain's MX hosts.
async fn smtp_site(
    dns: &crate::egress::dns::Dns,
    queue: &ScheduledQueue,
    proto: &sluice_common::queue_config::SmtpProtocol,
) -> Result<crate::egress::site::Site, NoSite> {
    use crate::egress::dns::MxAnswer;
    let fail = |text: String| NoSite::Transient(Response::new(451, &text));
    if !proto.mx_list.is_empty() {
        return crate::egress::site::mx_list_site(&proto.mx_list)
            .map_err(|e| fail(format!("4.4.4 KumoMTA internal: invalid mx_list: {e}")));
    }
    if let Some(site) = crate::egress::site::literal_site(&queue.parts.domain) {
        return Ok(site);
    }
    match dns.mx(queue.parts.routing_domain()).await {
        Ok(MxAnswer::Hosts(hosts)) => Ok(crate::egress::site::mx_site(&hosts)),
        Ok(MxAnswer::NullMx) => Err(NoSite::Bounce(Response::new(
            556,
            "5.1.10 Recipient address has a null MX",
        ))),
        Err(e) => Err(fail(format!("4.4.4 KumoMTA internal: {e}"))),
    }
}

fn ms_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn human(d: chrono::TimeDelta) -> String {
    format_duration(Duration::from_secs(d.num_seconds().max(0) as u64))
}

impl QueueManager {
    pub fn new(
        policy: Arc<Policy>,
        spool: Arc<Spool>,
        logger: Arc<Logger>,
        dns: crate::egress::dns::Dns,
        lifecycle: Arc<crate::lifecycle::Lifecycle>,
        nodeid: String,
    ) -> Arc<QueueManager> {
        let qm = Arc::new(QueueManager {
            policy: policy.clone(),
            spool,
            logger,
            queues: Mutex::new(HashMap::new()),
            timer: Timer::new(),
            rules: Default::default(),
            throttles: Throttles::default(),
            due: Mutex::new(std::collections::VecDeque::new()),
            due_ready: tokio::sync::Notify::new(),
            egress: Egress::new(policy.clone(), dns),
            nodeid,
            attempts: std::sync::atomic::AtomicU64::new(0),
            lifecycle,
            unspooled: Mutex::new(HashMap::new()),
        });
        for _ in 0..PROMOTION_WORKERS {
            tokio::spawn(Self::promotion_worker(qm.clone()));
        }
        let weak = Arc::downgrade(&qm);
        let timer = qm.timer.clone();
        tokio::spawn(async move {
            timer
                .run(move |msg| {
                    if let Some(qm) = weak.upgrade() {
                        qm.dispatch(msg);
                    }
                })
                .await
        });
        qm
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    pub fn nodeid(&self) -> &str {
        &self.nodeid
    }

    /// How many messages wait in the timer for a later attempt.
    pub fn delayed_count(&self) -> usize {
        self.timer.len()
    }

    /// The queue a new message goes to by its envelope and meta, resolved
    /// (so a policy error surfaces before the message is accepted).
    pub async fn route(&self, msg: &Message) -> Result<String, String> {
        let queue = name::queue_name(msg)?;
        if queue != "null" {
            self.resolve(&queue).await?;
        }
        Ok(queue)
    }

    /// Take charge of freshly accepted messages before their 250: save them
    /// to the spool in one group commit, or with `deferred_spool` only note
    /// them, to be written when first delayed or at shutdown (spec §6.5).
    /// Those bound for the `null` queue are not kept.
    pub async fn admit(
        &self,
        batch: &[(MessageRef, String)],
        deferred_spool: bool,
    ) -> Result<(), crate::spool::SpoolError> {
        let kept = batch.iter().filter(|(_, queue)| queue != "null");
        if deferred_spool {
            let mut unspooled = self.unspooled.lock();
            for (msg, _) in kept {
                unspooled.insert(msg.id, msg.clone());
            }
            return Ok(());
        }
        let msgs: Vec<&MessageRef> = kept.map(|(msg, _)| msg).collect();
        self.write_whole(&msgs).await
    }

    /// Write messages (body and meta) to the spool in one group commit.
    async fn write_whole(&self, msgs: &[&MessageRef]) -> Result<(), crate::spool::SpoolError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let mut to_spool = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let data = msg.data().ok_or_else(|| {
                crate::spool::SpoolError::Io(std::io::Error::other(format!(
                    "message {} has no body in memory",
                    msg.id
                )))
            })?;
            to_spool.push(crate::spool::NewMessage {
                id: msg.id,
                meta: serde_json::to_vec(&msg.spooled_meta()).expect("meta serialises"),
                data,
            });
        }
        self.spool.put(to_spool).await?;
        let mut unspooled = self.unspooled.lock();
        for msg in msgs {
            msg.set_spooled();
            unspooled.remove(&msg.id);
        }
        Ok(())
    }

    /// Write a `deferred_spool` message now that it is being delayed; `false`
    /// (logged) when the spool refused it, and it stays in memory only.
    async fn spool_deferred(&self, msg: &MessageRef) -> bool {
        match self.write_whole(&[msg]).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(id = %msg.id, "cannot spool a deferred_spool message; it stays in memory only: {e}");
                false
            }
        }
    }

    /// At shutdown: write every `deferred_spool` message not yet in the
    /// spool, so a restart resumes it. Returns how many were written.
    pub async fn spool_unspooled(&self) -> Result<usize, crate::spool::SpoolError> {
        let pending: Vec<MessageRef> = self.unspooled.lock().values().cloned().collect();
        let refs: Vec<&MessageRef> = pending.iter().collect();
        self.write_whole(&refs).await?;
        Ok(pending.len())
    }

    /// The message reached its final disposition: drop it from the spool,
    /// or from memory if it never got there.
    pub(super) fn forget(&self, msg: &Message) {
        if msg.is_spooled() {
            let _ = self.spool.remove(msg.id);
        } else {
            self.unspooled.lock().remove(&msg.id);
        }
    }

    /// Find or create the scheduled queue `name`, asking the policy for its
    /// config when it is new or stale (its `refresh_interval` has passed, or
    /// with `refresh_strategy = 'Epoch'`, the policy was reloaded).
    pub async fn resolve(&self, name: &str) -> Result<Arc<ScheduledQueue>, String> {
        let existing = self.queues.lock().get(name).cloned();
        let epoch = self.policy.epoch();
        if let Some(q) = &existing {
            let fetched = q.config.lock();
            let c = &fetched.value;
            if fetched.is_fresh(c.refresh_strategy, c.refresh_interval, epoch) {
                return Ok(q.clone());
            }
        }
        let parts = QueueName::parse(name);
        let config = if name == deferred::DEFERRED_QUEUE {
            Ok(deferred::queue_config())
        } else {
            self.policy
                .get_queue_config(
                    &parts.domain,
                    parts.tenant.as_deref(),
                    parts.campaign.as_deref(),
                    parts.routing_domain.as_deref(),
                )
                .await
        };
        let config = match (config, &existing) {
            (Ok(c), _) => Arc::new(c),
            // a failing refresh keeps the old config (spec §11)
            (Err(e), Some(q)) => {
                tracing::error!(
                    queue = name,
                    "get_queue_config failed, keeping previous config: {e}"
                );
                *q.config.lock() = crate::policy::Fetched::new(q.config(), epoch);
                return Ok(q.clone());
            }
            (Err(e), None) => return Err(format!("get_queue_config for {name}: {e}")),
        };
        if let Some(q) = existing {
            *q.config.lock() = crate::policy::Fetched::new(config, epoch);
            return Ok(q);
        }
        let q = Arc::new(ScheduledQueue {
            name: name.to_string(),
            parts,
            config: Mutex::new(crate::policy::Fetched::new(config, epoch)),
            wrr: Mutex::new(crate::egress::Wrr::default()),
        });
        Ok(self
            .queues
            .lock()
            .entry(name.to_string())
            .or_insert(q)
            .clone())
    }

    /// Queue a freshly received (already spooled) message. A message whose
    /// scheduling holds it for later logs `Delayed` and waits.
    pub fn insert(self: &Arc<Self>, msg: MessageRef, queue: &str) {
        let now = Utc::now();
        let due = self.constrained(&msg, now);
        if due > now {
            let text = format!(
                "Context: Received, ScheduledForLater. Next due in {} at {}",
                human(due - now),
                due.to_rfc3339()
            );
            self.logger.log(self.record(
                RecordType::Delayed,
                &msg,
                queue,
                Response::new(400, &text),
            ));
            self.wait_until(&msg, due, queue);
        } else {
            self.dispatch(msg);
        }
    }

    /// `due` moved by the message's scheduling constraints, if any.
    fn constrained(&self, msg: &Message, due: DateTime<Utc>) -> DateTime<Utc> {
        match &msg.state().schedule {
            Some(s) => s.adjust(due),
            None => due,
        }
    }

    /// Persist the message's new state and park it in the timer until `due`.
    /// While it waits only its id, attempts and due time stay in memory: once
    /// the META record is on disk the envelope and meta are released too.
    fn wait_until(self: &Arc<Self>, msg: &MessageRef, due: DateTime<Utc>, queue: &str) {
        let due_ms = due.timestamp_millis();
        msg.state().due = Some(due_ms);
        if due <= Utc::now() {
            self.save_meta(msg);
            self.dispatch(msg.clone());
            return;
        }
        if !msg.is_spooled() {
            // first delay of a deferred_spool message: now it goes to disk
            let (me, msg, queue) = (self.clone(), msg.clone(), queue.to_string());
            tokio::spawn(async move {
                if me.spool_deferred(&msg).await {
                    me.wait_until(&msg, due, &queue);
                } else {
                    me.timer.insert(due_ms, msg.clone(), me.scheduled(&queue));
                }
            });
            return;
        }
        msg.shrink();
        let written = serde_json::to_vec(&msg.spooled_meta())
            .map_err(|e| e.to_string())
            .and_then(|meta| {
                self.spool
                    .update_meta_acked(msg.id, meta)
                    .map_err(|e| e.to_string())
            });
        match written {
            Ok(ack) => {
                let msg2 = msg.clone();
                tokio::spawn(async move {
                    if ack.await.is_ok() {
                        // keep the envelope if the attempt is less than a second away
                        msg2.shrink_meta(due_ms, Utc::now().timestamp_millis() + 1000);
                    }
                });
            }
            Err(e) => tracing::error!(id = %msg.id, "cannot save meta: {e}"),
        }
        self.timer
            .insert(due_ms, msg.clone(), self.scheduled(queue));
    }

    /// The scheduled queue `name`, if it has been resolved.
    fn scheduled(&self, name: &str) -> Option<Arc<ScheduledQueue>> {
        self.queues.lock().get(name).cloned()
    }

    /// Bring back what a waiting message released.
    fn restore(&self, msg: &Message) -> Result<(), String> {
        if !msg.is_meta_shrunk() {
            return Ok(());
        }
        let meta = self.spool.read_meta(msg.id).map_err(|e| e.to_string())?;
        msg.restore_meta(&meta).map_err(|e| e.to_string())
    }

    fn save_meta(&self, msg: &Message) {
        if !msg.is_spooled() {
            return;
        }
        match serde_json::to_vec(&msg.spooled_meta()) {
            Ok(meta) => {
                let _ = self.spool.update_meta(msg.id, meta);
            }
            Err(e) => tracing::error!(id = %msg.id, "cannot serialise meta: {e}"),
        }
    }

    /// Re-queue every message recovered from the spool at start-up, at its
    /// persisted due time.
    pub async fn recover(self: &Arc<Self>, recovered: Vec<crate::spool::Recovered>) -> usize {
        let mut n = 0;
        for r in recovered {
            let meta: SpooledMeta = match serde_json::from_slice(&r.meta) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(id = %r.id, "unreadable spooled meta, removing: {e}");
                    let _ = self.spool.remove(r.id);
                    continue;
                }
            };
            let msg = Message::recovered(r.id, meta, r.data_len);
            let queue = match name::queue_name(&msg) {
                Ok(q) => q,
                Err(e) => {
                    let resp = Response::new(551, &format!("5.1.3 invalid queue name: {e}"));
                    self.finish(&msg, "", RecordType::Expiration, resp, None);
                    continue;
                }
            };
            let q = match self.resolve(&queue).await {
                Ok(q) => q,
                Err(e) => {
                    tracing::error!(id = %r.id, queue, "cannot resolve queue; message stays spooled until the next start: {e}");
                    continue;
                }
            };
            if self.too_old(&msg, &q.config(), Utc::now()) {
                let text = format!(
                    "5.4.7 message is older than max_age={}",
                    format_duration(q.config().max_age)
                );
                self.expire(&msg, &queue, &text);
                continue;
            }
            let due = msg.state().due.map(ms_to_time).unwrap_or_else(Utc::now);
            let due = self.constrained(&msg, due.max(Utc::now()));
            msg.state().due = Some(due.timestamp_millis());
            if due > Utc::now() {
                // its meta is on disk already
                msg.shrink_meta(due.timestamp_millis(), Utc::now().timestamp_millis() + 1000);
                self.timer
                    .insert(due.timestamp_millis(), msg, Some(q.clone()));
            } else {
                self.dispatch(msg);
            }
            n += 1;
        }
        n
    }

    fn too_old(&self, msg: &Message, config: &QueueConfig, at: DateTime<Utc>) -> bool {
        (at - msg.id.created()).to_std().unwrap_or_default() >= config.max_age
    }

    /// Start promoting a due message.
    ///
    /// Due messages wait in a FIFO served by a fixed set of workers, so a
    /// million messages falling due at once cost a million pointers, not a
    /// million tasks.
    fn dispatch(self: &Arc<Self>, msg: MessageRef) {
        self.due.lock().push_back(msg);
        self.due_ready.notify_one();
    }

    /// Runs for the life of the process (the manager lives as long). While
    /// draining it starts nothing new: undelivered mail stays in the spool.
    async fn promotion_worker(me: Arc<QueueManager>) {
        loop {
            if me.lifecycle.is_draining() {
                return;
            }
            let notified = me.due_ready.notified();
            let next = me.due.lock().pop_front();
            match next {
                Some(msg) => {
                    let lifecycle = me.lifecycle.clone();
                    let _busy = lifecycle.delivery();
                    me.clone().attempt(msg).await
                }
                None => {
                    tokio::select! {
                        _ = notified => {}
                        _ = me.lifecycle.draining() => return,
                    }
                }
            }
        }
    }

    pub fn is_draining(&self) -> bool {
        self.lifecycle.is_draining()
    }

    /// Count a delivery in flight (for the drain).
    pub fn delivery_in_flight(&self) -> crate::lifecycle::Busy<'_> {
        self.lifecycle.delivery()
    }

    /// How many due messages have been promoted for an attempt so far.
    pub fn attempts_started(&self) -> u64 {
        self.attempts.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn attempt(self: Arc<Self>, msg: MessageRef) {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.restore(&msg) {
            // the spool lost it: nothing can be delivered or logged meaningfully
            tracing::error!(id = %msg.id, "cannot restore message meta from the spool: {e}");
            return;
        }
        let queue_name = match name::queue_name(&msg) {
            Ok(q) => q,
            Err(e) => {
                let resp = Response::new(551, &format!("5.1.3 invalid queue name: {e}"));
                self.finish(&msg, "", RecordType::Bounce, resp, None);
                return;
            }
        };
        if queue_name == "null" {
            // rebound to the null queue: silently removed (spec §1.5)
            self.forget(&msg);
            return;
        }
        let queue = match self.resolve(&queue_name).await {
            Ok(q) => q,
            Err(e) => {
                let config = Arc::new(QueueConfig::default());
                let resp = Response::new(451, &format!("4.4.4 KumoMTA internal: {e}"));
                self.transient(&msg, &queue_name, &config, resp, None).await;
                return;
            }
        };
        if self.held_by_admin(&msg, &queue) {
            return;
        }
        let config = queue.config();
        if let Some(rate) = &config.max_message_rate {
            let key = format!("schedq-{queue_name}-message-rate");
            if let Some(wait) = self.throttles.check(&key, rate) {
                self.throttled(&msg, &queue_name, &config, wait).await;
                return;
            }
        }
        if msg.data().is_none() {
            match self.spool.read_data(msg.id) {
                Ok(data) => msg.set_data(data),
                Err(e) => {
                    tracing::error!(id = %msg.id, "cannot read message body: {e}");
                    let resp = Response::new(
                        400,
                        &format!("KumoMTA internal: cannot read spooled body: {e}"),
                    );
                    self.transient(&msg, &queue_name, &config, resp, None).await;
                    return;
                }
            }
        }
        if queue_name == deferred::DEFERRED_QUEUE {
            let site = crate::egress::site::Site {
                name: queue_name.clone(),
                targets: vec![],
            };
            let proto = crate::egress::Proto::DeferredInject;
            self.to_ready_queue(msg, &queue, &config, Ok(site), proto)
                .await;
            return;
        }
        let attempt = match &config.protocol {
            Protocol::Maildir(proto) => self.deliver_maildir(&msg, &queue, proto.clone()).await,
            Protocol::Smtp(proto) => {
                let site = match smtp_site(&self.egress.dns, &queue, proto).await {
                    Ok(site) => Ok(site),
                    Err(NoSite::Transient(resp)) => Err(resp),
                    Err(NoSite::Bounce(resp)) => {
                        let attempt = Attempt::for_all(
                            "ESMTP",
                            None,
                            msg.recipients(),
                            Outcome::Bounced(resp),
                        );
                        self.apply(&msg, &queue_name, &config, attempt, None).await;
                        return;
                    }
                };
                self.to_ready_queue(msg, &queue, &config, site, crate::egress::Proto::Smtp)
                    .await;
                return;
            }
            Protocol::CustomLua(lua) => {
                let proto = crate::egress::Proto::Lua {
                    constructor: lua.constructor.clone(),
                    domain: queue.parts.domain.clone(),
                    tenant: queue.parts.tenant.clone(),
                    campaign: queue.parts.campaign.clone(),
                    batch: crate::egress::LuaBatch {
                        size: lua.batch_size.max(1),
                        min: lua.min_batch_size.clamp(1, lua.batch_size.max(1)),
                        max_latency: lua.max_batch_latency,
                    },
                };
                let site = crate::egress::site::Site {
                    name: queue.parts.routing_domain().to_string(),
                    targets: vec![],
                };
                self.to_ready_queue(msg, &queue, &config, Ok(site), proto)
                    .await;
                return;
            }
        };
        self.apply(&msg, &queue_name, &config, attempt, None).await;
    }

    /// SMTP: pick an egress source from the queue's pool, find the site,
    /// and hand the message to that path's ready queue.
    async fn to_ready_queue(
        self: &Arc<Self>,
        msg: MessageRef,
        queue: &Arc<ScheduledQueue>,
        config: &Arc<QueueConfig>,
        site: Result<crate::egress::site::Site, Response>,
        proto: crate::egress::Proto,
    ) {
        let fail = |text: String| Response::new(451, &text);
        let site = match site {
            Ok(s) => s,
            Err(resp) => return self.transient(&msg, &queue.name, config, resp, None).await,
        };
        let pool_name = config.egress_pool.as_deref().unwrap_or("unspecified");
        let source = match self.egress.pool(pool_name).await {
            Err(e) => Err(format!("4.4.4 KumoMTA internal: {e}")),
            Ok(pool) => {
                let weights: Vec<u32> = pool.entries.iter().map(|e| e.weight).collect();
                let pick = queue.wrr.lock().next(&weights);
                match pick {
                    Some(i) => self
                        .egress
                        .source(&pool.entries[i].name)
                        .await
                        .map_err(|e| format!("4.4.4 KumoMTA internal: {e}")),
                    None => Err(format!(
                        "4.4.4 KumoMTA internal: no sources for {} pool=`{pool_name}` are eligible for selection at this time",
                        queue.name
                    )),
                }
            }
        };
        let source = match source {
            Ok(s) => s,
            Err(text) => {
                return self
                    .transient(&msg, &queue.name, config, fail(text), None)
                    .await;
            }
        };
        let rq = match self
            .egress
            .ready_queue(source, site, queue.parts.routing_domain(), proto)
            .await
        {
            Ok(rq) => rq,
            Err(e) => {
                let resp = fail(format!("4.4.4 KumoMTA internal: {e}"));
                return self.transient(&msg, &queue.name, config, resp, None).await;
            }
        };
        let item = Ready {
            msg: msg.clone(),
            queue: queue.name.clone(),
            config: config.clone(),
        };
        if let Placement::Full = crate::egress::enqueue(self, &rq, item) {
            // back to the scheduled queue for a random 0-60 s, no event (spec §3.2)
            let wait = Duration::from_millis(rand::random_range(0..60_000));
            let due = Utc::now() + chrono::TimeDelta::from_std(wait).unwrap_or_default();
            let text = format!(
                "Context: ReadyQueueWasFull. Next due in {} at {}",
                format_duration(wait),
                due.to_rfc3339()
            );
            self.logger.log(self.record(
                RecordType::Delayed,
                &msg,
                &queue.name,
                Response::new(400, &text),
            ));
            let due = self.constrained(&msg, due);
            self.wait_until(&msg, due, &queue.name);
        }
    }

    pub fn egress(&self) -> &Egress {
        &self.egress
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// A ready queue's outcome for one message.
    pub async fn complete(self: &Arc<Self>, item: &Ready, ready_queue: &str, attempt: Attempt) {
        self.apply(
            &item.msg,
            &item.queue,
            &item.config,
            attempt,
            Some(ready_queue),
        )
        .await;
    }

    pub fn throttle_check(
        &self,
        key: &str,
        spec: &sluice_common::ThrottleSpec,
    ) -> Option<Duration> {
        self.throttles.check(key, spec)
    }

    pub fn load_body(&self, msg: &Message) -> Result<(), crate::spool::SpoolError> {
        if msg.data().is_none() {
            msg.set_data(self.spool.read_data(msg.id)?);
        }
        Ok(())
    }

    /// A path throttle asks for a wait longer than a connection may idle:
    /// this message and everything else ready go back to their scheduled
    /// queues for `wait`, attempts unchanged (spec §2.3).
    pub fn ready_throttled(self: &Arc<Self>, rq: &ReadyQueue, first: Ready, wait: Duration) {
        let due = Utc::now() + chrono::TimeDelta::from_std(wait).unwrap_or_default();
        for item in std::iter::once(first).chain(rq.drain()) {
            let text = format!(
                "4.4.1 KumoMTA internal: ready queue throttled. Next due in {} at {}",
                format_duration(wait),
                due.to_rfc3339()
            );
            let mut rec = self.record(
                RecordType::Delayed,
                &item.msg,
                &item.queue,
                Response::new(451, &text),
            );
            rec.site = rq.name.clone();
            self.logger.log(rec);
            let due = self.constrained(&item.msg, due);
            self.wait_until(&item.msg, due, &item.queue);
        }
    }

    async fn deliver_maildir(
        &self,
        msg: &MessageRef,
        queue: &Arc<ScheduledQueue>,
        proto: sluice_common::queue_config::MaildirProtocol,
    ) -> Attempt {
        let (msg2, queue2) = (msg.clone(), queue.clone());
        tokio::task::spawn_blocking(move || {
            let (meta, sender, rcpts, data) = {
                let s = msg2.state();
                (
                    s.meta.clone(),
                    s.sender.clone(),
                    s.recipients.clone(),
                    s.data.clone().unwrap_or_default(),
                )
            };
            let vars = delivery::maildir::TemplateVars {
                meta: &meta,
                queue: &queue2.name,
                campaign: queue2.parts.campaign.as_deref(),
                tenant: queue2.parts.tenant.as_deref(),
                domain: &queue2.parts.domain,
                routing_domain: queue2.parts.routing_domain.as_deref(),
                sender: &sender,
            };
            delivery::maildir::deliver(&proto, &vars, &msg2.id.to_string(), &rcpts, &data)
        })
        .await
        .unwrap_or_else(|e| {
            let text = format!("KumoMTA internal: maildir task failed: {e}");
            Attempt::for_all(
                "Maildir",
                None,
                msg.recipients(),
                Outcome::Transient(Response::new(400, &text)),
            )
        })
    }

    /// Apply per-recipient results: log and drop the delivered and bounced
    /// recipients; retry the rest once, as one TransientFailure.
    async fn apply(
        self: &Arc<Self>,
        msg: &MessageRef,
        queue: &str,
        config: &Arc<QueueConfig>,
        attempt: Attempt,
        ready_queue: Option<&str>,
    ) {
        let mut delivered = vec![];
        let mut bounced = vec![];
        let mut transient = vec![];
        for r in attempt.results {
            match r.outcome {
                Outcome::Delivered(resp) => delivered.push((r.recipient, resp)),
                Outcome::Bounced(resp) => bounced.push((r.recipient, resp)),
                Outcome::Transient(resp) => transient.push((r.recipient, resp)),
            }
        }
        let delivery_protocol = Some(attempt.protocol.to_string());
        for (kind, list) in [
            (RecordType::Delivery, &delivered),
            (RecordType::Bounce, &bounced),
        ] {
            // one record per distinct response, as a batch delivery logs once
            let mut by_response: Vec<(Response, Vec<String>)> = vec![];
            for (rcpt, resp) in list {
                match by_response.iter_mut().find(|(r, _)| r == resp) {
                    Some((_, rcpts)) => rcpts.push(rcpt.clone()),
                    None => by_response.push((resp.clone(), vec![rcpt.clone()])),
                }
            }
            for (resp, rcpts) in by_response {
                let mut rec = self.record(kind, msg, queue, resp);
                rec.set_recipients(&rcpts);
                rec.delivery_protocol = delivery_protocol.clone();
                rec.peer_address = attempt.peer.clone();
                if let Some((version, cipher)) = &attempt.tls {
                    rec.tls_protocol_version = Some(version.clone());
                    rec.tls_cipher = Some(cipher.clone());
                }
                self.set_egress_fields(&mut rec, config, ready_queue);
                self.logger.log(rec);
            }
        }
        if transient.is_empty() {
            self.forget(msg);
            return;
        }
        let failed: Vec<String> = transient.iter().map(|(r, _)| r.clone()).collect();
        msg.state().recipients = failed;
        let resp = transient
            .into_iter()
            .next()
            .map(|(_, r)| r)
            .expect("non-empty");
        self.transient_via(msg, queue, config, resp, delivery_protocol, ready_queue)
            .await;
    }

    fn set_egress_fields(
        &self,
        rec: &mut LogRecord,
        config: &QueueConfig,
        ready_queue: Option<&str>,
    ) {
        if let Some(rq) = ready_queue {
            rec.site = rq.to_string();
            rec.egress_pool = Some(
                config
                    .egress_pool
                    .clone()
                    .unwrap_or_else(|| "unspecified".into()),
            );
            rec.egress_source = rq.split_once("->").map(|(s, _)| s.to_string());
        }
    }

    /// The queue's `max_message_rate` said wait: back into the same queue
    /// after exactly `wait`, attempts unchanged, a `Delayed` record (spec §2.3).
    async fn throttled(
        self: &Arc<Self>,
        msg: &MessageRef,
        queue: &str,
        config: &Arc<QueueConfig>,
        wait: Duration,
    ) {
        let now = Utc::now();
        let due = now + chrono::TimeDelta::from_std(wait).unwrap_or_default();
        let text = format!(
            "Context: MessageRateThrottle. Next due in {} at {}",
            format_duration(wait),
            due.to_rfc3339()
        );
        let resp = Response::new(400, &text);
        self.logger
            .log(self.record(RecordType::Delayed, msg, queue, resp.clone()));
        if let Requeue::Done = self
            .requeue_event(
                msg,
                queue,
                &resp.to_smtp_line(),
                &["MessageRateThrottle"],
                false,
                Some(wait),
                &mut None,
            )
            .await
        {
            return;
        }
        let due = self.constrained(msg, due);
        if self.too_old(msg, config, due) {
            let text = format!(
                "5.4.7 Next delivery time would exceed max_age={}",
                format_duration(config.max_age)
            );
            self.expire(msg, queue, &text);
            return;
        }
        self.wait_until(msg, due, queue);
    }

    /// Log a TransientFailure, run `requeue_message`, then schedule the next
    /// attempt with backoff, or expire the message when that attempt would
    /// come after `max_age` (or its `expires` time).
    async fn transient(
        self: &Arc<Self>,
        msg: &MessageRef,
        queue: &str,
        config: &Arc<QueueConfig>,
        resp: Response,
        delivery_protocol: Option<String>,
    ) {
        self.transient_via(msg, queue, config, resp, delivery_protocol, None)
            .await
    }

    async fn transient_via(
        self: &Arc<Self>,
        msg: &MessageRef,
        queue: &str,
        config: &Arc<QueueConfig>,
        resp: Response,
        delivery_protocol: Option<String>,
        ready_queue: Option<&str>,
    ) {
        let mut rec = self.record(RecordType::TransientFailure, msg, queue, resp.clone());
        rec.delivery_protocol = delivery_protocol;
        self.set_egress_fields(&mut rec, config, ready_queue);
        // logged once the next due time is on disk (or before whatever the
        // requeue handler logs), so a crash after the record cannot lose it
        let mut record = Some(rec);
        if let Requeue::Done = self
            .requeue_event(
                msg,
                queue,
                &resp.to_smtp_line(),
                &["LoggedTransientFailure"],
                true,
                None,
                &mut record,
            )
            .await
        {
            return;
        }

        let attempts = msg.num_attempts();
        let delay = config.delay_for_attempt(attempts);
        let jitter = config.jitter_secs(rand::random::<f64>());
        let delay_ms = (delay.as_millis() as i64)
            .saturating_add(jitter * 1000)
            .max(0);
        let now = Utc::now();
        let due = self.constrained(msg, now + chrono::TimeDelta::milliseconds(delay_ms));
        let age = due - msg.id.created();
        let expires = msg.state().schedule.as_ref().and_then(|s| s.expires);
        let expired = match expires {
            // an explicit expiry replaces max_age
            Some(e) if due >= e => Some(format!(
                "5.4.7 Next delivery time {} is at or after the expiry {} configured via set_scheduling",
                due.to_rfc3339(),
                e.to_rfc3339()
            )),
            Some(_) => None,
            None if age.to_std().unwrap_or_default() > config.max_age => Some(format!(
                "5.4.7 Next delivery time would be {} after creation, which exceeds max_age={}",
                human(age),
                format_duration(config.max_age),
            )),
            None => None,
        };
        if let Some(text) = expired {
            self.log_pending(&mut record);
            self.expire(msg, queue, &text);
            return;
        }
        {
            let mut state = msg.state();
            state.num_attempts = attempts.saturating_add(1);
            state.due = Some(due.timestamp_millis());
        }
        if !msg.is_spooled() {
            // first delay of a deferred_spool message: now it goes to disk
            self.spool_deferred(msg).await;
        } else {
            match serde_json::to_vec(&msg.spooled_meta())
                .map_err(|e| e.to_string())
                .and_then(|meta| {
                    self.spool
                        .update_meta_acked(msg.id, meta)
                        .map_err(|e| e.to_string())
                }) {
                Ok(ack) => {
                    let _ = ack.await;
                }
                Err(e) => tracing::error!(id = %msg.id, "cannot save meta: {e}"),
            }
        }
        self.log_pending(&mut record);
        if due <= Utc::now() {
            self.dispatch(msg.clone());
            return;
        }
        if !msg.is_spooled() {
            // the spool refused it: keep it whole in memory
            self.timer
                .insert(due.timestamp_millis(), msg.clone(), self.scheduled(queue));
            return;
        }
        // the META record is on disk: the envelope can go at once
        msg.shrink_meta(due.timestamp_millis(), Utc::now().timestamp_millis() + 1000);
        msg.shrink();
        self.timer
            .insert(due.timestamp_millis(), msg.clone(), self.scheduled(queue));
    }

    fn log_pending(&self, record: &mut Option<LogRecord>) {
        if let Some(rec) = record.take() {
            self.logger.log(rec);
        }
    }

    /// Run `requeue_message` (spec §3.4) and act on what it did: a
    /// `kumo.reject` bounces the message; a changed queue name rebinds it to
    /// the new queue, due now (scheduling constraints still apply), with one
    /// more attempt counted. `pending` (the caller's record) is logged before
    /// any record of this function's own.
    #[allow(clippy::too_many_arguments)]
    async fn requeue_event(
        self: &Arc<Self>,
        msg: &MessageRef,
        queue: &str,
        response: &str,
        context: &[&str],
        increment_attempts: bool,
        delay: Option<Duration>,
        pending: &mut Option<LogRecord>,
    ) -> Requeue {
        match self
            .policy
            .requeue_message(msg, response, context, increment_attempts, delay)
            .await
        {
            Ok(()) => {}
            Err(EventError::Rejected { code, text }) => {
                self.log_pending(pending);
                self.finish(
                    msg,
                    queue,
                    RecordType::Bounce,
                    Response::new(code, &text),
                    None,
                );
                return Requeue::Done;
            }
            Err(EventError::Failed(e)) => {
                tracing::error!(id = %msg.id, queue, "requeue_message failed: {e}");
                return Requeue::Stay;
            }
        }
        let new_queue = match name::queue_name(msg) {
            Ok(q) if q != queue => q,
            Ok(_) => return Requeue::Stay,
            Err(e) => {
                tracing::error!(id = %msg.id, "requeue_message left an invalid queue name: {e}");
                return Requeue::Stay;
            }
        };
        self.log_pending(pending);
        {
            let mut s = msg.state();
            s.num_attempts = s.num_attempts.saturating_add(1);
            s.due = None;
        }
        let now = Utc::now();
        let due = self.constrained(msg, now);
        if new_queue != "null" {
            match self.resolve(&new_queue).await {
                Ok(q) if self.too_old(msg, &q.config(), due) => {
                    let text = format!(
                        "5.4.7 message is older than max_age={} of {new_queue}",
                        format_duration(q.config().max_age)
                    );
                    self.expire(msg, &new_queue, &text);
                    return Requeue::Done;
                }
                Ok(_) => {}
                // delivery will retry resolving it and log why
                Err(e) => tracing::error!(id = %msg.id, queue = new_queue, "{e}"),
            }
        }
        self.wait_until(msg, due, &new_queue);
        Requeue::Done
    }

    /// Expiration `551 5.4.7 …` (`text` carries the enhanced code).
    fn expire(&self, msg: &Message, queue: &str, text: &str) {
        self.finish(
            msg,
            queue,
            RecordType::Expiration,
            Response::new(551, text),
            None,
        );
    }

    /// Log a final disposition and remove the message from the spool.
    fn finish(
        &self,
        msg: &Message,
        queue: &str,
        kind: RecordType,
        resp: Response,
        delivery_protocol: Option<String>,
    ) {
        let mut rec = self.record(kind, msg, queue, resp);
        rec.delivery_protocol = delivery_protocol;
        self.logger.log(rec);
        self.forget(msg);
    }

    /// A log record with the message's common fields filled in.
    pub fn record(
        &self,
        kind: RecordType,
        msg: &Message,
        queue: &str,
        resp: Response,
    ) -> LogRecord {
        let mut rec = LogRecord::new(kind, msg.id.to_string(), resp);
        let s = msg.state();
        rec.sender = s.sender.clone();
        rec.set_recipients(&s.recipients);
        rec.queue = queue.to_string();
        rec.size = s.data_len;
        rec.num_attempts = s.num_attempts;
        rec.set_created(msg.id.created());
        rec.all_meta = s.meta.clone();
        rec.reception_protocol = s
            .meta
            .get("reception_protocol")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        if self.logger.needs_headers()
            && let Some(data) = &s.data
        {
            rec.header_block = Some(crate::headers::header_block(data));
        }
        rec.nodeid = self.nodeid.clone();
        rec
    }

    pub fn log(&self, rec: LogRecord) {
        self.logger.log(rec);
    }
}
