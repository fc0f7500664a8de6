//! Moving queued messages to another node (KumoMTA's xfer), the parts the
//! queue engine, delivery and policy share: the xfer queue of a target
//! (`<url>.xfer.kumomta.internal`), what a message keeps of its own queue
//! while it waits in one, and what travels to the target.
//!
//! A message bound for another node gets meta `queue` = the xfer queue,
//! which the engine delivers like any queue (the egress path's throttles
//! and connection limits apply) by `POST <target>/api/xfer/inject/v1`; its
//! own queue, attempts, due time and scheduling are kept in meta
//! [`INFO_KEY`] meanwhile and sent as they were, so the target schedules it
//! as this node would have. The source removes it only after the target
//! answered 2xx, which it does once the message is in its spool.

pub mod client;

use crate::message::schedule::Scheduling;
use crate::message::{Message, MessageId, SpooledMeta};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_common::queue_config::{Protocol, QueueConfig};
use std::time::Duration;

/// The suffix of every xfer queue's name.
pub const SUFFIX: &str = ".xfer.kumomta.internal";
/// The `delivery_protocol` of xfer attempts and records.
pub const PROTOCOL: &str = "xfer";
/// Where a node takes transferred messages in, on its HTTP listener.
pub const INJECT_PATH: &str = "/api/xfer/inject/v1";
/// The meta key holding what a message keeps of its own queue while it
/// waits in an xfer queue.
pub const INFO_KEY: &str = "xfer_queue_info";

/// The xfer queue of `target` (an HTTP listener's URL).
pub fn queue_name(target: &str) -> String {
    format!("{}{SUFFIX}", normalize(target))
}

/// A target URL as queue names hold it: with a trailing `/`.
pub fn normalize(target: &str) -> String {
    let t = target.trim();
    match t.ends_with('/') {
        true => t.to_string(),
        false => format!("{t}/"),
    }
}

/// The target of an xfer queue; `None` for any other queue.
pub fn target_of(queue: &str) -> Option<&str> {
    queue.strip_suffix(SUFFIX).filter(|t| !t.is_empty())
}

/// An xfer queue's config: retried every 10 s doubling up to 5 minutes (a
/// target that is briefly away, such as a pod restarting, is retried soon),
/// for as long as any message may live (a week; each message's own
/// `max_age` applies again on the target).
pub fn queue_config(target: &str) -> QueueConfig {
    QueueConfig {
        retry_interval: Duration::from_secs(10),
        max_retry_interval: Some(Duration::from_secs(300)),
        max_age: Duration::from_secs(7 * 86400),
        refresh_interval: Duration::from_secs(u32::MAX as u64),
        protocol: Protocol::Xfer(target.to_string()),
        ..QueueConfig::default()
    }
}

/// What a message in an xfer queue keeps of its own queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedInfo {
    /// Its meta `queue`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<Value>,
    /// Its attempts so far.
    pub num_attempts: u16,
    /// When its next attempt was due (unix ms); `None`: now.
    #[serde(default)]
    pub due: Option<i64>,
    /// Its `msg:set_scheduling` constraints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Scheduling>,
}

/// The saved info of a message in an xfer queue.
pub fn saved(msg: &Message) -> Option<SavedInfo> {
    let s = msg.state();
    serde_json::from_value(s.meta.get(INFO_KEY)?.clone()).ok()
}

/// The target a message is bound for, if it is in an xfer queue.
pub fn target(msg: &Message) -> Option<String> {
    let queue = msg.meta_string("queue")?;
    target_of(&queue).map(str::to_string)
}

