//! The dispatcher's rules with tokio's paused clock: a real policy (for the
//! path config), a real spool (unused: bodies are in memory) and a protocol
//! that records what the dispatcher asked of it.

use super::*;
use crate::delivery::{Path, Refused, Sent, Session};
use crate::message::MessageId;
use crate::policy::PolicySource;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Connect,
    Send(usize),
    Close,
    Dropped,
}

#[derive(Default)]
struct Recorder {
    /// (ms since the test started, what happened)
    events: Mutex<Vec<(u128, Event)>>,
    open: AtomicUsize,
    most_open: AtomicUsize,
    start: OnceLock<Instant>,
}

impl Recorder {
    fn note(&self, e: Event) {
        let start = *self.start.get_or_init(Instant::now);
        self.events.lock().push((start.elapsed().as_millis(), e));
    }

    fn times(&self, what: &Event) -> Vec<u128> {
        self.events
            .lock()
            .iter()
            .filter(|(_, e)| e == what)
            .map(|(t, _)| *t)
            .collect()
    }

    fn count(&self, f: impl Fn(&Event) -> bool) -> usize {
        self.events.lock().iter().filter(|(_, e)| f(e)).count()
    }
}

/// A protocol whose sessions take `send_for` per send and can be told to
/// refuse connections or end after a send.
struct TestDeliver {
    rec: Arc<Recorder>,
    refuse: Mutex<Vec<Refused>>,
    batch: Batch,
    send_for: Duration,
    close_after_send: bool,
}

impl TestDeliver {
    fn new(rec: &Arc<Recorder>) -> TestDeliver {
        TestDeliver {
            rec: rec.clone(),
            refuse: Mutex::new(vec![]),
            batch: Batch::ONE,
            send_for: Duration::ZERO,
            close_after_send: false,
        }
    }
}

impl Deliver for TestDeliver {
    fn label(&self) -> String {
        "test".into()
    }

    fn batch(&self) -> Batch {
        self.batch.clone()
    }

    fn connect<'a>(&'a self, _path: &'a Path) -> BoxFuture<'a, Result<Box<dyn Session>, Refused>> {
        Box::pin(async move {
            self.rec.note(Event::Connect);
            if let Some(r) = self.refuse.lock().pop() {
                return Err(r);
            }
            let open = self.rec.open.fetch_add(1, Ordering::SeqCst) + 1;
            self.rec.most_open.fetch_max(open, Ordering::SeqCst);
            Ok(Box::new(TestSession {
                rec: self.rec.clone(),
                send_for: self.send_for,
                close_after_send: self.close_after_send,
                closed: false,
            }) as Box<dyn Session>)
        })
    }
}

struct TestSession {
    rec: Arc<Recorder>,
    send_for: Duration,
    close_after_send: bool,
    closed: bool,
}

impl Session for TestSession {
    fn send<'a>(&'a mut self, msgs: &'a [MessageRef]) -> BoxFuture<'a, Sent> {
        Box::pin(async move {
            self.rec.note(Event::Send(msgs.len()));
            tokio::time::sleep(self.send_for).await;
            let attempts = msgs
                .iter()
                .map(|m| {
                    Attempt::for_all(
                        "Test",
                        None,
                        m.recipients(),
                        Outcome::Delivered(Response::new(250, "ok")),
                    )
                })
                .collect();
            Sent {
                attempts,
                close: self.close_after_send,
            }
        })
    }

    fn close(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        self.closed = true;
        self.rec.note(Event::Close);
        Box::pin(async {})
    }
}

impl Drop for TestSession {
    fn drop(&mut self) {
        self.rec.open.fetch_sub(1, Ordering::SeqCst);
        if !self.closed {
            self.rec.note(Event::Dropped);
        }
    }
}

#[derive(Default)]
struct TestOutcomes {
    completed: Mutex<Vec<(MessageId, Outcome)>>,
    handed_back: Mutex<Vec<(usize, Duration)>>,
}

