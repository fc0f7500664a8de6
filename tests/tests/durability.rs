//! Retry, expiry and crash safety: what a 250 promises.

use rand::Rng;
use serde_json::Value;
use sluice_tests::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn event_secs(r: &Value) -> f64 {
    rfc3339_secs(r["event_time"].as_str().unwrap())
}

fn unwritable_maildir_policy(queue_extra: &str) -> String {
    // {DIR}/blocked is a regular file, so the maildir under it cannot be made
    policy(
        "",
        &format!(
            "kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)\n  \
             return kumo.make_queue_config {{ protocol = {{ maildir_path = '{{DIR}}/blocked/maildir' }}, {queue_extra} }}\nend)\n"
        ),
    )
}

/// retry_interval = 2 s, max_age = 20 s, a maildir that cannot be written:
/// four TransientFailures (attempts 0-3, after delays of 2, 4 and 8 s), then
/// Expiration at the 4th failure because the next delay (16 s) would end
/// past max_age.
#[test]
fn retries_back_off_exponentially_then_expire_at_max_age() {
    let mta = Mta::start(&unwritable_maildir_policy(
        "retry_interval = '2 seconds', max_age = '20 seconds'",
    ));
    std::fs::write(mta.path("blocked"), b"not a directory").unwrap();
    let o = swaks(mta.port, &["--to", "u@example.com"]);
    assert!(o.status.success(), "{}", text(&o));
    let recs = mta.wait_for_records(Duration::from_secs(40), "Expiration", |r| {
        count(r, "Expiration") == 1
    });
    let failures: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "TransientFailure")
        .collect();
    assert_eq!(failures.len(), 4, "{failures:?}");
    let attempts: Vec<u64> = failures
        .iter()
        .map(|r| r["num_attempts"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, vec![0, 1, 2, 3]);
    for f in &failures {
        assert_eq!(f["response"]["code"], 400);
        assert!(
            f["response"]["content"]
                .as_str()
                .unwrap()
                .contains("failed to write to maildir")
        );
    }
    // the timing of the backoff (2, 4, 8 s here) is unit-tested with a paused
    // clock (queue::retry); here the attempts happen and end in expiry
    let times: Vec<f64> = failures.iter().map(|r| event_secs(r)).collect();
    assert!(
        times.windows(2).all(|w| w[1] - w[0] >= 1.95),
        "never retried sooner than retry_interval: {times:?}"
    );
    let exp = recs.iter().find(|r| r["type"] == "Expiration").unwrap();
    assert_eq!(exp["response"]["code"], 551);
    let content = exp["response"]["content"].as_str().unwrap();
    assert!(content.contains("exceeds max_age=20s"), "{content}");
    assert_eq!(exp["response"]["enhanced_code"]["subject"], 4);
    assert!(
        (event_secs(exp) - times[3]).abs() < 1.0,
        "expires at the 4th failure"
    );
    // nothing further happens
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(&mta.records(), "TransientFailure"), 4);
}

/// The attempt count and next due time are in the spool: a restart neither
/// resets the count nor retries at once.
#[test]
fn restart_keeps_attempt_count_and_due_time() {
    let mut mta = Mta::start(&unwritable_maildir_policy("retry_interval = '5 seconds'"));
    std::fs::write(mta.path("blocked"), b"x").unwrap();
    let o = swaks(mta.port, &["--to", "u@example.com"]);
    assert!(o.status.success(), "{}", text(&o));
    let recs = mta.wait_for_records(Duration::from_secs(10), "first failure", |r| {
        count(r, "TransientFailure") == 1
    });
    let first = event_secs(&recs[recs.len() - 1]);
    mta.kill9();
    mta.spawn();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        count(&mta.records(), "TransientFailure"),
        1,
        "not retried at restart"
    );
    let recs = mta.wait_for_records(Duration::from_secs(10), "second failure", |r| {
        count(r, "TransientFailure") == 2
    });
    let second = recs
        .iter()
        .filter(|r| r["type"] == "TransientFailure")
        .nth(1)
        .unwrap();
    assert_eq!(second["num_attempts"], 1);
    // the envelope was released while the message waited, and restored
    assert_eq!(second["recipient"], "u@example.com");
    assert!(second["sender"].as_str().unwrap().contains('@'));
    let gap = event_secs(second) - first;
    assert!(
        (4.9..=6.5).contains(&gap),
        "retried {gap}s after the first failure"
    );
    assert_eq!(
        count(&recs, "Reception"),
        1,
        "recovery logs no new Reception"
    );
}

