//! Scheduled queues: resolve each queue's config from the policy, hold
//! messages until they are due, hand due messages to their protocol, and
//! apply the outcome (delivery, retry with backoff, bounce, expiry).

pub mod name;
mod timer;

use crate::delivery::{self, Attempt, Outcome};
use crate::log::{LogRecord, Logger, RecordType, Response};
use crate::message::{Message, MessageId, MessageRef, SpooledMeta};
use crate::policy::Policy;
use crate::spool::Spool;
use chrono::Utc;
use name::QueueName;
use parking_lot::Mutex;
use sluice_common::queue_config::{Protocol, QueueConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use timer::Timer;
use tokio::sync::Semaphore;

/// How many deliveries run at once.
const DELIVERY_CONCURRENCY: usize = 128;

pub struct ScheduledQueue {
    pub name: String,
    pub parts: QueueName,
    config: Mutex<(Arc<QueueConfig>, Instant)>,
}

impl ScheduledQueue {
    pub fn config(&self) -> Arc<QueueConfig> {
        self.config.lock().0.clone()
    }
}

pub struct QueueManager {
    policy: Arc<Policy>,
    spool: Arc<Spool>,
    logger: Arc<Logger>,
    queues: Mutex<HashMap<String, Arc<ScheduledQueue>>>,
    timer: Timer,
    deliveries: Arc<Semaphore>,
    nodeid: String,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl QueueManager {
    pub fn new(
        policy: Arc<Policy>,
        spool: Arc<Spool>,
        logger: Arc<Logger>,
        nodeid: String,
    ) -> Arc<QueueManager> {
        let qm = Arc::new(QueueManager {
            policy,
            spool,
            logger,
            queues: Mutex::new(HashMap::new()),
            timer: Timer::new(),
            deliveries: Arc::new(Semaphore::new(DELIVERY_CONCURRENCY)),
            nodeid,
        });
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

    /// Find or create the scheduled queue `name`, asking the policy for its
    /// config when it is new or its `refresh_interval` has passed.
    pub async fn resolve(&self, name: &str) -> Result<Arc<ScheduledQueue>, String> {
        let existing = self.queues.lock().get(name).cloned();
        if let Some(q) = &existing {
            let (config, fetched) = q.config.lock().clone();
            if fetched.elapsed() < config.refresh_interval {
                return Ok(q.clone());
            }
        }
        let parts = QueueName::parse(name);
        let config = self
            .policy
            .get_queue_config(
                &parts.domain,
                parts.tenant.as_deref(),
                parts.campaign.as_deref(),
                parts.routing_domain.as_deref(),
            )
            .await;
        let config = match (config, &existing) {
            (Ok(c), _) => Arc::new(c),
            // a failing refresh keeps the old config (spec §11)
            (Err(e), Some(q)) => {
                tracing::error!(
                    queue = name,
                    "get_queue_config failed, keeping previous config: {e}"
                );
                *q.config.lock() = (q.config(), Instant::now());
                return Ok(q.clone());
            }
            (Err(e), None) => return Err(format!("get_queue_config for {name}: {e}")),
        };
        if let Some(q) = existing {
            *q.config.lock() = (config, Instant::now());
            return Ok(q);
        }
        let q = Arc::new(ScheduledQueue {
            name: name.to_string(),
            parts,
            config: Mutex::new((config, Instant::now())),
        });
        Ok(self
            .queues
            .lock()
            .entry(name.to_string())
            .or_insert(q)
            .clone())
    }

    /// Queue a freshly received (already spooled) message.
    pub fn insert(self: &Arc<Self>, msg: MessageRef) {
        let due = msg.state().due;
        match due {
            Some(due) if due > now_ms() => {
                msg.shrink();
                self.timer.insert(due, msg);
            }
            _ => self.dispatch(msg),
        }
    }

    /// Re-queue every message recovered from the spool at start-up.
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
                    self.finish(
                        &msg,
                        "",
                        RecordType::Expiration,
                        Response::new(551, &format!("5.1.3 invalid queue name: {e}")),
                        None,
                    );
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
            let age = Utc::now() - msg.id.created();
            if age.to_std().unwrap_or_default() >= q.config().max_age {
                let text = format!(
                    "5.4.7 message is older than max_age={}",
                    sluice_common::duration::format_duration(q.config().max_age)
                );
                self.finish(
                    &msg,
                    &queue,
                    RecordType::Expiration,
                    Response::new(551, &text),
                    None,
                );
                continue;
            }
            self.insert(msg);
            n += 1;
        }
        n
    }

    /// Start a delivery attempt for a due message.
    fn dispatch(self: &Arc<Self>, msg: MessageRef) {
        let qm = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = qm.deliveries.clone().acquire_owned().await else {
                return;
            };
            qm.attempt(msg).await;
        });
    }

    async fn attempt(self: Arc<Self>, msg: MessageRef) {
        let queue_name = match name::queue_name(&msg) {
            Ok(q) => q,
            Err(e) => {
                self.finish(
                    &msg,
                    "",
                    RecordType::Bounce,
                    Response::new(551, &format!("5.1.3 invalid queue name: {e}")),
                    None,
                );
                return;
            }
        };
        let queue = match self.resolve(&queue_name).await {
            Ok(q) => q,
            Err(e) => {
                let config = Arc::new(QueueConfig::default());
                self.transient(
                    &msg,
                    &queue_name,
                    &config,
                    Response::new(451, &format!("4.4.4 KumoMTA internal: {e}")),
                    None,
                )
                .await;
                return;
            }
        };
        let config = queue.config();
        if msg.data().is_none() {
            match self.spool.read_data(msg.id) {
                Ok(data) => msg.set_data(data),
                Err(e) => {
                    tracing::error!(id = %msg.id, "cannot read message body: {e}");
                    self.transient(
                        &msg,
                        &queue_name,
                        &config,
                        Response::new(
                            400,
                            &format!("KumoMTA internal: cannot read spooled body: {e}"),
                        ),
                        None,
                    )
                    .await;
                    return;
                }
            }
        }
        let attempt = match &config.protocol {
            Protocol::Maildir(proto) => {
                let proto = proto.clone();
                let msg2 = msg.clone();
                let queue2 = queue.clone();
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
                .unwrap_or_else(|e| Attempt {
                    protocol: "Maildir",
                    peer: None,
                    results: msg
                        .recipients()
                        .into_iter()
                        .map(|r| delivery::RecipientResult {
                            recipient: r,
                            outcome: Outcome::Transient(Response::new(
                                400,
                                &format!("KumoMTA internal: maildir task failed: {e}"),
                            )),
                        })
                        .collect(),
                })
            }
            Protocol::Smtp(_) | Protocol::CustomLua(_) => {
                let text =
                    "KumoMTA internal: this protocol is not available in this build of sluice-mta";
                self.transient(&msg, &queue_name, &config, Response::new(400, text), None)
                    .await;
                return;
            }
        };
        self.apply(&msg, &queue_name, &config, attempt).await;
    }

    /// Apply per-recipient results: log and drop the delivered and bounced
    /// recipients; retry the rest once, as one TransientFailure.
    async fn apply(
        &self,
        msg: &MessageRef,
        queue: &str,
        config: &Arc<QueueConfig>,
        attempt: Attempt,
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
                self.logger.log(rec);
            }
        }
        if transient.is_empty() {
            let _ = self.spool.remove(msg.id);
            return;
        }
        let failed: Vec<String> = transient.iter().map(|(r, _)| r.clone()).collect();
        msg.state().recipients = failed;
        let resp = transient
            .into_iter()
            .next()
            .map(|(_, r)| r)
            .expect("non-empty");
        self.transient(msg, queue, config, resp, delivery_protocol)
            .await;
    }

    /// Log a TransientFailure and schedule the next attempt with backoff, or
    /// expire the message when the next attempt would pass `max_age`.
    async fn transient(
        &self,
        msg: &MessageRef,
        queue: &str,
        config: &Arc<QueueConfig>,
        resp: Response,
        delivery_protocol: Option<String>,
    ) {
        let mut rec = self.record(RecordType::TransientFailure, msg, queue, resp);
        rec.delivery_protocol = delivery_protocol;
        self.logger.log(rec);

        let attempts = msg.num_attempts();
        let delay = config.delay_for_attempt(attempts);
        let jitter = config.jitter_secs(rand::random::<f64>());
        let delay_ms = (delay.as_millis() as i64)
            .saturating_add(jitter * 1000)
            .max(0);
        let now = now_ms();
        let created_ms = msg.id.created().timestamp_millis();
        let age_ms = now - created_ms;
        if age_ms.saturating_add(delay_ms) > config.max_age.as_millis() as i64 {
            let text = format!(
                "5.4.7 Next delivery time would be {} after creation, which exceeds max_age={}",
                sluice_common::duration::format_duration(Duration::from_secs(
                    ((age_ms + delay_ms) / 1000).max(0) as u64
                )),
                sluice_common::duration::format_duration(config.max_age),
            );
            self.finish(
                msg,
                queue,
                RecordType::Expiration,
                Response::new(551, &text),
                None,
            );
            return;
        }
        let due = now.saturating_add(delay_ms);
        {
            let mut s = msg.state();
            s.num_attempts = attempts.saturating_add(1);
            s.due = Some(due);
        }
        match serde_json::to_vec(&msg.spooled_meta()) {
            Ok(meta) => {
                let _ = self.spool.update_meta(msg.id, meta);
            }
            Err(e) => tracing::error!(id = %msg.id, "cannot serialise meta: {e}"),
        }
        msg.shrink();
        self.timer.insert(due, msg.clone());
    }

    /// Log a final disposition and remove the message from the spool.
    fn finish(
        &self,
        msg: &MessageRef,
        queue: &str,
        kind: RecordType,
        resp: Response,
        delivery_protocol: Option<String>,
    ) {
        let mut rec = self.record(kind, msg, queue, resp);
        rec.delivery_protocol = delivery_protocol;
        self.logger.log(rec);
        let _ = self.spool.remove(msg.id);
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

    pub fn message_ids_in_timer(&self) -> Vec<MessageId> {
        self.timer.ids()
    }
}
