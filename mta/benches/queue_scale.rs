//! Scale of the queue engine: queue N small messages (default 1,000,000)
//! over Q scheduled queues (default 100,000), all due at the same moment
//! DUE_IN seconds ahead; report resident memory per queued message and the
//! time to enqueue them. Bodies and envelopes are on disk while messages
//! wait (ShrinkDataAndMeta). Then, when they fall due, report how fast all
//! are promoted and delivered to a null delivery: a custom_lua `send` that
//! returns 'OK'. Every queue shares one routing domain, so all of them feed
//! one ready queue (32 connections, max_ready large enough for all).
//!
//! Run: `cargo bench -p sluice-mta --bench queue_scale` (MESSAGES=, QUEUES=
//! to change the size; SPOOL_BENCH_DIR= for the spool's file system).

use serde_json::{Map, json};
use sluice_mta::log::Logger;
use sluice_mta::message::name;
use sluice_mta::message::schedule::Scheduling;
use sluice_mta::message::{Message, MessageId};
use sluice_mta::policy::{Policy, PolicySource};
use sluice_mta::queue::QueueManager;
use sluice_mta::spool::{NewMessage, Spool, SpoolOptions};
use std::sync::Arc;
use std::time::Instant;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const POLICY: &str = r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config { protocol = { custom_lua = { constructor = 'make.null' } } }
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path { max_ready = 2000000 }
end)
kumo.on('make.null', function(domain, tenant, campaign)
  local conn = {}
  function conn:send(msg)
    return 'OK'
  end
  return conn
end)
"#;

fn main() {
    let messages = env("MESSAGES", 1_000_000);
    let queues = env("QUEUES", 100_000);
    let base = std::env::var("SPOOL_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::tempdir_in(base).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let policy = Policy::load(PolicySource::embedded("bench.lua", POLICY)).unwrap();
        let (spool, _) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
        let spool = Arc::new(spool);
        let dns = Arc::new(sluice_mta::dns::Dns::system().unwrap());
        let lifecycle = Arc::new(sluice_mta::lifecycle::Lifecycle::default());
        let throttles = Arc::new(sluice_mta::throttle::Throttles::local());
        let egress = sluice_mta::egress::Egress::new(
            policy.clone(),
            dns,
            spool.clone(),
            throttles.clone(),
            lifecycle.clone(),
        );
        let qm = QueueManager::new(sluice_mta::queue::Parts {
            policy,
            spool: spool.clone(),
            logger: Arc::new(Logger::new(vec![]).unwrap()),
            egress,
            throttles,
            lifecycle,
            clock: sluice_mta::clock::system(),
            nodeid: "bench".into(),
            memory: Arc::new(sluice_mta::memory::Memory::new(Default::default())),
        });
        let body = Arc::new(vec![b'x'; 300]);
        // far enough ahead that the enqueue ends first on a slow machine
        let due_in = env("DUE_IN", 120) as i64;
        let later = chrono::Utc::now() + chrono::TimeDelta::seconds(due_in);
        let schedule: Scheduling = serde_json::from_value(json!({ "first_attempt": later })).unwrap();
        let rss_before = rss_kib();
        let start = Instant::now();
        for chunk in (0..messages).collect::<Vec<_>>().chunks(1000) {
            let mut batch = vec![];
            let mut msgs = vec![];
            for &i in chunk {
                let mut meta = Map::new();
                meta.insert("received_from".into(), json!("127.0.0.1:50000"));
                meta.insert("received_via".into(), json!("127.0.0.1:2525"));
                meta.insert("reception_protocol".into(), json!("ESMTP"));
                meta.insert("hostname".into(), json!("bench.local"));
                meta.insert("routing_domain".into(), json!("null.bench"));
                let msg = Message::new(
                    MessageId::new(),
                    "sender@bench.example".into(),
                    vec![format!("user{i}@d{}.example", i % queues)],
                    meta,
                    body.to_vec(),
                );
                msg.state().schedule = Some(schedule.clone());
                let queue = name::queue_name(&msg).unwrap();
                qm.resolve(&queue).await.unwrap();
                batch.push(NewMessage {
                    id: msg.id,
                    meta: serde_json::to_vec(&msg.spooled_meta()).unwrap(),
                    data: body.clone(),
                });
                msgs.push((msg, queue));
            }
            spool.put(batch).await.unwrap();
            for (msg, queue) in msgs {
                qm.insert(msg, &queue);
            }
        }
        let enqueue = start.elapsed();
        spool.flush().await.unwrap();
        // let the released envelopes go once their META records are written
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let rss_after = rss_kib();
        assert_eq!(qm.delayed_count(), messages, "every message waits in the timer");
        let per_msg = (rss_after - rss_before) as f64 * 1024.0 / messages as f64;
        println!(
            "{messages} messages over {queues} queues: enqueue {:.1} s ({:.0} msg/s); RSS {} MiB -> {} MiB, {per_msg:.0} bytes per queued message",
            enqueue.as_secs_f64(),
            messages as f64 / enqueue.as_secs_f64(),
            rss_before / 1024,
            rss_after / 1024,
        );
        let wait = (later - chrono::Utc::now()).to_std().expect("DUE_IN is longer than the enqueue");
        tokio::time::sleep(wait).await;
        // measured from the moment they fell due, not from when this loop began
        let since_due = || (chrono::Utc::now() - later).to_std().unwrap_or_default();
        while qm.attempts_started() < messages as u64 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let promote = since_due();
        // ... and delivered: the spool is empty once every removal is written
        while !spool.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let delivered = since_due();
        println!(
            "promotion: all {messages} promoted {:.1} s after falling due ({:.0} msg/s); all delivered to the null delivery after {:.1} s ({:.0} msg/s)",
            promote.as_secs_f64(),
            messages as f64 / promote.as_secs_f64(),
            delivered.as_secs_f64(),
            messages as f64 / delivered.as_secs_f64(),
        );
    });
}
