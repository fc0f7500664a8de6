//! What the spool holds of each message: admission before the 250 (one
//! group commit, or only memory with `deferred_spool`), its state saved
//! before it waits, released from memory while it waits, brought back for
//! its attempt, removed at its final disposition, and recovered at start.

use super::{QueueManager, retry};
use crate::log::{RecordType, Response};
use crate::message::name;
use crate::message::{Message, MessageRef, SpooledMeta};
use crate::spool::{NewMessage, Recovered, SpoolError};
use chrono::{DateTime, Utc};
use sluice_common::duration::format_duration;
use std::sync::Arc;

fn ms_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn meta_bytes(msg: &Message) -> Vec<u8> {
    serde_json::to_vec(&msg.spooled_meta()).expect("meta serialises")
}

impl QueueManager {
    /// Take charge of freshly accepted messages before their 250: save them
    /// to the spool in one group commit, or with `deferred_spool` only note
    /// them, to be written when first delayed or at shutdown (spec §6.5).
    /// Those bound for the `null` queue are not kept.
    pub async fn admit(
        &self,
        batch: &[(MessageRef, String)],
        deferred_spool: bool,
    ) -> Result<(), SpoolError> {
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
    async fn write_whole(&self, msgs: &[&MessageRef]) -> Result<(), SpoolError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let mut to_spool = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let data = msg.data().ok_or(SpoolError::NoBody(msg.id))?;
            to_spool.push(NewMessage {
                id: msg.id,
                meta: meta_bytes(msg),
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
    pub(super) async fn spool_deferred(&self, msg: &MessageRef) -> bool {
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
    pub async fn spool_unspooled(&self) -> Result<usize, SpoolError> {
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

    /// Bring back what a waiting message released.
    pub(super) fn restore(&self, msg: &Message) -> Result<(), SpoolError> {
        if !msg.is_meta_shrunk() {
            return Ok(());
        }
        let meta = self.spool.read_meta(msg.id)?;
        msg.restore_meta(&meta).map_err(SpoolError::Corrupt)
    }

    /// Save the message's state (not waiting for the sync).
    pub(super) fn save_meta(&self, msg: &Message) {
        if msg.is_spooled() {
            let _ = self.spool.update_meta(msg.id, meta_bytes(msg));
        }
    }

    /// Save the message's state and wait until it is on disk.
    pub(super) async fn save_meta_synced(&self, msg: &Message) {
        match self.spool.update_meta_acked(msg.id, meta_bytes(msg)) {
            Ok(ack) => {
                let _ = ack.await;
            }
            Err(e) => tracing::error!(id = %msg.id, "cannot save meta: {e}"),
        }
    }

    /// Queue a message again as its due time says: parked until then when
    /// that is later, dispatched now otherwise.
    pub(super) fn queue_when_due(self: &Arc<Self>, msg: &MessageRef, queue: &str) {
        let due = msg.state().due.and_then(DateTime::from_timestamp_millis);
        match due {
            Some(at) if at > self.now() => self.wait_until(msg, at, queue),
            _ => self.insert(msg.clone(), queue),
        }
    }

    /// Persist the message's new state and park it in the timer until `due`.
    /// While it waits only its id, attempts and due time stay in memory: once
    /// the META record is on disk the envelope and meta are released too.
    pub(super) fn wait_until(self: &Arc<Self>, msg: &MessageRef, due: DateTime<Utc>, queue: &str) {
        let due_ms = due.timestamp_millis();
        msg.state().due = Some(due_ms);
        if due <= self.now() {
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
                    me.park(due_ms, msg.clone(), &queue);
                }
            });
            return;
        }
        msg.shrink();
        match self.spool.update_meta_acked(msg.id, meta_bytes(msg)) {
            Ok(ack) => {
                let (msg, clock) = (msg.clone(), self.clock.clone());
                tokio::spawn(async move {
                    if ack.await.is_ok() {
                        // keep the envelope if the attempt is less than a second away
                        msg.shrink_meta(due_ms, clock.now().timestamp_millis() + 1000);
                    }
                });
            }
            Err(e) => tracing::error!(id = %msg.id, "cannot save meta: {e}"),
        }
        self.park(due_ms, msg.clone(), queue);
    }

    /// Into the timer, with its scheduled queue (made again if it was
    /// reaped meanwhile, so admin rules and summaries still find it).
    pub(super) fn park(self: &Arc<Self>, due_ms: i64, msg: MessageRef, queue: &str) {
        match self.scheduled(queue) {
            Some(q) => self.timer.insert(due_ms, msg, Some(q)),
            None => {
                let (me, queue) = (self.clone(), queue.to_string());
                tokio::spawn(async move {
                    let q = me.resolve(&queue).await.ok();
                    me.timer.insert(due_ms, msg, q);
                });
            }
        }
    }

    /// Re-queue every message recovered from the spool at start-up, at its
    /// persisted due time.
    pub async fn recover(self: &Arc<Self>, recovered: Vec<Recovered>) -> usize {
        let mut n = 0;
        for r in recovered {
            let Some(msg) = self.recovered_message(r) else {
                continue;
            };
            if !self.requeue_spooled(msg).await {
                continue;
            }
            n += 1;
        }
        n
    }

    /// The message a recovered spool record holds; `None` (and the record
    /// removed) when its meta does not parse.
    pub(super) fn recovered_message(&self, r: Recovered) -> Option<MessageRef> {
        match serde_json::from_slice::<SpooledMeta>(&r.meta) {
            Ok(meta) => Some(Message::recovered(r.id, meta, r.data_len)),
            Err(e) => {
                tracing::error!(id = %r.id, "unreadable spooled meta, removing: {e}");
                let _ = self.spool.remove(r.id);
                None
            }
        }
    }

    /// Queue a message the spool holds (recovered at start, or taken in
    /// from another node) at its due time, or expire it when it is too old
    /// for its queue; `false` when it was not queued.
    pub(super) async fn requeue_spooled(self: &Arc<Self>, msg: MessageRef) -> bool {
        let id = msg.id;
        let queue = match name::queue_name(&msg) {
            Ok(q) => q,
            Err(e) => {
                let resp = Response::new(551, &format!("5.1.3 invalid queue name: {e}"));
                self.finish(&msg, "", RecordType::Expiration, resp, None);
                return false;
            }
        };
        let q = match self.resolve(&queue).await {
            Ok(q) => q,
            Err(e) => {
                tracing::error!(%id, queue, "cannot resolve queue; message stays spooled until the next start: {e}");
                return false;
            }
        };
        let now = self.now();
        if retry::too_old(&q.config(), msg.id.created(), now) {
            let text = format!(
                "5.4.7 message is older than max_age={}",
                format_duration(q.config().max_age)
            );
            self.expire(&msg, &queue, &text);
            return false;
        }
        let due = msg.state().due.map(ms_to_time).unwrap_or(now);
        let due = retry::constrained(msg.state().schedule.as_ref(), due.max(now));
        msg.state().due = Some(due.timestamp_millis());
        if due > now {
            // its meta is on disk already
            msg.shrink_meta(due.timestamp_millis(), now.timestamp_millis() + 1000);
            self.timer
                .insert(due.timestamp_millis(), msg, Some(q.clone()));
        } else {
            self.dispatch(msg);
        }
        true
    }
}