/// Bind `msg` for `target`: its own queue, attempts, due time and scheduling
/// saved, meta `queue` set to the xfer queue, due now with no constraint
/// (they travel and apply on the target), its attempts counting transfer
/// attempts from 0 (the xfer queue's backoff starts at 10 s whatever the
/// message went through before). Returns the xfer queue, or `None`
/// when it was bound there already. A message bound elsewhere is unbound
/// first, so its saved info stays its own.
pub fn bind(msg: &Message, target: &str) -> Option<String> {
    let queue = queue_name(target);
    if msg.meta_string("queue").as_deref() == Some(queue.as_str()) {
        return None;
    }
    unbind(msg);
    let mut s = msg.state();
    let info = SavedInfo {
        queue: s.meta.get("queue").cloned(),
        num_attempts: s.num_attempts,
        due: s.due,
        schedule: s.schedule.take(),
    };
    s.meta.insert(
        INFO_KEY.into(),
        serde_json::to_value(info).expect("serialises"),
    );
    s.meta.insert("queue".into(), Value::String(queue.clone()));
    s.due = None;
    s.num_attempts = 0;
    Some(queue)
}

/// Undo [`bind`]: the message's own queue, attempts, due time and
/// scheduling back. `false` when it was not bound for a target.
pub fn unbind(msg: &Message) -> bool {
    let Some(info) = saved(msg) else {
        return false;
    };
    let s = &mut *msg.state();
    info.put_back(
        &mut s.meta,
        &mut s.num_attempts,
        &mut s.due,
        &mut s.schedule,
    );
    true
}

impl SavedInfo {
    /// The message's own queue, attempts, due time and scheduling back in
    /// place of its binding.
    fn put_back(
        self,
        meta: &mut serde_json::Map<String, Value>,
        num_attempts: &mut u16,
        due: &mut Option<i64>,
        schedule: &mut Option<Scheduling>,
    ) {
        meta.remove(INFO_KEY);
        match self.queue {
            Some(q) => meta.insert("queue".into(), q),
            None => meta.remove("queue"),
        };
        *num_attempts = self.num_attempts;
        *due = self.due;
        *schedule = self.schedule;
    }
}

/// The header of a transfer: who sends it, and the message as its own
/// queue has it. The body follows it after a newline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The message id, kept: its timestamp is the message's `created`.
    pub id: String,
    /// The sending node's id: a node refuses what it sent itself.
    pub from_node: String,
    /// Envelope, meta (the xfer binding removed), attempts, due time and
    /// scheduling, as the spool's META record has them.
    pub message: SpooledMeta,
}

/// A transfer body: the header as one JSON line, then the message bytes.
pub fn encode(msg: &Message, from_node: &str, data: &[u8]) -> Vec<u8> {
    let mut meta = msg.spooled_meta();
    if let Some(info) = saved(msg) {
        let m = &mut meta;
        info.put_back(
            &mut m.meta,
            &mut m.num_attempts,
            &mut m.due,
            &mut m.schedule,
        );
    }
    let header = Header {
        id: msg.id.to_string(),
        from_node: from_node.to_string(),
        message: meta,
    };
    let mut out = serde_json::to_vec(&header).expect("serialises");
    out.push(b'\n');
    out.extend_from_slice(data);
    out
}

/// A transfer body that cannot be taken in.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// No newline after the header.
    #[error("no header line")]
    NoHeader,
    /// The header is not the JSON expected.
    #[error("header: {0}")]
    Header(#[from] serde_json::Error),
    /// The id is not a UUID.
    #[error("id {0:?} is not a message id")]
    Id(String),
    /// A message without recipients cannot be queued.
    #[error("the message has no recipients")]
    NoRecipients,
}

/// The header, its id, and the message bytes of a transfer body.
pub fn decode(body: &[u8]) -> Result<(Header, MessageId, &[u8]), DecodeError> {
    let nl = memchr::memchr(b'\n', body).ok_or(DecodeError::NoHeader)?;
    let header: Header = serde_json::from_slice(&body[..nl])?;
    let id = MessageId::parse(&header.id).ok_or_else(|| DecodeError::Id(header.id.clone()))?;
    if header.message.recipient.is_empty() {
        return Err(DecodeError::NoRecipients);
    }
    Ok((header, id, &body[nl + 1..]))
}

#[cfg(test)]
mod tests;
