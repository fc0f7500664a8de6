//! The message as the queue engine and policy see it (spec §1.1): envelope,
//! meta, attempt count and due time. The body is held in memory only while a
//! delivery needs it; the spool has the durable copy.

pub mod headers;
pub mod name;
pub mod schedule;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use schedule::Scheduling;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;
use std::sync::OnceLock;

/// A UUID v1, rendered as 32 lowercase hex digits; its timestamp is the
/// message's creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh id, stamped with the current time.
    pub fn new() -> Self {
        static NODE: OnceLock<[u8; 6]> = OnceLock::new();
        let node = NODE.get_or_init(|| {
            let mut n: [u8; 6] = rand::random();
            n[0] |= 0x01; // multicast bit: a random node id, not a MAC (RFC 4122 §4.5)
            n
        });
        MessageId(*uuid::Uuid::now_v1(node).as_bytes())
    }

    /// The creation time the id carries (the Unix epoch for an id without one).
    pub fn created(&self) -> DateTime<Utc> {
        let uuid = uuid::Uuid::from_bytes(self.0);
        match uuid.get_timestamp() {
            Some(ts) => {
                let (secs, nanos) = ts.to_unix();
                DateTime::from_timestamp(secs as i64, nanos).unwrap_or_default()
            }
            None => DateTime::default(),
        }
    }

    /// The id a UUID string names (32 hex digits, or another UUID form); `None`
    /// for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::try_parse(s)
            .ok()
            .map(|u| MessageId(*u.as_bytes()))
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", uuid::Uuid::from_bytes(self.0).simple())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What the spool keeps as the message's metadata record (JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpooledMeta {
    /// The envelope sender.
    pub sender: String,
    /// The recipients still to deliver to.
    pub recipient: Vec<String>,
    /// The message's meta.
    #[serde(default)]
    pub meta: Map<String, Value>,
    /// Unlike KumoMTA, the attempt count and next due time are persisted so
    /// that a restart does not retry the whole spool at once.
    #[serde(default)]
    pub num_attempts: u16,
    /// Next due time, unix milliseconds; absent = due now.
    #[serde(default)]
    pub due: Option<i64>,
    /// Constraints from `msg:set_scheduling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Scheduling>,
    /// The last attempt's transient failure, on one line (for
    /// `inspect-message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_response: Option<String>,
}

/// The mutable part of a [`Message`], behind its lock.
#[derive(Debug)]
pub struct MessageState {
    /// The envelope sender; empty while the meta is shrunk.
    pub sender: String,
    /// The recipients still to deliver to; empty while the meta is shrunk.
    pub recipients: Vec<String>,
    /// The message's meta; empty while the meta is shrunk.
    pub meta: Map<String, Value>,
    /// Attempts made so far: it rises after each transient failure.
    pub num_attempts: u16,
    /// When the next attempt is due, unix milliseconds; `None` means now.
    pub due: Option<i64>,
    /// Constraints from `msg:set_scheduling`.
    pub schedule: Option<Scheduling>,
    /// The last attempt's transient failure, on one line.
    pub last_response: Option<String>,
    /// The body (headers and content) while it is in memory: released while the
    /// message waits, absent for a recovered one until read back.
    pub data: Option<Arc<Vec<u8>>>,
    /// The body's length in bytes, known whether or not `data` is in memory.
    pub data_len: usize,
    /// Envelope and meta were released while the message waits; the spool's
    /// latest META record has them.
    pub meta_shrunk: bool,
    /// The spool holds this message. False only for a listener or log hook
    /// with `deferred_spool` until the message is first delayed (or the
    /// daemon shuts down): until then only memory has it.
    pub spooled: bool,
}

/// A message in the queue engine: its id and its locked state.
#[derive(Debug)]
pub struct Message {
    /// The message's id, its key in the spool.
    pub id: MessageId,
    state: Mutex<MessageState>,
}

/// A shared message: the listener, queues, delivery and policy all hold the
/// same one.
pub type MessageRef = Arc<Message>;

impl Message {
    /// A newly received message, its body in memory and not yet spooled.
    pub fn new(
        id: MessageId,
        sender: String,
        recipients: Vec<String>,
        meta: Map<String, Value>,
        data: Vec<u8>,
    ) -> MessageRef {
        let data_len = data.len();
        Arc::new(Message {
            id,
            state: Mutex::new(MessageState {
                sender,
                recipients,
                meta,
                num_attempts: 0,
                due: None,
                schedule: None,
                last_response: None,
                data: Some(Arc::new(data)),
                data_len,
                meta_shrunk: false,
                spooled: false,
            }),
        })
    }

