//! The queue engine: scheduled queues (spec §1.2, §3). It holds each
//! message until it is due, promotes due messages through the queue's rate
//! throttle to egress, and applies what comes back: delivery, retry with
//! backoff, bounce, expiry, `requeue_message`. It knows no protocol.
//!
//! * `registry`: the scheduled queues and their configs, reaped when idle;
//! * `store`: what the spool holds of each message, and recovery;
//! * `promote`: due messages to egress;
//! * `outcome`: what an attempt or a delay does to a message;
//! * `requeue`: the `requeue_message` event;
//! * `retry`: the timing rules, as pure functions;
//! * `timer`, `admin` (bounce and suspend rules), `deferred` (the queue of
//!   `deferred_queue` listeners).

pub mod admin;
pub mod deferred;
mod outcome;
mod pressure;
mod promote;
pub mod ready_suspend;
pub mod rebind;
mod registry;
mod requeue;
pub mod retry;
pub mod shaping;
mod store;
mod timer;
pub mod xfer;

pub use registry::ScheduledQueue;

use crate::clock::Clock;
use crate::egress::Egress;
use crate::lifecycle::Lifecycle;
use crate::log::{LogRecord, Logger, RecordType, Response};
use crate::message::name::{self, NameError};
use crate::message::{Message, MessageRef};
use crate::policy::Policy;
use crate::spool::Spool;
use crate::throttle::Throttles;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use timer::Timer;

/// How many promotions (and the deliveries that do not go through a ready
/// queue, such as maildir) run at once.
const PROMOTION_WORKERS: usize = 128;

/// Why a message cannot be routed to a queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue name cannot be made from the message (a non-string meta
    /// value, no recipients).
    #[error("{0}")]
    Name(#[from] NameError),
    /// The policy's `get_queue_config` failed for the queue.
    #[error("get_queue_config for {queue}: {source}")]
    Config {
        /// The queue's full name.
        queue: String,
        /// The hook's failure.
        source: crate::policy::EventError,
    },
}

impl QueueError {
    /// A stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            QueueError::Name(_) => "queue_name",
            QueueError::Config { .. } => "get_queue_config",
        }
    }
}

/// What the engine is built from.
pub struct Parts {
    /// The policy whose events (`get_queue_config`, `requeue_message`, ...)
    /// the engine fires.
    pub policy: Arc<Policy>,
    /// Where messages are kept until they are delivered, bounced or expired.
    pub spool: Arc<Spool>,
    /// Where delivery, bounce, delay and expiry records go.
    pub logger: Arc<Logger>,
    /// Where due messages are submitted; it reports outcomes back to the
    /// engine.
    pub egress: Arc<Egress>,
    /// The throttles that enforce each queue's `max_message_rate`.
    pub throttles: Arc<Throttles>,
    /// The drain state: promotions stop when a drain starts, and running
    /// deliveries count as busy.
    pub lifecycle: Arc<Lifecycle>,
    /// The engine's time, for scheduling and expiry (stoppable in tests).
    pub clock: Arc<dyn Clock>,
    /// This node's id, written into every log record.
    pub nodeid: String,
    /// The memory watch: under pressure bodies are released and promotion
    /// slows to what the connections take.
    pub memory: Arc<crate::memory::Memory>,
}

/// The scheduled-queue engine: it holds each message until it is due, submits
/// it to egress, and applies what its attempts did (retry, bounce, expire,
/// move).
pub struct QueueManager {
    /// Itself, for the methods egress calls through a reference.
    me: std::sync::Weak<QueueManager>,
    policy: Arc<Policy>,
    spool: Arc<Spool>,
    logger: Arc<Logger>,
    egress: Arc<Egress>,
    throttles: Arc<Throttles>,
    lifecycle: Arc<Lifecycle>,
    clock: Arc<dyn Clock>,
    nodeid: String,
    memory: Arc<crate::memory::Memory>,
    queues: Mutex<HashMap<String, Arc<ScheduledQueue>>>,
    timer: Timer,
    rules: admin::AdminRules,
    /// Messages that are due, waiting for a promotion worker.
    due: Mutex<VecDeque<MessageRef>>,
    due_ready: tokio::sync::Notify,
    /// Delivery attempts started (promotions out of the scheduled queues).
    attempts: std::sync::atomic::AtomicU64,
    /// Accepted with `deferred_spool` and not yet written: the spool gets
    /// them when first delayed, or at shutdown.
    unspooled: Mutex<HashMap<crate::message::MessageId, MessageRef>>,
}

impl QueueManager {
    /// The engine, its promotion workers and its timer running, its egress
    /// reporting back to it.
    pub fn new(parts: Parts) -> Arc<QueueManager> {
        let qm = Arc::new_cyclic(|me| QueueManager {
            me: me.clone(),
            timer: Timer::new(parts.clock.clone()),
            policy: parts.policy,
            spool: parts.spool,
            logger: parts.logger,
            egress: parts.egress,
            throttles: parts.throttles,
            lifecycle: parts.lifecycle,
            clock: parts.clock,
            nodeid: parts.nodeid,
            memory: parts.memory,
            queues: Mutex::new(HashMap::new()),
            rules: Default::default(),
            due: Mutex::new(VecDeque::new()),
            due_ready: tokio::sync::Notify::new(),
            attempts: std::sync::atomic::AtomicU64::new(0),
            unspooled: Mutex::new(HashMap::new()),
        });
        let weak: std::sync::Weak<QueueManager> = Arc::downgrade(&qm);
        let outcomes: std::sync::Weak<dyn crate::egress::Outcomes> = weak;
        qm.egress.report_to(outcomes);
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
        tokio::spawn(Self::reaper(Arc::downgrade(&qm)));
        qm
    }

    /// The spool the engine keeps messages in.
    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// This node's id, as log records carry it.
    pub fn nodeid(&self) -> &str {
        &self.nodeid
    }

    /// The egress the engine submits to.
    pub fn egress(&self) -> &Egress {
        &self.egress
    }

    /// The policy the engine runs.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// How many messages wait in the timer for a later attempt.
    pub fn delayed_count(&self) -> usize {
        self.timer.len() + self.rules.parked_count()
    }

    /// How many delivery attempts have started so far.
    pub fn attempts_started(&self) -> u64 {
        self.attempts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The queue a new message goes to by its envelope and meta, resolved
    /// (so a policy error surfaces before the message is accepted).
    pub async fn route(&self, msg: &Message) -> Result<String, QueueError> {
        let queue = name::queue_name(msg)?;
        if queue != "null" {
            self.resolve(&queue).await?;
        }
        Ok(queue)
    }

    /// Queue a freshly received (already admitted) message. A message whose
    /// scheduling holds it for later logs `Delayed` and waits.
    pub fn insert(self: &Arc<Self>, msg: MessageRef, queue: &str) {
        if !self.keep_bodies() {
            // memory is getting short: the spool has the body (KumoMTA
            // releases message data as messages move between queues)
            msg.release_body();
        }
        let now = self.now();
        let due = retry::constrained(msg.state().schedule.as_ref(), now);
        if due > now {
            let wait = (due - now).to_std().unwrap_or_default();
            self.delayed(
                &msg,
                queue,
                crate::log::DelayReason::ScheduledForLater,
                wait,
                None,
            );
            self.wait_until(&msg, due, queue);
        } else {
            self.dispatch(msg);
        }
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
            rec.header_block = Some(crate::message::headers::header_block(data));
        }
        rec.nodeid = self.nodeid.clone();
        rec
    }

    /// Write `rec` to the engine's log.
    pub fn log(&self, rec: LogRecord) {
        self.logger.log(rec);
    }
}