impl Outcomes for TestOutcomes {
    fn completed<'a>(
        &'a self,
        item: &'a Ready,
        _rq: &'a ReadyQueue,
        attempt: Attempt,
    ) -> BoxFuture<'a, ()> {
        for r in attempt.results {
            self.completed.lock().push((item.msg.id, r.outcome));
        }
        Box::pin(async {})
    }

    fn throttled(&self, items: Vec<Ready>, _rq: &str, wait: Duration) {
        self.handed_back.lock().push((items.len(), wait));
    }
}

struct Fixture {
    egress: Arc<Egress>,
    outcomes: Arc<TestOutcomes>,
    _spool_dir: tempfile::TempDir,
}

/// An egress whose paths get `make_egress_path { <path> }`.
fn fixture(path: &str) -> Fixture {
    let lua = format!(
        "local kumo = require 'kumo'\n\
         kumo.on('get_egress_path_config', function(domain, source, site)\n  \
           return kumo.make_egress_path {{ {path} }}\n\
         end)\n"
    );
    let policy = Policy::load(PolicySource::embedded("test.lua", &lua)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), Default::default()).unwrap();
    let egress = Egress::new(
        policy,
        Arc::new(Dns::with_servers(&["127.0.0.1:53".parse().unwrap()]).unwrap()),
        Arc::new(spool),
        Arc::new(crate::throttle::Throttles::local()),
        Arc::new(Lifecycle::default()),
    );
    let outcomes = Arc::new(TestOutcomes::default());
    let weak: Weak<dyn Outcomes> = Arc::downgrade(&outcomes) as Weak<dyn Outcomes>;
    egress.report_to(weak);
    Fixture {
        egress,
        outcomes,
        _spool_dir: dir,
    }
}

fn item() -> Ready {
    Ready {
        msg: Message::new(
            MessageId::new(),
            "s@example.org".into(),
            vec!["r@example.com".into()],
            Default::default(),
            b"Subject: t\r\n\r\nx\r\n".to_vec(),
        ),
        queue: "example.com".into(),
        config: Arc::new(QueueConfig::default()),
    }
}

impl Fixture {
    async fn ready_queue(&self, deliver: TestDeliver) -> Arc<ReadyQueue> {
        let source = self.egress.source("unspecified").await.unwrap();
        self.egress
            .ready_queue(source, "site".into(), "example.com", Arc::new(deliver))
            .await
            .unwrap()
    }

    fn submit(&self, rq: &Arc<ReadyQueue>, n: usize) {
        for _ in 0..n {
            assert!(matches!(
                self.egress.place(rq.clone(), item()),
                Submitted::Queued
            ));
        }
    }

    /// Let the dispatcher run until it has nothing left to do.
    async fn settle(&self, rq: &ReadyQueue) {
        for _ in 0..10_000 {
            if rq.is_empty() && rq.connection_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the ready queue never settled");
    }

    fn delivered(&self) -> usize {
        self.outcomes
            .completed
            .lock()
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Delivered(_)))
            .count()
    }
}

#[tokio::test(start_paused = true)]
async fn the_path_rate_paces_sends_after_its_burst() {
    let f = fixture("max_message_rate = '5/s', connection_limit = 1");
    let rec = Arc::new(Recorder::default());
    let rq = f.ready_queue(TestDeliver::new(&rec)).await;
    f.submit(&rq, 10);
    f.settle(&rq).await;
    assert_eq!(f.delivered(), 10);
    let sends = rec.times(&Event::Send(1));
    // throttle waits are whole seconds: the next five a second later
    assert_eq!(
        sends,
        [0, 0, 0, 0, 0, 1000, 1000, 1000, 1000, 1000],
        "{sends:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_idle_timeout_hands_the_queue_back() {
    let f = fixture("max_message_rate = '1/min', idle_timeout = '10s', connection_limit = 1");
    let rec = Arc::new(Recorder::default());
    let rq = f.ready_queue(TestDeliver::new(&rec)).await;
    f.submit(&rq, 3);
    f.settle(&rq).await;
    assert_eq!(f.delivered(), 1, "the burst of one");
    let back = f.outcomes.handed_back.lock().clone();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].0, 2, "the second and everything behind it");
    assert!(back[0].1 > Duration::from_secs(50), "{back:?}");
    assert_eq!(rec.count(|e| *e == Event::Close), 1, "closed politely");
}

