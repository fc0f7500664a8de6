//! Log hooks (spec §8): each log record becomes a message whose body is the
//! record's JSON; `should_enqueue_log_record(msg, hook_name)` decides whether
//! it is spooled and queued (usually to a custom_lua queue that publishes it
//! to AMQP or a webhook).
//!
//! Each hook has a worker thread fed by a bounded channel: the mail flow only
//! waits when `back_pressure` records are already pending. The worker turns
//! whatever has arrived into messages in one batch: the policy events run
//! concurrently and the batch is spooled with one group commit.

use crate::log::{HookItem, HookSender, LogHookConfig, LogRecord};
use crate::message::{Message, MessageId, MessageRef};
use crate::queue::QueueManager;
use serde_json::Value;
use std::sync::{Arc, mpsc};

/// `reception_protocol` of hook messages; their own records are not hooked.
use crate::log::HOOK_RECEPTION_PROTOCOL as RECEPTION_PROTOCOL;

const MAX_BATCH: usize = 1024;

/// Start one worker per hook; the senders go to `Logger::attach_hooks`. Fails
/// only when a worker thread cannot be started.
pub fn start(
    configs: &[LogHookConfig],
    queues: Arc<QueueManager>,
) -> std::io::Result<Vec<HookSender>> {
    let handle = tokio::runtime::Handle::current();
    let mut senders = vec![];
    for config in configs {
        let (tx, rx) = mpsc::sync_channel(config.back_pressure.max(1));
        let worker = Worker {
            name: config.name.clone(),
            deferred_spool: config.deferred_spool,
            queues: queues.clone(),
        };
        let handle = handle.clone();
        std::thread::Builder::new()
            .name(format!("log-hook-{}", config.name))
            .spawn(move || worker.run(handle, rx))?;
        senders.push(HookSender {
            config: config.clone(),
            tx,
        });
    }
    Ok(senders)
}

struct Worker {
    name: String,
    deferred_spool: bool,
    queues: Arc<QueueManager>,
}

impl Worker {
    fn run(self, handle: tokio::runtime::Handle, rx: mpsc::Receiver<HookItem>) {
        while let Ok(first) = rx.recv() {
            let mut records = vec![];
            let mut waiters = vec![];
            let mut next = Some(first);
            while let Some(item) = next {
                match item {
                    HookItem::Record(r) => records.push(*r),
                    HookItem::Flush(done) => waiters.push(done),
                }
                if records.len() >= MAX_BATCH {
                    break;
                }
                next = rx.try_recv().ok();
            }
            handle.block_on(self.process(records));
            for w in waiters {
                let _ = w.send(());
            }
        }
    }

    async fn process(&self, records: Vec<LogRecord>) {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, record) in records.into_iter().enumerate() {
            let queues = self.queues.clone();
            let name = self.name.clone();
            tasks.spawn(async move { (i, prepare(&queues, &name, &record).await) });
        }
        let mut prepared = vec![];
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, Ok(Some(item)))) => prepared.push((i, item)),
                Ok((_, Ok(None))) => {}
                Ok((_, Err(e))) => {
                    tracing::warn!(hook = %self.name, "log record dropped: {e}")
                }
                Err(e) => tracing::error!(hook = %self.name, "log hook task failed: {e}"),
            }
        }
        prepared.sort_by_key(|(i, _)| *i);
        let queued: Vec<(MessageRef, String)> = prepared
            .into_iter()
            .map(|(_, item)| item)
            .filter(|(_, queue)| queue != "null")
            .collect();
        if queued.is_empty() {
            return;
        }
        if let Err(e) = self.queues.admit(&queued, self.deferred_spool).await {
            tracing::error!(hook = %self.name, count = queued.len(), "log records dropped: spool write failed: {e}");
            return;
        }
        for (msg, queue) in queued {
            self.queues.insert(msg, &queue);
        }
    }
}

/// Why a log record could not be made a message.
#[derive(Debug, thiserror::Error)]
enum HookError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("should_enqueue_log_record: {0}")]
    Policy(#[from] crate::policy::EventError),
    #[error("{0}")]
    Queue(#[from] crate::queue::QueueError),
}

/// The message for one record, and its queue if the policy wants it queued.
async fn prepare(
    queues: &QueueManager,
    hook: &str,
    record: &LogRecord,
) -> Result<Option<(MessageRef, String)>, HookError> {
    let json = serde_json::to_value(record)?;
    let mut meta = record.meta.clone();
    meta.insert("log_record".into(), json.clone());
    meta.insert("reception_protocol".into(), RECEPTION_PROTOCOL.into());
    let recipients = match &record.recipient {
        Value::Array(list) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Value::String(one) => vec![one.clone()],
        _ => vec![],
    };
    let body = serde_json::to_vec(&json)?;
    let msg = Message::new(
        MessageId::new(),
        record.sender.clone(),
        recipients,
        meta,
        body,
    );
    let wanted = queues
        .policy()
        .should_enqueue_log_record(&msg, hook)
        .await?;
    if !wanted {
        return Ok(None);
    }
    let queue = queues.route(&msg).await?;
    Ok(Some((msg, queue)))
}
