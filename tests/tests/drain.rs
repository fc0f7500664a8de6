//! Graceful drain on SIGTERM (Kubernetes sends it on every rollout).

use sluice_tests::*;
use std::time::{Duration, Instant};

/// SIGTERM during a 2,000-message injection: the daemon exits well within
/// its drain timeout (60 s by default), and after a restart every message
/// that got a 250 is delivered, none twice.
#[test]
fn sigterm_during_injection_drains_and_loses_nothing() {
    let mut mta = Mta::start(&maildir_policy("", ""));
    let mut client = start_injection(&mta, 2000);
    std::thread::sleep(Duration::from_millis(rand::random_range(200..1000)));
    mta.sigterm();
    let took = mta
        .wait_exit(Duration::from_secs(65))
        .expect("the daemon exits within its drain timeout");
    assert!(took < Duration::from_secs(15), "drain took {took:?}");
    assert!(client.wait().unwrap().success());
    let results = injection_results(&mta);
    assert_eq!(results.len(), 2000);
    let acked: Vec<u64> = results
        .iter()
        .filter(|r| r["code"] == 250)
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    let refused = results.iter().filter(|r| r["code"] == 421).count();
    mta.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let delivered = delivered_seqs(&mta, "maildir");
        if acked.iter().all(|s| delivered.contains_key(s)) {
            break delivered;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged messages missing after restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "drain took {took:?}: {} acknowledged, all delivered; {refused} refused with 421 while draining",
        acked.len()
    );
    let twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "a graceful drain delivers nothing twice: {twice:?}"
    );
}

/// While draining: a new session gets 421; a session in a transaction may
/// finish it (250), and then gets 421 and is closed; then the daemon exits.
#[test]
fn drain_lets_a_transaction_finish_and_refuses_new_sessions() {
    let mut mta = Mta::start(&maildir_policy("", ""));
    let mut busy = RawSmtp::connect(mta.port);
    busy.reply();
    busy.command("EHLO busy.test");
    assert_eq!(busy.command("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(busy.command("RCPT TO:<b@example.com>").0, 250);
    mta.sigterm();
    // the drain has begun once new sessions are refused
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut fresh = RawSmtp::connect(mta.port);
        let (code, text) = fresh.reply();
        if code == 421 {
            assert!(text.contains("shutting down"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new sessions still accepted: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(busy.command("DATA").0, 354);
    let (code, text) = busy.command("Subject: last one\r\n\r\nbody\r\n.");
    assert_eq!(code, 250, "{text}");
    let (code, text) = busy.reply();
    assert_eq!(code, 421, "{text}");
    assert!(busy.is_closed());
    mta.wait_exit(Duration::from_secs(15))
        .expect("exits once the session closed");
    mta.spawn();
    mta.wait_for_records(Duration::from_secs(10), "delivery after restart", |r| {
        count(r, "Delivery") == 1
    });
}