#[tokio::test(start_paused = true)]
async fn sessions_end_after_max_deliveries_per_connection() {
    let f = fixture("max_deliveries_per_connection = 2, connection_limit = 1");
    let rec = Arc::new(Recorder::default());
    let rq = f.ready_queue(TestDeliver::new(&rec)).await;
    f.submit(&rq, 5);
    f.settle(&rq).await;
    assert_eq!(f.delivered(), 5);
    assert_eq!(rec.count(|e| *e == Event::Connect), 3);
    assert_eq!(rec.count(|e| *e == Event::Close), 3);
    assert_eq!(rec.count(|e| *e == Event::Dropped), 0);
}

#[tokio::test(start_paused = true)]
async fn connections_never_exceed_the_limit() {
    let f = fixture("connection_limit = 2");
    let rec = Arc::new(Recorder::default());
    let mut d = TestDeliver::new(&rec);
    d.send_for = Duration::from_secs(1);
    let rq = f.ready_queue(d).await;
    f.submit(&rq, 50);
    f.settle(&rq).await;
    assert_eq!(f.delivered(), 50);
    assert_eq!(rec.most_open.load(Ordering::SeqCst), 2);
    // two at a time, a second each
    let last = *rec.times(&Event::Send(1)).last().unwrap();
    assert_eq!(last, 24_000);
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_bounces_on_5xx_and_retries_on_4xx() {
    let f = fixture("connection_limit = 1, consecutive_connection_failures_before_delay = 2");
    let rec = Arc::new(Recorder::default());
    let d = TestDeliver::new(&rec);
    let refused = |code: u16| Refused {
        code,
        text: format!("{code} no"),
    };
    // popped from the end: 4xx three times (the third is past the limit of 2)
    *d.refuse.lock() = vec![refused(451), refused(451), refused(451)];
    let rq = f.ready_queue(d).await;
    f.submit(&rq, 5);
    f.settle(&rq).await;
    let transient = f
        .outcomes
        .completed
        .lock()
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Transient(_)))
        .count();
    // one each for the first two failures, then all three left at the third
    assert_eq!(transient, 5);
    assert_eq!(rec.count(|e| *e == Event::Connect), 3);

    let f = fixture("connection_limit = 1");
    let rec = Arc::new(Recorder::default());
    let d = TestDeliver::new(&rec);
    *d.refuse.lock() = vec![refused(550)];
    let rq = f.ready_queue(d).await;
    f.submit(&rq, 4);
    f.settle(&rq).await;
    let bounced = f
        .outcomes
        .completed
        .lock()
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Bounced(_)))
        .count();
    assert_eq!(bounced, 4, "a 5xx refusal bounces everything waiting");
}

