//! A spool or log volume that fills up: new mail is refused with a 4xx
//! (never a 250 for a message that could not be written), readiness fails
//! while it lasts, every accepted message is delivered once the destination
//! is back, the space comes back, and acceptance resumes without a restart.
//! The volumes are real tmpfs mounts (root is needed).

use sluice_tests::tmpfs::Tmpfs;
use sluice_tests::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Everything goes to a maildir under `{DIR}/blocked`, a regular file until
/// the test removes it: the destination is down, and messages stay spooled.
fn policy(spool_extra: &str, logs_extra: &str, admin: u16) -> String {
    format!(
        r#"
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{DIR}}/spool' {spool_extra} }}
  kumo.define_spool {{ name = 'meta', path = '{{DIR}}/spool' {spool_extra} }}
  kumo.configure_local_logs {{ log_dir = '{{DIR}}/logs' {logs_extra} }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:{{PORT}}' }}
  kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ maildir_path = '{{DIR}}/blocked/maildir' }},
    retry_interval = '1 seconds', max_retry_interval = '1 seconds',
  }}
end)
"#
    )
}

/// A 100 KB message carrying `X-Test-Seq: seq`.
fn message(seq: usize) -> String {
    let line = "x".repeat(998);
    let body: Vec<&str> = std::iter::repeat_n(line.as_str(), 100).collect();
    format!(
        "Subject: {seq}\r\nX-Test-Seq: {seq}\r\n\r\n{}",
        body.join("\r\n")
    )
}

/// One transaction on an open session: the reply that ended it (to MAIL,
/// RCPT or the final dot) and whether the message was accepted.
fn send(c: &mut RawSmtp, seq: usize) -> (u16, String) {
    let (code, text) = c.command("MAIL FROM:<sender@example.com>");
    if code != 250 {
        return (code, text);
    }
    let (code, text) = c.command("RCPT TO:<user@example.com>");
    if code != 250 {
        c.command("RSET");
        return (code, text);
    }
    let (code, text) = c.command("DATA");
    assert_eq!(code, 354, "{text}");
    c.command(&format!("{}\r\n.", message(seq)))
}

/// Send until `refusals` transactions in a row are refused; every reply must
/// be a 250 or a 4xx. Returns the accepted sequence numbers and every
/// refusal's reply.
fn fill(port: u16, refusals: usize) -> (Vec<usize>, Vec<(u16, String)>) {
    let mut c = RawSmtp::connect(port);
    c.reply();
    c.command("EHLO test");
    let (mut accepted, mut refused) = (vec![], vec![]);
    let mut in_a_row = 0;
    for seq in 0..500 {
        let (code, text) = send(&mut c, seq);
        match code {
            250 => {
                accepted.push(seq);
                in_a_row = 0;
            }
            400..=499 => {
                refused.push((code, text));
                in_a_row += 1;
                if in_a_row == refusals {
                    return (accepted, refused);
                }
            }
            _ => panic!("message {seq}: {code} {text}: a full volume must give a 4xx"),
        }
    }
    panic!("500 messages of 100 KB were accepted by a small volume");
}

/// Each X-Test-Seq delivered into the maildir, and how many times.
fn delivered(mta: &Mta) -> HashMap<u64, usize> {
    delivered_seqs(mta, "blocked/maildir")
}