    /// A message recovered from the spool; its body stays on disk until needed.
    pub fn recovered(id: MessageId, m: SpooledMeta, data_len: usize) -> MessageRef {
        Arc::new(Message {
            id,
            state: Mutex::new(MessageState {
                sender: m.sender,
                recipients: m.recipient,
                meta: m.meta,
                num_attempts: m.num_attempts,
                due: m.due,
                schedule: m.schedule,
                last_response: m.last_response,
                data: None,
                data_len,
                meta_shrunk: false,
                spooled: true,
            }),
        })
    }

    /// Lock the state.
    pub fn state(&self) -> parking_lot::MutexGuard<'_, MessageState> {
        self.state.lock()
    }

    /// The state as the spool's META record stores it.
    pub fn spooled_meta(&self) -> SpooledMeta {
        let s = self.state.lock();
        SpooledMeta {
            sender: s.sender.clone(),
            recipient: s.recipients.clone(),
            meta: s.meta.clone(),
            num_attempts: s.num_attempts,
            due: s.due,
            schedule: s.schedule.clone(),
            last_response: s.last_response.clone(),
        }
    }

    /// The meta value `key`, if it is a string.
    pub fn meta_string(&self, key: &str) -> Option<String> {
        match self.state.lock().meta.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    /// Set meta `key`; a null value removes it.
    pub fn set_meta(&self, key: &str, value: Value) {
        let mut s = self.state.lock();
        if value.is_null() {
            s.meta.remove(key);
        } else {
            s.meta.insert(key.to_string(), value);
        }
    }

    /// The envelope sender.
    pub fn sender(&self) -> String {
        self.state.lock().sender.clone()
    }

    /// The recipients still to deliver to.
    pub fn recipients(&self) -> Vec<String> {
        self.state.lock().recipients.clone()
    }

    /// Attempts made so far.
    pub fn num_attempts(&self) -> u16 {
        self.state.lock().num_attempts
    }

    /// The body, if it is in memory.
    pub fn data(&self) -> Option<Arc<Vec<u8>>> {
        self.state.lock().data.clone()
    }

    /// Replace the body (and its length).
    pub fn set_data(&self, data: Vec<u8>) {
        let mut s = self.state.lock();
        s.data_len = data.len();
        s.data = Some(Arc::new(data));
    }

    /// Release the in-memory body (the spool keeps it) while the message waits.
    pub fn shrink(&self) {
        self.state.lock().data = None;
    }

    /// Under memory pressure: release the body if the spool has it; whether
    /// one was released.
    pub fn release_body(&self) -> bool {
        let mut s = self.state.lock();
        s.spooled && s.data.take().is_some()
    }

    /// Release the envelope and meta too (ShrinkDataAndMeta), but only while
    /// the message is still due later than `not_before` (unix ms), so that a
    /// delivery attempt never sees them vanish.
    pub fn shrink_meta(&self, due: i64, not_before: i64) {
        let mut s = self.state.lock();
        if s.due == Some(due) && due > not_before && !s.meta_shrunk {
            s.data = None;
            s.sender = String::new();
            s.recipients = Vec::new();
            s.meta = Map::new();
            s.meta_shrunk = true;
        }
    }

    /// Restore what `shrink_meta` released, from the spooled META record.
    /// Attempts, due time and scheduling stay as they are in memory.
    pub fn restore_meta(&self, spooled: &[u8]) -> Result<(), serde_json::Error> {
        let m: SpooledMeta = serde_json::from_slice(spooled)?;
        let mut s = self.state.lock();
        if s.meta_shrunk {
            s.sender = m.sender;
            s.recipients = m.recipient;
            s.meta = m.meta;
            s.meta_shrunk = false;
        }
        Ok(())
    }

    /// Whether the spool holds the message.
    pub fn is_spooled(&self) -> bool {
        self.state.lock().spooled
    }

    /// Record that the message is now in the spool.
    pub fn set_spooled(&self) {
        self.state.lock().spooled = true;
    }

    /// Whether envelope and meta are released (see `shrink_meta`).
    pub fn is_meta_shrunk(&self) -> bool {
        self.state.lock().meta_shrunk
    }

    /// The body's length in bytes.
    pub fn size(&self) -> usize {
        self.state.lock().data_len
    }
}

/// Split an address into local part and domain (at the last `@`).
pub fn split_address(addr: &str) -> (&str, &str) {
    match addr.rfind('@') {
        Some(i) => (&addr[..i], &addr[i + 1..]),
        None => (addr, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex_and_carry_their_creation_time() {
        let id = MessageId::new();
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert!(
            s.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        let age = Utc::now() - id.created();
        assert!(age.num_seconds().abs() < 5, "{age}");
        assert_eq!(MessageId::parse(&s), Some(id));
        assert_ne!(MessageId::new(), id);
    }
}