#[tokio::test(start_paused = true)]
async fn a_session_that_must_end_is_dropped_and_replaced() {
    let f = fixture("connection_limit = 1");
    let rec = Arc::new(Recorder::default());
    let mut d = TestDeliver::new(&rec);
    d.close_after_send = true;
    let rq = f.ready_queue(d).await;
    f.submit(&rq, 3);
    f.settle(&rq).await;
    assert_eq!(f.delivered(), 3);
    assert_eq!(rec.count(|e| *e == Event::Connect), 3);
    assert_eq!(
        rec.count(|e| *e == Event::Dropped),
        3,
        "no QUIT on a dead session"
    );
    assert_eq!(rec.count(|e| *e == Event::Close), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_session_closes_after_idle_timeout() {
    let f = fixture("idle_timeout = '5s', connection_limit = 1");
    let rec = Arc::new(Recorder::default());
    let rq = f.ready_queue(TestDeliver::new(&rec)).await;
    f.submit(&rq, 1);
    f.settle(&rq).await;
    assert_eq!(rec.times(&Event::Close), [5_000]);
}

#[tokio::test(start_paused = true)]
async fn batches_wait_up_to_their_latency_for_the_minimum() {
    let f = fixture("connection_limit = 1");
    let rec = Arc::new(Recorder::default());
    let mut d = TestDeliver::new(&rec);
    d.batch = Batch {
        size: 3,
        min: 2,
        max_latency: Duration::from_secs(1),
    };
    let rq = f.ready_queue(d).await;
    // one now, one 300 ms later: sent together once the minimum is there
    f.submit(&rq, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.submit(&rq, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rec.times(&Event::Send(2)), [300]);
    // one alone: sent when the latency is up
    f.submit(&rq, 1);
    f.settle(&rq).await;
    let alone = rec.times(&Event::Send(1));
    assert_eq!(alone.len(), 1);
    assert!((1_390..=1_410).contains(&alone[0]), "{alone:?}");
    // five at once: a full batch, then the two left over
    f.submit(&rq, 5);
    f.settle(&rq).await;
    assert_eq!(rec.count(|e| *e == Event::Send(3)), 1);
    assert_eq!(rec.count(|e| *e == Event::Send(2)), 2);
}

#[tokio::test(start_paused = true)]
async fn the_connection_rate_spaces_new_sessions() {
    let f = fixture(
        "max_connection_rate = '1/s', max_deliveries_per_connection = 1, connection_limit = 1, idle_timeout = '10s'",
    );
    let rec = Arc::new(Recorder::default());
    let rq = f.ready_queue(TestDeliver::new(&rec)).await;
    f.submit(&rq, 3);
    f.settle(&rq).await;
    assert_eq!(f.delivered(), 3);
    assert_eq!(rec.times(&Event::Connect), [0, 1_000, 2_000]);
}

#[tokio::test(start_paused = true)]
async fn idle_ready_queues_are_reaped_and_busy_ones_kept() {
    let f = fixture("idle_timeout = '1s', connection_limit = 1");
    let rec = Arc::new(Recorder::default());
    let rq = f.ready_queue(TestDeliver::new(&rec)).await;
    f.submit(&rq, 1);
    f.settle(&rq).await;
    // the queue's reap_interval (QueueConfig's default: 10 minutes)
    let after = QueueConfig::default().reap_interval;
    assert_eq!(f.egress.reap(), 0, "held by this test");
    drop(rq);
    assert_eq!(f.egress.reap(), 0, "not idle long enough");
    tokio::time::advance(after).await;
    assert_eq!(f.egress.reap(), 1);
    assert!(f.egress.ready_queues().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_named_connection_limit_is_shared_by_every_path_naming_it() {
    let f = fixture("connection_limit = 3, additional_connection_limits = { shared = 2 }");
    let rec = Arc::new(Recorder::default());
    let source = f.egress.source("unspecified").await.unwrap();
    let mut queues = vec![];
    for site in ["a", "b"] {
        let mut d = TestDeliver::new(&rec);
        d.send_for = Duration::from_secs(1);
        let rq = f
            .egress
            .ready_queue(source.clone(), site.into(), "example.com", Arc::new(d))
            .await
            .unwrap();
        f.submit(&rq, 6);
        queues.push(rq);
    }
    for rq in &queues {
        f.settle(rq).await;
    }
    assert_eq!(f.delivered(), 12);
    // 3 each allowed by connection_limit, 2 in all by the shared limit
    assert_eq!(rec.most_open.load(Ordering::SeqCst), 2);
}
