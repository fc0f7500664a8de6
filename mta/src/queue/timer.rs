//! One timer for every delayed message of every queue: a min-heap on due
//! time, so waking up costs O(log n) per due message and nothing per queue.

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
    pub fn insert(&self, due: i64, msg: MessageRef) {
        let seq = self.inner.seq.fetch_add(1, AtomicOrdering::Relaxed);
        let earliest = {
            let mut heap = self.inner.heap.lock();
            heap.push(Reverse(Entry { due, seq, msg }));
            heap.peek().is_some_and(|e| e.0.seq == seq)
        };
        if earliest {
            self.inner.notify.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.inner.heap.lock().len()
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
