//! One timer for every delayed message of every queue: a min-heap on due
//! time, so waking up costs O(log n) per due message and nothing per queue.

use super::ScheduledQueue;
use crate::message::MessageRef;
use parking_lot::Mutex;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use tokio::sync::Notify;

struct Entry {
    due: i64,
    seq: u64,
    msg: MessageRef,
    /// The scheduled queue it waits in (for summaries, suspensions and
    /// admin bounces); `None` when the queue could not be resolved.
    queue: Option<Arc<ScheduledQueue>>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

#[derive(Clone, Default)]
pub struct Timer {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    heap: Mutex<BinaryHeap<Reverse<Entry>>>,
    notify: Notify,
    seq: AtomicU64,
}

impl Timer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedule `msg` for `due` (unix milliseconds).
    pub fn insert(&self, due: i64, msg: MessageRef, queue: Option<Arc<ScheduledQueue>>) {
        let seq = self.inner.seq.fetch_add(1, AtomicOrdering::Relaxed);
        let earliest = {
            let mut heap = self.inner.heap.lock();
            heap.push(Reverse(Entry {
                due,
                seq,
                msg,
                queue,
            }));
            heap.peek().is_some_and(|e| e.0.seq == seq)
        };
        if earliest {
            self.inner.notify.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.inner.heap.lock().len()
    }

    /// How many messages wait, per scheduled queue name.
    pub fn counts(&self) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for e in self.inner.heap.lock().iter() {
            if let Some(q) = &e.0.queue {
                *counts.entry(q.name.clone()).or_default() += 1;
            }
        }
        counts
    }

    /// Take out every waiting message whose queue `matches`.
    pub fn take_matching(&self, matches: impl Fn(&ScheduledQueue) -> bool) -> Vec<MessageRef> {
        let mut taken = vec![];
        self.inner.heap.lock().retain(|e| {
            let hit = e.0.queue.as_deref().is_some_and(&matches);
            if hit {
                taken.push(e.0.msg.clone());
            }
            !hit
        });
        taken
    }

    /// Hand every message to `on_due` when its time comes; runs forever.
    pub async fn run(&self, on_due: impl Fn(MessageRef)) {
        loop {
            let now = chrono::Utc::now().timestamp_millis();
            let mut due = vec![];
            let next = {
                let mut heap = self.inner.heap.lock();
                while heap.peek().is_some_and(|e| e.0.due <= now) {
                    due.push(heap.pop().expect("peeked").0.msg);
                }
                heap.peek().map(|e| e.0.due)
            };
            for msg in due {
                on_due(msg);
            }
            let notified = self.inner.notify.notified();
            match next {
                Some(at) => {
                    let wait = std::time::Duration::from_millis((at - now).max(1) as u64);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}
