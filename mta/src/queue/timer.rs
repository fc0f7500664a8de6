//! One timer for every delayed message of every queue: a min-heap on due
//! time, so waking up costs O(log n) per due message and nothing per queue.
//! Due times are wall-clock milliseconds read from the engine's clock.

use super::ScheduledQueue;
use crate::clock::Clock;
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

#[derive(Clone)]
pub struct Timer {
    inner: Arc<Inner>,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct Inner {
    heap: Mutex<BinaryHeap<Reverse<Entry>>>,
    notify: Notify,
    seq: AtomicU64,
}

impl Timer {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Timer {
            inner: Arc::default(),
            clock,
        }
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

    /// Take out every waiting message due exactly at `due` (unix ms): those
    /// a suspension held until then.
    pub fn take_due_at(&self, due: i64) -> Vec<MessageRef> {
        let mut taken = vec![];
        self.inner.heap.lock().retain(|e| {
            let hit = e.0.due == due;
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
            let now = self.clock.now().timestamp_millis();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use crate::message::{Message, MessageId};
    use std::time::Duration;

    fn msg() -> MessageRef {
        Message::new(
            MessageId::new(),
            "s@x".into(),
            vec!["r@y".into()],
            Default::default(),
            vec![],
        )
    }

    /// A timer running on a paused clock, reporting (message, when it fired).
    fn start() -> (
        Timer,
        Arc<TokioClock>,
        tokio::sync::mpsc::UnboundedReceiver<(MessageId, i64)>,
    ) {
        let clock = TokioClock::starting_at(chrono::Utc::now());
        let timer = Timer::new(clock.clone());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (t, c) = (timer.clone(), clock.clone());
        tokio::spawn(async move {
            t.run(move |m| {
                let _ = tx.send((m.id, c.now().timestamp_millis()));
            })
            .await
        });
        (timer, clock, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn messages_fire_at_their_due_time_in_order() {
        let (timer, clock, mut fired) = start();
        let now = clock.now().timestamp_millis();
        let (a, b, c) = (msg(), msg(), msg());
        timer.insert(now + 3_000, c.clone(), None);
        timer.insert(now + 1_000, a.clone(), None);
        timer.insert(now + 2_000, b.clone(), None);
        assert_eq!(timer.len(), 3);
        for (want, at) in [(a.id, 1_000), (b.id, 2_000), (c.id, 3_000)] {
            let (id, when) = fired.recv().await.unwrap();
            assert_eq!(id, want);
            assert!(
                (when - now - at).abs() <= 1,
                "fired at +{} ms, due +{at}",
                when - now
            );
        }
        assert_eq!(timer.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_message_wakes_a_timer_waiting_for_a_later_one() {
        let (timer, clock, mut fired) = start();
        let now = clock.now().timestamp_millis();
        let late = msg();
        timer.insert(now + 3_600_000, late.clone(), None);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let soon = msg();
        timer.insert(now + 500, soon.clone(), None);
        let (id, when) = fired.recv().await.unwrap();
        assert_eq!(id, soon.id);
        assert!(when - now < 600, "{}", when - now);
        // the hour-long wait then ends on time too
        let (id, when) = fired.recv().await.unwrap();
        assert_eq!(id, late.id);
        assert!((when - now - 3_600_000).abs() <= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn overdue_messages_fire_at_once() {
        let (timer, clock, mut fired) = start();
        let now = clock.now().timestamp_millis();
        timer.insert(now - 60_000, msg(), None);
        let (_, when) = fired.recv().await.unwrap();
        assert!(when - now <= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_messages_are_counted_and_taken_by_their_queue() {
        use crate::message::name::QueueName;
        use crate::policy::Fetched;
        let queue = |name: &str| {
            Arc::new(ScheduledQueue::for_tests(
                name,
                Fetched::new(Arc::default(), 1),
            ))
        };
        let (a, b) = (queue("a.example"), queue("b.example"));
        let timer = Timer::new(TokioClock::starting_at(chrono::Utc::now()));
        let later = chrono::Utc::now().timestamp_millis() + 3_600_000;
        for q in [&a, &a, &b] {
            timer.insert(later, msg(), Some(q.clone()));
        }
        timer.insert(later, msg(), None);
        let counts = timer.counts();
        assert_eq!((counts["a.example"], counts["b.example"]), (2, 1));
        let taken = timer.take_matching(|q| q.parts == QueueName::parse("a.example"));
        assert_eq!(taken.len(), 2);
        assert_eq!(timer.len(), 2, "b's and the one without a queue stay");
    }
}