/// Poll (a new session each time) until a message is accepted again; how
/// long that took.
fn wait_until_accepting(mta: &Mta, seq: usize, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let mut c = RawSmtp::connect(mta.port);
        c.reply();
        c.command("EHLO test");
        let (code, text) = send(&mut c, seq);
        if code == 250 {
            return start.elapsed();
        }
        assert!((400..500).contains(&code), "{code} {text}");
        assert!(
            start.elapsed() < timeout,
            "still refusing after {timeout:?}: {code} {text}\n{}",
            mta.stderr()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn status(admin: u16, path: &str) -> (u64, String) {
    let r = http_request(admin, path, None);
    (
        r["status"].as_u64().unwrap(),
        r["body"].as_str().unwrap_or_default().to_string(),
    )
}

/// The outage measured before this test existed: the volume stayed full
/// after every message was delivered, and every new message got 451 for as
/// long as the process lived. min_free_space is 0 here, so the writes really
/// fail with ENOSPC.
#[test]
fn a_full_spool_volume_refuses_with_4xx_then_recovers_by_itself() {
    let admin = free_port();
    let mut mta = Mta::prepare(&policy(
        ", min_free_space = 0, min_free_inodes = 0",
        "",
        admin,
    ));
    let volume = Tmpfs::mount(&mta.path("spool"), "6m");
    std::fs::write(mta.path("blocked"), b"not a directory").unwrap();
    mta.spawn();

    let (accepted, refused) = fill(mta.port, 5);
    assert!(accepted.len() >= 30, "only {} accepted", accepted.len());
    assert!(
        refused.iter().all(|(code, _)| *code == 451 || *code == 452),
        "{refused:?}"
    );
    assert!(
        volume.used() > 5 << 20,
        "the volume filled: {}",
        volume.used()
    );
    let (code, body) = status(admin, "/api/check-readiness/v1");
    assert_eq!(code, 503, "not ready while full: {body}");
    assert_eq!(status(admin, "/healthz/live").0, 200, "but alive");

    // the destination comes back: everything accepted is delivered, once
    std::fs::remove_file(mta.path("blocked")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered(&mta).len() < accepted.len() {
        assert!(
            Instant::now() < deadline,
            "delivered {} of {}: {}",
            delivered(&mta).len(),
            accepted.len(),
            mta.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = delivered(&mta);
    for seq in &accepted {
        assert_eq!(got.get(&(*seq as u64)), Some(&1), "message {seq}");
    }
    assert_eq!(
        got.len(),
        accepted.len(),
        "no refused message was delivered"
    );

    // the space comes back and acceptance resumes, same process
    let waited = wait_until_accepting(&mta, 1000, Duration::from_secs(30));
    assert!(mta.child.as_mut().unwrap().try_wait().unwrap().is_none());
    assert!(
        volume.used() < 1 << 20,
        "spool space reclaimed: {} bytes used",
        volume.used()
    );
    let (code, body) = status(admin, "/api/check-readiness/v1");
    assert_eq!(code, 200, "ready again: {body}");
    eprintln!(
        "accepted {}, refused {}, accepting again {waited:?} after delivery",
        accepted.len(),
        refused.len()
    );
}

/// min_free_space = 50% of an 8 MB volume: MAIL gets 452 4.3.1 once half is
/// used, long before a write could fail; the probes and the metric say so;
/// acceptance resumes once deliveries free the space.
#[test]
fn min_free_space_refuses_at_mail_before_the_volume_fills() {
    let admin = free_port();
    let mut mta = Mta::prepare(&policy(", min_free_space = '50%'", "", admin));
    let volume = Tmpfs::mount(&mta.path("spool"), "8m");
    std::fs::write(mta.path("blocked"), b"not a directory").unwrap();
    mta.spawn();

    let (accepted, refused) = fill(mta.port, 3);
    for (code, text) in &refused {
        assert_eq!(*code, 452, "{text}");
        assert!(text.contains("4.3.1"), "{text}");
    }
    let used = volume.used();
    assert!(
        (4 << 20..7 << 20).contains(&used),
        "refused once half was used, well before full: {used} bytes used, {} accepted",
        accepted.len()
    );
    for path in ["/api/check-readiness/v1", "/api/check-liveness/v1"] {
        let (code, body) = status(admin, path);
        assert_eq!(code, 503, "{path}: {body}");
        assert!(body.contains("min_free_space"), "{path}: {body}");
    }
    assert_eq!(status(admin, "/healthz/live").0, 200);
    let metrics = http_request(admin, "/metrics", None);
    assert_eq!(
        metrics["samples"]["sluice_storage_short{}"], 1.0,
        "{metrics}"
    );

    std::fs::remove_file(mta.path("blocked")).unwrap();
    wait_until_accepting(&mta, 1000, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered(&mta).len() < accepted.len() + 1 {
        assert!(Instant::now() < deadline, "{}", mta.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status(admin, "/api/check-readiness/v1").0, 200);
    let metrics = http_request(admin, "/metrics", None);
    assert_eq!(
        metrics["samples"]["sluice_storage_short{}"], 0.0,
        "{metrics}"
    );
}

/// The queue id in a `250 OK ids=...` reply.
fn queue_id(reply: &str) -> String {
    reply.rsplit("ids=").next().unwrap().trim().to_string()
}

/// max_total_size bounds a log directory: the oldest closed segments are
/// deleted, the newest records kept.
#[test]
fn log_segments_past_max_total_size_are_deleted_oldest_first() {
    let admin = free_port();
    let mta = Mta::start(&policy(
        "",
        ", max_file_size = 20000, max_total_size = 100000",
        admin,
    ));
    // small messages, delivered at once: a Reception and a Delivery record
    // each, about 1 KB; 400 of them make 8 times the cap
    let mut ids = vec![];
    for seq in 0..400 {
        let reply = RawSmtp::send_message(
            mta.port,
            "user@example.com",
            &format!("Subject: {seq}\r\nX-Test-Seq: {seq}\r\n\r\nhi"),
        );
        ids.push(queue_id(&reply));
    }
    let last = ids.last().unwrap().clone();
    let records = mta.wait_for_records(Duration::from_secs(30), "the last Delivery", |r| {
        r.iter()
            .any(|r| r["type"] == "Delivery" && r["id"] == last.as_str())
    });
    let sizes: Vec<u64> = std::fs::read_dir(mta.path("logs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    let total: u64 = sizes.iter().sum();
    assert!(sizes.len() >= 3, "rotated: {sizes:?}");
    assert!(total <= 100_000, "log dir holds {total} bytes: {sizes:?}");
    let first = ids[0].as_str();
    assert!(
        !records.iter().any(|r| r["id"] == first),
        "the oldest records went"
    );
    assert!(
        records.len() >= 50,
        "the newest are kept: {}",
        records.len()
    );
}