/// 2,000 messages from 20 concurrent clients, `kill -9` at a random point of
/// the injection (after a random number of 250s, not after a time that a
/// loaded machine could stretch), restart: every message that got a 250 is
/// delivered, and nothing is delivered twice that did not get a 250.
#[test]
fn kill_dash_nine_during_injection_loses_nothing_that_got_a_250() {
    let mut mta = Mta::start(&maildir_policy("", ""));
    let total = 2000;
    let mut client = start_injection(&mta, total);
    let after = rand::rng().random_range(1..1500);
    let deadline = Instant::now() + Duration::from_secs(60);
    // the client's report so far (its last line may be half written)
    let acked_so_far = || {
        std::fs::read_to_string(mta.path("client.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["code"] == 250)
            .count()
    };
    while acked_so_far() < after {
        assert!(Instant::now() < deadline, "fewer than {after} 250s in 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    mta.kill9();
    let killed_at = std::time::SystemTime::now();
    assert!(client.wait().unwrap().success());
    let results = injection_results(&mta);
    assert_eq!(results.len(), total, "every message has an outcome");
    let failed = results.iter().filter(|r| r["code"] != 250).count();
    let acked: std::collections::HashSet<u64> = results
        .iter()
        .filter(|r| r["code"] == 250)
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    mta.spawn();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut delivered: HashMap<u64, usize>;
    loop {
        delivered = delivered_seqs(&mta, "maildir");
        if acked.iter().all(|s| delivered.contains_key(s)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged messages delivered",
            acked.iter().filter(|s| delivered.contains_key(s)).count(),
            acked.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // let anything still in flight settle, then count again
    std::thread::sleep(Duration::from_secs(2));
    let delivered = delivered_seqs(&mta, "maildir");
    let duplicated_acked = acked.iter().filter(|s| delivered[s] > 1).count();
    let unacked_twice: Vec<u64> = delivered
        .iter()
        .filter(|(s, n)| !acked.contains(s) && **n > 1)
        .map(|(s, _)| *s)
        .collect();
    let unacked_delivered = delivered.keys().filter(|s| !acked.contains(s)).count();
    println!(
        "crash after the {after}th 250: {} acknowledged, all delivered; {duplicated_acked} delivered twice; \
         {failed} without a 250, of which {unacked_delivered} (in flight at the crash) delivered once",
        acked.len()
    );
    assert!(
        !acked.is_empty(),
        "the crash came before any 250; nothing was tested"
    );
    assert!(
        unacked_twice.is_empty(),
        "unacknowledged messages delivered twice: {unacked_twice:?}"
    );
    // at-least-once: a message is delivered twice only when its first
    // delivery finished in the crash window, before its removal from the
    // spool was synced (under load a sync can take a good fraction of a
    // second); nothing delivered earlier comes again
    let window = Duration::from_secs(1);
    let mut before_crash_count = 0;
    for f in mta.maildir_files("maildir") {
        let body = std::fs::read_to_string(&f).unwrap_or_default();
        let Some(seq) = body
            .lines()
            .find_map(|l| l.strip_prefix("X-Test-Seq: "))
            .and_then(|s| s.trim().parse::<u64>().ok())
        else {
            continue;
        };
        let written = std::fs::metadata(&f).unwrap().modified().unwrap();
        if written < killed_at {
            before_crash_count += 1;
        }
        if delivered[&seq] < 2 {
            continue;
        }
        let before_crash = killed_at.duration_since(written).unwrap_or_default();
        assert!(
            written >= killed_at || before_crash <= window,
            "message {seq} was delivered {before_crash:?} before the crash and again after it"
        );
    }
    // and most removals made it to disk: were they lost, every message
    // delivered before the crash would come again
    assert!(
        duplicated_acked * 2 < before_crash_count,
        "{duplicated_acked} of {before_crash_count} deliveries before the crash repeated"
    );
}

/// A deferred_spool listener in front of the given queue config.
fn deferred_spool_policy(admin: u16, queue: &str, path_extra: &str) -> String {
    policy_with_init(
        &format!("kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}"),
        "deferred_spool = true",
        &format!(
            "kumo.on('get_queue_config', function() return kumo.make_queue_config {{ {queue} }} end)\n\
             kumo.on('get_egress_path_config', function() return kumo.make_egress_path {{ prohibited_hosts = {{}}, {path_extra} }} end)\n"
        ),
    )
}

fn spooled_count(admin: u16) -> f64 {
    http_request(admin, "/metrics", None)["samples"]["message_count{}"]
        .as_f64()
        .expect("message_count gauge")
}

/// `deferred_spool = true` (spec §6.5): nothing is written at reception; a
/// message is written when it is first delayed, so a delayed one survives
/// kill -9 and is delivered after the restart.
#[test]
fn deferred_spool_writes_a_message_when_first_delayed() {
    let admin = free_port();
    let mut mta = Mta::start(&deferred_spool_policy(
        admin,
        "protocol = { maildir_path = '{DIR}/blocked/maildir' }, retry_interval = '2 seconds'",
        "",
    ));
    std::fs::write(mta.path("blocked"), b"not a directory").unwrap();
    for i in 0..10 {
        RawSmtp::send_message(mta.port, "u@example.com", &format!("message {i}"));
    }
    mta.wait_for_records(Duration::from_secs(10), "10 first failures", |r| {
        count(r, "TransientFailure") >= 10
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while spooled_count(admin) < 10.0 {
        assert!(
            Instant::now() < deadline,
            "delayed messages are not spooled"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    mta.kill9();
    std::fs::remove_file(mta.path("blocked")).unwrap();
    mta.spawn();
    mta.wait_for_records(Duration::from_secs(15), "10 deliveries", |r| {
        count(r, "Delivery") == 10
    });
    assert_eq!(mta.maildir_files("blocked/maildir").len(), 10);
    // the log writer runs on its own thread: a 250 may come before its record
    mta.wait_for_records(Duration::from_secs(10), "10 Reception records", |r| {
        count(r, "Reception") == 10
    });
}

/// `deferred_spool = true`: messages still in memory (queued behind a peer
/// that never answers) are not in the spool, and a graceful shutdown writes
/// them so that the next start delivers every one.
#[test]
fn deferred_spool_writes_pending_messages_at_graceful_shutdown() {
    // a TCP peer that accepts and never says a word
    let tarpit = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tarpit_port = tarpit.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in tarpit.incoming() {
            held.push(s);
        }
    });
    let admin = free_port();
    let mut mta = Mta::prepare(&deferred_spool_policy(
        admin,
        &format!("protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{tarpit_port}' }} }} }}"),
        "connection_limit = 1",
    ));
    // the delivery stuck on the tarpit does not hold the exit for long
    mta.args = vec!["--drain-timeout".into(), "1s".into()];
    mta.spawn();
    for i in 0..10 {
        RawSmtp::send_message(mta.port, "u@example.com", &format!("message {i}"));
    }
    // the log writer runs on its own thread: a 250 may come before its record
    mta.wait_for_records(Duration::from_secs(10), "10 Reception records", |r| {
        count(r, "Reception") == 10
    });
    assert_eq!(
        spooled_count(admin),
        0.0,
        "deferred_spool writes nothing at reception"
    );
    mta.stop();
    assert!(
        mta.stderr().contains("deferred_spool messages written"),
        "{}",
        mta.stderr()
    );
    let maildir = mta.render(&deferred_spool_policy(
        admin,
        "protocol = { maildir_path = '{DIR}/maildir' }",
        "",
    ));
    std::fs::write(&mta.policy_path, maildir).unwrap();
    mta.spawn();
    mta.wait_for_records(Duration::from_secs(15), "10 deliveries", |r| {
        count(r, "Delivery") == 10
    });
    let bodies: Vec<String> = mta
        .maildir_files("maildir")
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for i in 0..10 {
        assert_eq!(
            bodies
                .iter()
                .filter(|b| b.contains(&format!("message {i}")))
                .count(),
            1,
            "message {i} delivered once"
        );
    }
}
